//! Faults, with nothing lost silently: the daemon stopped (SIGSTOP) for longer than its ring
//! holds while connections churn, and killed (SIGKILL) while they churn and started again.
//! Ground truth: `ss` and what the workloads did. Run as root.
mod common;

use std::time::Duration;

use common::{Daemon, Workload, expect_eq, num, ss_count};

/// `pid`'s open connections in the daemon equal `want` and `ss`'s count.
fn agrees_with_ss(daemon: &Daemon, pid: u32, want: u64) {
    assert_eq!(ss_count(pid), want, "ss for {pid}");
    // A process none of whose events arrived has no row: it holds nothing.
    daemon.eventually(&format!("{pid} holds {want}, as ss says"), |d| {
        expect_eq("open", d.process(pid)["open"].as_u64().unwrap_or(0), want)
    });
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: a signal to a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill({pid}, {signal})");
}

/// A server that holds what it accepts on one listener and churns through another, and a
/// client holding `held` connections to it.
fn workloads(held: usize) -> (Workload, Workload, String, String) {
    let mut server = Workload::spawn();
    let hold_port = server.listen("127.0.0.1");
    let churn_port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 hold");
    let mut client = Workload::spawn();
    let hold = format!("127.0.0.1:{hold_port}");
    client.connect(&hold, held);
    (server, client, hold, format!("127.0.0.1:{churn_port}"))
}

/// Stopped while a workload churns through far more events than its ring (64 KiB) holds: when
/// it continues, what it lost is counted, by reason, and within two reconciles its counts of
/// what is open equal `ss` again, for the connections that changed while it was stopped too.
#[test]
fn a_daemon_stopped_past_its_ring_counts_its_losses_and_returns_to_ground_truth() {
    let daemon = Daemon::start(&["--ring-bytes", "65536", "--reconcile-interval", "3"]);
    let (mut server, mut client, hold, churn) = workloads(10);
    agrees_with_ss(&daemon, client.pid, 10);

    signal(daemon.pid(), libc::SIGSTOP);
    server.cmd("serve-churn 1 2000");
    let mut churner = Workload::spawn();
    churner.cmd(&format!("churn {churn} 2000"));
    client.cmd("close 5");
    client.connect(&hold, 15);
    std::thread::sleep(Duration::from_millis(200));
    signal(daemon.pid(), libc::SIGCONT);

    let status = daemon.json(&["status"]);
    let lost = num(&status, "events_lost");
    let by_reason: u64 = status["events_lost_by_reason"]
        .as_object()
        .expect("reasons")
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(num(&status["events_lost_by_reason"], "ringbuf_full") > 0, "{status}");
    assert_eq!(lost, by_reason, "every loss has its reason: {status}");
    agrees_with_ss(&daemon, client.pid, 20);
    agrees_with_ss(&daemon, churner.pid, 0);
    // The client's changes while stopped came after the ring filled: reconciles made them
    // good, each correction backed by the losses counted above.
    let status = daemon.json(&["status"]);
    assert!(num(&status, "reconcile_corrections") > 0, "{status}");
}

/// Killed while connections churn, then started again: the new daemon finds what is open
/// (the scan at start-up) and follows what changes after, so its counts equal `ss`.
#[test]
fn a_daemon_killed_during_churn_is_exact_again_after_a_restart() {
    let daemon = Daemon::start(&[]);
    let (mut server, mut client, hold, churn) = workloads(10);
    agrees_with_ss(&daemon, client.pid, 10);

    server.cmd("serve-churn 1 3000");
    let churner = std::thread::spawn(move || {
        let mut churner = Workload::spawn();
        churner.cmd(&format!("churn {churn} 3000"));
        churner
    });
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill_hard();
    let daemon = Daemon::start(&[]);
    client.cmd("close 3");
    client.connect(&hold, 8);
    let churner = churner.join().expect("the churn");
    agrees_with_ss(&daemon, client.pid, 15);
    agrees_with_ss(&daemon, churner.pid, 0);
    let status = daemon.json(&["status"]);
    assert_eq!(num(&status, "events_lost"), 0, "{status}");
}
