//! Opener stacks end to end: a Go program that leaks from one function and dials tidily from
//! another, traced by a real daemon; `tracer stacks` must name the leaking function for exactly
//! the leaked connections, in every capture policy, stripped binaries included; a leak alert
//! carries the leaking function in its evidence, also once the process has exited. Run as root.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, FAST_LEAKS, Leaker, TempDir, build_leaker, num};
use serde_json::Value;

fn outbound_groups(stacks: &Value) -> Vec<&Value> {
    stacks["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["direction"] == "outbound")
        .collect()
}

/// The groups' counts and the four other counts add up to `open`.
fn assert_adds_up(stacks: &Value) {
    assert_eq!(common::stacks_accounted(stacks), num(stacks, "open"), "{stacks:#}");
}

/// Runs the leaker against a daemon with `flags`: 20 leaked, 10 tidy connections; returns the
/// `tracer stacks --json` answer once every leaked connection is open.
fn leak_and_ask(flags: &[&str], stripped: bool) -> Value {
    let dir = TempDir::new("stacks");
    let binary = build_leaker(&dir.0, stripped);
    let daemon = Daemon::start(flags);
    let mut leaker = Leaker::spawn(&binary);
    leaker.cmd("leak 20");
    leaker.cmd("tidy 10");
    let pid = leaker.pid().to_string();
    // 20 leaked client ends and their 20 accepted server ends stay open, and both ends of the
    // 10 tidy ones are closed. (A total of 40 open is also reached while tidy server ends wait
    // to be closed and leaked ones to be accepted.)
    daemon.eventually("20 open and 10 closed each way", |d| {
        let row = d.process(leaker.pid());
        for direction in ["outbound", "inbound"] {
            common::expect_eq(direction, num(&row[direction], "open"), 20)?;
            common::expect_eq(direction, num(&row[direction], "closed_total"), 10)?;
        }
        Ok(())
    });
    let mut answer = Value::Null;
    daemon.eventually("every stack named", |d| {
        answer = d.json(&["stacks", &pid]);
        let unnamed = answer["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter(|g| g["leading_function"].is_null())
            .count();
        if unnamed == 0 { Ok(()) } else { Err(format!("{unnamed} groups unnamed: {answer:#}")) }
    });
    let text = daemon.try_cli(&["stacks", &pid]).expect("text view");
    assert!(text.contains("main.leakConnections"), "{text}");
    answer
}

#[test]
fn every_leaked_connection_is_named_by_the_leaking_function_with_stacks_all() {
    let stacks = leak_and_ask(&["--stacks", "all"], false);
    assert_adds_up(&stacks);
    let outbound = outbound_groups(&stacks);
    assert_eq!(outbound.len(), 1, "one code path leaks: {stacks:#}");
    assert_eq!(outbound[0]["leading_function"], "main.leakConnections");
    assert_eq!(num(outbound[0], "count"), 20, "exactly the leaked connections");
    let frames = outbound[0]["frames"].as_array().expect("frames");
    assert!(
        frames.iter().any(|f| f["function"] == "main.leakConnections"
            && f["file"].as_str().is_some_and(|file| file.ends_with("main.go"))),
        "file:line of the leaking call: {frames:#?}"
    );
    assert!(!stacks.to_string().contains("main.tidyConnections"), "the tidy function holds none");
    // The accepted ends are this process's too, grouped under its accept loop.
    let inbound: Vec<&Value> = stacks["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["direction"] == "inbound")
        .collect();
    assert_eq!(inbound.iter().map(|g| num(g, "count")).sum::<u64>(), 20, "{stacks:#}");
    assert!(inbound.iter().all(|g| g["leading_function"] == "main.serve"), "{inbound:#?}");
}

#[test]
fn a_stripped_go_binary_still_names_the_leaking_function() {
    let stacks = leak_and_ask(&["--stacks", "all"], true);
    let outbound = outbound_groups(&stacks);
    assert_eq!(outbound.len(), 1, "{stacks:#}");
    assert_eq!(outbound[0]["leading_function"], "main.leakConnections");
    assert_eq!(num(outbound[0], "count"), 20);
}

#[test]
fn the_default_sampled_policy_adds_up_and_names_the_leak() {
    // Every 8th connection of the process, counted from its first (a leaked one).
    let stacks = leak_and_ask(&[], false);
    assert_eq!(stacks["policy"], "sampled");
    assert_adds_up(&stacks);
    assert!(num(&stacks, "not_sampled") > 0, "most connections are not sampled: {stacks:#}");
    let outbound = outbound_groups(&stacks);
    assert!(!outbound.is_empty(), "the first connection is always sampled: {stacks:#}");
    assert!(outbound.iter().all(|g| g["leading_function"] == "main.leakConnections"));
    assert!(!stacks.to_string().contains("main.tidyConnections"));
}

#[test]
fn stacks_of_an_unknown_pid_and_bad_settings_say_so() {
    let daemon = Daemon::start(&[]);
    let err = daemon.try_cli(&["stacks", "999999999"]).expect_err("unknown pid");
    assert!(err.contains("no process 999999999"), "{err}");
    for depth in ["0", "500"] {
        let out = Command::new(common::tracer_bin())
            .args(["run", "--stack-depth", depth])
            .output()
            .expect("run tracer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("1..=127"), "--stack-depth {depth}: {err}");
    }
}

#[test]
fn stacks_of_a_pid_that_exited_past_the_grace_period_say_so() {
    let daemon = Daemon::start(&["--stacks", "all", "--exited-grace", "3"]);
    let mut workload = common::Workload::spawn();
    let pid = workload.pid;
    let port = workload.listen("127.0.0.1");
    workload.connect(&format!("127.0.0.1:{port}"), 2);
    daemon.eventually("its 2 connections open", |d| {
        common::expect_eq("open", num(&d.process(pid), "open"), 2)
    });
    assert!(daemon.try_cli(&["stacks", &pid.to_string()]).is_ok(), "stacks while it runs");
    workload.exit();
    // Listed for the grace period (holding no open connection), then dropped.
    let err = daemon.try_cli(&["stacks", &pid.to_string()]).expect_err("no open connection");
    assert!(
        err.contains("(workload) has no captured stacks: it holds no open connection"),
        "{err}"
    );
    daemon.eventually("the pid dropped past its grace period", |d| {
        if d.process(pid).is_null() { Ok(()) } else { Err("still listed".into()) }
    });
    let err = daemon.try_cli(&["stacks", &pid.to_string()]).expect_err("an error exit");
    assert!(
        err.contains(&format!("process {pid} (workload) exited"))
            && err.contains("longer ago than --exited-grace (3s)"),
        "{err}"
    );
    assert!(!err.contains("no process"), "not the unknown pid's message: {err}");
}

/// `tracer stacks PID` of a workload with 2 connections to its own listener (unaccepted: 2 open), traced by a
/// daemon with `flags`: the CLI's exit status and its stderr.
fn stacks_of_a_workload(flags: &[&str]) -> (bool, String) {
    let daemon = Daemon::start(flags);
    let mut workload = common::Workload::spawn();
    let pid = workload.pid;
    let port = workload.listen("127.0.0.1");
    workload.connect(&format!("127.0.0.1:{port}"), 2);
    daemon.eventually("its 2 connections open", |d| {
        common::expect_eq("open", num(&d.process(pid), "open"), 2)
    });
    let out = Command::new(common::tracer_bin())
        .args(["stacks", &pid.to_string(), "--socket"])
        .arg(&daemon.socket)
        .output()
        .expect("run tracer");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn stacks_of_a_process_without_captured_stacks_say_why_and_how_to_get_them() {
    // Not a suspect under --stacks suspects: none of its connections is captured.
    let (ok, err) = stacks_of_a_workload(&["--stacks", "suspects"]);
    assert!(!ok, "an error exit: {err}");
    assert!(err.contains("(workload) has no captured stacks"), "{err}");
    assert!(err.contains("of its 2 open connections, 2 not sampled"), "{err}");
    assert!(err.contains("--stacks suspects captures only"), "{err}");
    assert!(err.contains("--stacks all"), "how to get them: {err}");
    // Capture off.
    let (ok, err) = stacks_of_a_workload(&["--stacks", "off"]);
    assert!(!ok, "an error exit: {err}");
    assert!(err.contains("has no captured stacks: stack capture is off (--stacks off)"), "{err}");
    assert!(err.contains("--stacks sampled"), "how to get them: {err}");
}

#[test]
fn a_process_that_exits_before_its_first_stack_is_read_is_counted_unpinned() {
    // Nothing drains the stack ring on its own for a minute: no drain timer, no event-ring
    // wakeup (1 MiB), no leak check, reconcile or summary. A query drains first.
    let daemon = Daemon::start(&[
        "--stacks",
        "all",
        "--drain-interval-ms",
        "60000",
        "--leak-interval",
        "1h",
        "--reconcile-interval",
        "1h",
        "--summary-interval",
        "0",
    ]);
    let unpinned = |d: &Daemon| num(&d.json(&["status"])["stacks"], "exited_before_pinning");
    let before = unpinned(&daemon);
    // A process whose stack is read while it runs is pinned.
    let mut pinned = common::Workload::spawn();
    let port = pinned.listen("127.0.0.1");
    pinned.connect(&format!("127.0.0.1:{port}"), 1);
    let status = daemon.json(&["status"]);
    assert!(num(&status["stacks"], "pinned_processes") >= 1, "{status:#}");
    // One that connects and exits before the next drain cannot be pinned any more.
    let mut gone = common::Workload::spawn();
    let port = gone.listen("127.0.0.1");
    gone.connect(&format!("127.0.0.1:{port}"), 1);
    gone.exit();
    let after = unpinned(&daemon);
    assert!(after > before, "exited_before_pinning {before} -> {after}");
    let scrape = daemon.scrape_metrics();
    assert!(
        counter(&scrape, "tcp_tracer_stack_processes_exited_before_pinning_total") >= after as f64,
        "{scrape}"
    );
    drop(pinned);
}

#[test]
fn a_capture_the_kernel_refuses_leaves_the_daemon_running_with_stacks_off_and_says_why() {
    // The fault makes the capture code read through a plain number: the verifier refuses every
    // program that can reach it, and the daemon loads them again without it.
    let daemon = Daemon::start(&["--stacks", "all", "--fault-refuse-stacks"]);
    let status = daemon.json(&["status"]);
    let stacks = &status["stacks"];
    assert_eq!(stacks["policy"], "all", "{stacks:#}");
    assert_eq!(stacks["capture"], "off", "{stacks:#}");
    let reason = stacks["capture_off_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the kernel refused the stack capture in"), "{stacks:#}");
    let text = daemon.try_cli(&["status"]).expect("status");
    assert!(text.contains("capture off (the kernel refused the stack capture"), "{text}");
    // The daemon still traces: exact counts, and no stack.
    let mut workload = common::Workload::spawn();
    let pid = workload.pid;
    let port = workload.listen("127.0.0.1");
    workload.connect(&format!("127.0.0.1:{port}"), 2);
    daemon.eventually("its 2 connections open", |d| {
        common::expect_eq("open", num(&d.process(pid), "open"), 2)
    });
    assert_eq!(num(&daemon.json(&["status"])["stacks"], "captured"), 0);
    let err = daemon.try_cli(&["stacks", &pid.to_string()]).expect_err("no stacks");
    assert!(err.contains("stack capture is off in this probe mode (the kernel refused"), "{err}");
    drop(daemon);
    // Without the fault, the same policy captures: on, no reason; --stacks off says so.
    let daemon = Daemon::start(&["--stacks", "all"]);
    let stacks = &daemon.json(&["status"])["stacks"];
    assert_eq!((&stacks["capture"], &stacks["capture_off_reason"]), (&"on".into(), &Value::Null));
    drop(daemon);
    let daemon = Daemon::start(&["--stacks", "off"]);
    let stacks = &daemon.json(&["status"])["stacks"];
    assert_eq!(stacks["capture"], "off", "{stacks:#}");
    assert_eq!(stacks["capture_off_reason"], "the policy is off (--stacks off)", "{stacks:#}");
}

#[test]
fn a_process_whose_binary_only_its_own_mount_namespace_sees_is_named() {
    let dir = TempDir::new("stacks-mntns");
    let binary = build_leaker(&dir.0, false);
    let daemon = Daemon::start(&["--stacks", "all"]);
    let (cmd, inside) = common::in_private_mount_namespace(&binary, &dir.0.join("hidden"), &[]);
    let mut leaker = Leaker::spawn_command(cmd);
    assert!(!inside.exists(), "{} is visible from the host mount namespace", inside.display());
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", leaker.pid())).expect("maps");
    let inside = inside.to_str().expect("a UTF-8 path");
    assert!(maps.contains(inside), "runs as {inside}: {maps}");
    leaker.cmd("leak 5");
    let pid = leaker.pid();
    daemon.eventually("5 leaked connections open", |d| {
        common::expect_eq("outbound", num(&d.process(pid)["outbound"], "open"), 5)
    });
    let mut answer = Value::Null;
    daemon.eventually("the leak named", |d| {
        answer = d.json(&["stacks", &pid.to_string()]);
        let outbound = outbound_groups(&answer);
        if outbound.len() == 1 && outbound[0]["leading_function"] == "main.leakConnections" {
            Ok(())
        } else {
            Err(format!("{answer:#}"))
        }
    });
    let leak = outbound_groups(&answer)[0].clone();
    assert_eq!(num(&leak, "count"), 5, "{answer:#}");
    let frame = leak["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .find(|f| f["function"] == "main.leakConnections")
        .cloned()
        .expect("the leaking frame");
    assert_eq!(frame["module"], inside, "the module as the process sees it: {frame:#}");
    assert!(frame["file"].as_str().is_some_and(|f| f.ends_with("main.go")), "{frame:#}");
    let text = daemon.try_cli(&["stacks", &pid.to_string()]).expect("text view");
    assert!(text.contains("opened by main.leakConnections"), "{text}");
}

#[test]
fn a_close_wait_alert_carries_the_stacks_of_the_stale_connections() {
    let dir = TempDir::new("stacks-close-wait");
    let binary = build_leaker(&dir.0, false);
    let flags = [FAST_LEAKS, &["--stacks", "all"]].concat();
    let daemon = Daemon::start(&flags);
    let mut leaker = Leaker::spawn(&binary);
    let pid = leaker.pid();
    // 5 leaked connections that stay established (not what close_wait is about), then 4 whose
    // peer hangs up at once: they sit in CLOSE_WAIT, opened by main.leakCloseWait.
    leaker.cmd("leak 5");
    leaker.cmd("stale 4");
    daemon.eventually("the close_wait alert with its stacks named", |d| {
        let leaks = d.json(&["leaks"]);
        let alert = leaks["active"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["pid"] == pid && a["rule"] == "close_wait"))
            .ok_or("no close_wait alert yet")?;
        if evidence_functions(alert).is_empty() {
            return Err(format!("evidence not named yet: {alert:#}"));
        }
        let stacks = &alert["evidence"]["stacks"];
        let groups = stacks["groups"].as_array().expect("groups");
        // A line that says what the evidence holds, first in every message (a failure report
        // shows the first line of a panic; the JSON follows).
        let counts: Vec<u64> = groups.iter().map(|g| num(g, "count")).collect();
        let missing = num(stacks, "stack_missing");
        let summary = format!(
            "groups {counts:?}, in other groups {}, stack missing {missing}: {alert:#}",
            num(stacks, "in_other_groups")
        );
        // Exactly the stale connections: the 4 of them, each in a group opened by the function
        // that opened them or in a smaller group not kept, none of the established leaked
        // ones. The first dial of a Go program can take another path through the runtime (seen
        // in the VM matrix: 3 + 1), so there may be more than one group.
        assert_eq!(num(&alert["evidence"], "stale_close_wait"), 4, "{summary}");
        assert_eq!(num(stacks, "connections"), 4, "{summary}");
        assert_eq!(common::stacks_accounted(stacks), 4, "{summary}");
        assert!((1..=3).contains(&groups.len()), "{summary}");
        for group in groups {
            assert_eq!(group["leading_function"], "main.leakCloseWait", "{summary}");
            assert_eq!(group["direction"], "outbound", "{summary}");
        }
        assert!(!stacks.to_string().contains("main.leakConnections"), "{summary}");
        // Every stale connection's stack was taken (policy `all`, opened after the daemon),
        // unless the kernel counted it lost: a missing stack is never silent.
        for reason in ["opened_before_capture", "not_sampled", "held_by_another_process"] {
            assert_eq!(num(stacks, reason), 0, "{reason}: {summary}");
        }
        // Polled like the rest, not asserted at once: a failure then comes with the history of
        // what was seen and the daemon's status (its stack counters: orphaned, received, ...).
        if missing > 0 {
            let kernel = &d.json(&["status"])["stacks"];
            let lost = num(kernel, "lost_ringbuf") + num(kernel, "unwind_failed");
            if missing > lost {
                return Err(format!(
                    "{missing} stacks missing, {lost} lost (status stacks {kernel}): {summary}"
                ));
            }
        }
        Ok(())
    });
    let text = daemon.try_cli(&["leaks"]).expect("leaks");
    assert!(text.contains("opened by main.leakCloseWait"), "{text}");
}

/// The `growth` alert of `pid` in `list` (`active` or `resolved`) of `tracer leaks --json`.
fn growth_alert(daemon: &Daemon, list: &str, pid: u32) -> Option<Value> {
    daemon.json(&["leaks"])[list]
        .as_array()?
        .iter()
        .find(|a| a["pid"] == pid && a["rule"] == "growth")
        .cloned()
}

/// The leading functions of an alert's evidence groups.
fn evidence_functions(alert: &Value) -> Vec<String> {
    alert["evidence"]["stacks"]["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter_map(|g| g["leading_function"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The value of an unlabelled counter in a /metrics exposition.
fn counter(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {scrape}"))
}

#[test]
fn a_leak_alert_under_the_default_policy_names_the_leaking_function_and_keeps_it() {
    let dir = TempDir::new("stacks-alert");
    let binary = build_leaker(&dir.0, false);
    // The default (sampled) policy, short leak windows: suspect after two rising sub-windows
    // (1 s each), growth after a window of four.
    // The alert must hold while the test pauses the leak to query (seconds on a loaded guest):
    // 20 clear evaluations before it resolves; the process's exit resolves it at once.
    let flags = [FAST_LEAKS, &["--leak-resolve-after", "20"]].concat();
    let daemon = Daemon::start(&flags);
    let mut leaker = Leaker::spawn(&binary);
    let pid = leaker.pid();
    // A steady leak until the alert is up with its stacks named.
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        leaker.cmd("leak 2");
        let alert = growth_alert(&daemon, "active", pid);
        if let Some(alert) = &alert
            && evidence_functions(alert).iter().any(|f| f == "main.leakConnections")
        {
            break alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no alert naming the leak: {}",
            alert.unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(150));
    };
    // A suspect has every connection captured, not every 8th: 16 more leaked connections add
    // 16 to its stacked ones.
    let pid_arg = pid.to_string();
    let stacked = |d: &Daemon| -> u64 {
        outbound_groups(&d.json(&["stacks", &pid_arg])).iter().map(|g| num(g, "count")).sum()
    };
    let before = stacked(&daemon);
    leaker.cmd("leak 16");
    daemon.eventually("every connection of a suspect stacked", |d| {
        let now = stacked(d);
        if now == before + 16 { Ok(()) } else { Err(format!("stacked {before} -> {now}")) }
    });
    // (a) The evidence: the connections behind the rule, grouped, with frames, and the rest
    // accounted for by reason.
    let stacks = &alert["evidence"]["stacks"];
    let groups = stacks["groups"].as_array().expect("groups");
    assert!(groups.len() <= 3, "{stacks:#}");
    let leak =
        groups.iter().find(|g| g["leading_function"] == "main.leakConnections").expect("leak");
    assert_eq!(leak["direction"], "outbound");
    assert!(
        leak["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .any(|f| f["function"] == "main.leakConnections"
                && f["file"].as_str().is_some_and(|file| file.ends_with("main.go"))
                && f["line"].as_u64().is_some()),
        "{leak:#}"
    );
    assert_eq!(common::stacks_accounted(stacks), num(stacks, "connections"), "{stacks:#}");
    assert!(num(stacks, "not_sampled") > 0, "before it was a suspect, most were not sampled");
    assert!(!stacks.to_string().contains("main.tidyConnections"));
    let text = daemon.try_cli(&["leaks"]).expect("leaks");
    assert!(text.contains("opened by main.leakConnections"), "{text}");
    // top names the leading function of the alert's largest group while the alert is active
    // (the leak stopped above: on a slow guest it may have resolved by now, and then top names
    // nothing).
    let row = daemon.process(pid);
    let active = row["alerts"].as_array().is_some_and(|a| a.iter().any(|r| r == "growth"));
    let want = if active { groups[0]["leading_function"].clone() } else { Value::Null };
    assert_eq!(row["leading_function"], want, "{row:#}");

    // (c) conns: each leaked connection names its group as `tracer stacks` does; the others
    // say why they have none. Quiet first, so that both answers see the same connections.
    std::thread::sleep(Duration::from_millis(300));
    let conns = daemon.json(&["conns", "--pid", &pid_arg]);
    let by_stacks = daemon.json(&["stacks", &pid_arg]);
    let mut per_group: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for conn in conns["connections"].as_array().expect("connections") {
        match conn["stack_group"].as_u64() {
            Some(id) => {
                assert!(conn["no_stack"].is_null(), "{conn:#}");
                *per_group.entry(id).or_default() += 1;
            }
            None => {
                let reason = conn["no_stack"].as_str().expect("a reason").to_owned();
                *reasons.entry(reason).or_default() += 1;
            }
        }
    }
    let expected: std::collections::BTreeMap<u64, u64> = by_stacks["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (num(g, "id"), num(g, "count")))
        .collect();
    assert_eq!(per_group, expected, "conns: {conns:#}\nstacks: {by_stacks:#}");
    assert_eq!(reasons.get("not_sampled").copied().unwrap_or(0), num(&by_stacks, "not_sampled"));
    assert!(reasons.get("not_sampled").is_some_and(|n| *n > 0), "{reasons:?}");
    let leak_group = by_stacks["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["leading_function"] == "main.leakConnections")
        .expect("the leak's group");
    assert!(num(leak_group, "count") > 0);

    // (d) The counters on /metrics.
    let scrape = daemon.scrape_metrics();
    assert!(counter(&scrape, "tcp_tracer_stacks_captured_total") > 0.0, "{scrape}");
    assert!(scrape.contains("tcp_tracer_stacks_lost_total{reason=\"ringbuf_full\"}"));
    assert!(scrape.contains("tcp_tracer_stack_processes_exited_before_pinning_total"));

    // (b) The process exits, the alert resolves, its evidence still names the function.
    drop(leaker);
    daemon.eventually("resolved with its stacks", |d| {
        let alert = growth_alert(d, "resolved", pid).ok_or("not resolved yet")?;
        if evidence_functions(&alert).iter().any(|f| f == "main.leakConnections") {
            Ok(())
        } else {
            Err(format!("resolved without the function: {alert:#}"))
        }
    });
    let text = daemon.try_cli(&["leaks"]).expect("leaks");
    assert!(text.contains("opened by main.leakConnections"), "{text}");
}
