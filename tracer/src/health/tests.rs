//! Health against scans built by hand, on a simulated clock.
use super::*;
use crate::{
    ground_truth::TcpInfo,
    table::{Direction, ScannedHolder, ScannedSocket, TableConfig},
};

const SEC: u64 = 1_000_000_000;
const OWNER: ProcessKey = ProcessKey { pid: 42, start_time_ns: 7 };

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A socket from local port `port` to 127.0.0.1:80 with `received` bytes in, `unread` of them
/// unread, idle for `idle_ms`.
fn socket(port: u16, received: u64, unread: u32, idle_ms: u32) -> ExistingSocket {
    ExistingSocket {
        netns: 1,
        family: libc::AF_INET as u8,
        state: tcp_state::ESTABLISHED,
        local: addr(port),
        remote: addr(80),
        inode: u64::from(port),
        uid: 0,
        cookie: u64::from(port) * 1000,
        rqueue: unread,
        wqueue: 0,
        info: Some(TcpInfo {
            last_data_sent_ms: Some(idle_ms + 5),
            last_data_recv_ms: Some(idle_ms),
            rtt_us: Some(30),
            bytes_acked: Some(101),
            bytes_received: Some(received),
        }),
    }
}

fn scan(at_ns: u64, sockets: Vec<ExistingSocket>) -> HealthScan {
    HealthScan { at_ns, sockets }
}

#[test]
fn a_reader_that_stops_counts_only_after_the_threshold_and_a_steady_one_never() {
    let settings = HealthSettings { unread_after_ns: 3 * SEC, ..HealthSettings::default() };
    let mut reads = ReadTracker::default();
    // Port 1: 100 kB arrive, 90 kB stay unread, nothing more is read.
    // Port 2: a slow steady reader: more arrives and more is read at every scan, always some
    // waiting.
    for i in 0..6u64 {
        let now = i * SEC;
        let s = scan(now, vec![socket(1, 100_000, 90_000, 10), socket(2, 1000 * (i + 2), 500, 10)]);
        reads.observe(&s);
        let stalled = reads.stalled_ns(&s.sockets[0], now).expect("stalled");
        assert_eq!(stalled, now, "stall counts from the first scan that saw it");
        // First seen with data waiting: a stall of 0 until the next scan shows progress.
        let steady = if i == 0 { Some(0) } else { None };
        assert_eq!(reads.stalled_ns(&s.sockets[1], now), steady, "read progress moved");
    }
    let mut table = ConnectionTable::new(TableConfig::default());
    let held = |s: &ExistingSocket| ScannedSocket {
        netns: s.netns,
        inode: s.inode,
        cookie: s.cookie,
        local: s.local,
        remote: s.remote,
        state: s.state,
        direction: Direction::Outbound,
        holders: vec![ScannedHolder {
            key: OWNER,
            comm: *b"client\0\0\0\0\0\0\0\0\0\0",
            cgroup_id: 0,
        }],
    };
    let last = scan(5 * SEC, vec![socket(1, 100_000, 90_000, 10), socket(2, 7000, 500, 10)]);
    let loaded: Vec<ScannedSocket> = last.sockets.iter().map(held).collect();
    assert_eq!(table.load_existing(&loaded, 0), 2);
    let per = per_process(&table, &last, &reads, &settings);
    let health = &per[&OWNER];
    assert_eq!(health.unread, 1, "only the stopped reader");
    assert_eq!(health.unread_examples[0].unread_bytes, 90_000);
    assert_eq!(health.unread_examples[0].no_read_seconds, 5);
    // Below the threshold, nothing counts.
    let strict = HealthSettings { unread_after_ns: 6 * SEC, ..settings };
    assert_eq!(per_process(&table, &last, &reads, &strict)[&OWNER].unread, 0);
}

