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

/// Every way of making the request the issue names: `http.Get` on the default Transport, a
/// custom `http.Client`, `NewRequestWithContext` + `Do`, HTTPS to a local TLS server; and the
/// first again built with `-s -w` (offsets from the version's table, entries from the
/// pclntab).
#[test]
fn each_request_names_the_function_that_made_it_and_its_connection() {
    let dir = common::TempDir::new("go-requests");
    let plain = common::go_program("go_requests", "go-requests", false, &dir.0);
    let stripped = common::go_program("go_requests", "go-requests-stripped", true, &dir.0);
    let mut probes = load_probes();
    let mut events = probes.take_events().expect("event ring");
    let mut stacks = StackSource::new(probes.take_stacks().expect("stack ring"));
    for (program, mode) in [
        (&plain, "get"),
        (&plain, "custom"),
        (&plain, "context"),
        (&plain, "https"),
        (&stripped, "get"),
    ] {
        let what = format!("{} {mode}", program.display());
        let go = requests_probed(&mut probes, &mut events, &mut stacks, program, mode, &what);
        let from_table = matches!(go.offsets_source, gohttp::OffsetsSource::Table { .. });
        assert_eq!(
            from_table,
            program == &stripped,
            "{what}: offsets from {:?}",
            go.offsets_source
        );
    }
}

/// Runs the client in `mode` with the probe attached for its 8 requests; asserts that each
/// request's record names its calling function and the socket the server saw it on.
fn requests_probed(
    probes: &mut Probes,
    events: &mut aya::maps::RingBuf<aya::maps::MapData>,
    stacks: &mut StackSource,
    program: &Path,
    mode: &str,
    what: &str,
) -> gohttp::GoHttpBinary {
    let mut client = GoClient::start(program, mode);
    let pid = client.pid;
    let exe = format!("/proc/{pid}/exe");
    let go = gohttp::inspect(&std::fs::read(&exe).expect("read the binary")).expect("a Go client");
    assert!(!client.breakpoint_set(&go), "{what}: probed before attaching");
    let probe = probes.attach_go_requests(pid, Path::new(&exe), &go).expect("attach");
    assert!(client.breakpoint_set(&go), "{what}: no breakpoint at the probed entry");
    // Which function's request went out on which client port, as the server saw it.
    let mut said: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for (kind, port) in client.run_requests() {
        let kind = if kind == "leak" { "main.leakRequests" } else { "main.tidyRequests" };
        said.entry(kind).or_default().push(port);
    }
    assert_eq!(said.values().map(Vec::len).sum::<usize>(), 8, "{what}: {said:?}");
    assert_eq!(said["main.leakRequests"].iter().collect::<BTreeSet<_>>().len(), 4, "{what}");

    // The client's sockets by kernel address: the handshake completion names the local port.
    let port_of = client_ports(events, client.server_port);
    let pinned = pin_process(pid).expect("pin the client");
    // The stripped binary's names come from its pclntab, as the daemon reads them.
    let mut resolver = Resolver::with_fallback(tracer::stacks::go_fallback());
    // Per request record: the local port of its socket, and the main.* function on its stack.
    let mut seen: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    stacks.drain(|record| {
        if record.kind != KIND_GO_REQUEST || record.tgid != pid {
            return;
        }
        let port = *port_of.get(&record.sock).unwrap_or_else(|| {
            panic!("{what}: request on socket {:#x}, which no handshake names", record.sock)
        });
        // frames[0] is one byte into the function, the rest return addresses: all are looked
        // up one byte back.
        let names = resolver.symbolize(&pinned, record.frames(), AddressKind::Return);
        let functions: Vec<String> =
            names.iter().flat_map(|r| r.frames.iter().filter_map(|f| f.function.clone())).collect();
        assert_eq!(functions.first().map(String::as_str), Some(gohttp::ROUND_TRIP), "{what}");
        let caller = ["main.leakRequests", "main.tidyRequests"]
            .into_iter()
            .find(|f| functions.iter().any(|g| g == f))
            .unwrap_or_else(|| panic!("{what}: no main.* caller in {functions:#?}"));
        seen.entry(caller).or_default().push(port);
    });
    probes.detach_go_requests(probe).expect("detach");
    assert!(!client.breakpoint_set(&go), "{what}: the breakpoint outlived the detach");
    drop(client);

    for ports in said.values_mut().chain(seen.values_mut()) {
        ports.sort_unstable();
    }
    // Every request the server saw was probed, with its calling function and its connection.
    // One request may be reported twice: seen in the VM matrix on 6.1 under TCG, twice in one
    // run, each time one leak port twice. A signal that lands while the kernel single-steps the
    // probed instruction makes it run the instruction, and the probe, again, and Go preempts
    // goroutines with SIGURG. The daemon keeps each connection's last request, so a repeat
    // changes no answer.
    let distinct = |m: &BTreeMap<&str, Vec<u16>>| -> BTreeMap<String, BTreeSet<u16>> {
        m.iter().map(|(f, ports)| ((*f).to_owned(), ports.iter().copied().collect())).collect()
    };
    assert_eq!(
        distinct(&seen),
        distinct(&said),
        "{what}: connections by calling function: probe {seen:?} vs server {said:?}"
    );
    for (function, ports) in &said {
        let probed = seen.get(function).map_or(0, Vec::len);
        assert!(
            probed >= ports.len() && probed <= ports.len() + 1,
            "{what}: {function}: {probed} requests probed, the server saw {}: {seen:?} vs {said:?}",
            ports.len()
        );
    }
    go
}

