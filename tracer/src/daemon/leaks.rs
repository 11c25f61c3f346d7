//! From the table to the leak detector: one sample per process per interval, and what happens
//! when an alert raises or resolves (a structured log line, the webhook).
use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tracer_common::tcp_state;

use crate::{
    containers::Directory,
    detect::{Alert, Change, ConnBrief, DetectorConfig, ProcessSample, Rule, overrides::Workload},
    health::{self, HealthSettings},
    table::{ConnView, ConnectionTable, Phase, ProcessKey},
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
    /// `idle` and `unread`: their thresholds (health/mod.rs counts them from sock_diag).
    pub health: HealthSettings,
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
            health: HealthSettings::default(),
        }
    }
}

/// The time thresholds the daemon applies when it counts a process's connections.
#[derive(Clone, Debug)]
pub struct StaleThresholds {
    pub close_wait_after_ns: u64,
    pub held_closed_after_ns: u64,
    pub age_threshold_ns: Option<u64>,
    /// `idle` and `unread` (counted from the dump, health/mod.rs).
    pub health: HealthSettings,
}

impl LeakSettings {
    /// [`Self::thresholds_for`] the process an alert is about.
    pub fn thresholds_for_alert(&self, alert: &crate::detect::Alert) -> StaleThresholds {
        self.thresholds_for(crate::detect::overrides::Workload {
            comm: &alert.comm,
            container: alert.container.as_ref(),
        })
    }

    /// These settings for a process (a command name, or a name and container), after its
    /// workload override.
    pub fn thresholds_for<'w>(
        &self,
        workload: impl Into<crate::detect::overrides::Workload<'w>>,
    ) -> StaleThresholds {
        let o = crate::detect::overrides::find(&self.detector.overrides, workload)
            .map(|o| o.thresholds);
        let o = o.unwrap_or_default();
        StaleThresholds {
            close_wait_after_ns: o.close_wait_after_ns.unwrap_or(self.close_wait_after_ns),
            held_closed_after_ns: o.held_closed_after_ns.unwrap_or(self.held_closed_after_ns),
            age_threshold_ns: o.age_threshold_ns.or(self.age_threshold_ns),
            health: HealthSettings {
                idle_after_ns: o.idle_after_ns.unwrap_or(self.health.idle_after_ns),
                unread_after_ns: o.unread_after_ns.unwrap_or(self.health.unread_after_ns),
                idle_alert_after_ns: o.idle_alert_after_ns.or(self.health.idle_alert_after_ns),
            },
        }
    }
}

