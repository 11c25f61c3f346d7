//! What opener-stack capture costs (docs/stacks.md, "Cost"): `--stacks off`, the default
//! (`sampled`) and `all` side by side, in rounds that alternate their order, with an untraced run
//! in each round for the machine's own CPU per connection. Reported as medians over rounds:
//! throughput against `off`, BPF run time per connection (bpf_stats, on for every run of the
//! part, so every policy pays its small overhead alike), daemon CPU per connection, and the
//! issue's target: the default adds at most 1% of an untraced connection's CPU (BPF + daemon)
//! against `off`. Then daemon memory per tracked socket at the scale step's size with `all`
//! against `off`, and the symbolizer's first and cached stack of a Go binary.
use std::{collections::BTreeMap, fmt::Write as _, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    Bench, bpf,
    load::{self, Family, LoadSpec},
    procfs, scale,
    stats::{Summary, summarize},
    tracers::{Daemon, field},
};

/// The policies compared, `off` first: every ratio and delta is against it.
pub const POLICIES: [&str; 3] = ["off", "sampled", "all"];
/// The targets.
const TARGET_CPU_SHARE: f64 = 0.01;
const TARGET_BYTES_PER_SOCKET: f64 = 50.0;
const TARGET_FIRST_SYMBOLIZATION: Duration = Duration::from_secs(1);
const TARGET_CACHED_STACK: Duration = Duration::from_millis(1);
/// The first symbolization is of a Go binary of at least 10 MB.
const MIN_GO_BINARY_BYTES: u64 = 10_000_000;

/// One load run under one policy (`None`: untraced).
#[derive(Clone, Debug, Default)]
pub struct PolicyRun {
    pub policy: Option<String>,
    pub connections: u64,
    pub rate: f64,
    /// CPU of this process (the load: both ends of every connection) during the run. Not the
    /// machine's busy time: other work on a shared machine would land in it.
    pub load_cpu_ns: u64,
    /// Sum over every BPF program of the daemon.
    pub bpf_ns: u64,
    pub daemon_ns: u64,
    pub stacks_captured: u64,
    /// Wanted stacks lost in the kernel (no room in the stack ring, or a failed walk).
    pub stacks_lost: u64,
    /// Per program: (runs, run time in ns).
    pub progs: BTreeMap<String, (u64, u64)>,
}

impl PolicyRun {
    fn per_conn(&self, ns: u64) -> f64 {
        ns as f64 / self.connections.max(1) as f64
    }
}

/// One policy's medians over the rounds.
#[derive(Clone, Debug, Default)]
pub struct PolicySummary {
    pub policy: String,
    pub rate: Summary,
    /// Throughput against `off` in the same round.
    pub ratio: Summary,
    pub bpf_ns_per_conn: Summary,
    pub daemon_ns_per_conn: Summary,
    /// BPF + daemon per connection minus `off`'s in the same round.
    pub added_ns_per_conn: Summary,
    /// That, over the untraced run's machine CPU per connection in the same round.
    pub added_share: Summary,
    pub captured_per_conn: Summary,
    pub lost_per_conn: Summary,
    /// Per program: median ns per run.
    pub ns_per_run: BTreeMap<String, f64>,
}

