//! Exhaustion end to end (docs/leak-detection.md): TIME_WAIT blamed on the process that closed
//! first, port pressure in a namespace with a narrowed port range, descriptors against a low
//! `ulimit -n`. Real workloads, the real daemon, ground truth from `ss` and /proc.
mod common;

use std::{collections::HashSet, process::Command};

use common::{Daemon, Workload, num};
use serde_json::Value;

fn alerts_of(daemon: &Daemon, pid: u32, rule: &str) -> Vec<Value> {
    daemon.json(&["leaks"])["active"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["pid"] == pid && x["rule"] == rule).cloned().collect())
        .unwrap_or_default()
}

/// The value of `name`'s series for `pid` in a /metrics scrape (None: no such series).
fn metric_of_pid(metrics: &str, name: &str, pid: u32) -> Option<f64> {
    let (prefix, label) = (format!("{name}{{"), format!("pid=\"{pid}\""));
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sockets `ss` shows in the namespace `netns` whose local port is in `ports`, listeners left
/// out: the ephemeral ports in use there, whatever the state.
fn ss_local_ports_in(netns: &str, ports: std::ops::RangeInclusive<u16>) -> u64 {
    let out = Command::new("ss").args(["-N", netns, "-Htan"]).output().expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("LISTEN"))
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next()?.parse::<u16>().ok())
        .filter(|p| ports.contains(p))
        .count() as u64
}

/// `(local, peer)` of every TIME_WAIT socket `ss` shows in the namespace `netns` (None: ours).
fn ss_time_wait(netns: Option<&str>) -> HashSet<(String, String)> {
    let mut cmd = Command::new("ss");
    if let Some(ns) = netns {
        cmd.args(["-N", ns]);
    }
    let out = cmd.args(["-Htan", "state", "time-wait"]).output().expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[f.len() - 2].to_owned(), f[f.len() - 1].to_owned()))
        })
        .collect()
}

/// `got` equals `want`, or falls short of it by no more than the `skipped` probe runs the
/// kernel counted (each may have carried one close the daemon then never saw).
fn expect_short_by_skipped(what: &str, got: u64, want: u64, skipped: u64) -> Result<(), String> {
    if got > want || got + skipped < want {
        return Err(format!("{what}: got {got}, want {want} ({skipped} probe runs skipped)"));
    }
    Ok(())
}

/// The ephemeral port range of the port-pressure test's namespace.
const NARROW_RANGE: std::ops::RangeInclusive<u16> = 40000..=40099;

