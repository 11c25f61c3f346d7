//! The API as a contract, on a live daemon: every answer (status, top, top by remote, ages,
//! conns, leaks), asked on the socket and through the CLI's `--json`, has exactly the fields
//! docs/api.md documents with the documented types (the schemas the answer types generate, which
//! a unit test keeps equal to the doc), and every `--json` prints the API's answer the same way.
mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Daemon, FAST_LEAKS, Workload, tracer_bin};
use serde_json::{Value, json};
use tracer::api::{protocol::API_VERSION, schema::Schemas};

/// One request on the socket, by hand as docs/api.md shows it; the whole answer envelope.
fn raw(daemon: &Daemon, request: Value) -> Value {
    let mut stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let line = json!({ "version": API_VERSION, "request": request }).to_string() + "\n";
    stream.write_all(line.as_bytes()).expect("write");
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).expect("read");
    assert!(reply.ends_with('\n') && reply.trim_end().lines().count() == 1, "one line: {reply}");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad envelope {reply}: {e}"))
}

/// The answer (`result`) of a successful request, after checking the envelope around it.
fn answer(daemon: &Daemon, request: Value) -> Value {
    let envelope = raw(daemon, request.clone());
    let keys: Vec<&String> = envelope.as_object().expect("envelope").keys().collect();
    assert_eq!(keys, ["version", "result"], "{request}: {envelope}");
    assert_eq!(envelope["version"], API_VERSION);
    envelope["result"].clone()
}

/// `tracer ARGS --json` printed exactly one pretty JSON document and one newline.
fn cli_json(daemon: &Daemon, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.push("--json");
    let out = daemon.try_cli(&full).unwrap_or_else(|e| panic!("tracer {full:?}: {e}"));
    let value: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tracer {full:?}: {e}: {out}"));
    let pretty = serde_json::to_string_pretty(&value).expect("pretty") + "\n";
    assert_eq!(out, pretty, "tracer {full:?}: pretty JSON and one newline, nothing else");
    value
}

fn assert_valid(schemas: &Schemas, name: &str, what: &str, value: &Value) {
    if let Err(errors) = schemas.validate_named(name, value) {
        panic!("{what} does not match the schema of {name} in docs/api.md: {errors:#?}\n{value:#}");
    }
}

/// The same fields in the same order at every level. Values may differ (two answers a moment
/// apart, on a machine where other things run): connections are paired by `id`, other array
/// items by position.
fn same_shape(a: &Value, b: &Value, at: &str) -> Result<(), String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let (kx, ky): (Vec<_>, Vec<_>) = (x.keys().collect(), y.keys().collect());
            if kx != ky {
                return Err(format!("{at}: fields {kx:?} vs {ky:?}"));
            }
            x.iter().try_for_each(|(k, v)| same_shape(v, &y[k], &format!("{at}/{k}")))
        }
        (Value::Array(x), Value::Array(y)) => x.iter().enumerate().try_for_each(|(i, v)| {
            let w = match v.get("id") {
                Some(id) => y.iter().find(|w| w.get("id") == Some(id)),
                None => y.get(i),
            };
            w.map_or(Ok(()), |w| same_shape(v, w, &format!("{at}/{i}")))
        }),
        _ => Ok(()),
    }
}

fn alerts(daemon: &Daemon, list: &str, pid: u32) -> usize {
    let leaks = answer(daemon, json!({"leaks": {}}));
    leaks[list].as_array().expect("list").iter().filter(|a| a["pid"] == pid).count()
}

