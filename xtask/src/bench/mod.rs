//! `cargo xtask bench`: what tracing costs a busy host, against running untraced and against a
//! bpftrace script a user would otherwise pick; what the daemon costs in CPU and memory; how its
//! queries behave at 100,000 sockets. Writes docs/performance.md (see that file for the method).
mod bpf;
mod containers;
mod go_requests;
mod load;
mod micro;
mod procfs;
mod report;
mod scale;
mod stacks;
mod stats;
mod time_wait;
mod tracers;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use load::{Family, LoadResult, LoadSpec};
use tracers::{Bpftrace, Daemon, field};

/// The reference script, written next to the daemon's socket at run time.
const TCPLIFE_BT: &str = include_str!("tcplife.bt");

/// Probe modes in the order `--probe auto` prefers them.
const MODES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Untraced/traced pairs per load; ratios are reported as the median over the pairs.
    #[arg(long, default_value_t = 9)]
    pub pairs: usize,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 4.0)]
    pub duration: f64,
    /// Load threads (default: twice the CPUs, at least 4).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Connections per second of the fixed-rate load (default: a quarter of the untraced IPv4 max rate,
    /// measured once at the start, so that the machine has headroom whatever its speed).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Loopback connections held in the scale step (two tracked sockets each).
    #[arg(long, default_value_t = 50_000)]
    pub scale_connections: usize,
    /// Processes holding one connection each in the second scale step.
    #[arg(long, default_value_t = 3_000)]
    pub scale_processes: usize,
    /// A few seconds of everything (1 pair, small scale), for CI-like checks; does not write
    /// docs/performance.md unless --write is given.
    #[arg(long)]
    pub smoke: bool,
    /// Write docs/performance.md even with --smoke.
    #[arg(long)]
    pub write: bool,
    /// Do not wait for running qemu VMs (their load skews every number).
    #[arg(long)]
    pub no_wait: bool,
    /// Only the opener-stack part: `--stacks off`, `sampled` and `all` side by side (`--pairs`
    /// rounds), daemon memory per tracked socket with `all` against `off` (at
    /// `--scale-connections`), and the symbolizer on a Go binary. Prints the section and writes
    /// target/bench/stacks.md; the full run adds the same section to docs/performance.md.
    #[arg(long)]
    pub stacks_only: bool,
    /// Only the scale step: daemon memory and query latencies at `--scale-connections` held
    /// connections, and what the pool-health dumps cost at that size; then TIME_WAIT blame at
    /// the saturation rate (a max-rate churn until the host's TIME_WAIT table is full).
    #[arg(long, conflicts_with = "stacks_only")]
    pub scale_only: bool,
    /// Only the container-resolution part: the daemon's CPU per connection with the load in a
    /// docker-shaped cgroup (resolved to a container) against the load in the bench's own
    /// cgroup, side by side (`--pairs` rounds, alternating). Prints the section and writes
    /// target/bench/containers.md; the full run adds the same section to docs/performance.md.
    /// Give a fixed `--rate`: at the maximum rate the daemon batches differently per rate.
    #[arg(long, conflicts_with_all = ["stacks_only", "scale_only"])]
    pub containers_only: bool,
    /// Only the Go request probe's cost: a Go HTTP client's requests per second under a daemon
    /// with `--go-requests all` and `off`, side by side (`--pairs` rounds, alternating). Prints
    /// the section and writes target/bench/go-requests.md; the full run adds the same section
    /// to docs/performance.md.
    #[arg(long, conflicts_with_all = ["stacks_only", "scale_only", "containers_only"])]
    pub go_requests_only: bool,
    /// Skip the criterion micro-benchmarks.
    #[arg(long)]
    pub skip_micro: bool,
    /// Skip the perf profile of the daemon.
    #[arg(long)]
    pub skip_profile: bool,
    /// Benchmark this tracer binary instead of building target/release/tracer.
    #[arg(long, value_name = "PATH")]
    pub tracer_bin: Option<PathBuf>,
    /// Development: only the loads whose label contains this text (e.g. "IPv4 fixed").
    #[arg(long, hide = true)]
    pub only: Option<String>,
    /// Development: skip the diagnostic run and the scale step.
    #[arg(long, hide = true)]
    pub loads_only: bool,
    /// Development: run this bpftrace script as the reference instead of tcplife.bt (to price
    /// one hook on its own, e.g. an empty program on a tracepoint).
    #[arg(long, hide = true, value_name = "PATH")]
    pub reference_script: Option<PathBuf>,
    /// Also run the daemon (best mode) with these extra `tracer run` flags in every pair, to
    /// measure one setting side by side. Repeatable. The defaults measure the wakeup batching
    /// (docs/architecture.md) against the kernel's default wakeups (whenever a record arrives
    /// while the reader is idle), and what counting the runs the kernel never made costs
    /// (docs/semantics.md); `--variant ""` runs none.
    #[arg(
        long,
        value_name = "FLAGS",
        default_values_t = [
            String::from("--wakeup-bytes 0 --drain-interval-ms 10"),
            String::from("--never-run-count off"),
        ]
    )]
    pub variant: Vec<String>,
    /// Also run this other tracer binary (best mode, default flags) in every pair: a change's
    /// cost side by side with the build before it (build that one from a worktree of the
    /// earlier commit).
    #[arg(long, value_name = "PATH")]
    pub baseline_bin: Option<PathBuf>,
    /// Also run the daemon (best mode) with a `tracer trace --json --states` subscriber reading
    /// every record, in every pair: the live stream's cost (its CPU counts as the tracer's).
    #[arg(long)]
    pub trace_subscriber: bool,
}