/// Medians per policy from rounds of runs (each round: one untraced run and one per policy).
pub fn summarize_rounds(rounds: &[Vec<PolicyRun>]) -> Vec<PolicySummary> {
    let find = |round: &[PolicyRun], policy: Option<&str>| {
        round.iter().find(|r| r.policy.as_deref() == policy).cloned()
    };
    let mut out = Vec::new();
    for policy in POLICIES {
        let mut cols: [Vec<f64>; 8] = Default::default();
        let mut per_prog: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for round in rounds {
            let (Some(run), Some(off), Some(untraced)) =
                (find(round, Some(policy)), find(round, Some("off")), find(round, None))
            else {
                continue;
            };
            let cost = |r: &PolicyRun| r.per_conn(r.bpf_ns) + r.per_conn(r.daemon_ns);
            let added = cost(&run) - cost(&off);
            cols[0].push(run.rate);
            cols[1].push(run.rate / off.rate.max(1e-9));
            cols[2].push(run.per_conn(run.bpf_ns));
            cols[3].push(run.per_conn(run.daemon_ns));
            cols[4].push(added);
            cols[5].push(added / untraced.per_conn(untraced.load_cpu_ns).max(1e-9));
            cols[6].push(run.stacks_captured as f64 / run.connections.max(1) as f64);
            cols[7].push(run.stacks_lost as f64 / run.connections.max(1) as f64);
            for (name, (runs, ns)) in &run.progs {
                if *runs > 0 {
                    per_prog.entry(name.clone()).or_default().push(*ns as f64 / *runs as f64);
                }
            }
        }
        let s = |v: &[f64]| summarize(v).unwrap_or_default();
        out.push(PolicySummary {
            policy: policy.to_owned(),
            rate: s(&cols[0]),
            ratio: s(&cols[1]),
            bpf_ns_per_conn: s(&cols[2]),
            daemon_ns_per_conn: s(&cols[3]),
            added_ns_per_conn: s(&cols[4]),
            added_share: s(&cols[5]),
            captured_per_conn: s(&cols[6]),
            lost_per_conn: s(&cols[7]),
            ns_per_run: per_prog
                .into_iter()
                .filter_map(|(name, v)| Some((name, summarize(&v)?.median)))
                .collect(),
        });
    }
    out
}

/// The scale step's memory under one policy.
#[derive(Clone, Debug)]
pub struct MemoryRun {
    pub policy: String,
    pub tracked: u64,
    pub bytes_per_socket: f64,
    pub distinct_stacks: u64,
    /// Held sockets in a stack group, and those whose stack was lost in the kernel.
    pub with_stack: u64,
    pub stack_missing: u64,
}

/// The symbolizer on a Go binary (tracer/examples/symbolize_timing.rs), over several processes:
/// resolving in the daemon (`--privsep off`) and through the inspector part (the default),
/// in alternating order.
#[derive(Clone, Debug, Default)]
pub struct SymbolizeTiming {
    pub binary_bytes: u64,
    pub addresses: u64,
    pub first: Summary,
    pub cached: Summary,
    pub first_apart: Summary,
    pub cached_apart: Summary,
    /// Unwind rules at call sites in the C library, asked once each, as the event path asks
    /// at a call site it meets for the first time: the first (the library's `.eh_frame` read)
    /// and the median of the others, read in the daemon and through the inspector part.
    pub unwind_sites: u64,
    pub unwind_first: Summary,
    pub unwind_next: Summary,
    pub unwind_first_apart: Summary,
    pub unwind_next_apart: Summary,
    pub samples: usize,
}

#[derive(Clone, Debug, Default)]
pub struct StacksReport {
    pub mode: String,
    pub threads: usize,
    pub duration: Duration,
    pub rounds: Vec<Vec<PolicyRun>>,
    pub memory: Vec<MemoryRun>,
    pub scale_connections: usize,
    pub symbolize: Option<SymbolizeTiming>,
    pub symbolize_error: Option<String>,
}

