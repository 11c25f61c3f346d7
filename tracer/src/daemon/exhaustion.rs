//! Daemon glue for [`crate::exhaustion`]: remembers active closes from the event stream, reduces
//! the sock_diag dump each leak evaluation shares with pool health (daemon/health.rs: the
//! sysctls of every namespace are read in the dump's walk, the descriptors of the processes
//! worth reading in its blocking task, see [`reduce`]), and feeds the results to the leak
//! samples, `top` and /metrics.
use std::collections::{HashMap, HashSet};

use tracer_common::{ConnEvent, EventKind, tcp_state};

use crate::{
    detect::{Detector, ProcessSample},
    exhaustion::{
        Closers, Destination, FdTracker, PortHold,
        fds::{FdSample, read_process},
        ports::{self, DestinationCount},
    },
    ground_truth::{
        self, ExistingSocket,
        holders::{clock_ticks_per_second, process_identity},
        sysctl::{self, NetnsSysctls},
    },
    table::{Applied, ConnectionTable, Phase, ProcessKey, SocketKey, TupleKey},
};

/// What the event loop asks the scan for.
pub(super) struct ScanRequest {
    pub started_ns: u64,
    /// Processes whose descriptors to read.
    pub fd_processes: Vec<ProcessKey>,
    /// Destinations at least this pressed (used / available) get their holders named.
    pub attribute_from: f64,
}

/// What the scan found, already reduced off the event loop: the event loop only matches the
/// closing sockets with its remembered closes and names the holders of pressed destinations.
pub(super) struct ScanResult {
    pub started_ns: u64,
    /// Sockets between an active close and the end of TIME_WAIT.
    pub closing: Vec<(TupleKey, u8)>,
    pub destinations: Vec<DestinationCount>,
    pub sysctls: HashMap<u32, NetnsSysctls>,
    pub fds: Vec<(ProcessKey, FdSample)>,
}

/// Reads one namespace's sysctls into `into`, during the shared dump's walk of the namespaces
/// (blocking: it enters the namespace).
pub(super) fn read_sysctls(ns: &ground_truth::Namespace, into: &mut HashMap<u32, NetnsSysctls>) {
    match sysctl::read_namespace(ns) {
        Ok(values) => {
            into.insert(ns.inode, values);
        }
        Err(e) => log::debug!("exhaustion: sysctls of netns {}: {e}", ns.inode),
    }
}

/// Reduces the evaluation's shared dump (every socket of every namespace, with the sysctls read
/// in the same walk) for the exhaustion rules, and reads the descriptors of the processes asked
/// for. Blocking (/proc): runs in the dump's `spawn_blocking` task, so the event loop only
/// matches the closing sockets with its remembered closes and names the pressed destinations'
/// holders.
pub(super) fn reduce(
    request: ScanRequest,
    sockets: &[ExistingSocket],
    sysctls: HashMap<u32, NetnsSysctls>,
) -> ScanResult {
    let started = std::time::Instant::now();
    let ticks = clock_ticks_per_second();
    let fds: Vec<(ProcessKey, FdSample)> = request
        .fd_processes
        .into_iter()
        .filter(|key| {
            // The pid must still be this process, not a reuse of its number.
            process_identity(key.pid, ticks)
                .is_some_and(|h| ProcessKey::new(h.pid, h.start_time_ns) == *key)
        })
        .filter_map(|key| read_process(key.pid).map(|s| (key, s)))
        .collect();
    let destinations = ports::count_ports(sockets, &sysctls, request.attribute_from);
    let closing = sockets
        .iter()
        .filter(|s| Closers::is_closing(s.state))
        .map(|s| (TupleKey { netns: s.netns, local: s.local, remote: s.remote }, s.state))
        .collect();
    log::debug!(
        "exhaustion: {} sockets, {} namespaces, {} processes' descriptors reduced in {:?}",
        sockets.len(),
        sysctls.len(),
        fds.len(),
        started.elapsed()
    );
    ScanResult { started_ns: request.started_ns, closing, destinations, sysctls, fds }
}

/// Destinations whose holders are named: from half the lowest `port_exhaustion` threshold in
/// force (daemon-wide or in an override), so that `top --by remote` names them before the rule
/// fires; the rest are only counted.
pub(super) fn attribute_from(config: &crate::detect::DetectorConfig) -> f64 {
    let lowest = config
        .overrides
        .iter()
        .filter_map(|o| o.thresholds.port_pressure_percent)
        .chain([config.port_pressure_percent])
        .min()
        .unwrap_or(config.port_pressure_percent);
    f64::from(lowest) / 200.0
}

/// Processes read per scan besides growing ones: the most connected, as /metrics exports.
const MIN_FD_PROCESSES: usize = 10;

pub(super) struct Exhaustion {
    closers: Closers,
    fds: FdTracker,
    /// Processes read by the last scan (others show no descriptors).
    fds_read: HashSet<ProcessKey>,
    destinations: Vec<Destination>,
    holds: HashMap<ProcessKey, PortHold>,
}

impl Exhaustion {
    pub fn new(window_ns: u64) -> Self {
        Self {
            closers: Closers::new(sysctl::read_current().max_tw_buckets as usize),
            fds: FdTracker::new(window_ns),
            fds_read: HashSet::new(),
            destinations: Vec::new(),
            holds: HashMap::new(),
        }
    }

