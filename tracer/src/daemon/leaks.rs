//! From the table to the leak detector: one sample per process per interval, and what happens
//! when an alert raises or resolves (a structured log line, the webhook).
use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tracer_common::tcp_state;

use crate::{
    detect::{Alert, Change, ConnBrief, DetectorConfig, ProcessSample},
    table::{ConnectionTable, Phase, ProcessKey},
};

/// Everything the leak rules need besides the detector's own settings.
#[derive(Clone, Debug)]
pub struct LeakSettings {
    pub interval: Duration,
    pub detector: DetectorConfig,
    /// `close_wait`: how long a connection must sit in CLOSE_WAIT.
    pub close_wait_after_ns: u64,
    /// `held_closed`: how long a reset connection must stay held.
    pub held_closed_after_ns: u64,
    /// `age`: the age threshold (the rule is off without one).
    pub age_threshold_ns: Option<u64>,
}

/// Seconds between leak evaluations by default.
pub const DEFAULT_LEAK_INTERVAL: Duration = Duration::from_secs(15);
/// How long a connection sits in CLOSE_WAIT before it counts as stale, by default.
pub const DEFAULT_CLOSE_WAIT_AFTER: Duration = Duration::from_secs(60);
/// How long a connection reset by its peer may stay held before it counts, by default.
pub const DEFAULT_HELD_CLOSED_AFTER: Duration = Duration::from_secs(60);

impl Default for LeakSettings {
    fn default() -> Self {
        Self {
            interval: DEFAULT_LEAK_INTERVAL,
            detector: DetectorConfig::default(),
            close_wait_after_ns: nanos(DEFAULT_CLOSE_WAIT_AFTER),
            held_closed_after_ns: nanos(DEFAULT_HELD_CLOSED_AFTER),
            age_threshold_ns: None,
        }
    }
}

/// The time thresholds the daemon applies when it counts a process's connections.
#[derive(Clone, Copy, Debug)]
pub struct StaleThresholds {
    pub close_wait_after_ns: u64,
    pub held_closed_after_ns: u64,
    pub age_threshold_ns: Option<u64>,
}

impl LeakSettings {
    /// These settings for a process named `comm`, after its workload override.
    pub fn thresholds_for(&self, comm: &str) -> StaleThresholds {
        let o = self.detector.overrides.iter().find(|o| o.matches(comm)).map(|o| o.thresholds);
        let o = o.unwrap_or_default();
        StaleThresholds {
            close_wait_after_ns: o.close_wait_after_ns.unwrap_or(self.close_wait_after_ns),
            held_closed_after_ns: o.held_closed_after_ns.unwrap_or(self.held_closed_after_ns),
            age_threshold_ns: o.age_threshold_ns.or(self.age_threshold_ns),
        }
    }
}

/// A duration in nanoseconds, saturating (a u64 holds 584 years of them).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How many connections and remotes an alert's evidence names.
const EVIDENCE_ITEMS: usize = 5;

#[derive(Default)]
struct PerProcess {
    stale_close_wait: u32,
    stale_held_closed: u32,
    aged: u32,
    /// (age, connection), the oldest kept.
    oldest: Vec<(u64, ConnBrief)>,
    remotes: HashMap<SocketAddr, u32>,
}

