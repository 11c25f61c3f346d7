//! Prometheus exposition: the table, the detector and the pipeline counters as metrics
//! (docs/metrics.md lists every metric).
//!
//! Split so that the event path stays cheap:
//! - [`Metrics::observe_close`] (every closed connection) bumps plain arrays, nothing else;
//! - [`Metrics::gather`] / [`Metrics::render`] build every family at scrape time from a
//!   [`MetricsInput`], in the event loop that owns the table and the detector;
//! - [`serve`] answers `GET /metrics` by sending a [`Scrape`] to that event loop.
//!
//! Cardinality is bounded: per-process series only for the top N processes by open count and
//! every alerting process, lifetime histograms only for the top N comms; the rest is summed
//! into `pid="other"` / `comm="other"` series whose counters never go down (see
//! `processes.rs` and `lifetimes.rs` for how).
mod containers;
mod families;
pub(crate) mod http;
mod lifetimes;
mod processes;
#[cfg(test)]
mod tests;
pub(crate) mod web_config;

pub use http::{
    BindError, DEFAULT_METRICS_ADDR, DEFAULT_METRICS_PORT, SCRAPE_TIMEOUT, Scrape, bind, serve,
};
pub use web_config::{WebConfig, WebConfigError, metrics_url};

use std::collections::HashSet;

use prometheus::{TextEncoder, proto::MetricFamily};
use tracer_common::EventKind;

use crate::{
    detect::Alert,
    pipeline::LostEvents,
    probes::KernelCounters,
    table::{Applied, ConnectionTable, ProcessKey, StateCounts},
};
use families::{FamilyBuilder, bound_label};
use lifetimes::LifetimeHistograms;
use processes::{DIRECTIONS, ProcessExport, ProcessRow, direction_name};

/// Processes exported individually by default (plus every alerting process).
pub const DEFAULT_TOP_N: usize = 100;

/// The `pid` and `comm` label value of the series that sum everything not exported on its own.
pub const OTHER: &str = "other";

/// Bounds of the open-connection age gauges, in nanoseconds (`age_le` labels, plus `+Inf`).
pub const AGE_BOUNDS_NS: [u64; 7] = [
    10 * 1_000_000_000,
    60 * 1_000_000_000,
    300 * 1_000_000_000,
    1_800 * 1_000_000_000,
    3_600 * 1_000_000_000,
    21_600 * 1_000_000_000,
    86_400 * 1_000_000_000,
];

/// Which tracer runs, and how: the labels of `tcp_tracer_build_info`.
#[derive(Clone, Copy, Debug)]
pub struct BuildInfo<'a> {
    pub version: &'a str,
    /// The probe mode in use (`fentry`, `kprobe`, `tracepoint`).
    pub probe_mode: &'a str,
    /// Kernel release (`uname -r`).
    pub kernel: &'a str,
}

/// The ring buffer's size and the most the daemon found waiting in it at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingFill {
    pub size_bytes: u64,
    pub high_water_bytes: u64,
}

/// Opener-stack counters kept in user space (the kernel's come with [`KernelCounters`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct StackMetrics {
    /// Stack records dropped because their connection never showed up.
    pub orphaned: u64,
    /// Frames left unnamed in answers and leak evidence.
    pub frames_unsymbolized: u64,
    /// Processes that exited before their binaries could be pinned.
    pub exited_before_pinning: u64,
    /// Processes whose pinning the symbolizer's limits refused.
    pub pins_refused: u64,
    /// Processes none of whose binaries could be opened.
    pub pins_failed: u64,
    /// Suspects the kernel's suspect map refused.
    pub suspects_unmarked: u64,
}