#[test]
fn every_answer_of_a_live_daemon_matches_the_documented_schema() {
    let schemas = Schemas::generate();
    let daemon = Daemon::start(FAST_LEAKS);
    // What it runs with, as /proc says of it (docs/security.md): root, with cap_sys_admin (which
    // grants what BPF and perf events need) and no cap_bpf of its own.
    let privileges = &daemon.json(&["status"])["privileges"];
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let truth = tracer::privileges::Privileges::parse(&proc_status).expect("its /proc status");
    assert_eq!(privileges["uid"], truth.effective_uid, "{privileges}");
    assert_eq!(privileges["effective_capabilities"], json!(truth.names()), "{privileges}");
    assert!(truth.has(tracer::privileges::CAP_SYS_ADMIN), "{privileges}");
    assert!(!truth.has(tracer::privileges::CAP_BPF), "implied by cap_sys_admin: {privileges}");
    // Only the capabilities docs/security.md lists, as many of them as root has here, on every
    // thread (dropped before the first started).
    let ours = tracer::privileges::Privileges::of_self().expect("the test's own status");
    let kept = tracer::privileges::kept_set(ours.effective, 0);
    assert_eq!(truth.effective, kept, "{privileges}");
    // no_new_privs on every thread, as the kernel says of each (set before any started).
    assert_eq!(privileges["no_new_privs"], true, "{privileges}");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).expect("its threads");
    let mut threads = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let Some(thread) = tracer::privileges::Privileges::parse(&status) else { continue };
        assert!(thread.no_new_privs, "thread {:?} lacks no_new_privs", task.file_name());
        assert_eq!(thread.effective, truth.effective, "thread {:?}", task.file_name());
        threads += 1;
    }
    assert!(threads > 1, "the daemon runs several threads ({threads} seen)");

    // Connections of every kind the answers show: IPv4 and IPv6, held by their owners, waiting
    // unaccepted in a backlog (unattributed: pid and comm null), held by two processes at once.
    let mut server = Workload::spawn();
    let port4 = server.listen("127.0.0.1");
    let port6 = server.listen("::1");
    let backlog_port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port4}"), 3);
    client.connect(&format!("[::1]:{port6}"), 2);
    client.connect(&format!("127.0.0.1:{backlog_port}"), 2);
    server.cmd("accept 0 3");
    server.cmd("accept 1 2");
    // A forked python holds its connection in two processes: `holders` lists both.
    let mut forked = Command::new("python3")
        .args([
            "-c",
            "import os, socket, sys\n\
             s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
             print(os.getpid(), flush=True)\n\
             os.fork()\n\
             sys.stdin.read()",
            &port4.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut connected = String::new();
    BufReader::new(forked.stdout.take().expect("stdout")).read_line(&mut connected).expect("pid");
    server.cmd("accept 0 1");
    // Two leak alerts (close_wait, raised within about a second on FAST_LEAKS): servers that
    // never close, whose clients hang up. One server then exits: its alert resolves.
    let mut holder = Workload::spawn();
    let hold_port = holder.listen("127.0.0.1");
    holder.cmd("serve-bg 0 hold");
    let mut quitter = Workload::spawn();
    let quit_port = quitter.listen("127.0.0.1");
    quitter.cmd("serve-bg 0 hold");
    let mut hangup = Workload::spawn();
    hangup.connect(&format!("127.0.0.1:{hold_port}"), 2);
    hangup.connect(&format!("127.0.0.1:{quit_port}"), 2);
    hangup.cmd("close 4");
    daemon.eventually("two close_wait alerts", |d| {
        match (alerts(d, "active", holder.pid), alerts(d, "active", quitter.pid)) {
            (1.., 1..) => Ok(()),
            counts => Err(format!("active alerts of the two servers: {counts:?}")),
        }
    });
    let quitter_pid = quitter.pid;
    quitter.exit();
    daemon.eventually("the exited server's alert resolved", |d| {
        if alerts(d, "resolved", quitter_pid) > 0 { Ok(()) } else { Err("not yet".into()) }
    });
    daemon.eventually("the forked connection has two holders", |d| {
        let conns = answer(d, json!({"conns": {"remote": format!("127.0.0.1:{port4}")}}));
        let found = conns["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .any(|c| c["holders"].as_array().is_some_and(|h| h.len() == 2));
        if found { Ok(()) } else { Err(format!("no connection with two holders: {conns}")) }
    });

    let client_pid = client.pid.to_string();
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("StatusReport", json!({"status": {}}), vec!["status"]),
        ("TopReport", json!({"top": {"limit": null, "by": "process"}}), vec!["top"]),
        ("TopReport", json!({"top": {"limit": 2}}), vec!["top", "--limit", "2"]),
        (
            "RemoteReport",
            json!({"top": {"limit": null, "by": "remote"}}),
            vec!["top", "--by", "remote"],
        ),
        ("AgesReport", json!({"ages": {"pid": client.pid}}), vec!["top", "--ages", &client_pid]),
        ("ConnsReport", json!({"conns": {}}), vec!["conns"]),
        ("ConnsReport", json!({"conns": {"pid": client.pid}}), vec!["conns", "--pid", &client_pid]),
        (
            "ConnsReport",
            json!({"conns": {"state": "close_wait"}}),
            vec!["conns", "--state", "close_wait"],
        ),
        ("LeaksReport", json!({"leaks": {}}), vec!["leaks"]),
        (
            "GroupReport",
            json!({"top": {"limit": null, "by": "container"}}),
            vec!["top", "--by", "container"],
        ),
        ("GroupReport", json!({"top": {"by": "pod"}}), vec!["top", "--by", "pod"]),
        ("TopReport", json!({"top": {"container": "host"}}), vec!["top", "--container", "host"]),
        (
            "ConnsReport",
            json!({"conns": {"namespace": "shop"}}),
            vec!["conns", "--namespace", "shop"],
        ),
        ("LeaksReport", json!({"leaks": {"pod": "checkout"}}), vec!["leaks", "--pod", "checkout"]),
    ];
    for (name, request, args) in &cases {
        let api = answer(&daemon, request.clone());
        assert_valid(&schemas, name, &format!("the answer to {request}"), &api);
        let printed = cli_json(&daemon, args);
        assert_valid(&schemas, name, &format!("tracer {args:?} --json"), &printed);
        if let Err(e) = same_shape(&api, &printed, "") {
            panic!("tracer {args:?} --json is not the API's answer to {request}: {e}");
        }
    }

    // What the answers above covered, so that the schema checks saw every kind of value.
    let conns = answer(&daemon, json!({"conns": {}}));
    let conns = conns["connections"].as_array().expect("connections");
    assert!(conns.iter().any(|c| c["pid"].is_null()), "an unattributed connection");
    assert!(conns.iter().any(|c| c["local"].as_str().is_some_and(|l| l.starts_with("[::1]"))));
    let leaks = answer(&daemon, json!({"leaks": {}}));
    assert!(leaks["active"].as_array().is_some_and(|a| !a.is_empty()), "{leaks}");
    // The test's own processes run in the host's cgroups: host processes, in every view.
    let top = answer(&daemon, json!({"top": {}}));
    let rows = top["processes"].as_array().expect("processes");
    let ours: Vec<_> = rows.iter().filter(|r| r["pid"] == holder.pid).collect();
    assert!(!ours.is_empty() && ours.iter().all(|r| r["container"].is_null()), "{top}");
    // Containers of other workloads on the machine may show up too: compare with what the rows
    // themselves say.
    daemon.eventually("--container host keeps every host process", |d| {
        let rows = |request: Value| answer(d, request)["processes"].as_array().cloned();
        let all = rows(json!({"top": {}})).unwrap_or_default();
        let host = all.iter().filter(|r| r["container"].is_null()).count() as u64;
        let kept = rows(json!({"top": {"container": "host"}})).unwrap_or_default();
        common::expect_eq("host rows", kept.len() as u64, host)
    });
    let shop = answer(&daemon, json!({"conns": {"namespace": "no-such-namespace-7f3a"}}));
    assert_eq!(shop["connections"].as_array().map(Vec::len), Some(0), "{shop}");
    assert!(shop["host_netns"].is_u64(), "{shop}");
    let groups = answer(&daemon, json!({"top": {"by": "container"}}));
    let groups = groups["groups"].as_array().expect("groups");
    let host = groups.iter().find(|g| g["group"] == "host").expect("a host group");
    assert!(host["processes"].as_u64().is_some_and(|n| n >= 1), "{groups:?}");
    assert!(
        leaks["active"]
            .as_array()
            .expect("active")
            .iter()
            .filter(|a| a["pid"] == holder.pid || a["pid"] == quitter_pid)
            .all(|a| a["container"].is_null())
    );
    assert!(leaks["resolved"][0]["resolved_seconds_ago"].is_u64(), "{leaks}");
    daemon.eventually("the client's ages count its 7 connections", |d| {
        let ages = answer(d, json!({"ages": {"pid": client.pid}}));
        let counted: u64 = ages["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b[1].as_u64().expect("count"))
            .sum();
        common::expect_eq("open", ages["open"].as_u64().expect("open"), 7)?;
        common::expect_eq("counted in buckets", counted, 7)
    });

    let _ = forked.kill();
    let _ = forked.wait();
}

#[test]
fn errors_keep_the_envelope_and_the_cli_convention() {
    let daemon = Daemon::start(&[]);
    // Refused requests: an error envelope, no result; the connection stays usable.
    let mut stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream
        .write_all(
            format!(
                "{{\"version\":{API_VERSION},\"request\":{{\"conns\":{{\"state\":\"sleepy\"}}}}}}\n\
                 {{\"version\":{API_VERSION},\"request\":{{\"status\":{{}}}}}}\n"
            )
            .as_bytes(),
        )
        .expect("write");
    let mut lines = BufReader::new(stream).lines();
    let refused: Value =
        serde_json::from_str(&lines.next().expect("line").expect("read")).expect("JSON");
    let keys: Vec<&String> = refused.as_object().expect("envelope").keys().collect();
    assert_eq!(keys, ["version", "error"], "{refused}");
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("close_wait")), "{refused}");
    let next: Value =
        serde_json::from_str(&lines.next().expect("line").expect("read")).expect("JSON");
    assert!(next["result"]["api_version"] == API_VERSION, "{next}");
    // A placement filter that cannot match anything is refused, naming the fix.
    let refused = raw(&daemon, json!({"top": {"container": "host", "pod": "checkout"}}));
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("--container host")), "{refused}");

    // The CLI: nothing on stdout, one `tracer: ` line on stderr, exit 1, --json or not.
    for args in
        [["top", "--ages", "4000000000", "--json"], ["conns", "--state", "sleepy", "--json"]]
    {
        let out = Command::new(tracer_bin())
            .args(args)
            .arg("--socket")
            .arg(&daemon.socket)
            .output()
            .expect("run tracer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.starts_with("tracer: ") && stderr.lines().count() == 1, "{stderr}");
    }
}

