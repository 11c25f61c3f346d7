//! A "container" built from kernel parts: a docker-shaped cgroup v2 directory, its own cgroup
//! (rooted at that directory), PID, mount, UTS and network namespaces (`unshare`), a veth pair to the host on a private /30, and
//! a docker config naming it. A client inside opens connections to a server on the host; the
//! daemon must attribute the client to its container, list its connections in the container's
//! network namespace, and count exactly what `ss` run inside that namespace shows. Then real
//! containers, run by podman and by a private dockerd from an image imported from a local root
//! filesystem, when they work on this machine (otherwise those tests print why and skip).
mod common;

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use common::{Daemon, TempDir, Workload, example_path, expect_eq, num, pods::Cgroups};
use tracer::containers::cgroupfs;

/// Runs a command, panicking with its output when it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| {
        panic!("{}: {e} (the test needs iproute2, util-linux's unshare and nsenter)", args[0])
    });
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair: deleting the host end deletes both.
struct Veth(String);

impl Drop for Veth {
    fn drop(&mut self) {
        // Already gone when the container's namespace went first.
        let _ = Command::new("ip").args(["link", "delete", &self.0]).output();
    }
}

/// The "container": the workload example as PID 1 of new cgroup, PID, mount, UTS and network
/// namespaces (`unshare --kill-child`, so that killing the wrapper kills it), with `pid` set to
/// its pid as the host sees it. The wrapper moves itself into `cgroup` before `unshare`, so the
/// container's cgroup namespace is rooted at its own cgroup, as a runtime's is.
fn spawn_container(cgroup: &Path) -> Workload {
    let procs = cgroup.join("cgroup.procs");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$1" && exec unshare --cgroup --pid --fork --kill-child --mount --mount-proc --uts --net "$2""#)
        .arg("sh")
        .arg(&procs)
        .arg(example_path("workload"));
    let mut workload = Workload::spawn_command(cmd);
    assert_eq!(workload.pid, 1, "the workload is PID 1 of its own PID namespace");
    let wrapper = workload.child_pid();
    let children = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
        .expect("unshare's children");
    workload.pid = children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("pid");
    workload
}

fn netns_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("ns/net").ino()
}

/// What `read` returns, with `ss_states(pid)` taken before and after it: an error if `ss` moved
/// meanwhile, so that the two are compared at one moment.
fn with_steady_ss<T>(
    pid: u32,
    read: impl FnOnce() -> T,
) -> Result<(T, BTreeMap<String, u64>), String> {
    let before = ss_states(pid);
    let value = read();
    let after = ss_states(pid);
    if before != after {
        return Err(format!("ss moved while sampling: {before:?} -> {after:?}"));
    }
    Ok((value, after))
}

/// `pid`'s cgroup v2 path, as /proc shows it.
fn v2_cgroup_of(pid: u32) -> String {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("v2 line").to_owned()
}

/// `ss -tanp` inside `pid`'s network namespace: per TCP state (tracer's names), the connections
/// that process holds (orphans it closed have no holder and are not listed). `/proc` stays the
/// host's (only the network namespace is entered), so `ss` names holders by their host pids.
fn ss_states(pid: u32) -> BTreeMap<String, u64> {
    let net = format!("--net=/proc/{pid}/ns/net");
    let text = run(&["nsenter", &net, "ss", "-tanpH"]);
    let mut states = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains(&format!("pid={pid},"))) {
        let state = line.split_whitespace().next().unwrap_or("").to_lowercase();
        let state = match state.as_str() {
            // Listeners are not connections.
            "listen" => continue,
            "estab" => "established".to_owned(),
            "syn-sent" => "syn_sent".to_owned(),
            other => other.replace('-', "_"),
        };
        *states.entry(state).or_default() += 1;
    }
    states
}

