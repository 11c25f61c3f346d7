//! What the harness reads from /proc: process CPU time and memory, system CPU time, machine facts.
use anyhow::{Context, Result, bail};

/// USER_HZ: /proc reports CPU times in these ticks (100 on every Linux ABI).
pub const TICKS_PER_SECOND: u64 = 100;

/// utime + stime of a whole process (all its threads), in ticks.
pub fn process_cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let rest =
        text.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {} in {path}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// CPU time of a whole process in nanoseconds: the scheduler's exact run time of each live
/// thread (/proc/<pid>/task/*/schedstat), since utime+stime come in 10 ms ticks, too coarse
/// for a few seconds of a mostly idle daemon. Falls back to utime+stime without schedstat.
/// (Threads that exit meanwhile drop out; the daemon's and bpftrace's live for the whole run.)
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading /proc/{pid}/task"))?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        if let Some(ns) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    if any { Ok(total) } else { Ok(process_cpu_ticks(pid)? * (1_000_000_000 / TICKS_PER_SECOND)) }
}

/// A `kB` line of /proc/<pid>/status, in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {key} in {path}"))
}

/// Idle CPU ticks of the whole machine: idle, iowait and steal (time the hypervisor gave to
/// someone else). Busy time is wall time × CPUs minus this: the idle times are exact (NOHZ
/// keeps them), while user and system are sampled at each tick, which paced loads that sleep
/// between connections can alias with badly.
pub fn system_idle_ticks() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if values.len() < 8 {
        bail!("short cpu line in /proc/stat: {line}");
    }
    // user nice system idle iowait irq softirq steal
    Ok(values[3] + values[4] + values[7])
}

/// Busy CPU time of the whole machine since a (time, idle ticks) mark.
pub struct BusyClock {
    start: std::time::Instant,
    idle: u64,
    cpus: u64,
}

impl BusyClock {
    pub fn start() -> Result<Self> {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
        Ok(Self { start: std::time::Instant::now(), idle: system_idle_ticks()?, cpus })
    }

    /// Busy nanoseconds over all CPUs since start.
    pub fn busy_ns(&self) -> Result<u64> {
        let wall = self.start.elapsed().as_nanos() as u64 * self.cpus;
        let idle =
            system_idle_ticks()?.saturating_sub(self.idle) * (1_000_000_000 / TICKS_PER_SECOND);
        Ok(wall.saturating_sub(idle))
    }

    /// Busy share of all CPUs since start (0..=1).
    pub fn fraction(&self) -> Result<f64> {
        let wall = self.start.elapsed().as_nanos() as f64 * self.cpus as f64;
        Ok(self.busy_ns()? as f64 / wall.max(1.0))
    }
}

/// The machine the numbers were measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Result<Self> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading /proc/sys/kernel/osrelease")?
            .trim()
            .to_owned();
        Ok(Self { cpus, cpu_model, memory_bytes, kernel })
    }
}

/// Pids of running processes whose command name is `comm` (like `pgrep -x`).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Open file descriptors of `pid` whose link target is `anon_inode:<kind>`, as (fd, fdinfo text).
pub fn anon_fds(pid: u32, kind: &str) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let wanted = format!("anon_inode:{kind}");
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        if target.to_str()? != wanted {
            return None;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
        Some((fd, info))
    })
    .collect()
}

/// A `key:\tvalue` field of an fdinfo text.
pub fn fdinfo_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// The memory lines of /proc/<pid>/smaps_rollup that say where the RSS is, in bytes.
pub fn smaps_rollup(pid: u32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (key, rest) = l.split_once(':')?;
            if !["Rss", "Anonymous", "Private_Dirty", "Shared_Clean", "Private_Clean"]
                .contains(&key)
            {
                return None;
            }
            Some((key.to_owned(), rest.split_whitespace().next()?.parse::<u64>().ok()? * 1024))
        })
        .collect()
}

/// Sum over CPUs of one row of /proc/interrupts (e.g. "IWI", irq_work interrupts).
pub fn interrupts(row: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(row)?.strip_prefix(':'))
        .map(|rest| rest.split_whitespace().map_while(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0)
}
