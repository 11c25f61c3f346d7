//! Pool health in the daemon: when sock_diag is dumped (with `tcp_info`), and what is done
//! with the dump. One dump serves each leak evaluation, its pool health and its exhaustion
//! rules (daemon/exhaustion.rs reduces it in the same blocking task); when a reconcile is due
//! at the same time, the same dump serves it too (only the /proc walk for holders is added). `tracer conns`
//! gets its own dump, on demand. Every dump runs off the event loop; nothing is added to the
//! per-event path.
use std::{collections::HashMap, io, time::Duration};

use serde_json::value::{RawValue, to_raw_value};
use tokio::{
    sync::mpsc,
    time::{Instant, Interval},
};

use crate::{
    api::answers::{ConnRow, ConnsReport},
    ground_truth,
    health::{
        self, ConnHealth, HealthScan, HealthSettings, PerProcess, ProcessHealth, ReadTracker,
        SCAN_FAILED,
    },
    table::{ConnSnapshot, ConnectionTable, KernelSockets, ProcessKey, TupleKey},
};

use super::{exhaustion, leaks::LeakSettings};
use crate::ground_truth::sysctl::NetnsSysctls;

/// What one dump was for, and what it found.
pub(super) struct Landed {
    /// A leak evaluation waits for it.
    pub evaluate: bool,
    pub scan: io::Result<KernelScan>,
    /// How long the dump took (the /proc walk of a reconcile not included).
    pub took: Duration,
}

pub(super) struct KernelScan {
    /// Every socket of every namespace, TIME_WAIT included.
    pub health: HealthScan,
    /// The same sockets with their holders, when a reconcile was due.
    pub reconcile: Option<KernelSockets>,
    /// The same sockets reduced for the exhaustion rules, when an evaluation was due.
    pub exhaustion: Option<exhaustion::ScanResult>,
}

/// One of the two periodic jobs a dump serves: when it last ran and how often it runs.
struct Job {
    period: Duration,
    last: Instant,
}

impl Job {
    /// Due within `slack` of `now` (a zero period is never due).
    fn due_within(&self, now: Instant, slack: Duration) -> bool {
        !self.period.is_zero() && now + slack >= self.last + self.period
    }
}

/// Which dumps are due, and the one running (at most one at a time).
pub(super) struct Scans {
    want_evaluate: bool,
    want_reconcile: bool,
    running: bool,
    evaluation: Job,
    reconcile: Job,
    /// How close the other job's time must be for one dump to serve both.
    slack: Duration,
    tx: mpsc::Sender<Landed>,
    pub rx: mpsc::Receiver<Landed>,
}

