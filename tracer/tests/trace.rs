//! `tracer trace` end to end (docs/trace.md): the real CLI against the real daemon while a
//! workload makes known connections. Ground truth: the workload's own ports and pids. Run as
//! root.
mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, Workload, num};
use serde_json::Value;

/// `tracer trace --json ARGS` in the background, its lines collected by a thread.
struct Trace {
    child: Child,
    /// Each line, or why it is not a record the schema allows.
    lines: std::sync::mpsc::Receiver<Result<Value, String>>,
}

impl Trace {
    fn start(daemon: &Daemon, args: &[&str]) -> Self {
        let before = subscribers(daemon);
        let mut child = Command::new(common::tracer_bin())
            .args(["trace", "--json", "--socket"])
            .arg(&daemon.socket)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("tracer trace");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let schemas = tracer::api::schema::Schemas::generate();
            for line in out.lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).expect("a JSON line");
                // Every record has exactly the documented fields (docs/api.md, TraceRecord).
                let checked = match value.get("dropped") {
                    Some(_) => Ok(()),
                    None => schemas.validate_named("TraceRecord", &value),
                };
                let _ = tx.send(checked.map(|()| value).map_err(|e| format!("{line}: {e:?}")));
            }
        });
        let trace = Self { child, lines };
        // Subscribed once the daemon counts it.
        daemon.eventually("the trace subscribed", |d| {
            let n = subscribers(d);
            if n > before { Ok(()) } else { Err(format!("{n} subscribers")) }
        });
        trace
    }

    /// Every line until `done` holds of them, or panics after the wait limit.
    fn until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + common::wait_limit();
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => got.push(line.unwrap_or_else(|e| panic!("{e}"))),
                Err(_) => panic!("{what}: got {got:#?}"),
            }
        }
        got
    }

    /// Lines that arrive within `quiet` (nothing more is expected).
    fn more(&self, quiet: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            got.push(line.unwrap_or_else(|e| panic!("{e}")));
        }
        got
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn subscribers(daemon: &Daemon) -> u64 {
    daemon.json(&["status"])["trace"]["subscribers"].as_u64().unwrap_or(0)
}

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["kind"] == kind).collect()
}