/// Everything a scrape reads, borrowed from the event loop for the duration of the scrape.
#[derive(Clone, Copy, Debug)]
pub struct MetricsInput<'a> {
    pub table: &'a ConnectionTable,
    /// The detector's active alerts (`Detector::active().collect::<Vec<_>>()`).
    pub alerts: &'a [&'a Alert],
    /// `None` when the kernel counters could not be read: the last values read are exposed
    /// again, so the counters do not drop to zero.
    pub kernel: Option<&'a KernelCounters>,
    /// Records received per [`EventKind`] (`EventSource::received`).
    pub events_received: &'a [u64; EventKind::COUNT],
    /// Records that did not decode (`EventSource::malformed`).
    pub malformed: u64,
    /// Corrections the periodic reconcile with the kernel's socket tables made.
    pub reconcile_corrections: u64,
    /// kprobe mode's per-probe hits and misses (empty in other modes).
    pub kprobes: &'a [crate::probes::ProbeMisses],
    /// Every loaded kernel program's skipped runs (`Probes::program_misses`).
    pub program_misses: &'a [crate::probes::ProgramMisses],
    pub ring: RingFill,
    pub stacks: StackMetrics,
    pub build: BuildInfo<'a>,
    /// Each process's pool health at the latest leak evaluation (idle and unread connections).
    pub health: &'a crate::health::PerProcess,
    /// CLOCK_BOOTTIME nanoseconds, the clock of the table (connection ages).
    pub now_ns: u64,
    /// Processes (and comms, for lifetimes) exported individually; see [`DEFAULT_TOP_N`].
    pub top_n: usize,
    /// TIME_WAIT blame and port pressure (docs/leak-detection.md).
    pub exhaustion: &'a ExhaustionInput,
    /// The containers of the processes' cgroups (workload labels, per-container series).
    pub containers: &'a crate::containers::Directory,
}

/// What the exhaustion rules found in the latest dump, for /metrics.
#[derive(Clone, Debug, Default)]
pub struct ExhaustionInput {
    /// TIME_WAIT sockets alive at the last scan, by the process that closed first.
    pub time_wait_caused: std::collections::HashMap<ProcessKey, u32>,
    /// TIME_WAIT sockets caused since start, over every process.
    pub time_wait_caused_total: u64,
    /// `(remote, used / available)` of the most pressed destinations, most pressed first.
    pub remote_ports: Vec<(String, f64)>,
}

/// The exporter's state: lifetime histograms filled from the event path, and what it needs to
/// keep counters monotonic between scrapes. Owned by the event loop.
#[derive(Debug, Default)]
pub struct Metrics {
    lifetimes: LifetimeHistograms,
    processes: ProcessExport,
    containers: containers::ContainerExport,
    last_kernel: KernelCounters,
    /// Size of the previous exposition, to allocate the next one in one go.
    last_len: usize,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One closed connection of a process named `comm` (NUL-padded, as the table keeps it),
    /// open for `lifetime_ns`. Hot path: no allocation once the comm has been seen.
    pub fn observe_close(&mut self, comm: &[u8; 16], lifetime_ns: u64) {
        self.lifetimes.observe(comm, lifetime_ns);
    }

    /// Feeds what [`ConnectionTable::apply`] returned; call it right after `apply` with the
    /// same table. Records the lifetime of connections whose open the daemon saw (those found
    /// already open at start-up only have a lower bound, which would skew the histogram).
    pub fn observe(&mut self, applied: &Applied, table: &ConnectionTable) {
        if let Applied::Closed { owner, lifetime_ns, preexisting: false, .. } = applied
            && let Some(process) = table.process(*owner)
        {
            self.observe_close(&process.comm, *lifetime_ns);
        }
    }