#[test]
fn top_json_watch_streams_answers_and_stops_when_its_reader_goes() {
    let schemas = Schemas::generate();
    let daemon = Daemon::start(&[]);
    let mut child = Command::new(tracer_bin())
        .args(["top", "--json", "--watch", "0.2", "--socket"])
        .arg(&daemon.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tracer top --watch");
    let mut stdout = child.stdout.take().expect("stdout");
    // Three documents, then close the pipe.
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let documents = loop {
        let n = stdout.read(&mut buf).expect("read");
        assert!(n > 0, "tracer top --watch ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let complete: Vec<Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect();
        if complete.len() >= 3 {
            break complete;
        }
    };
    drop(stdout);
    assert!(!text.contains('\x1b'), "no terminal control in machine output: {text:?}");
    assert!(text.starts_with("{\n"), "each answer pretty-printed: {text:?}");
    for document in &documents {
        assert_valid(&schemas, "TopReport", "a frame of top --json --watch", document);
    }
    // The next write finds no reader: it ends, successfully, by itself.
    let deadline = std::time::Instant::now() + common::wait_limit();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tracer top --json --watch kept running without a reader");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// One answer line read from `stream` within the wait limit.
fn answer_line(stream: &UnixStream) -> String {
    stream.set_read_timeout(Some(common::wait_limit())).expect("timeout");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("an answer line");
    line
}

/// Hostile clients cannot starve the API (docs/api.md, "Limits"): 1,000 idle connections
/// (more than its 128 slots), a 1 MiB request, bytes that are not UTF-8, a half-closed socket,
/// a client that never reads its answers. Meanwhile a new client gets its answer at once, and
/// the daemon keeps counting exactly.
#[test]
fn hostile_clients_cannot_starve_the_api_and_counts_stay_exact() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    let addr = format!("127.0.0.1:{port}");

    // 1,000 clients that connect and say nothing: the newest keep their slots, the oldest are
    // closed for them, and a new client is answered at once.
    let idle: Vec<UnixStream> =
        (0..1000).map(|_| UnixStream::connect(&daemon.socket).expect("connect")).collect();
    let started = std::time::Instant::now();
    let status = daemon.json(&["status"]);
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());
    let evicted = status["api"]["evicted"].as_u64().unwrap_or(0);
    assert!(evicted >= 1000 - 128, "{}", status["api"]);
    // The first idle client was closed (end of file), the last one still holds its slot.
    let mut byte = [0u8; 1];
    idle[0].set_read_timeout(Some(common::wait_limit())).expect("timeout");
    assert_eq!((&idle[0]).read(&mut byte).expect("read"), 0, "the oldest idle client is closed");
    idle[999].set_nonblocking(true).expect("nonblocking");
    let kept = (&idle[999]).read(&mut byte);
    assert!(
        kept.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the newest idle client keeps its slot: {kept:?}"
    );
    drop(idle);

    // A 1 MiB request without a newline: refused once 64 KiB are in, the connection closed.
    let huge = UnixStream::connect(&daemon.socket).expect("connect");
    let writer = {
        let mut huge = huge.try_clone().expect("clone");
        std::thread::spawn(move || huge.write_all(&vec![b'a'; 1 << 20]))
    };
    let line = answer_line(&huge);
    assert!(line.contains("longer than 65536 bytes"), "{line}");
    assert!(writer.join().expect("writer").is_err(), "the daemon closed the connection");

    // Bytes that are not UTF-8: refused, naming why.
    let mut bad = UnixStream::connect(&daemon.socket).expect("connect");
    bad.write_all(b"\xff\xfe{\"version\":1}\n").expect("send");
    assert!(answer_line(&bad).contains("not UTF-8"));

    // Half-closed: the request, then the end of the client's writing; the answer still comes.
    let mut half = UnixStream::connect(&daemon.socket).expect("connect");
    let request = json!({"version": API_VERSION, "request": {"status": {}}});
    half.write_all(format!("{request}\n").as_bytes()).expect("send");
    half.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let line = answer_line(&half);
    assert!(line.contains("\"result\""), "{line}");

    // A client that asks and never reads: its answers fill its socket; others are still served.
    let mut deaf = UnixStream::connect(&daemon.socket).expect("connect");
    deaf.set_write_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let request = json!({"version": API_VERSION, "request": {"status": {}}});
    for _ in 0..2000 {
        if deaf.write_all(format!("{request}\n").as_bytes()).is_err() {
            break;
        }
    }
    // And the daemon counted exactly throughout.
    client.connect(&addr, 20);
    server.cmd("accept 0 20");
    daemon.eventually("the 20 connections counted", |d| {
        common::expect_eq("open", common::num(&d.process(client.pid), "open"), 20)
    });
    let status = daemon.json(&["status"]);
    assert!(status["api"]["clients"].as_u64().is_some_and(|n| n <= 128), "{}", status["api"]);
    drop(deaf);
}

/// `--socket-group`: a member of the group queries the daemon; another user is refused with a
/// message that says how to fix it. The users are a uid and gids alone: no account is made.
#[test]
fn a_socket_group_member_may_query_and_another_user_is_refused() {
    use std::os::unix::{fs::MetadataExt, process::CommandExt};
    // A gid nobody on the machine has.
    const GID: u32 = 4242;
    let daemon = Daemon::start(&["--socket-group", &GID.to_string()]);
    let meta = std::fs::metadata(&daemon.socket).expect("the socket");
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, GID));
    // The binary where any user may run it (the clone can be under a private home).
    let dir = common::TempDir::new("socket-group");
    let bin = dir.0.join("tracer");
    std::fs::copy(tracer_bin(), &bin).expect("copy tracer");
    let as_user = |gid: u32| {
        Command::new(&bin)
            .args(["status", "--json", "--socket"])
            .arg(&daemon.socket)
            .uid(65534)
            .gid(gid)
            .output()
            .expect("tracer status as uid 65534")
    };
    let member = as_user(GID);
    assert!(member.status.success(), "{}", String::from_utf8_lossy(&member.stderr));
    let status: Value = serde_json::from_slice(&member.stdout).expect("status JSON");
    assert_eq!(status["api_version"], API_VERSION);
    let other = as_user(65534);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success(), "a non-member was answered");
    assert!(stderr.contains("permission denied") && stderr.contains("--socket-group"), "{stderr}");
}

