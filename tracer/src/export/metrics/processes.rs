//! Per-process series with bounded cardinality.
//!
//! At each scrape the exported processes are the `top_n` by open count plus every process with
//! an active alert; all others are summed into one `pid="other"` row.
//!
//! Gauges (open, by state, by age) are read from the table at scrape time, so exported rows
//! plus `other` always sum exactly to the table.
//!
//! Counters must never go down, although processes move in and out of the exported set. Each
//! process's totals at the previous scrape are remembered (`seen`); at a scrape, the increments
//! since then go to the process's own series if it is exported now, else to `other`. So:
//! - `other` only grows: it receives increments, never gives any back;
//! - a process's own series only grows, and while it is folded into `other` it stands still,
//!   resuming from the same value when it comes back (never re-counting what `other` counted);
//! - every increment is counted in exactly one series, so sums over series are exact.
//!
//! A series is identified by its labels `(pid, comm)`, and its value is kept per label pair:
//! it disappears when no process in the table holds those labels any more (the table drops an
//! exited process after its grace period; an exec changes the comm). Increments are never
//! missed as long as the scrape interval is shorter than the table's exit grace period
//! (60 s by default): the last ones a process makes (its releases at exit) are scraped before
//! the table drops it.
use std::collections::{HashMap, HashSet};

use super::{AGE_BOUNDS_NS, OTHER, containers::workload_labels};
use crate::{
    containers::Directory,
    detect::Alert,
    health::PerProcess,
    table::{ConnectionTable, Direction, Phase, ProcessKey, ProcessStats, StateCounts},
};

/// Both directions, in the order of the `[_; 2]` arrays below.
pub(super) const DIRECTIONS: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

pub(super) fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

/// The counters of one process (or of `other`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ProcessTotals {
    /// Indexed like [`DIRECTIONS`].
    pub opened: [u64; 2],
    pub closed: [u64; 2],
    pub connect_failed: u64,
}

impl ProcessTotals {
    pub(super) fn of(p: &ProcessStats) -> Self {
        Self {
            opened: DIRECTIONS.map(|d| p.direction(d).opened_total),
            closed: DIRECTIONS.map(|d| p.direction(d).closed_total),
            connect_failed: p.connect_failed,
        }
    }

    /// What was added since `earlier`. Saturating: table totals never go back, and if one ever
    /// did, nothing must be taken away from a series.
    pub(super) fn since(&self, earlier: &Self) -> Self {
        let sub = |now: [u64; 2], then: [u64; 2]| {
            [now[0].saturating_sub(then[0]), now[1].saturating_sub(then[1])]
        };
        Self {
            opened: sub(self.opened, earlier.opened),
            closed: sub(self.closed, earlier.closed),
            connect_failed: self.connect_failed.saturating_sub(earlier.connect_failed),
        }
    }

    fn add(&mut self, delta: &Self) {
        for i in 0..2 {
            self.opened[i] += delta.opened[i];
            self.closed[i] += delta.closed[i];
        }
        self.connect_failed += delta.connect_failed;
    }
}

/// One exported row: a process, or `other`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ProcessRow {
    pub pid: String,
    pub comm: String,
    /// `k8s_namespace`, `k8s_pod`, `k8s_container` as known (none for host processes and
    /// `other`). Not part of the series' identity: a process whose container resolves after
    /// its first scrape keeps its counter values under the new label set.
    pub workload: Vec<(&'static str, String)>,
    pub totals: ProcessTotals,
    pub open: u64,
    /// Open connections by state, in [`StateCounts::STATES`] order.
    pub states: [u64; StateCounts::STATES.len()],
    /// Open connections by age: `ages[i]` have an age `<= AGE_BOUNDS_NS[i]`; cumulative.
    pub ages_le: [u64; AGE_BOUNDS_NS.len()],
    /// Open connections seen in the connection scan (the `+Inf` age bucket).
    pub ages_total: u64,
    /// Idle and unread open connections at the latest leak evaluation.
    pub idle: u64,
    pub unread: u64,
}

impl ProcessRow {
    fn add_gauges(&mut self, p: &ProcessStats, health: &PerProcess) {
        self.open += u64::from(p.open);
        if let Some(h) = health.get(&p.key) {
            self.idle += u64::from(h.idle);
            self.unread += u64::from(h.unread);
        }
        for (slot, state) in self.states.iter_mut().zip(StateCounts::STATES) {
            *slot += u64::from(p.states.get(state));
        }
    }

    fn add_age(&mut self, age_ns: u64) {
        // Cumulative: counted in every bucket whose bound it does not exceed.
        let first = AGE_BOUNDS_NS.partition_point(|&bound| bound < age_ns);
        for n in self.ages_le.iter_mut().skip(first) {
            *n += 1;
        }
        self.ages_total += 1;
    }
}

