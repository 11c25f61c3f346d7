//! Micro-benchmarks of the daemon's per-event work: decoding ring buffer records
//! (`events::decode`) and applying them to the connection table (`ConnectionTable::apply`, plus
//! `Metrics::observe`, which the daemon calls right after it). Reported in events per second;
//! the target is at least 5 million events/s on one core for decode + table update.
//!
//! The events are what the kernel programs emit for loopback churn in tracepoint mode, seven per
//! connection: connect, established (client), established (server, into the backlog), accept,
//! release (server closes first), close_wait (client), release (client). They run against an
//! empty table and against one already holding 100,000 open sockets (a busy server), where
//! every lookup misses the CPU caches.
//!
//! Before the benchmarks it prints the table's heap bytes per tracked socket, measured with a
//! counting allocator (the daemon's RSS per socket can only be larger).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use criterion::{BenchmarkId, Criterion, Throughput};
use tracer::{events, export::Metrics, table::ConnectionTable};
use tracer_common::{AF_INET, ConnEvent, EventKind, Tuple, flags, tcp_state};

/// Counts live heap bytes, to measure the table's memory.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live =
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let delta = new_size as isize - layout.size() as isize;
        let live = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CLIENT_PID: u32 = 4242;
const SERVER_PID: u32 = 4343;
const SERVER_PORT: u16 = 8080;

/// Builds the records of many loopback connections, as the kernel programs emit them.
struct Gen {
    now: u64,
    events: Vec<ConnEvent>,
}

impl Gen {
    fn new() -> Self {
        Self { now: 1_000_000_000, events: Vec::new() }
    }

    fn event(
        &mut self,
        kind: EventKind,
        sock: u64,
        (old, new): (u8, u8),
        owner: Option<u32>,
        inbound: bool,
        tuple: Tuple,
    ) {
        self.now += 1_500;
        let mut comm = [0u8; 16];
        let mut fl = if inbound { flags::INBOUND } else { 0 };
        let (tgid, start) = match owner {
            Some(pid) => {
                comm[..4].copy_from_slice(if pid == CLIENT_PID { b"load" } else { b"srvr" });
                fl |= flags::OWNER_CONTEXT;
                (pid, 500_000_000 + u64::from(pid))
            }
            None => (0, 0),
        };
        self.events.push(ConnEvent {
            timestamp_ns: self.now,
            sock,
            start_time_ns: start,
            cgroup_id: if owner.is_some() { 7 } else { 0 },
            netns: 4_026_531_840,
            tgid,
            tid: tgid,
            tuple,
            kind: kind as u8,
            flags: fl,
            old_state: old,
            new_state: new,
            comm,
            error: 0,
            _pad: 0,
            bytes_received: 0,
            bytes_acked: 0,
            socket_inode: 0,
        });
    }

    fn tuples(port: u16) -> (Tuple, Tuple) {
        let mut lo = [0u8; 16];
        lo[..4].copy_from_slice(&[127, 0, 0, 1]);
        let client = Tuple {
            local_addr: lo,
            remote_addr: lo,
            local_port: port,
            remote_port: SERVER_PORT,
            family: AF_INET.into(),
        };
        let server = Tuple {
            local_addr: lo,
            remote_addr: lo,
            local_port: SERVER_PORT,
            remote_port: port,
            family: AF_INET.into(),
        };
        (client, server)
    }

    /// Client and server sockets of connection `i`: slab-like kernel addresses.
    fn socks(i: u64) -> (u64, u64) {
        (0xffff_8880_1000_0000 + i * 0x1000, 0xffff_8880_1000_0800 + i * 0x1000)
    }

    /// Connect, handshake, accept: both ends open.
    fn open(&mut self, i: u64) {
        use tcp_state::*;
        let (c, s) = Self::socks(i);
        let port = 32_768 + (i % 28_000) as u16;
        let (ct, st) = Self::tuples(port);
        let connecting = Tuple { local_port: 0, ..ct };
        self.event(EventKind::Connect, c, (CLOSE, SYN_SENT), Some(CLIENT_PID), false, connecting);
        self.event(EventKind::Established, c, (SYN_SENT, ESTABLISHED), None, false, ct);
        self.event(EventKind::Established, s, (SYN_RECV, ESTABLISHED), None, true, st);
        self.event(EventKind::Accept, s, (ESTABLISHED, ESTABLISHED), Some(SERVER_PID), true, st);
    }

    /// Server closes first, client reads EOF and closes.
    fn close(&mut self, i: u64) {
        use tcp_state::*;
        let (c, s) = Self::socks(i);
        let port = 32_768 + (i % 28_000) as u16;
        let (ct, st) = Self::tuples(port);
        self.event(EventKind::Release, s, (ESTABLISHED, FIN_WAIT1), Some(SERVER_PID), true, st);
        self.event(EventKind::StateChange, c, (ESTABLISHED, CLOSE_WAIT), None, false, ct);
        self.event(EventKind::Release, c, (CLOSE_WAIT, LAST_ACK), Some(CLIENT_PID), false, ct);
    }
}

