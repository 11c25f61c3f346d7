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
