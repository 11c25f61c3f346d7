//! The store against hand-built events and stack records, in both arrival orders.
use tracer_common::{
    AF_INET, ConnEvent, EventKind, Tuple, flags,
    stacks::{MAX_STACK_DEPTH, STACK_WINDOW_BYTES, StackRecord},
    tcp_state::*,
};

use super::*;
use crate::table::TableConfig;

const SEC: u64 = 1_000_000_000;
const NETNS: u32 = 4026531840;
const PID: u32 = 100;
const START: u64 = 10 * SEC;

fn event(kind: EventKind, sock: u64, port: u16, wanted: bool) -> ConnEvent {
    let mut tuple =
        Tuple { family: AF_INET.into(), local_port: port, remote_port: 80, ..Tuple::default() };
    tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let owner = matches!(kind, EventKind::Connect | EventKind::Release);
    let (old_state, new_state) = match kind {
        EventKind::Connect => (CLOSE, SYN_SENT),
        EventKind::Established => (SYN_SENT, ESTABLISHED),
        _ => (ESTABLISHED, CLOSE),
    };
    ConnEvent {
        timestamp_ns: 0,
        sock,
        start_time_ns: if owner { START } else { 0 },
        cgroup_id: 0,
        comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
        netns: NETNS,
        tgid: if owner { PID } else { 0 },
        tid: if owner { PID } else { 0 },
        kind: kind as u8,
        flags: if owner { flags::OWNER_CONTEXT } else { 0 }
            | if wanted { flags::STACK_WANTED } else { 0 },
        old_state,
        new_state,
        tuple,
        error: 0,
        _pad: 0,
        bytes_received: 0,
        bytes_acked: 0,
        socket_inode: 0,
    }
}

fn record(sock: u64, frames: &[u64]) -> StackRecord {
    let mut out = [0u64; MAX_STACK_DEPTH as usize];
    out[..frames.len()].copy_from_slice(frames);
    StackRecord {
        timestamp_ns: 0,
        sock,
        start_time_ns: START,
        netns: NETNS,
        tgid: PID,
        kind: EventKind::Connect as u8,
        _pad: [0; 3],
        depth: frames.len() as u32,
        regs: Default::default(),
        window_len: 0,
        _pad2: 0,
        window: [0; STACK_WINDOW_BYTES / 8],
        frames: out,
    }
}

struct World {
    table: ConnectionTable,
    stacks: OpenerStacks,
}

impl World {
    fn new() -> Self {
        Self {
            table: ConnectionTable::new(TableConfig::default()),
            stacks: OpenerStacks::default(),
        }
    }

    fn apply(&mut self, e: ConnEvent) -> Applied {
        let applied = self.table.apply(&e);
        self.stacks.on_event(&e, &applied, &self.table);
        applied
    }

    /// connect + handshake; returns the connection id.
    fn open(&mut self, sock: u64, port: u16, wanted: bool) -> u64 {
        let Applied::Connecting { id, .. } =
            self.apply(event(EventKind::Connect, sock, port, wanted))
        else {
            panic!("connect")
        };
        self.apply(event(EventKind::Established, sock, port, false));
        id
    }

    fn close(&mut self, sock: u64, port: u16) {
        assert!(matches!(
            self.apply(event(EventKind::Release, sock, port, false)),
            Applied::Closed { .. }
        ));
    }

    fn stack(&mut self, sock: u64, frames: &[u64]) {
        self.stacks.on_stack(&record(sock, frames), &self.table, 0);
    }
}

#[test]
fn a_stack_pairs_with_its_connection_in_either_order() {
    let mut w = World::new();
    // Event first, then the stack.
    let first = w.open(0x1000, 40_001, true);
    assert_eq!(w.stacks.opener(first, false), Opener::Wanted);
    w.stack(0x1000, &[1, 2, 3]);
    let Opener::Stack(a) = w.stacks.opener(first, false) else { panic!("attached") };
    // Stack first, then the event.
    w.stack(0x2000, &[1, 2, 3]);
    let second = w.open(0x2000, 40_002, true);
    assert_eq!(w.stacks.opener(second, false), Opener::Stack(a), "one stack, interned");
    assert_eq!(w.stacks.stack(a).map(|s| &*s.frames), Some(&[1, 2, 3][..]));
    assert_eq!(w.stacks.counters().attached, 2);
    assert_eq!(w.stacks.stack_count(), 1);
}

#[test]
fn unsampled_and_preexisting_connections_say_so() {
    let mut w = World::new();
    let id = w.open(0x1000, 40_001, false);
    assert_eq!(w.stacks.opener(id, false), Opener::NotSampled);
    assert_eq!(w.stacks.opener(id, true), Opener::BeforeCapture);
}

