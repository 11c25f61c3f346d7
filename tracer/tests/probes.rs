//! What each probe mode adds beyond the events: kprobe mode's own tracefs probes, their
//! kernel-counted misses, and their clean-up. Runs in every mode of the VM matrix
//! (TRACER_TEST_PROBE); outside kprobe mode it checks that nothing of the sort appears.
mod common;

use common::{Daemon, Workload, num, probe_mode};
use serde_json::Value;
use tracer::probes::ProbeMode;

/// Our lines of tracefs `kprobe_events` (empty when the kernel has no kprobe events).
fn our_kprobe_events() -> Vec<String> {
    ["/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("tracer/tracer_"))
        .map(str::to_owned)
        .collect()
}

fn probe<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["kprobes"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["probe"] == name))
        .unwrap_or_else(|| panic!("no kprobe {name} in status: {status}"))
}

#[test]
fn kprobe_mode_reports_kernel_hit_and_miss_counts_and_removes_its_probes() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 5);
    server.cmd("accept 0 5");
    client.cmd("close 5");
    server.cmd("close 5");
    daemon.eventually("five connections closed on both sides", |d| {
        common::expect_eq("client closed", num(&d.process(client.pid), "closed_total"), 5)?;
        common::expect_eq("server closed", num(&d.process(server.pid), "closed_total"), 5)
    });
    let status = daemon.json(&["status"]);
    let kprobe_mode = status["probe_mode"] == "kprobe";
    if probe_mode() == ProbeMode::Kprobe {
        assert!(kprobe_mode, "{status}");
    }
    if !kprobe_mode {
        assert_eq!(status["kprobes"], serde_json::json!([]), "only kprobe mode has kprobes");
        assert!(our_kprobe_events().is_empty(), "{:?}", our_kprobe_events());
        return;
    }

    // The kernel counted every call of the probed functions (other processes' too).
    assert!(num(probe(&status, "tcp_connect"), "hits") >= 5, "{status}");
    assert!(num(probe(&status, "tcp_close"), "hits") >= 10, "{status}");
    assert!(num(probe(&status, "inet_csk_accept:return"), "hits") >= 5, "{status}");
    for name in ["tcp_connect", "tcp_close", "inet_csk_accept:return"] {
        assert_eq!(num(probe(&status, name), "missed"), 0, "an idle machine misses nothing");
    }
    let metrics = daemon.scrape_metrics();
    assert!(
        metrics.contains("tcp_tracer_kprobe_missed_total{probe=\"inet_csk_accept:return\"} 0"),
        "{metrics}"
    );
    // The accept return probe may have 4096 calls pending (blocked accepts), not ~2 per CPU.
    let pid = daemon.pid();
    let events = our_kprobe_events();
    assert!(
        events.iter().any(|e| e.starts_with(&format!(
            "r4096:tracer/tracer_{pid}_inet_csk_accept_ret inet_csk_accept"
        ))),
        "{events:?}"
    );
    assert_eq!(events.len(), 3, "{events:?}");

    // Killed without clean-up, its probes stay behind; the next daemon removes them.
    daemon.kill_hard();
    assert_eq!(our_kprobe_events().len(), 3, "left behind by the killed daemon");
    let next = Daemon::start(&[]);
    let events = our_kprobe_events();
    assert!(!events.iter().any(|e| e.contains(&format!("tracer_{pid}_"))), "{events:?}");
    assert_eq!(events.len(), 3, "only the new daemon's: {events:?}");
    // A clean stop removes its own.
    next.stop();
    assert!(our_kprobe_events().is_empty(), "{:?}", our_kprobe_events());
}

/// Every program the mode loaded is listed with the runs the kernel skipped (a program already
/// running on that CPU), read from the kernel's own program info: the one trace such a lost
/// event leaves (docs/semantics.md, "Kernel-side misses").
#[test]
fn every_loaded_program_reports_the_runs_the_kernel_skipped() {
    let daemon = Daemon::start(&[]);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    let mut client = Workload::spawn();
    client.connect(&format!("127.0.0.1:{port}"), 3);
    server.cmd("accept 0 3");
    client.cmd("close 3");
    daemon.eventually("three connections closed", |d| {
        common::expect_eq("client closed", num(&d.process(client.pid), "closed_total"), 3)
    });
    let status = daemon.json(&["status"]);
    let mode = match status["probe_mode"].as_str() {
        Some("fentry") => ProbeMode::Fentry,
        Some("kprobe") => ProbeMode::Kprobe,
        Some("tracepoint") => ProbeMode::Tracepoint,
        other => panic!("probe mode {other:?}"),
    };
    // The programs this kernel's BTF makes the mode attach: the ground truth of the list.
    let btf = aya::Btf::from_sys_fs().expect("kernel BTF");
    // Programs run or attached on demand are left out: the task iterator (optional: a kernel
    // may refuse it) and the Go request uprobe (attached per Go process only).
    let optional = |name: &str| {
        use tracer::probes::hooks::{HOOKS, HookKind};
        HOOKS.iter().any(|hook| {
            hook.program == name && matches!(hook.kind, HookKind::Iter | HookKind::UProbe)
        })
    };
    let mut expected: Vec<&str> = tracer::probes::hooks::of_mode(mode, &btf)
        .map(|hook| hook.program)
        .filter(|name| !optional(name))
        .collect();
    expected.sort_unstable();
    // Last, the state-change runs the kernel never made, counted from tracefs (writable
    // wherever the tests run).
    expected.push(tracer::probes::UNRUN_STATE_CHANGES);
    let listed = status["program_misses"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = listed
        .iter()
        .filter_map(|p| p["program"].as_str())
        .filter(|name| !optional(name))
        .collect();
    assert_eq!(names, expected, "{status}");
    let sum: u64 = listed.iter().map(|p| num(p, "missed")).sum();
    assert_eq!(num(&status, "program_misses_total"), sum, "{status}");
    let metrics = daemon.scrape_metrics();
    for name in &expected {
        let missed = listed.iter().find(|p| p["program"] == *name).map_or(0, |p| num(p, "missed"));
        // A scrape after the status: the count can only have grown.
        let line = format!("tcp_tracer_bpf_program_missed_total{{program=\"{name}\"}} ");
        let scraped: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"));
        assert!(scraped >= missed, "{name}: scraped {scraped} < status {missed}");
    }
}