    /// Every metric family, built now. Families without any series are left out (the text
    /// format has no way to say "none").
    pub fn gather(&mut self, input: &MetricsInput<'_>) -> Vec<MetricFamily> {
        if let Some(kernel) = input.kernel {
            self.last_kernel.clone_from(kernel);
        }
        let processes = self.processes.collect(
            input.table,
            input.alerts,
            input.health,
            input.containers,
            input.now_ns,
            input.top_n,
        );
        let container_rows =
            self.containers.collect(input.table, input.containers, input.alerts, input.top_n);
        let lifetimes = self.lifetimes.collect(input.now_ns, input.top_n);
        let rows: Vec<&ProcessRow> =
            processes.rows.iter().chain(std::iter::once(&processes.other)).collect();

        let mut families = Vec::with_capacity(16);
        families.push(build_info(&input.build));
        families.extend(per_process_families(&rows));
        families.extend(per_container_families(&container_rows));

        let mut lifetime = FamilyBuilder::histogram(
            "tcp_tracer_connection_lifetime_seconds",
            "Lifetimes of closed connections, from open (ESTABLISHED or accept) to release by \
             their owner, per command name: the top N comms by count, comm=\"other\" sums the rest.",
        );
        let bounds = lifetimes::bounds_seconds();
        for (comm, counts) in
            lifetimes.comms.iter().map(|(c, n)| (c.as_str(), n)).chain([(OTHER, &lifetimes.other)])
        {
            lifetime.add_histogram(
                &[("comm", comm)],
                &bounds,
                &counts.cumulative(),
                counts.count(),
                counts.sum_seconds(),
            );
        }
        families.push(lifetime.finish());

        let mut leaks = FamilyBuilder::gauge(
            "tcp_tracer_leak_suspected",
            "1 while a leak detection rule alerts for a process (see docs/leak-detection.md); \
             absent otherwise.",
        );
        let mut seen = HashSet::new();
        for alert in input.alerts {
            let key = ProcessKey { pid: alert.pid, start_time_ns: alert.start_time_ns };
            let (pid, comm) = processes
                .labels
                .get(&key)
                .cloned()
                .unwrap_or_else(|| (alert.pid.to_string(), alert.comm.clone()));
            let rule = alert.rule.name();
            // One series per label set, even if two processes shared pid and comm.
            if seen.insert((pid.clone(), comm.clone(), rule)) {
                // The exported process's workload labels, else those the alert kept.
                let workload = processes
                    .workloads
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| containers::workload_labels(alert.container.as_ref()));
                let mut labels = vec![("pid", pid.as_str()), ("comm", comm.as_str())];
                labels.extend(workload.iter().map(|(k, v)| (*k, v.as_str())));
                labels.push(("rule", rule));
                leaks.add_gauge(&labels, 1.0);
            }
        }
        families.push(leaks.finish());
        families.extend(exhaustion_families(
            input.exhaustion,
            &processes.labels,
            &processes.workloads,
            input.top_n,
        ));

        let mut unattributed = FamilyBuilder::gauge(
            "tcp_tracer_unattributed_connections",
            "Connections no process is known to own: waiting in a listener's backlog, or open \
             with an owner the probes did not see (e.g. accepted before the daemon started).",
        );
        unattributed.add_gauge(&[], input.table.unattributed() as f64);
        families.push(unattributed.finish());

        let mut tracked = FamilyBuilder::gauge(
            "tcp_tracer_tracked_processes",
            "Processes in the connection table (exited ones stay for a grace period); only the \
             top N and alerting ones have their own per-process series.",
        );
        tracked.add_gauge(&[], input.table.process_count() as f64);
        families.push(tracked.finish());

