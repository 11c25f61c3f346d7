//! What the views do with a process's container: filter by it (`--container`, `--pod`,
//! `--namespace`), group by it (`top --by container|pod`), and print it in a column. Pure: the
//! daemon hands in what the [`super::Directory`] resolved, tests hand in what they build.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Container;

/// The label host processes (and processes whose cgroup is not resolved) get in text and in
/// groups.
pub const HOST: &str = "host";

/// `--container`, `--pod`, `--namespace`: every one given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementFilter {
    /// A container name, or a prefix of its id (as `docker ps` prints it); `host` selects the
    /// processes outside containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A Kubernetes pod name, or a prefix of its UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// A Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Shortest container id prefix accepted: shorter ones match too much by accident.
const MIN_ID_PREFIX: usize = 4;

impl PlacementFilter {
    pub fn is_empty(&self) -> bool {
        self.container.is_none() && self.pod.is_none() && self.namespace.is_none()
    }

    /// Rejects values that can never match (empty), and `--container host` with `--pod` or
    /// `--namespace` (host processes have neither).
    pub fn validate(&self) -> Result<(), String> {
        for (flag, value) in [
            ("--container", &self.container),
            ("--pod", &self.pod),
            ("--namespace", &self.namespace),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{flag} is empty: give a name (or an id prefix)"));
            }
        }
        if self.container.as_deref() == Some(HOST)
            && (self.pod.is_some() || self.namespace.is_some())
        {
            return Err(
                "--container host selects processes outside containers, which have no pod \
                        or namespace: drop --pod/--namespace, or name a container"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Whether a process in `container` (`None`: a host process) passes.
    pub fn matches(&self, container: Option<&Container>) -> bool {
        let Some(c) = container else {
            return self.pod.is_none()
                && self.namespace.is_none()
                && self.container.as_deref().is_none_or(|v| v == HOST);
        };
        let container_ok = self.container.as_deref().is_none_or(|v| {
            c.name.as_deref() == Some(v) || (v.len() >= MIN_ID_PREFIX && c.id.starts_with(v))
        });
        let pod_ok = self.pod.as_deref().is_none_or(|v| {
            c.pod.as_deref() == Some(v)
                || (v.len() >= MIN_ID_PREFIX
                    && c.pod_uid.as_deref().is_some_and(|u| u.starts_with(v)))
        });
        let namespace_ok =
            self.namespace.as_deref().is_none_or(|v| c.namespace.as_deref() == Some(v));
        container_ok && pod_ok && namespace_ok
    }
}

/// What a process is grouped under by `top --by container` or `--by pod`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The container's full id (`--by container`); `None` for pods and the host group.
    pub container_id: Option<String>,
}

impl GroupKey {
    /// `--by container`: each container on its own; host processes together.
    pub fn container(c: Option<&Container>) -> Self {
        match c {
            None => Self { namespace: None, pod: None, container_id: None },
            Some(c) => Self {
                namespace: c.namespace.clone(),
                pod: c.pod.clone(),
                container_id: Some(c.id.clone()),
            },
        }
    }

    /// `--by pod`: a pod's containers together (by pod UID when its name is not known yet);
    /// containers outside pods (docker, podman) stay on their own; host processes together.
    pub fn pod(c: Option<&Container>) -> Self {
        match c {
            Some(c) if c.pod.is_some() || c.pod_uid.is_some() => Self {
                namespace: c.namespace.clone(),
                pod: c.pod.clone().or_else(|| c.pod_uid.clone()),
                container_id: None,
            },
            other => Self::container(other),
        }
    }
}

/// The text cell of a process's placement: `namespace/pod/container` for Kubernetes,
/// the container's name (or short id) otherwise (`(sandbox)` for a pod's sandbox), `host`
/// outside containers. Parts not known are `?`, never guessed.
pub fn cell(c: Option<&Container>) -> String {
    let Some(c) = c else { return HOST.to_owned() };
    if c.pod.is_none() && c.namespace.is_none() && c.pod_uid.is_none() {
        return c.label().to_owned();
    }
    let pod = c.pod.as_deref().or(c.pod_uid.as_deref()).unwrap_or("?");
    let label = if c.is_sandbox() { SANDBOX } else { c.label() };
    format!("{}/{pod}/{label}", c.namespace.as_deref().unwrap_or("?"))
}

/// What the text cell says in place of a pod sandbox's container name (it has none; `(` never
/// starts a Kubernetes name).
pub const SANDBOX: &str = "(sandbox)";

/// `s` cut to `width` characters keeping both ends (`shop/checkout-7d…/api`): the namespace
/// and the container are what people scan for, the pod's hash suffix least.
pub fn clip_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    if width < 3 {
        return s.chars().take(width).collect();
    }
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// One `tracer top --by container|pod` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupRow {
    /// `<namespace>/<pod>/<container>` (`--by container`) or `<namespace>/<pod>` (`--by pod`)
    /// in Kubernetes (`?` for a part not known), a container's name (or short id) outside it,
    /// or `host`.
    pub group: String,
    /// Kubernetes namespace; `null` outside Kubernetes (or not known).
    pub namespace: Option<String>,
    /// Kubernetes pod name (its UID while the name is not known); `null` outside pods.
    pub pod: Option<String>,
    /// `--by container`: the container; `null` for the host group and with `--by pod`.
    pub container: Option<Container>,
    /// Processes in the group (alive, or exited within the grace period).
    pub processes: u32,
    /// Open connections now, summed over its processes.
    pub open: u32,
    /// Connections opened, since the daemon started.
    pub opened_total: u64,
    /// Open connections released, since the daemon started.
    pub closed_total: u64,
    /// Sum of its processes' `growth` (connections over the leak window).
    pub growth: i64,
    /// Leak alerts active now for its processes.
    pub alerts: u32,
}

