//! Shared helpers of the integration tests: real workload processes, and a tracing session
//! that collects every event the probes deliver. These tests load BPF programs: run as root.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
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
    assert!(path.exists(), "{} missing: build with `cargo test --all-targets`", path.display());
    path
}

impl Workload {
    pub fn spawn() -> Self {
        let mut child = Command::new(example_path("workload"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let pid = child.id();
        Self { child, stdin, stdout, pid }
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
        Ok(other) => panic!("TRACER_TEST_PROBE={other}: expected auto, fentry, kprobe or tracepoint"),
    }
}

impl Tracing {
    pub fn start() -> Self {
        Self::start_with(LoadOptions { mode: probe_mode(), ..LoadOptions::default() })
    }

    pub fn start_with(options: LoadOptions) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sink = Arc::clone(&events);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let mut probes = match Probes::load(&options) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        panic!("probes failed to load: {e}");
                    }
                };
                let mut source = EventSource::new(probes.take_events().expect("ring")).expect("source");
                let _ = ready_tx.send(Ok(()));
                let push = |e: &ConnEvent| sink.lock().expect("lock").push(*e);
                loop {
                    tokio::select! {
                        r = source.next_batch(push) => { r.expect("ring read"); }
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
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.events.lock().expect("lock")) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
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
