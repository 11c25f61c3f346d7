//! TIME_WAIT attribution. The side that closes first (ESTABLISHED -> FIN_WAIT1, inside its own
//! close() or shutdown()) is the one left with the TIME_WAIT socket; the kernel's TIME_WAIT
//! socket names no process, so the closer is remembered with the connection's addresses when
//! it closes and matched against the TIME_WAIT sockets of each scan.
//!
//! Memory is bounded per namespace by its `tcp_max_tw_buckets` (the kernel holds no more
//! TIME_WAIT sockets than that); a close that finds its namespace full is counted in
//! [`Closers::overflow_total`] and not remembered.
use std::collections::{HashMap, HashSet};

use tracer_common::tcp_state;

use crate::table::{ProcessKey, TupleKey};

#[derive(Clone, Copy, Debug)]
struct Closed {
    closer: ProcessKey,
    at_ns: u64,
    /// Counted in its closer's total already (a scan saw it in TIME_WAIT).
    counted: bool,
}

/// Remembered active closes and what the last scan matched.
#[derive(Debug, Default)]
pub struct Closers {
    entries: HashMap<TupleKey, Closed>,
    per_netns: HashMap<u32, usize>,
    capacity: HashMap<u32, usize>,
    default_capacity: usize,
    overflow_total: u64,
    /// TIME_WAIT sockets alive at the last scan, by the process that caused them.
    now: HashMap<ProcessKey, u32>,
    /// TIME_WAIT sockets ever matched, by the process that caused them.
    total: HashMap<ProcessKey, u64>,
    /// The same over every process, kept when processes are forgotten.
    total_all: u64,
}

impl Closers {
    /// States a connection passes through between its active close and the end of TIME_WAIT:
    /// the only sockets of a scan [`Closers::observe`] needs.
    pub fn is_closing(state: u8) -> bool {
        matches!(
            state,
            tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::TIME_WAIT
        )
    }

    /// `default_capacity` bounds a namespace whose `tcp_max_tw_buckets` is not known yet.
    pub fn new(default_capacity: usize) -> Self {
        Self { default_capacity, ..Self::default() }
    }

    /// Sets a namespace's bound (its `tcp_max_tw_buckets`).
    pub fn set_capacity(&mut self, netns: u32, capacity: usize) {
        self.capacity.insert(netns, capacity);
    }

    /// Whether an event moving a connection from `old` to `new` is its active close: leaving
    /// ESTABLISHED for FIN_WAIT1, or (kprobe modes, which report tcp_close() on entry) a
    /// release while still ESTABLISHED.
    pub fn is_active_close(old: u8, new: u8) -> bool {
        old == tcp_state::ESTABLISHED
            && matches!(new, tcp_state::FIN_WAIT1 | tcp_state::ESTABLISHED)
    }

    /// `closer` closed the connection `tuple` first at `at_ns`.
    pub fn remember(&mut self, tuple: TupleKey, closer: ProcessKey, at_ns: u64) {
        let closed = Closed { closer, at_ns, counted: false };
        if let Some(slot) = self.entries.get_mut(&tuple) {
            *slot = closed;
            return;
        }
        let capacity = self.capacity.get(&tuple.netns).copied().unwrap_or(self.default_capacity);
        let used = self.per_netns.entry(tuple.netns).or_default();
        if *used >= capacity {
            self.overflow_total += 1;
            return;
        }
        *used += 1;
        self.entries.insert(tuple, closed);
    }

    /// Who closed `tuple` first, if remembered.
    pub fn closer_of(&self, tuple: &TupleKey) -> Option<ProcessKey> {
        self.entries.get(tuple).map(|c| c.closer)
    }

    /// Matches a scan's sockets (`(tuple, state)`), which started at `scan_started_ns`: counts
    /// the TIME_WAIT ones per closer, and forgets closes the scan no longer finds closing (a
    /// close remembered after the scan started is kept: the scan may predate it).
    pub fn observe(
        &mut self,
        scan_started_ns: u64,
        sockets: impl IntoIterator<Item = (TupleKey, u8)>,
    ) {
        self.now.clear();
        let mut alive: HashSet<TupleKey> = HashSet::new();
        for (tuple, state) in sockets {
            if !Self::is_closing(state) {
                continue;
            }
            let Some(closed) = self.entries.get_mut(&tuple) else { continue };
            alive.insert(tuple);
            if state == tcp_state::TIME_WAIT {
                *self.now.entry(closed.closer).or_default() += 1;
                if !closed.counted {
                    closed.counted = true;
                    *self.total.entry(closed.closer).or_default() += 1;
                    self.total_all += 1;
                }
            }
        }
        let per_netns = &mut self.per_netns;
        self.entries.retain(|tuple, closed| {
            let keep = alive.contains(tuple) || closed.at_ns >= scan_started_ns;
            if !keep && let Some(n) = per_netns.get_mut(&tuple.netns) {
                *n = n.saturating_sub(1);
            }
            keep
        });
    }

