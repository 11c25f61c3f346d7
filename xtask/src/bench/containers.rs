//! What container resolution costs per event (docs/containers.md, "Status and cost"): the same
//! load run with the load process in a docker-shaped cgroup v2 directory (so that every event's
//! cgroup id resolves to a container, named by a docker config) and in the bench's own cgroup
//! (a host process), side by side in rounds that alternate their order. Reported as medians over
//! rounds: throughput, daemon CPU and BPF run time per connection, and the per-round difference
//! container − host of the daemon's CPU per connection.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    Bench, bpf,
    load::{self, Family, LoadSpec},
    procfs,
    stats::{Summary, summarize},
    tracers::{Daemon, field},
};

/// Where the load runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Host,
    Container,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::Host => "host cgroup",
            Placement::Container => "container cgroup",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Run {
    pub placement: Placement,
    pub connections: u64,
    pub rate: f64,
    pub daemon_ns: u64,
    pub bpf_ns: u64,
    /// Of the daemon's resolved cgroups, those in a container (status `containers.containers`).
    pub containers: u64,
}

impl Run {
    fn per_conn(&self, ns: u64) -> f64 {
        ns as f64 / self.connections.max(1) as f64
    }
}

#[derive(Clone, Debug, Default)]
pub struct ContainersReport {
    pub mode: String,
    pub threads: usize,
    pub duration: Duration,
    /// The fixed rate (`--rate`), or None for the maximum rate.
    pub rate: Option<f64>,
    pub rounds: Vec<Vec<Run>>,
}

/// The container-shaped cgroup the load moves into for a run; on drop the bench moves back to
/// its own cgroup and the directory is removed (also when the run fails).
struct ContainerCgroup {
    home: PathBuf,
    /// The directories made, parents first.
    made: Vec<PathBuf>,
}