/// One pass over the table's open connections, grouped by owner.
pub fn samples(
    table: &ConnectionTable,
    settings: &LeakSettings,
    now_ns: u64,
) -> Vec<ProcessSample> {
    let mut per: HashMap<ProcessKey, PerProcess> = HashMap::new();
    // Each process's thresholds once (overrides match on its command name).
    let thresholds: HashMap<ProcessKey, StaleThresholds> =
        table.processes().map(|p| (p.key, settings.thresholds_for(&p.comm()))).collect();
    for view in table.connections() {
        let conn = view.conn;
        let (Phase::Open, Some(owner)) = (conn.phase(), conn.owner()) else { continue };
        let t = thresholds.get(&owner).copied().unwrap_or_else(|| settings.thresholds_for(""));
        let acc = per.entry(owner).or_default();
        let in_state = now_ns.saturating_sub(conn.state_since_ns);
        match conn.state {
            tcp_state::CLOSE_WAIT if in_state >= t.close_wait_after_ns => acc.stale_close_wait += 1,
            tcp_state::CLOSE if in_state >= t.held_closed_after_ns => acc.stale_held_closed += 1,
            _ => {}
        }
        let age = conn.age_ns(now_ns);
        if t.age_threshold_ns.is_some_and(|t| age >= t) {
            acc.aged += 1;
        }
        if acc.oldest.len() < EVIDENCE_ITEMS || acc.oldest.last().is_some_and(|(a, _)| *a < age) {
            acc.oldest.push((
                age,
                ConnBrief {
                    local: conn.local().to_string(),
                    remote: conn.remote().to_string(),
                    state: conn.state_name().to_owned(),
                    age_seconds: age / 1_000_000_000,
                },
            ));
            acc.oldest.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            acc.oldest.truncate(EVIDENCE_ITEMS);
        }
        *acc.remotes.entry(conn.remote()).or_default() += 1;
    }
    table
        .processes()
        .map(|p| {
            let acc = per.remove(&p.key).unwrap_or_default();
            let mut remotes: Vec<(String, u32)> =
                acc.remotes.into_iter().map(|(r, n)| (r.to_string(), n)).collect();
            remotes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            remotes.truncate(EVIDENCE_ITEMS);
            ProcessSample {
                id: Some(p.key),
                comm: p.comm().into_owned(),
                open: p.open,
                opened_total: p.opened_total,
                closed_total: p.closed_total,
                stale_close_wait: acc.stale_close_wait,
                stale_held_closed: acc.stale_held_closed,
                aged: acc.aged,
                exited: p.exited(),
                oldest: acc.oldest.into_iter().map(|(_, c)| c).collect(),
                top_remotes: remotes,
                port_hold: None,
                fd: None,
            }
        })
        .collect()
}

/// The structured log line of a raise or resolve.
pub fn log_change(change: &Change) {
    let (alert, event) = match change {
        Change::Raised(a) => (a, "leak_raised"),
        Change::Resolved(a) => (a, "leak_resolved"),
    };
    let Alert { pid, comm, rule, open, evidence, .. } = alert;
    let floors = evidence.floors.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let remotes = evidence
        .top_remotes
        .iter()
        .map(|r| format!("{}={}", r.remote, r.open))
        .collect::<Vec<_>>()
        .join(",");
    let rule = rule.name();
    let (growth, opens, closes) =
        (evidence.growth, evidence.opens_in_window, evidence.closes_in_window);
    let (close_wait, held_closed) = (evidence.stale_close_wait, evidence.stale_held_closed);
    match change {
        Change::Raised(_) => log::warn!(
            event, pid, comm = comm.as_str(), rule, open, growth, floors = floors.as_str(),
            opens_in_window = opens, closes_in_window = closes, stale_close_wait = close_wait,
            stale_held_closed = held_closed, top_remotes = remotes.as_str();
            "connection leak suspected"
        ),
        Change::Resolved(_) => log::info!(
            event, pid, comm = comm.as_str(), rule, open;
            "connection leak alert resolved"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_first_matching_override() {
        let mut settings = LeakSettings::default();
        settings.detector.overrides = vec![
            "backup-*:close-wait-after=600,age-threshold=30".parse().expect("override"),
            "*:held-closed-after=5".parse().expect("override"),
        ];
        let backup = settings.thresholds_for("backup-agent");
        assert_eq!(backup.close_wait_after_ns, 600 * 1_000_000_000);
        assert_eq!(backup.held_closed_after_ns, settings.held_closed_after_ns, "first match only");
        assert_eq!(backup.age_threshold_ns, Some(30 * 1_000_000_000));
        let other = settings.thresholds_for("nginx");
        assert_eq!(other.close_wait_after_ns, settings.close_wait_after_ns);
        assert_eq!(other.held_closed_after_ns, 5 * 1_000_000_000);
        assert_eq!(other.age_threshold_ns, None);
    }
}
