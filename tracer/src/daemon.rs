//! The daemon: probes -> pipeline -> (table, detectors, exporters), until SIGINT/SIGTERM.
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    error::Result,
    events,
    pipeline::EventSource,
    probes::{LoadOptions, Probes},
};

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub load: LoadOptions,
    /// How often to log a one-line summary (0 = never).
    pub summary_interval: Duration,
}

pub async fn run(options: DaemonOptions) -> Result<()> {
    let mut probes = Probes::load(&options.load)?;
    log::info!(
        "probes attached: mode={} ({}), kernel {}",
        probes.mode(),
        probes.mode_reason(),
        crate::probes::preflight::kernel_release()
    );
    let mut source = EventSource::new(probes.take_events()?)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut summary = tokio::time::interval(if options.summary_interval.is_zero() {
        Duration::from_secs(u64::MAX / 4)
    } else {
        options.summary_interval
    });
    summary.tick().await;
    let log_events = log::log_enabled!(log::Level::Debug);
    loop {
        tokio::select! {
            batch = source.next_batch(|event| {
                if log_events {
                    log::debug!("{}", events::Display(event));
                }
            }) => { batch?; }
            _ = summary.tick() => log_summary(&probes, &source),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    log::info!("detaching probes");
    probes.detach();
    source.drain_now(|_| {});
    log_summary(&probes, &source);
    Ok(())
}

fn log_summary(probes: &Probes, source: &EventSource) {
    match probes.counters() {
        Ok(k) => log::info!(
            "events emitted={} received={} lost={} malformed={}",
            k.emitted_total(),
            source.received_total(),
            k.lost_total(),
            source.malformed()
        ),
        Err(e) => log::warn!("cannot read kernel counters: {e}"),
    }
}
