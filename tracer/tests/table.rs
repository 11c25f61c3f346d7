//! The connection table issue, end to end: the real daemon, real sockets, the real CLI, exact
//! counts asserted while the workload processes are alive. Run as root.
mod common;

use std::collections::BTreeSet;

use common::{Daemon, Workload, assert_corrections_explained, expect_eq, final_summary, num};
use serde_json::Value;
use tracer_common::{ConnEvent, ring_record_bytes};

fn conns(daemon: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["conns"];
    full.extend_from_slice(args);
    daemon.json(&full)["connections"].as_array().cloned().unwrap_or_default()
}

fn port_of(endpoint: &Value) -> u16 {
    let text = endpoint.as_str().expect("endpoint string");
    text.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
}

#[test]
fn forty_connections_exact_counts_states_and_tuples() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let v4 = server.listen("127.0.0.1");
    let v6 = server.listen("::1");
    let mut client = Workload::spawn();
    let mut client_ports = client.connect(&format!("127.0.0.1:{v4}"), 20);
    client_ports.extend(client.connect(&format!("[::1]:{v6}"), 20));
    server.cmd("accept 0 20");
    server.cmd("accept 1 20");
    // The client closes its 15 oldest: 15 v4 connections.
    client.cmd("close 15");
    let closed: BTreeSet<u16> = client_ports[..15].iter().copied().collect();
    let kept: BTreeSet<u16> = client_ports[15..].iter().copied().collect();

    daemon.eventually(
        "client 25 open / 40 opened / 15 closed; server 40 open, 15 close_wait",
        |d| {
            let c = d.process(client.pid);
            let s = d.process(server.pid);
            expect_eq("client open", num(&c, "open"), 25)?;
            expect_eq("client opened_total", num(&c, "opened_total"), 40)?;
            expect_eq("client closed_total", num(&c, "closed_total"), 15)?;
            expect_eq("server open", num(&s, "open"), 40)?;
            expect_eq("server opened_total", num(&s, "opened_total"), 40)?;
            expect_eq("server close_wait", num(&s["states"], "close_wait"), 15)?;
            expect_eq("server established", num(&s["states"], "established"), 25)
        },
    );
    let c = daemon.process(client.pid);
    assert_eq!(c["comm"], "workload");
    assert_eq!(num(&c, "connect_failed"), 0);
    assert_eq!(num(&c["states"], "established"), 25);
    assert_eq!(c["exited"], false);

    // conns: exactly the right tuples, directions and states.
    let client_conns = conns(&daemon, &["--pid", &client.pid.to_string()]);
    assert_eq!(client_conns.len(), 25);
    let mut v6_count = 0;
    for conn in &client_conns {
        assert_eq!(conn["direction"], "outbound");
        assert_eq!(conn["state"], "established");
        assert_eq!(conn["comm"], "workload");
        let remote = conn["remote"].as_str().expect("remote");
        if remote.starts_with('[') {
            assert_eq!(remote, format!("[::1]:{v6}"));
            v6_count += 1;
        } else {
            assert_eq!(remote, format!("127.0.0.1:{v4}"));
        }
    }
    assert_eq!(v6_count, 20);
    let client_local: BTreeSet<u16> = client_conns.iter().map(|c| port_of(&c["local"])).collect();
    assert_eq!(client_local, kept);

    let server_conns = conns(&daemon, &["--pid", &server.pid.to_string()]);
    assert_eq!(server_conns.len(), 40);
    assert!(server_conns.iter().all(|c| c["direction"] == "inbound"));
    let close_wait: BTreeSet<u16> = server_conns
        .iter()
        .filter(|c| c["state"] == "close_wait")
        .map(|c| port_of(&c["remote"]))
        .collect();
    assert_eq!(close_wait, closed, "the server's close_wait peers are the closed client ports");
    let by_state = conns(&daemon, &["--pid", &server.pid.to_string(), "--state", "close_wait"]);
    assert_eq!(by_state.len(), 15);
    let to_v6 = conns(&daemon, &["--remote", &format!("[::1]:{v6}")]);
    assert_eq!(to_v6.len(), 20, "filter by remote");

    // The server closes everything.
    server.cmd("close 40");
    daemon.eventually("server open 0, closed 40", |d| {
        let s = d.process(server.pid);
        expect_eq("server open", num(&s, "open"), 0)?;
        expect_eq("server closed_total", num(&s, "closed_total"), 40)
    });
    let c = daemon.process(client.pid);
    assert_eq!(num(&c, "open"), 25, "the client still holds its 25 (now close_wait)");
    assert_eq!(num(&c["states"], "close_wait"), 25);
    let status = daemon.json(&["status"]);
    assert_eq!(num(&status, "events_lost"), 0);
    assert_corrections_explained(&daemon);
    drop(client);
    drop(server);
    let (emitted, received, lost) = final_summary(&daemon.stop());
    assert_eq!(emitted, received + lost);
}