/// `/metrics` under the same abuse (docs/metrics.md): more idle connections than its 32 slots
/// (opened and silent, or after one request) while a real scrape is answered at once, and a
/// request with a 1 MiB header refused without taking the daemon down.
#[test]
fn idle_metrics_clients_never_make_a_scrape_wait() {
    use std::net::TcpStream;
    let daemon = Daemon::start(&[]);
    let addr = daemon.json(&["status"])["metrics_addr"].as_str().expect("metrics_addr").to_owned();
    // 20 that never send a request, 20 that sent one and keep the connection alive.
    let mut idle: Vec<TcpStream> =
        (0..20).map(|_| TcpStream::connect(&addr).expect("connect")).collect();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).expect("connect");
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
        s.set_read_timeout(Some(common::wait_limit())).expect("timeout");
        let mut first = [0u8; 12];
        s.read_exact(&mut first).expect("an answer");
        assert_eq!(&first, b"HTTP/1.1 200", "a kept-alive scrape");
        idle.push(s);
    }
    let started = std::time::Instant::now();
    let body = daemon.scrape_metrics();
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("tcp_tracer_"), "{body:.200}");

    // A 1 MiB header: refused (431), and the daemon scrapes on.
    let mut huge = TcpStream::connect(&addr).expect("connect");
    let header =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Junk: {}\r\n\r\n", "a".repeat(1 << 20));
    let _ = huge.write_all(header.as_bytes());
    huge.set_read_timeout(Some(common::wait_limit())).expect("timeout");
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert!(daemon.scrape_metrics().starts_with("HTTP/1.1 200"));
    drop(idle);
}

