//! Workload labels and per-container series.
//!
//! Per-process series carry `k8s_namespace`, `k8s_pod` and `k8s_container` when the process runs
//! in a container (never `namespace`, `pod` or `container`: Prometheus' Kubernetes discovery
//! attaches those to tracer's own pod, and would overwrite or be overwritten by them). Host
//! processes carry none (an absent label reads as the empty string in PromQL).
//!
//! Per-container series (`tcp_tracer_container_*`) follow the per-process rules: the top N
//! containers by open connections plus every container with an alert, the rest summed into
//! `container_id="other"`; counters credited by increments since the previous scrape, so they
//! never go down as containers move in and out of the exported set. A container's series go
//! away when no process of it is left in the table: one exit grace period after its last
//! process exited. Host processes and pod sandboxes (pause) are not in these families (their
//! per-process series are).
use std::collections::{HashMap, HashSet};

use super::{OTHER, processes::ProcessTotals};
use crate::{
    containers::{Container, Directory},
    detect::Alert,
    table::{ConnectionTable, ProcessKey},
};

/// The label names, by what they name.
pub(super) const NAMESPACE: &str = "k8s_namespace";
pub(super) const POD: &str = "k8s_pod";
pub(super) const CONTAINER: &str = "k8s_container";
pub(super) const CONTAINER_ID: &str = "container_id";

/// `(label name, value)` pairs.
pub(super) type LabelValues = Vec<(&'static str, String)>;

/// The workload labels of a process in `container`: those known, in a fixed order; none for a
/// host process, no `k8s_container` for a pod's sandbox (it is no container of its own).
pub(super) fn workload_labels(container: Option<&Container>) -> LabelValues {
    let Some(c) = container else { return Vec::new() };
    let mut out = Vec::with_capacity(3);
    if let Some(ns) = &c.namespace {
        out.push((NAMESPACE, ns.clone()));
    }
    if let Some(pod) = &c.pod {
        out.push((POD, pod.clone()));
    }
    if !c.is_sandbox() {
        out.push((CONTAINER, c.label().to_owned()));
    }
    out
}

/// One exported container row (or `other`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ContainerRow {
    /// `container_id` (short id, or `other`), then the workload labels.
    pub labels: Vec<(&'static str, String)>,
    pub open: u64,
    pub opened: u64,
    pub closed: u64,
    /// Active leak alerts of its processes.
    pub alerts: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Series {
    opened: u64,
    closed: u64,
    exported_last_scrape: bool,
}

#[derive(Debug, Default)]
pub(super) struct ContainerExport {
    /// Each containerised process's totals at the previous scrape.
    seen: HashMap<ProcessKey, ProcessTotals>,
    /// Per full container id.
    series: HashMap<String, Series>,
    other: Series,
}

impl ContainerExport {
    pub(super) fn collect(
        &mut self,
        table: &ConnectionTable,
        containers: &Directory,
        alerts: &[&Alert],
        top_n: usize,
    ) -> Vec<ContainerRow> {
        struct Acc<'a> {
            container: &'a Container,
            open: u64,
            alerts: u64,
            /// Increments since the previous scrape.
            opened: u64,
            closed: u64,
        }
        let mut by_id: HashMap<&str, Acc<'_>> = HashMap::new();
        let alerting: HashMap<ProcessKey, u64> = alerts.iter().fold(HashMap::new(), |mut m, a| {
            *m.entry(ProcessKey { pid: a.pid, start_time_ns: a.start_time_ns }).or_default() += 1;
            m
        });
        let mut present = HashSet::new();
        for p in table.processes() {
            let Some(c) = containers.container(p.cgroup_id).filter(|c| !c.is_sandbox()) else {
                continue;
            };
            present.insert(p.key);
            let now = ProcessTotals::of(p);
            let seen = self.seen.entry(p.key).or_default();
            let delta = now.since(seen);
            *seen = now;
            let acc = by_id.entry(c.id.as_str()).or_insert(Acc {
                container: c,
                open: 0,
                alerts: 0,
                opened: 0,
                closed: 0,
            });
            acc.open += u64::from(p.open);
            acc.alerts += alerting.get(&p.key).copied().unwrap_or(0);
            acc.opened += delta.opened.iter().sum::<u64>();
            acc.closed += delta.closed.iter().sum::<u64>();
        }
        self.seen.retain(|key, _| present.contains(key));

        // Top N by open, plus every alerting one; ties keep what was exported.
        let mut ranked: Vec<&Acc<'_>> = by_id.values().collect();
        let was = |id: &str| self.series.get(id).is_some_and(|s| s.exported_last_scrape);
        ranked.sort_by(|a, b| {
            b.open
                .cmp(&a.open)
                .then(was(&b.container.id).cmp(&was(&a.container.id)))
                .then(a.container.id.cmp(&b.container.id))
        });
        let exported: HashSet<&str> = ranked
            .iter()
            .enumerate()
            .filter(|(rank, acc)| *rank < top_n || acc.alerts > 0)
            .map(|(_, acc)| acc.container.id.as_str())
            .collect();

        for series in self.series.values_mut() {
            series.exported_last_scrape = false;
        }
        let mut rows = Vec::with_capacity(exported.len() + 1);
        let mut other = ContainerRow {
            labels: vec![(CONTAINER_ID, OTHER.to_owned())],
            ..ContainerRow::default()
        };
        for acc in &ranked {
            let id = acc.container.id.as_str();
            if exported.contains(id) {
                let series = self.series.entry(id.to_owned()).or_default();
                series.opened += acc.opened;
                series.closed += acc.closed;
                series.exported_last_scrape = true;
                let mut labels = vec![(CONTAINER_ID, acc.container.short_id().to_owned())];
                labels.extend(workload_labels(Some(acc.container)));
                rows.push(ContainerRow {
                    labels,
                    open: acc.open,
                    opened: series.opened,
                    closed: series.closed,
                    alerts: acc.alerts,
                });
            } else {
                self.other.opened += acc.opened;
                self.other.closed += acc.closed;
                other.open += acc.open;
                other.alerts += acc.alerts;
            }
        }
        // A container with no process left in the table is gone: its series go.
        self.series.retain(|id, _| by_id.contains_key(id.as_str()));
        other.opened = self.other.opened;
        other.closed = self.other.closed;
        rows.push(other);
        rows
    }
}