    /// TIME_WAIT sockets `process` caused that the last scan found.
    pub fn time_wait_caused(&self, process: ProcessKey) -> u32 {
        self.now.get(&process).copied().unwrap_or(0)
    }

    /// TIME_WAIT sockets `process` caused, counted once each when a scan first found them.
    pub fn time_wait_caused_total(&self, process: ProcessKey) -> u64 {
        self.total.get(&process).copied().unwrap_or(0)
    }

    /// TIME_WAIT sockets caused since start over every process, gone ones included.
    pub fn caused_total_all(&self) -> u64 {
        self.total_all
    }

    /// TIME_WAIT sockets alive at the last scan, by the process that caused them.
    pub fn caused_now(&self) -> &HashMap<ProcessKey, u32> {
        &self.now
    }

    /// Closes not remembered because their namespace's bound was reached.
    pub fn overflow_total(&self) -> u64 {
        self.overflow_total
    }

    /// Closes remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the totals of processes `keep` rejects (gone from the table); their remembered
    /// closes stay until their TIME_WAIT ends.
    pub fn retain_processes(&mut self, keep: impl Fn(ProcessKey) -> bool) {
        self.total.retain(|p, _| keep(*p));
        self.now.retain(|p, _| keep(*p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(local_port: u16) -> TupleKey {
        TupleKey {
            netns: 1,
            local: format!("127.0.0.1:{local_port}").parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
        }
    }

    const A: ProcessKey = ProcessKey { pid: 10, start_time_ns: 0 };

    #[test]
    fn time_wait_is_counted_for_its_closer_and_totals_count_once() {
        let mut c = Closers::new(100);
        c.remember(tuple(1), A, 5);
        c.remember(tuple(2), A, 6);
        c.observe(10, [(tuple(1), tcp_state::TIME_WAIT), (tuple(2), tcp_state::FIN_WAIT2)]);
        assert_eq!(c.time_wait_caused(A), 1);
        assert_eq!(c.time_wait_caused_total(A), 1);
        c.observe(20, [(tuple(1), tcp_state::TIME_WAIT), (tuple(2), tcp_state::TIME_WAIT)]);
        assert_eq!(c.time_wait_caused(A), 2);
        assert_eq!(c.time_wait_caused_total(A), 2, "tuple 1 counted once");
        // TIME_WAIT over: both forgotten, the total stays.
        c.observe(30, []);
        assert_eq!((c.time_wait_caused(A), c.time_wait_caused_total(A), c.len()), (0, 2, 0));
    }

    #[test]
    fn a_close_after_the_scan_started_is_kept_and_sockets_nobody_remembered_are_nobodys() {
        let mut c = Closers::new(100);
        c.remember(tuple(1), A, 15);
        c.observe(10, [(tuple(3), tcp_state::TIME_WAIT)]);
        assert_eq!((c.len(), c.time_wait_caused(A)), (1, 0));
        assert_eq!(c.closer_of(&tuple(1)), Some(A));
    }

    #[test]
    fn memory_is_bounded_per_namespace_and_overflow_counted() {
        let mut c = Closers::new(100);
        c.set_capacity(1, 2);
        for port in 1..=5 {
            c.remember(tuple(port), A, 1);
        }
        assert_eq!((c.len(), c.overflow_total()), (2, 3));
        c.observe(10, []);
        c.remember(tuple(9), A, 11);
        assert_eq!(c.len(), 1, "forgotten closes free their slots");
    }

    #[test]
    fn only_leaving_established_is_an_active_close() {
        use tcp_state::*;
        assert!(Closers::is_active_close(ESTABLISHED, FIN_WAIT1));
        assert!(!Closers::is_active_close(CLOSE_WAIT, LAST_ACK), "the passive side");
        assert!(!Closers::is_active_close(ESTABLISHED, CLOSE), "a reset leaves no TIME_WAIT");
    }
}

#[cfg(test)]
mod size {
    /// docs/leak-detection.md states the bytes per remembered close.
    #[test]
    fn a_remembered_close_takes_the_documented_bytes() {
        let entry = size_of::<(super::TupleKey, super::Closed)>();
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/leak-detection.md"
        ))
        .expect("docs");
        assert!(doc.contains(&format!("{entry} bytes per remembered close")), "{entry}");
    }
}
