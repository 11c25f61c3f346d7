//! Leak detection end to end: real leaking and healthy workloads, the real daemon with short
//! windows, alerts checked in `leaks --json`, `top --json`, the log and a webhook receiver.
mod common;

use std::time::Duration;

use common::{Daemon, FAST_LEAKS, Receiver, Workload, num};
use serde_json::Value;

fn alerts_of(daemon: &Daemon, list: &str, pid: u32) -> Vec<Value> {
    daemon.json(&["leaks"])[list]
        .as_array()
        .map(|a| a.iter().filter(|x| x["pid"] == pid).cloned().collect())
        .unwrap_or_default()
}

#[test]
fn a_steady_leak_raises_growth_everywhere_and_resolves_when_the_process_exits() {
    let receiver = Receiver::start();
    let mut args = FAST_LEAKS.to_vec();
    args.extend(["--alert-webhook", &receiver.url]);
    let daemon = Daemon::start(&args);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 echo");
    let mut leaker = Workload::spawn();
    // A new connection every 0.2 s, never closed.
    leaker.cmd(&format!("trickle-bg 127.0.0.1:{port} 200"));
    let started = std::time::Instant::now();
    daemon.eventually("growth raised", |d| {
        if alerts_of(d, "active", leaker.pid).iter().any(|a| a["rule"] == "growth") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    // Not before (about) a full window: the daemon's sampling clock started before the leak,
    // so allow one interval of phase (the floors below prove the rise itself).
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "raised after {:?}",
        started.elapsed()
    );
    let alert = alerts_of(&daemon, "active", leaker.pid)
        .into_iter()
        .find(|a| a["rule"] == "growth")
        .expect("alert");
    let evidence = &alert["evidence"];
    let floors: Vec<u64> = evidence["floors"]
        .as_array()
        .expect("floors")
        .iter()
        .map(|f| f.as_u64().expect("n"))
        .collect();
    assert_eq!(floors.len(), 4);
    assert!(floors.windows(2).all(|w| w[1] > w[0]), "floors rise strictly: {floors:?}");
    assert!(floors[3] - floors[0] >= 10, "raised only once the floor rose by G: {floors:?}");
    // The evidence counts what the workload did: opens only, no closes.
    assert_eq!(num(evidence, "closes_in_window"), 0);
    let opened = num(&daemon.process(leaker.pid), "opened_total");
    assert!(num(evidence, "opens_in_window") >= 10 && num(evidence, "opens_in_window") <= opened);
    assert_eq!(evidence["top_remotes"][0]["remote"], format!("127.0.0.1:{port}"));
    assert_eq!(alert["comm"], "workload");
    // top: alerting first, with the rule and the growth.
    // (The echo server holds the other end of every leaked connection, so it grows and alerts
    // too; its evidence names the leaker's address as the remote.)
    let top = daemon.json(&["top"]);
    let rows = top["processes"].as_array().expect("rows");
    let at = rows.iter().position(|r| r["pid"] == leaker.pid).expect("leaker listed");
    assert!(
        rows[..at].iter().all(|r| !r["alerts"].as_array().expect("alerts").is_empty()),
        "alerting processes come first"
    );
    assert_eq!(rows[at]["alerts"], serde_json::json!(["growth"]));
    assert!(rows[at]["growth"].as_i64().expect("growth") >= 10);
    assert!(
        rows.iter().skip_while(|r| !r["alerts"].as_array().expect("alerts").is_empty()).all(|r| r
            ["alerts"]
            .as_array()
            .expect("alerts")
            .is_empty())
    );
    // The log line.
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("event=leak_raised")
            && l.contains(&format!("pid={}", leaker.pid))
            && l.contains("rule=growth")),
        "log: {log}"
    );
    // The webhook.
    daemon.eventually("webhook raised", |_| {
        if receiver.events_for(leaker.pid).contains(&("raised".into(), "growth".into())) {
            Ok(())
        } else {
            Err("no POST yet".into())
        }
    });
    // The payload carries the opener stacks behind the rule: the connections of the window,
    // grouped, or counted by why they have none.
    let body = receiver.raised(leaker.pid, "growth").expect("raised body");
    let stacks = &body["alert"]["evidence"]["stacks"];
    let connections = num(stacks, "connections");
    assert!(connections >= 10, "{stacks:#}");
    let grouped: u64 =
        stacks["groups"].as_array().expect("groups").iter().map(|g| num(g, "count")).sum();
    assert!(grouped > 0, "{stacks:#}");
    assert_eq!(common::stacks_accounted(stacks), connections, "{stacks:#}");
    // The process exits: the alert resolves.
    let pid = leaker.pid;
    leaker.exit();
    daemon.eventually("resolved after exit", |d| {
        if alerts_of(d, "active", pid).is_empty() && !alerts_of(d, "resolved", pid).is_empty() {
            Ok(())
        } else {
            Err("still active".into())
        }
    });
    daemon.eventually("webhook resolved", |_| {
        if receiver.events_for(pid).contains(&("resolved".into(), "growth".into())) {
            Ok(())
        } else {
            Err("no POST yet".into())
        }
    });
    assert!(daemon.log_text().contains("event=leak_resolved"));
}