#[test]
fn a_stack_goes_with_its_last_connection() {
    let mut w = World::new();
    w.open(0x1000, 40_001, true);
    w.stack(0x1000, &[7, 8]);
    w.open(0x2000, 40_002, true);
    w.stack(0x2000, &[7, 8]);
    w.open(0x3000, 40_003, true);
    w.stack(0x3000, &[9]);
    assert_eq!(w.stacks.stack_count(), 2);
    w.close(0x1000, 40_001);
    assert_eq!(w.stacks.stack_count(), 2, "[7, 8] still used once");
    w.close(0x2000, 40_002);
    w.close(0x3000, 40_003);
    assert_eq!(w.stacks.stack_count(), 0, "nothing left when nothing is open");
    // An identical stack later is interned afresh.
    w.open(0x4000, 40_004, true);
    w.stack(0x4000, &[7, 8]);
    assert_eq!(w.stacks.stack_count(), 1);
}

#[test]
fn a_stack_whose_connection_never_shows_up_is_dropped_and_counted() {
    let mut w = World::new();
    w.stack(0x1000, &[1]);
    assert_eq!(w.stacks.stack_count(), 1);
    w.stacks.expire(PENDING_GRACE_NS / 2);
    assert_eq!(w.stacks.stack_count(), 1, "still within its grace");
    w.stacks.expire(PENDING_GRACE_NS + 1);
    assert_eq!(w.stacks.stack_count(), 0);
    assert_eq!(w.stacks.counters().orphaned, 1);
}

#[test]
fn same_addresses_in_two_processes_are_two_stacks() {
    let mut w = World::new();
    w.stack(0x1000, &[5, 6]);
    let mut other = record(0x2000, &[5, 6]);
    other.tgid = PID + 1;
    w.stacks.on_stack(&other, &w.table, 0);
    assert_eq!(w.stacks.stack_count(), 2, "a non-PIE binary run twice: two code paths");
}

#[test]
fn a_stale_stack_of_another_process_at_a_reused_socket_address_is_not_taken() {
    let mut w = World::new();
    // Another process's connection at 0x1000 closed before its stack was read; the address
    // then went to this process's next socket.
    let mut stale = record(0x1000, &[9, 9]);
    stale.tgid = PID + 1;
    w.stacks.on_stack(&stale, &w.table, 0);
    let id = w.open(0x1000, 40_001, true);
    assert_eq!(w.stacks.opener(id, false), Opener::Wanted, "not the other process's stack");
    assert_eq!(w.stacks.counters().orphaned, 1);
    w.stack(0x1000, &[1, 2]);
    let Opener::Stack(own) = w.stacks.opener(id, false) else { panic!("its own stack") };
    assert_eq!(w.stacks.stack(own).map(|s| &*s.frames), Some(&[1, 2][..]));
    assert_eq!(w.stacks.stack_count(), 1, "the stale stack is freed");
}

#[test]
fn malformed_records_are_counted_not_kept() {
    let mut w = World::new();
    w.stack(0x1000, &[]);
    let mut bad_kind = record(0x2000, &[1]);
    bad_kind.kind = EventKind::Release as u8;
    w.stacks.on_stack(&bad_kind, &w.table, 0);
    assert_eq!(w.stacks.counters().malformed, 2);
    assert_eq!(w.stacks.stack_count(), 0);
}

#[test]
fn kprobe_mode_stacks_pair_without_the_flag_in_either_order() {
    // kprobe mode captures connect's stack apart from its event, which carries no flag.
    let mut w = World::new();
    let first = w.open(0x1000, 40_001, false);
    w.stack(0x1000, &[1, 2]);
    assert!(matches!(w.stacks.opener(first, false), Opener::Stack(_)));
    w.stack(0x2000, &[1, 2]);
    let second = w.open(0x2000, 40_002, false);
    assert!(matches!(w.stacks.opener(second, false), Opener::Stack(_)));
    assert_eq!(w.stacks.counters().attached, 2);
    assert_eq!(w.stacks.stack_count(), 1);
}

fn request(sock: u64, pid: u32, frames: &[u64]) -> StackRecord {
    StackRecord { kind: tracer_common::stacks::KIND_GO_REQUEST, tgid: pid, ..record(sock, frames) }
}

