//! Lifetimes of closed connections, per command name, in fixed buckets.
//!
//! The event path only bumps plain arrays ([`LifetimeHistograms::observe`]: one hash lookup,
//! no allocation once the comm is known); which comms get their own series, and the folding of
//! the rest into `other`, happen at scrape time ([`LifetimeHistograms::collect`]).
//!
//! Monotonic `other`: each comm accumulates what it observed since the last scrape
//! (`pending`). At a scrape, that goes into the comm's own series if the comm is exported now,
//! else into `other`; so every observation is counted exactly once, `other` only grows, and a
//! comm's own series resumes where it stopped when it comes back into the top N.
use std::collections::{HashMap, HashSet};

use super::OTHER;
use crate::events::comm_str;

/// Upper bounds of the buckets, in nanoseconds: from RPC-short to day-long pooled connections.
pub(super) const LIFETIME_BOUNDS_NS: [u64; 11] = [
    1_000_000,              // 1 ms
    10_000_000,             // 10 ms
    100_000_000,            // 100 ms
    1_000_000_000,          // 1 s
    10 * 1_000_000_000,     // 10 s
    60 * 1_000_000_000,     // 1 min
    300 * 1_000_000_000,    // 5 min
    1_800 * 1_000_000_000,  // 30 min
    3_600 * 1_000_000_000,  // 1 h
    21_600 * 1_000_000_000, // 6 h
    86_400 * 1_000_000_000, // 1 day
];

/// Comms tracked at once (memory bound). Comms beyond it count towards `other` until idle
/// ones are evicted.
pub(super) const MAX_TRACKED_COMMS: usize = 1024;

/// A comm with no closed connection for this long is forgotten (its series disappears, as an
/// exited process's do).
pub(super) const COMM_IDLE_EVICT_NS: u64 = 3_600 * 1_000_000_000;

const BUCKETS: usize = LIFETIME_BOUNDS_NS.len() + 1;

/// Counts per bucket (not cumulative; the last one is above every bound), sum and count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct LifetimeCounts {
    buckets: [u64; BUCKETS],
    sum_ns: u128,
    count: u64,
}

impl LifetimeCounts {
    fn observe(&mut self, lifetime_ns: u64) {
        // First bound >= lifetime: buckets are `le`.
        let bucket = LIFETIME_BOUNDS_NS.partition_point(|&bound| bound < lifetime_ns);
        if let Some(n) = self.buckets.get_mut(bucket) {
            *n += 1;
        }
        self.sum_ns += u128::from(lifetime_ns);
        self.count += 1;
    }

    fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_ns += other.sum_ns;
        self.count += other.count;
    }

    pub(super) fn count(&self) -> u64 {
        self.count
    }

    pub(super) fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// Cumulative counts, one per bound in [`LIFETIME_BOUNDS_NS`] (`+Inf` is [`Self::count`]).
    pub(super) fn cumulative(&self) -> [u64; LIFETIME_BOUNDS_NS.len()] {
        let mut out = [0; LIFETIME_BOUNDS_NS.len()];
        let mut running = 0;
        for (slot, n) in out.iter_mut().zip(self.buckets) {
            running += n;
            *slot = running;
        }
        out
    }
}

/// Bucket bounds in seconds, as the exposition labels them.
pub(super) fn bounds_seconds() -> [f64; LIFETIME_BOUNDS_NS.len()] {
    LIFETIME_BOUNDS_NS.map(|ns| ns as f64 / 1e9)
}

#[derive(Debug)]
struct CommSlot {
    comm: [u8; 16],
    /// Observed since the last scrape, not yet given to a series.
    pending: LifetimeCounts,
    /// This comm's own series.
    exported: LifetimeCounts,
    /// Everything observed while tracked: the rank for the top N.
    observed: u64,
    exported_last_scrape: bool,
    last_active_ns: Option<u64>,
}

/// The lifetime histograms to expose at one scrape.
#[derive(Debug)]
pub(super) struct LifetimeSeries {
    /// `(comm, counts)`, most observed first.
    pub comms: Vec<(String, LifetimeCounts)>,
    pub other: LifetimeCounts,
}

