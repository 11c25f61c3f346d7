//! A cgroup v2 path, as the runtimes and systemd lay them out, into runtime + container id + pod
//! UID, or a systemd unit for host processes. Pure and table-driven: [`RULES`] lists the leaf
//! names of every runtime (docs/containers.md shows each shape with an example).
//!
//! Anything that does not match a rule exactly (an id that is not 64 hex digits, a pod UID that
//! is not a UID) yields no container: a raw path is better than a wrong container.
use super::{Role, Runtime};

/// What a cgroup path says, before any name is looked up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The container's runtime and full id, when the path names one.
    pub container: Option<(Runtime, String)>,
    /// The Kubernetes pod UID (dashes restored), when the path is under a pod's cgroup.
    pub pod_uid: Option<String>,
    /// The nearest systemd unit (`nginx.service`, `session-3.scope`), for host processes.
    pub unit: Option<String>,
    pub role: Role,
}

/// How a leaf name names a container: `prefix` + 64 hex digits + `suffix`.
struct Rule {
    prefix: &'static str,
    suffix: &'static str,
    runtime: Runtime,
    role: Role,
}

const fn rule(prefix: &'static str, suffix: &'static str, runtime: Runtime, role: Role) -> Rule {
    Rule { prefix, suffix, runtime, role }
}

/// Container cgroups named by the systemd driver (and CRI-O's cgroupfs form), most specific
/// first: a monitor's prefix starts like its runtime's.
const RULES: &[Rule] = &[
    rule("libpod-conmon-", ".scope", Runtime::Podman, Role::Monitor),
    rule("libpod-", ".scope", Runtime::Podman, Role::Workload),
    // podman's cgroupfs manager (hosts where systemd is not PID 1): `/libpod_parent/libpod-<id>`.
    rule("libpod-", "", Runtime::Podman, Role::Workload),
    rule("crio-conmon-", ".scope", Runtime::CriO, Role::Monitor),
    rule("crio-conmon-", "", Runtime::CriO, Role::Monitor),
    rule("crio-", ".scope", Runtime::CriO, Role::Workload),
    rule("crio-", "", Runtime::CriO, Role::Workload),
    rule("cri-containerd-", ".scope", Runtime::Containerd, Role::Workload),
    rule("docker-", ".scope", Runtime::Docker, Role::Workload),
];

/// The length of the container ids of every runtime above (a sha256 in hex).
const ID_LEN: usize = 64;