/// Who traces during a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracer {
    None,
    Daemon(String),
    /// The daemon in a mode with extra `tracer run` flags (`--variant`).
    Variant(String, Vec<String>),
    /// Another build of the daemon in a mode (`--baseline-bin`).
    Baseline(String, PathBuf),
    /// The daemon in a mode with a `tracer trace` subscriber (`--trace-subscriber`).
    Subscribed(String),
    Bpftrace,
}

impl Tracer {
    pub fn label(&self) -> String {
        match self {
            Tracer::None => "untraced".into(),
            Tracer::Daemon(mode) => format!("tracer ({mode})"),
            Tracer::Variant(mode, args) => format!("tracer ({mode}, {})", args.join(" ")),
            Tracer::Baseline(mode, bin) => format!("baseline ({mode}, {})", bin.display()),
            Tracer::Subscribed(mode) => format!("tracer ({mode}) + tracer trace"),
            Tracer::Bpftrace => "bpftrace tcplife.bt".into(),
        }
    }
}

/// One load run and what the tracer did meanwhile.
#[derive(Clone, Debug)]
pub struct Run {
    pub tracer: Tracer,
    pub load: LoadResult,
    /// Busy CPU of the whole machine during the load, in nanoseconds.
    pub system_ns: u64,
    /// The tracer process's CPU from load start until it had drained everything, in nanoseconds.
    pub tracer_ns: Option<u64>,
    pub tracer_hwm: Option<u64>,
    pub events_lost: Option<u64>,
    /// The daemon's ring buffer high water (`ring_high_water_bytes` of its status).
    pub ring_high_water: Option<u64>,
    /// Events the daemon received, and its voluntary context switches (about one per batch).
    pub events: Option<u64>,
    pub wakeups: Option<u64>,
}

impl Run {
    pub fn system_us_per_conn(&self) -> f64 {
        self.system_ns as f64 / 1e3 / self.load.connections.max(1) as f64
    }

    pub fn tracer_us_per_conn(&self) -> Option<f64> {
        self.tracer_ns.map(|ns| ns as f64 / 1e3 / self.load.connections.max(1) as f64)
    }
}

/// A load shape: family and max-rate or fixed-rate.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub family: Family,
    pub rate: Option<f64>,
}

impl Scenario {
    pub fn label(&self) -> String {
        match self.rate {
            None => format!("{} max rate", self.family.name()),
            Some(r) => {
                format!("{} fixed {} conn/s", self.family.name(), report::thousands(r as u64))
            }
        }
    }
}

/// Every run of one scenario, grouped by pair.
#[derive(Clone, Debug)]
pub struct ScenarioRuns {
    pub scenario: Scenario,
    pub pairs: Vec<Vec<Run>>,
}

/// The diagnostic run: a traced run under the microscope (not part of the ratios).
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub mode: String,
    pub connections: u64,
    pub events: u64,
    pub rate: f64,
    pub ring_bytes: u64,
    pub ring_high_water: Option<u64>,
    pub ring_samples: u64,
    pub ring_error: Option<String>,
    /// What the daemon itself reports (`ring_high_water_bytes`).
    pub daemon_ring_high_water: u64,
    pub wakeups: u64,
    pub daemon_us_per_conn: f64,
    pub progs: Vec<bpf::ProgStats>,
    /// irq_work interrupts (IWI in /proc/interrupts) during the tracer's and bpftrace's runs, and
    /// per connection untraced: the ring buffer's (and perf buffer's) reader wakeups.
    pub irq_work: u64,
    pub bpftrace_irq_work: u64,
    pub untraced_irq_work_per_conn: f64,
    pub bpftrace_progs: Vec<bpf::ProgStats>,
    pub bpftrace_connections: u64,
    pub bpftrace_us_per_conn: f64,
    pub profile: Vec<String>,
    /// Tracing-related kernel symbols in the load's own profile.
    pub load_profile: Vec<String>,
    pub profile_note: Option<String>,
    pub smaps: Vec<(String, u64)>,
}

pub struct Bench {
    pub args: BenchArgs,
    pub root: PathBuf,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub script: PathBuf,
    pub threads: usize,
    pub duration: Duration,
}