#[test]
fn a_leak_under_churn_raises_growth() {
    let daemon = Daemon::start(FAST_LEAKS);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 echo");
    let mut leaker = Workload::spawn();
    // Every 0.1 s: open two, close one.
    leaker.cmd(&format!("churn-leak-bg 127.0.0.1:{port} 100"));
    daemon.eventually("growth raised under churn", |d| {
        if alerts_of(d, "active", leaker.pid).iter().any(|a| a["rule"] == "growth") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let alert = alerts_of(&daemon, "active", leaker.pid).remove(0);
    assert!(num(&alert["evidence"], "closes_in_window") > 0, "churn closes while it leaks");
}

#[test]
fn healthy_pools_and_churn_never_raise_anything_over_several_windows() {
    let daemon = Daemon::start(FAST_LEAKS);
    let mut echo = Workload::spawn();
    let echo_port = echo.listen("127.0.0.1");
    echo.cmd("serve-bg 0 echo");
    let mut idle_closer = Workload::spawn();
    let idle_port = idle_closer.listen("127.0.0.1");
    idle_closer.cmd("serve-bg 0 idle-close:700:5");
    // A keep-alive pool that warms up to 20 and plateaus.
    let mut pool = Workload::spawn();
    pool.cmd(&format!("pool-bg 127.0.0.1:{echo_port} 20 100"));
    // A pool whose peer closes idle connections while the client reopens them.
    let mut reopening = Workload::spawn();
    reopening.cmd(&format!("pool-bg 127.0.0.1:{idle_port} 20 100"));
    // Churn rising and falling around a level.
    let mut churn = Workload::spawn();
    churn.cmd(&format!("oscillate-bg 127.0.0.1:{echo_port} 10 30 50"));
    // Three and a half windows of evaluations (8 samples each).
    daemon.wait_for_more("leak_evaluations", 28);
    let leaks = daemon.json(&["leaks"]);
    for w in [&echo, &idle_closer, &pool, &reopening, &churn] {
        for list in ["active", "resolved"] {
            let raised: Vec<_> = leaks[list]
                .as_array()
                .expect("list")
                .iter()
                .filter(|a| a["pid"] == w.pid)
                .collect();
            assert!(raised.is_empty(), "healthy pid {} raised: {raised:?}", w.pid);
        }
    }
    // The workloads really ran.
    assert_eq!(num(&daemon.process(pool.pid), "open"), 20);
    assert!(
        num(&daemon.process(reopening.pid), "opened_total") > 20,
        "the peer closed and the pool reopened"
    );
    assert!(num(&daemon.process(churn.pid), "closed_total") > 20);
}

#[test]
fn a_server_that_never_closes_raises_close_wait_not_its_clients() {
    let daemon = Daemon::start(FAST_LEAKS);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 hold");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 3);
    client.cmd("close 3");
    daemon.eventually("close_wait raised for the server", |d| {
        if alerts_of(d, "active", server.pid).iter().any(|a| a["rule"] == "close_wait") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let alert = alerts_of(&daemon, "active", server.pid)
        .into_iter()
        .find(|a| a["rule"] == "close_wait")
        .expect("alert");
    assert_eq!(num(&alert["evidence"], "stale_close_wait"), 3);
    assert!(alerts_of(&daemon, "active", client.pid).is_empty(), "the clients did nothing wrong");
}

#[test]
fn a_client_holding_reset_connections_raises_held_closed() {
    let daemon = Daemon::start(FAST_LEAKS);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 2);
    server.cmd("accept 0 2");
    server.cmd("reset 2");
    daemon.eventually("held_closed raised for the client", |d| {
        if alerts_of(d, "active", client.pid).iter().any(|a| a["rule"] == "held_closed") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let alert = alerts_of(&daemon, "active", client.pid)
        .into_iter()
        .find(|a| a["rule"] == "held_closed")
        .expect("alert");
    assert_eq!(num(&alert["evidence"], "stale_held_closed"), 2);
    // sock_diag no longer lists a reset socket: conns gives its health figures as null, with
    // the reason, never as zeros.
    let conns = daemon.json(&["conns", "--pid", &client.pid.to_string()]);
    let rows = conns["connections"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{conns}");
    for row in rows {
        assert_eq!(row["state"], "close");
        for field in [
            "idle_seconds",
            "bytes_received",
            "bytes_acked",
            "unread_bytes",
            "unsent_bytes",
            "rtt_us",
        ] {
            assert!(row[field].is_null(), "{field}: {row}");
        }
        assert!(row["health_unavailable"].as_str().is_some_and(|r| r.contains("state close")));
    }
}
