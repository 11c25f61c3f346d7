//! What TIME_WAIT blame costs at the saturation rate: a fresh daemon, then the bench's
//! max-rate loopback churn (the server side closes first, so every connection leaves a
//! TIME_WAIT socket the load process caused) until the host's TIME_WAIT table is full. The
//! daemon remembers each active close until a scan matches it, bounded per namespace by
//! `net.ipv4.tcp_max_tw_buckets`: this reads how many it remembered, how many it had to drop,
//! and its memory growth, then, after the next scan, what it blames on the load process
//! against the kernel's own TIME_WAIT count.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    load::{self, Family, LoadSpec},
    procfs,
    tracers::{Daemon, field},
};

#[derive(Clone, Copy, Debug, Default)]
pub struct TimeWaitCost {
    pub connections: u64,
    pub seconds: f64,
    /// `net.ipv4.tcp_max_tw_buckets` of the host's namespace.
    pub max_tw_buckets: u64,
    /// Closes remembered and dropped (over the bound) when the churn ended.
    pub remembered: u64,
    pub overflowed: u64,
    /// The daemon's RSS growth over the churn, bytes.
    pub rss_growth: i64,
    /// After the next scan: what the daemon blames on the load process, and the TIME_WAIT
    /// sockets the kernel lists that are new since the churn began, read right after.
    pub caused: u64,
    pub time_wait_now: u64,
    /// Events the daemon lost over the churn (a missed close is a TIME_WAIT it cannot blame).
    pub events_lost: u64,
}

pub fn run(daemon: &Daemon, seconds: u64) -> Result<TimeWaitCost> {
    let max_tw_buckets = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
        .context("reading net.ipv4.tcp_max_tw_buckets")?
        .trim()
        .parse()
        .context("parsing net.ipv4.tcp_max_tw_buckets")?;
    let rss0 = procfs::status_bytes(daemon.pid, "VmRSS")?;
    // TIME_WAIT left by earlier work on the same address (the scale step's warm-up churn) is
    // not the churn's: only tuples new since now are compared.
    let before = time_wait_tuples();
    let spec = LoadSpec {
        family: Family::V4,
        threads: 4,
        duration: Duration::from_secs(seconds),
        rate: None,
    };
    let started = Instant::now();
    let result = load::run(&spec).context("the TIME_WAIT churn")?;
    let status = daemon.wait_drained(Duration::from_secs(30))?;
    let rss1 = procfs::status_bytes(daemon.pid, "VmRSS")?;
    let scans = field(&status, "health_scans");
    // The next leak evaluation's scan matches the remembered closes with the TIME_WAIT sockets.
    let deadline = Instant::now() + Duration::from_secs(60);
    while field(&daemon.status()?, "health_scans") <= scans {
        anyhow::ensure!(Instant::now() < deadline, "no pool-health scan within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let me = u64::from(std::process::id());
    let (_, out) = daemon.timed_cli(&["top", "--json", "--limit", "1000"])?;
    let top: serde_json::Value = serde_json::from_slice(&out).context("parsing `tracer top`")?;
    let caused = top["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["pid"].as_u64() == Some(me))
        .map(|p| field(p, "time_wait_caused"))
        .sum();
    Ok(TimeWaitCost {
        connections: result.connections,
        seconds: started.elapsed().as_secs_f64(),
        max_tw_buckets,
        remembered: field(&status, "time_wait_closes_remembered"),
        overflowed: field(&status, "time_wait_closes_overflowed"),
        rss_growth: rss1 as i64 - rss0 as i64,
        caused,
        time_wait_now: time_wait_tuples().difference(&before).count() as u64,
        events_lost: field(&status, "events_lost"),
    })
}

/// TIME_WAIT sockets between 127.0.0.1 and itself (the churn's address; the scale step holds
/// its connections on other loopback addresses), by (local, remote) as /proc/net/tcp writes
/// them (state 06).
fn time_wait_tuples() -> HashSet<(String, String)> {
    const LOCALHOST: &str = "0100007F:";
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else { return HashSet::new() };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3
                && f[3] == "06"
                && f[1].starts_with(LOCALHOST)
                && f[2].starts_with(LOCALHOST))
            .then(|| (f[1].to_owned(), f[2].to_owned()))
        })
        .collect()
}