/// The churn load alone (`cargo xtask load`): prints connections per second.
pub fn churn(seconds: f64, threads: usize, ipv6: bool) -> Result<()> {
    let family = if ipv6 { Family::V6 } else { Family::V4 };
    let spec = LoadSpec { family, threads, duration: Duration::from_secs_f64(seconds), rate: None };
    let result = load::run(&spec)?;
    println!(
        "{} connections in {:.2} s: {:.0} conn/s, {} errors",
        result.connections,
        result.elapsed.as_secs_f64(),
        result.rate(),
        result.errors
    );
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    require_root()?;
    require_tool("bpftrace", "bpftrace", &["--version"])?;
    if !args.skip_profile {
        require_tool("perf", "linux-perf", &["--version"])?;
    }
    let root = workspace_root();
    let bin = match &args.tracer_bin {
        Some(bin) => bin.clone(),
        None => {
            eprintln!("bench: building the release tracer");
            crate::setup::build_release_tracer()?
        }
    };
    if !bin.exists() {
        bail!("{} does not exist", bin.display());
    }
    let dir = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _cleanup = RemoveDir(dir.clone());
    let script = dir.join("tcplife.bt");
    let reference = match &args.reference_script {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => TCPLIFE_BT.to_string(),
    };
    std::fs::write(&script, reference).with_context(|| format!("writing {}", script.display()))?;
    // Measure a private copy: a rebuild of target/release/tracer during the run (someone
    // working in the same tree) must not swap the binary between runs.
    let bin = {
        let copy = dir.join("tracer");
        std::fs::copy(&bin, &copy)
            .with_context(|| format!("copying {} to {}", bin.display(), copy.display()))?;
        copy
    };

    let smoke = args.smoke;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let ctx = Bench {
        threads: args.threads.unwrap_or((2 * cpus).max(4)),
        duration: Duration::from_secs_f64(if smoke {
            args.duration.min(1.5)
        } else {
            args.duration
        }),
        args,
        root,
        bin,
        dir,
        script,
    };
    let pairs = if smoke { 1 } else { ctx.args.pairs.max(1) };

    let wait = !smoke && !ctx.args.no_wait;
    let mut waited = if wait {
        wait_for_quiet(Duration::from_secs(30)) + wait_for_idle_cpus()?
    } else {
        Duration::ZERO
    };
    let (mut runs_total, mut runs_with_qemu) = (0usize, 0usize);
    let started = Instant::now();
    let machine = procfs::Machine::read()?;
    let commit = git_commit(&ctx.root);
    let date = report::utc_now();
    let load_before = procfs::loadavg();

    if ctx.args.stacks_only {
        // The wait above is all it needs: it runs right away.
        return stacks_only(&ctx, pairs);
    }
    if ctx.args.scale_only {
        return scale_only(&ctx);
    }
    if ctx.args.containers_only {
        return containers_only(&ctx, pairs);
    }
    if ctx.args.go_requests_only {
        return one_part(&ctx, "go-requests", |best| {
            Ok(go_requests::run(&ctx, best, pairs, smoke)?.render())
        });
    }

    let micro = if ctx.args.skip_micro {
        None
    } else {
        eprintln!("bench: criterion micro-benchmarks");
        Some(micro::run(&ctx.root, smoke)?)
    };

    let (modes, skipped) = probe_modes(&ctx);
    let variants: Vec<Tracer> = match modes.first() {
        Some(best) => ctx
            .args
            .variant
            .iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                Tracer::Variant(best.clone(), v.split_whitespace().map(str::to_owned).collect())
            })
            .chain(
                ctx.args.baseline_bin.iter().map(|bin| Tracer::Baseline(best.clone(), bin.clone())),
            )
            .chain(ctx.args.trace_subscriber.then(|| Tracer::Subscribed(best.clone())))
            .collect(),
        None => Vec::new(),
    };
    let Some(best) = modes.first().cloned() else {
        bail!("no probe mode starts on this machine: {skipped:?}");
    };

    let rate = match ctx.args.rate {
        Some(rate) => rate,
        None => {
            if wait {
                if !qemu_running().is_empty() {
                    waited += wait_for_quiet(Duration::from_secs(10));
                }
                waited += wait_for_idle_cpus()?;
            }
            let spec = LoadSpec {
                family: Family::V4,
                threads: ctx.threads,
                duration: ctx.duration,
                rate: None,
            };
            let max = load::run(&spec).context("calibrating the fixed rate")?.rate();
            // A quarter of the saturation rate, in round thousands: pacing makes each connection
            // dearer (a sleep and a timer wakeup each, VM exits on a VM), and at half the rate
            // the CPUs were already ~90% busy.
            let rate = ((max / 4.0 / 1000.0).round() * 1000.0).max(1000.0);
            eprintln!(
                "bench: untraced IPv4 max rate {max:.0} conn/s: fixed-rate loads run at {rate:.0} conn/s"
            );
            rate
        }
    };
    let scenarios = [
        Scenario { family: Family::V4, rate: None },
        Scenario { family: Family::V6, rate: None },
        Scenario { family: Family::V4, rate: Some(rate) },
        Scenario { family: Family::V6, rate: Some(rate) },
    ];
    let mut results: Vec<ScenarioRuns> = scenarios
        .iter()
        .filter(|s| ctx.args.only.as_ref().is_none_or(|only| s.label().contains(only.as_str())))
        .map(|&scenario| ScenarioRuns { scenario, pairs: Vec::new() })
        .collect();
    for pair in 0..pairs {
        for sr in &mut results {
            // Alternate the order within pairs so that drift over a pair favours nobody.
            let mut order: Vec<Tracer> = std::iter::once(Tracer::None)
                .chain(modes.iter().map(|m| Tracer::Daemon(m.clone())))
                .chain(variants.iter().cloned())
                .chain(std::iter::once(Tracer::Bpftrace))
                .collect();
            if pair % 2 == 1 {
                order.reverse();
            }
            // A VM started meanwhile, or another job is busy: let it finish before this pair.
            if wait {
                if !qemu_running().is_empty() {
                    waited += wait_for_quiet(Duration::from_secs(10));
                }
                waited += wait_for_idle_cpus()?;
            }
            let mut runs = Vec::new();
            for tracer in order {
                let qemu_before = !qemu_running().is_empty();
                let run = one_run(&ctx, &sr.scenario, &tracer)
                    .with_context(|| format!("{} run, {}", tracer.label(), sr.scenario.label()))?;
                runs_total += 1;
                if qemu_before || !qemu_running().is_empty() {
                    runs_with_qemu += 1;
                }
                eprintln!(
                    "bench: pair {}/{pairs} {:<24} {:<22} {:>9.0} conn/s{}{}",
                    pair + 1,
                    sr.scenario.label(),
                    tracer.label(),
                    run.load.rate(),
                    run.tracer_us_per_conn()
                        .map_or(String::new(), |us| format!(", tracer {us:.2} us/conn")),
                    match &run.load.first_error {
                        Some(e) => format!(", {} failed connections (first: {e})", run.load.errors),
                        None => String::new(),
                    },
                );
                runs.push(run);
            }
            sr.pairs.push(runs);
        }
    }

    let scale_spec = if smoke {
        scale::ScaleSpec {
            connections: 2_000,
            processes: 50,
            repeats: 2,
            count_stacks: false,
            health_cost: false,
        }
    } else {
        scale::ScaleSpec {
            connections: ctx.args.scale_connections,
            processes: ctx.args.scale_processes,
            repeats: 5,
            count_stacks: false,
            health_cost: true,
        }
    };
    let (diagnostics, scale) = if ctx.args.loads_only {
        (Diagnostics { mode: best.clone(), ..Diagnostics::default() }, Vec::new())
    } else {
        eprintln!("bench: diagnostic run ({best})");
        let diagnostics = diagnose(&ctx, &best)?;
        eprintln!("bench: scale");
        let daemon = Daemon::start(&ctx.bin, &best, &ctx.dir)
            .context("starting the daemon for the scale step")?;
        let scale = scale::run(&daemon, &scale_spec)?;
        daemon.stop()?;
        (diagnostics, scale)
    };
    let stacks = if ctx.args.loads_only {
        None
    } else {
        eprintln!("bench: opener stacks ({best})");
        Some(stacks::run(&ctx, &best, pairs, smoke)?)
    };
    let containers = if ctx.args.loads_only {
        None
    } else {
        eprintln!("bench: container resolution ({best})");
        Some(containers::run(&ctx, &best, pairs)?)
    };
    let go_requests = if ctx.args.loads_only {
        None
    } else {
        eprintln!("bench: Go request probe ({best})");
        Some(go_requests::run(&ctx, &best, pairs, smoke)?)
    };

    let doc = report::Report {
        machine,
        commit,
        date,
        smoke,
        pairs,
        threads: ctx.threads,
        duration: ctx.duration,
        modes,
        variants,
        skipped,
        results,
        diagnostics,
        scale,
        scale_spec,
        micro,
        load_before,
        load_after: procfs::loadavg(),
        waited,
        elapsed: started.elapsed(),
        runs_total,
        runs_with_qemu,
    }
    .render();
    let doc = match &stacks {
        Some(stacks) => format!("{doc}\n{}", stacks.render()),
        None => doc,
    };
    let doc = match &containers {
        Some(containers) => format!("{doc}\n{}", containers.render()),
        None => doc,
    };
    let doc = match &go_requests {
        Some(go_requests) => format!("{doc}\n{}", go_requests.render()),
        None => doc,
    };
    print!("{}", report::summary_for_terminal(&doc));
    let out_dir = ctx.root.join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    std::fs::write(out_dir.join("performance.md"), &doc)
        .context("writing target/bench/performance.md")?;
    // A partial run (development options) never replaces the full table.
    let partial = ctx.args.only.is_some() || ctx.args.loads_only;
    if (!smoke || ctx.args.write) && !partial {
        let path = ctx.root.join("docs/performance.md");
        // The soak's section (`cargo xtask soak --write`) is not the bench's: keep it.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let doc = match crate::soak::existing_section(&old) {
            Some(section) => crate::soak::replace_section(&doc, section),
            None => doc,
        };
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    } else {
        eprintln!(
            "bench: smoke or partial run: wrote target/bench/performance.md only (--write to update docs/performance.md)"
        );
    }
    Ok(())
}