        families.extend(self.pipeline_families(input));
        families.retain(|family| !family.get_metric().is_empty());
        families
    }

    /// The exposition in the Prometheus text format (`text/plain; version=0.0.4`).
    pub fn render(&mut self, input: &MetricsInput<'_>) -> String {
        let families = self.gather(input);
        let mut text = String::with_capacity(self.last_len + self.last_len / 8);
        let encoder = TextEncoder::new();
        for family in &families {
            // Encoding into a String only fails on an empty or unnamed family, which gather
            // never returns; skip one rather than lose the whole scrape.
            if let Err(e) = encoder.encode_utf8(std::slice::from_ref(family), &mut text) {
                log::warn!("metric family {} left out of the scrape: {e}", family.name());
            }
        }
        self.last_len = text.len();
        text
    }

    /// Events, losses, table anomalies and reconcile corrections.
    fn pipeline_families(&self, input: &MetricsInput<'_>) -> Vec<MetricFamily> {
        let mut events = FamilyBuilder::counter(
            "tcp_tracer_events_total",
            "Kernel event records received, by kind.",
        );
        for kind in EventKind::ALL {
            let received = input.events_received.get(kind as usize).copied().unwrap_or(0);
            events.add_counter(&[("kind", kind.name())], received);
        }

        let kernel = &self.last_kernel;
        let mut lost = FamilyBuilder::counter(
            "tcp_tracer_events_lost_total",
            "Events lost before reaching the table: ringbuf_full (the kernel could not reserve \
             ring buffer space), accept_unresolved (an accepted fd the probes could not resolve \
             to a socket), held_closed_map_full (a socket reset while held could not be \
             remembered), malformed (a record that did not decode). Any increase means counts \
             may be wrong.",
        );
        for (reason, n) in LostEvents::new(kernel, input.malformed).by_reason() {
            lost.add_counter(&[("reason", reason)], n);
        }

        let mut ring_size = FamilyBuilder::gauge(
            "tcp_tracer_ring_buffer_size_bytes",
            "Size of the BPF ring buffer that carries events to the daemon (--ring-bytes).",
        );
        ring_size.add_gauge(&[], input.ring.size_bytes as f64);
        let mut ring_high_water = FamilyBuilder::gauge(
            "tcp_tracer_ring_buffer_high_water_bytes",
            "The ring buffer's high-water fill since the daemon started: the fullest it was \
             when a drain started, or its size once a reservation failed. Close to the size, \
             events are about to be lost (ringbuf_full): raise --ring-bytes.",
        );
        ring_high_water.add_gauge(&[], input.ring.high_water_bytes as f64);

        let counters = input.table.counters();
        let mut anomalies = FamilyBuilder::counter(
            "tcp_tracer_table_anomalies_total",
            "Events the connection table could not match to what it knew: signs of a missed \
             event or of state older than the daemon.",
        );
        for (reason, value) in [
            ("unmatched_release", counters.unmatched_releases),
            ("unknown_socket", counters.unknown_socket_events),
            ("stale_replaced", counters.stale_replaced),
            ("released_unattributed", counters.released_unattributed),
            ("invalid_kind", counters.invalid_events),
            ("established_inferred", counters.established_inferred),
        ] {
            anomalies.add_counter(&[("reason", reason)], value);
        }

        let config = input.table.config();
        let mut overflow = FamilyBuilder::counter(
            "tcp_tracer_table_overflow_total",
            "Connections the table refused because it was full: limit=connections (it held \
             --max-connections sockets), limit=processes (their process was new and it held \
             --max-processes). A refused connection stays untracked for its life; any \
             increase means counts are lower bounds.",
        );
        overflow.add_counter(&[("limit", "connections")], counters.connections_over_limit);
        overflow.add_counter(&[("limit", "processes")], counters.processes_over_limit);
        let mut limits = FamilyBuilder::gauge(
            "tcp_tracer_table_limit",
            "The table's limits: limit=connections (--max-connections), limit=processes \
             (--max-processes).",
        );
        limits.add_gauge(&[("limit", "connections")], config.max_connections as f64);
        limits.add_gauge(&[("limit", "processes")], config.max_processes as f64);

        let mut corrections = FamilyBuilder::counter(
            "tcp_tracer_reconcile_corrections_total",
            "Corrections the periodic reconcile with the kernel's socket tables made to the \
             connection table (each one is an event the probes missed).",
        );
        corrections.add_counter(&[], input.reconcile_corrections);

        let mut kprobe_missed = FamilyBuilder::counter(
            "tcp_tracer_kprobe_missed_total",
            "kprobe mode only: hits the kernel could not hand to a probe, per probe (for \
             inet_csk_accept:return, returns beyond maxactive pending calls; they are still \
             seen by the accept syscall's exit). Absent in other modes.",
        );
        for p in input.kprobes {
            kprobe_missed.add_counter(&[("probe", &p.probe)], p.missed);
        }

        let mut program_missed = FamilyBuilder::counter(
            "tcp_tracer_bpf_program_missed_total",
            "Runs the kernel skipped, per loaded kernel program, because that program was \
             already running on the CPU (an interrupt's softirq landing on it): events never \
             emitted, so never counted as lost. Always 0 before Linux 5.12. The program \
             inet_sock_set_state:never_run counts state changes the kernel ran no program for \
             and did not count (from tracefs).",
        );
        for p in input.program_misses {
            program_missed.add_counter(&[("program", &p.program)], p.missed);
        }

        let mut stacks_captured = FamilyBuilder::counter(
            "tcp_tracer_stacks_captured_total",
            "Opener stacks the kernel captured and wrote to the stack ring (--stacks).",
        );
        stacks_captured.add_counter(&[], kernel.stack_captured);
        let mut stacks_lost = FamilyBuilder::counter(
            "tcp_tracer_stacks_lost_total",
            "Opener stacks wanted but lost: ringbuf_full (no room in the stack ring), \
             unwind_failed (the kernel could not walk the user stack), orphaned (the daemon \
             never saw the stack's connection and dropped it); and the events that lose a \
             process's stacks or their names, counted once each: suspect_unmarked (a suspect \
             the kernel's suspect map refused: its connections stay sampled only), pin_refused \
             (a process whose binaries the symbolizer's limits refused to pin: its stacks stay \
             module+offset), pin_failed (a process none of whose binaries could be opened, for \
             want of a capability most often: its stacks stay unnamed).",
        );
        for (reason, n) in [
            ("ringbuf_full", kernel.stack_lost_ringbuf),
            ("unwind_failed", kernel.stack_unwind_failed),
            ("orphaned", input.stacks.orphaned),
            ("suspect_unmarked", input.stacks.suspects_unmarked),
            ("pin_refused", input.stacks.pins_refused),
            ("pin_failed", input.stacks.pins_failed),
        ] {
            stacks_lost.add_counter(&[("reason", reason)], n);
        }
        let mut unsymbolized = FamilyBuilder::counter(
            "tcp_tracer_stack_frames_unsymbolized_total",
            "Frames of opener stacks left unnamed (module+offset) in answers and leak evidence: \
             no symbol, or not resolved within the deadline.",
        );
        unsymbolized.add_counter(&[], input.stacks.frames_unsymbolized);
        let mut unpinned = FamilyBuilder::counter(
            "tcp_tracer_stack_processes_exited_before_pinning_total",
            "Processes that exited before the daemon could pin their binaries: their stacks \
             stay unnamed.",
        );
        unpinned.add_counter(&[], input.stacks.exited_before_pinning);

        vec![
            stacks_captured.finish(),
            stacks_lost.finish(),
            unsymbolized.finish(),
            unpinned.finish(),
            events.finish(),
            lost.finish(),
            anomalies.finish(),
            overflow.finish(),
            limits.finish(),
            corrections.finish(),
            kprobe_missed.finish(),
            program_missed.finish(),
            ring_size.finish(),
            ring_high_water.finish(),
        ]
    }
}