#[test]
fn reading_resets_the_stall_and_a_drained_queue_is_not_unread() {
    let mut reads = ReadTracker::default();
    reads.observe(&scan(0, vec![socket(1, 1000, 800, 0)]));
    reads.observe(&scan(SEC, vec![socket(1, 1000, 800, 0)]));
    assert_eq!(reads.stalled_ns(&socket(1, 1000, 800, 0), 2 * SEC), Some(2 * SEC));
    // It read 300 bytes: progress, no stall.
    reads.observe(&scan(2 * SEC, vec![socket(1, 1000, 500, 0)]));
    assert_eq!(reads.stalled_ns(&socket(1, 1000, 500, 0), 2 * SEC), None);
    // Stuck again from the next scan on.
    reads.observe(&scan(3 * SEC, vec![socket(1, 1000, 500, 0)]));
    assert_eq!(reads.stalled_ns(&socket(1, 1000, 500, 0), 4 * SEC), Some(SEC));
    // New data arrives, nothing read: counts from the scan that saw it, not the one before.
    reads.observe(&scan(4 * SEC, vec![socket(2, 10, 0, 0)]));
    reads.observe(&scan(5 * SEC, vec![socket(2, 50, 40, 0)]));
    assert_eq!(reads.stalled_ns(&socket(2, 50, 40, 0), 5 * SEC), Some(0));
    assert_eq!(reads.len(), 1, "sockets no scan lists are forgotten");
    // Everything read: nothing waits.
    reads.observe(&scan(6 * SEC, vec![socket(2, 50, 0, 0)]));
    assert_eq!(reads.stalled_ns(&socket(2, 50, 0, 0), 6 * SEC), None);
}

#[test]
fn idle_counts_the_later_of_sent_and_received_against_each_threshold() {
    let settings = HealthSettings {
        idle_after_ns: 10 * SEC,
        unread_after_ns: SEC,
        idle_alert_after_ns: Some(20 * SEC),
    };
    let sockets = vec![socket(1, 0, 0, 5_000), socket(2, 0, 0, 15_000), socket(3, 0, 0, 25_000)];
    let mut table = ConnectionTable::new(TableConfig::default());
    let loaded: Vec<ScannedSocket> = sockets
        .iter()
        .map(|s| ScannedSocket {
            netns: s.netns,
            inode: s.inode,
            cookie: s.cookie,
            local: s.local,
            remote: s.remote,
            state: s.state,
            direction: Direction::Outbound,
            holders: vec![ScannedHolder { key: OWNER, comm: [b'x'; 16], cgroup_id: 0 }],
        })
        .collect();
    table.load_existing(&loaded, 0);
    let s = scan(SEC, sockets);
    let health = &per_process(&table, &s, &ReadTracker::default(), &settings)[&OWNER];
    assert_eq!((health.idle, health.idle_alerting, health.unread), (2, 1, 0));
    assert_eq!(health.idle_examples[0].idle_seconds, 25);
    let off = HealthSettings { idle_alert_after_ns: None, ..settings };
    assert_eq!(per_process(&table, &s, &ReadTracker::default(), &off)[&OWNER].idle_alerting, 0);
}

#[test]
fn unknown_figures_are_null_with_a_reason_never_zero() {
    let full = ConnHealth::of(&socket(1, 700, 200, 3_500));
    assert_eq!(full.idle_seconds, Some(3));
    assert_eq!(full.bytes_received, Some(700));
    assert_eq!(full.unread_bytes, Some(200));
    assert_eq!(full.unsent_bytes, Some(0));
    assert_eq!(full.rtt_us, Some(30));
    assert_eq!(full.health_unavailable, None);
    let mut tw = socket(2, 0, 0, 0);
    tw.state = tcp_state::TIME_WAIT;
    tw.info = None;
    let h = ConnHealth::of(&tw);
    assert_eq!((h.idle_seconds, h.bytes_received, h.rtt_us), (None, None, None));
    assert!(h.health_unavailable.is_some());
    let gone = ConnHealth::unavailable(NOT_LISTED);
    assert_eq!(gone.unread_bytes, None);
    assert!(gone.health_unavailable.as_deref().is_some_and(|r| r.contains("state close")));
}

#[test]
fn a_time_wait_socket_never_hides_a_live_one_with_the_same_addresses() {
    let mut tw = socket(1, 0, 0, 0);
    tw.state = tcp_state::TIME_WAIT;
    tw.info = None;
    for order in [vec![tw.clone(), socket(1, 5, 0, 0)], vec![socket(1, 5, 0, 0), tw.clone()]] {
        let s = scan(0, order);
        let index = s.index();
        let key = TupleKey { netns: 1, local: addr(1), remote: addr(80) };
        assert_eq!(index[&key].state, tcp_state::ESTABLISHED);
    }
}