/// The non-zero state counts of a `top` row.
fn top_states(row: &serde_json::Value) -> BTreeMap<String, u64> {
    row["states"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

/// A docker config under `<dir>/containers/<id>/` naming the container.
fn docker_config(dir: &Path, id: &str, name: &str) {
    let dir = dir.join("containers").join(id);
    std::fs::create_dir_all(&dir).expect("docker dir");
    let config = serde_json::json!({ "ID": id, "Name": format!("/{name}") });
    std::fs::write(dir.join("config.v2.json"), config.to_string()).expect("config");
}

#[test]
fn container_from_kernel_parts_counts_what_ss_sees_in_its_namespace() {
    const OPENED: usize = 7;
    const CLOSED: usize = 3;
    let tag = std::process::id();
    let id = format!("{:032x}{:032x}", u128::from(tag), 0x6e65_746e_u128);
    let name = format!("netns-client-{tag}");
    let docker = TempDir::new("docker");
    docker_config(&docker.0, &id, &name);
    // Removed with its processes moved out on drop, also when the test fails.
    let mut cgroups = Cgroups::new();
    let cgroup = cgroups.make(&format!("/system.slice/docker-{id}.scope"));

    // The container, in its cgroup, with a veth pair to the host on a private /30.
    let mut client = spawn_container(&cgroup);
    // In its cgroup (the host sees the full path), in its own cgroup namespace rooted there
    // (inside, its cgroup is `/`).
    let path = format!("/system.slice/docker-{id}.scope");
    assert_eq!(v2_cgroup_of(client.pid), path, "moved into its cgroup before unshare");
    let ns = |pid: u32| std::fs::metadata(format!("/proc/{pid}/ns/cgroup")).expect("ns").ino();
    assert_ne!(ns(client.pid), ns(std::process::id()), "its own cgroup namespace");
    let pid = client.pid.to_string();
    let inside = run(&["nsenter", "-t", &pid, "--cgroup", "--mount", "cat", "/proc/1/cgroup"]);
    assert!(inside.lines().any(|l| l == "0::/"), "inside its cgroup namespace: {inside}");
    let (host_if, peer_if) = (format!("tvh{tag}"), format!("tvc{tag}"));
    let subnet = format!("10.{}.{}", 200 + tag % 50, (tag / 50) % 256);
    let (host_ip, peer_ip) = (format!("{subnet}.1"), format!("{subnet}.2"));
    run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if]);
    let _veth = Veth(host_if.clone());
    run(&["ip", "link", "set", &peer_if, "netns", &client.pid.to_string()]);
    run(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
    run(&["ip", "link", "set", &host_if, "up"]);
    let net = format!("--net=/proc/{}/ns/net", client.pid);
    for args in [
        vec!["ip", "addr", "add", &format!("{peer_ip}/30"), "dev", &peer_if],
        vec!["ip", "link", "set", &peer_if, "up"],
        vec!["ip", "link", "set", "lo", "up"],
    ] {
        run(&[&["nsenter", &net][..], &args].concat());
    }
    let container_netns = netns_inode(client.pid);
    assert_ne!(container_netns, netns_inode(std::process::id()), "its own network namespace");

    let root = cgroups.root.display().to_string();
    let docker_dir = docker.0.display().to_string();
    let daemon = Daemon::start(&["--cgroup-root", &root, "--docker-dir", &docker_dir]);

    // The server on the host's end of the veth; the client connects from inside.
    let mut server = Workload::spawn();
    let port = server.listen(&host_ip);
    server.cmd(&format!("accept-bg 0 {OPENED}"));
    client.connect(&format!("{host_ip}:{port}"), OPENED);
    server.cmd("wait-bg");
    client.cmd(&format!("close {CLOSED}"));

    daemon.eventually("the client's counts equal ss in its namespace", |d| {
        let ((row, conns), after) = with_steady_ss(client.pid, || {
            (d.process(client.pid), d.json(&["conns", "--pid", &client.pid.to_string()]))
        })?;
        let rows = conns["connections"].as_array().cloned().unwrap_or_default();
        let listed: BTreeMap<String, u64> = rows.iter().fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c["state"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
            m
        });
        expect_eq("open", num(&row, "open"), after.values().sum())?;
        expect_eq("open", num(&row, "open"), (OPENED - CLOSED) as u64)?;
        if top_states(&row) != after {
            return Err(format!("top states {:?}, ss {after:?}", top_states(&row)));
        }
        if listed != after {
            return Err(format!("conns states {listed:?}, ss {after:?}"));
        }
        for c in &rows {
            expect_eq("conn netns", num(c, "netns"), container_netns)?;
            if c["container"]["id"] != id.as_str() {
                return Err(format!("conn container {}", c["container"]));
            }
        }
        let host_netns = conns["host_netns"].as_u64();
        if host_netns.is_none() || host_netns == Some(container_netns) {
            return Err(format!("host_netns {host_netns:?}, the container's is {container_netns}"));
        }
        let container = &row["container"];
        let want = serde_json::json!({
            "id": id, "name": name, "runtime": "docker",
            "cgroup": format!("/system.slice/docker-{id}.scope"),
        });
        for key in ["id", "name", "runtime", "cgroup"] {
            if container[key] != want[key] {
                return Err(format!("container {container}, want {want}"));
            }
        }
        for key in ["pod", "namespace", "pod_uid"] {
            if !container[key].is_null() {
                return Err(format!("{key} guessed: {container}"));
            }
        }
        Ok(())
    });

    // The placement filters select by the name the docker config gave, and `host` the server.
    let pids = |args: &[&str]| -> Vec<u64> {
        let conns = daemon.json(&[&["conns"], args].concat());
        conns["connections"].as_array().expect("list").iter().map(|c| num(c, "pid")).collect()
    };
    let ours = pids(&["--container", &name]);
    assert_eq!(ours, vec![u64::from(client.pid); OPENED - CLOSED], "--container {name}");
    let host = pids(&["--container", "host"]);
    let server_rows = host.iter().filter(|p| **p == u64::from(server.pid)).count();
    assert_eq!(server_rows, OPENED, "--container host lists the server's connections");
    assert!(!host.contains(&u64::from(client.pid)), "--container host lists the client");

    // The host server keeps all it accepted (those the client closed in close_wait), as a host
    // process.
    daemon.eventually("the server stays the host's", |d| {
        let row = d.process(server.pid);
        if !row["container"].is_null() {
            return Err(format!("server in a container: {}", row["container"]));
        }
        let ss = ss_states(server.pid);
        expect_eq("server open", num(&row, "open"), ss.values().sum())?;
        expect_eq("server open", num(&row, "open"), OPENED as u64)?;
        if top_states(&row) != ss {
            return Err(format!("server top states {:?}, ss {ss:?}", top_states(&row)));
        }
        Ok(())
    });
    drop(daemon);
    client.exit();
    server.exit();
}

