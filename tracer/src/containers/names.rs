//! Names the node keeps on disk, read without privileges beyond the node's files:
//! - the kubelet's log links `<containers>/<pod>_<namespace>_<container>-<id>.log` name a
//!   container id's pod, namespace and container (each container of a pod its own link);
//! - the kubelet's pod log directories `<pods>/<namespace>_<pod>_<uid>/<container>/` name a
//!   pod UID's namespace and pod, and list the pod's containers that log (the sandbox does not);
//! - docker's `<docker>/containers/<id>/config.v2.json` names a docker container (`"Name"`).
//!
//! Kubernetes names never contain `_` (DNS labels and subdomains), so `_` splits them safely.
use std::path::{Path, PathBuf};

/// The kubelet's and docker's directories (flags, for a DaemonSet that mounts them elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameDirs {
    /// `--pod-logs-dir`: the kubelet's per-pod log directories.
    pub pod_logs: PathBuf,
    /// `--container-logs-dir`: the kubelet's per-container log links.
    pub container_logs: PathBuf,
    /// `--docker-dir`: docker's data root.
    pub docker: PathBuf,
}

pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";
pub const DEFAULT_CONTAINER_LOGS_DIR: &str = "/var/log/containers";
pub const DEFAULT_DOCKER_DIR: &str = "/var/lib/docker";

impl Default for NameDirs {
    fn default() -> Self {
        Self {
            pod_logs: PathBuf::from(DEFAULT_POD_LOGS_DIR),
            container_logs: PathBuf::from(DEFAULT_CONTAINER_LOGS_DIR),
            docker: PathBuf::from(DEFAULT_DOCKER_DIR),
        }
    }
}

/// What a container log link names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkNames {
    pub pod: String,
    pub namespace: String,
    pub container: String,
}

/// Parses a log link's file name for container `id`.
pub fn parse_log_link(file_name: &str, id: &str) -> Option<LinkNames> {
    let stem = file_name.strip_suffix(".log")?.strip_suffix(id)?.strip_suffix('-')?;
    let mut parts = stem.splitn(3, '_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = |s: &str| !s.is_empty() && !s.contains('_');
    (valid(pod) && valid(namespace) && valid(container)).then(|| LinkNames {
        pod: pod.to_owned(),
        namespace: namespace.to_owned(),
        container: container.to_owned(),
    })
}

/// Parses a pod log directory's name for pod `uid`: (namespace, pod).
pub fn parse_pod_dir(dir_name: &str, uid: &str) -> Option<(String, String)> {
    let stem = dir_name.strip_suffix(uid)?.strip_suffix('_')?;
    let (namespace, pod) = stem.split_once('_')?;
    let valid = |s: &str| !s.is_empty() && !s.contains('_');
    (valid(namespace) && valid(pod)).then(|| (namespace.to_owned(), pod.to_owned()))
}

/// Every log link's file name (one directory read).
fn link_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
}

/// The names of a container, as far as the node's files tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub name: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The pod's log directory exists and every container in it has a link naming another id:
    /// this id is the pod's sandbox (pause), which logs nothing.
    pub sandbox: bool,
    /// docker keeps a config for this id (the cgroupfs driver's bare ids are docker's then).
    pub docker: bool,
}

impl NameDirs {
    /// Names for container `id` (of pod `pod_uid`, when the cgroup path says).
    pub fn lookup(&self, id: &str, pod_uid: Option<&str>) -> Found {
        let mut found = Found::default();
        let links = link_names(&self.container_logs);
        if let Some(names) = links.iter().find_map(|l| parse_log_link(l, id)) {
            found.name = Some(names.container);
            found.pod = Some(names.pod);
            found.namespace = Some(names.namespace);
        }
        if let Some(uid) = pod_uid
            && let Some((dir, namespace, pod)) = self.pod_dir(uid)
        {
            found.pod.get_or_insert(pod.clone());
            found.namespace.get_or_insert(namespace.clone());
            if found.name.is_none() {
                found.sandbox = is_sandbox(&dir, &links, &pod, &namespace);
            }
        }
        if let Some(name) = self.docker_name(id) {
            found.docker = true;
            found.name.get_or_insert(name);
        }
        found
    }

    /// The pod's log directory: (path, namespace, pod).
    fn pod_dir(&self, uid: &str) -> Option<(PathBuf, String, String)> {
        std::fs::read_dir(&self.pod_logs).ok()?.flatten().find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (namespace, pod) = parse_pod_dir(&name, uid)?;
            Some((e.path(), namespace, pod))
        })
    }

    /// A docker container's name (`"Name": "/web"` -> `web`), when docker keeps its config.
    fn docker_name(&self, id: &str) -> Option<String> {
        let path = self.docker.join("containers").join(id).join("config.v2.json");
        docker_config_name(&std::fs::read_to_string(path).ok()?)
    }
}

