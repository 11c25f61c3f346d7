//! Memory bounds end to end (docs/security.md, "Memory bounds"): the real daemon with
//! `--max-connections 50`, 80 real loopback connections (160 sockets, both ends traced), the
//! real CLI and /metrics. Run as root.
//!
//! The table's limit is host-wide and other processes of the host open and close connections
//! while the test runs, so the host-wide counters are checked as bounds; the workload's own
//! processes are checked exactly: each of its sockets is either counted open for its process
//! or counted refused for it, never lost and never drift.
mod common;

use common::{Daemon, Workload, expect_eq, final_summary, num};

fn limits(daemon: &Daemon) -> serde_json::Value {
    daemon.json(&["status"])["limits"].clone()
}

/// The value of the one series of `metrics` that starts with `series` (`name{labels}`).
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

#[test]
fn eighty_connections_against_a_table_of_fifty() {
    let daemon = Daemon::start(&["--max-connections", "50"]);
    let l = limits(&daemon);
    assert_eq!(num(&l, "max_connections"), 50, "{l}");
    assert_eq!(num(&l, "max_processes"), 100_000, "{l}");
    // Releases of sockets older than the daemon that closed before its start-up scan are
    // unmatched on a busy host (a start-up race, not this test's): the workload adds none.
    let at_start = daemon.json(&["status"]);

    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 80).len(), 80);
    server.cmd("accept 0 80");

    // Each of the 80 sockets on each side: open for its process, or refused for it.
    daemon.eventually("client and server: open + refused_connections = 80 each", |d| {
        for (name, pid) in [("client", client.pid), ("server", server.pid)] {
            let p = d.process(pid);
            let (open, refused) = (num(&p, "open"), num(&p, "refused_connections"));
            expect_eq(&format!("{name} open + refused_connections"), open + refused, 80)?;
        }
        Ok(())
    });
    let c = daemon.process(client.pid);
    let s = daemon.process(server.pid);
    let tracked = num(&c, "open") + num(&s, "open");
    let refused = num(&c, "refused_connections") + num(&s, "refused_connections");
    eprintln!("workload: {tracked} sockets tracked, {refused} refused");
    assert!(tracked <= 50, "more tracked than the limit: client {c}\nserver {s}");
    assert_eq!(tracked + refused, 160);
    // Counts of a process that lost connections say they are lower bounds.
    for p in [&c, &s] {
        assert_eq!(p["over_limit"], num(p, "refused_connections") > 0, "{p}");
        // Opened and open agree: a refused connection was never counted opened.
        assert_eq!(num(p, "opened_total"), num(p, "open"), "{p}");
    }
    let top = daemon.json(&["top"]);
    assert_eq!(top["over_limit"], true);

    // status: the counters (host-wide: at least the workload's refusals) and a clear line.
    let status = daemon.json(&["status"]);
    let l = &status["limits"];
    assert!(num(&status, "tracked_connections") <= 50, "{status}");
    assert!(num(l, "connections_over_limit") >= refused, "{l}");
    assert!(num(l, "refused_open") > 0, "the workload's refused connections are open: {l}");
    assert_eq!(l["over_limit"], true);
    let text = daemon.try_cli(&["status"]).expect("tracer status");
    assert!(text.contains("TABLE LIMIT REACHED"), "{text}");
    assert!(
        text.contains("connections refused: the table held --max-connections 50 (raise it"),
        "{text}"
    );

    // The 1 s reconcile sees the refused connections in the kernel and corrects nothing.
    daemon.wait_for_more("reconciles", 2);
    let status = daemon.json(&["status"]);
    assert_eq!(num(&status, "reconcile_corrections"), 0, "{status}");
    eprintln!("untracked at the last reconcile: {}", status["limits"]["untracked_at_reconcile"]);

    // Everything closes: the tracked ones are closed for their processes, the refused ones'
    // releases are the limit's, not unmatched releases or unknown sockets.
    client.cmd("close 80");
    server.cmd("close 80");
    daemon.eventually("client and server hold nothing", |d| {
        expect_eq("client open", num(&d.process(client.pid), "open"), 0)?;
        expect_eq("server open", num(&d.process(server.pid), "open"), 0)
    });
    let c = daemon.process(client.pid);
    assert_eq!(num(&c, "closed_total"), num(&c, "opened_total"), "{c}");
    let status = daemon.json(&["status"]);
    for counter in ["unmatched_releases", "unknown_socket_events"] {
        assert_eq!(num(&status, counter), num(&at_start, counter), "{counter}: {status}");
    }
    assert!(num(&status["limits"], "over_limit_events") >= refused, "{status}");
    assert_eq!(num(&status, "reconcile_corrections"), 0, "{status}");

    // /metrics says the same as status, between two reads of it.
    let first = num(&limits(&daemon), "connections_over_limit");
    let metrics = daemon.scrape_metrics();
    let last = num(&limits(&daemon), "connections_over_limit");
    let scraped = metric(&metrics, "tcp_tracer_table_overflow_total{limit=\"connections\"}");
    assert!((first as f64..=last as f64).contains(&scraped), "{first} <= {scraped} <= {last}");
    assert_eq!(metric(&metrics, "tcp_tracer_table_limit{limit=\"connections\"}"), 50.0);
    assert_eq!(metric(&metrics, "tcp_tracer_table_overflow_total{limit=\"processes\"}"), 0.0);

    drop(client);
    drop(server);
    let log = daemon.stop();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("connection table full"), "the first refusal is logged: {log}");
    let (emitted, received, lost) = final_summary(&log);
    assert_eq!(emitted, received + lost);
}