#[test]
fn each_request_replaces_its_connections_last_request() {
    let mut w = World::new();
    let id = w.open(0x1000, 40_001, false);
    assert_eq!(w.stacks.last_request(id), None);
    w.stacks.on_stack(&request(0x1000, PID, &[7, 8, 9]), &w.table, 0);
    let Some(RequestSeen::Stack(first)) = w.stacks.last_request(id) else { panic!("recorded") };
    assert_eq!(w.stacks.stack(first).map(|s| s.kind), Some(StackKind::GoRequest));
    // The same code again: one stack; other code: it replaces the first, which goes.
    w.stacks.on_stack(&request(0x1000, PID, &[7, 8, 9]), &w.table, 0);
    assert_eq!(w.stacks.last_request(id), Some(RequestSeen::Stack(first)));
    w.stacks.on_stack(&request(0x1000, PID, &[7, 8, 10]), &w.table, 0);
    let Some(RequestSeen::Stack(second)) = w.stacks.last_request(id) else { panic!("recorded") };
    assert_ne!(second, first);
    assert_eq!(w.stacks.stack(first), None, "no connection uses the first any more");
    // A request stack is not an opener stack, even with the opener's frames.
    assert_eq!(w.stacks.opener(id, false), Opener::NotSampled);
    w.close(0x1000, 40_001);
    assert_eq!(w.stacks.last_request(id), None);
    assert_eq!(w.stacks.stack_count(), 0);
    assert_eq!(w.stacks.counters().requests, 3);
    assert_eq!(w.stacks.counters().requests_unmatched, 0);
}

#[test]
fn a_request_read_before_its_connection_pairs_at_the_next_drain_or_expires() {
    let mut w = World::new();
    w.stacks.on_stack(&request(0x1000, PID, &[7, 8, 9]), &w.table, 0);
    let id = w.open(0x1000, 40_001, false);
    assert_eq!(w.stacks.last_request(id), None);
    w.stacks.retry_requests(&w.table);
    assert!(w.stacks.last_request(id).is_some());
    // Another socket's request never finds its connection.
    w.stacks.on_stack(&request(0x2000, PID, &[7, 8, 9]), &w.table, 0);
    w.stacks.retry_requests(&w.table);
    w.stacks.expire(PENDING_GRACE_NS + 1);
    assert_eq!(w.stacks.counters().requests_unmatched, 1);
    assert_eq!(w.stacks.stack_count(), 1, "the paired request's stack stays");
}

fn lost(sock: u64, at_ns: u64) -> (SocketKey, LostRequest) {
    let r = record(sock, &[1]);
    let lost = LostRequest {
        timestamp_ns: at_ns,
        start_time_ns: r.start_time_ns,
        netns: r.netns,
        tgid: PID,
    };
    (SocketKey { netns: r.netns, sock }, lost)
}

#[test]
fn a_lost_request_makes_the_last_request_unknown_in_time_order() {
    let mut w = World::new();
    let id = w.open(0x1000, 40_001, false);
    let at = |ns: u64| StackRecord { timestamp_ns: ns, ..request(0x1000, PID, &[7, 8, 9]) };
    w.stacks.on_stack(&at(100), &w.table, 0);
    // A request lost before the recorded one changes nothing.
    let (key, early) = lost(0x1000, 50);
    w.stacks.on_lost_request(key, &early, &w.table);
    assert!(matches!(w.stacks.last_request(id), Some(RequestSeen::Stack(_))));
    // A later one makes it unknown, and its stack goes: the tidy caller is not blamed.
    let (key, later) = lost(0x1000, 200);
    w.stacks.on_lost_request(key, &later, &w.table);
    assert_eq!(w.stacks.last_request(id), Some(RequestSeen::Lost));
    assert_eq!(w.stacks.stack_count(), 0);
    // A record sent before the loss but read after it stays behind it.
    w.stacks.on_stack(&at(150), &w.table, 0);
    assert_eq!(w.stacks.last_request(id), Some(RequestSeen::Lost));
    assert_eq!(w.stacks.stack_count(), 0, "the older record's stack is released");
    // The next request known again.
    w.stacks.on_stack(&at(300), &w.table, 0);
    assert!(matches!(w.stacks.last_request(id), Some(RequestSeen::Stack(_))));
    assert_eq!(w.stacks.counters().requests_lost, 2);
    // Another socket's loss, or another process's, touches nothing here.
    let (key, other) = lost(0x2000, 400);
    w.stacks.on_lost_request(key, &other, &w.table);
    let (key, mut foreign) = lost(0x1000, 500);
    foreign.tgid = PID + 1;
    w.stacks.on_lost_request(key, &foreign, &w.table);
    assert!(matches!(w.stacks.last_request(id), Some(RequestSeen::Stack(_))));
}

#[test]
fn a_request_of_another_process_is_not_the_connections() {
    let mut w = World::new();
    let id = w.open(0x1000, 40_001, false);
    w.stacks.on_stack(&request(0x1000, PID + 1, &[7, 8, 9]), &w.table, 0);
    w.stacks.retry_requests(&w.table);
    assert_eq!(w.stacks.last_request(id), None);
}

