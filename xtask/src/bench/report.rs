//! docs/performance.md: the measured table, the targets, and the evidence behind them.
use std::{fmt::Write, time::Duration};

use super::{
    Diagnostics, Run, ScenarioRuns, Tracer,
    micro::Micro,
    procfs::Machine,
    scale::{Latency, ScaleSpec, ScaleStep},
    stats::{Summary, summarize},
};

/// The hand-kept record of the levers tried (copied into every report).
const LEVERS: &str = include_str!("levers.md");

pub struct Report {
    pub machine: Machine,
    pub commit: String,
    pub date: String,
    pub smoke: bool,
    pub pairs: usize,
    pub threads: usize,
    pub duration: Duration,
    pub modes: Vec<String>,
    /// `--variant` runs: the daemon with extra flags.
    pub variants: Vec<Tracer>,
    pub skipped: Vec<(String, String)>,
    pub results: Vec<ScenarioRuns>,
    pub diagnostics: Diagnostics,
    pub scale: Vec<ScaleStep>,
    pub scale_spec: ScaleSpec,
    pub micro: Option<Micro>,
    pub load_before: f64,
    pub load_after: f64,
    pub waited: Duration,
    pub elapsed: Duration,
    pub runs_total: usize,
    pub runs_with_qemu: usize,
}

/// What one tracer did under one load, over all pairs.
struct Agg {
    ratio: Summary,
    untraced_rate: Summary,
    tracer_us: Option<Summary>,
    system_untraced_us: Summary,
    system_traced_us: Summary,
    p99_untraced: f64,
    p99_traced: f64,
    lost: Option<u64>,
    ring_high_water: Option<u64>,
    hwm: Option<u64>,
    events_per_wakeup: Option<Summary>,
}