#[derive(Debug, Default)]
pub(super) struct LifetimeHistograms {
    index: HashMap<[u8; 16], usize>,
    slots: Vec<CommSlot>,
    /// The `other` series: comms not exported at a scrape, comms beyond [`MAX_TRACKED_COMMS`],
    /// and a process whose comm is literally "other".
    other: LifetimeCounts,
}

impl LifetimeHistograms {
    /// Hot path: one closed connection of a process named `comm`.
    pub(super) fn observe(&mut self, comm: &[u8; 16], lifetime_ns: u64) {
        let key = normalized(comm);
        if let Some(slot) = self.index.get(&key).and_then(|&i| self.slots.get_mut(i)) {
            slot.pending.observe(lifetime_ns);
            slot.observed += 1;
            return;
        }
        if self.slots.len() >= MAX_TRACKED_COMMS || trimmed(&key) == OTHER.as_bytes() {
            self.other.observe(lifetime_ns);
            return;
        }
        let mut slot = CommSlot {
            comm: key,
            pending: LifetimeCounts::default(),
            exported: LifetimeCounts::default(),
            observed: 1,
            exported_last_scrape: false,
            last_active_ns: None,
        };
        slot.pending.observe(lifetime_ns);
        self.index.insert(key, self.slots.len());
        self.slots.push(slot);
    }

    /// Scrape time: picks the `top_n` most observed comms, hands every pending observation to
    /// exactly one series, and forgets comms idle for [`COMM_IDLE_EVICT_NS`].
    pub(super) fn collect(&mut self, now_ns: u64, top_n: usize) -> LifetimeSeries {
        for slot in &mut self.slots {
            if slot.pending.count > 0 {
                slot.last_active_ns = Some(now_ns);
            }
        }
        let mut ranked: Vec<usize> = (0..self.slots.len()).collect();
        ranked.sort_by(|&a, &b| {
            let (a, b) = (&self.slots[a], &self.slots[b]);
            b.observed
                .cmp(&a.observed)
                // Ties keep what was exported, so equal comms do not take turns.
                .then(b.exported_last_scrape.cmp(&a.exported_last_scrape))
                .then(a.comm.cmp(&b.comm))
        });
        let mut labels: HashSet<String> = HashSet::new();
        let mut chosen = Vec::new();
        for &i in &ranked {
            if chosen.len() >= top_n {
                break;
            }
            let label = comm_str(&self.slots[i].comm).into_owned();
            // Two byte strings can read the same once made UTF-8: one series per label.
            if labels.insert(label) {
                chosen.push(i);
            }
        }
        let mut exported = vec![false; self.slots.len()];
        for &i in &chosen {
            exported[i] = true;
        }
        for (slot, &is_exported) in self.slots.iter_mut().zip(&exported) {
            let pending = std::mem::take(&mut slot.pending);
            if is_exported {
                slot.exported.add(&pending);
            } else {
                self.other.add(&pending);
            }
            slot.exported_last_scrape = is_exported;
        }
        let comms = chosen
            .iter()
            .map(|&i| (comm_str(&self.slots[i].comm).into_owned(), self.slots[i].exported))
            .collect();
        self.evict_idle(now_ns);
        LifetimeSeries { comms, other: self.other }
    }

    fn evict_idle(&mut self, now_ns: u64) {
        let before = self.slots.len();
        self.slots.retain(|slot| {
            slot.last_active_ns.is_none_or(|at| now_ns.saturating_sub(at) < COMM_IDLE_EVICT_NS)
        });
        if self.slots.len() != before {
            self.index.clear();
            for (i, slot) in self.slots.iter().enumerate() {
                self.index.insert(slot.comm, i);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.slots.len()
    }
}

/// The name up to its first NUL, zero-padded: bytes after the terminator never split a comm.
fn normalized(comm: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let len = trimmed(comm).len();
    out[..len].copy_from_slice(&comm[..len]);
    out
}

fn trimmed(comm: &[u8; 16]) -> &[u8] {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..len]
}