/// Client-first closes toward the namespace's 127.0.0.1:18080 until `want` TIME_WAIT sockets
/// hold ports of `NARROW_RANGE`. One close per port is not always one TIME_WAIT socket: CI saw
/// 78 of 85 on a TCG guest, with the daemon agreeing with ss on 78. The test is about the
/// daemon's account of what ss shows, so it tops the count up instead of assuming it.
fn hold_ports_in_time_wait(client: &mut Workload, netns: &str, want: u64) {
    let time_wait_in_range = || {
        ss_time_wait(Some(netns))
            .iter()
            .filter_map(|(local, _)| local.rsplit(':').next()?.parse::<u16>().ok())
            .filter(|p| NARROW_RANGE.contains(p))
            .count() as u64
    };
    let mut history = Vec::new();
    for _ in 0..5 {
        client.cmd(&format!("churn 127.0.0.1:18080 {}", want - history.last().unwrap_or(&0)));
        // The client's sockets wait in FIN_WAIT2 until the serial server closes its ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let held = loop {
            let held = time_wait_in_range();
            if held == ss_local_ports_in(netns, NARROW_RANGE)
                || std::time::Instant::now() > deadline
            {
                break held;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        if held >= want {
            return;
        }
        eprintln!("{held} of {want} ports in TIME_WAIT after churn: topping up");
        history.push(held);
    }
    panic!("TIME_WAIT sockets in {NARROW_RANGE:?} after each round of churn: {history:?}");
}

/// Every TCP socket `ss` shows with `port` at either end, whatever its state (diagnostics).
fn ss_lines_with_port(port: u16) -> String {
    let out = Command::new("ss").args(["-Htan"]).output().expect("ss");
    let needle = format!(":{port} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| format!("{l} ").contains(&needle))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client that closes first gets the TIME_WAIT sockets; a server that closes first gets them
/// instead. Each count equals what `ss` shows for the process's tuples, sampled around it.
#[test]
fn time_wait_is_blamed_on_the_side_that_closed_first() {
    // An override for another command name changes nothing here; status lists it.
    let daemon = Daemon::start(&[
        "--leak-interval",
        "0.5",
        "--workload",
        "postgres:fd_exhaustion=off,fd-headroom=20",
    ]);
    assert_eq!(
        daemon.json(&["status"])["workload_overrides"],
        serde_json::json!(["postgres:fd_exhaustion=off,fd-headroom=20"])
    );
    let text = daemon.try_cli(&["status"]).expect("status");
    assert!(text.contains("  postgres:fd_exhaustion=off,fd-headroom=20"), "{text}");
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    let server_addr = format!("127.0.0.1:{port}");

    // The client closes first: TIME_WAIT on its side.
    let first = client.connect(&server_addr, 5);
    server.cmd("accept 0 5");
    client.cmd("close 5");
    server.cmd("close 5");
    // The server closes first: TIME_WAIT on the server's side.
    let second = client.connect(&server_addr, 4);
    server.cmd("accept 0 4");
    server.cmd("close 4");
    client.cmd("close 4");

    let client_tuples: HashSet<(String, String)> =
        first.iter().map(|p| (format!("127.0.0.1:{p}"), server_addr.clone())).collect();
    let server_tuples: HashSet<(String, String)> =
        second.iter().map(|p| (server_addr.clone(), format!("127.0.0.1:{p}"))).collect();
    daemon.eventually("TIME_WAIT blamed on both closers", |d| {
        // Only our tuples: other programs on the host churn loopback connections too.
        let ours = |all: HashSet<(String, String)>| -> HashSet<(String, String)> {
            all.into_iter()
                .filter(|(l, r)| {
                    let back = (r.clone(), l.clone());
                    [&client_tuples, &server_tuples]
                        .iter()
                        .any(|t| t.contains(&(l.clone(), r.clone())) || t.contains(&back))
                })
                .collect()
        };
        let before = ours(ss_time_wait(None));
        let (c, s) = (d.process(client.pid), d.process(server.pid));
        let after = ours(ss_time_wait(None));
        // Sampled together: `ss` agreed with itself around the daemon's answer.
        if before != after {
            return Err("our TIME_WAIT sockets changed while sampling".into());
        }
        let want_client = before.intersection(&client_tuples).count() as u64;
        let want_server = before.intersection(&server_tuples).count() as u64;
        // Nothing of the other side's tuples is in TIME_WAIT: the passive side has none.
        let stray = before.iter().filter(|(l, r)| client_tuples.contains(&(r.clone(), l.clone())));
        if stray.count() > 0 {
            return Err("the server side of the client's closes is in TIME_WAIT".into());
        }
        // The kernel decides which sockets reach TIME_WAIT: on a loaded host it may drop the odd
        // one (CI once saw 3 of the server's 4, and the daemon agreed). Each side must have
        // some, and the daemon must match what `ss` shows, not a figure assumed here.
        if want_client == 0 || want_server == 0 {
            return Err(format!(
                "ss: {want_client} client, {want_server} server TIME_WAIT; our sockets in any \
                 state:\n{}",
                ss_lines_with_port(port)
            ));
        }
        // Exact unless the kernel skipped probe runs, each of which may have carried a close.
        let skipped = num(&d.json(&["status"]), "program_misses_total");
        let client_caused = num(&c, "time_wait_caused");
        expect_short_by_skipped("client time_wait_caused", client_caused, want_client, skipped)?;
        let server_caused = num(&s, "time_wait_caused");
        expect_short_by_skipped("server time_wait_caused", server_caused, want_server, skipped)?;
        // Totals count each socket once when a scan first saw it in TIME_WAIT: at least those
        // alive now, at most one per close.
        let (client_total, server_total) =
            (num(&c, "time_wait_caused_total"), num(&s, "time_wait_caused_total"));
        if !(want_client..=5).contains(&client_total) || !(want_server..=4).contains(&server_total)
        {
            return Err(format!(
                "totals {client_total} client, {server_total} server; ss now {want_client}, \
                 {want_server}"
            ));
        }
        // Released: none of them counts as open.
        common::expect_eq("client open", num(&c, "open"), 0)
    });
    let metrics = daemon.scrape_metrics();
    // Per process, the same figures as `top` (nothing changes any more: every socket is in
    // TIME_WAIT for a minute).
    for (who, pid) in [("client", client.pid), ("server", server.pid)] {
        let got = metric_of_pid(&metrics, "tcp_tracer_time_wait_caused", pid);
        let want = num(&daemon.process(pid), "time_wait_caused") as f64;
        assert_eq!(got, Some(want), "{who}'s tcp_tracer_time_wait_caused");
    }
    let total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tcp_tracer_time_wait_caused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("tcp_tracer_time_wait_caused_total");
    // Host-wide: at least what our two processes caused (other programs may add theirs).
    let ours = num(&daemon.process(client.pid), "time_wait_caused_total")
        + num(&daemon.process(server.pid), "time_wait_caused_total");
    assert!(total >= ours as f64, "metric total {total} < {ours}, our processes' sum");
}

struct Netns(String);

impl Netns {
    /// A test network namespace with loopback up and `sysctls` (`KEY=VALUE`) set in it.
    fn new(tag: &str, sysctls: &[&str]) -> Self {
        let ns = Netns(format!("tracer-{tag}-{}", std::process::id()));
        run(&["ip", "netns", "add", &ns.0]);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        for setting in sysctls {
            run(&["ip", "netns", "exec", &ns.0, "sysctl", "-qw", setting]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().expect(args[0]);
    assert!(status.success(), "{args:?}: {status}");
}

/// `net.ipv4.tcp_max_tw_buckets` of 20 in a namespace whose client closes 60 connections first:
/// the daemon remembers no more of those closes than the bound (the kernel keeps no more
/// TIME_WAIT sockets), counts the other 40 in status, and still blames on the client exactly the
/// TIME_WAIT sockets `ss` shows there.
#[test]
fn time_wait_memory_is_bounded_by_tcp_max_tw_buckets() {
    const BOUND: u64 = 20;
    const CLOSES: u64 = 60;
    let ns = Netns::new("tw", &[&format!("net.ipv4.tcp_max_tw_buckets={BOUND}")]);
    let daemon = Daemon::start(&["--leak-interval", "0.5"]);
    let mut server = Workload::spawn_in(&ns.0);
    server.cmd("listen 127.0.0.1 128 18080");
    server.cmd(&format!("serve-churn 0 {CLOSES}"));
    let mut client = Workload::spawn_in(&ns.0);
    // A scan that started after the server listened in the namespace has read its bound.
    daemon.wait_for_more("health_scans", 2);
    let overflowed_before = num(&daemon.json(&["status"]), "time_wait_closes_overflowed");
    client.cmd(&format!("churn 127.0.0.1:18080 {CLOSES}"));
    // The client's side of each connection: the server never closes first.
    let client_tw = || {
        ss_time_wait(Some(&ns.0)).into_iter().filter(|(l, _)| !l.ends_with(":18080")).count() as u64
    };
    // A close whose events the kernel skipped (a nested run of a probe, counted in
    // `program_misses_total`) is neither remembered nor counted over the bound: the figures
    // below may fall short by at most the runs skipped, and must be exact when none were.
    let skipped_before = num(&daemon.json(&["status"]), "program_misses_total");
    let mut overflowed_seen = 0;
    daemon.eventually("the closes over the bound counted, TIME_WAIT blamed as ss shows", |d| {
        let status = d.json(&["status"]);
        let skipped = num(&status, "program_misses_total") - skipped_before;
        // Each close is either remembered or counted as over the bound: 40 over means the
        // namespace's remembered closes are exactly its 20 (the daemon-wide figure adds the
        // host's own closes).
        let overflowed = num(&status, "time_wait_closes_overflowed") - overflowed_before;
        expect_short_by_skipped(
            "closes over tcp_max_tw_buckets",
            overflowed,
            CLOSES - BOUND,
            skipped,
        )?;
        overflowed_seen = overflowed;
        let remembered = num(&status, "time_wait_closes_remembered");
        if remembered + skipped < BOUND {
            return Err(format!(
                "{remembered} closes remembered, fewer than the namespace's ({skipped} runs \
                 skipped)"
            ));
        }
        let before = client_tw();
        let caused = num(&d.process(client.pid), "time_wait_caused");
        let after = client_tw();
        if before != after {
            return Err(format!("ss changed while sampling: {before} then {after}"));
        }
        // The kernel caps the namespace's TIME_WAIT sockets at the bound too.
        assert!(before <= BOUND, "ss shows {before} TIME_WAIT sockets, above the bound");
        if before == 0 {
            return Err("ss shows no TIME_WAIT socket yet".into());
        }
        expect_short_by_skipped("client time_wait_caused (ss)", caused, before, skipped)
    });
    let text = daemon.try_cli(&["status"]).expect("status");
    let line = format!("{} over tcp_max_tw_buckets", overflowed_before + overflowed_seen);
    assert!(
        text.lines().any(|l| l.starts_with("TIME_WAIT closes:") && l.ends_with(&line)),
        "{text}"
    );
}

/// 100 ephemeral ports and no TIME_WAIT reuse: a client churning short connections that it
/// closes first raises `port_exhaustion` before its connects fail with EADDRNOTAVAIL.
#[test]
fn port_exhaustion_raises_before_connects_fail() {
    let ns = Netns::new(
        "ports",
        &["net.ipv4.ip_local_port_range=40000 40099", "net.ipv4.tcp_tw_reuse=0"],
    );
    let daemon = Daemon::start(&["--leak-interval", "0.5"]);
    let mut server = Workload::spawn_in(&ns.0);
    server.cmd("listen 127.0.0.1 128 18080");
    server.cmd("serve-churn 0 1000");
    let mut client = Workload::spawn_in(&ns.0);
    // 85 of 100 ports held in TIME_WAIT by the client: above the default 80%.
    hold_ports_in_time_wait(&mut client, &ns.0, 85);
    daemon.eventually("port_exhaustion against the client", |d| {
        let alerts = alerts_of(d, client.pid, "port_exhaustion");
        let Some(alert) = alerts.first() else {
            // What the daemon saw of the destination, against ss: says which input was missing
            // (the namespace's port range, the sockets, the closes that name the client).
            let remotes = d.json(&["top", "--by", "remote"]);
            let row = remotes["remotes"]
                .as_array()
                .and_then(|r| r.iter().find(|x| x["remote"] == "127.0.0.1:18080").cloned());
            let tw = ss_time_wait(Some(&ns.0)).len();
            let status = d.json(&["status"]);
            let client_row = d.process(client.pid);
            return Err(format!(
                "no alert yet: destination row {}, ss TIME_WAIT {tw}, closes remembered {} \
                 (overflowed {}), health scans {}, client's time_wait_caused {}, alerts {}",
                row.map_or("missing".to_owned(), |r| r.to_string()),
                status["time_wait_closes_remembered"],
                status["time_wait_closes_overflowed"],
                status["health_scans"],
                client_row["time_wait_caused"],
                client_row["alerts"]
            ));
        };
        let p = &alert["evidence"]["port_pressure"];
        common::expect_eq("ports_available", num(p, "ports_available"), 100)?;
        let tw = ss_time_wait(Some(&ns.0)).len() as u64;
        common::expect_eq("ports_used (ss TIME_WAIT)", num(p, "ports_used"), tw)?;
        common::expect_eq("held by the client", num(p, "held"), tw)
    });
    assert!(alerts_of(&daemon, server.pid, "port_exhaustion").is_empty(), "not the server");
    let remotes = daemon.json(&["top", "--by", "remote"]);
    let row = remotes["remotes"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["remote"] == "127.0.0.1:18080").cloned())
        .expect("a remote row for the destination");
    assert_eq!(row["ports_available"], 100, "{row}");
    assert!(row["pids"].as_array().is_some_and(|p| p.contains(&client.pid.into())), "{row}");
    // ports_used against every socket ss shows on a port of the range, sampled around the
    // query; the metric carries the same figure as a ratio.
    daemon.eventually("top --by remote's ports_used equals ss", |d| {
        let before = ss_local_ports_in(&ns.0, NARROW_RANGE);
        let remotes = d.json(&["top", "--by", "remote"]);
        let after = ss_local_ports_in(&ns.0, NARROW_RANGE);
        if before != after {
            return Err(format!("ss changed while sampling: {before} then {after}"));
        }
        let row = remotes["remotes"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["remote"] == "127.0.0.1:18080").cloned())
            .ok_or("no remote row")?;
        common::expect_eq("ports_used (ss)", num(&row, "ports_used"), before)
    });
    let metrics = daemon.scrape_metrics();
    let remotes = daemon.json(&["top", "--by", "remote"]);
    let row = remotes["remotes"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["remote"] == "127.0.0.1:18080").cloned())
        .expect("a remote row for the destination");
    let ratio = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("tcp_tracer_remote_ports_used_ratio{remote=\"127.0.0.1:18080\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("tcp_tracer_remote_ports_used_ratio for the destination");
    let want = num(&row, "ports_used") as f64 / num(&row, "ports_available") as f64;
    assert!((ratio - want).abs() < 1e-9, "metric ratio {ratio}, top --by remote {row}");
    // Only now do the ports run out.
    let failed = client.try_cmd("churn 127.0.0.1:18080 30").expect_err("the port range runs out");
    assert!(failed.contains("os error 99"), "EADDRNOTAVAIL expected: {failed}");
}

/// A process under `ulimit -n 64` leaking a connection every 200 ms: `fd_exhaustion` raises
/// while its descriptors are still below the limit.
#[test]
fn fd_exhaustion_raises_before_the_limit() {
    let daemon = Daemon::start(&[
        "--leak-interval",
        "0.5",
        "--leak-window",
        "4",
        "--leak-sub-windows",
        "2",
        "--leak-growth-min",
        "2",
    ]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 hold");
    let mut leaker = Workload::spawn_with_nofile(64);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", leaker.pid)).expect("limits");
    assert!(limits.lines().any(|l| l.starts_with("Max open files") && l.contains(" 64 ")));
    leaker.cmd(&format!("trickle-bg 127.0.0.1:{port} 200"));
    daemon.eventually("fd_exhaustion against the leaker", |d| {
        let alerts = alerts_of(d, leaker.pid, "fd_exhaustion");
        let Some(alert) = alerts.first() else { return Err("no alert yet".into()) };
        let fds = &alert["evidence"]["fds"];
        common::expect_eq("fd limit", num(fds, "limit"), 64)?;
        let used = num(fds, "used");
        assert!(used < 64, "raised only at the limit: {alert}");
        Ok(())
    });
    // While it grows: a projection to the limit, and fd_used against /proc/PID/fd counted
    // around the query. fd_used is from the last scan (one every 0.5 s): it may trail the
    // count by the 5 descriptors a second the leaker adds.
    let fd_dir = format!("/proc/{}/fd", leaker.pid);
    let count = || std::fs::read_dir(&fd_dir).expect("fd dir").count() as u64;
    daemon.eventually("fd_used against /proc while growing", |d| {
        let before = count();
        let row = d.process(leaker.pid);
        let after = count();
        if row["fd_exhaustion_seconds"].as_f64().is_none() {
            return Err(format!("no projection for the growing process: {row}"));
        }
        let used = num(&row, "fd_used");
        if used > after || used + 5 < before {
            return Err(format!("fd_used {used}, /proc {before} then {after}"));
        }
        Ok(())
    });
    // Ground truth now: the leaker's descriptors as /proc lists them, against `top`'s reading.
    let row = daemon.process(leaker.pid);
    assert_eq!(row["fd_limit"], 64, "{row}");
    assert!(num(&row, "fd_used") <= 64, "{row}");
}