/// Which probe modes start here (in `MODES` order), and why the others do not.
fn probe_modes(ctx: &Bench) -> (Vec<String>, Vec<(String, String)>) {
    let mut modes = Vec::new();
    let mut skipped = Vec::new();
    for mode in MODES {
        match Daemon::start(&ctx.bin, mode, &ctx.dir).and_then(Daemon::stop) {
            Ok(()) => modes.push(mode.to_owned()),
            Err(e) => {
                eprintln!("bench: probe mode {mode} skipped: {e:#}");
                skipped.push((mode.to_owned(), format!("{e:#}")));
            }
        }
    }
    (modes, skipped)
}

/// Builds tracer/tests/programs/SOURCE (static, with its symbols and DWARF) into the bench's
/// directory as NAME, with a Go cache under target/ that later runs reuse.
fn build_go_program(ctx: &Bench, source: &str, name: &str) -> Result<PathBuf> {
    let go = crate::setup::which("go")
        .context("no `go` on the host to build the Go program: run `cargo xtask setup`")?;
    let program = ctx.dir.join(name);
    let go_cache = crate::setup::target_dir(&ctx.root).join("bench-go");
    crate::setup::run_cmd(
        std::process::Command::new(go)
            .args(["build", "-o"])
            .arg(&program)
            .arg("main.go")
            .current_dir(ctx.root.join("tracer/tests/programs").join(source))
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", go_cache.join("cache"))
            .env("GOPATH", go_cache.join("path")),
    )
    .with_context(|| format!("building tracer/tests/programs/{source}"))?;
    Ok(program)
}

