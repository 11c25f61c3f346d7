//! Container resolution against real cgroups: for every path shape of docs/containers.md the
//! test makes the cgroup directories under the real cgroup2 mount (`/sys/fs/cgroup/unified` on
//! hybrid hosts, `/sys/fs/cgroup` in the VM matrix's pure cgroup v2 guests), moves a real
//! workload process into the leaf, lays out a kubelet log tree (a pod with a sidecar) and a
//! docker config, and checks the exact placement the resolver gives for the directory's id;
//! then, through one daemon, what users see: the id its events carry is that directory's inode,
//! `top`, `conns` and `leaks --json` carry the exact container object, `top --by container|pod`
//! rows and the placement filters select exactly the matching shapes, /metrics labels each
//! process (and container) with its workload, and a leak in the pod with a sidecar raises an
//! alert naming the leaking container, its pod and namespace.
mod common;

use std::collections::BTreeSet;

use common::{
    Daemon, FAST_LEAKS, Receiver, Workload, num,
    pods::{Cgroups, Kubelet, container_id, inode, pod_uid},
};
use serde_json::Value;
use tracer::containers::{Container, Directory, Placement, Resolver, Role, Runtime};

/// One shape: its cgroup path and the placement expected for it.
struct Case {
    path: String,
    want: Placement,
}

fn host(path: &str, unit: Option<&str>, role: Role) -> Case {
    Case {
        path: path.to_owned(),
        want: Placement {
            cgroup: Some(path.to_owned()),
            container: None,
            unit: unit.map(str::to_owned),
            role,
        },
    }
}

struct Names<'a> {
    name: Option<&'a str>,
    pod: Option<&'a str>,
    namespace: Option<&'a str>,
    pod_uid: Option<&'a str>,
}

const NO_NAMES: Names<'static> = Names { name: None, pod: None, namespace: None, pod_uid: None };

fn contained(path: String, runtime: Runtime, id: &str, names: Names<'_>, role: Role) -> Case {
    let owned = |s: Option<&str>| s.map(str::to_owned);
    Case {
        want: Placement {
            cgroup: Some(path.clone()),
            container: Some(Container {
                id: id.to_owned(),
                name: owned(names.name),
                runtime,
                pod: owned(names.pod),
                namespace: owned(names.namespace),
                pod_uid: owned(names.pod_uid),
                cgroup: path.clone(),
                role,
            }),
            unit: None,
            role,
        },
        path,
    }
}