#[test]
fn edge_cases_shutdown_reset_refused_connecting_and_exit() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let addr = format!("127.0.0.1:{port}");

    // shutdown(SHUT_WR) keeps the connection open.
    let mut half = Workload::spawn();
    half.connect(&addr, 1);
    server.cmd("accept 0 1");
    half.cmd("shutdown-wr 1");
    daemon.eventually("shutdown keeps open in fin_wait2", |d| {
        let p = d.process(half.pid);
        expect_eq("open", num(&p, "open"), 1)?;
        expect_eq("closed_total", num(&p, "closed_total"), 0)?;
        expect_eq("fin_wait2", num(&p["states"], "fin_wait2"), 1)
    });

    // A peer reset while the client still holds the socket: open, in state close.
    let mut victim = Workload::spawn();
    victim.connect(&addr, 2);
    server.cmd("accept 0 2");
    // The server's two newest connections are the victim's; reset the oldest three: the
    // half-closed one and both of the victim's.
    server.cmd("reset 3");
    daemon.eventually("reset but held stays open in state close", |d| {
        let p = d.process(victim.pid);
        expect_eq("open", num(&p, "open"), 2)?;
        expect_eq("close", num(&p["states"], "close"), 2)?;
        expect_eq("closed_total", num(&p, "closed_total"), 0)
    });
    let held = conns(&daemon, &["--pid", &victim.pid.to_string(), "--state", "close"]);
    assert_eq!(held.len(), 2);
    // The holder finally closes them (tcp_close on a socket already in CLOSE makes no state
    // change: the release must still be seen).
    victim.cmd("close 2");
    daemon.eventually("reset sockets released when closed", |d| {
        let p = d.process(victim.pid);
        expect_eq("open", num(&p, "open"), 0)?;
        expect_eq("closed_total", num(&p, "closed_total"), 2)
    });

    // A refused connect counts in connect_failed, never as open.
    let mut refused = Workload::spawn();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    refused.cmd(&format!("connect-refused 127.0.0.1:{closed_port} 3"));
    daemon.eventually("refused connects", |d| {
        let p = d.process(refused.pid);
        expect_eq("connect_failed", num(&p, "connect_failed"), 3)?;
        expect_eq("open", num(&p, "open"), 0)?;
        expect_eq("opened_total", num(&p, "opened_total"), 0)
    });

    // A connect stuck in SYN_SENT: a listener with a full backlog drops further SYNs.
    let full_port: u16 = server.cmd("listen 127.0.0.1 0").parse().expect("port");
    let mut stuck = Workload::spawn();
    // One at a time: a second SYN that raced the first one's handshake could still complete
    // (from the client's side) before the backlog counted the first.
    stuck.cmd(&format!("connect-nowait 127.0.0.1:{full_port} 1"));
    daemon.eventually("one established in the backlog", |d| {
        expect_eq("open", num(&d.process(stuck.pid), "open"), 1)
    });
    stuck.cmd(&format!("connect-nowait 127.0.0.1:{full_port} 2"));
    daemon.eventually("one established in the backlog, two connecting", |d| {
        let p = d.process(stuck.pid);
        expect_eq("open", num(&p, "open"), 1)?;
        expect_eq("connecting", num(&p, "connecting"), 2)
    });
    // A TCP socket bound but never connected, then closed, is no connection either.
    let unconnected = std::process::Command::new("python3")
        .args(["-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.close()"])
        .status()
        .expect("python3");
    assert!(unconnected.success());
    // The refused sockets were released after failing: expected releases, not unmatched ones,
    // and the table no longer tracks them.
    refused.cmd(&format!("connect-refused 127.0.0.1:{closed_port} 4"));
    daemon.eventually("seven refused, their releases all matched", |d| {
        expect_eq("connect_failed", num(&d.process(refused.pid), "connect_failed"), 7)?;
        expect_eq("unmatched_releases", num(&d.json(&["status"]), "unmatched_releases"), 0)
    });
    let connecting = conns(&daemon, &["--pid", &stuck.pid.to_string(), "--state", "connecting"]);
    assert_eq!(connecting.len(), 2);
    assert!(num(&daemon.json(&["top"]), "unattributed") >= 1, "the unaccepted one is unattributed");

    // A process that exits while holding connections.
    let mut quitter = Workload::spawn();
    quitter.connect(&addr, 3);
    server.cmd("accept 0 3");
    let quitter_pid = quitter.pid;
    quitter.exit();
    daemon.eventually("exited process listed with what it held", |d| {
        let p = d.process(quitter_pid);
        if p["exited"] != true {
            return Err(format!("not exited: {p}"));
        }
        expect_eq("open_at_exit", num(&p, "open_at_exit"), 3)?;
        expect_eq("open", num(&p, "open"), 0)?;
        expect_eq("closed_total", num(&p, "closed_total"), 3)
    });
    assert_corrections_explained(&daemon);
}