fn is_container_id(text: &str) -> bool {
    text.len() == ID_LEN && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A pod UID as Kubernetes writes it: 8-4-4-4-12 hex digits.
fn is_pod_uid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| {
            g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

fn match_rule(name: &str) -> Option<(Runtime, String, Role)> {
    RULES.iter().find_map(|r| {
        let id = name.strip_prefix(r.prefix)?.strip_suffix(r.suffix)?;
        is_container_id(id).then(|| (r.runtime, id.to_owned(), r.role))
    })
}

/// The pod UID a component names: `kubepods[-<qos>]-pod<uid>.slice` (systemd driver, `_` for
/// `-`), or `pod<uid>` under `kubepods` (cgroupfs driver).
fn pod_uid_of(component: &str, under_kubepods: bool) -> Option<String> {
    if let Some(slice) = component.strip_prefix("kubepods-").and_then(|c| c.strip_suffix(".slice"))
    {
        let uid = ["besteffort-pod", "burstable-pod", "pod"]
            .iter()
            .find_map(|p| slice.strip_prefix(p))?
            .replace('_', "-");
        return is_pod_uid(&uid).then_some(uid);
    }
    let uid = component.strip_prefix("pod").filter(|_| under_kubepods)?;
    is_pod_uid(uid).then(|| uid.to_owned())
}

/// Parses a cgroup v2 path (`/kubepods.slice/.../cri-containerd-<id>.scope`).
pub fn parse(path: &str) -> Parsed {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut parsed = Parsed::default();
    let under_kubepods = parts.first().is_some_and(|p| *p == "kubepods" || *p == "kubepods.slice");
    // The nearest container from the leaf up: a payload sub-cgroup (`libpod-<id>.scope/container`,
    // systemd inside a container) belongs to the container above it.
    let mut container_at = None;
    for (i, part) in parts.iter().enumerate().rev() {
        if let Some((runtime, id, role)) = match_rule(part) {
            parsed.container = Some((runtime, id));
            parsed.role = role;
            container_at = Some(i);
            break;
        }
        let parent = i.checked_sub(1).map(|p| parts[p]);
        // `/docker/<id>` (docker's cgroupfs driver).
        if parent == Some("docker") && is_container_id(part) {
            parsed.container = Some((Runtime::Docker, (*part).to_owned()));
            container_at = Some(i);
            break;
        }
        // `/kubepods[/<qos>]/pod<uid>/<id>` (kubelet's cgroupfs driver): containerd by default;
        // the names step corrects it to docker when docker knows the id.
        if under_kubepods
            && is_container_id(part)
            && parent.and_then(|p| pod_uid_of(p, true)).is_some()
        {
            parsed.container = Some((Runtime::Containerd, (*part).to_owned()));
            container_at = Some(i);
            break;
        }
    }
    let above = container_at.map_or(&parts[..], |i| &parts[..i]);
    parsed.pod_uid = above.iter().rev().find_map(|p| pod_uid_of(p, under_kubepods));
    if parsed.role == Role::Monitor {
        // A monitor is a host process beside the container, never the container: its unit is
        // its own cgroup (a scope, or a plain directory with the cgroupfs driver).
        parsed.container = None;
        parsed.unit = container_at.map(|i| parts[i].to_owned());
    } else if parsed.container.is_none() && parsed.pod_uid.is_none() {
        // A host process: its nearest unit (a pod's cgroup has none).
        parsed.unit = parts
            .iter()
            .rev()
            .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
            .map(|p| (*p).to_owned());
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4e7e3a1b9c2d4f5a8b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345";
    const UID: &str = "0f5c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5";
    const UID_SLICE: &str = "0f5c1d2e_3a4b_4c5d_8e9f_a0b1c2d3e4f5";

    fn container(runtime: Runtime, pod_uid: Option<&str>) -> Parsed {
        Parsed {
            container: Some((runtime, ID.to_owned())),
            pod_uid: pod_uid.map(str::to_owned),
            unit: None,
            role: Role::Workload,
        }
    }

    fn host(unit: Option<&str>) -> Parsed {
        Parsed { unit: unit.map(str::to_owned), ..Parsed::default() }
    }

    #[test]
    fn every_shape() {
        let cases: Vec<(String, Parsed)> = vec![
            // docker, systemd driver and cgroupfs driver
            (format!("/system.slice/docker-{ID}.scope"), container(Runtime::Docker, None)),
            (format!("/docker/{ID}"), container(Runtime::Docker, None)),
            // containerd under Kubernetes, systemd driver, each QoS class
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SLICE}.slice/cri-containerd-{ID}.scope"
                ),
                container(Runtime::Containerd, Some(UID)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SLICE}.slice/cri-containerd-{ID}.scope"
                ),
                container(Runtime::Containerd, Some(UID)),
            ),
            // Guaranteed: no QoS slice
            (
                format!("/kubepods.slice/kubepods-pod{UID_SLICE}.slice/cri-containerd-{ID}.scope"),
                container(Runtime::Containerd, Some(UID)),
            ),
            // kubelet's cgroupfs driver, with and without a QoS level
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                container(Runtime::Containerd, Some(UID)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                container(Runtime::Containerd, Some(UID)),
            ),
            (format!("/kubepods/pod{UID}/{ID}"), container(Runtime::Containerd, Some(UID))),
            // CRI-O, systemd and cgroupfs drivers
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SLICE}.slice/crio-{ID}.scope"
                ),
                container(Runtime::CriO, Some(UID)),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                container(Runtime::CriO, Some(UID)),
            ),
            // podman, and its payload sub-cgroup
            (format!("/machine.slice/libpod-{ID}.scope"), container(Runtime::Podman, None)),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                container(Runtime::Podman, None),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                container(Runtime::Podman, None),
            ),
            // podman's cgroupfs manager (measured: podman 4.3 with runc on a hybrid host)
            (format!("/libpod_parent/libpod-{ID}"), container(Runtime::Podman, None)),
            // systemd services and user sessions
            ("/system.slice/nginx.service".to_owned(), host(Some("nginx.service"))),
            (
                "/user.slice/user-1000.slice/session-3.scope".to_owned(),
                host(Some("session-3.scope")),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-77.scope"
                    .to_owned(),
                host(Some("app-firefox-77.scope")),
            ),
            ("/init.scope".to_owned(), host(Some("init.scope"))),
            // the root cgroup, and a slice with processes of its own
            ("/".to_owned(), host(None)),
            ("/system.slice".to_owned(), host(None)),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "{path}");
        }
    }

    #[test]
    fn monitors_are_host_processes_with_their_scope() {
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{UID_SLICE}.slice/crio-conmon-{ID}.scope"),
            format!("/kubepods/pod{UID}/crio-conmon-{ID}"),
        ] {
            let parsed = parse(&path);
            assert_eq!(parsed.container, None, "{path}");
            assert_eq!(parsed.role, Role::Monitor, "{path}");
            let leaf = path.rsplit('/').next().map(str::to_owned);
            assert_eq!(parsed.unit, leaf, "{path}");
        }
    }

    #[test]
    fn malformed_and_unknown_paths_name_no_container() {
        let short = &ID[..63];
        let upper = ID.to_uppercase();
        for path in [
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/docker-{ID}0.scope"),
            format!("/system.slice/docker-{upper}.scope"),
            format!("/system.slice/docker-{ID}.service"),
            format!("/system.slice/containerd-{ID}.scope"),
            format!("/docker/{short}"),
            format!("/other/{ID}"),
            // a bare id is a container only right under a pod of kubepods
            format!("/kubepods/burstable/{ID}"),
            format!("/kubepods/burstable/podnot-a-uid/{ID}"),
            format!("/notkube/burstable/pod{UID}/{ID}"),
            "/docker".to_owned(),
            "/weird//path/".to_owned(),
            String::new(),
        ] {
            let parsed = parse(&path);
            assert_eq!(parsed.container, None, "{path}");
            assert_eq!(parsed.role, Role::Workload, "{path}");
        }
    }

    #[test]
    fn a_pod_without_a_container_leaf_has_its_uid_but_no_container_or_unit() {
        let parsed = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SLICE}.slice"
        ));
        assert_eq!(parsed, Parsed { pod_uid: Some(UID.to_owned()), ..Parsed::default() });
        // A malformed pod UID is dropped, the container kept.
        let parsed =
            parse(&format!("/kubepods.slice/kubepods-podxyz.slice/cri-containerd-{ID}.scope"));
        assert_eq!(parsed, container(Runtime::Containerd, None));
    }

    #[test]
    fn nested_containers_name_the_innermost() {
        let outer = "1".repeat(64);
        let parsed = parse(&format!("/docker/{outer}/docker/{ID}"));
        assert_eq!(parsed, container(Runtime::Docker, None));
    }
}