#[test]
fn an_accepts_stack_read_before_its_event_stays_with_the_connection() {
    let mut w = World::new();
    // The handshake's completion puts the connection in the backlog (softirq: no owner).
    let mut established = event(EventKind::Established, 0x1000, 8080, false);
    (established.old_state, established.flags) = (SYN_RECV, flags::INBOUND);
    assert!(matches!(w.apply(established), Applied::Backlogged { .. }));
    // The accept's stack, written before the accept's event, is read first.
    let accept_stack = StackRecord { kind: EventKind::Accept as u8, ..record(0x1000, &[4, 5, 6]) };
    w.stacks.on_stack(&accept_stack, &w.table, 0);
    let mut accept = event(EventKind::Accept, 0x1000, 8080, true);
    (accept.tgid, accept.tid, accept.start_time_ns) = (PID, PID, START);
    accept.flags = flags::OWNER_CONTEXT | flags::INBOUND | flags::STACK_WANTED;
    accept.old_state = ESTABLISHED;
    accept.new_state = ESTABLISHED;
    let Applied::Opened { id, .. } = w.apply(accept) else { panic!("accepted") };
    let Opener::Stack(stack) = w.stacks.opener(id, false) else {
        panic!("the stack read first is kept: {:?}", w.stacks.opener(id, false))
    };
    assert_eq!(w.stacks.stack(stack).map(|s| &*s.frames), Some(&[4, 5, 6][..]));
}

#[test]
fn a_stack_of_the_other_direction_is_never_a_connections_own() {
    // A process that accepts and dials (kprobe mode: no flag): an accept's stack read after
    // its socket was freed and the address reused by one of its connects is not that
    // connect's; and a connect's stack waiting for its event is not an accept's.
    let mut w = World::new();
    let id = w.open(0x1000, 40_001, false);
    let mut accept = record(0x1000, &[5, 6]);
    accept.kind = EventKind::Accept as u8;
    w.stacks.on_stack(&accept, &w.table, 0);
    assert_eq!(w.stacks.opener(id, false), Opener::NotSampled);
    assert_eq!(w.stacks.counters().attached, 0);
    // A stack that came first is taken only by a connection of its own direction.
    w.stack(0x2000, &[1, 2]);
    let second = w.open(0x2000, 40_002, false);
    assert!(matches!(w.stacks.opener(second, false), Opener::Stack(_)));
}

#[test]
fn an_accepts_stack_and_a_connects_at_its_reused_address_each_wait_for_their_own_event() {
    // A process that serves and dials (the Go leaker of the VM matrix): it accepts at 0x1000 and
    // closes at once, and its next dial's socket gets the freed address. Both stacks were read
    // before any of these events: each must still go to its own connection (the accept's did
    // not use to, and pushed the connect's out of the one slot of the address).
    let mut w = World::new();
    let accept_stack = StackRecord { kind: EventKind::Accept as u8, ..record(0x1000, &[4, 5, 6]) };
    w.stacks.on_stack(&accept_stack, &w.table, 0);
    w.stack(0x1000, &[1, 2]);
    let mut established = event(EventKind::Established, 0x1000, 8080, false);
    (established.old_state, established.flags) = (SYN_RECV, flags::INBOUND);
    assert!(matches!(w.apply(established), Applied::Backlogged { .. }));
    let mut accept = event(EventKind::Accept, 0x1000, 8080, true);
    (accept.tgid, accept.tid, accept.start_time_ns) = (PID, PID, START);
    accept.flags = flags::OWNER_CONTEXT | flags::INBOUND | flags::STACK_WANTED;
    (accept.old_state, accept.new_state) = (ESTABLISHED, ESTABLISHED);
    let Applied::Opened { id: accepted, .. } = w.apply(accept) else { panic!("accepted") };
    let Opener::Stack(stack) = w.stacks.opener(accepted, false) else { panic!("accept's stack") };
    assert_eq!(w.stacks.stack(stack).map(|s| &*s.frames), Some(&[4, 5, 6][..]));
    let mut release = event(EventKind::Release, 0x1000, 8080, false);
    release.flags = flags::OWNER_CONTEXT | flags::INBOUND;
    assert!(matches!(w.apply(release), Applied::Closed { .. }));
    let dialed = w.open(0x1000, 40_001, true);
    let Opener::Stack(stack) = w.stacks.opener(dialed, false) else {
        panic!("the connect's stack: {:?}", w.stacks.opener(dialed, false))
    };
    assert_eq!(w.stacks.stack(stack).map(|s| &*s.frames), Some(&[1, 2][..]));
    assert_eq!(w.stacks.counters().orphaned, 0);
    assert_eq!(w.stacks.counters().attached, 2);
}