/// Every shape of docs/containers.md, with its kubelet and docker files laid out.
fn cases(kubelet: &Kubelet) -> Vec<Case> {
    let id = container_id;
    let mut cases = Vec::new();
    // docker: systemd driver (named by its config), cgroupfs driver (no config: no name).
    kubelet.docker(&id(1), "web");
    cases.push(contained(
        format!("/system.slice/docker-{}.scope", id(1)),
        Runtime::Docker,
        &id(1),
        Names { name: Some("web"), ..NO_NAMES },
        Role::Workload,
    ));
    cases.push(contained(
        format!("/docker/{}", id(2)),
        Runtime::Docker,
        &id(2),
        NO_NAMES,
        Role::Workload,
    ));
    // A Burstable pod with a sidecar, and its sandbox (which has no log).
    let uid = pod_uid(1);
    let slice = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    );
    for (n, name) in [(3, "api"), (4, "envoy")] {
        kubelet.container("shop", "checkout-7d9f", &uid, name, &id(n));
        cases.push(contained(
            format!("{slice}/cri-containerd-{}.scope", id(n)),
            Runtime::Containerd,
            &id(n),
            Names {
                name: Some(name),
                pod: Some("checkout-7d9f"),
                namespace: Some("shop"),
                pod_uid: Some(&uid),
            },
            Role::Workload,
        ));
    }
    cases.push(contained(
        format!("{slice}/cri-containerd-{}.scope", id(5)),
        Runtime::Containerd,
        &id(5),
        Names {
            pod: Some("checkout-7d9f"),
            namespace: Some("shop"),
            pod_uid: Some(&uid),
            ..NO_NAMES
        },
        Role::Sandbox,
    ));
    // BestEffort and Guaranteed (no QoS slice) pods.
    for (n, qos, pod) in [(6, "besteffort", "batch-1"), (7, "", "db-0")] {
        let uid = pod_uid(n);
        let u = uid.replace('-', "_");
        let pod_slice = if qos.is_empty() {
            format!("/kubepods.slice/kubepods-pod{u}.slice")
        } else {
            format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice")
        };
        kubelet.container("jobs", pod, &uid, "main", &id(n));
        let names = Names {
            name: Some("main"),
            pod: Some(pod),
            namespace: Some("jobs"),
            pod_uid: Some(&uid),
        };
        cases.push(contained(
            format!("{pod_slice}/cri-containerd-{}.scope", id(n)),
            Runtime::Containerd,
            &id(n),
            names,
            Role::Workload,
        ));
    }
    // The kubelet's cgroupfs driver.
    let uid = pod_uid(8);
    kubelet.container("web", "front-1", &uid, "nginx", &id(8));
    cases.push(contained(
        format!("/kubepods/burstable/pod{uid}/{}", id(8)),
        Runtime::Containerd,
        &id(8),
        Names {
            name: Some("nginx"),
            pod: Some("front-1"),
            namespace: Some("web"),
            pod_uid: Some(&uid),
        },
        Role::Workload,
    ));
    // The kubelet's cgroupfs driver, Guaranteed (no QoS level in the path).
    let uid = pod_uid(13);
    kubelet.container("web", "static-0", &uid, "httpd", &id(13));
    cases.push(contained(
        format!("/kubepods/pod{uid}/{}", id(13)),
        Runtime::Containerd,
        &id(13),
        Names {
            name: Some("httpd"),
            pod: Some("static-0"),
            namespace: Some("web"),
            pod_uid: Some(&uid),
        },
        Role::Workload,
    ));
    // cri-dockerd: the cgroupfs driver's bare id, which docker keeps a config for (its name is
    // docker's `k8s_...` one; the kubelet's name wins).
    let uid = pod_uid(16);
    kubelet.container("legacy", "shim-0", &uid, "app", &id(16));
    kubelet.docker(&id(16), &format!("k8s_app_shim-0_legacy_{uid}_0"));
    cases.push(contained(
        format!("/kubepods/burstable/pod{uid}/{}", id(16)),
        Runtime::Docker,
        &id(16),
        Names {
            name: Some("app"),
            pod: Some("shim-0"),
            namespace: Some("legacy"),
            pod_uid: Some(&uid),
        },
        Role::Workload,
    ));
    // CRI-O under the cgroupfs driver.
    let uid = pod_uid(14);
    kubelet.container("crio-ns", "queue-0", &uid, "rabbit", &id(14));
    cases.push(contained(
        format!("/kubepods/burstable/pod{uid}/crio-{}", id(14)),
        Runtime::CriO,
        &id(14),
        Names {
            name: Some("rabbit"),
            pod: Some("queue-0"),
            namespace: Some("crio-ns"),
            pod_uid: Some(&uid),
        },
        Role::Workload,
    ));
    // CRI-O, and its conmon.
    let uid = pod_uid(9);
    let u = uid.replace('-', "_");
    kubelet.container("crio-ns", "cache-0", &uid, "redis", &id(9));
    let pod_slice =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice");
    cases.push(contained(
        format!("{pod_slice}/crio-{}.scope", id(9)),
        Runtime::CriO,
        &id(9),
        Names {
            name: Some("redis"),
            pod: Some("cache-0"),
            namespace: Some("crio-ns"),
            pod_uid: Some(&uid),
        },
        Role::Workload,
    ));
    let conmon = format!("crio-conmon-{}.scope", id(9));
    cases.push(host(&format!("{pod_slice}/{conmon}"), Some(&conmon), Role::Monitor));
    // podman, its payload sub-cgroup, and its conmon.
    cases.push(contained(
        format!("/machine.slice/libpod-{}.scope", id(10)),
        Runtime::Podman,
        &id(10),
        NO_NAMES,
        Role::Workload,
    ));
    cases.push(contained(
        format!("/machine.slice/libpod-{}.scope/container", id(11)),
        Runtime::Podman,
        &id(11),
        NO_NAMES,
        Role::Workload,
    ));
    // Rootless podman: under the user's systemd instance.
    cases.push(contained(
        format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{}.scope", id(15)),
        Runtime::Podman,
        &id(15),
        NO_NAMES,
        Role::Workload,
    ));
    let conmon = format!("libpod-conmon-{}.scope", id(10));
    cases.push(host(&format!("/machine.slice/{conmon}"), Some(&conmon), Role::Monitor));
    // systemd service, user session, and a malformed container id (one digit short).
    let tag = std::process::id();
    let service = format!("tracer-test-{tag}.service");
    cases.push(host(&format!("/system.slice/{service}"), Some(&service), Role::Workload));
    let session = format!("session-{tag}.scope");
    cases.push(host(
        &format!("/user.slice/user-1000.slice/{session}"),
        Some(&session),
        Role::Workload,
    ));
    let malformed = format!("docker-{}.scope", &id(12)[1..]);
    cases.push(host(&format!("/system.slice/{malformed}"), Some(&malformed), Role::Workload));
    cases
}