    /// Remembers an active close (ESTABLISHED -> FIN_WAIT1 in close() or shutdown()). Called
    /// for every event after the table applied it; all but two kinds return at once.
    pub fn on_event(&mut self, event: &ConnEvent, applied: &Applied, table: &ConnectionTable) {
        if !Closers::is_active_close(event.old_state, event.new_state) {
            return;
        }
        let closer = match (event.kind(), applied) {
            // close(): in the closing task's context. It may not be the owner (a child that
            // inherited the descriptor); the table's owner stands in for a task it never saw.
            (Some(EventKind::Release), Applied::Closed { owner, .. }) => {
                ProcessKey::of(event).filter(|p| table.process(*p).is_some()).unwrap_or(*owner)
            }
            (Some(EventKind::Release), _) => {
                match ProcessKey::of(event).filter(|p| table.process(*p).is_some()) {
                    Some(p) => p,
                    None => return,
                }
            }
            // shutdown(): a plain state change of a connection the table knows.
            (Some(EventKind::StateChange), Applied::StateChanged { .. }) => {
                match table.connection(SocketKey::of(event)).and_then(|v| v.conn.owner()) {
                    Some(owner) => owner,
                    None => return,
                }
            }
            _ => return,
        };
        let tuple = match table.connection(SocketKey::of(event)) {
            Some(view) => view.conn.tuple_key(event.netns),
            None => TupleKey::of(event),
        };
        self.closers.remember(tuple, closer, event.timestamp_ns);
    }

    /// Processes whose descriptors the next scan reads: the `top_n` most connected live ones,
    /// and every one whose open count is growing.
    pub fn fd_candidates(
        &self,
        table: &ConnectionTable,
        detector: &Detector,
        top_n: usize,
    ) -> Vec<ProcessKey> {
        let mut live: Vec<(u32, ProcessKey)> =
            table.processes().filter(|p| !p.exited()).map(|p| (p.open, p.key)).collect();
        live.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<ProcessKey> =
            live.iter().take(top_n.max(MIN_FD_PROCESSES)).map(|(_, k)| *k).collect();
        let chosen: HashSet<ProcessKey> = out.iter().copied().collect();
        out.extend(
            live.iter()
                .map(|(_, k)| *k)
                .filter(|k| !chosen.contains(k) && detector.growth_of(*k).0 > 0),
        );
        out
    }

    /// Takes in a scan's results.
    pub fn apply(&mut self, result: ScanResult, table: &ConnectionTable, now_ns: u64) {
        let started = std::time::Instant::now();
        for (netns, values) in &result.sysctls {
            self.closers.set_capacity(*netns, values.max_tw_buckets as usize);
        }
        self.closers.observe(result.started_ns, result.closing);
        // Owners of the pressed destinations' connecting and open connections, by addresses
        // (the scan has no kernel address to key on): one pass over the table, only if needed.
        let wanted: HashSet<TupleKey> = result
            .destinations
            .iter()
            .flat_map(|d| d.sockets.iter())
            .filter(|(_, state)| *state != tcp_state::TIME_WAIT)
            .map(|(tuple, _)| *tuple)
            .collect();
        let owners: HashMap<TupleKey, ProcessKey> = if wanted.is_empty() {
            HashMap::new()
        } else {
            table
                .connections()
                .filter(|v| matches!(v.conn.phase(), Phase::Open | Phase::Connecting))
                .filter_map(|v| {
                    let tuple = v.conn.tuple_key(v.key.netns);
                    wanted.contains(&tuple).then_some((tuple, v.conn.owner()?))
                })
                .collect()
        };
        let closers = &self.closers;
        self.destinations = ports::attribute(result.destinations, |tuple, state| {
            if state == tcp_state::TIME_WAIT {
                closers.closer_of(tuple)
            } else {
                owners.get(tuple).copied()
            }
        });
        self.holds = ports::holds(&self.destinations);
        self.fds_read = result.fds.iter().map(|(k, _)| *k).collect();
        for (key, sample) in result.fds {
            self.fds.record(key, now_ns, sample);
        }
        let read = &self.fds_read;
        self.fds.retain(|k| read.contains(&k));
        self.closers.retain_processes(|k| table.process(k).is_some());
        log::debug!("exhaustion: dump applied on the event loop in {:?}", started.elapsed());
    }

    /// Adds what the last scan found to the leak samples.
    pub fn fill(&self, samples: &mut [ProcessSample]) {
        for sample in samples {
            let Some(id) = sample.id else { continue };
            sample.port_hold = self.holds.get(&id).cloned();
            sample.fd = self.fd_status(id);
        }
    }

    pub fn time_wait_caused(&self, process: ProcessKey) -> u32 {
        self.closers.time_wait_caused(process)
    }

    pub fn time_wait_caused_total(&self, process: ProcessKey) -> u64 {
        self.closers.time_wait_caused_total(process)
    }

    /// What /metrics shows of the last scan.
    pub fn metrics_input(&self) -> crate::export::ExhaustionInput {
        crate::export::ExhaustionInput {
            time_wait_caused: self.closers.caused_now().clone(),
            time_wait_caused_total: self.closers.caused_total_all(),
            remote_ports: self
                .destinations
                .iter()
                .map(|d| (d.remote.to_string(), d.ratio()))
                .collect(),
        }
    }

    pub fn closes_remembered(&self) -> usize {
        self.closers.len()
    }

    pub fn closes_overflowed(&self) -> u64 {
        self.closers.overflow_total()
    }

    pub fn fd_status(&self, process: ProcessKey) -> Option<crate::exhaustion::FdStatus> {
        self.fds_read.contains(&process).then(|| self.fds.status(process)).flatten()
    }

    /// Destinations by pressure, most pressed first, from the last scan.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }
}