/// What a group sums from each of its processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Member {
    pub open: u32,
    pub opened_total: u64,
    pub closed_total: u64,
    pub growth: i64,
    pub alerts: u32,
}

/// Groups processes (`(their container, their numbers)`), alerting groups first, then most
/// open, then by name; `by_pod` selects `--by pod`. Sandboxes are left out.
pub fn group<'a>(
    members: impl IntoIterator<Item = (Option<&'a Container>, Member)>,
    by_pod: bool,
) -> Vec<GroupRow> {
    let mut groups: std::collections::BTreeMap<GroupKey, GroupRow> = Default::default();
    for (c, m) in members {
        // A pod's sandbox (pause) owns no application traffic: no row of its own, and not
        // counted in its pod's.
        if c.is_some_and(Container::is_sandbox) {
            continue;
        }
        let key = if by_pod { GroupKey::pod(c) } else { GroupKey::container(c) };
        let row = groups.entry(key.clone()).or_insert_with(|| GroupRow {
            group: match (by_pod, c) {
                (false, _) | (true, None) => cell(c),
                (true, Some(c)) if key.container_id.is_some() => cell(Some(c)),
                (true, Some(_)) => format!(
                    "{}/{}",
                    key.namespace.as_deref().unwrap_or("?"),
                    key.pod.as_deref().unwrap_or("?")
                ),
            },
            namespace: key.namespace.clone(),
            pod: c.and_then(|c| c.pod.clone()),
            container: if by_pod { None } else { c.cloned() },
            processes: 0,
            open: 0,
            opened_total: 0,
            closed_total: 0,
            growth: 0,
            alerts: 0,
        });
        row.processes += 1;
        row.open = row.open.saturating_add(m.open);
        row.opened_total = row.opened_total.saturating_add(m.opened_total);
        row.closed_total = row.closed_total.saturating_add(m.closed_total);
        row.growth = row.growth.saturating_add(m.growth);
        row.alerts = row.alerts.saturating_add(m.alerts);
    }
    let mut rows: Vec<GroupRow> = groups.into_values().collect();
    rows.sort_by(|a, b| {
        (a.alerts == 0).cmp(&(b.alerts == 0)).then(b.open.cmp(&a.open)).then(a.group.cmp(&b.group))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::{Role, Runtime};

    pub(crate) fn k8s(ns: &str, pod: &str, name: &str, id: &str) -> Container {
        Container {
            id: id.to_owned(),
            name: Some(name.to_owned()),
            runtime: Runtime::Containerd,
            pod: Some(pod.to_owned()),
            namespace: Some(ns.to_owned()),
            pod_uid: Some(format!("{pod}-uid-0000")),
            cgroup: format!("/kubepods.slice/{id}"),
            role: Role::Workload,
        }
    }

    fn docker(id: &str, name: Option<&str>) -> Container {
        Container {
            id: id.to_owned(),
            name: name.map(str::to_owned),
            runtime: Runtime::Docker,
            pod: None,
            namespace: None,
            pod_uid: None,
            cgroup: format!("/system.slice/docker-{id}.scope"),
            role: Role::Workload,
        }
    }

    fn filter(
        container: Option<&str>,
        pod: Option<&str>,
        namespace: Option<&str>,
    ) -> PlacementFilter {
        PlacementFilter {
            container: container.map(str::to_owned),
            pod: pod.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
        }
    }

    #[test]
    fn filters_match_names_id_prefixes_and_host() {
        let api = k8s("shop", "checkout-7d9f", "api", "0123456789abcdef0123");
        let web = docker("fedcba9876543210", Some("web"));
        let none = PlacementFilter::default();
        assert!(none.matches(None) && none.matches(Some(&api)));

        assert!(filter(Some("api"), None, None).matches(Some(&api)));
        assert!(filter(Some("0123"), None, None).matches(Some(&api)), "id prefix");
        assert!(!filter(Some("012"), None, None).matches(Some(&api)), "prefix too short");
        assert!(!filter(Some("ap"), None, None).matches(Some(&api)), "names match whole");
        assert!(!filter(Some("api"), None, None).matches(None));
        assert!(filter(Some("host"), None, None).matches(None));
        assert!(!filter(Some("host"), None, None).matches(Some(&web)));

        assert!(filter(None, Some("checkout-7d9f"), Some("shop")).matches(Some(&api)));
        assert!(filter(None, Some("checkout-7d9f-uid"), None).matches(Some(&api)), "uid prefix");
        assert!(!filter(None, None, Some("shop")).matches(Some(&web)), "docker has no namespace");
        assert!(!filter(None, None, Some("shop")).matches(None));
        assert!(!filter(Some("api"), None, Some("other")).matches(Some(&api)), "all must match");
    }

    #[test]
    fn filters_reject_empty_values_and_host_with_a_pod() {
        assert!(filter(Some(" "), None, None).validate().unwrap_err().contains("--container"));
        assert!(filter(None, None, Some("")).validate().unwrap_err().contains("--namespace"));
        assert!(filter(Some("host"), Some("p"), None).validate().unwrap_err().contains("host"));
        assert!(filter(Some("api"), Some("p"), Some("ns")).validate().is_ok());
    }

    #[test]
    fn cells_name_what_is_known_and_clip_keeps_both_ends() {
        assert_eq!(cell(None), "host");
        assert_eq!(
            cell(Some(&k8s("shop", "checkout-7d9f", "api", "0123"))),
            "shop/checkout-7d9f/api"
        );
        assert_eq!(cell(Some(&docker("fedcba9876543210", None))), "fedcba987654");
        assert_eq!(cell(Some(&docker("fedcba9876543210", Some("web")))), "web");
        let mut unnamed = k8s("shop", "p", "api", "abcdef012345678");
        unnamed.name = None;
        unnamed.pod = None;
        unnamed.namespace = None;
        assert_eq!(cell(Some(&unnamed)), "?/p-uid-0000/abcdef012345", "unknown stays `?`");
        let mut pause = k8s("shop", "checkout-7d9f", "api", "abcdef012345678");
        pause.name = None;
        pause.role = Role::Sandbox;
        assert_eq!(cell(Some(&pause)), "shop/checkout-7d9f/(sandbox)");

        assert_eq!(clip_middle("shop/checkout-7d9f8b6c5-x2x9z/api", 16), "shop/che…x9z/api");
        assert_eq!(clip_middle("shop/checkout-7d9f8b6c5-x2x9z/api", 16).chars().count(), 16);
        assert_eq!(clip_middle("host", 16), "host");
    }

    #[test]
    fn groups_sum_per_container_and_per_pod_with_host_apart() {
        let api = k8s("shop", "checkout", "api", "aaaa1111");
        let sidecar = k8s("shop", "checkout", "envoy", "bbbb2222");
        let other = k8s("shop", "cart", "api", "cccc3333");
        let web = docker("dddd4444", Some("web"));
        let mut pause = k8s("shop", "checkout", "api", "eeee5555");
        pause.name = None;
        pause.role = Role::Sandbox;
        let m = |open, growth, alerts| Member {
            open,
            opened_total: u64::from(open) * 2,
            closed_total: u64::from(open),
            growth,
            alerts,
        };
        let members = || {
            vec![
                (Some(&api), m(10, 5, 1)),
                (Some(&api), m(2, 0, 0)),
                (Some(&sidecar), m(8, 0, 0)),
                (Some(&other), m(30, 0, 0)),
                (Some(&web), m(1, 0, 0)),
                (None, m(4, -1, 0)),
                (None, m(3, 0, 0)),
                (Some(&pause), m(1, 1, 1)),
            ]
        };
        let by_container = group(members(), false);
        let names: Vec<&str> = by_container.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(
            names,
            ["shop/checkout/api", "shop/cart/api", "shop/checkout/envoy", "host", "web"],
            "alerting first, then most open"
        );
        let api_row = &by_container[0];
        assert_eq!(
            (api_row.processes, api_row.open, api_row.growth, api_row.alerts),
            (2, 12, 5, 1)
        );
        assert_eq!(api_row.opened_total, 24);
        assert_eq!(api_row.container.as_ref().map(|c| c.id.as_str()), Some("aaaa1111"));
        let host = by_container.iter().find(|r| r.group == "host").expect("host group");
        assert_eq!((host.processes, host.open, host.growth), (2, 7, -1));
        assert!(host.container.is_none() && host.pod.is_none());

        let by_pod = group(members(), true);
        let names: Vec<&str> = by_pod.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(names, ["shop/checkout", "shop/cart", "host", "web"]);
        assert_eq!((by_pod[0].processes, by_pod[0].open, by_pod[0].alerts), (3, 20, 1));
        assert_eq!(by_pod[0].pod.as_deref(), Some("checkout"));
        assert!(by_pod.iter().all(|r| r.container.is_none()));
        // Every process but the sandbox lands in exactly one group; the sandbox in none.
        for rows in [&by_container, &by_pod] {
            let total: u32 = rows.iter().map(|r| r.open).sum();
            assert_eq!(total, members().iter().map(|(_, m)| m.open).sum::<u32>() - 1);
            assert!(rows.iter().all(|r| r.container.as_ref().is_none_or(|c| c.id != "eeee5555")));
        }
    }
}