/// `--stacks-only`: the opener-stack part alone, in the best probe mode.
fn stacks_only(ctx: &Bench, rounds: usize) -> Result<()> {
    one_part(ctx, "stacks", |best| Ok(stacks::run(ctx, best, rounds, ctx.args.smoke)?.render()))
}

/// `--containers-only`: the container-resolution part alone, in the best probe mode.
fn containers_only(ctx: &Bench, rounds: usize) -> Result<()> {
    one_part(ctx, "containers", |best| Ok(containers::run(ctx, best, rounds)?.render()))
}

/// Runs one part of the bench alone in the best probe mode (`run` gets the mode and renders
/// the part), prints it with the machine and commit, and writes target/bench/NAME.md.
fn one_part(ctx: &Bench, name: &str, run: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    let (modes, skipped) = probe_modes(ctx);
    let Some(best) = modes.first() else {
        bail!("no probe mode starts on this machine: {skipped:?}");
    };
    let started = Instant::now();
    let rendered = run(best)?;
    let machine = procfs::Machine::read()?;
    let doc = format!(
        "{}\nMeasured {} on {} ({} CPUs, kernel {}) at commit {} in {:.0} s.\n",
        rendered,
        report::utc_now(),
        machine.cpu_model,
        machine.cpus,
        machine.kernel,
        git_commit(&ctx.root),
        started.elapsed().as_secs_f64()
    );
    print!("{doc}");
    let out_dir = ctx.root.join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let file = format!("{name}.md");
    std::fs::write(out_dir.join(&file), &doc)
        .with_context(|| format!("writing target/bench/{file}"))?;
    eprintln!("bench: wrote target/bench/{file}");
    Ok(())
}

/// `--scale-only`: the full bench's scale step alone, in the best probe mode.
fn scale_only(ctx: &Bench) -> Result<()> {
    let (modes, skipped) = probe_modes(ctx);
    let Some(best) = modes.first() else {
        bail!("no probe mode starts on this machine: {skipped:?}");
    };
    let spec = scale::ScaleSpec {
        connections: ctx.args.scale_connections,
        processes: 0,
        repeats: 3,
        count_stacks: false,
        health_cost: true,
    };
    let daemon = Daemon::start(&ctx.bin, best, &ctx.dir).context("starting the daemon")?;
    let steps = scale::run(&daemon, &spec)?;
    daemon.stop()?;
    let daemon = Daemon::start(&ctx.bin, best, &ctx.dir).context("starting the daemon")?;
    let tw = time_wait::run(&daemon, 8)?;
    daemon.stop()?;
    eprintln!(
        "bench: TIME_WAIT at saturation ({best}): {} connections in {:.1} s; {} closes remembered, {} over the bound (tcp_max_tw_buckets {}); daemon RSS {:+.1} MiB; after the next scan {} blamed on the load, {} TIME_WAIT sockets of the churn listed by the kernel; {} events lost",
        tw.connections,
        tw.seconds,
        tw.remembered,
        tw.overflowed,
        tw.max_tw_buckets,
        tw.rss_growth as f64 / f64::from(1 << 20),
        tw.caused,
        tw.time_wait_now,
        tw.events_lost
    );
    for step in &steps {
        eprintln!(
            "bench: scale ({best}): {} tracked sockets, {:.1} bytes per socket, top {:?}, conns {:?}",
            step.tracked, step.bytes_per_socket, step.top.median, step.conns.median
        );
    }
    Ok(())
}