/// The v2 line of /proc/PID/cgroup.
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    text.lines().find_map(|l| l.strip_prefix("0::")).expect("a v2 line").to_owned()
}

#[test]
fn every_path_shape_resolves_to_its_exact_placement() {
    let kubelet = Kubelet::new();
    let cases = cases(&kubelet);
    let mut cgroups = Cgroups::new();
    // A server on the host, and one real process per shape.
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut placed = Vec::new();
    for case in &cases {
        let dir = cgroups.make(&case.path);
        let workload = Workload::spawn();
        cgroups.enter(&dir, workload.pid);
        assert_eq!(cgroup_of(workload.pid), case.path, "the kernel put it there");
        placed.push((inode(&dir), workload));
    }

    // The library against the real tree: each directory's id resolves to the exact placement.
    let mut resolver = Resolver::new(cgroups.root.clone(), kubelet.dirs.clone());
    for (case, (id, _)) in cases.iter().zip(&placed) {
        assert_eq!(resolver.resolve(*id), case.want, "{}", case.path);
    }
    assert_eq!(resolver.walks(), 1, "one walk cached every directory");

    // The daemon: the id its events carry is the directory's inode, and it resolves them.
    let mut flags = kubelet.flags();
    flags.extend(["--cgroup-root".to_owned(), cgroups.root.display().to_string()]);
    // Every process its own series (the machine's other processes must not crowd ours out).
    flags.extend(["--metrics-top".to_owned(), "1000".to_owned()]);
    flags.extend(FAST_LEAKS.iter().map(|s| (*s).to_owned()));
    // Every connection's opener stack, so `tracer stacks PID` has groups to show.
    flags.extend(["--stacks".to_owned(), "all".to_owned()]);
    let receiver = Receiver::start();
    flags.extend(["--alert-webhook".to_owned(), receiver.url.clone()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&flags);
    let before = daemon.json(&["status"]);
    server.cmd("serve-bg 0 echo");
    for (_, workload) in &mut placed {
        workload.connect(&format!("127.0.0.1:{port}"), 1);
    }
    for (case, (id, workload)) in cases.iter().zip(&placed) {
        daemon.eventually(&format!("{} in top", case.path), |d| {
            let row = d.process(workload.pid);
            match row["cgroup_id"].as_u64() {
                Some(got) if got == *id => Ok(()),
                got => Err(format!("cgroup_id {got:?}, the directory's inode is {id}")),
            }
        });
    }
    let containers = cases.iter().filter(|c| c.want.container.is_some()).count() as u64;
    daemon.eventually("the daemon resolved every shape", |d| {
        let status = d.json(&["status"]);
        let now = &status["containers"];
        let resolved = num(now, "resolved") - num(&before["containers"], "resolved");
        let in_containers = num(now, "containers") - num(&before["containers"], "containers");
        // Other processes on the machine may be resolved too: at least ours.
        if resolved >= cases.len() as u64 && in_containers >= containers {
            Ok(())
        } else {
            Err(format!("resolved {resolved}, in containers {in_containers}: {now}"))
        }
    });
    let status = daemon.json(&["status"]);
    assert_eq!(status["containers"]["cgroup_root"], cgroups.root.display().to_string());
    assert!(num(&status["containers"], "cached") >= cases.len() as u64);

    // What users see: each workload holds exactly the one connection it made.
    let shapes: Vec<Shape<'_>> =
        cases.iter().zip(&placed).map(|(case, (_, w))| Shape { case, pid: w.pid }).collect();
    views_name_every_shape(&daemon, &shapes, server.pid);
    groups_and_filters(&daemon, &shapes);
    metrics_label_every_shape(&daemon, &shapes);
    stacks_name_every_shape(&daemon, &shapes);

    // A leak in the pod with a sidecar: the alert names the leaking container, not its sidecar.
    let api = shapes.iter().position(|s| container_name(s) == Some("api")).expect("api shape");
    let leaker = shapes[api].pid;
    placed[api].1.cmd(&format!("trickle-bg 127.0.0.1:{port} 200"));
    leak_names_its_container(&daemon, &shapes[api], &receiver);
    for shape in shapes.iter().filter(|s| s.pid != leaker) {
        let alerts = alerts_of(&daemon, shape.pid);
        assert!(alerts.iter().all(|a| a["rule"] != "growth"), "{}: {alerts:?}", shape.case.path);
    }

    // Every shape's alerts carry its placement: each workload serves, the host server connects
    // to it and closes, so each holds one CLOSE_WAIT connection past --close-wait-after.
    let mut ports = Vec::new();
    for (_, workload) in &mut placed {
        let port = workload.listen("127.0.0.1");
        workload.cmd("serve-bg 0 hold");
        ports.push(port);
    }
    for port in &ports {
        server.connect(&format!("127.0.0.1:{port}"), 1);
    }
    server.cmd(&format!("close {}", ports.len()));
    close_wait_names_every_shape(&daemon, &shapes);

    drop(daemon);
    for (_, workload) in placed {
        workload.exit();
    }
    server.exit();
}

/// A shape and the pid of the workload the test moved into it.
struct Shape<'a> {
    case: &'a Case,
    pid: u32,
}