fn build_info(build: &BuildInfo<'_>) -> MetricFamily {
    let mut family = FamilyBuilder::gauge(
        "tcp_tracer_build_info",
        "Always 1: the labels say which tracer version runs, in which probe mode, on which kernel.",
    );
    family.add_gauge(
        &[("version", build.version), ("probe_mode", build.probe_mode), ("kernel", build.kernel)],
        1.0,
    );
    family.finish()
}

/// TIME_WAIT caused per exported process (the rest summed under pid="other"), its total, and
/// the port pressure of the top N destinations.
fn exhaustion_families(
    input: &ExhaustionInput,
    labels: &std::collections::HashMap<ProcessKey, (String, String)>,
    workloads: &std::collections::HashMap<ProcessKey, containers::LabelValues>,
    top_n: usize,
) -> Vec<MetricFamily> {
    let mut caused = FamilyBuilder::gauge(
        "tcp_tracer_time_wait_caused",
        "TIME_WAIT sockets alive at the last scan that the process caused by closing first \
         (released connections, not part of open), per exported process; pid=\"other\" sums \
         the rest.",
    );
    let no_workload = Vec::new();
    let mut exported: Vec<(&(String, String), u32, &containers::LabelValues)> = labels
        .iter()
        .map(|(key, l)| {
            let workload = workloads.get(key).unwrap_or(&no_workload);
            (l, input.time_wait_caused.get(key).copied().unwrap_or(0), workload)
        })
        .collect();
    exported.sort();
    exported.dedup_by(|a, b| a.0 == b.0);
    let mut other = 0u64;
    for (key, n) in &input.time_wait_caused {
        if !labels.contains_key(key) {
            other += u64::from(*n);
        }
    }
    for ((pid, comm), n, workload) in exported {
        let mut series = vec![("pid", pid.as_str()), ("comm", comm.as_str())];
        series.extend(workload.iter().map(|(k, v)| (*k, v.as_str())));
        caused.add_gauge(&series, f64::from(n));
    }
    caused.add_gauge(&[("pid", OTHER), ("comm", OTHER)], other as f64);
    let mut total = FamilyBuilder::counter(
        "tcp_tracer_time_wait_caused_total",
        "TIME_WAIT sockets blamed on the process that closed first since start, over every \
         process, each counted when a scan first found it.",
    );
    total.add_counter(&[], input.time_wait_caused_total);
    let mut ports = FamilyBuilder::gauge(
        "tcp_tracer_remote_ports_used_ratio",
        "Ephemeral ports in use towards a remote endpoint (connecting, open, and TIME_WAIT \
         unless tcp_tw_reuse frees them) over the size of ip_local_port_range, for the top N \
         destinations by this ratio.",
    );
    let mut seen = HashSet::new();
    for (remote, ratio) in &input.remote_ports {
        if seen.len() >= top_n {
            break;
        }
        if seen.insert(remote.as_str()) {
            ports.add_gauge(&[("remote", remote)], *ratio);
        }
    }
    vec![caused.finish(), total.finish(), ports.finish()]
}

