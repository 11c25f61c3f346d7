//! The Go HTTP request probe (issue 16, part 2), against a real Go client this test builds: a
//! uprobe at `net/http.(*persistConn).roundTrip` reports, for each HTTP/1 request, the stack of
//! the goroutine that made it and the socket it went out on. The ground truth is the client's
//! own account (httptrace: which function's request got which connection) and the kernel's
//! handshake events (which socket has which local port). Run as root.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
};

use tracer::{
    gohttp,
    pipeline::StackSource,
    probes::{LoadOptions, Probes},
    stacks::symbolize::{AddressKind, Resolver, pin_process},
};
use tracer_common::{EventKind, stacks::KIND_GO_REQUEST};

#[test]
fn each_request_names_the_function_that_made_it_and_its_connection() {
    let dir = common::TempDir::new("go-requests");
    let program = common::go_program("go_requests", "go-requests", false, &dir.0);
    let mut probes =
        Probes::load(&LoadOptions { mode: common::probe_mode(), ..LoadOptions::default() })
            .expect("probes load");
    let mut events = probes.take_events().expect("event ring");
    let mut stacks = StackSource::new(probes.take_stacks().expect("stack ring"));

    let mut child = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Go client");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("a line").expect("readable");
    let server_port: u16 =
        next().strip_prefix("server ").and_then(|p| p.parse().ok()).expect("server <port>");
    // The warm-up request, before the probe: not reported.
    assert!(next().starts_with("warm "));

    let exe = format!("/proc/{pid}/exe");
    let go = gohttp::inspect(&std::fs::read(&exe).expect("read the binary")).expect("a Go client");
    let probe = probes.attach_go_requests(pid, Path::new(&exe), &go).expect("attach");
    writeln!(stdin, "go").expect("start the requests");
    // Which function's request went out on which local port, as the client saw it.
    let mut said: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    loop {
        let line = next();
        if line == "done" {
            break;
        }
        let (kind, port) = line.split_once(' ').expect("<kind> <port>");
        let kind = if kind == "leak" { "main.leakRequests" } else { "main.tidyRequests" };
        said.entry(kind).or_default().push(port.parse().expect("port"));
    }
    assert_eq!(said.values().map(Vec::len).sum::<usize>(), 8, "{said:?}");
    assert_eq!(said["main.leakRequests"].iter().collect::<BTreeSet<_>>().len(), 4);

    // The client's sockets by kernel address: the handshake completion names the local port.
    let mut port_of: HashMap<u64, u16> = HashMap::new();
    while let Some(item) = events.next() {
        let Some(event) = tracer::events::decode(&item) else { continue };
        if event.kind() == Some(EventKind::Established) && event.tuple.remote_port == server_port {
            port_of.insert(event.sock, event.tuple.local_port);
        }
    }
    let pinned = pin_process(pid).expect("pin the client");
    let mut resolver = Resolver::default();
    // Per request record: the local port of its socket, and the main.* function on its stack.
    let mut seen: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    stacks.drain(|record| {
        if record.kind != KIND_GO_REQUEST || record.tgid != pid {
            return;
        }
        let port = *port_of.get(&record.sock).unwrap_or_else(|| {
            panic!("request on socket {:#x}, which no handshake of the client names", record.sock)
        });
        // frames[0] is one byte into the function, the rest return addresses: all are looked
        // up one byte back.
        let names = resolver.symbolize(&pinned, record.frames(), AddressKind::Return);
        let functions: Vec<String> =
            names.iter().flat_map(|r| r.frames.iter().filter_map(|f| f.function.clone())).collect();
        assert_eq!(functions.first().map(String::as_str), Some(gohttp::ROUND_TRIP));
        let caller = ["main.leakRequests", "main.tidyRequests"]
            .into_iter()
            .find(|f| functions.iter().any(|g| g == f))
            .unwrap_or_else(|| panic!("no main.* caller in {functions:#?}"));
        seen.entry(caller).or_default().push(port);
    });
    probes.detach_go_requests(probe).expect("detach");
    drop(stdin);
    let _ = child.wait();

    for ports in said.values_mut().chain(seen.values_mut()) {
        ports.sort_unstable();
    }
    assert_eq!(seen, said, "requests by calling function and local port: probe vs client");
}

/// Starts the Go client, reads its server port and warm-up line, and returns it with its pid.
fn go_client(dir: &std::path::Path) -> GoClient {
    let program = common::go_program("go_requests", "go-requests", false, dir);
    let mut child = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Go client");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(lines.next().expect("server line").expect("readable").starts_with("server "));
    assert!(lines.next().expect("warm line").expect("readable").starts_with("warm "));
    GoClient { pid: child.id(), child, stdin: Some(stdin), lines }
}

struct GoClient {
    pid: u32,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl GoClient {
    /// Makes the leaking and the tidy requests; waits until they are done.
    fn run_requests(&mut self) {
        writeln!(self.stdin.as_mut().expect("stdin"), "go").expect("start the requests");
        loop {
            let line = self.lines.next().expect("a line").expect("readable");
            if line == "done" {
                break;
            }
        }
    }
}

impl Drop for GoClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon with `--go-requests all` probes the client, and `tracer stacks` groups its open
/// connections by their last request: the 4 still checked out by the leaking function (the
/// warm-up connection, reused by the first of them, included) under it, the tidy function's
/// pooled connection under it; the server side's connections (the same process) had none.
#[test]
fn tracer_stacks_names_the_function_whose_requests_hold_the_connections() {
    let dir = common::TempDir::new("go-requests-daemon");
    let daemon = common::Daemon::start(&["--go-requests", "all"]);
    let mut client = go_client(&dir.0);
    let pid = client.pid;
    daemon.eventually("the client probed", |d| {
        let status = d.json(&["status"]);
        let probed = status["go_requests"]["probed_processes"].as_u64().unwrap_or(0);
        common::expect_eq("probed processes", probed, 1)
    });
    client.run_requests();
    daemon.eventually("4 connections under the leaking function, 1 under the tidy one", |d| {
        let report = d.json(&["stacks", &pid.to_string()]);
        let requests = &report["requests"];
        let count = |function: &str| {
            requests["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["leading_function"] == function)
                .map(|g| g["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let got = [
            count("main.leakRequests"),
            count("main.tidyRequests"),
            requests["before_probing"].as_u64().unwrap_or(0),
            requests["no_request"].as_u64().unwrap_or(0),
        ];
        if got == [4, 1, 1, 4] {
            Ok(())
        } else {
            Err(format!("(leak, tidy, before probing, no request) = {got:?}: {report}"))
        }
    });
}

/// Under the default policy a healthy Go client is no suspect: no probe, no request groups.
#[test]
fn a_go_client_that_is_no_suspect_is_not_probed() {
    let dir = common::TempDir::new("go-requests-default");
    let daemon = common::Daemon::start(&[]);
    let mut client = go_client(&dir.0);
    client.run_requests();
    daemon.wait_for_more("leak_evaluations", 1);
    let status = daemon.json(&["status"]);
    assert_eq!(status["go_requests"]["policy"], "suspects", "{status}");
    assert_eq!(status["go_requests"]["probed_processes"], 0, "{status}");
    let report = daemon.json(&["stacks", &client.pid.to_string()]);
    assert!(report["requests"].is_null(), "{report}");
}