impl Shape<'_> {
    fn container(&self) -> Option<&Container> {
        self.case.want.container.as_ref()
    }

    /// The `container` object the JSON answers must carry for it (null for host shapes).
    fn json(&self) -> Value {
        serde_json::to_value(self.container()).expect("container to JSON")
    }
}

fn container_name<'a>(shape: &'a Shape<'_>) -> Option<&'a str> {
    shape.container().and_then(|c| c.name.as_deref())
}

/// `top --json`'s and `conns --json`'s exact container object for every shape; the host server
/// (which accepted every connection) stays a host process.
fn views_name_every_shape(daemon: &Daemon, shapes: &[Shape<'_>], server: u32) {
    daemon.eventually("top and conns name every shape", |d| {
        let top = d.json(&["top"]);
        let conns = d.json(&["conns"]);
        for shape in shapes {
            let path = &shape.case.path;
            let row = rows(&top, "processes").into_iter().find(|r| r["pid"] == shape.pid);
            let row = row.ok_or_else(|| format!("{path}: pid {} not in top", shape.pid))?;
            if row["container"] != shape.json() {
                return Err(format!(
                    "{path}: top says {}, want {}",
                    row["container"],
                    shape.json()
                ));
            }
            if row["open"] != 1 {
                return Err(format!("{path}: open {} in top, want 1", row["open"]));
            }
            let mine: Vec<Value> = rows(&conns, "connections")
                .into_iter()
                .filter(|c| c["pid"] == shape.pid && c["phase"] == "open")
                .collect();
            if mine.len() != 1 || mine[0]["container"] != shape.json() {
                let got: Vec<&Value> = mine.iter().map(|c| &c["container"]).collect();
                return Err(format!("{path}: conns {got:?}, want one with {}", shape.json()));
            }
        }
        let served: Vec<Value> =
            rows(&conns, "connections").into_iter().filter(|c| c["pid"] == server).collect();
        if served.len() < shapes.len() || served.iter().any(|c| !c["container"].is_null()) {
            return Err(format!(
                "the host server's {} connections must be host ones",
                served.len()
            ));
        }
        Ok(())
    });
}

/// `top --by container|pod` rows and the `--container/--pod/--namespace` filters of top and
/// conns, against the placements the test laid out.
fn groups_and_filters(daemon: &Daemon, shapes: &[Shape<'_>]) {
    let by_container = daemon.json(&["top", "--by", "container"]);
    let groups = rows(&by_container, "groups");
    for shape in shapes.iter().filter(|s| s.container().is_some()) {
        let c = shape.container().expect("container");
        if c.role == Role::Sandbox {
            // Not a container of its own: no row (not even a nameless one).
            let id = c.id.as_str();
            assert!(groups.iter().all(|g| g["container"]["id"] != id), "sandbox row: {groups:?}");
            continue;
        }
        let group = groups.iter().find(|g| g["container"] == shape.json());
        let group = group.unwrap_or_else(|| panic!("{}: no --by container row", shape.case.path));
        assert_eq!((num(group, "processes"), num(group, "open")), (1, 1), "{group}");
        let c = shape.container().expect("container");
        let label = c.name.clone().unwrap_or_else(|| c.id[..12].to_owned());
        let want = match (&c.namespace, &c.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}/{label}"),
            _ => label,
        };
        assert_eq!(group["group"], want.as_str());
    }
    let host = groups.iter().find(|g| g["group"] == "host").expect("a host group");
    let hosts = shapes.iter().filter(|s| s.container().is_none()).count() as u64;
    assert!(num(host, "processes") >= hosts, "{host}");

    // By pod: the pod with a sidecar is one row of api and envoy (its sandbox owns no
    // application traffic: not counted); CRI-O's conmon is a host process, not in its pod.
    let by_pod = daemon.json(&["top", "--by", "pod"]);
    for (pod, processes) in [
        ("shop/checkout-7d9f", 2),
        ("jobs/batch-1", 1),
        ("jobs/db-0", 1),
        ("web/front-1", 1),
        ("web/static-0", 1),
        ("legacy/shim-0", 1),
        ("crio-ns/cache-0", 1),
        ("crio-ns/queue-0", 1),
    ] {
        let rows = rows(&by_pod, "groups");
        let row = rows.iter().find(|g| g["group"] == pod).unwrap_or_else(|| panic!("no {pod}"));
        assert_eq!((num(row, "processes"), num(row, "open")), (processes, processes), "{row}");
        assert!(row["container"].is_null());
    }

    // Filters select exactly the shapes whose placement matches (among the test's processes).
    let ours: BTreeSet<u32> = shapes.iter().map(|s| s.pid).collect();
    let select = |pred: fn(&Container) -> bool| -> BTreeSet<u32> {
        shapes.iter().filter(|s| s.container().is_some_and(pred)).map(|s| s.pid).collect()
    };
    let docker_id = shapes
        .iter()
        .find_map(|s| s.container().filter(|c| c.name.as_deref() == Some("web")))
        .map(|c| c.id[..12].to_owned())
        .expect("the named docker container");
    let hosts: BTreeSet<u32> =
        shapes.iter().filter(|s| s.container().is_none()).map(|s| s.pid).collect();
    let filters: Vec<(Vec<&str>, BTreeSet<u32>)> = vec![
        (vec!["--namespace", "shop"], select(|c| c.namespace.as_deref() == Some("shop"))),
        (vec!["--namespace", "jobs"], select(|c| c.namespace.as_deref() == Some("jobs"))),
        (vec!["--pod", "checkout-7d9f"], select(|c| c.pod.as_deref() == Some("checkout-7d9f"))),
        (vec!["--container", "api"], select(|c| c.name.as_deref() == Some("api"))),
        (
            vec!["--namespace", "shop", "--container", "envoy"],
            select(|c| c.name.as_deref() == Some("envoy")),
        ),
        (vec!["--container", docker_id.as_str()], select(|c| c.name.as_deref() == Some("web"))),
        (vec!["--container", "host"], hosts),
    ];
    for (args, want) in filters {
        assert!(!want.is_empty(), "{args:?} selects some of the test's processes");
        let top = daemon.json(&[&["top"][..], &args].concat());
        let got: BTreeSet<u32> = rows(&top, "processes")
            .iter()
            .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
            .filter(|p| ours.contains(p))
            .collect();
        assert_eq!(got, want, "top {args:?}");
        let conns = daemon.json(&[&["conns"][..], &args].concat());
        let got: BTreeSet<u32> = rows(&conns, "connections")
            .iter()
            .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
            .filter(|p| ours.contains(p))
            .collect();
        assert_eq!(got, want, "conns {args:?}");
    }
}

/// `tracer stacks PID --json` carries each shape's exact container object and its one
/// connection's stack; the text header names the placement (`in <namespace>/<pod>/<container>`,
/// `(sandbox)` for the pause process, nothing for a host process).
fn stacks_name_every_shape(daemon: &Daemon, shapes: &[Shape<'_>]) {
    for shape in shapes {
        let pid = shape.pid.to_string();
        let path = &shape.case.path;
        let answer = daemon.json(&["stacks", &pid]);
        assert_eq!(answer["container"], shape.json(), "{path}: {answer:#}");
        assert_eq!(num(&answer, "open"), 1, "{path}: {answer:#}");
        let grouped: u64 = rows(&answer, "groups").iter().map(|g| num(g, "count")).sum();
        assert_eq!(grouped, 1, "{path}: its connection's stack: {answer:#}");
        let text = daemon.try_cli(&["stacks", &pid]).expect("stacks text");
        let header = text.lines().next().unwrap_or_default().to_owned();
        let c = shape.container();
        let want = match c {
            None => format!("pid {pid} (workload): "),
            Some(c) => {
                let label = match (c.role, &c.name) {
                    (Role::Sandbox, _) => "(sandbox)".to_owned(),
                    (_, Some(name)) => name.clone(),
                    (_, None) => c.id[..12].to_owned(),
                };
                match (&c.namespace, &c.pod) {
                    (Some(ns), Some(pod)) => format!(" in {ns}/{pod}/{label}: "),
                    _ => format!(" in {label}: "),
                }
            }
        };
        assert!(header.contains(&want), "{path}: {header:?} lacks {want:?}");
        if c.is_none() {
            assert!(!header.contains(" in "), "{path}: a host process: {header:?}");
        }
    }
}

/// Per-process series carry `k8s_namespace`/`k8s_pod`/`k8s_container` as known for container
/// shapes and none for host ones; each container has its `tcp_tracer_container_*` series.
fn metrics_label_every_shape(daemon: &Daemon, shapes: &[Shape<'_>]) {
    let text = daemon.scrape_metrics();
    let series = samples(&text);
    for shape in shapes {
        let pid = shape.pid.to_string();
        let open: Vec<&Sample> = series
            .iter()
            .filter(|s| s.name == "tcp_tracer_open_connections" && s.label("pid") == Some(&pid))
            .collect();
        assert_eq!(open.len(), 1, "{}: one open series for pid {pid}", shape.case.path);
        let got: Vec<(&str, &str)> = open[0]
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with("k8s_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let want = workload_labels(shape.container());
        let want: Vec<(&str, &str)> = want.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, want, "{} labels: {:?}", shape.case.path, open[0]);
        assert_eq!(open[0].value, 1.0, "{}", shape.case.path);
        // Kubernetes' own target labels are never set by tracer on workload series.
        for taken in ["namespace", "pod", "container"] {
            assert!(open[0].label(taken).is_none(), "{taken} on {:?}", open[0]);
        }
        let Some(c) = shape.container() else { continue };
        let short = &c.id[..12];
        let of_container = |s: &&Sample| s.label("container_id") == Some(short);
        if c.role == Role::Sandbox {
            // A pod's sandbox has no per-container series.
            let found: Vec<&Sample> = series.iter().filter(of_container).collect();
            assert!(found.is_empty(), "{}: {found:?}", shape.case.path);
            continue;
        }
        let per_container: Vec<&Sample> = series
            .iter()
            .filter(|s| {
                s.name == "tcp_tracer_container_open_connections"
                    && s.label("container_id") == Some(short)
            })
            .collect();
        assert_eq!(per_container.len(), 1, "{}: {short}", shape.case.path);
        assert_eq!(per_container[0].value, 1.0, "{:?}", per_container[0]);
        let labels: Vec<(&str, &str)> = per_container[0]
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with("k8s_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, want, "{:?}", per_container[0]);
    }
}

/// The workload labels the test expects: those known, namespace, pod, container (name or short
/// id; none for a pod's sandbox); none for a host process.
fn workload_labels(c: Option<&Container>) -> Vec<(&'static str, String)> {
    let Some(c) = c else { return Vec::new() };
    let mut out = Vec::new();
    if let Some(ns) = &c.namespace {
        out.push(("k8s_namespace", ns.clone()));
    }
    if let Some(pod) = &c.pod {
        out.push(("k8s_pod", pod.clone()));
    }
    if c.role != Role::Sandbox {
        out.push(("k8s_container", c.name.clone().unwrap_or_else(|| c.id[..12].to_owned())));
    }
    out
}

/// The leaking container's growth alert: in `leaks --json` with its exact container, under its
/// namespace's filter and not its neighbours', on its `--by container` row, in the log line
/// and on /metrics.
fn leak_names_its_container(daemon: &Daemon, shape: &Shape<'_>, receiver: &Receiver) {
    daemon.eventually("growth raised in the api container", |d| {
        if alerts_of(d, shape.pid).iter().any(|a| a["rule"] == "growth") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let alert = alerts_of(daemon, shape.pid).into_iter().find(|a| a["rule"] == "growth");
    let alert = alert.expect("growth alert");
    assert_eq!(alert["container"], shape.json());
    let alerted = |args: &[&str]| {
        let leaks = daemon.json(&[&["leaks"][..], args].concat());
        rows(&leaks, "active").iter().any(|a| a["pid"] == shape.pid)
    };
    assert!(alerted(&["--namespace", "shop"]));
    assert!(alerted(&["--pod", "checkout-7d9f", "--container", "api"]));
    assert!(!alerted(&["--container", "envoy"]));
    assert!(!alerted(&["--namespace", "jobs"]));
    assert!(!alerted(&["--container", "host"]));
    let log = daemon.log_text();
    let pid = format!("pid={}", shape.pid);
    assert!(
        log.lines().any(|l| l.contains("event=leak_raised")
            && l.contains(&pid)
            && l.contains("container=api")
            && l.contains("pod=checkout-7d9f")
            && l.contains("namespace=shop")),
        "log: {log}"
    );
    let by_container = daemon.json(&["top", "--by", "container", "--namespace", "shop"]);
    let row = rows(&by_container, "groups")
        .into_iter()
        .find(|g| g["group"] == "shop/checkout-7d9f/api")
        .expect("api row");
    assert!(num(&row, "alerts") >= 1 && row["growth"].as_i64() >= Some(10), "{row}");
    let metrics = samples(&daemon.scrape_metrics());
    let alerts = metrics.iter().find(|s| {
        s.name == "tcp_tracer_container_leak_alerts" && s.label("k8s_container") == Some("api")
    });
    assert!(alerts.is_some_and(|s| s.value >= 1.0), "{alerts:?}");
    // The webhook's payload names the container, its pod and namespace.
    daemon.eventually("the webhook got the growth alert", |_| {
        receiver.raised(shape.pid, "growth").map(|_| ()).ok_or_else(|| "no POST yet".to_owned())
    });
    let body = receiver.raised(shape.pid, "growth").expect("raised body");
    assert_eq!(body["alert"]["container"], shape.json(), "{body:#}");
    let c = &body["alert"]["container"];
    let names = [&c["name"], &c["pod"], &c["namespace"]].map(|v| v.as_str().unwrap_or_default());
    assert_eq!(names, ["api", "checkout-7d9f", "shop"], "{body:#}");
}

/// Each shape's `close_wait` alert in `leaks --json` carries its exact container object (null
/// for host shapes), and names the stale connection.
fn close_wait_names_every_shape(daemon: &Daemon, shapes: &[Shape<'_>]) {
    daemon.eventually("close_wait raised in every shape", |d| {
        let active = rows(&d.json(&["leaks"]), "active");
        let missing: Vec<&str> = shapes
            .iter()
            .filter(|s| !active.iter().any(|a| a["pid"] == s.pid && a["rule"] == "close_wait"))
            .map(|s| s.case.path.as_str())
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("none yet for {missing:?}")) }
    });
    let active = rows(&daemon.json(&["leaks"]), "active");
    for shape in shapes {
        let alert = active
            .iter()
            .find(|a| a["pid"] == shape.pid && a["rule"] == "close_wait")
            .expect("close_wait alert");
        assert_eq!(alert["container"], shape.json(), "{}", shape.case.path);
        assert_eq!(num(&alert["evidence"], "stale_close_wait"), 1, "{}", shape.case.path);
    }
}

fn alerts_of(daemon: &Daemon, pid: u32) -> Vec<Value> {
    rows(&daemon.json(&["leaks"]), "active").into_iter().filter(|a| a["pid"] == pid).collect()
}

fn rows(answer: &Value, list: &str) -> Vec<Value> {
    answer[list].as_array().cloned().unwrap_or_default()
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The samples of a scrape (HTTP headers and comments skipped).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| l.starts_with("tcp_tracer_"))
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let Some((name, rest)) = head.split_once('{') else {
                return Some(Sample { name: head.to_owned(), labels: Vec::new(), value });
            };
            let mut labels = Vec::new();
            let mut rest = rest.strip_suffix('}')?;
            while let Some((key, after)) = rest.split_once("=\"") {
                let mut value = String::new();
                let mut chars = after.char_indices();
                let mut end = after.len();
                while let Some((i, ch)) = chars.next() {
                    match ch {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                labels.push((key.trim_start_matches(',').to_owned(), value));
                rest = &after[end..];
            }
            Some(Sample { name: name.to_owned(), labels, value })
        })
        .collect()
}

/// Counts live heap bytes, to measure what the directory holds per container.
struct Counting;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: ptr came from alloc with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn directory_memory_per_container() {
    // Realistic Kubernetes placements, built first so only the directory's share is counted
    // while it takes them in.
    let placements: Vec<Placement> = (0..1000)
        .map(|n| {
            let uid = pod_uid(n);
            let id = container_id(n);
            let path = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            );
            contained(
                path,
                Runtime::Containerd,
                &id,
                Names {
                    name: Some("api-server"),
                    pod: Some("checkout-7d9f8c6b5-x2bqz"),
                    namespace: Some("shop"),
                    pod_uid: Some(&uid),
                },
                Role::Workload,
            )
            .want
        })
        .collect();
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let start = LIVE.load(ordering);
    let (placed, directory) = {
        let mut directory = Directory::default();
        let start_placements = LIVE.load(ordering);
        for (n, placement) in placements.iter().enumerate() {
            directory.insert(n as u64, placement.clone());
        }
        (LIVE.load(ordering) - start_placements, directory)
    };
    let per = placed / 1000;
    eprintln!("directory of 1000 Kubernetes containers: {placed} bytes, {per} bytes per container");
    assert_eq!(directory.len(), 1000);
    assert!(LIVE.load(ordering) - start >= placed);
    // It holds at least the strings themselves, and not wildly more.
    let strings: usize = placements
        .iter()
        .filter_map(|p| p.container.as_ref())
        .map(|c| {
            c.id.len()
                + c.cgroup.len() * 2
                + c.pod_uid.as_ref().map_or(0, String::len)
                + c.name.as_ref().map_or(0, String::len)
                + c.pod.as_ref().map_or(0, String::len)
                + c.namespace.as_ref().map_or(0, String::len)
        })
        .sum();
    assert!(placed as usize >= strings, "{placed} < {strings}");
    assert!((placed as usize) < strings * 4, "{placed} bytes for {strings} bytes of names");
}