/// The families with `pid` and `comm` labels, one series per row (exported processes, then
/// `other`).
fn per_process_families(rows: &[&ProcessRow]) -> Vec<MetricFamily> {
    let mut open = FamilyBuilder::gauge(
        "tcp_tracer_open_connections",
        "Connections open now (from ESTABLISHED or accept until the owner releases them), per \
         process: the top N by open count and every alerting process; pid=\"other\" sums the rest.",
    );
    let mut by_state = FamilyBuilder::gauge(
        "tcp_tracer_connections",
        "Open connections per process by TCP state (close: reset by the peer, still held; \
         close_wait: the peer hung up, the process has not closed).",
    );
    let mut by_age = FamilyBuilder::gauge(
        "tcp_tracer_open_connections_by_age",
        "Open connections per process whose age is at most age_le seconds. Cumulative like \
         histogram buckets (age_le=\"+Inf\" equals tcp_tracer_open_connections) but a gauge: \
         ages rise and fall.",
    );
    let mut opened = FamilyBuilder::counter(
        "tcp_tracer_connections_opened_total",
        "Connections that became open for the process: outbound ones reaching ESTABLISHED, \
         inbound ones it accepted.",
    );
    let mut closed = FamilyBuilder::counter(
        "tcp_tracer_connections_closed_total",
        "Open connections the process released (close of the last descriptor, or exit).",
    );
    let mut idle = FamilyBuilder::gauge(
        "tcp_tracer_idle_connections",
        "Open connections of the process with no data sent or received for longer than \
         --idle-after, at the latest leak evaluation.",
    );
    let mut unread = FamilyBuilder::gauge(
        "tcp_tracer_unread_connections",
        "Open connections of the process holding unread data with no read progress for longer \
         than --unread-after, at the latest leak evaluation.",
    );
    let mut failed = FamilyBuilder::counter(
        "tcp_tracer_connect_failures_total",
        "Outbound connects of the process that never reached ESTABLISHED (refused, timed out, \
         unreachable, or closed while connecting).",
    );
    let age_labels: Vec<String> = AGE_BOUNDS_NS
        .iter()
        .map(|&ns| bound_label(ns as f64 / 1e9))
        .chain([bound_label(f64::INFINITY)])
        .collect();
    for row in rows {
        // pid, comm, the workload labels, then the family's own label.
        let mut base: Vec<(&str, &str)> = vec![("pid", &row.pid), ("comm", &row.comm)];
        base.extend(row.workload.iter().map(|(k, v)| (*k, v.as_str())));
        fn and<'a>(
            base: &[(&'a str, &'a str)],
            name: &'a str,
            value: &'a str,
        ) -> Vec<(&'a str, &'a str)> {
            let mut labels = base.to_vec();
            labels.push((name, value));
            labels
        }
        open.add_gauge(&base, row.open as f64);
        idle.add_gauge(&base, row.idle as f64);
        unread.add_gauge(&base, row.unread as f64);
        for (&state, &count) in StateCounts::STATES.iter().zip(&row.states) {
            let name = crate::events::state_name(state);
            by_state.add_gauge(&and(&base, "state", name), count as f64);
        }
        let ages = row.ages_le.iter().chain([&row.ages_total]);
        for (age_le, &count) in age_labels.iter().zip(ages) {
            by_age.add_gauge(&and(&base, "age_le", age_le), count as f64);
        }
        for (i, direction) in DIRECTIONS.iter().enumerate() {
            let labels = and(&base, "direction", direction_name(*direction));
            opened.add_counter(&labels, row.totals.opened[i]);
            closed.add_counter(&labels, row.totals.closed[i]);
        }
        failed.add_counter(&base, row.totals.connect_failed);
    }
    vec![
        open.finish(),
        by_state.finish(),
        by_age.finish(),
        opened.finish(),
        closed.finish(),
        failed.finish(),
        idle.finish(),
        unread.finish(),
    ]
}

