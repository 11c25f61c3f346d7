//! Counts equal ground truth: connections older than the daemon, holders other than the
//! opener, network namespaces, and recovery from lost events. Run as root.
mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use common::{Daemon, Workload, expect_eq, num};

/// A process's open count; a process that holds nothing yet may not be listed at all.
fn open_of(daemon: &Daemon, pid: u32) -> u64 {
    daemon.process(pid)["open"].as_u64().unwrap_or(0)
}

/// A Python peer from tests/peers, with its stdout lines.
struct Peer {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Peer {
    fn spawn(script: &str, args: &[String]) -> Self {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(script);
        let mut child = Command::new("python3")
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, lines }
    }

    /// The next line starting with `tag`, its remainder.
    fn expect(&mut self, tag: &str) -> String {
        let line = self.lines.next().expect("peer line").expect("read");
        line.strip_prefix(tag)
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|| panic!("expected {tag}, got {line:?}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn connections_older_than_the_daemon_are_counted_at_once_and_their_releases_match() {
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 30);
    server.cmd("accept 0 30");
    let daemon = Daemon::start(&[]);
    // At once: the first query after start-up.
    let c = daemon.process(client.pid);
    assert_eq!(num(&c, "open"), 30, "{c}");
    assert_eq!(num(&daemon.process(server.pid), "open"), 30);
    let conns = daemon.json(&["conns", "--pid", &client.pid.to_string()]);
    assert!(
        conns["connections"].as_array().expect("list").iter().all(|c| c["preexisting"] == true)
    );
    client.cmd("close 10");
    daemon.eventually("20 left, 10 releases matched", |d| {
        let c = d.process(client.pid);
        expect_eq("open", num(&c, "open"), 20)?;
        expect_eq("closed_total", num(&c, "closed_total"), 10)?;
        expect_eq("server close_wait", num(&d.process(server.pid)["states"], "close_wait"), 10)
    });
    let status = daemon.json(&["status"]);
    assert_eq!(num(&status, "unmatched_releases"), 0, "{status}");
    // Two reconciles over the final state (a correction needs two scans to agree).
    daemon.wait_for_more("reconciles", 2);
    common::assert_corrections_explained(&daemon);
}

#[test]
fn a_prefork_server_counts_each_connection_for_its_child() {
    let daemon = Daemon::start(&[]);
    let mut prefork = Peer::spawn("prefork.py", &["5".into()]);
    let port = prefork.expect("port");
    let parent = prefork.child.id();
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 5);
    let children: Vec<u32> =
        (0..5).map(|_| prefork.expect("child").parse().expect("pid")).collect();
    // Within one reconcile period (1 s in tests), plus the scan itself.
    daemon.eventually("each child holds one, the parent none", |d| {
        for child in &children {
            expect_eq(&format!("child {child} open"), open_of(d, *child), 1)?;
        }
        expect_eq("parent open", open_of(d, parent), 0)
    });
    assert_eq!(num(&daemon.json(&["status"]), "holder_changes"), 5);
    common::assert_corrections_explained(&daemon);
}

#[test]
fn a_descriptor_passed_over_a_unix_socket_counts_for_its_receiver() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("accept-bg 0 4");
    let mut peer = Peer::spawn("pass_fd.py", &["4".into(), port.to_string()]);
    let opener: u32 = peer.expect("opener").parse().expect("pid");
    let receiver: u32 = peer.expect("receiver").parse().expect("pid");
    peer.expect("passed");
    daemon.eventually("the receiver holds all four", |d| {
        expect_eq("receiver open", open_of(d, receiver), 4)?;
        expect_eq("opener open", open_of(d, opener), 0)
    });
    common::assert_corrections_explained(&daemon);
}

/// Two namespaces with identical addresses: 127.0.0.1 and the same port in each.
#[test]
fn two_network_namespaces_with_identical_addresses_never_mix() {
    let names =
        [format!("tracer-a-{}", std::process::id()), format!("tracer-b-{}", std::process::id())];
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }
    let _guards: Vec<Netns> = names
        .iter()
        .map(|n| {
            assert!(Command::new("ip").args(["netns", "add", n]).status().expect("ip").success());
            assert!(
                Command::new("ip")
                    .args(["-n", n, "link", "set", "lo", "up"])
                    .status()
                    .expect("ip")
                    .success()
            );
            Netns(n.clone())
        })
        .collect();
    let daemon = Daemon::start(&[]);
    let mut pairs = Vec::new();
    for (ns, count) in names.iter().zip([3usize, 5]) {
        let mut server = Workload::spawn_in(ns);
        server.cmd("listen 127.0.0.1 128 18080");
        let mut client = Workload::spawn_in(ns);
        client.connect("127.0.0.1:18080", count);
        server.cmd(&format!("accept 0 {count}"));
        pairs.push((server, client, count as u64));
    }
    daemon.eventually("exact counts per namespace", |d| {
        for (server, client, count) in &pairs {
            expect_eq("server open", num(&d.process(server.pid), "open"), *count)?;
            expect_eq("client open", num(&d.process(client.pid), "open"), *count)?;
        }
        Ok(())
    });
    let netns_of = |pid: u32| -> std::collections::BTreeSet<u64> {
        daemon.json(&["conns", "--pid", &pid.to_string()])["connections"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| num(c, "netns"))
            .collect()
    };
    let (a, b) = (netns_of(pairs[0].0.pid), netns_of(pairs[1].0.pid));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_ne!(a, b, "the two servers' connections are in different namespaces");
    // Two reconciles over the final state (a correction needs two scans to agree).
    daemon.wait_for_more("reconciles", 2);
    common::assert_corrections_explained(&daemon);
}

#[test]
fn after_lost_events_counts_return_to_ground_truth_within_two_reconciles() {
    let daemon = Daemon::start(&["--ring-bytes", "4096"]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-churn 0 3000");
    let mut churner = Workload::spawn();
    let mut holder = Workload::spawn();
    // Churn to overflow the tiny ring while the holder opens 40 and keeps them.
    let addr = format!("127.0.0.1:{port}");
    let churn = std::thread::spawn(move || {
        churner.cmd(&format!("churn {addr} 3000"));
        churner
    });
    let mut held_server = Workload::spawn();
    let held_port = held_server.listen("127.0.0.1");
    for _ in 0..8 {
        holder.connect(&format!("127.0.0.1:{held_port}"), 5);
    }
    held_server.cmd("accept 0 40");
    let _churner = churn.join().expect("churn");
    server.cmd("wait-bg");
    let status = daemon.json(&["status"]);
    assert!(num(&status, "events_lost") > 0, "the test needs losses: {status}");
    // Two reconcile periods (1 s each) plus scan time.
    daemon.eventually("back to ground truth", |d| {
        // With their events lost, a process may only be listed once reconcile finds it.
        for (what, pid) in [("holder", holder.pid), ("held server", held_server.pid)] {
            let p = d.process(pid);
            if p.is_null() {
                return Err(format!("{what} (pid {pid}) not listed yet"));
            }
            expect_eq(&format!("{what} open"), num(&p, "open"), 40)?;
        }
        Ok(())
    });
}
