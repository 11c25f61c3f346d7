//! Counts against `ss -tanp` with real servers and clients from Debian packages (redis,
//! nginx, wrk, curl), during load and at quiet points. Run as root.
//!
//! Each tracer query is bracketed by two `ss` snapshots; when both show the same set of
//! sockets for a process, nothing opened or closed in between and the tracer's `open` must
//! equal that number (ss counts every non-listening, non-SYN_SENT socket the process holds).
mod common;

use std::{
    collections::{BTreeSet, HashMap},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, TempDir};

/// One `ss -tanp` run: pid -> the sockets (local, remote) it holds.
struct Snapshot {
    by_pid: HashMap<u32, BTreeSet<(String, String)>>,
    /// Sockets on the watched port that ss could not attribute to any process. ss maps inodes
    /// to pids from a /proc walk made before it dumps the sockets, so under churn it misses
    /// new ones: such a snapshot is no ground truth.
    unattributed: usize,
}

fn ss_snapshot(port: u16) -> Snapshot {
    let out = Command::new("ss").args(["-tanpH"]).output().expect("ss (iproute2)");
    let mut by_pid: HashMap<u32, BTreeSet<(String, String)>> = HashMap::new();
    let mut unattributed = 0;
    let suffix = format!(":{port}");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || matches!(cols[0], "LISTEN" | "SYN-SENT" | "TIME-WAIT") {
            continue;
        }
        if cols.len() < 6 {
            if cols[0] == "ESTAB" && (cols[3].ends_with(&suffix) || cols[4].ends_with(&suffix)) {
                unattributed += 1;
            }
            continue;
        }
        let users = cols[5..].join(" ");
        for part in users.split("pid=").skip(1) {
            if let Some(pid) =
                part.split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok())
            {
                by_pid.entry(pid).or_default().insert((cols[3].to_owned(), cols[4].to_owned()));
            }
        }
    }
    Snapshot { by_pid, unattributed }
}