/// podman with a private storage under a temp directory (nothing under /var/lib), removed with
/// the test's containers on drop.
struct Podman {
    storage: TempDir,
    containers: Vec<String>,
    /// podman's cgroupfs manager makes `/libpod_parent` (and `libpod_parent/conmon`) in every
    /// cgroup hierarchy: removed on drop unless they were there before.
    made_parent: bool,
    /// podman's fixed paths (its blob-info cache under /var/lib/containers, whatever else) that
    /// did not exist before the test: removed on drop.
    made_paths: Vec<PathBuf>,
}

/// Paths podman writes outside `--root`, `--runroot` and `--tmpdir`.
const PODMAN_FIXED_PATHS: [&str; 3] = ["/var/lib/containers", "/run/containers", "/run/libpod"];

/// Every cgroup hierarchy's mount point (v1 controllers and the v2 mount).
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup ") || t.starts_with("cgroup2 "))
        })
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .collect()
}

impl Podman {
    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.storage.0.join("root"))
            .arg("--runroot")
            .arg(self.storage.0.join("run"))
            .arg("--tmpdir")
            .arg(self.storage.0.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        run_tool(self.command().args(args), "podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = self.command().args(["rm", "-f", "-t", "0", name]).output();
        }
        // vfs layers are plain directories: the TempDir removes them.
        let _ = self.command().args(["rmi", "-a", "-f"]).output();
        for path in &self.made_paths {
            let _ = std::fs::remove_dir_all(path);
        }
        if self.made_parent {
            // conmon outlives `podman run` by a moment: retry while its cgroup is busy.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let mut left = false;
                for mount in cgroup_mounts() {
                    for dir in ["libpod_parent/conmon", "libpod_parent"] {
                        let dir = mount.join(dir);
                        left |= std::fs::remove_dir(&dir).is_err() && dir.exists();
                    }
                }
                if !left || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// A root filesystem holding the workload example and the shared libraries it loads (`ldd`),
/// at their own paths: the image is built here, from local files only.
fn workload_rootfs(dir: &Path) -> PathBuf {
    let workload = example_path("workload");
    let mut files = vec![workload.clone()];
    for line in run(&["ldd", &workload.display().to_string()]).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux... (0x...)`
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for file in &files {
        let to = dir.join(file.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir rootfs");
        std::fs::copy(std::fs::canonicalize(file).expect("resolve"), &to).expect("copy");
    }
    std::fs::create_dir_all(dir.join("proc")).expect("proc");
    workload
}

/// `--ulimit NAME=N:N` with N our own soft limit of `resource`, at most `cap`: podman's
/// defaults raise limits, which needs CAP_SYS_RESOURCE (refused here); lowering never does. (runc
/// still refused RLIMIT_NPROC at exactly our own limit here, hence the cap.) `resource` is an
/// `i32` because glibc and musl (the VM matrix's static build) type it differently.
fn ulimit(name: &str, resource: i32, cap: u64) -> String {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a struct on our stack.
    assert_eq!(unsafe { libc::getrlimit(resource as _, &mut limit) }, 0, "getrlimit");
    let n = limit.rlim_cur.min(cap);
    format!("{name}={n}:{n}")
}

/// One real container, run by Debian's podman from an image imported from a local root
/// filesystem, when a runtime works here; otherwise the test prints each runtime's own error
/// and skips. In the container (own network namespace, loopback only) the workload serves and
/// connects to itself; the daemon must name its container and count what `ss` sees there.
#[test]
fn real_podman_container_is_attributed_when_a_runtime_works() {
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!("SKIP: no podman on this machine (`apt-get install podman runc`)");
        return;
    }
    let made_parent =
        !cgroupfs::find_cgroup2_mount().expect("a cgroup2 mount").join("libpod_parent").exists();
    let made_paths = PODMAN_FIXED_PATHS.iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
    let mut podman =
        Podman { storage: TempDir::new("podman"), containers: Vec::new(), made_parent, made_paths };
    let rootfs = TempDir::new("rootfs");
    let workload = workload_rootfs(&rootfs.0);
    let image = format!("localhost/tracer-test-workload:{}", std::process::id());
    // The image: the root filesystem as a tar archive, imported (no registry involved).
    let tarball = podman.storage.0.join("rootfs.tar");
    run(&[
        "tar",
        "-C",
        &rootfs.0.display().to_string(),
        "-cf",
        &tarball.display().to_string(),
        ".",
    ]);
    let imported = podman
        .command()
        .args(["import", &tarball.display().to_string(), &image])
        .output()
        .expect("podman import");
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));

    // Try each runtime: the first that runs the workload serves the test.
    let limits = [
        ulimit("nofile", libc::RLIMIT_NOFILE as i32, 65_536),
        ulimit("nproc", libc::RLIMIT_NPROC as i32, 4_096),
    ];
    let mut errors = Vec::new();
    let mut started = None;
    for runtime in ["crun", "runc"] {
        let name = format!("tracer-test-{runtime}-{}", std::process::id());
        podman.containers.push(name.clone());
        let mut cmd = podman.command();
        cmd.args(["--runtime", runtime, "run", "-i", "--rm", "--name", &name, "--network", "none"])
            .args(limits.iter().flat_map(|l| ["--ulimit", l.as_str()]))
            .arg(&image)
            .arg(&workload);
        if let Some(w) = Workload::try_spawn_command(cmd) {
            started = Some((runtime, name, w));
            break;
        }
        // The runtime's own error: the same run with stdin closed (the workload exits at once
        // when it starts).
        let mut args = vec!["--runtime", runtime, "run", "--rm", "--network", "none"];
        args.extend(limits.iter().flat_map(|l| ["--ulimit", l.as_str()]));
        let workload = workload.display().to_string();
        args.extend([image.as_str(), workload.as_str()]);
        errors.push(format!("{runtime}: {}", podman.run(&args).err().unwrap_or_default()));
    }
    let Some((runtime, name, mut inside)) = started else {
        eprintln!("SKIP: no container runtime runs a container here: {}", errors.join("; "));
        return;
    };
    eprintln!("podman with {runtime} runs containers here (other runtimes: {errors:?})");
    let pid: u32 = podman
        .run(&["inspect", "--format", "{{.State.Pid}}", &name])
        .expect("podman inspect")
        .parse()
        .expect("pid");
    inside.pid = pid;
    let id = podman.run(&["inspect", "--format", "{{.Id}}", &name]).expect("podman inspect");
    let cgroup = v2_cgroup_of(pid);
    assert!(cgroup.contains(&id), "podman put {pid} in {cgroup}, not a cgroup naming {id}");

    let root = cgroupfs::find_cgroup2_mount().expect("cgroup2").display().to_string();
    let daemon = Daemon::start(&["--cgroup-root", &root]);
    let port = inside.listen("127.0.0.1");
    inside.cmd("accept-bg 0 3");
    inside.connect(&format!("127.0.0.1:{port}"), 3);
    inside.cmd("wait-bg");
    daemon.eventually("the podman container is attributed and counted", |d| {
        let (row, after) = with_steady_ss(pid, || d.process(pid))?;
        expect_eq("open", num(&row, "open"), after.values().sum())?;
        expect_eq("open", num(&row, "open"), 6)?;
        let c = &row["container"];
        if c["id"] != id.as_str() || c["runtime"] != "podman" || c["cgroup"] != cgroup.as_str() {
            return Err(format!("container {c}, want podman {id} in {cgroup}"));
        }
        Ok(())
    });
    drop(daemon);
    inside.exit();
}

/// A private docker daemon (Debian's docker.io): data, state and socket under a temp directory,
/// vfs storage (no mounts), no bridge or iptables, the cgroupfs driver (systemd is not PID 1 on
/// the development machines). On drop: its containers removed, the daemon stopped, and what it
/// made outside the temp directory removed.
struct Dockerd {
    dir: TempDir,
    child: Option<std::process::Child>,
    containers: Vec<String>,
    /// Paths dockerd writes outside its roots that did not exist before the test.
    made_paths: Vec<PathBuf>,
    made_cgroup: bool,
}

/// Paths dockerd writes outside `--data-root` and `--exec-root`.
const DOCKERD_FIXED_PATHS: [&str; 3] = ["/run/docker", "/run/containerd", "/etc/docker/key.json"];

impl Dockerd {
    /// Starts it; Err(its log) when it does not come up.
    fn start() -> Result<Self, String> {
        let made_paths =
            DOCKERD_FIXED_PATHS.iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
        let root = cgroupfs::find_cgroup2_mount().expect("a cgroup2 mount");
        let mut dockerd = Self {
            dir: TempDir::new("dockerd"),
            child: None,
            containers: Vec::new(),
            made_paths,
            made_cgroup: !root.join("docker").exists(),
        };
        let d = &dockerd.dir.0;
        let log = std::fs::File::create(d.join("log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("sock").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver", "vfs", "--exec-opt", "native.cgroupdriver=cgroupfs"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("dockerd: {e}"))?;
        dockerd.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while dockerd.run(&["info"]).is_err() {
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(d.join("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(format!("dockerd did not answer in 30 s: {tail:?}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(dockerd)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(format!("unix://{}", self.dir.0.join("sock").display()));
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        run_tool(self.command().args(args), "docker")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = self.command().args(["rm", "-f", name]).output();
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        for path in &self.made_paths {
            let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
        }
        if self.made_cgroup {
            for mount in cgroup_mounts() {
                let _ = std::fs::remove_dir(mount.join("docker"));
            }
        }
    }
}

/// One real docker container, run by a private docker daemon from an image imported from a
/// local root filesystem, when dockerd runs here; otherwise the test prints why and skips. Its
/// cgroup is docker's cgroupfs shape (`/docker/<id>`), its name comes from the daemon's own
/// `config.v2.json` (`--docker-dir` set to the daemon's data root).
#[test]
fn real_docker_container_is_attributed_and_named_when_dockerd_works() {
    if Command::new("dockerd").arg("--version").output().is_err() {
        eprintln!("SKIP: no dockerd on this machine (`apt-get install docker.io`)");
        return;
    }
    let mut dockerd = match Dockerd::start() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIP: the docker daemon does not run here: {why}");
            return;
        }
    };
    let rootfs = TempDir::new("rootfs");
    let workload = workload_rootfs(&rootfs.0);
    let tarball = dockerd.dir.0.join("rootfs.tar");
    run(&[
        "tar",
        "-C",
        &rootfs.0.display().to_string(),
        "-cf",
        &tarball.display().to_string(),
        ".",
    ]);
    let image = format!("tracer-test-workload:{}", std::process::id());
    dockerd.run(&["import", &tarball.display().to_string(), &image]).expect("docker import");
    let name = format!("tracer-test-{}", std::process::id());
    dockerd.containers.push(name.clone());
    let mut cmd = dockerd.command();
    cmd.args(["run", "-i", "--rm", "--name", &name, "--network", "none", &image]).arg(&workload);
    let Some(mut inside) = Workload::try_spawn_command(cmd) else {
        let mut args = vec!["run", "--rm", "--network", "none", &image];
        let workload = workload.display().to_string();
        args.push(&workload);
        let why = dockerd.run(&args).err().unwrap_or_default();
        eprintln!("SKIP: dockerd runs but not a container: {why}");
        return;
    };
    let pid: u32 = dockerd
        .run(&["inspect", "--format", "{{.State.Pid}}", &name])
        .expect("docker inspect")
        .parse()
        .expect("pid");
    inside.pid = pid;
    let id = dockerd.run(&["inspect", "--format", "{{.Id}}", &name]).expect("docker inspect");
    let cgroup = v2_cgroup_of(pid);
    assert!(cgroup.contains(&id), "docker put {pid} in {cgroup}, not a cgroup naming {id}");

    let root = cgroupfs::find_cgroup2_mount().expect("cgroup2").display().to_string();
    let data_root = dockerd.dir.0.join("root").display().to_string();
    let daemon = Daemon::start(&["--cgroup-root", &root, "--docker-dir", &data_root]);
    let port = inside.listen("127.0.0.1");
    inside.cmd("accept-bg 0 2");
    inside.connect(&format!("127.0.0.1:{port}"), 2);
    inside.cmd("wait-bg");
    daemon.eventually("the docker container is attributed, named and counted", |d| {
        let (row, after) = with_steady_ss(pid, || d.process(pid))?;
        expect_eq("open", num(&row, "open"), after.values().sum())?;
        expect_eq("open", num(&row, "open"), 4)?;
        let c = &row["container"];
        if c["id"] != id.as_str()
            || c["name"] != name.as_str()
            || c["runtime"] != "docker"
            || c["cgroup"] != cgroup.as_str()
        {
            return Err(format!("container {c}, want docker {name} {id} in {cgroup}"));
        }
        Ok(())
    });
    drop(daemon);
    inside.exit();
}

/// A runtime's command: its trimmed stdout, or its stderr (the runtime's own words) on failure.
fn run_tool(cmd: &mut Command, tool: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
