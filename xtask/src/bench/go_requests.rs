//! What the Go request probe costs a Go HTTP client (docs/stacks.md, "Go net/http request
//! stacks"): tracer/tests/programs/go_requests in its `bench` mode makes batches of tidy
//! requests over one kept-alive loopback connection, as fast as it can, under a daemon with
//! `--go-requests all` (the probe attached: a uprobe trap, the chain to the socket and a stack
//! per request), with `--go-requests off`, and with `off` plus an empty bpftrace uprobe on the
//! same function (the price of the trap alone, which no program can avoid), side by side in
//! rounds that rotate their order. Reported as medians over rounds: requests per second each
//! way, the ratios to unprobed, and the time each adds per request.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Bench, bpf,
    stats::{Summary, summarize},
    tracers::{Bpftrace, Daemon, field},
};

/// What runs beside the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arm {
    /// The daemon with `--go-requests off`.
    Unprobed,
    /// The same, plus a bpftrace uprobe that only counts, on the probed function.
    EmptyUprobe,
    /// The daemon with `--go-requests all`.
    Probed,
}

const ARMS: [Arm; 3] = [Arm::Unprobed, Arm::EmptyUprobe, Arm::Probed];

/// Requests per batch (about a second each on the bench machine).
const BATCH: u32 = 20_000;
/// Batches per run; a run's rate is their median.
const BATCHES: usize = 3;

#[derive(Clone, Debug)]
pub struct Run {
    pub arm: Arm,
    /// Requests per second, the median of the run's batches.
    pub rate: f64,
    /// Request stacks the daemon received during the batches, per request made.
    pub stacks_per_request: f64,
    /// Run time of tracer's uprobe program per request (kernel BPF statistics; 0 unprobed).
    pub bpf_ns_per_request: f64,
}

#[derive(Clone, Debug, Default)]
pub struct GoRequestsReport {
    pub mode: String,
    pub go_version: String,
    /// Per round: the runs in [`ARMS`] order.
    pub rounds: Vec<[Run; 3]>,
}

pub fn run(ctx: &Bench, mode: &str, rounds: usize, smoke: bool) -> Result<GoRequestsReport> {
    // Static, with DWARF: the daemon reads the client's offsets there.
    let program = super::build_go_program(ctx, "go_requests", "go-requests")?;
    // Run time statistics on for the whole part: they cost every run alike.
    let _stats = bpf::StatsEnabled::new()?;
    let batches = if smoke { 1 } else { BATCHES };
    let mut report = GoRequestsReport {
        mode: mode.to_owned(),
        go_version: go_version().unwrap_or_else(|| "unknown".to_owned()),
        rounds: Vec::new(),
    };
    for round in 0..rounds {
        // Rotate which goes first: a drift of the machine falls on all alike.
        let mut runs = Vec::new();
        for i in 0..ARMS.len() {
            let arm = ARMS[(round + i) % ARMS.len()];
            let run = one_run(ctx, mode, &program, arm, batches)
                .with_context(|| format!("round {round}, {arm:?}"))?;
            eprintln!("bench: go requests round {round} {arm:?}: {:.0} requests/s", run.rate);
            runs.push(run);
        }
        runs.sort_by_key(|r| r.arm);
        let runs: [Run; 3] = runs.try_into().map_err(|_| anyhow::anyhow!("three runs"))?;
        report.rounds.push(runs);
    }
    Ok(report)
}

fn go_version() -> Option<String> {
    let out = Command::new("go").arg("version").output().ok()?;
    String::from_utf8(out.stdout).ok()?.split_whitespace().nth(2).map(str::to_owned)
}