/// Runs the whole part in probe mode `mode`.
pub fn run(ctx: &Bench, mode: &str, rounds: usize, smoke: bool) -> Result<StacksReport> {
    let mut report = StacksReport {
        mode: mode.to_owned(),
        threads: ctx.threads,
        duration: ctx.duration,
        scale_connections: if smoke { 2_000 } else { ctx.args.scale_connections },
        ..StacksReport::default()
    };
    let spec =
        LoadSpec { family: Family::V4, threads: ctx.threads, duration: ctx.duration, rate: None };
    {
        let _stats = bpf::StatsEnabled::new()?;
        for round in 0..rounds {
            let mut order: Vec<Option<&str>> =
                std::iter::once(None).chain(POLICIES.iter().map(|p| Some(*p))).collect();
            // Rotate rather than only reverse: each policy runs first, middle and last in turn.
            let first = round % order.len();
            order.rotate_left(first);
            let mut runs = Vec::new();
            for policy in order {
                let run = one_run(ctx, mode, policy, &spec)
                    .with_context(|| format!("stacks {} run", policy.unwrap_or("untraced")))?;
                eprintln!(
                    "bench: stacks round {}/{rounds} {:<9} {:>8.0} conn/s, BPF {:>6.0} ns/conn, daemon {:>6.0} ns/conn, {:.3} stacks/conn, {:.3} lost",
                    round + 1,
                    policy.unwrap_or("untraced"),
                    run.rate,
                    run.per_conn(run.bpf_ns),
                    run.per_conn(run.daemon_ns),
                    run.stacks_captured as f64 / run.connections.max(1) as f64,
                    run.stacks_lost as f64 / run.connections.max(1) as f64,
                );
                runs.push(run);
            }
            report.rounds.push(runs);
        }
    }

    // Memory: off, all, then all, off again, so that drift over the part favours neither.
    let order: &[&str] = if smoke { &["off", "all"] } else { &["off", "all", "all", "off"] };
    for policy in order {
        let scale_spec = scale::ScaleSpec {
            connections: report.scale_connections,
            processes: 0,
            repeats: 1,
            // With capture off the daemon refuses `tracer stacks` (nothing to group).
            count_stacks: *policy != "off",
            health_cost: false,
        };
        let daemon = start(ctx, mode, policy)?;
        let steps = scale::run(&daemon, &scale_spec)
            .with_context(|| format!("the scale step with --stacks {policy}"))?;
        let status = daemon.status()?;
        daemon.stop()?;
        let step = steps.first().context("the scale step measured nothing")?;
        eprintln!(
            "bench: stacks memory --stacks {policy}: {:.1} bytes per tracked socket at {} sockets (held with a stack, missing: {:?})",
            step.bytes_per_socket, step.tracked, step.stacks_held
        );
        report.memory.push(MemoryRun {
            policy: (*policy).to_owned(),
            tracked: step.tracked,
            bytes_per_socket: step.bytes_per_socket,
            distinct_stacks: field(&status["stacks"], "distinct"),
            with_stack: step.stacks_held.map_or(0, |h| h.0),
            stack_missing: step.stacks_held.map_or(0, |h| h.1),
        });
    }

    match symbolize_timing(ctx, if smoke { 1 } else { 5 }) {
        Ok(t) => report.symbolize = Some(t),
        Err(e) => {
            eprintln!("bench: stacks: symbolization not timed: {e:#}");
            report.symbolize_error = Some(format!("{e:#}"));
        }
    }
    Ok(report)
}

fn start(ctx: &Bench, mode: &str, policy: &str) -> Result<Daemon> {
    Daemon::start_with(&ctx.bin, mode, &["--stacks".to_owned(), policy.to_owned()], &ctx.dir)
        .with_context(|| format!("starting the daemon with --stacks {policy}"))
}

fn one_run(ctx: &Bench, mode: &str, policy: Option<&str>, spec: &LoadSpec) -> Result<PolicyRun> {
    let Some(policy) = policy else {
        let cpu0 = self_cpu_ns()?;
        let load = load::run(spec)?;
        return Ok(PolicyRun {
            policy: None,
            connections: load.connections,
            rate: load.rate(),
            load_cpu_ns: self_cpu_ns()?.saturating_sub(cpu0),
            ..PolicyRun::default()
        });
    };
    let daemon = start(ctx, mode, policy)?;
    let before = daemon.status()?;
    let progs0 = bpf::prog_stats(daemon.pid)?;
    let cpu0 = procfs::process_cpu_ns(daemon.pid)?;
    let load_cpu0 = self_cpu_ns()?;
    let load = load::run(spec)?;
    let load_cpu_ns = self_cpu_ns()?.saturating_sub(load_cpu0);
    let after = daemon.wait_drained(Duration::from_secs(30))?;
    let daemon_ns = procfs::process_cpu_ns(daemon.pid)?.saturating_sub(cpu0);
    let progs = bpf::prog_delta(&progs0, &bpf::prog_stats(daemon.pid)?);
    daemon.stop()?;
    let captured = |s: &serde_json::Value| field(&s["stacks"], "captured");
    let lost = |s: &serde_json::Value| {
        field(&s["stacks"], "lost_ringbuf") + field(&s["stacks"], "unwind_failed")
    };
    Ok(PolicyRun {
        policy: Some(policy.to_owned()),
        connections: load.connections,
        rate: load.rate(),
        load_cpu_ns,
        bpf_ns: progs.iter().map(|p| p.run_time_ns).sum(),
        daemon_ns,
        stacks_captured: captured(&after).saturating_sub(captured(&before)),
        stacks_lost: lost(&after).saturating_sub(lost(&before)),
        progs: by_name(&progs),
    })
}