/// One load run under `tracer`.
fn one_run(ctx: &Bench, scenario: &Scenario, tracer: &Tracer) -> Result<Run> {
    let spec = LoadSpec {
        family: scenario.family,
        threads: ctx.threads,
        duration: ctx.duration,
        rate: scenario.rate,
    };
    match tracer {
        Tracer::None => {
            let busy = procfs::BusyClock::start()?;
            let load = load::run(&spec)?;
            let system_ns = busy.busy_ns()?;
            Ok(Run {
                tracer: tracer.clone(),
                load,
                system_ns,
                tracer_ns: None,
                tracer_hwm: None,
                events_lost: None,
                ring_high_water: None,
                events: None,
                wakeups: None,
            })
        }
        Tracer::Daemon(_) | Tracer::Variant(..) | Tracer::Baseline(..) | Tracer::Subscribed(_) => {
            let daemon = match tracer {
                Tracer::Subscribed(mode) => Daemon::start(&ctx.bin, mode, &ctx.dir)?,
                Tracer::Variant(mode, args) => Daemon::start_with(&ctx.bin, mode, args, &ctx.dir)?,
                Tracer::Daemon(mode) => Daemon::start(&ctx.bin, mode, &ctx.dir)?,
                Tracer::Baseline(mode, bin) => Daemon::start_with(bin, mode, &[], &ctx.dir)?,
                _ => unreachable!("matched above"),
            };
            let mut subscriber = match tracer {
                Tracer::Subscribed(_) => Some(daemon.subscribe()?),
                _ => None,
            };
            let before = daemon.status()?;
            let wake0 = voluntary_switches(daemon.pid);
            let cpu0 = procfs::process_cpu_ns(daemon.pid)?;
            let sub_cpu0 = match &subscriber {
                Some(s) => procfs::process_cpu_ns(s.id())?,
                None => 0,
            };
            let busy = procfs::BusyClock::start()?;
            let load = load::run(&spec)?;
            let system_ns = busy.busy_ns()?;
            let after = daemon.wait_drained(Duration::from_secs(30))?;
            // The subscriber's own CPU counts as the tracer's: it is what watching costs.
            let sub_ns = match &subscriber {
                Some(s) => procfs::process_cpu_ns(s.id())?.saturating_sub(sub_cpu0),
                None => 0,
            };
            if let Some(s) = subscriber.as_mut() {
                let _ = s.kill();
                let _ = s.wait();
            }
            let tracer_ns = procfs::process_cpu_ns(daemon.pid)?.saturating_sub(cpu0) + sub_ns;
            let wakeups = voluntary_switches(daemon.pid).saturating_sub(wake0);
            let hwm = procfs::status_bytes(daemon.pid, "VmHWM")?;
            daemon.stop()?;
            Ok(Run {
                tracer: tracer.clone(),
                load,
                system_ns,
                tracer_ns: Some(tracer_ns),
                tracer_hwm: Some(hwm),
                events_lost: Some(field(&after, "events_lost")),
                ring_high_water: Some(field(&after, "ring_high_water_bytes")),
                events: Some(
                    field(&after, "events_total").saturating_sub(field(&before, "events_total")),
                ),
                wakeups: Some(wakeups),
            })
        }
        Tracer::Bpftrace => {
            let bt = Bpftrace::start(&ctx.script, &ctx.dir)?;
            let cpu0 = procfs::process_cpu_ns(bt.pid)?;
            let busy = procfs::BusyClock::start()?;
            let load = load::run(&spec)?;
            let system_ns = busy.busy_ns()?;
            // bpftrace reads its perf buffers continuously; give it a moment to catch up.
            std::thread::sleep(Duration::from_millis(300));
            let tracer_ns = procfs::process_cpu_ns(bt.pid)?.saturating_sub(cpu0);
            let hwm = procfs::status_bytes(bt.pid, "VmHWM")?;
            bt.stop()?;
            Ok(Run {
                tracer: tracer.clone(),
                load,
                system_ns,
                tracer_ns: Some(tracer_ns),
                tracer_hwm: Some(hwm),
                events_lost: None,
                ring_high_water: None,
                events: None,
                wakeups: None,
            })
        }
    }
}