/// Each open and close of a workload's connections appears exactly once, with its pid,
/// direction, endpoints, lifetime and the side that closed first; `--pid`, `--port`,
/// `--direction`, `--comm`, `--remote` and `--min-lifetime` select exactly what they promise,
/// and `--states` adds the state changes; a failed connect names the kernel's reason.
#[test]
fn every_open_and_close_appears_once_and_filters_select_what_they_promise() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    let addr = format!("127.0.0.1:{port}");
    let by_client = Trace::start(&daemon, &["--pid", &client.pid.to_string()]);
    let inbound = Trace::start(&daemon, &["--port", &port.to_string(), "--direction", "in"]);
    let by_remote = Trace::start(&daemon, &["--comm", "work*", "--remote", &addr]);
    let long_lived = Trace::start(&daemon, &["--port", &port.to_string(), "--min-lifetime", "1s"]);
    let nobody = Trace::start(&daemon, &["--comm", "no-such-command"]);
    let states = Trace::start(&daemon, &["--states", "--pid", &server.pid.to_string()]);

    let ports = client.connect(&addr, 3);
    server.cmd("accept 0 3");
    client.cmd("send 3 1000");
    std::thread::sleep(Duration::from_millis(300));
    // The client closes first: its FINs put the server's ends in CLOSE_WAIT.
    client.cmd("close 3");
    std::thread::sleep(Duration::from_millis(100));
    server.cmd("close 3");

    let want_client: BTreeMap<u16, ()> = ports.iter().map(|p| (*p, ())).collect();
    let lines = by_client.until("the client's 3 opens and 3 closes", |l| {
        of_kind(l, "open").len() >= 3 && of_kind(l, "close").len() >= 3
    });
    let lines = [lines, by_client.more(Duration::from_millis(500))].concat();
    for kind in ["open", "close"] {
        let ours = of_kind(&lines, kind);
        let mut seen: BTreeMap<u16, ()> = BTreeMap::new();
        for l in &ours {
            assert_eq!(l["pid"], client.pid, "{l}");
            assert_eq!(l["comm"], "workload", "{l}");
            assert_eq!(l["direction"], "outbound", "{l}");
            assert_eq!(l["remote"], addr.as_str(), "{l}");
            let local: std::net::SocketAddr = l["local"].as_str().unwrap().parse().unwrap();
            assert!(seen.insert(local.port(), ()).is_none(), "twice: {l}");
            if kind == "close" {
                let lifetime = l["lifetime_seconds"].as_f64().expect("a close has a lifetime");
                assert!((0.3..30.0).contains(&lifetime), "{l}");
                assert_eq!(l["closed_first"], "local", "the client closed first: {l}");
                // The peer acknowledged the SYN and the 1,000 bytes; it sent nothing.
                assert_eq!(
                    (l["bytes_acked"].as_u64(), l["bytes_received"].as_u64()),
                    (Some(1001), Some(0)),
                    "{l}"
                );
            } else {
                assert!(l["lifetime_seconds"].is_null(), "{l}");
            }
        }
        assert_eq!(seen, want_client, "{kind}s by client port: {lines:#?}");
    }
    assert_eq!(lines.len(), 6, "only the client's opens and closes: {lines:#?}");

    // The server's accepted ends: inbound, its pid, the client's ports as remote.
    let lines = inbound.until("the server's 3 opens and 3 closes", |l| {
        of_kind(l, "open").len() >= 3 && of_kind(l, "close").len() >= 3
    });
    let lines = [lines, inbound.more(Duration::from_millis(500))].concat();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    for l in &lines {
        assert_eq!(
            (l["pid"].as_u64(), l["direction"].as_str()),
            (Some(server.pid.into()), Some("inbound")),
            "{l}"
        );
        let remote: std::net::SocketAddr = l["remote"].as_str().unwrap().parse().unwrap();
        assert!(want_client.contains_key(&remote.port()), "{l}");
        if l["kind"] == "close" {
            assert_eq!(l["closed_first"], "remote", "the client closed first: {l}");
            // The 1,000 bytes and the client's FIN (a sequence number, as `ss` counts it).
            assert_eq!(l["bytes_received"].as_u64(), Some(1001), "{l}");
        }
    }

    // --states: the same 6 lines, plus each server end entering CLOSE_WAIT once (its own
    // close is its release, not a state change; what follows concerns no process).
    let lines = states.until("3 opens, 3 state changes, 3 closes", |l| {
        of_kind(l, "close").len() >= 3 && of_kind(l, "state_change").len() >= 3
    });
    let lines = [lines, states.more(Duration::from_millis(500))].concat();
    assert_eq!(lines.len(), 9, "{lines:#?}");
    for l in of_kind(&lines, "state_change") {
        assert_eq!(
            (l["old_state"].as_str(), l["new_state"].as_str()),
            (Some("established"), Some("close_wait")),
            "{l}"
        );
        assert_eq!(l["direction"], "inbound", "{l}");
        let remote: std::net::SocketAddr = l["remote"].as_str().unwrap().parse().unwrap();
        assert!(want_client.contains_key(&remote.port()), "{l}");
    }

    // --remote ADDR:PORT and --comm: the client side only (the server's remote is the client).
    let lines = by_remote.until("6 lines to the server's address", |l| l.len() >= 6);
    let lines = [lines, by_remote.more(Duration::from_millis(500))].concat();
    assert!(lines.iter().all(|l| l["pid"] == client.pid), "{lines:#?}");
    assert_eq!(lines.len(), 6, "{lines:#?}");

    // --min-lifetime 1s: the opens pass, the closes (0.3 s) do not.
    let lines = long_lived.until("6 opens", |l| of_kind(l, "open").len() >= 6);
    let lines = [lines, long_lived.more(Duration::from_millis(500))].concat();
    assert!(of_kind(&lines, "close").is_empty(), "{lines:#?}");
    assert!(nobody.more(Duration::from_millis(200)).is_empty());

    // A failed connect shows as such, with the port it tried (nothing listens there).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let failed = Trace::start(&daemon, &["--pid", &client.pid.to_string()]);
    let _ = client.try_cmd(&format!("connect 127.0.0.1:{dead} 1"));
    let lines = failed.until("a failed connect", |l| !of_kind(l, "connect_failed").is_empty());
    let f = of_kind(&lines, "connect_failed")[0];
    assert_eq!(f["remote"], format!("127.0.0.1:{dead}").as_str(), "{f}");
    assert_eq!(f["reason"], "ECONNREFUSED", "the kernel's reason: {f}");
}