fn agg(sr: &ScenarioRuns, tracer: &Tracer) -> Option<Agg> {
    let mut ratios = Vec::new();
    let mut untraced_rates = Vec::new();
    let mut tracer_us = Vec::new();
    let (mut sys_u, mut sys_t, mut p99_u, mut p99_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut lost: Option<u64> = None;
    let mut hwm: Option<u64> = None;
    let mut ring_high_water: Option<u64> = None;
    let mut per_wakeup = Vec::new();
    for pair in &sr.pairs {
        let (Some(u), Some(t)) = (
            pair.iter().find(|r| r.tracer == Tracer::None),
            pair.iter().find(|r| &r.tracer == tracer),
        ) else {
            continue;
        };
        ratios.push(t.load.rate() / u.load.rate());
        untraced_rates.push(u.load.rate());
        tracer_us.extend(t.tracer_us_per_conn());
        sys_u.push(u.system_us_per_conn());
        sys_t.push(t.system_us_per_conn());
        p99_u.push(u.load.latency.quantile(0.99).as_secs_f64() * 1e6);
        p99_t.push(t.load.latency.quantile(0.99).as_secs_f64() * 1e6);
        if let Some(l) = t.events_lost {
            lost = Some(lost.unwrap_or(0) + l);
        }
        hwm = hwm.max(t.tracer_hwm);
        ring_high_water = ring_high_water.max(t.ring_high_water);
        if let (Some(e), Some(w)) = (t.events, t.wakeups) {
            per_wakeup.push(e as f64 / w.max(1) as f64);
        }
    }
    Some(Agg {
        ratio: summarize(&ratios)?,
        untraced_rate: summarize(&untraced_rates)?,
        tracer_us: summarize(&tracer_us),
        system_untraced_us: summarize(&sys_u)?,
        system_traced_us: summarize(&sys_t)?,
        p99_untraced: summarize(&p99_u)?.median,
        p99_traced: summarize(&p99_t)?.median,
        lost,
        ring_high_water,
        hwm,
        events_per_wakeup: summarize(&per_wakeup),
    })
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn latency(l: &Latency) -> String {
    format!("{} (max {}, {} KiB)", ms(l.median), ms(l.max), thousands((l.bytes / 1024) as u64))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// Current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

impl Report {
    fn find(&self, family_v4: bool, max_rate: bool) -> Option<&ScenarioRuns> {
        self.results.iter().find(|sr| {
            (sr.scenario.family == super::load::Family::V4) == family_v4
                && sr.scenario.rate.is_none() == max_rate
        })
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(o, "# Performance\n");
        let _ = writeln!(
            o,
            "Generated by `sudo cargo xtask bench` (xtask/src/bench/), which overwrites this file; \
             `cargo xtask bench --smoke` runs a few seconds of everything and leaves it alone. \
             Micro-benchmarks: `cargo bench -p tracer`. Method and caveats follow the results; \
             the last section, the soak, is written by `sudo cargo xtask soak --write`, and the \
             bench keeps it.\n"
        );
        if self.smoke {
            let _ = writeln!(
                o,
                "> **Smoke run**: 1 pair, short runs, small scale. These numbers only show that the harness works.\n"
            );
        }
        let _ = writeln!(o, "| | |\n| --- | --- |");
        let _ = writeln!(
            o,
            "| machine | {} CPUs, {}, {:.1} GiB memory |",
            m.cpus,
            m.cpu_model,
            m.memory_bytes as f64 / (1u64 << 30) as f64
        );
        let _ = writeln!(o, "| kernel | {} |", m.kernel);
        let _ = writeln!(o, "| commit | {} |", self.commit);
        let _ = writeln!(o, "| date | {} |", self.date);
        let _ = writeln!(
            o,
            "| run | {} pairs of {:.1} s runs per load, {} load threads, {:.1} min in all; load average {:.2} before, {:.2} after{}{} |",
            self.pairs,
            self.duration.as_secs_f64(),
            self.threads,
            self.elapsed.as_secs_f64() / 60.0,
            self.load_before,
            self.load_after,
            if self.waited.is_zero() {
                String::new()
            } else {
                format!(
                    "; waited {:.0} s for qemu VMs, other tracers and other jobs to finish",
                    self.waited.as_secs_f64()
                )
            },
            match self.runs_with_qemu {
                0 => String::new(),
                n => format!(
                    "; **a qemu VM or another tracer was running during {n} of {} load runs: those numbers are noisier**",
                    self.runs_total
                ),
            },
        );
        let _ = writeln!(
            o,
            "| probe modes | measured: {}{} |\n",
            self.modes.join(", "),
            self.skipped
                .iter()
                .map(|(mode, why)| format!("; {mode} skipped: {}", why.replace('|', "/")))
                .collect::<String>()
        );

        self.render_targets(&mut o);
        let _ = writeln!(o, "{}", LEVERS.trim_end());
        let _ = writeln!(o);
        self.render_churn(&mut o);
        self.render_scale(&mut o);
        self.render_diagnostics(&mut o);
        self.render_micro(&mut o);
        render_method(&mut o, self);
        o
    }

    fn render_targets(&self, o: &mut String) {
        let _ = writeln!(o, "## Targets (tracepoint mode, default settings)\n");
        let tp = Tracer::Daemon("tracepoint".into());
        let bt = Tracer::Bpftrace;
        let max4 = self.find(true, true).and_then(|sr| agg(sr, &tp));
        let max6 = self.find(false, true).and_then(|sr| agg(sr, &tp));
        let bt4 = self.find(true, true).and_then(|sr| agg(sr, &bt));
        let bt6 = self.find(false, true).and_then(|sr| agg(sr, &bt));
        let _ = writeln!(o, "| target | measured | |\n| --- | --- | --- |");

        let (ratio_text, ratio_met) = match (&max4, &max6) {
            (Some(a), Some(b)) => (
                format!("IPv4 {:.3}, IPv6 {:.3}", a.ratio.median, b.ratio.median),
                Some(a.ratio.median >= 0.95 && b.ratio.median >= 0.95),
            ),
            _ => ("-".into(), None),
        };
        let _ = writeln!(
            o,
            "| median traced/untraced connections/s at saturation ≥ 0.95 | {ratio_text} | {} |",
            verdict(ratio_met)
        );

        let lost: Option<u64> = self
            .results
            .iter()
            .filter_map(|sr| agg(sr, &tp).and_then(|a| a.lost))
            .reduce(|a, b| a + b);
        let _ = writeln!(
            o,
            "| zero events lost at the default ring size (every traced run) | {} | {} |",
            lost.map_or("-".into(), thousands),
            verdict(lost.map(|l| l == 0))
        );

        let (gap_text, gap_met) = match (&max4, &bt4, &max6, &bt6) {
            (Some(a), Some(b), Some(c), Some(d)) => (
                format!(
                    "IPv4 {:.3} vs bpftrace {:.3} (+{:.3}); IPv6 {:.3} vs {:.3} (+{:.3})",
                    a.ratio.median,
                    b.ratio.median,
                    a.ratio.median - b.ratio.median,
                    c.ratio.median,
                    d.ratio.median,
                    c.ratio.median - d.ratio.median
                ),
                Some(
                    a.ratio.median - b.ratio.median >= 0.3
                        && c.ratio.median - d.ratio.median >= 0.3,
                ),
            ),
            _ => ("-".into(), None),
        };
        let _ = writeln!(
            o,
            "| ratio at least 0.3 above the bpftrace reference's | {gap_text} | {} |",
            verdict(gap_met)
        );

        let cpu: Vec<(String, f64)> = self
            .results
            .iter()
            .filter_map(|sr| Some((sr.scenario.label(), agg(sr, &tp)?.tracer_us?.median)))
            .collect();
        let cpu_text =
            cpu.iter().map(|(l, us)| format!("{l}: {us:.2} µs")).collect::<Vec<_>>().join("; ");
        let cpu_met = (!cpu.is_empty()).then(|| cpu.iter().all(|(_, us)| *us <= 1.0));
        let _ = writeln!(
            o,
            "| daemon CPU ≤ 1 µs per connection | {} | {} |",
            if cpu_text.is_empty() { "-" } else { &cpu_text },
            verdict(cpu_met)
        );

        let step = self.scale.first();
        let _ = writeln!(
            o,
            "| ≤ 200 bytes of daemon memory per tracked socket | {} | {} |",
            step.map_or("-".into(), |s| format!(
                "{:.0} bytes ({} sockets)",
                s.bytes_per_socket,
                thousands(s.tracked)
            )),
            verdict(step.map(|s| s.bytes_per_socket <= 200.0))
        );
        let _ = writeln!(
            o,
            "| `tracer top --json` under 100 ms at 100,000 sockets | {} | {} |",
            step.map_or("-".into(), |s| format!(
                "{} at {} sockets",
                ms(s.top.median),
                thousands(s.tracked)
            )),
            verdict(
                step.filter(|s| s.tracked >= 100_000 || self.smoke)
                    .map(|s| s.top.median < Duration::from_millis(100))
            )
        );
        let _ = writeln!(o);
        if !self.modes.iter().any(|m| m == "tracepoint") {
            let _ = writeln!(
                o,
                "Tracepoint mode did not start on this machine, so no target was measured.\n"
            );
        }
    }

    fn render_churn(&self, o: &mut String) {
        let _ = writeln!(o, "## Connection churn: traced vs untraced\n");
        let _ = writeln!(
            o,
            "Each run is {:.1} s of loopback connections (connect, accept, 5-byte request and reply, server \
             closes, client closes) from {} threads; \"max rate\" runs flat out, \"fixed\" paces the \
             threads (unless --rate is given, at a quarter of the untraced IPv4 max rate measured once at the start). \
             Untraced, tracer and bpftrace runs alternate within each of the {} pairs (order \
             reversed every other pair); the ratio is traced/untraced connections per second of the same \
             pair, median [min–max] over the pairs. Tracer CPU: the tracer process's utime+stime from load \
             start until it had taken in every event (bpftrace: until 0.3 s after the load), per connection. Machine CPU: busy time of all CPUs \
             during the load per connection (at max rate the machine is saturated, so this is just the \
             inverse of the rate). p99: connect-to-close time of one connection (at max rate, with more \
             threads than CPUs, it is the scheduler's time slice). Events per wakeup: events \
             the daemon received divided by the voluntary context switches of all its threads (each \
             time a thread went to sleep waiting for work): about the events handled per wakeup. \
             Ring high water: the fullest the daemon found its ring buffer when a drain started \
             (`ring_high_water_bytes` of its status), highest over the pairs. Rows with extra \
             flags are the daemon with one setting changed (`--variant`), measured in the same pairs.\n",
            self.duration.as_secs_f64(),
            self.threads,
            self.pairs
        );
        let _ = writeln!(
            o,
            "| load | tracer | untraced conn/s | traced/untraced | tracer CPU µs/conn | machine CPU µs/conn untraced → traced | p99 µs untraced → traced | events lost | ring high water | daemon events per wakeup | tracer peak RSS |"
        );
        let _ = writeln!(
            o,
            "| --- | --- | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"
        );
        for sr in &self.results {
            let tracers: Vec<Tracer> = self
                .modes
                .iter()
                .map(|m| Tracer::Daemon(m.clone()))
                .chain(self.variants.iter().cloned())
                .chain(std::iter::once(Tracer::Bpftrace))
                .collect();
            for t in tracers {
                let Some(a) = agg(sr, &t) else { continue };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {:.3} [{:.3}–{:.3}] | {} | {:.2} → {:.2} | {:.0} → {:.0} | {} | {} | {} | {} |",
                    sr.scenario.label(),
                    t.label(),
                    thousands(a.untraced_rate.median as u64),
                    a.ratio.median,
                    a.ratio.min,
                    a.ratio.max,
                    a.tracer_us.map_or("-".into(), |s| format!(
                        "{:.2} [{:.2}–{:.2}]",
                        s.median, s.min, s.max
                    )),
                    a.system_untraced_us.median,
                    a.system_traced_us.median,
                    a.p99_untraced,
                    a.p99_traced,
                    a.lost.map_or("n/a".into(), thousands),
                    a.ring_high_water
                        .map_or("-".into(), |b| format!("{} KiB", thousands(b / 1024))),
                    a.events_per_wakeup.map_or("-".into(), |s| format!("{:.1}", s.median)),
                    a.hwm.map_or("-".into(), mib),
                );
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "Per run (connections per second, in the order run):\n");
        let _ = writeln!(o, "```");
        for sr in &self.results {
            for (i, pair) in sr.pairs.iter().enumerate() {
                let runs: Vec<String> = pair
                    .iter()
                    .map(|r: &Run| match r.load.errors {
                        0 => format!("{} {:.0}", short(&r.tracer), r.load.rate()),
                        n => format!("{} {:.0} ({n} failed)", short(&r.tracer), r.load.rate()),
                    })
                    .collect();
                let _ = writeln!(
                    o,
                    "{:<26} pair {:>2}: {}",
                    sr.scenario.label(),
                    i + 1,
                    runs.join(", ")
                );
            }
        }
        let _ = writeln!(o, "```\n");
    }

    fn render_scale(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "## Scale: {} held connections, then {} processes\n",
            thousands(self.scale_spec.connections as u64),
            thousands(self.scale_spec.processes as u64)
        );
        let _ = writeln!(
            o,
            "A fresh daemon ({}), then {} loopback connections made and held by forked processes (both \
             ends, so twice as many tracked sockets; one 127.10.x.1 listener per process), then {} more \
             processes holding one connection each to one more process. Memory: the daemon's VmRSS \
             growth over its idle start-up value, divided by the growth of `tracked_connections`. \
             Latency: wall time of the CLI command (process start, query, JSON, exit) or of one HTTP \
             GET, median of {} after one untimed call; the size is the answer's.\n",
            self.diagnostics.mode,
            thousands(self.scale_spec.connections as u64),
            thousands(self.scale_spec.processes as u64),
            self.scale_spec.repeats
        );
        let _ = writeln!(
            o,
            "| step | tracked sockets | processes | RSS growth | per socket | peak RSS | `top --json` | `conns --pid P --json` | `/metrics` | events lost |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |");
        for s in &self.scale {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.0} B | {} | {} | {} ({} rows) | {} | {} |",
                s.label,
                thousands(s.tracked),
                thousands(s.processes),
                mib(s.rss_delta.max(0) as u64),
                s.bytes_per_socket,
                mib(s.hwm),
                latency(&s.top),
                latency(&s.conns),
                thousands(s.conns_rows as u64),
                latency(&s.metrics),
                thousands(s.events_lost),
            );
        }
        let _ = writeln!(o);
        for s in &self.scale {
            if let Some(h) = &s.health {
                let _ = writeln!(
                    o,
                    "- Pool health at \"{}\": one sock_diag dump with tcp_info took {:.0} ms \
                     (`health_scan_us`); the otherwise idle daemon used {:.2}% of one core over \
                     {:.0} s at the default 15 s leak interval ({} dumps; target: under 1%).",
                    s.label,
                    h.scan_us as f64 / 1e3,
                    100.0 * h.daemon_core_share,
                    h.span_s,
                    h.scans
                );
            }
        }
        for s in &self.scale {
            if !s.smaps.is_empty() {
                let text: Vec<String> =
                    s.smaps.iter().map(|(k, v)| format!("{k} {}", mib(*v))).collect();
                let _ = writeln!(
                    o,
                    "- Daemon memory at \"{}\" (smaps_rollup): {}.",
                    s.label,
                    text.join(", ")
                );
            }
        }
        let _ = writeln!(o);
    }

    fn render_diagnostics(&self, o: &mut String) {
        let d = &self.diagnostics;
        let _ = writeln!(o, "## Where the time and memory go\n");
        let _ = writeln!(
            o,
            "More IPv4 max-rate runs ({}) with instruments on, not part of the ratios: one with BPF \
             run-time statistics (BPF_ENABLE_STATS, which adds two clock reads per program run), the \
             ring buffer's fill sampled from outside, the daemon's wakeups and the irq_work interrupts; \
             the same under bpftrace, and untraced; then one under perf (which slows everything down) \
             for the profiles.\n",
            d.mode
        );
        let conns = d.connections.max(1) as f64;
        let _ = writeln!(o, "| | |\n| --- | --- |");
        let _ = writeln!(
            o,
            "| connections | {} ({:.0}/s), {} events ({:.2} per connection) |",
            thousands(d.connections),
            d.rate,
            thousands(d.events),
            d.events as f64 / conns
        );
        let _ = writeln!(
            o,
            "| daemon CPU | {:.2} µs per connection, {:.0} ns per event |",
            d.daemon_us_per_conn,
            d.daemon_us_per_conn * 1e3 * conns / d.events.max(1) as f64
        );
        let _ = writeln!(
            o,
            "| daemon wakeups | {} voluntary context switches over all threads: {:.1} events per wakeup, {:.2} wakeups per connection |",
            thousands(d.wakeups),
            d.events as f64 / d.wakeups.max(1) as f64,
            d.wakeups as f64 / conns
        );
        let ring = match (d.ring_high_water, &d.ring_error) {
            (Some(hw), _) => format!(
                "daemon's own figure (the fullest it found the ring when a drain started): {} of {} ({:.2}%); sampled from outside every 250 µs ({} samples): {} ({:.2}%)",
                thousands(d.daemon_ring_high_water),
                mib(d.ring_bytes),
                d.daemon_ring_high_water as f64 * 100.0 / d.ring_bytes.max(1) as f64,
                thousands(d.ring_samples),
                thousands(hw),
                hw as f64 * 100.0 / d.ring_bytes.max(1) as f64
            ),
            (None, Some(e)) => format!(
                "daemon's own figure: {}; could not be sampled from outside: {e}",
                thousands(d.daemon_ring_high_water)
            ),
            (None, None) => format!("daemon's own figure: {}", thousands(d.daemon_ring_high_water)),
        };
        let _ = writeln!(o, "| ring buffer high-water fill | {ring} |");
        let kernel_ns: u64 = d.progs.iter().map(|p| p.run_time_ns).sum();
        let bt_ns: u64 = d.bpftrace_progs.iter().map(|p| p.run_time_ns).sum();
        let _ = writeln!(
            o,
            "| kernel-side BPF time | tracer {:.2} µs per connection; bpftrace {:.2} µs per connection |",
            kernel_ns as f64 / 1e3 / conns,
            bt_ns as f64 / 1e3 / d.bpftrace_connections.max(1) as f64
        );
        let _ = writeln!(
            o,
            "| irq_work interrupts (IWI, the BPF ring/perf buffer's reader wakeups) | tracer {:.2} per connection; bpftrace {:.2}; untraced {:.2} |",
            d.irq_work as f64 / conns,
            d.bpftrace_irq_work as f64 / d.bpftrace_connections.max(1) as f64,
            d.untraced_irq_work_per_conn
        );
        let _ = writeln!(
            o,
            "| bpftrace process CPU | {:.2} µs per connection ({} connections) |",
            d.bpftrace_us_per_conn,
            thousands(d.bpftrace_connections)
        );
        if !d.smaps.is_empty() {
            let text: Vec<String> =
                d.smaps.iter().map(|(k, v)| format!("{k} {}", mib(*v))).collect();
            let _ = writeln!(o, "| daemon memory after the run | {} |", text.join(", "));
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "BPF programs (runs and time while the load ran):\n");
        let _ = writeln!(
            o,
            "| program | runs | runs per connection | ns per run | µs per connection |\n| --- | ---: | ---: | ---: | ---: |"
        );
        for (who, progs, n) in [
            ("tracer", &d.progs, conns),
            ("bpftrace", &d.bpftrace_progs, d.bpftrace_connections.max(1) as f64),
        ] {
            for p in progs.iter().filter(|p| p.run_cnt > 0) {
                let _ = writeln!(
                    o,
                    "| {who}: {} | {} | {:.2} | {:.0} | {:.3} |",
                    p.name,
                    thousands(p.run_cnt),
                    p.run_cnt as f64 / n,
                    p.run_time_ns as f64 / p.run_cnt as f64,
                    p.run_time_ns as f64 / 1e3 / n
                );
            }
        }
        let _ = writeln!(o);
        let _ =
            writeln!(o, "Daemon profile (`perf record -F 1999 -p <daemon>`, symbols over 0.5%):\n");
        let _ = writeln!(o, "```");
        for line in &d.profile {
            let _ = writeln!(o, "{line}");
        }
        if let Some(note) = &d.profile_note {
            let _ = writeln!(o, "({note})");
        }
        let _ = writeln!(o, "```\n");
        let _ = writeln!(
            o,
            "Tracing-related kernel symbols in the load's own profile (`perf record -F 1999 -p <harness>`; \
             share of all the load's samples, symbols over 0.5%): the probes run inside the traced \
             processes' system calls and softirqs, so this is the cost the traced workload pays. \
             `native_write_msr` there is the ring buffer waking its reader: `bpf_ringbuf_submit` → \
             `irq_work_queue` → `arch_irq_work_raise`, a self-IPI whose APIC register write traps to \
             the hypervisor on a VM (see it with `perf record -g -p <load pid>` and \
             `perf report --no-children -S native_write_msr -G`); `bpf_probe_read_kernel` and \
             `copy_from_kernel_nofault` are the probes' CO-RE reads of kernel structures.\n"
        );
        let _ = writeln!(o, "```");
        for line in &d.load_profile {
            let _ = writeln!(o, "{line}");
        }
        let _ = writeln!(o, "```\n");
    }

    fn render_micro(&self, o: &mut String) {
        let _ = writeln!(o, "## Micro-benchmarks (one core)\n");
        let Some(micro) = &self.micro else {
            let _ = writeln!(o, "Not run (--skip-micro). Run `cargo bench -p tracer`.\n");
            return;
        };
        let _ = writeln!(
            o,
            "`cargo bench -p tracer` (tracer/benches/pipeline.rs): loopback churn as the kernel reports it, \
             7 events per connection; `table_apply` includes `Metrics::observe`, as in the daemon. Target: \
             ≥ 5 million events/s for decode + table update.\n"
        );
        let _ = writeln!(o, "| benchmark | events/s (median) | |\n| --- | ---: | --- |");
        for r in &micro.results {
            let target = if r.name.starts_with("decode_and_apply") {
                verdict(Some(r.events_per_second >= 5e6))
            } else {
                ""
            };
            let _ = writeln!(o, "| {} | {:.2} M | {target} |", r.name, r.events_per_second / 1e6);
        }
        if let Some(line) = &micro.memory_line {
            let _ = writeln!(o, "\nTable memory (counting allocator): {line}.");
        }
        let _ = writeln!(o);
    }
}