/// Max-rate IPv4 runs with everything that explains the numbers switched on (not part of the
/// ratios): first BPF run-time statistics, the ring buffer's fill sampled every 250 µs, the
/// daemon's wakeups and the irq_work interrupts; then, separately since perf slows everything
/// down, perf profiles of the daemon and of the load; then bpftrace's program statistics.
fn diagnose(ctx: &Bench, mode: &str) -> Result<Diagnostics> {
    let spec =
        LoadSpec { family: Family::V4, threads: ctx.threads, duration: ctx.duration, rate: None };
    let mut d = Diagnostics { mode: mode.to_owned(), ..Diagnostics::default() };
    let stats = bpf::StatsEnabled::new()?;

    let daemon = Daemon::start(&ctx.bin, mode, &ctx.dir)?;
    let before = daemon.status()?;
    let progs0 = bpf::prog_stats(daemon.pid)?;
    let wake0 = voluntary_switches(daemon.pid);
    let cpu0 = procfs::process_cpu_ns(daemon.pid)?;
    let sampler = match bpf::RingView::open(daemon.pid, tracer_common::EVENTS_MAP) {
        Ok(ring) => {
            d.ring_bytes = ring.size;
            Some(bpf::FillSampler::start(ring, Duration::from_micros(250)))
        }
        Err(e) => {
            d.ring_error = Some(format!("{e:#}"));
            None
        }
    };
    let iwi0 = procfs::interrupts("IWI");
    let load = load::run(&spec)?;
    d.irq_work = procfs::interrupts("IWI").saturating_sub(iwi0);
    let after = daemon.wait_drained(Duration::from_secs(30))?;
    if let Some(sampler) = sampler {
        let (max, samples) = sampler.finish();
        d.ring_high_water = Some(max);
        d.ring_samples = samples;
    }
    d.progs = bpf::prog_delta(&progs0, &bpf::prog_stats(daemon.pid)?);
    d.wakeups = voluntary_switches(daemon.pid).saturating_sub(wake0);
    d.connections = load.connections;
    d.rate = load.rate();
    d.events = field(&after, "events_total").saturating_sub(field(&before, "events_total"));
    d.daemon_ring_high_water = field(&after, "ring_high_water_bytes");
    d.daemon_us_per_conn = procfs::process_cpu_ns(daemon.pid)?.saturating_sub(cpu0) as f64
        / 1e3
        / load.connections.max(1) as f64;
    d.smaps = procfs::smaps_rollup(daemon.pid);
    daemon.stop()?;

    // The bpftrace reference's program, with statistics still on.
    let bt = Bpftrace::start(&ctx.script, &ctx.dir)?;
    let progs0 = bpf::prog_stats(bt.pid)?;
    let cpu0 = procfs::process_cpu_ns(bt.pid)?;
    let iwi0 = procfs::interrupts("IWI");
    let load = load::run(&spec)?;
    d.bpftrace_irq_work = procfs::interrupts("IWI").saturating_sub(iwi0);
    std::thread::sleep(Duration::from_millis(300));
    d.bpftrace_progs = bpf::prog_delta(&progs0, &bpf::prog_stats(bt.pid)?);
    d.bpftrace_connections = load.connections;
    d.bpftrace_us_per_conn = procfs::process_cpu_ns(bt.pid)?.saturating_sub(cpu0) as f64
        / 1e3
        / load.connections.max(1) as f64;
    bt.stop()?;
    drop(stats);

    // Untraced, for the irq_work baseline.
    let iwi0 = procfs::interrupts("IWI");
    let load = load::run(&spec)?;
    d.untraced_irq_work_per_conn =
        procfs::interrupts("IWI").saturating_sub(iwi0) as f64 / load.connections.max(1) as f64;

    if ctx.args.skip_profile {
        d.profile_note = Some("skipped (--skip-profile)".into());
        return Ok(d);
    }
    // Two profiles: the daemon, and this process, whose load threads run the kernel's TCP code
    // and, inside it, the probes (BPF programs, ring buffer reservations and wakeups).
    let daemon = Daemon::start(&ctx.bin, mode, &ctx.dir)?;
    let perf_data = ctx.dir.join("perf-daemon.data");
    let load_data = ctx.dir.join("perf-load.data");
    let mut perfs = Vec::new();
    for (pid, data) in [(daemon.pid, &perf_data), (std::process::id(), &load_data)] {
        perfs.push(
            Command::new("perf")
                .args(["record", "-F", "1999", "-q", "-o"])
                .arg(data)
                .args(["-p", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record (Debian package linux-perf)")?,
        );
    }
    // perf needs a moment to attach before the load starts.
    std::thread::sleep(Duration::from_millis(300));
    let load = load::run(&spec);
    let drained = daemon.wait_drained(Duration::from_secs(30));
    for child in &mut perfs {
        // SAFETY: signalling our own child; perf writes its data on SIGINT.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
    }
    load?;
    drained?;
    daemon.stop()?;
    match profile_report(&perf_data, 25, None) {
        Ok(lines) => d.profile = lines,
        Err(e) => d.profile_note = Some(format!("{e:#}")),
    }
    match profile_report(&load_data, 40, Some(TRACING_SYMBOLS)) {
        Ok(lines) => d.load_profile = lines,
        Err(e) => d.profile_note = Some(format!("{e:#}")),
    }
    Ok(d)
}

/// Voluntary context switches over all threads: how often the process went to sleep waiting,
/// i.e. about how many wakeups (batches) it handled.
fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            text.lines().find_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse::<u64>().ok()
            })
        })
        .sum()
}