/// The client in bench mode: one line in, one batch made, `rps <rate>` out.
struct Client {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Client {
    fn start(program: &Path) -> Result<Self> {
        let mut child = Command::new(program)
            .args(["bench", &BATCH.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("client stdout")?;
        let mut client = Self { child, lines: BufReader::new(stdout).lines() };
        let first = client.line()?;
        if !first.starts_with("server ") {
            bail!("the client said {first:?}, not its server's port");
        }
        Ok(client)
    }

    fn line(&mut self) -> Result<String> {
        Ok(self.lines.next().context("the client closed its output")??)
    }

    /// One batch; its rate.
    fn batch(&mut self) -> Result<f64> {
        let stdin = self.child.stdin.as_mut().context("client stdin")?;
        writeln!(stdin).context("asking the client for a batch")?;
        let line = self.line()?;
        line.strip_prefix("rps ")
            .and_then(|r| r.trim().parse().ok())
            .with_context(|| format!("the client said {line:?}, not its rate"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn one_run(ctx: &Bench, mode: &str, program: &Path, arm: Arm, batches: usize) -> Result<Run> {
    let probed = arm == Arm::Probed;
    let policy = if probed { "all" } else { "off" };
    let daemon = Daemon::start_with(
        &ctx.bin,
        mode,
        &["--go-requests".to_owned(), policy.to_owned()],
        &ctx.dir,
    )?;
    let mut client = Client::start(program)?;
    // A first batch warms the client and gives it the connection that makes it wanted.
    client.batch()?;
    let status = |daemon: &Daemon| -> Result<(u64, u64)> {
        let go = daemon.status()?["go_requests"].clone();
        Ok((field(&go, "probed_processes"), field(&go, "requests")))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while probed && status(&daemon)?.0 == 0 {
        if Instant::now() > deadline {
            bail!("the daemon did not probe the Go client within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let empty_uprobe = match arm {
        Arm::EmptyUprobe => {
            let script = ctx.dir.join("empty-uprobe.bt");
            std::fs::write(
                &script,
                format!(
                    "uprobe:{}:\"net/http.(*persistConn).roundTrip\" {{ @requests = count(); }}\n",
                    program.display()
                ),
            )
            .with_context(|| format!("writing {}", script.display()))?;
            Some(Bpftrace::start(&script, &ctx.dir)?)
        }
        _ => None,
    };
    let (_, before) = status(&daemon)?;
    let progs_before = bpf::prog_stats(daemon.pid)?;
    let mut rates = Vec::new();
    for _ in 0..batches {
        rates.push(client.batch()?);
    }
    let (_, after) = status(&daemon)?;
    let bpf_ns: u64 = bpf::prog_delta(&progs_before, &bpf::prog_stats(daemon.pid)?)
        .iter()
        .filter(|p| p.name == "go_round_trip")
        .map(|p| p.run_time_ns)
        .sum();
    if let Some(bpftrace) = empty_uprobe {
        bpftrace.stop()?;
    }
    drop(client);
    daemon.stop()?;
    let rate = summarize(&rates).map_or(0.0, |s| s.median);
    let made = (batches as u64 * u64::from(BATCH)) as f64;
    Ok(Run {
        arm,
        rate,
        stacks_per_request: after.saturating_sub(before) as f64 / made,
        bpf_ns_per_request: bpf_ns as f64 / made,
    })
}

impl GoRequestsReport {
    fn summary(&self, value: impl Fn(&[Run; 3]) -> f64) -> Option<Summary> {
        summarize(&self.rounds.iter().map(value).collect::<Vec<_>>())
    }

    /// Markdown: the section `cargo xtask bench` adds to its report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "## Go request probe\n");
        let _ = writeln!(
            o,
            "A Go HTTP/1 client ({}, tracer/tests/programs/go_requests `bench`) makes batches of {BATCH} tidy requests on one kept-alive loopback connection to its own server, beside a daemon ({} mode) with `--go-requests off`, the same plus an empty bpftrace uprobe (a count) on `(*persistConn).roundTrip` (the price of the trap alone), and a daemon with `--go-requests all` (tracer's probe), in {} rounds rotating their order; each run's rate is the median of its batches, the figures medians over rounds (min-max).\n",
            self.go_version,
            self.mode,
            self.rounds.len()
        );
        let _ = writeln!(o, "| | requests/s | rate / unprobed | added per request |");
        let _ = writeln!(o, "| --- | --- | --- | --- |");
        for (i, label) in
            ["unprobed", "empty bpftrace uprobe", "tracer's probe"].into_iter().enumerate()
        {
            let (Some(rate), Some(ratio), Some(added)) = (
                self.summary(|r| r[i].rate),
                self.summary(|r| r[i].rate / r[0].rate),
                self.summary(|r| 1e6 / r[i].rate - 1e6 / r[0].rate),
            ) else {
                let _ = writeln!(o, "\nNo complete round.");
                return o;
            };
            let added = if i == 0 {
                "-".to_owned()
            } else {
                format!("{:.1} µs ({:.1}-{:.1})", added.median, added.min, added.max)
            };
            let _ = writeln!(
                o,
                "| {label} | {:.0} ({:.0}-{:.0}) | {:.3} ({:.3}-{:.3}) | {added} |",
                rate.median, rate.min, rate.max, ratio.median, ratio.min, ratio.max
            );
        }
        if let (Some(beyond), Some(bpf), Some(stacks)) = (
            self.summary(|r| 1e6 / r[2].rate - 1e6 / r[1].rate),
            self.summary(|r| r[2].bpf_ns_per_request),
            self.summary(|r| r[2].stacks_per_request),
        ) {
            let _ = writeln!(
                o,
                "\ntracer's probe against the empty uprobe (its program, stack and daemon side): **{:.1} µs** per request ({:.1}-{:.1}), of which its BPF program runs {:.2} µs ({:.2}-{:.2}, kernel statistics). Request stacks received per probed request: {:.3}. A Go process the policy does not want (the default `suspects`: every process whose open count is not rising) has no uprobe and pays nothing.",
                beyond.median,
                beyond.min,
                beyond.max,
                bpf.median / 1e3,
                bpf.min / 1e3,
                bpf.max / 1e3,
                stacks.median
            );
        }
        o
    }
}