/// The `tcp_tracer_container_*` families: the top N containers plus `other` (containers.rs).
fn per_container_families(rows: &[containers::ContainerRow]) -> Vec<MetricFamily> {
    let mut open = FamilyBuilder::gauge(
        "tcp_tracer_container_open_connections",
        "Connections open now, per container: the top N containers by open count and every \
         container with an alert; container_id=\"other\" sums the rest. Host processes are not \
         counted here.",
    );
    let mut opened = FamilyBuilder::counter(
        "tcp_tracer_container_connections_opened_total",
        "Connections that became open for the processes of the container (both directions).",
    );
    let mut closed = FamilyBuilder::counter(
        "tcp_tracer_container_connections_closed_total",
        "Open connections the processes of the container released.",
    );
    let mut alerts = FamilyBuilder::gauge(
        "tcp_tracer_container_leak_alerts",
        "Leak alerts active now for the processes of the container (one per process and rule).",
    );
    for row in rows {
        let labels: Vec<(&str, &str)> = row.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        open.add_gauge(&labels, row.open as f64);
        opened.add_counter(&labels, row.opened);
        closed.add_counter(&labels, row.closed);
        alerts.add_gauge(&labels, row.alerts as f64);
    }
    vec![open.finish(), opened.finish(), closed.finish(), alerts.finish()]
}