/// The tracer's open count as ss can see it: ss cannot show sockets in state `close` (reset
/// by the peer, still held: the kernel has unhashed them), which tracer counts as open.
fn tracer_open(top: &serde_json::Value, pid: u32) -> u64 {
    top["processes"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["pid"] == pid))
        .map(|r| r["open"].as_u64().unwrap_or(0) - r["states"]["close"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

/// Brackets `rounds` tracer queries with ss; returns how many (pid, round) checks applied.
fn bracketed_checks(
    daemon: &Daemon,
    port: u16,
    pids: &[u32],
    rounds: usize,
    phase: &str,
) -> HashMap<u32, usize> {
    let mut applied: HashMap<u32, usize> = HashMap::new();
    for _ in 0..rounds {
        let before = ss_snapshot(port);
        let top = daemon.json(&["top"]);
        let after = ss_snapshot(port);
        if before.unattributed + after.unattributed > 0 {
            std::thread::sleep(Duration::from_millis(150));
            continue;
        }
        for &pid in pids {
            let b = before.by_pid.get(&pid).cloned().unwrap_or_default();
            let a = after.by_pid.get(&pid).cloned().unwrap_or_default();
            if b == a {
                assert_eq!(
                    tracer_open(&top, pid),
                    b.len() as u64,
                    "{phase}: pid {pid} ({}): ss shows {} sockets: {b:?}\ntracer conns: {}",
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim(),
                    b.len(),
                    daemon.try_cli(&["conns", "--pid", &pid.to_string()]).unwrap_or_default()
                );
                *applied.entry(pid).or_default() += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    applied
}

/// At a quiet point the counts must be exact (retrying while closes drain).
fn exact_when_quiet(daemon: &Daemon, port: u16, pids: &[u32]) {
    daemon.eventually("exact at a quiet point", |d| {
        let top = d.json(&["top"]);
        let ss = ss_snapshot(port);
        for &pid in pids {
            let want = ss.by_pid.get(&pid).map_or(0, BTreeSet::len) as u64;
            let got = tracer_open(&top, pid);
            if got != want {
                let conns = d.try_cli(&["conns", "--pid", &pid.to_string()]).unwrap_or_default();
                return Err(format!(
                    "pid {pid}: tracer {got}, ss {want}: {:?}\n{conns}",
                    ss.by_pid.get(&pid)
                ));
            }
        }
        Ok(())
    });
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: nginx's master then stops its workers (SIGKILL would orphan them).
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits until the daemon has seen the load generator `pid` open connections: the load runs.
fn wait_for_load(daemon: &Daemon, pid: u32) {
    daemon.eventually(&format!("pid {pid} opens connections"), |d| {
        let opened = d.process(pid)["opened_total"].as_u64().unwrap_or(0);
        if opened > 0 { Ok(()) } else { Err("none yet".into()) }
    });
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server on {port} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_under_redis_benchmark_with_and_without_keepalive() {
    let daemon = Daemon::start(&[]);
    let port = free_port();
    let redis = Server(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)"),
    );
    wait_for_port(port);
    exact_when_quiet(&daemon, port, &[redis.0.id()]);
    for keepalive in ["1", "0"] {
        let mut bench = Server(
            Command::new("redis-benchmark")
                // Without keep-alive every request is a connection: fewer requests, same churn.
                .args([
                    "-p",
                    &port.to_string(),
                    "-c",
                    "20",
                    "-n",
                    if keepalive == "1" { "150000" } else { "20000" },
                ])
                .args(["-k", keepalive, "-t", "ping", "-q"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-benchmark"),
        );
        wait_for_load(&daemon, bench.0.id());
        let pids = [redis.0.id(), bench.0.id()];
        let applied =
            bracketed_checks(&daemon, port, &pids, 12, &format!("redis-benchmark -k {keepalive}"));
        if keepalive == "1" {
            // With keep-alive the sets are stable: the checks must actually have applied.
            assert!(
                pids.iter().all(|p| applied.get(p).copied().unwrap_or(0) >= 3),
                "too few agreeing brackets: {applied:?}"
            );
        }
        let _ = bench.0.wait();
        exact_when_quiet(&daemon, port, &[redis.0.id()]);
    }
    common::assert_corrections_explained(&daemon);
}

#[test]
fn nginx_under_wrk_and_curl() {
    let daemon = Daemon::start(&[]);
    let dir = TempDir::new("nginx");
    let port = free_port();
    let prefix = dir.0.display().to_string();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
         events {{ worker_connections 512; }}\n\
         http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {prefix}/b; proxy_temp_path {prefix}/p; \
         fastcgi_temp_path {prefix}/f; uwsgi_temp_path {prefix}/u; scgi_temp_path {prefix}/s; \
         server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n"
    );
    std::fs::write(dir.0.join("nginx.conf"), conf).expect("conf");
    let nginx = Server(
        Command::new("nginx")
            .args([
                "-p",
                &prefix,
                "-c",
                &format!("{prefix}/nginx.conf"),
                "-e",
                &format!("{prefix}/error.log"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (cargo xtask setup installs it)"),
    );
    wait_for_port(port);
    // The master and its workers (children of the master).
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", nginx.0.id()))
        .unwrap_or_default();
    let mut pids: Vec<u32> = children.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    pids.push(nginx.0.id());
    assert!(pids.len() >= 3, "nginx master and 2 workers: {pids:?}");

    let mut wrk = Server(
        Command::new("wrk")
            .args(["-t", "2", "-c", "16", "-d", "4s", &format!("http://127.0.0.1:{port}/")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wrk"),
    );
    wait_for_load(&daemon, wrk.0.id());
    let mut all = pids.clone();
    all.push(wrk.0.id());
    let applied = bracketed_checks(&daemon, port, &all, 10, "wrk");
    assert!(
        applied.get(&wrk.0.id()).copied().unwrap_or(0) >= 3,
        "keep-alive brackets agree: {applied:?}"
    );
    let _ = wrk.0.wait();
    exact_when_quiet(&daemon, port, &pids);

    // No keep-alive: a new curl process and connection per request.
    for _ in 0..30 {
        let ok = Command::new("curl")
            .args(["-s", "-o", "/dev/null", &format!("http://127.0.0.1:{port}/")])
            .status()
            .expect("curl");
        assert!(ok.success());
    }
    exact_when_quiet(&daemon, port, &pids);
    let accepted: u64 =
        pids.iter().map(|p| daemon.process(*p)["opened_total"].as_u64().unwrap_or(0)).sum();
    assert!(accepted >= 30 + 16, "the workers accepted every wrk and curl connection: {accepted}");
    common::assert_corrections_explained(&daemon);
}