impl Scans {
    /// The two timers start now with these periods (zero: never).
    pub fn new(leak_period: Duration, reconcile_period: Duration) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let now = Instant::now();
        let shortest = [leak_period, reconcile_period].into_iter().filter(|p| !p.is_zero()).min();
        Self {
            want_evaluate: false,
            want_reconcile: false,
            running: false,
            evaluation: Job { period: leak_period, last: now },
            reconcile: Job { period: reconcile_period, last: now },
            // A tenth of the shorter period, at most a second: the two timers' ticks meet
            // within that, never a whole period early.
            slack: shortest.map_or(Duration::ZERO, |p| (p / 10).min(Duration::from_secs(1))),
            tx,
            rx,
        }
    }

    /// A leak evaluation is due; so is a reconcile if its time is within the slack: it is
    /// done now, with the same dump, and its timer starts over.
    pub fn evaluation_due(&mut self, reconcile: &mut Interval) {
        let now = Instant::now();
        self.want_evaluate = true;
        self.evaluation.last = now;
        if self.reconcile.due_within(now, self.slack) {
            self.want_reconcile = true;
            self.reconcile.last = now;
            reconcile.reset();
        }
    }

    /// A reconcile is due; so is an evaluation if its time is within the slack.
    pub fn reconcile_due(&mut self, leak_check: &mut Interval) {
        let now = Instant::now();
        self.want_reconcile = true;
        self.reconcile.last = now;
        if self.evaluation.due_within(now, self.slack) {
            self.want_evaluate = true;
            self.evaluation.last = now;
            leak_check.reset();
        }
    }

    /// The next [`Scans::launch`] starts a dump that serves a reconcile.
    pub fn will_reconcile(&self) -> bool {
        !self.running && self.want_reconcile
    }

    /// Starts a dump for whatever is due, unless one is running (what comes due meanwhile
    /// waits for the next). An evaluation's dump also serves the exhaustion rules: `exhaustion`
    /// says what they want of it (asked only then). A reconcile's holders take their cgroup
    /// ids from `cgroups`, a started task-iterator run (see [`Scans::will_reconcile`]).
    pub fn launch(
        &mut self,
        now_ns: impl Fn() -> u64 + Send + 'static,
        exhaustion: impl FnOnce() -> exhaustion::ScanRequest,
        cgroups: Option<std::fs::File>,
    ) {
        if self.running || !(self.want_evaluate || self.want_reconcile) {
            return;
        }
        let (evaluate, reconcile) = (self.want_evaluate, self.want_reconcile);
        (self.want_evaluate, self.want_reconcile, self.running) = (false, false, true);
        let request = evaluate.then(exhaustion);
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut took = Duration::ZERO;
            // A panic must still land: `running` would otherwise stay set and no dump, hence
            // no reconcile and no evaluation's scan, would ever start again.
            let scan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut sysctls = HashMap::new();
                let dumped = dump(now_ns, request.is_some().then_some(&mut sysctls));
                took = started.elapsed();
                dumped.map(|health| KernelScan {
                    reconcile: reconcile.then(|| {
                        let mut scan = ground_truth::with_holders(&health.sockets);
                        super::scan_cgroups::apply(cgroups, &mut scan);
                        scan
                    }),
                    exhaustion: request.map(|r| exhaustion::reduce(r, &health.sockets, sysctls)),
                    health,
                })
            }))
            .unwrap_or_else(|_| Err(io::Error::other("the kernel-state scan panicked")));
            let _ = tx.blocking_send(Landed { evaluate, scan, took });
        });
    }

    pub fn landed(&mut self) {
        self.running = false;
    }
}

/// One sock_diag dump of every namespace, stamped with the clock (blocking); with `sysctls`,
/// each namespace's sysctls are read in the same walk.
fn dump(
    now_ns: impl Fn() -> u64,
    mut sysctls: Option<&mut HashMap<u32, NetnsSysctls>>,
) -> io::Result<HealthScan> {
    let sockets = ground_truth::scan_all_and(|ns| {
        if let Some(into) = sysctls.as_deref_mut() {
            exhaustion::read_sysctls(ns, into);
        }
    })?;
    Ok(HealthScan { at_ns: now_ns(), sockets })
}

/// Read progress across dumps and each process's health at the latest one.
pub(super) struct PoolHealth {
    settings: HealthSettings,
    reads: ReadTracker,
    latest: PerProcess,
    scans: u64,
    last_scan: Duration,
}

impl PoolHealth {
    pub fn new(settings: HealthSettings) -> Self {
        Self {
            settings,
            reads: ReadTracker::default(),
            latest: PerProcess::default(),
            scans: 0,
            last_scan: Duration::ZERO,
        }
    }

    /// Counts a dump and its duration (`tracer status`).
    pub fn record_scan(&mut self, took: Duration) {
        self.scans += 1;
        self.last_scan = took;
    }

    pub fn scans(&self) -> u64 {
        self.scans
    }

    pub fn last_scan_us(&self) -> u64 {
        u64::try_from(self.last_scan.as_micros()).unwrap_or(u64::MAX)
    }