/// Kernel symbols that only run because something traces: BPF programs and helpers, the ring
/// buffer, the irq_work that wakes its reader (a self-IPI: an MSR write, which traps in a VM),
/// and the kernel memory reads of CO-RE accessors.
const TRACING_SYMBOLS: &[&str] = &[
    "bpf",
    "ringbuf",
    "irq_work",
    "native_write_msr",
    "x2apic",
    "copy_from_kernel",
    "probe_read",
    "perf_",
    "trace",
];

/// The hottest symbols of a perf profile (at most `limit`, those over 0.5%); with `only`, just
/// the symbols whose name contains one of those words.
fn profile_report(data: &Path, limit: usize, only: Option<&[&str]>) -> Result<Vec<String>> {
    let out = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(data)
        .args(["--stdio", "--no-children", "--sort", "dso,sym", "-q", "--percent-limit", "0.5"])
        .stderr(Stdio::null())
        .output()
        .context("running perf report (Debian package linux-perf)")?;
    if !out.status.success() {
        bail!("perf report failed");
    }
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.contains('%'))
        .filter(|l| only.is_none_or(|words| words.iter().any(|w| l.contains(w))))
        .take(limit)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if lines.is_empty() {
        bail!("perf recorded no samples of the daemon");
    }
    Ok(lines)
}

/// Processes that would skew every number: qemu VMs (whole CPUs), and other tracers (another
/// `tracer run` or bpftrace traces our load too). Ours are all stopped between runs.
fn qemu_running() -> Vec<u32> {
    // /proc/<pid>/comm is cut at 15 characters: "qemu-system-x86" for qemu-system-x86_64.
    ["qemu-system-x86", "tracer", "bpftrace"]
        .iter()
        .flat_map(|name| procfs::pids_named(name))
        .collect()
}

/// Waits until no qemu VM or other tracer has run for `quiet` (giving up after an hour): VMs
/// take whole CPUs and would skew every ratio. Returns how long it waited.
fn wait_for_quiet(quiet: Duration) -> Duration {
    let start = Instant::now();
    let mut quiet_since = Instant::now();
    let mut said = false;
    loop {
        let qemu = qemu_running();
        if !qemu.is_empty() {
            quiet_since = Instant::now();
            if !said {
                eprintln!(
                    "bench: waiting for qemu VMs or other tracers (pids {qemu:?}) to finish before measuring (--no-wait to skip)"
                );
                said = true;
            }
        }
        if quiet_since.elapsed() >= quiet {
            return if said { start.elapsed() } else { Duration::ZERO };
        }
        if start.elapsed() > Duration::from_secs(3600) {
            eprintln!(
                "bench: qemu VMs still come and go after an hour; measuring anyway (the report says so)"
            );
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits (up to 10 minutes) until the CPUs are mostly idle while the harness is: another
/// engineer's build or test run would otherwise land in some runs and not others.
fn wait_for_idle_cpus() -> Result<Duration> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let clock = procfs::BusyClock::start()?;
        std::thread::sleep(Duration::from_secs(1));
        let busy = clock.fraction()?;
        if busy < 0.25 || start.elapsed() > Duration::from_secs(600) {
            return Ok(if said { start.elapsed() } else { Duration::ZERO });
        }
        if !said {
            eprintln!(
                "bench: the CPUs are {:.0}% busy with other work; waiting for them to calm down",
                busy * 100.0
            );
            said = true;
        }
        std::thread::sleep(Duration::from_secs(4));
    }
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmark loads BPF programs and forks thousands of processes: run it as root (sudo cargo xtask bench)"
        );
    }
    Ok(())
}

fn require_tool(program: &str, package: &str, probe: &[&str]) -> Result<()> {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "`{program}` is missing or broken: install the Debian package `{package}` (apt-get install {package})"
        );
    }
    Ok(())
}

fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else { return "unknown".into() };
    // Only changes to what is measured count (the tracer crates and the lock file), not to the
    // harness or the docs.
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "tracer",
        "tracer-common",
        "tracer-ebpf",
        "Cargo.lock",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty { format!("{commit} (with uncommitted changes to the tracer)") } else { commit }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Into::into).unwrap_or_default()
}

/// Removes the scratch directory on every exit path.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