fn short(t: &Tracer) -> String {
    match t {
        Tracer::None => "untraced".into(),
        Tracer::Daemon(m) => m.clone(),
        Tracer::Variant(m, args) => format!("{m} {}", args.join(" ")),
        Tracer::Baseline(m, _) => format!("{m} baseline"),
        Tracer::Subscribed(m) => format!("{m} + trace"),
        Tracer::Bpftrace => "bpftrace".into(),
    }
}

fn render_method(o: &mut String, r: &Report) {
    let _ = writeln!(o, "## Method and caveats\n");
    let _ = writeln!(
        o,
        "- The daemon is the release build, started fresh for every traced run as \
         `tracer run --probe MODE --socket <tmp> --metrics-addr 127.0.0.1:0 --summary-interval 0` \
         (otherwise default settings: {} ring buffer, reconcile every 60 s) and stopped with SIGTERM. \
         Probe modes that fail to start are skipped with the daemon's reason.",
        mib(r.diagnostics.ring_bytes.max(8 << 20))
    );
    let _ = writeln!(
        o,
        "- The reference is xtask/src/bench/tcplife.bt under Debian's bpftrace, printing one line per \
         connection to /dev/null: tcplife's per-connection tracking (start time at SYN_SENT/SYN_RECV \
         keyed by socket address, lifetime printed at CLOSE) on the `sock:inet_sock_set_state` \
         tracepoint, since kprobes may be missing."
    );
    let _ = writeln!(
        o,
        "- The load runs in the harness process (threads), so harness, kernel and tracer share the \
         CPUs, as a traced server would. The machine may be shared: runs alternate and medians are \
         quoted; a full run waits for qemu VMs, other tracers (`tracer run`, bpftrace) and busy CPUs \
         before each pair."
    );
    let _ = writeln!(
        o,
        "- Events lost: `events_lost` of `tracer status --json` after the daemon has taken in every \
         event: the sum of its four reasons (ring buffer full, unresolved accepts, held-closed map \
         full, malformed records)."
    );
    let _ = writeln!(o);
}

/// The whole report, for the terminal.
pub fn summary_for_terminal(doc: &str) -> String {
    doc.to_owned()
}