/// User and system CPU of this process, exited threads included (the load's threads end with
/// each run, so /proc/self/task would miss them).
fn self_cpu_ns() -> Result<u64> {
    // SAFETY: getrusage fills a struct on our stack.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrusage");
        }
        usage
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    Ok(ns(usage.ru_utime) + ns(usage.ru_stime))
}

/// Runs and run time per program name. The kernel keeps 15 characters of a name, so
/// `sys_exit_accept` and `sys_exit_accept4` share one: they are added up, not overwritten.
fn by_name(progs: &[bpf::ProgStats]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in progs {
        let e = out.entry(p.name.clone()).or_default();
        e.0 += p.run_cnt;
        e.1 += p.run_time_ns;
    }
    out
}

/// Builds tracer/tests/programs/opener_go (a Go binary the size of a real service's) and the
/// timing example, then times a fresh symbolizer on `samples` fresh processes of it.
fn symbolize_timing(ctx: &Bench, samples: usize) -> Result<SymbolizeTiming> {
    let program = super::build_go_program(ctx, "opener_go", "opener-go")?;
    let size = std::fs::metadata(&program)
        .with_context(|| format!("reading {}", program.display()))?
        .len();
    eprintln!("bench: stacks: symbolizing {} ({:.1} MB)", program.display(), size as f64 / 1e6);
    check_go_binary_size(size)?;
    crate::setup::run_cmd(Command::new("cargo").current_dir(&ctx.root).args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "tracer",
        "--example",
        "symbolize_timing",
    ]))
    .context("building the symbolize_timing example")?;
    let example = crate::setup::target_dir(&ctx.root).join("release/examples/symbolize_timing");
    let mut timing = SymbolizeTiming { samples, ..SymbolizeTiming::default() };
    let (mut first, mut cached) = (Vec::new(), Vec::new());
    let (mut first_apart, mut cached_apart) = (Vec::new(), Vec::new());
    // Unwind rules: first and next call site, here and apart.
    let mut unwind: [Vec<f64>; 4] = Default::default();
    // Each sample times both, the order alternating.
    let runs =
        (0..samples.max(1)).flat_map(|i| if i % 2 == 0 { [false, true] } else { [true, false] });
    for apart in runs {
        let out = Command::new(&example)
            .arg(&program)
            .args(apart.then_some("--apart"))
            .output()
            .with_context(|| format!("running {}", example.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "symbolize_timing failed ({}): {} {}",
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value =
            serde_json::from_str(text.trim()).context("parsing symbolize_timing's output")?;
        timing.binary_bytes = field(&v, "binary_bytes");
        timing.addresses = field(&v, "addresses");
        let (first, cached) =
            if apart { (&mut first_apart, &mut cached_apart) } else { (&mut first, &mut cached) };
        first.push(field(&v, "first_stack_ns") as f64);
        cached.push(field(&v, "cached_stack_ns") as f64);
        timing.unwind_sites = field(&v, "unwind_sites");
        let side = if apart { 2 } else { 0 };
        unwind[side].push(field(&v, "unwind_first_ns") as f64);
        unwind[side + 1].push(field(&v, "unwind_next_ns") as f64);
    }
    let [unwind_first, unwind_next, unwind_first_apart, unwind_next_apart] =
        unwind.map(|v| summarize(&v).unwrap_or_default());
    timing.unwind_first = unwind_first;
    timing.unwind_next = unwind_next;
    timing.unwind_first_apart = unwind_first_apart;
    timing.unwind_next_apart = unwind_next_apart;
    timing.first = summarize(&first).unwrap_or_default();
    timing.cached = summarize(&cached).unwrap_or_default();
    timing.first_apart = summarize(&first_apart).unwrap_or_default();
    timing.cached_apart = summarize(&cached_apart).unwrap_or_default();
    Ok(timing)
}

/// Refuses a Go binary smaller than the 10 MB: its first symbolization would be
/// timed on less than the target is about.
fn check_go_binary_size(bytes: u64) -> Result<()> {
    if bytes < MIN_GO_BINARY_BYTES {
        bail!(
            "the Go binary to symbolize is {:.1} MB, under the {:.0} MB the target is about: \
             make tracer/tests/programs/opener_go use more packages",
            bytes as f64 / 1e6,
            MIN_GO_BINARY_BYTES as f64 / 1e6
        );
    }
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

fn range(s: &Summary, scale: f64, digits: usize) -> String {
    format!("{:.d$} ({:.d$}-{:.d$})", s.median * scale, s.min * scale, s.max * scale, d = digits)
}

impl StacksReport {
    /// Markdown: the section `cargo xtask bench` adds to its report, and all that
    /// `--stacks-only` prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let summaries = summarize_rounds(&self.rounds);
        let _ = writeln!(o, "## Opener stack capture\n");
        let _ = writeln!(
            o,
            "Probe mode {}, IPv4 max-rate churn from {} threads, {:.1} s per run, {} rounds; each round runs untraced, `--stacks off`, `sampled` (the default) and `all`, in an order rotated each round. Medians over rounds (min-max in parentheses); ratios and deltas are against `off` in the same round. BPF run time comes from bpf_stats, on for every run of this part.\n",
            self.mode,
            self.threads,
            self.duration.as_secs_f64(),
            self.rounds.len()
        );
        let _ = writeln!(
            o,
            "| `--stacks` | conn/s | throughput vs off | BPF ns/conn | daemon ns/conn | added BPF+daemon ns/conn | share of an untraced connection's CPU | stacks/conn | lost stacks/conn |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for s in &summaries {
            let _ = writeln!(
                o,
                "| `{}` | {:.0} | {} | {} | {} | {} | {}% | {:.3} | {:.3} |",
                s.policy,
                s.rate.median,
                range(&s.ratio, 1.0, 3),
                range(&s.bpf_ns_per_conn, 1.0, 0),
                range(&s.daemon_ns_per_conn, 1.0, 0),
                range(&s.added_ns_per_conn, 1.0, 0),
                range(&s.added_share, 100.0, 2),
                s.captured_per_conn.median,
                s.lost_per_conn.median,
            );
        }
        let untraced: Vec<f64> = self
            .rounds
            .iter()
            .flatten()
            .filter(|r| r.policy.is_none())
            .map(|r| r.per_conn(r.load_cpu_ns))
            .collect();
        if let Some(u) = summarize(&untraced) {
            let _ = writeln!(
                o,
                "\nAn untraced connection cost the load process {:.1} µs of CPU (user + system, both ends, median); the share above is against that.",
                u.median / 1e3
            );
        }
        let programs: Vec<&String> = summaries
            .iter()
            .flat_map(|s| s.ns_per_run.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !programs.is_empty() {
            let _ = writeln!(o, "\n| BPF program (ns per run) | `off` | `sampled` | `all` |");
            let _ = writeln!(o, "| --- | ---: | ---: | ---: |");
            for name in programs {
                let cell = |s: &PolicySummary| {
                    s.ns_per_run.get(name).map_or("-".to_owned(), |ns| format!("{ns:.0}"))
                };
                let cells: Vec<String> = summaries.iter().map(cell).collect();
                let _ = writeln!(o, "| `{name}` | {} |", cells.join(" | "));
            }
        }
        if let Some(sampled) = summaries.iter().find(|s| s.policy == "sampled") {
            let _ = writeln!(
                o,
                "\nTarget: the default policy adds at most {:.0}% of an untraced connection's CPU (BPF + daemon) against `off`: {:.2}%, {}.",
                TARGET_CPU_SHARE * 100.0,
                sampled.added_share.median * 100.0,
                verdict(sampled.added_share.median <= TARGET_CPU_SHARE)
            );
        }
        self.render_memory(&mut o);
        self.render_symbolize(&mut o);
        o
    }

    fn render_memory(&self, o: &mut String) {
        if self.memory.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\nDaemon memory per tracked socket (RSS growth over the tracked sockets) at {} held loopback connections, each daemon fresh:\n",
            super::report::thousands(self.scale_connections as u64)
        );
        let _ = writeln!(
            o,
            "| `--stacks` | tracked sockets | bytes per socket | held sockets with a stack | stack lost in the kernel | distinct stacks held |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: |");
        for m in &self.memory {
            let _ = writeln!(
                o,
                "| `{}` | {} | {:.1} | {} | {} | {} |",
                m.policy,
                super::report::thousands(m.tracked),
                m.bytes_per_socket,
                super::report::thousands(m.with_stack),
                super::report::thousands(m.stack_missing),
                m.distinct_stacks
            );
        }
        let median = |policy: &str, f: &dyn Fn(&MemoryRun) -> f64| {
            let v: Vec<f64> = self.memory.iter().filter(|m| m.policy == policy).map(f).collect();
            summarize(&v).map(|s| s.median)
        };
        let bytes = |m: &MemoryRun| m.bytes_per_socket;
        if let (Some(off), Some(all)) = (median("off", &bytes), median("all", &bytes)) {
            let added = all - off;
            // Sockets whose stack was lost cost nothing: price the ones that have one.
            let held = 2.0 * self.scale_connections.max(1) as f64;
            let share = median("all", &|m| m.with_stack as f64 / held).unwrap_or(0.0);
            let per_stacked = if share > 0.0 { added / share } else { f64::NAN };
            let _ = writeln!(
                o,
                "\nTarget: `all` adds at most {TARGET_BYTES_PER_SOCKET:.0} bytes per tracked socket: {added:.1} bytes (median {all:.1} against {off:.1}), {}; {:.0}% of the held sockets have their stack, so {per_stacked:.1} bytes per socket that has one, {}.",
                verdict(added <= TARGET_BYTES_PER_SOCKET),
                share * 100.0,
                verdict(per_stacked <= TARGET_BYTES_PER_SOCKET)
            );
        }
    }

    fn render_symbolize(&self, o: &mut String) {
        match (&self.symbolize, &self.symbolize_error) {
            (Some(t), _) => {
                let _ = writeln!(
                    o,
                    "\nSymbolization (tracer/examples/symbolize_timing.rs: the daemon's symbolizer service, a fresh one and a fresh process each time, {} times) of a stack of {} addresses in a {:.1} MB Go binary with DWARF, parsed by the inspector part (the default): first stack {} ms (target < {} ms, {}), the same stack again {} µs (target < {} µs, {}). Parsed in the daemon itself (`--privsep off`), in the same rounds: first stack {} ms, again {} µs.",
                    t.samples,
                    t.addresses,
                    t.binary_bytes as f64 / 1e6,
                    range(&t.first_apart, 1e-6, 1),
                    TARGET_FIRST_SYMBOLIZATION.as_millis(),
                    verdict(t.first_apart.median < TARGET_FIRST_SYMBOLIZATION.as_nanos() as f64),
                    range(&t.cached_apart, 1e-3, 1),
                    TARGET_CACHED_STACK.as_micros(),
                    verdict(t.cached_apart.median < TARGET_CACHED_STACK.as_nanos() as f64),
                    range(&t.first, 1e-6, 1),
                    range(&t.cached, 1e-3, 1),
                );
                let _ = writeln!(
                    o,
                    "\nUnwind rules (same example and rounds) at {} call sites in the C library, each asked once, as the event path asks at a call site it meets for the first time (it caches the rule after): through the inspector part (the default), the first {} ms (the library's `.eh_frame` read) and each next one {} µs (one round trip to it); read in the daemon itself (`--privsep off`), {} ms and {} µs.",
                    t.unwind_sites,
                    range(&t.unwind_first_apart, 1e-6, 2),
                    range(&t.unwind_next_apart, 1e-3, 1),
                    range(&t.unwind_first, 1e-6, 2),
                    range(&t.unwind_next, 1e-3, 1),
                );
            }
            (None, Some(e)) => {
                let _ = writeln!(o, "\nSymbolization: not timed ({e}).");
            }
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_binary_under_10_mb_is_refused() {
        assert!(check_go_binary_size(MIN_GO_BINARY_BYTES - 1).is_err());
        assert!(check_go_binary_size(MIN_GO_BINARY_BYTES).is_ok());
    }

    /// The bench's Go program, built as the bench builds it, is big enough (needs `go`:
    /// `cargo xtask setup`).
    #[test]
    fn the_go_program_the_bench_symbolizes_is_at_least_10_mb() {
        let root = crate::workspace_root();
        let dir = crate::setup::target_dir(&root).join("xtask-test-opener-go");
        let go_cache = crate::setup::target_dir(&root).join("bench-go");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(dir.join("opener-go"))
            .arg("main.go")
            .current_dir(root.join("tracer/tests/programs/opener_go"))
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", go_cache.join("cache"))
            .env("GOPATH", go_cache.join("path"))
            .status()
            .expect("run go (cargo xtask setup installs it)");
        assert!(status.success(), "go build of opener_go");
        let size = std::fs::metadata(dir.join("opener-go")).expect("the binary").len();
        assert!(check_go_binary_size(size).is_ok(), "{size} bytes");
    }

    fn run(policy: Option<&str>, conns: u64, system: u64, bpf: u64, daemon: u64) -> PolicyRun {
        PolicyRun {
            policy: policy.map(str::to_owned),
            connections: conns,
            rate: conns as f64,
            load_cpu_ns: system,
            bpf_ns: bpf,
            daemon_ns: daemon,
            ..PolicyRun::default()
        }
    }

    #[test]
    fn deltas_and_shares_are_paired_within_a_round() {
        // Round 1: untraced 50 us/conn; off 3 us; sampled 3.5 us; all 6 us.
        let r1 = vec![
            run(None, 1000, 50_000_000, 0, 0),
            run(Some("off"), 1000, 0, 2_000_000, 1_000_000),
            run(Some("sampled"), 900, 0, 2_250_000, 900_000),
            run(Some("all"), 800, 0, 4_000_000, 800_000),
        ];
        // Round 2: everything twice as dear (a slower machine): shares stay the same.
        let r2 = vec![
            run(None, 500, 50_000_000, 0, 0),
            run(Some("off"), 500, 0, 2_000_000, 1_000_000),
            run(Some("sampled"), 450, 0, 2_250_000, 900_000),
            run(Some("all"), 400, 0, 4_000_000, 800_000),
        ];
        let s = summarize_rounds(&[r1, r2]);
        assert_eq!(s.iter().map(|p| p.policy.as_str()).collect::<Vec<_>>(), POLICIES);
        let sampled = &s[1];
        assert!((sampled.ratio.median - 0.9).abs() < 1e-9);
        assert!((sampled.added_ns_per_conn.min - 500.0).abs() < 1e-6);
        assert!((sampled.added_ns_per_conn.max - 1000.0).abs() < 1e-6);
        assert!((sampled.added_share.median - 0.01).abs() < 1e-9);
        assert_eq!(s[0].added_ns_per_conn.median, 0.0);
        assert!((s[2].added_share.median - 0.06).abs() < 1e-9);
    }

    #[test]
    fn a_round_without_its_off_run_is_left_out() {
        let s = summarize_rounds(&[vec![run(None, 1, 1, 0, 0), run(Some("all"), 1, 0, 1, 1)]]);
        assert_eq!(s[2].rate.median, 0.0, "no off run: nothing to compare against");
    }
}
