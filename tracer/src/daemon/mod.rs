//! The daemon: probes -> pipeline -> table (-> detectors, exporters), until SIGINT/SIGTERM.
//!
//! One task owns the table and everything derived from it. It drains the ring buffer in
//! batches and answers API queries between batches, so the event path takes no lock.
mod queries;

pub use queries::{ConnsReport, RemoteFilter, STATE_NAMES, TopReport, conn_state_label};

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
    table::{ConnectionTable, TableConfig},
};

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub load: LoadOptions,
    pub table: TableConfig,
    /// API socket path.
    pub socket: PathBuf,
    /// How often to log a one-line summary (zero: never).
    pub summary_interval: Duration,
}

/// Everything the event loop owns.
pub(crate) struct Daemon {
    probes: Probes,
    source: EventSource,
    table: ConnectionTable,
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
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    let mut summary = tokio::time::interval(if options.summary_interval.is_zero() {
        Duration::from_secs(86_400 * 365)
    } else {
        options.summary_interval
    });
    summary.tick().await;
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
    fn start(options: &DaemonOptions) -> Result<Self> {
        let mut probes = Probes::load(&options.load)?;
        let source = EventSource::new(probes.take_events()?)?;
        let clock = BootClock;
        Ok(Self {
            probes,
            source,
            table: ConnectionTable::new(options.table),
            started_ns: clock.now_ns(),
            clock,
            kernel: preflight::kernel_release(),
        })
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