/// `n` connections starting at index `first`, up to `window` of them open at once (the
/// interleaving several load threads produce); every connection is closed at the end.
fn churn(first: u64, n: u64, window: u64) -> Vec<ConnEvent> {
    let mut g = Gen::new();
    for i in 0..n {
        g.open(first + i);
        if i >= window {
            g.close(first + i - window);
        }
    }
    for i in n.saturating_sub(window)..n {
        g.close(first + i);
    }
    g.events
}

/// A table already holding `connections` open connections (two sockets each).
fn populated(connections: u64) -> (ConnectionTable, Metrics) {
    let mut table = ConnectionTable::default();
    let mut metrics = Metrics::new();
    // One connection's events at a time, so that only the table grows (the memory report).
    let mut g = Gen::new();
    for i in 0..connections {
        g.events.clear();
        g.open(i);
        for e in &g.events {
            let applied = table.apply(e);
            metrics.observe(&applied, &table);
        }
    }
    (table, metrics)
}

fn as_bytes(events: &[ConnEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * ConnEvent::SIZE);
    for e in events {
        // SAFETY: viewing a plain #[repr(C)] record (no uninitialised bytes: `_pad` is explicit)
        // as bytes, like the ring buffer holds it.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts((e as *const ConnEvent).cast::<u8>(), ConnEvent::SIZE)
        });
    }
    out
}

fn report_memory() {
    const CONNECTIONS: u64 = 50_000;
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (table, metrics) = populated(CONNECTIONS);
    let sockets = table.tracked_connections();
    let live = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "table memory: {:.1} heap bytes per tracked socket ({} sockets, {} bytes; peak while growing {:.1} bytes/socket); size_of Connection = {} bytes, SocketKey = {} bytes, ConnEvent = {} bytes",
        live as f64 / sockets as f64,
        sockets,
        live,
        peak as f64 / sockets as f64,
        std::mem::size_of::<tracer::table::Connection>(),
        std::mem::size_of::<tracer::table::SocketKey>(),
        ConnEvent::SIZE,
    );
    drop((table, metrics));
}

fn benches(c: &mut Criterion) {
    // 1,000 connections per iteration, 16 open at once: 7,000 events.
    const CONNECTIONS: u64 = 1_000;
    const WINDOW: u64 = 16;
    const BACKGROUND: u64 = 50_000;
    let events = churn(BACKGROUND, CONNECTIONS, WINDOW);
    let bytes = as_bytes(&events);
    let n = events.len() as u64;

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(n));
    group.bench_function("records", |b| {
        b.iter(|| {
            for record in bytes.chunks_exact(ConnEvent::SIZE) {
                black_box(events::decode(black_box(record)));
            }
        })
    });
    group.finish();

    for (label, background) in [("empty", 0), ("100k_sockets", BACKGROUND)] {
        let mut group = c.benchmark_group("table_apply");
        group.throughput(Throughput::Elements(n));
        // The churn closes everything it opens, so the table is back where it started after
        // every iteration and one table serves them all.
        let (mut table, mut metrics) = populated(background);
        group.bench_with_input(BenchmarkId::from_parameter(label), &events, |b, events| {
            b.iter(|| {
                for e in events {
                    let applied = table.apply(e);
                    metrics.observe(&applied, &table);
                    black_box(applied);
                }
            })
        });
        group.finish();

        let mut group = c.benchmark_group("decode_and_apply");
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(label), &bytes, |b, bytes| {
            b.iter(|| {
                for record in bytes.chunks_exact(ConnEvent::SIZE) {
                    if let Some(e) = events::decode(record) {
                        let applied = table.apply(&e);
                        metrics.observe(&applied, &table);
                        black_box(applied);
                    }
                }
            })
        });
        group.finish();
        assert_eq!(
            table.tracked_connections() as u64,
            2 * background,
            "the churn must leave the table as it found it"
        );
    }
}

/// Under `cargo test --all-targets` (no `--bench`; libtest flags such as `--test-threads`, which
/// criterion rejects): run every benchmark's work once on a small table and check it.
fn check_once() {
    let events = churn(5_000, 200, 16);
    let bytes = as_bytes(&events);
    for background in [0, 5_000] {
        let (mut table, mut metrics) = populated(background);
        for record in bytes.chunks_exact(ConnEvent::SIZE) {
            let e = events::decode(record).expect("every record decodes");
            let applied = table.apply(&e);
            metrics.observe(&applied, &table);
        }
        assert_eq!(
            table.tracked_connections() as u64,
            2 * background,
            "the churn must leave the table as it found it"
        );
        assert_eq!(*table.counters(), Default::default(), "the generated events must all match");
    }
    println!("pipeline benchmarks: checked once (run them with `cargo bench -p tracer`)");
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        check_once();
        return;
    }
    report_memory();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
