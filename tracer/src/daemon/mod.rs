//! The daemon: probes -> pipeline -> table (-> detectors, exporters), until SIGINT/SIGTERM.
//!
//! One task owns the table and everything derived from it. It drains the ring buffer in
//! batches and answers API queries between batches, so the event path takes no lock.
mod ground_truth;
mod leaks;
mod queries;

pub use leaks::LeakSettings;

pub use queries::{
    AlertView, ConnsReport, LeaksReport, RemoteFilter, RemoteReport, RemoteRow, STATE_NAMES, TopReport, TopRow,
    conn_state_label,
};

use std::{path::PathBuf, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    api::server::{self, Query},
    clock::{BootClock, Clock},
    error::Result,
    events,
    pipeline::EventSource,
    probes::{LoadOptions, Probes, preflight},
    detect::Detector,
    table::{ConnectionTable, Reconciler, ScannedSocket, TableConfig},
    webhook::{Webhook, WebhookUrl},
};

fn every(period: Duration) -> tokio::time::Interval {
    // A zero period means never: a year is as good.
    let period = if period.is_zero() { Duration::from_secs(86_400 * 365) } else { period };
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub load: LoadOptions,
    pub table: TableConfig,
    /// API socket path.
    pub socket: PathBuf,
    /// How often to log a one-line summary (zero: never).
    pub summary_interval: Duration,
    /// How often to compare the table with sock_diag and /proc (zero: never).
    pub reconcile_interval: Duration,
    pub leaks: LeakSettings,
    pub webhook: Option<WebhookUrl>,
}

/// Everything the event loop owns.
pub(crate) struct Daemon {
    probes: Probes,
    source: EventSource,
    table: ConnectionTable,
    reconciler: Reconciler,
    detector: Detector,
    leak_settings: LeakSettings,
    webhook: Option<Webhook>,
    clock: BootClock,
    started_ns: u64,
    kernel: String,
}

pub async fn run(options: DaemonOptions) -> anyhow::Result<()> {
    // Privileges and kernel first (nothing else can work without them), then the socket: a
    // second daemon must fail before it loads anything.
    preflight::check()?;
    let listener = server::bind(&options.socket)?;
    let mut daemon = Daemon::start(&options)?;
    log::info!(
        "probes attached: mode={} ({}), kernel {}; API on {}",
        daemon.probes.mode(),
        daemon.probes.mode_reason(),
        daemon.kernel,
        options.socket.display()
    );
    let (query_tx, mut query_rx) = mpsc::channel::<Query>(64);
    let api = tokio::spawn(server::serve(listener, query_tx));

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut housekeeping = every(Duration::from_secs(1));
    let mut summary = every(options.summary_interval);
    let mut reconcile = every(options.reconcile_interval);
    let mut leak_check = every(options.leaks.interval);
    let (scan_tx, mut scan_rx) = mpsc::channel::<std::io::Result<Vec<ScannedSocket>>>(1);
    let mut scan_running = false;
    loop {
        tokio::select! {
            batch = daemon.next_batch() => { batch?; }
            Some(query) = query_rx.recv() => {
                // Answer from a table that includes everything the kernel has delivered.
                daemon.drain_now();
                let _ = query.reply.send(daemon.answer(query.request));
            }
            _ = housekeeping.tick() => { daemon.table.expire(daemon.clock.now_ns()); }
            _ = summary.tick() => daemon.log_summary(),
            _ = leak_check.tick() => daemon.evaluate_leaks(),
            _ = reconcile.tick(), if !scan_running => {
                scan_running = true;
                let tx = scan_tx.clone();
                tokio::task::spawn_blocking(move || { let _ = tx.blocking_send(ground_truth::scan_kernel()); });
            }
            Some(scan) = scan_rx.recv() => {
                scan_running = false;
                match scan {
                    Ok(scan) => daemon.reconcile(&scan),
                    Err(e) => log::warn!("reconcile scan failed: {e}"),
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    api.abort();
    log::info!("detaching probes");
    daemon.probes.detach();
    daemon.drain_now();
    daemon.log_summary();
    let _ = std::fs::remove_file(&options.socket);
    Ok(())
}

impl Daemon {
    /// Attaches the probes, then loads the connections that already exist: the events of
    /// anything that changes meanwhile wait in the ring buffer, so nothing falls between the
    /// two (docs/architecture.md, "Start-up").
    fn start(options: &DaemonOptions) -> Result<Self> {
        let mut probes = Probes::load(&options.load)?;
        let source = EventSource::new(probes.take_events()?)?;
        let clock = BootClock;
        let mut daemon = Self {
            probes,
            source,
            table: ConnectionTable::new(options.table),
            reconciler: Reconciler::default(),
            detector: Detector::new(options.leaks.detector.clone()),
            leak_settings: options.leaks.clone(),
            webhook: options.webhook.clone().map(Webhook::start),
            started_ns: clock.now_ns(),
            clock,
            kernel: preflight::kernel_release(),
        };
        daemon.drain_now();
        match ground_truth::scan_kernel() {
            Ok(scan) => {
                let loaded = daemon.table.load_existing(&scan, daemon.clock.now_ns());
                log::info!("loaded {loaded} connections that existed before start-up");
            }
            Err(e) => log::warn!("cannot load existing connections (sock_diag): {e}; counting from now on"),
        }
        Ok(daemon)
    }

    fn evaluate_leaks(&mut self) {
        self.drain_now();
        let now = self.clock.now_ns();
        let samples = leaks::samples(&self.table, &self.leak_settings, now);
        for change in self.detector.evaluate(now, &samples) {
            leaks::log_change(&change);
            if let Some(webhook) = &self.webhook {
                webhook.notify(&change);
            }
        }
    }

    fn reconcile(&mut self, scan: &[ScannedSocket]) {
        // Compare with everything the kernel has delivered so far.
        self.drain_now();
        let report = self.reconciler.check(&mut self.table, scan, self.clock.now_ns());
        for correction in &report.corrections {
            log::warn!("reconcile: {correction}");
        }
        if report.holder_changes > 0 {
            log::info!("reconcile: {} connection(s) now counted for the process that holds them", report.holder_changes);
        }
    }

    async fn next_batch(&mut self) -> std::io::Result<usize> {
        let Self { source, table, .. } = self;
        let log_events = log::log_enabled!(log::Level::Debug);
        source
            .next_batch(|event| {
                if log_events {
                    log::debug!("{}", events::Display(event));
                }
                table.apply(event);
            })
            .await
    }

    fn drain_now(&mut self) {
        let Self { source, table, .. } = self;
        source.drain_now(|event| {
            table.apply(event);
        });
    }

    fn log_summary(&self) {
        match self.probes.counters() {
            Ok(k) => log::info!(
                "events emitted={} received={} lost={} malformed={} tracked={} unattributed={} processes={}",
                k.emitted_total(),
                self.source.received_total(),
                k.lost_total(),
                self.source.malformed(),
                self.table.tracked_connections(),
                self.table.unattributed(),
                self.table.process_count(),
            ),
            Err(e) => log::warn!("cannot read kernel counters: {e}"),
        }
    }
}