/// `(uid fields, CapEff, CapPrm, CapBnd, NoNewPrivs, PPid)` of a process, from /proc.
fn proc_credentials(pid: u32) -> (String, String, String, String, String, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (
        field("Uid:"),
        field("CapEff:"),
        field("CapPrm:"),
        field("CapBnd:"),
        field("NoNewPrivs:"),
        field("PPid:").parse().expect("ppid"),
    )
}

/// docs/security.md, "Two processes": the API socket and the metrics listener are held by a
/// child of the daemon that runs as nobody with no capability in any set, and every query,
/// scrape and trace line reaches clients through it. The daemon stops, saying why, when that
/// part goes; it goes when the daemon does.
#[test]
fn clients_are_served_by_an_unprivileged_process_apart_from_the_daemon() {
    let daemon = Daemon::start(&[]);
    let status = daemon.json(&["status"]);
    let part = &status["clients_part"];
    let pid = u32::try_from(part["pid"].as_u64().expect("clients_part.pid")).expect("a pid");
    let (uids, eff, prm, bnd, nnp, ppid) = proc_credentials(pid);
    assert_eq!(ppid, daemon.pid(), "a child of the daemon");
    assert_eq!(uids, "65534\t65534\t65534\t65534", "nobody in every uid field");
    let none = "0000000000000000";
    assert_eq!((eff.as_str(), prm.as_str(), bnd.as_str()), (none, none, none), "capabilities");
    assert_eq!(nnp, "1");
    assert_eq!(part["privileges"]["uid"], 65534, "{part}");
    assert_eq!(part["privileges"]["effective_capabilities"], json!([]), "{part}");
    assert_eq!(part["privileges"]["no_new_privs"], true, "{part}");
    // Under its seccomp allow-list, as the kernel says (mode 2: filter).
    let seccomp = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(seccomp.lines().any(|l| l == "Seccomp:\t2"), "{seccomp}");
    assert_eq!(part["seccomp"], true, "{part}");

    // The listeners are that process's alone: the privileged one holds neither.
    let holders = |args: &[&str]| {
        let out = Command::new("ss").args(args).output().expect("ss");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let api = holders(&["-Hxlp", "src", daemon.socket.to_str().expect("path")]);
    let metrics_addr = status["metrics_addr"].as_str().expect("metrics_addr").to_owned();
    let port = metrics_addr.rsplit(':').next().expect("port").to_owned();
    let metrics = holders(&["-Htlpn", "sport", "=", &format!(":{port}")]);
    for (what, list) in [("API socket", &api), ("metrics listener", &metrics)] {
        assert!(list.contains(&format!("pid={pid},")), "{what} held by {pid}: {list}");
        assert!(!list.contains(&format!("pid={},", daemon.pid())), "{what}: {list}");
    }

    // Answers, pages and a trace stream all pass through it.
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut trace = Command::new(tracer_bin())
        .args(["trace", "--json", "--pid"])
        .arg(server.pid.to_string())
        .arg("--socket")
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("tracer trace");
    let mut client = Workload::spawn();
    // The trace subscribes before the connections it must see.
    daemon.eventually("the trace subscribed", |d| {
        common::expect_eq(
            "subscribers",
            common::num(&d.json(&["status"])["trace"], "subscribers"),
            1,
        )
    });
    client.connect(&format!("127.0.0.1:{port}"), 2);
    server.cmd("accept 0 2");
    daemon.eventually("the server's two connections", |d| {
        common::expect_eq("open", common::num(&d.process(server.pid), "open"), 2)
    });
    let page = daemon.scrape_metrics();
    assert!(page.contains("tcp_tracer_build_info"), "{page}");
    let mut lines = BufReader::new(trace.stdout.take().expect("stdout")).lines();
    let opens = (0..2)
        .map(|_| {
            let line = lines.next().expect("a trace line").expect("read");
            let record: Value = serde_json::from_str(&line).expect("a JSON record");
            assert_eq!(record["pid"], server.pid, "{record}");
            record["kind"].as_str().map(str::to_owned)
        })
        .collect::<Vec<_>>();
    assert_eq!(opens, [Some("open".to_owned()), Some("open".to_owned())]);
    let _ = trace.kill();
    let _ = trace.wait();

    // That part killed: the daemon stops and says why, rather than run with nobody to answer.
    // SAFETY: signalling the daemon's child, found above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let log = daemon.wait_exit(Duration::from_secs(20));
    assert!(log.contains("the part that serves API and metrics clients stopped"), "{log}");
    assert!(log.contains("was killed by signal 9"), "{log}");
}

/// The other way round: the part that serves clients goes with the daemon, even killed.
#[test]
fn the_part_that_serves_clients_ends_with_the_daemon() {
    let daemon = Daemon::start(&[]);
    let pid = daemon.json(&["status"])["clients_part"]["pid"].as_u64().expect("pid") as u32;
    let socket = daemon.socket.clone();
    daemon.kill_hard();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "pid {pid} outlived the daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nobody answers on the socket any more: a new daemon can take it.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());

    // A part that serves clients that is stuck (here: stopped) cannot exit by itself. The
    // daemon ends it: a SIGKILL after 2 s when it stops, its parent-death signal when it is
    // killed. Both are signals to another uid, sent with the daemon's CAP_KILL.
    for (flags, killed) in [
        (&[][..], "by the daemon's stop"),
        (&[][..], "by the parent-death signal"),
        (&["--drop-capability", "cap_kill"][..], ""),
    ] {
        let daemon = Daemon::start(flags);
        let pid = daemon.json(&["status"])["clients_part"]["pid"].as_u64().expect("pid") as i32;
        // SAFETY: signalling the test's grandchild.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        if killed == "by the parent-death signal" {
            daemon.kill_hard();
        } else {
            let log = daemon.stop();
            assert!(log.contains("the part that serves clients"), "{log}");
        }
        let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if killed.is_empty() {
            // Without CAP_KILL the kernel refuses both signals: the stopped part outlives the
            // daemon (the test ends it).
            assert!(!gone(), "without cap_kill the stopped part cannot be killed");
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        } else {
            assert!(gone(), "stopped pid {pid} outlived the daemon, not killed {killed}");
        }
    }
}