/// The probes, loaded in the mode the tests run in.
fn load_probes() -> Probes {
    Probes::load(&LoadOptions { mode: common::probe_mode(), ..LoadOptions::default() })
        .expect("probes load")
}

/// The client's sockets by kernel address, from the events read so far: each handshake's
/// completion to `server_port` names the socket's local port.
fn client_ports(
    events: &mut aya::maps::RingBuf<aya::maps::MapData>,
    server_port: u16,
) -> HashMap<u64, u16> {
    let mut port_of = HashMap::new();
    while let Some(item) = events.next() {
        let Some(event) = tracer::events::decode(&item) else { continue };
        if event.kind() == Some(EventKind::Established) && event.tuple.remote_port == server_port {
            port_of.insert(event.sock, event.tuple.local_port);
        }
    }
    port_of
}

struct GoClient {
    pid: u32,
    server_port: u16,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl GoClient {
    /// Starts `program` in `mode` (tests/programs/go_requests) and waits for its warm-up
    /// request.
    fn start(program: &Path, mode: &str) -> Self {
        let mut child = Command::new(program)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Go client");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = || lines.next().expect("a line").expect("readable");
        let server_port =
            next().strip_prefix("server ").and_then(|p| p.parse().ok()).expect("server <port>");
        assert!(next().starts_with("warm "));
        GoClient { pid: child.id(), server_port, child, stdin, lines }
    }

    fn inspect(&self) -> gohttp::GoHttpBinary {
        let exe = std::fs::read(format!("/proc/{}/exe", self.pid)).expect("read the binary");
        gohttp::inspect(&exe).expect("a Go client")
    }

    /// Whether a uprobe is attached to the process's `(*persistConn).roundTrip`: the kernel
    /// writes its breakpoint (int3) over the entry's first byte in the process's copy of the
    /// page, which /proc/PID/mem shows. The file mapping that holds the entry's file offset
    /// gives its address.
    fn breakpoint_set(&self, go: &gohttp::GoHttpBinary) -> bool {
        use std::os::unix::fs::FileExt;
        let offset = go.functions[0].file_offset;
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).expect("exe");
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).expect("maps");
        let address = maps
            .lines()
            .find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (range, perms, file_offset) = (f[0], f[1], u64::from_str_radix(f[2], 16).ok()?);
                let (start, end) = range.split_once('-')?;
                let (start, end) =
                    (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
                (f.len() >= 6
                    && Path::new(f[5]) == exe
                    && perms.contains('x')
                    && (file_offset..file_offset + (end - start)).contains(&offset))
                .then(|| start + (offset - file_offset))
            })
            .expect("the probed entry is mapped");
        let mem = std::fs::File::open(format!("/proc/{}/mem", self.pid)).expect("open mem");
        let mut byte = [0u8];
        mem.read_exact_at(&mut byte, address).expect("read the entry");
        byte[0] == 0xcc
    }

    /// Makes `n` leaking requests alone; waits until they are done.
    fn leak(&mut self, n: u32) {
        self.only("leak", n);
    }

    /// Makes `n` requests of `kind` (`leak`, `tidy`) alone; returns the client ports the
    /// server saw.
    fn only(&mut self, kind: &str, n: u32) -> Vec<u16> {
        writeln!(self.stdin.as_mut().expect("stdin"), "{kind} {n}").expect("ask for requests");
        let mut ports = Vec::new();
        loop {
            let line = self.lines.next().expect("a line").expect("readable");
            if line == "done" {
                return ports;
            }
            ports.extend(line.split_once(' ').and_then(|(_, p)| p.parse::<u16>().ok()));
        }
    }

    /// Makes the leaking and the tidy requests; returns what the server saw of each: the
    /// function's kind (`leak`, `tidy`) and the client's port.
    fn run_requests(&mut self) -> Vec<(String, u16)> {
        writeln!(self.stdin.as_mut().expect("stdin"), "go").expect("start the requests");
        let mut seen = Vec::new();
        loop {
            let line = self.lines.next().expect("a line").expect("readable");
            if line == "done" {
                return seen;
            }
            let (kind, port) = line.split_once(' ').expect("<kind> <port>");
            seen.push((kind.to_owned(), port.parse().expect("port")));
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
    let program = common::go_program("go_requests", "go-requests", false, &dir.0);
    let mut client = GoClient::start(&program, "get");
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
    // A daemon killed outright leaves no probe behind: the kernel removes a uprobe with the
    // last descriptor of its perf event, so there is nothing stale for the next start to find.
    let go = client.inspect();
    assert!(client.breakpoint_set(&go), "probed while the daemon runs");
    daemon.kill_hard();
    assert!(!client.breakpoint_set(&go), "the breakpoint outlived the daemon's SIGKILL");
    // The next daemon probes the same, still running, client again.
    let daemon = common::Daemon::start(&["--go-requests", "all"]);
    daemon.eventually("the client probed again", |d| {
        let probed = d.json(&["status"])["go_requests"]["probed_processes"].as_u64();
        common::expect_eq("probed processes", probed.unwrap_or(0), 1)
    });
    assert!(client.breakpoint_set(&go), "probed by the next daemon");
    drop(daemon);
    assert!(!client.breakpoint_set(&go), "the breakpoint outlived the daemon's stop");
}

/// The Go binaries the daemon opens are parsed by its inspector part (uid nobody, no
/// capabilities, seccomp), which a launcher (root, with only what starting a part takes)
/// starts. A part that is killed is replaced by a new one, which inspects the next binary; a
/// binary the part crashes on (the fault flag aborts it on a marker) is quarantined: refused
/// with the reason from then on, without ending another part.
#[test]
fn an_inspector_part_that_ends_is_replaced_and_the_file_it_crashed_on_is_quarantined() {
    let dir = common::TempDir::new("go-requests-inspector");
    let daemon = common::Daemon::start(&["--go-requests", "all", "--fault-inspector-crash-marker"]);
    let part_of = |d: &common::Daemon| d.json(&["status"])["inspector_part"].clone();
    let assert_confined = |part: &serde_json::Value| {
        assert_eq!(part["privileges"]["uid"], 65534, "{part}");
        assert_eq!(part["privileges"]["effective_capabilities"], serde_json::json!([]), "{part}");
        assert!(part["seccomp"] == true && part["ended"].is_null(), "{part}");
        let pid = part["pid"].as_u64().expect("its pid");
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        assert!(proc_status.contains("Seccomp:\t2"), "{proc_status}");
        // Of sockets, holds its links only: not the listeners, the client part's or the
        // launcher's link (the files handed to it for symbolization are open too).
        let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .map(|target| target.display().to_string())
            .filter(|target| target.starts_with("socket:"))
            .collect();
        assert_eq!(sockets.len(), 2, "its two links only: {sockets:?}");
        pid as i32
    };
    let first = part_of(&daemon);
    let pid = assert_confined(&first);
    let launcher = daemon.json(&["status"])["inspector_launcher"].clone();
    assert_eq!(launcher["privileges"]["uid"], 0, "{launcher}");
    assert_eq!(
        launcher["privileges"]["effective_capabilities"],
        serde_json::json!(["cap_setgid", "cap_setuid", "cap_setpcap"]),
        "{launcher}"
    );

    // Killed between requests: the next binary is inspected by a new part, and nothing is
    // quarantined.
    // SAFETY: signalling the daemon's part, as root.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let program = common::go_program("go_requests", "go-requests", false, &dir.0);
    let _client = GoClient::start(&program, "get");
    daemon.eventually("the client probed by a new part", |d| {
        let status = d.json(&["status"]);
        let probed = status["go_requests"]["probed_processes"].as_u64().unwrap_or(0);
        let part = &status["inspector_part"];
        let last_end = part["last_end"].as_str().unwrap_or("");
        if probed >= 1 && part["restarts"] == 1 && last_end.contains("killed by signal 9") {
            Ok(())
        } else {
            Err(format!("probed {probed}, part {part}"))
        }
    });
    let second = part_of(&daemon);
    let second_pid = assert_confined(&second);
    assert_ne!(second_pid, pid);
    assert_eq!(second["quarantined"], 0, "{second}");

    // A binary that crashes the parser: quarantined, refused, and a third part starts.
    let crasher = dir.0.join("go-requests-crasher");
    let mut bytes = std::fs::read(&program).expect("the Go client");
    bytes.extend_from_slice(tracer::privsep::inspector::FAULT_MARKER);
    std::fs::write(&crasher, bytes).expect("write the crasher");
    std::fs::set_permissions(&crasher, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let crasher_path = crasher.display().to_string();
    let _crasher = GoClient::start(&crasher, "get");
    daemon.eventually("the crasher quarantined and a new part running", |d| {
        let status = d.json(&["status"]);
        let part = &status["inspector_part"];
        let files = part["quarantined_files"].to_string();
        let last_end = part["last_end"].as_str().unwrap_or("");
        if part["restarts"] == 2
            && files.contains(&crasher_path)
            && last_end.contains("killed by signal 11")
            && part["ended"].is_null()
        {
            Ok(())
        } else {
            Err(format!("part {part}"))
        }
    });
    let third_pid = assert_confined(&part_of(&daemon));
    assert_ne!(third_pid, second_pid);
    let refused = daemon.json(&["status"])["go_requests"]["refused_processes"].as_u64();
    // The same file again, in another process: refused without a crash.
    let _again = GoClient::start(&crasher, "get");
    let _healthy = GoClient::start(&program, "get");
    daemon.eventually("the second crasher refused, the healthy client probed", |d| {
        let status = d.json(&["status"]);
        let now_refused = status["go_requests"]["refused_processes"].as_u64();
        let probed = status["go_requests"]["probed_processes"].as_u64().unwrap_or(0);
        if now_refused > refused && probed >= 2 {
            Ok(())
        } else {
            Err(format!("refused {now_refused:?} (before {refused:?}), probed {probed}"))
        }
    });
    let part = part_of(&daemon);
    assert_eq!(
        (part["restarts"].as_u64(), part["pid"].as_u64()),
        (Some(2), Some(third_pid as u64))
    );
    let text = daemon.try_cli(&["status"]).expect("tracer status");
    assert!(text.contains("quarantined files: 1: ") && text.contains(&crasher_path), "{text}");
}

/// Under the default policy a healthy Go client is no suspect: no probe, no request groups.
#[test]
fn a_go_client_that_is_no_suspect_is_not_probed() {
    let dir = common::TempDir::new("go-requests-default");
    let daemon = common::Daemon::start(&[]);
    let program = common::go_program("go_requests", "go-requests", false, &dir.0);
    let mut client = GoClient::start(&program, "get");
    client.run_requests();
    daemon.wait_for_more("leak_evaluations", 1);
    let status = daemon.json(&["status"]);
    assert_eq!(status["go_requests"]["policy"], "suspects", "{status}");
    assert_eq!(status["go_requests"]["probed_processes"], 0, "{status}");
    let report = daemon.json(&["stacks", &client.pid.to_string()]);
    assert!(report["requests"].is_null(), "{report}");
    assert!(!client.breakpoint_set(&client.inspect()), "a uprobe on a non-suspect");
}

/// Under the default policy a Go client that starts leaking while it runs becomes a suspect,
/// is probed then, and its growth alert's evidence names the function whose requests hold
/// the leaked connections (its opener stacks end in the Transport); `tracer leaks` and `top`
/// say so. The connections it leaked before it was probed are counted as such.
#[test]
fn a_client_that_becomes_a_suspect_is_probed_and_its_alert_names_the_leaking_function() {
    let dir = common::TempDir::new("go-requests-suspect");
    // The alert must hold while the test pauses the leak to query (seconds on a loaded guest):
    // 20 clear evaluations before it resolves.
    let flags = [common::FAST_LEAKS, &["--leak-resolve-after", "20"]].concat();
    let daemon = common::Daemon::start(&flags);
    let program = common::go_program("go_requests", "go-requests", false, &dir.0);
    let mut client = GoClient::start(&program, "get");
    let go = client.inspect();
    assert!(!client.breakpoint_set(&go), "no suspect yet, no probe");
    let pid = client.pid;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let alert = loop {
        client.leak(2);
        let active = daemon.json(&["leaks"])["active"].clone();
        let alert = active
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["pid"] == pid && a["rule"] == "growth")
            .cloned();
        let named = alert.as_ref().is_some_and(|a| {
            a["evidence"]["stacks"]["requests"]["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["leading_function"] == "main.leakRequests"))
        });
        if named {
            break alert.expect("alert");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no growth alert naming main.leakRequests: {active:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(150));
    };
    assert!(client.breakpoint_set(&go), "the suspect is probed");
    let stacks = &alert["evidence"]["stacks"];
    let requests = &stacks["requests"];
    let groups = requests["groups"].as_array().expect("groups");
    assert!(
        groups.iter().all(|g| g["leading_function"] != "main.tidyRequests"),
        "only the leaking function requested: {stacks:#}"
    );
    // Every connection behind the rule (when the groups were last taken) is in a request group
    // kept, in the smaller ones not kept (the evidence keeps 3), or counted without one.
    let grouped: u64 = groups.iter().map(|g| common::num(g, "count")).sum();
    let accounted = grouped
        + ["in_other_groups", "before_probing", "no_request", "request_lost"]
            .iter()
            .map(|f| common::num(requests, f))
            .sum::<u64>();
    let connections = common::num(requests, "connections");
    assert_eq!(accounted, connections, "{accounted} of {connections} accounted for: {stacks:#}");
    // The connections it leaked before it was probed are still open: counted as such.
    let report = daemon.json(&["stacks", &pid.to_string()]);
    assert!(common::num(&report["requests"], "before_probing") > 0, "{report:#}");
    let text = daemon.try_cli(&["leaks"]).expect("tracer leaks");
    assert!(text.contains("last requested by main.leakRequests"), "{text}");
    // Evidence is taken again at each evaluation; names of new stacks may trail by one.
    daemon.eventually("tracer top names the leaking function", |d| {
        let top = d.try_cli(&["top"]).expect("tracer top");
        if top.contains("leaking from main.leakRequests") { Ok(()) } else { Err(top) }
    });
}

/// A request whose stack cannot be sent (the stack ring is full: here nobody reads it) is
/// reported on its socket in the lost-request map, with its process, so that the daemon shows
/// the connection's last request as lost rather than an earlier one's.
#[test]
fn a_request_whose_stack_is_lost_is_reported_on_its_socket() {
    let dir = common::TempDir::new("go-requests-lost");
    let program = common::go_program("go_requests", "go-requests", false, &dir.0);
    let mut probes = load_probes();
    let mut events = probes.take_events().expect("event ring");
    let _unread_stacks = probes.take_stacks().expect("stack ring");
    let mut lost = probes.take_lost_requests().expect("lost-request map");
    let mut client = GoClient::start(&program, "get");
    let pid = client.pid;
    let go = client.inspect();
    let exe = format!("/proc/{pid}/exe");
    let probe = probes.attach_go_requests(pid, Path::new(&exe), &go).expect("attach");
    // Tidy requests on one pooled connection until the ring is full (about 4,000 records of
    // 500 bytes in 2 MiB, fewer when other processes' stacks share it).
    let mut sent = 0;
    while lost.take().is_empty() {
        assert!(sent < 40_000, "{sent} requests and the stack ring never filled");
        client.only("tidy", 500);
        sent += 500;
    }
    // The ring is still full: the next 4 requests, the first on the tidy connection, are lost.
    let leaked: BTreeSet<u16> = client.only("leak", 4).into_iter().collect();
    assert_eq!(leaked.len(), 4, "{leaked:?}");
    let port_of = client_ports(&mut events, client.server_port);
    let reported: BTreeSet<u16> = lost
        .take()
        .into_iter()
        .inspect(|(_, request)| {
            assert_eq!(request.tgid, pid, "{request:?}");
            assert!(request.start_time_ns > 0 && request.timestamp_ns > 0, "{request:?}");
        })
        .filter_map(|(sock, _)| port_of.get(&sock).copied())
        .collect();
    probes.detach_go_requests(probe).expect("detach");
    assert_eq!(reported, leaked, "lost requests' sockets by client port vs the server's");
}

/// A Transport whose dialer returns a connection type of the program's own (an instrumenting
/// wrapper around the `*net.TCPConn`): the probe checks each `net.Conn`'s method table and skips
/// such requests rather than reading the wrapper with `*net.TCPConn`'s offsets. They show as
/// `no_request`, never as another connection's request. (This wrapper's first word leads to a
/// number that is its socket's descriptor: without the check the probe would follow it.)
#[test]
fn a_connection_of_another_type_is_skipped_not_misread() {
    let dir = common::TempDir::new("go-requests-wrapped");
    let program = common::go_program("go_requests", "go-requests", false, &dir.0);
    let mut probes = load_probes();
    let mut stacks = StackSource::new(probes.take_stacks().expect("stack ring"));
    let mut lost = probes.take_lost_requests().expect("lost-request map");
    let mut client = GoClient::start(&program, "wrapped");
    let pid = client.pid;
    let go = client.inspect();
    let exe = format!("/proc/{pid}/exe");
    let probe = probes.attach_go_requests(pid, Path::new(&exe), &go).expect("attach");
    let said = client.run_requests();
    assert_eq!(said.len(), 8, "{said:?}");
    let mut records = 0;
    stacks.drain(|record| {
        if record.kind == KIND_GO_REQUEST && record.tgid == pid {
            records += 1;
        }
    });
    let lost_ours = lost.take().into_iter().filter(|(_, r)| r.tgid == pid).count();
    probes.detach_go_requests(probe).expect("detach");
    assert_eq!((records, lost_ours), (0, 0), "requests on wrapped connections were followed");
}
