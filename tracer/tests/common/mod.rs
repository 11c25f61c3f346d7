//! Shared helpers of the integration tests: real workload processes, and a tracing session
//! that collects every event the probes deliver. These tests load BPF programs: run as root.
#![allow(dead_code)]

pub mod pods;
pub mod prometheus;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracer::{
    pipeline::EventSource,
    probes::{KernelCounters, LoadOptions, ProbeMode, Probes},
};
use tracer_common::{ConnEvent, EventKind};

/// A `workload` example process driven line by line (see tracer/examples/workload.rs).
pub struct Workload {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

pub fn example_path(name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: `cargo build -p tracer --examples` (cargo xtask test does)",
        path.display()
    );
    path
}

impl Workload {
    pub fn spawn() -> Self {
        Self::spawn_with(Command::new(example_path("workload")))
    }

    /// Runs the workload inside network namespace `netns` (`ip netns exec`).
    pub fn spawn_in(netns: &str) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(example_path("workload"));
        Self::spawn_with(cmd)
    }

    /// Runs the workload with a soft and hard descriptor limit (`ulimit -n`).
    pub fn spawn_with_nofile(limit: u32) -> Self {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("ulimit -n {limit} && exec \"$0\"")])
            .arg(example_path("workload"));
        Self::spawn_with(cmd)
    }

    /// Runs `cmd` (which must end up running the workload example) as the workload.
    pub fn spawn_command(cmd: Command) -> Self {
        Self::spawn_with(cmd)
    }

    /// The pid of the process spawned (a wrapper's, when `cmd` wraps the workload).
    pub fn child_pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn_with(cmd: Command) -> Self {
        Self::try_spawn_command(cmd).expect("workload started and answered `pid`")
    }

    /// [`Workload::spawn_command`], or None when the command does not start the workload (a
    /// container runtime that fails): its stderr goes to the test's.
    pub fn try_spawn_command(mut cmd: Command) -> Option<Self> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        // Ask rather than trust child.id(): a wrapper (ip netns exec) execs, but ask anyway.
        let mut reply = String::new();
        let asked = writeln!(&stdin, "pid").and_then(|()| stdout.read_line(&mut reply));
        let pid = reply.trim().strip_prefix("ok ").and_then(|p| p.parse().ok());
        let mut workload = Self { child, stdin, stdout, pid: pid.unwrap_or(0) };
        if asked.is_err() || pid.is_none() {
            let _ = workload.child.kill();
            let _ = workload.child.wait();
            return None;
        }
        Some(workload)
    }

    /// Sends one command: Ok(text after `ok`) or Err(text after `err`).
    pub fn try_cmd(&mut self, line: &str) -> Result<String, String> {
        writeln!(self.stdin, "{line}").expect("write command");
        self.stdin.flush().expect("flush");
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).expect("read reply");
        let reply = reply.trim_end();
        match reply.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim_start().to_owned()),
            None => Err(reply.trim_start_matches("err").trim().to_owned()),
        }
    }

    /// Sends one command and returns the text after `ok`; panics on `err`.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write command");
        self.stdin.flush().expect("flush");
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).expect("read reply");
        let reply = reply.trim_end();
        match reply.strip_prefix("ok") {
            Some(rest) => rest.trim_start().to_owned(),
            None => panic!("workload {} failed `{line}`: {reply:?}", self.pid),
        }
    }

    pub fn listen(&mut self, ip: &str) -> u16 {
        self.cmd(&format!("listen {ip}")).parse().expect("port")
    }

    pub fn connect(&mut self, addr: &str, n: usize) -> Vec<u16> {
        self.cmd(&format!("connect {addr} {n}"))
            .split_whitespace()
            .map(|p| p.parse().expect("port"))
            .collect()
    }

    /// Asks the process to exit and waits for it.
    pub fn exit(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Probes loaded in a background thread that records every delivered event.
pub struct Tracing {
    events: Arc<Mutex<Vec<ConnEvent>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Finished>>,
}

/// What a tracing session saw, after its probes were detached and the ring drained.
pub struct Finished {
    pub events: Vec<ConnEvent>,
    pub counters: KernelCounters,
    pub received: [u64; EventKind::COUNT],
    pub malformed: u64,
}

/// The probe mode under test: `TRACER_TEST_PROBE` (auto, fentry, kprobe, tracepoint), so the
/// VM matrix (`cargo xtask vm-test`) can run the same tests in every mode. Default: auto.
pub fn probe_mode() -> ProbeMode {
    match std::env::var("TRACER_TEST_PROBE").as_deref() {
        Ok("fentry") => ProbeMode::Fentry,
        Ok("kprobe") => ProbeMode::Kprobe,
        Ok("tracepoint") => ProbeMode::Tracepoint,
        Ok("auto") | Err(_) => ProbeMode::Auto,
        Ok(other) => {
            panic!("TRACER_TEST_PROBE={other}: expected auto, fentry, kprobe or tracepoint")
        }
    }
}

/// `TRACER_TEST_FAULT_DROP_RELEASE=N` (set by `cargo xtask vm-test --inject-fault`): every
/// probe under test drops every Nth release, so exact-count tests must fail.
pub fn injected_fault() -> u32 {
    std::env::var("TRACER_TEST_FAULT_DROP_RELEASE").ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Tracing {
    pub fn start() -> Self {
        Self::start_with(LoadOptions {
            mode: probe_mode(),
            drop_every_nth_release: injected_fault(),
            ..LoadOptions::default()
        })
    }

    pub fn start_with(options: LoadOptions) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sink = Arc::clone(&events);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut probes = match Probes::load(&options) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        panic!("probes failed to load: {e}");
                    }
                };
                let mut source =
                    EventSource::new(probes.take_events().expect("ring")).expect("source");
                let _ = ready_tx.send(Ok(()));
                let push = |e: &ConnEvent| sink.lock().expect("lock").push(*e);
                // Like the daemon, drain on a timer too: the ring's wakeups alone are not
                // guaranteed (5.10's ring buffer under fentry left 10,000 connections' events
                // unread for two minutes, none lost).
                let mut drain = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        r = source.next_batch(push) => { r.expect("ring read"); }
                        _ = drain.tick() => { source.drain_now(push); }
                        _ = &mut stop_rx => break,
                    }
                }
                probes.detach();
                source.drain_now(push);
                Finished {
                    events: std::mem::take(&mut *sink.lock().expect("lock")),
                    counters: probes.counters().expect("counters"),
                    received: *source.received(),
                    malformed: source.malformed(),
                }
            })
        });
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("probes failed to load: {e}"),
            Err(e) => panic!("probes did not start: {e}"),
        }
        Self { events, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// Waits until `done` holds over the events received so far (panics after `timeout`).
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&[ConnEvent]) -> bool) {
        assert!(self.reached(timeout, done), "timed out waiting for {what}");
    }

    /// Waits until `done` holds over the events received so far; false after `timeout`.
    pub fn reached(&self, timeout: Duration, done: impl Fn(&[ConnEvent]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.events.lock().expect("lock")) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn finish(mut self) -> Finished {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().expect("thread").join().expect("tracing thread panicked")
    }
}