/// What one scrape exports per process.
#[derive(Debug)]
pub(super) struct ProcessSeries {
    /// Exported processes, most open first.
    pub rows: Vec<ProcessRow>,
    pub other: ProcessRow,
    /// `(pid, comm)` labels of every exported process, for the alert series.
    pub labels: HashMap<ProcessKey, (String, String)>,
    /// The workload labels of every exported process.
    pub workloads: HashMap<ProcessKey, Vec<(&'static str, String)>>,
}

/// A series' identity: its `pid` and `comm` labels.
type SeriesLabels = (u32, String);

#[derive(Clone, Copy, Debug, Default)]
struct SeriesState {
    /// The value of the series.
    value: ProcessTotals,
    exported_last_scrape: bool,
}

#[derive(Debug, Default)]
pub(super) struct ProcessExport {
    /// Each process's table totals at the previous scrape.
    seen: HashMap<ProcessKey, ProcessTotals>,
    /// Per label pair rather than per process: if a pid is reused by a process with the same
    /// comm while the old one is in its grace period, the series continues instead of jumping
    /// from one process's value to the other's.
    series: HashMap<SeriesLabels, SeriesState>,
    /// The `other` counters: everything credited while not exported, ever.
    other: ProcessTotals,
}

impl ProcessExport {
    pub(super) fn collect(
        &mut self,
        table: &ConnectionTable,
        alerts: &[&Alert],
        health: &PerProcess,
        containers: &Directory,
        now_ns: u64,
        top_n: usize,
    ) -> ProcessSeries {
        let processes: Vec<(&ProcessStats, SeriesLabels)> =
            table.processes().map(|p| (p, (p.pid(), p.comm().into_owned()))).collect();
        let chosen = self.choose(&processes, alerts, top_n);
        let exported: HashSet<ProcessKey> = chosen.iter().map(|&i| processes[i].0.key).collect();

        // Counters: every increment since the last scrape goes to exactly one series.
        for state in self.series.values_mut() {
            state.exported_last_scrape = false;
        }
        for (p, labels) in &processes {
            let now = ProcessTotals::of(p);
            let seen = self.seen.entry(p.key).or_default();
            let delta = now.since(seen);
            *seen = now;
            if exported.contains(&p.key) {
                let state = self.series.entry(labels.clone()).or_default();
                state.value.add(&delta);
                state.exported_last_scrape = true;
            } else {
                self.other.add(&delta);
            }
        }
        // Forget processes the table dropped, and series whose labels no process holds.
        self.seen.retain(|key, _| table.process(*key).is_some());
        let held: HashSet<&SeriesLabels> = processes.iter().map(|(_, labels)| labels).collect();
        self.series.retain(|labels, _| held.contains(labels));

        let mut rows = Vec::with_capacity(chosen.len());
        let mut row_of: HashMap<ProcessKey, usize> = HashMap::with_capacity(chosen.len());
        let mut labels = HashMap::with_capacity(chosen.len());
        let mut workloads = HashMap::with_capacity(chosen.len());
        for &i in &chosen {
            let (p, series_labels) = &processes[i];
            let workload = workload_labels(containers.container(p.cgroup_id));
            workloads.insert(p.key, workload.clone());
            let mut row = ProcessRow {
                pid: p.pid().to_string(),
                comm: series_labels.1.clone(),
                workload,
                totals: self.series.get(series_labels).map(|s| s.value).unwrap_or_default(),
                ..ProcessRow::default()
            };
            row.add_gauges(p, health);
            labels.insert(p.key, (row.pid.clone(), row.comm.clone()));
            row_of.insert(p.key, rows.len());
            rows.push(row);
        }
        let mut other = ProcessRow {
            pid: OTHER.to_owned(),
            comm: OTHER.to_owned(),
            totals: self.other,
            ..ProcessRow::default()
        };
        for (p, _) in processes.iter().filter(|(p, _)| !exported.contains(&p.key)) {
            other.add_gauges(p, health);
        }

        // Ages: one pass over the connections; only open, attributed ones count.
        for view in table.connections() {
            if view.phase() != Phase::Open {
                continue;
            }
            let Some(owner) = view.owner_key() else {
                continue;
            };
            let age_ns = view.conn.age_ns(now_ns);
            match row_of.get(&owner).and_then(|&i| rows.get_mut(i)) {
                Some(row) => row.add_age(age_ns),
                None => other.add_age(age_ns),
            }
        }
        ProcessSeries { rows, other, labels, workloads }
    }

    /// Indices into `processes` of the top `top_n` by open count plus every alerting process,
    /// one process per label pair, most open first.
    fn choose(
        &self,
        processes: &[(&ProcessStats, SeriesLabels)],
        alerts: &[&Alert],
        top_n: usize,
    ) -> Vec<usize> {
        let alerting: HashSet<ProcessKey> = alerts
            .iter()
            .map(|a| ProcessKey { pid: a.pid, start_time_ns: a.start_time_ns })
            .collect();
        let was_exported =
            |labels: &SeriesLabels| self.series.get(labels).is_some_and(|s| s.exported_last_scrape);
        let mut ranked: Vec<(usize, bool)> = processes
            .iter()
            .enumerate()
            .map(|(i, (_, labels))| (i, was_exported(labels)))
            .collect();
        ranked.sort_by(|&(a, a_was), &(b, b_was)| {
            let (pa, pb) = (processes[a].0, processes[b].0);
            pb.open
                .cmp(&pa.open)
                // Ties keep what was exported, so processes with equal counts do not take
                // turns (each turn would hide one series and show another).
                .then(b_was.cmp(&a_was))
                .then(pa.key.cmp(&pb.key))
        });
        let mut chosen: Vec<usize> = Vec::with_capacity(top_n.min(ranked.len()) + alerting.len());
        // A reused pid with the same comm (the old process still in its exit grace period):
        // one label pair, one series, held by the newer process.
        let mut by_labels: HashMap<&SeriesLabels, usize> = HashMap::new();
        for (rank, &(i, _)) in ranked.iter().enumerate() {
            let (p, labels) = &processes[i];
            if rank >= top_n && !alerting.contains(&p.key) {
                continue;
            }
            match by_labels.get(labels).and_then(|&slot| chosen.get_mut(slot)) {
                Some(holder) => {
                    if p.key.start_time_ns > processes[*holder].0.key.start_time_ns {
                        *holder = i;
                    }
                }
                None => {
                    by_labels.insert(labels, chosen.len());
                    chosen.push(i);
                }
            }
        }
        chosen
    }
}