impl ContainerCgroup {
    fn enter(root: &Path, id: &str) -> Result<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").context("/proc/self/cgroup")?;
        let Some(own) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            bail!("no cgroup v2 line in /proc/self/cgroup");
        };
        let home = root.join(own.trim_start_matches('/'));
        let mut cgroup = Self { home, made: Vec::new() };
        let mut dir = root.to_owned();
        for part in ["system.slice".to_owned(), format!("docker-{id}.scope")] {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                cgroup.made.push(dir.clone());
            }
        }
        // cgroup.procs moves every thread of the process: the load's threads start after this.
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving the bench into {}", dir.display()))?;
        Ok(cgroup)
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.home.join("cgroup.procs"), std::process::id().to_string());
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The first cgroup2 mount of /proc/self/mountinfo (`/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    info.lines()
        .find(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("cgroup2 ")))
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .context("no cgroup2 mount: container resolution cannot be measured here")
}

/// Runs the part in probe mode `mode`: `rounds` rounds of one run per placement.
pub fn run(ctx: &Bench, mode: &str, rounds: usize) -> Result<ContainersReport> {
    let root = cgroup2_mount()?;
    // A docker config naming the container, so that a run also reads names.
    let docker = ctx.dir.join("docker");
    let id = format!("{:032x}{:032x}", u128::from(std::process::id()), 0xbe9c_u128);
    let config = docker.join("containers").join(&id);
    std::fs::create_dir_all(&config).with_context(|| format!("mkdir {}", config.display()))?;
    let json = format!("{{\"ID\":\"{id}\",\"Name\":\"/bench-load\"}}");
    std::fs::write(config.join("config.v2.json"), json).context("writing the docker config")?;
    let extra = [
        "--cgroup-root".to_owned(),
        root.display().to_string(),
        "--docker-dir".to_owned(),
        docker.display().to_string(),
    ];
    let spec = LoadSpec {
        family: Family::V4,
        threads: ctx.threads,
        duration: ctx.duration,
        rate: ctx.args.rate,
    };
    let mut report = ContainersReport {
        mode: mode.to_owned(),
        threads: ctx.threads,
        duration: ctx.duration,
        rate: ctx.args.rate,
        rounds: Vec::new(),
    };
    let _stats = bpf::StatsEnabled::new()?;
    for round in 0..rounds {
        let mut order = [Placement::Host, Placement::Container];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut runs = Vec::new();
        for placement in order {
            let run = one_run(ctx, mode, &extra, placement, &root, &id, &spec)
                .with_context(|| format!("containers run in the {}", placement.label()))?;
            eprintln!(
                "bench: containers round {}/{rounds} {:<16} {:>8.0} conn/s, daemon {:>6.0} ns/conn, BPF {:>6.0} ns/conn, {} resolved to containers",
                round + 1,
                placement.label(),
                run.rate,
                run.per_conn(run.daemon_ns),
                run.per_conn(run.bpf_ns),
                run.containers,
            );
            runs.push(run);
        }
        report.rounds.push(runs);
    }
    Ok(report)
}

fn one_run(
    ctx: &Bench,
    mode: &str,
    extra: &[String],
    placement: Placement,
    root: &Path,
    id: &str,
    spec: &LoadSpec,
) -> Result<Run> {
    let daemon = Daemon::start_with(&ctx.bin, mode, extra, &ctx.dir)?;
    let progs0 = bpf::prog_stats(daemon.pid)?;
    let cpu0 = procfs::process_cpu_ns(daemon.pid)?;
    let load = {
        let _cgroup = match placement {
            Placement::Container => Some(ContainerCgroup::enter(root, id)?),
            Placement::Host => None,
        };
        load::run(spec)?
    };
    let after = daemon.wait_drained(Duration::from_secs(30))?;
    let daemon_ns = procfs::process_cpu_ns(daemon.pid)?.saturating_sub(cpu0);
    let progs = bpf::prog_delta(&progs0, &bpf::prog_stats(daemon.pid)?);
    daemon.stop()?;
    let containers = field(&after["containers"], "containers");
    if placement == Placement::Container && containers == 0 {
        bail!("the daemon resolved no container: the run measured nothing of resolution");
    }
    Ok(Run {
        placement,
        connections: load.connections,
        rate: load.rate(),
        daemon_ns,
        bpf_ns: progs.iter().map(|p| p.run_time_ns).sum(),
        containers,
    })
}

impl ContainersReport {
    fn column(&self, placement: Placement, value: impl Fn(&Run) -> f64) -> Summary {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .flat_map(|r| r.iter().filter(|run| run.placement == placement).map(&value))
            .collect();
        summarize(&v).unwrap_or_default()
    }

    /// Per round: the container run's `value` per connection minus the host run's.
    fn delta(&self, value: impl Fn(&Run) -> u64) -> Summary {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| {
                let of = |p| r.iter().find(|run| run.placement == p);
                let (c, h) = (of(Placement::Container)?, of(Placement::Host)?);
                Some(c.per_conn(value(c)) - h.per_conn(value(h)))
            })
            .collect();
        summarize(&v).unwrap_or_default()
    }

    /// The section, in Markdown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Container resolution, side by side\n\n{} rounds of a {:.0} s IPv4 load ({}) on {} threads ({} mode), the load process in a docker-shaped cgroup (`/system.slice/docker-<id>.scope`, resolved and named) or in the bench's own cgroup, order alternating; medians (min–max).\n",
            self.rounds.len(),
            self.duration.as_secs_f64(),
            self.rate.map_or("at its maximum rate".to_owned(), |r| format!("at {r:.0} conn/s")),
            self.threads,
            self.mode
        );
        let _ = writeln!(out, "| load in | conn/s | daemon ns/conn | BPF ns/conn |");
        let _ = writeln!(out, "|---|---|---|---|");
        let show = |s: Summary| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
        for p in [Placement::Host, Placement::Container] {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                p.label(),
                show(self.column(p, |r| r.rate)),
                show(self.column(p, |r| r.per_conn(r.daemon_ns))),
                show(self.column(p, |r| r.per_conn(r.bpf_ns))),
            );
        }
        let _ = writeln!(
            out,
            "\nPer connection, container − host in the same round: daemon CPU {} ns; BPF run time {} ns (the same programs run either way: that spread is the machine's noise).",
            show(self.delta(|r| r.daemon_ns)),
            show(self.delta(|r| r.bpf_ns))
        );
        out
    }
}