/// The name in a docker `config.v2.json` (`"Name": "/web"` -> `web`), if it has one.
pub fn docker_config_name(config: &str) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(config).ok()?;
    let name = config.get("Name")?.as_str()?.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_owned())
}

/// Every container directory of the pod's log directory has a link (for another id): the id
/// without one is the sandbox. False while any container still waits for its link.
fn is_sandbox(dir: &Path, links: &[String], pod: &str, namespace: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    let containers: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let prefix = format!("{pod}_{namespace}_");
    !containers.is_empty()
        && containers.iter().all(|c| {
            let own = format!("{prefix}{c}-");
            links.iter().any(|l| l.starts_with(&own))
        })
}

#[cfg(test)]
mod tests {

    use super::*;

    const ID: &str = "4e7e3a1b9c2d4f5a8b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345";
    const UID: &str = "0f5c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5";

    #[test]
    fn log_link_names() {
        let link = format!("checkout-7d9f-x2b_shop_api-{ID}.log");
        let want = LinkNames {
            pod: "checkout-7d9f-x2b".into(),
            namespace: "shop".into(),
            container: "api".into(),
        };
        assert_eq!(parse_log_link(&link, ID), Some(want));
        // Another id, a truncated id, no namespace, a stray underscore.
        assert_eq!(parse_log_link(&link, &"0".repeat(64)), None);
        assert_eq!(parse_log_link(&format!("p_ns_c-{}.log", &ID[1..]), ID), None);
        assert_eq!(parse_log_link(&format!("p_c-{ID}.log"), ID), None);
        assert_eq!(parse_log_link(&format!("p_ns_c_x-{ID}.log"), ID), None);
        assert_eq!(parse_log_link(&format!("p_ns_-{ID}.log"), ID), None);
    }

    #[test]
    fn pod_dir_names() {
        assert_eq!(
            parse_pod_dir(&format!("shop_checkout-7d9f-x2b_{UID}"), UID),
            Some(("shop".into(), "checkout-7d9f-x2b".into()))
        );
        assert_eq!(parse_pod_dir(&format!("shop_checkout_{UID}"), &UID.replace('0', "1")), None);
        assert_eq!(parse_pod_dir(&format!("checkout_{UID}"), UID), None);
    }

    #[test]
    fn reads_a_kubelet_layout_with_a_sidecar_and_docker_configs() {
        let root = std::env::temp_dir().join(format!("tracer-names-{}", std::process::id()));
        let _cleanup = crate::containers::TempTree(root.clone());
        let dirs = NameDirs {
            pod_logs: root.join("pods"),
            container_logs: root.join("containers"),
            docker: root.join("docker"),
        };
        let (app, sidecar, pause) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let pod_dir = dirs.pod_logs.join(format!("shop_checkout-1_{UID}"));
        for c in ["api", "envoy"] {
            std::fs::create_dir_all(pod_dir.join(c)).unwrap();
        }
        std::fs::create_dir_all(&dirs.container_logs).unwrap();
        let link = |c: &str, id: &str| {
            let target = pod_dir.join(c).join("0.log");
            std::fs::write(&target, "").unwrap();
            let at = dirs.container_logs.join(format!("checkout-1_shop_{c}-{id}.log"));
            std::os::unix::fs::symlink(target, at).unwrap();
        };
        link("api", &app);
        // Until the sidecar's link exists, the unnamed id may be it: not the sandbox yet.
        let early = dirs.lookup(&pause, Some(UID));
        assert!(!early.sandbox);
        assert_eq!(early.pod.as_deref(), Some("checkout-1"));
        link("envoy", &sidecar);
        let named = |name: &str| Found {
            name: Some(name.into()),
            pod: Some("checkout-1".into()),
            namespace: Some("shop".into()),
            ..Found::default()
        };
        assert_eq!(dirs.lookup(&app, Some(UID)), named("api"));
        assert_eq!(dirs.lookup(&sidecar, Some(UID)), named("envoy"));
        let sandbox = dirs.lookup(&pause, Some(UID));
        assert!(sandbox.sandbox && sandbox.name.is_none());
        // Unknown pod and id: nothing.
        assert_eq!(dirs.lookup(&"d".repeat(64), Some(&UID.replace('0', "9"))), Found::default());

        let docker_dir = dirs.docker.join("containers").join(&app);
        std::fs::create_dir_all(&docker_dir).unwrap();
        std::fs::write(docker_dir.join("config.v2.json"), r#"{"ID":"x","Name":"/web-1"}"#).unwrap();
        let found = dirs.lookup(&app, None);
        assert_eq!(found.name.as_deref(), Some("api"), "the kubelet's name wins");
        assert!(found.docker);
        let id = "e".repeat(64);
        let bad = dirs.docker.join("containers").join(&id);
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("config.v2.json"), "{not json").unwrap();
        assert_eq!(dirs.lookup(&id, None), Found::default());
    }
}