/// A duration in nanoseconds, saturating (a u64 holds 584 years of them).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether open connection `view` is one of those behind `rule` (its evidence's stacks): for
/// `growth`, opened within the rule's window; for `close_wait` and `held_closed`, stale in that
/// state; for `age`, past the threshold; none for `unread` and `idle`.
/// `fd_exhaustion` is about the same connections as `growth` (what fills the descriptors);
/// `port_exhaustion` about none: its evidence names the destination, mostly TIME_WAIT.
/// `thresholds` are the process's, after its workload override.
pub fn behind_rule(
    rule: Rule,
    settings: &LeakSettings,
    thresholds: &StaleThresholds,
    view: &ConnView<'_>,
    now_ns: u64,
) -> bool {
    let conn = view.conn;
    let in_state = now_ns.saturating_sub(conn.state_since_ns);
    match rule {
        Rule::Growth | Rule::FdExhaustion => {
            let samples = u32::try_from(settings.detector.window_samples).unwrap_or(u32::MAX);
            conn.age_ns(now_ns) <= nanos(settings.interval.saturating_mul(samples))
        }
        Rule::CloseWait => {
            conn.state == tcp_state::CLOSE_WAIT && in_state >= thresholds.close_wait_after_ns
        }
        Rule::HeldClosed => {
            conn.state == tcp_state::CLOSE && in_state >= thresholds.held_closed_after_ns
        }
        Rule::Age => thresholds.age_threshold_ns.is_some_and(|t| conn.age_ns(now_ns) >= t),
        // Which connections are unread or idle is known from the dump, not from the table:
        // their evidence names them (`unread_connections`, `idle_connections`) without stacks.
        Rule::Unread | Rule::Idle | Rule::PortExhaustion => false,
    }
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

/// One pass over the table's open connections, grouped by owner, with each owner's pool health
/// from the scan of this evaluation (empty when it failed).
pub fn samples(
    table: &ConnectionTable,
    settings: &LeakSettings,
    health: &health::PerProcess,
    containers: &Directory,
    now_ns: u64,
) -> Vec<ProcessSample> {
    let mut per: HashMap<ProcessKey, PerProcess> = HashMap::new();
    // Each process's thresholds once (overrides match on its command name and container).
    let thresholds: HashMap<ProcessKey, StaleThresholds> = table
        .processes()
        .map(|p| {
            let comm = p.comm();
            let workload = Workload { comm: &comm, container: containers.container(p.cgroup_id) };
            (p.key, settings.thresholds_for(workload))
        })
        .collect();
    for view in table.connections() {
        let conn = view.conn;
        let (Phase::Open, Some(owner)) = (conn.phase(), conn.owner()) else { continue };
        let fallback;
        let t = match thresholds.get(&owner) {
            Some(t) => t,
            None => {
                fallback = settings.thresholds_for("");
                &fallback
            }
        };
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
            let pool = health.get(&p.key).cloned().unwrap_or_default();
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
                unread: pool.unread,
                idle_alerting: pool.idle_alerting,
                unread_examples: pool.unread_examples,
                idle_examples: pool.idle_examples,
                exited: p.exited(),
                oldest: acc.oldest.into_iter().map(|(_, c)| c).collect(),
                top_remotes: remotes,
                port_hold: None,
                fd: None,
                container: containers.container(p.cgroup_id).cloned(),
                over_limit: p.over_limit(),
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
    let Alert { pid, comm, rule, open, evidence, container, .. } = alert;
    // Empty strings for host processes: the log's fields stay the same for every alert.
    let (container_name, pod, namespace) = match container {
        Some(c) => {
            (c.label(), c.pod.as_deref().unwrap_or(""), c.namespace.as_deref().unwrap_or(""))
        }
        None => ("", "", ""),
    };
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
    let (unread, idle) = (evidence.unread, evidence.idle);
    let reading = evidence.reading.as_deref().unwrap_or("");
    match change {
        Change::Raised(_) => log::warn!(
            event, pid, comm = comm.as_str(), container = container_name, pod, namespace,
            rule, open, growth, floors = floors.as_str(),
            opens_in_window = opens, closes_in_window = closes, stale_close_wait = close_wait,
            stale_held_closed = held_closed, unread, idle, reading,
            top_remotes = remotes.as_str();
            "connection leak suspected"
        ),
        Change::Resolved(_) => log::info!(
            event, pid, comm = comm.as_str(), container = container_name, pod, namespace,
            rule, open;
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

    #[test]
    fn idle_and_unread_thresholds_follow_the_override() {
        let mut settings = LeakSettings::default();
        settings.health.idle_alert_after_ns = Some(600 * SEC);
        settings.detector.overrides = vec![
            "backup-agent:unread-after=900,idle-after=30".parse().expect("override"),
            "pool*:idle-alert-after=120".parse().expect("override"),
        ];
        let backup = settings.thresholds_for("backup-agent").health;
        assert_eq!(backup.unread_after_ns, 900 * SEC);
        assert_eq!(backup.idle_after_ns, 30 * SEC);
        assert_eq!(backup.idle_alert_after_ns, Some(600 * SEC), "daemon-wide when not set");
        let pool = settings.thresholds_for("poolclient").health;
        assert_eq!(pool.idle_alert_after_ns, Some(120 * SEC));
        assert_eq!(pool.unread_after_ns, settings.health.unread_after_ns);
        assert_eq!(settings.thresholds_for("nginx").health, settings.health);
    }

    use crate::table::{Direction, ScannedHolder, ScannedSocket, TableConfig};

    const SEC: u64 = 1_000_000_000;

    fn socket(cookie: u64, state: u8) -> ScannedSocket {
        ScannedSocket {
            netns: 1,
            inode: cookie,
            cookie,
            local: format!("127.0.0.1:{}", 40_000 + cookie).parse().expect("local"),
            remote: "127.0.0.1:80".parse().expect("remote"),
            state,
            direction: Direction::Outbound,
            holders: vec![ScannedHolder {
                key: ProcessKey::new(7, 1),
                comm: [b'a'; 16],
                cgroup_id: 0,
            }],
        }
    }

    /// Which of the table's connections (by local port) are behind `rule` at `now_ns`.
    fn behind(table: &ConnectionTable, rule: Rule, settings: &LeakSettings, now: u64) -> Vec<u16> {
        let mut ports: Vec<u16> = table
            .connections()
            .filter(|view| behind_rule(rule, settings, &settings.thresholds_for(""), view, now))
            .map(|view| view.conn.local().port())
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn the_connections_behind_a_rule_are_those_it_is_about() {
        let mut table = ConnectionTable::new(TableConfig::default());
        table.load_existing(
            &[socket(1, tcp_state::ESTABLISHED), socket(2, tcp_state::CLOSE_WAIT)],
            0,
        );
        table.load_existing(&[socket(3, tcp_state::ESTABLISHED)], 5 * SEC);
        let mut settings = LeakSettings {
            interval: Duration::from_secs(1),
            close_wait_after_ns: 2 * SEC,
            ..LeakSettings::default()
        };
        settings.detector.window_samples = 4;
        // growth: opened within the window (4 s), not the process's older pool.
        assert_eq!(behind(&table, Rule::Growth, &settings, 6 * SEC), [40_003]);
        assert_eq!(behind(&table, Rule::Growth, &settings, 9 * SEC), [40_003]);
        assert_eq!(behind(&table, Rule::Growth, &settings, 10 * SEC), [0u16; 0]);
        // close_wait: stale in CLOSE_WAIT only, once past the threshold.
        assert_eq!(behind(&table, Rule::CloseWait, &settings, SEC), [0u16; 0]);
        assert_eq!(behind(&table, Rule::CloseWait, &settings, 6 * SEC), [40_002]);
        assert_eq!(behind(&table, Rule::HeldClosed, &settings, 6 * SEC), [0u16; 0]);
        // age: off without a threshold; with one, the connections past it.
        assert_eq!(behind(&table, Rule::Age, &settings, 6 * SEC), [0u16; 0]);
        settings.age_threshold_ns = Some(3 * SEC);
        assert_eq!(behind(&table, Rule::Age, &settings, 6 * SEC), [40_001, 40_002]);
    }
}