/// True when the event's socket has `port` at either end.
pub fn touches_port(event: &ConnEvent, port: u16) -> bool {
    event.tuple.local_port == port || event.tuple.remote_port == port
}

pub fn of_kind(events: &[ConnEvent], kind: EventKind) -> Vec<ConnEvent> {
    events.iter().filter(|e| e.kind() == Some(kind)).copied().collect()
}

/// The `tracer` binary under test: `TRACER_BIN` (set by the VM matrix), else cargo's build.
pub fn tracer_bin() -> std::path::PathBuf {
    std::env::var_os("TRACER_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tracer").into())
}

/// How long a test waits for a condition: 20 s, or `TRACER_TEST_WAIT_SECS` (the VM matrix
/// raises it: emulated guests are many times slower).
pub fn wait_limit() -> Duration {
    let secs =
        std::env::var("TRACER_TEST_WAIT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    Duration::from_secs(secs)
}

/// A `tracer run` daemon on a private socket, queried through the real CLI.
pub struct Daemon {
    child: Option<Child>,
    pub socket: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tracer-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, |_| {})
    }

    /// [`Daemon::start`], with `prepare` adjusting the command before it is spawned (a
    /// `pre_exec` that moves the daemon into another cgroup or namespace, say).
    pub fn start_with(extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Self {
        let dir = TempDir::new("daemon");
        let socket = dir.0.join("tracer.sock");
        let log = dir.0.join("daemon.log");
        let mode = probe_mode().to_string();
        let mut command = Command::new(tracer_bin());
        command
            // Reconcile every second, so every test also proves it finds nothing to correct.
            .args(["run", "--summary-interval", "0", "--reconcile-interval", "1", "--probe", &mode])
            // Any free port: tests read the bound address from `status`.
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--fault-drop-every-nth-release", &injected_fault().to_string()])
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        prepare(&mut command);
        let child = command.spawn().expect("spawn tracer run");
        let mut daemon = Self { child: Some(child), socket, log, _dir: dir };
        let deadline = Instant::now() + wait_limit().max(Duration::from_secs(60));
        loop {
            if daemon.try_cli(&["status", "--json"]).is_ok() {
                return daemon;
            }
            if let Some(child) = daemon.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("tracer run exited with {status}: {}", daemon.log_text());
            }
            assert!(Instant::now() < deadline, "daemon did not start: {}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tracer <args> --socket <ours>`; Err(stderr) on failure.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(tracer_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run tracer");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.push("--json");
        let text = self.try_cli(&full).unwrap_or_else(|e| panic!("tracer {args:?} failed: {e}"));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad JSON from tracer {args:?}: {e}: {text}"))
    }

    /// The `top --json` row of `pid`, or Null.
    pub fn process(&self, pid: u32) -> serde_json::Value {
        let top = self.json(&["top"]);
        top["processes"]
            .as_array()
            .and_then(|rows| rows.iter().find(|p| p["pid"] == pid).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Polls `check` against fresh `top` rows until it returns Ok, or panics with its last
    /// complaint. Counts settle within milliseconds; softirq state changes may trail a reply.
    pub fn eventually(&self, what: &str, mut check: impl FnMut(&Self) -> Result<(), String>) {
        let started = Instant::now();
        let deadline = started + wait_limit();
        // Each different complaint with when it was first seen: the last one alone can hide
        // the cause (a count that never settled, then its exited process forgotten).
        let mut complaints: Vec<(Duration, String)> = Vec::new();
        loop {
            match check(self) {
                Ok(()) => return,
                Err(complaint) => {
                    if complaints.last().is_none_or(|(_, last)| *last != complaint)
                        && complaints.len() < 8
                    {
                        complaints.push((started.elapsed(), complaint.clone()));
                    }
                    if Instant::now() >= deadline {
                        let history: Vec<String> = complaints
                            .iter()
                            .map(|(at, c)| format!("  after {:.1}s: {c}", at.as_secs_f64()))
                            .collect();
                        // The daemon's own account says where a count went (losses, unmatched
                        // events, kprobe misses, corrections).
                        // On one line: a CI summary keeps the line's start.
                        let status = self.try_cli(&["status", "--json"]).unwrap_or_default();
                        let status = serde_json::from_str::<serde_json::Value>(&status)
                            .map_or(status, |v| v.to_string());
                        panic!(
                            "{what}: {complaint}\ncomplaints seen:\n{}\ndaemon status: {status}",
                            history.join("\n")
                        )
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Waits until the daemon has completed `n` more of the work that `counter` of its status
    /// counts (`reconciles`, `leak_evaluations`) than it had when called: a wait on what the
    /// daemon did, not on the clock.
    pub fn wait_for_more(&self, counter: &str, n: u64) {
        let start = num(&self.json(&["status"]), counter);
        self.eventually(&format!("{n} more {counter}"), |d| {
            let now = num(&d.json(&["status"]), counter);
            if now >= start + n { Ok(()) } else { Err(format!("{counter}: {start} -> {now}")) }
        });
    }

    /// GET /metrics with a plain TCP request (the VM guests have no curl).
    pub fn scrape_metrics(&self) -> String {
        use std::io::{Read, Write};
        let status = self.json(&["status"]);
        let addr = status["metrics_addr"].as_str().expect("metrics_addr");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("response");
        body
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: the daemon gets no chance to clean up (a crash, an OOM kill).
    /// Waits for the daemon to exit by itself (panics after `limit`); returns its log.
    pub fn wait_exit(mut self, limit: Duration) -> String {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + limit;
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the daemon did not exit within {limit:?}: {}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.log_text()
    }

    pub fn kill_hard(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM and returns its log (which ends with the final summary).
    pub fn stop(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        self.log_text()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM, as an operator would stop it: the daemon removes what it created (kprobe
        // mode's tracefs events), which a later test would otherwise find.
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `emitted`, `received`, `lost` of the daemon's final summary line.
pub fn final_summary(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("events emitted="))
        .unwrap_or_else(|| panic!("no summary in log: {log}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (field("emitted"), field("received"), field("lost"))
}

/// Sockets `pid` holds according to `ss` (every non-listening, non-SYN_SENT socket).
pub fn ss_count(pid: u32) -> u64 {
    let out = Command::new("ss").args(["-tanpH"]).output().expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("LISTEN") && !l.starts_with("SYN-SENT"))
        .filter(|l| l.contains(&format!("pid={pid},")))
        .count() as u64
}

/// Reads a JSON number field as u64 (panics with the field name if absent).
pub fn num(value: &serde_json::Value, field: &str) -> u64 {
    value[field].as_u64().unwrap_or_else(|| panic!("field {field} missing in {value}"))
}

/// The connections a stacks answer (`tracer stacks`, or a leak alert's `evidence.stacks`)
/// accounts for: those in its groups, in the groups it did not keep, and those without a stack
/// by reason. Equal to its `open` (answer) or `connections` (evidence).
pub fn stacks_accounted(stacks: &serde_json::Value) -> u64 {
    let grouped: u64 =
        stacks["groups"].as_array().expect("groups").iter().map(|g| num(g, "count")).sum();
    let unstacked: u64 =
        ["opened_before_capture", "not_sampled", "stack_missing", "held_by_another_process"]
            .iter()
            .map(|f| num(stacks, f))
            .sum();
    grouped + stacks["in_other_groups"].as_u64().unwrap_or(0) + unstacked
}

/// For `Daemon::eventually` checks: Ok when equal, else a complaint naming the value.
pub fn expect_eq(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want { Ok(()) } else { Err(format!("{what}: got {got}, want {want}")) }
}

/// Leak detection on a short clock for tests: 0.5 s samples, 8 per window (4 s), 4 sub-windows,
/// G = 10, resolve after 2 clear evaluations, stale CLOSE_WAIT / reset-but-held after 1 s.
pub const FAST_LEAKS: &[&str] = &[
    "--leak-interval",
    "0.5",
    "--leak-window",
    "8",
    "--leak-sub-windows",
    "4",
    "--leak-growth-min",
    "10",
    "--leak-resolve-after",
    "2",
    "--close-wait-after",
    "1",
    "--held-closed-after",
    "1",
];

/// Counts come from the event stream: the 1 s reconcile of the test daemons must have found
/// nothing to correct (it would hide a probe that loses events).
/// Every handshake the table had to infer (its Established event never came) is explained by
/// a run the kernel skipped of the state-change program that reports it; the misses go to
/// stderr, so a run under load shows how often the kernel skipped (docs/semantics.md,
/// "Kernel-side misses").
pub fn assert_inferred_handshakes_explained(daemon: &Daemon) {
    let status = daemon.json(&["status"]);
    let skipped = status["program_misses"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["program"] == "inet_sock_set_state"))
        .map_or(0, |p| num(p, "missed"));
    let inferred = num(&status, "established_inferred");
    eprintln!(
        "kernel-side misses: {} program runs skipped ({skipped} of inet_sock_set_state), \
         {inferred} handshakes inferred",
        num(&status, "program_misses_total")
    );
    assert!(inferred <= skipped, "an inferred handshake no skipped run explains: {status}");
}

/// Counts come from the event stream: a reconcile correction is allowed only where the status
/// counted a loss that explains it (issue: no correction without a counted loss). The counted
/// losses are records the ring dropped, program runs the kernel skipped (recursion misses)
/// and kprobe hits it could not hand over; a missed accept return loses nothing (the
/// syscall exit reports the socket), so it explains nothing.
pub fn assert_corrections_explained(daemon: &Daemon) {
    let status = daemon.json(&["status"]);
    let kprobe_misses: u64 = status["kprobes"]
        .as_array()
        .map(|probes| {
            probes
                .iter()
                .filter(|p| !p["probe"].as_str().unwrap_or_default().ends_with(":return"))
                .map(|p| num(p, "missed"))
                .sum()
        })
        .unwrap_or(0);
    let losses = num(&status, "events_lost") + num(&status, "program_misses_total") + kprobe_misses;
    // The daemon logs each correction: show them, they say what differed.
    let log = daemon.log_text();
    let corrections: Vec<&str> = log.lines().filter(|l| l.contains("reconcile:")).collect();
    let corrected = num(&status, "reconcile_corrections");
    if corrected > 0 {
        eprintln!("{corrected} corrections, explained by {losses} counted losses");
    }
    assert!(
        corrected <= losses,
        "counts must come from events: {corrected} corrections, {losses} counted losses: \
         {status}\n{}",
        corrections.join("\n")
    );
}

/// Builds the Go program tests/programs/`source` as `name` in `dir` (static, stripped of
/// symbols and DWARF if asked). The VM guests have no Go: there `TRACER_TEST_GO_PROGRAMS` names
/// a directory of the same programs built on the host by `cargo xtask vm-test`, under the same
/// names.
pub fn go_program(
    source: &str,
    name: &str,
    stripped: bool,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    if let Some(prebuilt) = std::env::var_os("TRACER_TEST_GO_PROGRAMS") {
        let path = std::path::Path::new(&prebuilt).join(name);
        assert!(path.is_file(), "TRACER_TEST_GO_PROGRAMS has no {name}: {}", path.display());
        return path;
    }
    let out = dir.join(name);
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-o").arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    let status = cmd
        .arg("main.go")
        .current_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(source),
        )
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run go ({e}): `cargo xtask setup` installs golang-go"));
    assert!(status.success(), "go build of tests/programs/{source} failed");
    out
}

/// tests/programs/leaker_go: a Go program that leaks from one named function.
/// Builds it, stripped of symbols and DWARF if asked (the names match
/// xtask/src/vm/payload.rs's `GO_PROGRAMS`).
pub fn build_leaker(dir: &Path, stripped: bool) -> PathBuf {
    let name = if stripped { "leaker-stripped" } else { "leaker" };
    go_program("leaker_go", name, stripped, dir)
}

/// The leaker, driven over its stdin.
pub struct Leaker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Leaker {
    pub fn spawn(binary: &Path) -> Self {
        Self::spawn_command(Command::new(binary))
    }

    /// Runs `cmd`, which must exec into the leaker.
    pub fn spawn_command(mut cmd: Command) -> Self {
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn leaker");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        Self { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cmd(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ok", "{command}");
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP receiver recording every POSTed JSON body (`--alert-webhook`).
pub struct Receiver {
    pub url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    sink.lock().expect("lock").push(v);
                }
                let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        Self { url, bodies }
    }

    /// The body of the first `raised` POST of `pid`'s `rule` alert.
    pub fn raised(&self, pid: u32, rule: &str) -> Option<serde_json::Value> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .find(|b| {
                b["event"] == "raised" && b["alert"]["pid"] == pid && b["alert"]["rule"] == rule
            })
            .cloned()
    }

    pub fn events_for(&self, pid: u32) -> Vec<(String, String)> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .filter(|b| b["alert"]["pid"] == pid)
            .map(|b| {
                (
                    b["event"].as_str().unwrap_or("").to_owned(),
                    b["alert"]["rule"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

/// A command that runs `binary` (with `args`) in a private mount namespace of its own, where a
/// tmpfs mounted over `hidden` (created here, empty) holds the copy that runs: the process sees
/// its binary as `hidden/<file name>`, which the host's mount namespace does not have. Returns
/// the command and that path. The command execs into the program: its pid is the program's.
pub fn in_private_mount_namespace(
    binary: &std::path::Path,
    hidden: &std::path::Path,
    args: &[&str],
) -> (Command, std::path::PathBuf) {
    std::fs::create_dir_all(hidden).expect("create the directory to hide");
    let name = binary.file_name().expect("a binary's file name");
    let inside = hidden.join(name);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"d=$1 && mount -t tmpfs tmpfs "$d" && cp "$2" "$3" && shift 3 && exec "$0" "$@""#)
        .arg(&inside)
        .arg(hidden)
        .arg(binary)
        .arg(&inside)
        .args(args);
    (cmd, inside)
}

/// xorshift64*: small, deterministic, good enough to pick the seeded tests' actions (churn,
/// soak).
pub struct Rng(u64);

impl Rng {
    /// The seed as the state itself (churn's seeds name their streams this way).
    pub fn raw(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)).max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// 1..=n.
    pub fn upto(&mut self, n: u64) -> u64 {
        1 + self.below(n)
    }
}
