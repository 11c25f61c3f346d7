//! Pool health in the daemon: when sock_diag is dumped (with `tcp_info`), and what is done
//! with the dump. One dump serves each leak evaluation; when a reconcile is due at the same
//! time, the same dump serves it too (only the /proc walk for holders is added). `tracer conns`
//! gets its own dump, on demand. Every dump runs off the event loop; nothing is added to the
//! per-event path.
use std::{collections::HashMap, io, task::Context, time::Duration};

use serde_json::value::{RawValue, to_raw_value};
use tokio::sync::mpsc;

use crate::{
    api::answers::{ConnRow, ConnsReport},
    ground_truth,
    health::{
        self, ConnHealth, HealthScan, HealthSettings, ProcessHealth, ReadTracker, SCAN_FAILED,
    },
    table::{ConnSnapshot, ConnectionTable, ProcessKey, ScannedSocket, TupleKey},
};

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
    pub reconcile: Option<Vec<ScannedSocket>>,
}

/// Which dumps are due, and the one running (at most one at a time).
pub(super) struct Scans {
    want_evaluate: bool,
    want_reconcile: bool,
    running: bool,
    tx: mpsc::Sender<Landed>,
    pub rx: mpsc::Receiver<Landed>,
}

impl Scans {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self { want_evaluate: false, want_reconcile: false, running: false, tx, rx }
    }

    /// A leak evaluation is due; so is a reconcile if its timer expires at the same time.
    pub fn evaluation_due(&mut self, reconcile: &mut tokio::time::Interval) {
        self.want_evaluate = true;
        self.want_reconcile |= expired_now(reconcile);
    }

    /// A reconcile is due; so is an evaluation if its timer expires at the same time.
    pub fn reconcile_due(&mut self, leak_check: &mut tokio::time::Interval) {
        self.want_reconcile = true;
        self.want_evaluate |= expired_now(leak_check);
    }

    /// Starts a dump for whatever is due, unless one is running (what comes due meanwhile
    /// waits for the next).
    pub fn launch(&mut self, now_ns: impl Fn() -> u64 + Send + 'static) {
        if self.running || !(self.want_evaluate || self.want_reconcile) {
            return;
        }
        let (evaluate, reconcile) = (self.want_evaluate, self.want_reconcile);
        (self.want_evaluate, self.want_reconcile, self.running) = (false, false, true);
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let dumped = dump(now_ns);
            let took = started.elapsed();
            let scan = dumped.map(|health| KernelScan {
                reconcile: reconcile.then(|| ground_truth::with_holders(&health.sockets)),
                health,
            });
            let _ = tx.blocking_send(Landed { evaluate, scan, took });
        });
    }

    pub fn landed(&mut self) {
        self.running = false;
    }
}

/// Consumes the interval's tick if it is due right now (both timers started together, so
/// their periods meet on the same instant), without waiting.
fn expired_now(interval: &mut tokio::time::Interval) -> bool {
    interval.poll_tick(&mut Context::from_waker(std::task::Waker::noop())).is_ready()
}

/// One sock_diag dump of every namespace, stamped with the clock (blocking).
fn dump(now_ns: impl Fn() -> u64) -> io::Result<HealthScan> {
    let sockets = ground_truth::scan_all()?;
    Ok(HealthScan { at_ns: now_ns(), sockets })
}

/// Read progress across dumps and each process's health at the latest one.
pub(super) struct PoolHealth {
    settings: HealthSettings,
    reads: ReadTracker,
    latest: HashMap<ProcessKey, ProcessHealth>,
    scans: u64,
    last_scan: Duration,
}

impl PoolHealth {
    pub fn new(settings: HealthSettings) -> Self {
        Self {
            settings,
            reads: ReadTracker::default(),
            latest: HashMap::new(),
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

    /// Takes in a dump: read progress, then each process's counts against the table.
    pub fn update(&mut self, table: &ConnectionTable, scan: &HealthScan) {
        self.reads.observe(scan);
        self.latest = health::per_process(table, scan, &self.reads, &self.settings);
    }

    /// A failed dump: counts are unknown until the next one.
    pub fn forget_counts(&mut self) {
        self.latest.clear();
    }

    pub fn per_process(&self) -> &HashMap<ProcessKey, ProcessHealth> {
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
pub(super) async fn conns_answer(rows: Vec<ConnSnapshot>) -> Result<Box<RawValue>, String> {
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
        .map(|conn| {
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
            ConnRow { conn, health }
        })
        .collect();
    to_raw_value(&ConnsReport { connections }).map_err(|e| format!("cannot encode the answer: {e}"))
}
