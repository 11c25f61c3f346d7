//! Container resolution against real cgroups: for every path shape of docs/containers.md the
//! test makes the cgroup directories under the real cgroup2 mount, moves a real workload process
//! into the leaf, lays out a kubelet log tree (a pod with a sidecar) and a docker config, and
//! checks the exact placement the resolver gives for the directory's id; then that the id a
//! daemon's events carry is that directory's inode, and that the daemon resolved them.
mod common;

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use common::{Daemon, TempDir, Workload, num};
use tracer::containers::{
    Container, Directory, Placement, Resolver, Role, Runtime, cgroupfs, names::NameDirs,
};

/// Cgroup directories the test made, removed leaf-first on drop after moving every process in
/// them back to the root cgroup (also when the test fails).
struct Cgroups {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroups {
    fn new() -> Self {
        let root = cgroupfs::find_cgroup2_mount().expect("a cgroup2 mount");
        Self { root, made: Vec::new() }
    }

    /// Makes `path` (and whatever of its parents is missing); returns its directory.
    fn make(&mut self, path: &str) -> PathBuf {
        let mut dir = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.made.push(dir.clone());
            }
        }
        dir
    }

    fn enter(&self, dir: &Path, pid: u32) {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat cgroup").ino()
}

/// A 64-hex container id unique to this run.
fn container_id(n: u32) -> String {
    format!("{:032x}{:032x}", u128::from(std::process::id()), 0xc0de_0000_u128 + u128::from(n))
}

fn pod_uid(n: u32) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n)
}

/// A kubelet log tree: `pods/<ns>_<pod>_<uid>/<container>/0.log` and the
/// `containers/<pod>_<ns>_<container>-<id>.log` links to them.
struct Kubelet {
    dirs: NameDirs,
    _tmp: TempDir,
}

impl Kubelet {
    fn new() -> Self {
        let tmp = TempDir::new("kubelet");
        let dirs = NameDirs {
            pod_logs: tmp.0.join("pods"),
            container_logs: tmp.0.join("containers"),
            docker: tmp.0.join("docker"),
        };
        std::fs::create_dir_all(&dirs.pod_logs).expect("pods dir");
        std::fs::create_dir_all(&dirs.container_logs).expect("containers dir");
        Self { dirs, _tmp: tmp }
    }

    fn container(&self, namespace: &str, pod: &str, uid: &str, name: &str, id: &str) {
        let dir = self.dirs.pod_logs.join(format!("{namespace}_{pod}_{uid}")).join(name);
        std::fs::create_dir_all(&dir).expect("pod log dir");
        std::fs::write(dir.join("0.log"), "").expect("log");
        let link = self.dirs.container_logs.join(format!("{pod}_{namespace}_{name}-{id}.log"));
        std::os::unix::fs::symlink(dir.join("0.log"), link).expect("log link");
    }

    fn docker(&self, id: &str, name: &str) {
        let dir = self.dirs.docker.join("containers").join(id);
        std::fs::create_dir_all(&dir).expect("docker dir");
        let config = serde_json::json!({ "ID": id, "Name": format!("/{name}") });
        std::fs::write(dir.join("config.v2.json"), config.to_string()).expect("config");
    }

    fn flags(&self) -> Vec<String> {
        let flag = |name: &str, path: &Path| [name.to_owned(), path.display().to_string()];
        [
            flag("--pod-logs-dir", &self.dirs.pod_logs),
            flag("--container-logs-dir", &self.dirs.container_logs),
            flag("--docker-dir", &self.dirs.docker),
        ]
        .concat()
    }
}

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
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&flags);
    let before = daemon.json(&["status"]);
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
    drop(daemon);
    for (_, workload) in placed {
        workload.exit();
    }
    server.exit();
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