/// A subscriber that stops reading gets a `dropped` line when it reads again, never a silent
/// gap; the daemon's counts stay exact meanwhile, and `tracer status` counts what it dropped.
#[test]
fn a_reader_that_falls_behind_is_told_what_it_missed_and_counts_stay_exact() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    // A raw subscriber that reads its answer and then nothing.
    let mut stream = UnixStream::connect(&daemon.socket).expect("connect");
    let request = format!(
        "{{\"version\":{},\"request\":{{\"trace\":{{\"port\":{port}}}}}}}\n",
        tracer::api::protocol::API_VERSION
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut answer = String::new();
    reader.read_line(&mut answer).expect("answer");
    assert!(answer.contains("\"streaming\":true"), "{answer}");

    // 3,000 connections, each opened and closed on both sides: 12,000 records, more than the
    // queue (4,096) and the socket's buffer hold (the server accepts one more, below).
    server.cmd("serve-churn 0 3001");
    let mut client = Workload::spawn();
    client.cmd(&format!("churn 127.0.0.1:{port} 3000"));
    daemon.eventually("every churned connection counted", |d| {
        let row = d.process(client.pid);
        common::expect_eq("closed", num(&row, "closed_total"), 3000)
    });
    assert_eq!(num(&daemon.process(client.pid), "open"), 0);
    assert_eq!(num(&daemon.process(client.pid), "opened_total"), 3000);
    let status = daemon.json(&["status"]);
    let dropped = status["trace"]["dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "nothing dropped: {status}");
    assert_eq!(status["events_lost"], 0, "{status}");

    // Reading again: what waited (the queue, the socket's buffer); then one more connection,
    // whose first record brings the count of those dropped before it.
    reader.get_ref().set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    let (mut records, mut told) = (0u64, 0u64);
    let mut read_all = |reader: &mut BufReader<UnixStream>| {
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let v: Value = serde_json::from_str(&line).expect("JSON");
            match v.get("dropped").and_then(Value::as_u64) {
                Some(n) => told += n,
                None => records += 1,
            }
            line.clear();
        }
    };
    read_all(&mut reader);
    client.cmd(&format!("churn 127.0.0.1:{port} 1"));
    read_all(&mut reader);
    assert!(told > 0, "no dropped line after {records} records");
    assert_eq!(records + told, 4 * 3001, "every record delivered or counted as dropped");
    assert_eq!(daemon.json(&["status"])["trace"]["dropped"], told, "status counts the same");
    drop(stream);
}

/// `tracer trace | head -3` ends as soon as head has its lines, without an error message.
#[test]
fn a_closed_pipe_ends_the_trace_at_once_and_quietly() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let socket = daemon.socket.to_str().expect("utf-8").to_owned();
    let mut pipeline = Command::new("sh")
        .args([
            "-c",
            &format!(
                "'{}' trace --socket '{socket}' --port {port} | head -3",
                common::tracer_bin().display()
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    daemon.eventually("the trace subscribed", |d| {
        let n = subscribers(d);
        if n >= 1 { Ok(()) } else { Err(format!("{n} subscribers")) }
    });
    let mut client = Workload::spawn();
    let _ = client.connect(&format!("127.0.0.1:{port}"), 1);
    server.cmd("accept 0 1");
    let started = Instant::now();
    let out = loop {
        if let Ok(Some(_)) = pipeline.try_wait() {
            break pipeline.wait_with_output().expect("output");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the pipeline did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.starts_with("TIME"), "{stdout}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // The daemon dropped the subscriber.
    daemon.eventually("the subscriber gone", |d| {
        let n = subscribers(d);
        if n == 0 { Ok(()) } else { Err(format!("{n} subscribers")) }
    });
}