    /// Takes in a dump: read progress, then each process's counts against the table, with
    /// its workload override's thresholds (`leak`).
    pub fn update(
        &mut self,
        table: &ConnectionTable,
        scan: &HealthScan,
        leak: &LeakSettings,
        containers: &crate::containers::Directory,
    ) {
        self.reads.observe(scan);
        let settings = &self.settings;
        self.latest = if leak.detector.overrides.is_empty() {
            health::per_process(table, scan, &self.reads, settings)
        } else {
            health::per_process_with(table, scan, &self.reads, |owner| match table.process(owner) {
                Some(p) => {
                    let comm = p.comm();
                    let container = containers.container(p.cgroup_id);
                    leak.thresholds_for(crate::detect::overrides::Workload {
                        comm: &comm,
                        container,
                    })
                    .health
                }
                None => settings.clone(),
            })
        };
    }

    /// A failed dump: counts are unknown until the next one.
    pub fn forget_counts(&mut self) {
        self.latest.clear();
    }

    pub fn per_process(&self) -> &PerProcess {
        &self.latest
    }

    pub fn of(&self, key: ProcessKey) -> Option<&ProcessHealth> {
        self.latest.get(&key)
    }
}

/// How long a `tracer conns` answer may wait for its dump before the figures are left null.
const CONNS_DEADLINE: Duration = Duration::from_secs(10);

/// `tracer conns`: the rows the table gave, with each connection's health from a fresh dump
/// (made off the event loop).
pub(super) async fn conns_answer(
    rows: Vec<(ConnSnapshot, Option<crate::containers::Container>)>,
    host_netns: Option<u32>,
) -> Result<Box<RawValue>, String> {
    let dump = tokio::task::spawn_blocking(ground_truth::scan_all);
    let sockets = match tokio::time::timeout(CONNS_DEADLINE, dump).await {
        Ok(Ok(Ok(sockets))) => Some(HealthScan { at_ns: 0, sockets }),
        Ok(Ok(Err(e))) => {
            log::warn!("conns: sock_diag dump failed: {e}");
            None
        }
        _ => None,
    };
    let index = sockets.as_ref().map(HealthScan::index);
    let connections = rows
        .into_iter()
        .map(|(conn, container)| {
            let health = match &index {
                None => ConnHealth::unavailable(SCAN_FAILED),
                Some(index) => {
                    let key =
                        TupleKey { netns: conn.netns, local: conn.local, remote: conn.remote };
                    index.get(&key).map_or_else(
                        || ConnHealth::unavailable(health::NOT_LISTED),
                        |s| ConnHealth::of(s),
                    )
                }
            };
            ConnRow { conn, health, container }
        })
        .collect();
    to_raw_value(&ConnsReport { connections, host_netns })
        .map_err(|e| format!("cannot encode the answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_due_within_the_slack_and_a_zero_period_never_is() {
        let start = Instant::now();
        let job = Job { period: Duration::from_secs(60), last: start };
        let slack = Duration::from_secs(1);
        assert!(!job.due_within(start + Duration::from_secs(58), slack));
        assert!(job.due_within(start + Duration::from_millis(59_000), slack), "1 s early");
        assert!(job.due_within(start + Duration::from_secs(61), slack));
        let never = Job { period: Duration::ZERO, last: start };
        assert!(!never.due_within(start + Duration::from_secs(3600), slack));
    }

    #[tokio::test]
    async fn the_slack_is_a_tenth_of_the_shorter_period_at_most_a_second() {
        let of = |leak, reconcile| Scans::new(leak, reconcile).slack;
        assert_eq!(of(Duration::from_secs(15), Duration::from_secs(60)), Duration::from_secs(1));
        let half = Duration::from_millis(500);
        assert_eq!(of(half, Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(of(Duration::ZERO, half), Duration::from_millis(50), "zero: never runs");
        assert_eq!(of(Duration::ZERO, Duration::ZERO), Duration::ZERO);
    }
}