#[test]
fn four_clients_two_thousand_each_exact_totals_and_no_loss() {
    const PER_CLIENT: usize = 2000;
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd(&format!("serve-churn 0 {}", 4 * PER_CLIENT));
    let mut clients: Vec<Workload> = (0..4).map(|_| Workload::spawn()).collect();
    let threads: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            std::thread::spawn(move || {
                c.cmd(&format!("churn 127.0.0.1:{port} {PER_CLIENT}"));
                c
            })
        })
        .collect();
    let clients: Vec<Workload> =
        threads.into_iter().map(|t| t.join().expect("client thread")).collect();
    server.cmd("wait-bg");
    daemon.eventually("exact totals for all five processes", |d| {
        for c in &clients {
            let p = d.process(c.pid);
            expect_eq("client opened_total", num(&p, "opened_total"), PER_CLIENT as u64)?;
            expect_eq("client closed_total", num(&p, "closed_total"), PER_CLIENT as u64)?;
            expect_eq("client open", num(&p, "open"), 0)?;
        }
        let s = d.process(server.pid);
        expect_eq("server opened_total", num(&s, "opened_total"), 4 * PER_CLIENT as u64)?;
        expect_eq("server closed_total", num(&s, "closed_total"), 4 * PER_CLIENT as u64)?;
        expect_eq("server open", num(&s, "open"), 0)
    });
    let status = daemon.json(&["status"]);
    assert_eq!(num(&status, "events_lost"), 0);
    // 7 records per connection went through the ring; none was lost, so the most ever waiting
    // is at least one record and less than the ring.
    let record = ring_record_bytes(ConnEvent::SIZE);
    let high_water = num(&status, "ring_high_water_bytes");
    assert!(high_water >= record && high_water < num(&status, "ring_bytes"), "{status}");
    assert_corrections_explained(&daemon);
    common::assert_inferred_handshakes_explained(&daemon);
    drop(clients);
    drop(server);
    let (emitted, received, lost) = final_summary(&daemon.stop());
    assert_eq!(lost, 0);
    assert_eq!(emitted, received + lost);
}

#[test]
fn a_tiny_ring_buffer_reports_its_losses() {
    let daemon = Daemon::start(&["--ring-bytes", "4096"]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-churn 0 3000");
    let mut client = Workload::spawn();
    client.cmd(&format!("churn 127.0.0.1:{port} 3000"));
    server.cmd("wait-bg");
    let status = daemon.json(&["status"]);
    let lost = num(&status, "events_lost");
    assert!(lost > 0, "a 4 KiB ring must overflow under 3,000 connections: {status}");
    assert_eq!(num(&status["events_lost_by_reason"], "ringbuf_full"), lost);
    // A reservation failed: the ring was full.
    assert_eq!(num(&status, "ring_bytes"), 4096);
    assert_eq!(num(&status, "ring_high_water_bytes"), 4096, "{status}");
    drop(client);
    drop(server);
    let (emitted, received, lost) = final_summary(&daemon.stop());
    assert!(lost > 0);
    assert_eq!(emitted, received + lost, "losses are counted, never hidden");
}

/// The exact-count checks see real kernel-side errors: with a probe that drops every third
/// release (a test-only switch), the counts are wrong by exactly the dropped releases.
/// (Reconcile is off here: it would repair the drift, which tests/ground_truth.rs covers.)
#[test]
fn a_probe_that_drops_releases_is_caught_by_the_counts() {
    let daemon =
        Daemon::start(&["--fault-drop-every-nth-release", "3", "--reconcile-interval", "0"]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 9);
    server.cmd("accept 0 9");
    client.cmd("close 9");
    server.cmd("close 9");
    let counts = || {
        let (c, s) = (daemon.process(client.pid), daemon.process(server.pid));
        (num(&c, "open") + num(&s, "open"), num(&c, "closed_total") + num(&s, "closed_total"))
    };
    daemon.eventually("every connection is either open or closed", |_| {
        let (still_open, closed) = counts();
        expect_eq("open + closed", still_open + closed, 18)
    });
    let (still_open, _) = counts();
    // Which releases the kernel drops depends on the CPU each runs on (the switch counts per
    // CPU, other processes' releases included); that some are missing is certain.
    assert!(
        still_open >= 1,
        "every connection was closed, yet the counts must show the dropped releases"
    );
}
