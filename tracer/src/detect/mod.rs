//! Leak detection: pure rules over per-process samples, evaluated on a fixed interval with an
//! injected clock. See docs/leak-detection.md for the rules, their defaults and how to tune them.
//!
//! The daemon builds one [`ProcessSample`] per live process at each evaluation and calls
//! [`Detector::evaluate`]; the detector keeps the history the rules need and returns the alerts
//! that were raised or resolved.
mod growth;
pub mod overrides;

use std::collections::{HashMap, VecDeque};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use growth::sub_window_floors;
pub use overrides::{Thresholds, WorkloadOverride};

use crate::exhaustion::{FdStatus, PortHold};

pub use crate::{health::HealthBrief, table::ProcessKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The floor of the open count rises in every sub-window of the window, by at least G.
    Growth,
    /// Connections sit in CLOSE_WAIT longer than T: the peer hung up, the process never closed.
    CloseWait,
    /// Connections reset by the peer are still held after T.
    HeldClosed,
    /// Connections older than a threshold (off by default).
    Age,
    /// Connections hold unread data and the process has not read from them for longer than T:
    /// responses not drained or not closed.
    Unread,
    /// Many connections idle longer than T: a pool without an idle timeout (off by default).
    Idle,
    /// A destination's ephemeral ports are nearly all in use: raised for the processes holding
    /// the most of them (TIME_WAIT included).
    PortExhaustion,
    /// Descriptors near the soft RLIMIT_NOFILE, or projected to reach it soon while `growth`
    /// holds.
    FdExhaustion,
}

impl Rule {
    /// Every rule (a new one goes here too: the API's schema lists these names).
    pub const ALL: [Rule; 8] = [
        Rule::Growth,
        Rule::CloseWait,
        Rule::HeldClosed,
        Rule::Age,
        Rule::Unread,
        Rule::Idle,
        Rule::PortExhaustion,
        Rule::FdExhaustion,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Growth => "growth",
            Rule::CloseWait => "close_wait",
            Rule::HeldClosed => "held_closed",
            Rule::Age => "age",
            Rule::Unread => "unread",
            Rule::Idle => "idle",
            Rule::PortExhaustion => "port_exhaustion",
            Rule::FdExhaustion => "fd_exhaustion",
        }
    }

    /// What an alert of this rule means, in plain words (in its evidence); `None` for the
    /// rules whose name says it.
    pub fn reading(self) -> Option<&'static str> {
        match self {
            Rule::Unread => Some(
                "the process stopped reading these connections: responses not drained or not \
                 closed",
            ),
            Rule::Idle => Some(
                "the process keeps these connections open and unused far longer than a pool \
                 should: a pool without an idle timeout",
            ),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// Samples per window (default 20, one per evaluation interval).
    pub window_samples: usize,
    /// Sub-windows per window (default 4); `window_samples` must be a multiple of it.
    pub sub_windows: usize,
    /// Minimum rise of the floor over the window for `growth` (default 10).
    pub growth_min: u32,
    /// `close_wait` fires with at least this many stale CLOSE_WAIT connections (default 1).
    pub close_wait_min: u32,
    /// `held_closed` fires with at least this many stale reset-but-held connections (default 1).
    pub held_closed_min: u32,
    /// `age` fires with at least this many connections older than its threshold (default 1),
    /// when the daemon counts them (the age rule is off unless a threshold is set).
    pub age_min: u32,
    pub age_enabled: bool,
    /// `unread` fires with at least this many unread connections (default 5).
    pub unread_min: u32,
    /// `idle` fires with at least this many connections idle beyond its threshold (default
    /// 20), when the daemon counts them (the idle rule is off unless a threshold is set).
    pub idle_min: u32,
    pub idle_enabled: bool,
    /// Consecutive clear evaluations before an alert resolves (default 4).
    pub resolve_after: u32,
    /// `port_exhaustion`: a destination with more than this percentage of its ephemeral ports
    /// in use (default 80).
    pub port_pressure_percent: u32,
    /// `fd_exhaustion`: descriptors within this percentage of the limit (default 10).
    pub fd_headroom_percent: u32,
    /// `fd_exhaustion`: projected to reach the limit within this time while `growth` holds
    /// (default 10 minutes).
    pub fd_exhaustion_within_ns: u64,
    /// Per-workload overrides, first match wins (empty by default).
    pub overrides: Vec<WorkloadOverride>,
}

/// Defaults of the leak rules (docs/leak-detection.md), shared by `Default` and the CLI flags.
pub mod defaults {
    pub const WINDOW_SAMPLES: usize = 20;
    pub const SUB_WINDOWS: usize = 4;
    pub const GROWTH_MIN: u32 = 10;
    pub const CLOSE_WAIT_MIN: u32 = 1;
    /// Not configurable: one connection reset by its peer and still held is the evidence.
    pub const HELD_CLOSED_MIN: u32 = 1;
    /// Not configurable: the age rule's threshold (`--age-threshold`) is its setting.
    pub const AGE_MIN: u32 = 1;
    pub const RESOLVE_AFTER: u32 = 4;
    pub const UNREAD_MIN: u32 = 5;
    pub const IDLE_MIN: u32 = 20;
    pub const PORT_PRESSURE_PERCENT: u32 = 80;
    pub const FD_HEADROOM_PERCENT: u32 = 10;
    pub const FD_EXHAUSTION_WITHIN_SECONDS: u64 = 600;
    /// `port_exhaustion` names this many of a destination's top holders.
    pub const PORT_HOLDERS_NAMED: usize = 3;
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            window_samples: defaults::WINDOW_SAMPLES,
            sub_windows: defaults::SUB_WINDOWS,
            growth_min: defaults::GROWTH_MIN,
            close_wait_min: defaults::CLOSE_WAIT_MIN,
            held_closed_min: defaults::HELD_CLOSED_MIN,
            age_min: defaults::AGE_MIN,
            age_enabled: false,
            unread_min: defaults::UNREAD_MIN,
            idle_min: defaults::IDLE_MIN,
            idle_enabled: false,
            resolve_after: defaults::RESOLVE_AFTER,
            port_pressure_percent: defaults::PORT_PRESSURE_PERCENT,
            fd_headroom_percent: defaults::FD_HEADROOM_PERCENT,
            fd_exhaustion_within_ns: defaults::FD_EXHAUSTION_WITHIN_SECONDS * 1_000_000_000,
            overrides: Vec::new(),
        }
    }
}

impl DetectorConfig {
    /// The settings that apply to a process with command name `comm`: the first matching
    /// override's thresholds over these (borrowed when no override matches).
    pub fn for_comm<'w>(
        &self,
        workload: impl Into<overrides::Workload<'w>>,
    ) -> std::borrow::Cow<'_, DetectorConfig> {
        let Some(o) = overrides::find(&self.overrides, workload) else {
            return std::borrow::Cow::Borrowed(self);
        };
        let t = &o.thresholds;
        std::borrow::Cow::Owned(DetectorConfig {
            growth_min: t.growth_min.unwrap_or(self.growth_min),
            close_wait_min: t.close_wait_min.unwrap_or(self.close_wait_min),
            port_pressure_percent: t.port_pressure_percent.unwrap_or(self.port_pressure_percent),
            fd_headroom_percent: t.fd_headroom_percent.unwrap_or(self.fd_headroom_percent),
            fd_exhaustion_within_ns: t
                .fd_exhaustion_within_ns
                .unwrap_or(self.fd_exhaustion_within_ns),
            unread_min: t.unread_min.unwrap_or(self.unread_min),
            idle_min: t.idle_min.unwrap_or(self.idle_min),
            age_enabled: self.age_enabled || t.age_threshold_ns.is_some(),
            idle_enabled: self.idle_enabled || t.idle_alert_after_ns.is_some(),
            overrides: Vec::new(),
            ..self.clone()
        })
    }

    /// Whether `rule` runs for `comm`: an override's on/off, else the daemon-wide setting.
    /// The rules off by default (`age`, `idle`) are on with a threshold, daemon-wide or in the
    /// override.
    pub fn rule_enabled<'w>(
        &self,
        rule: Rule,
        workload: impl Into<overrides::Workload<'w>>,
    ) -> bool {
        let found = overrides::find(&self.overrides, workload);
        let t = found.map(|o| o.thresholds).unwrap_or_default();
        let default = match rule {
            Rule::Age => self.age_enabled || t.age_threshold_ns.is_some(),
            Rule::Idle => self.idle_enabled || t.idle_alert_after_ns.is_some(),
            _ => true,
        };
        found.and_then(|o| o.rule(rule)).unwrap_or(default)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.sub_windows < 2 {
            return Err(format!("sub-windows must be at least 2 (got {})", self.sub_windows));
        }
        if self.window_samples < self.sub_windows
            || !self.window_samples.is_multiple_of(self.sub_windows)
        {
            return Err(format!(
                "window samples ({}) must be a positive multiple of sub-windows ({})",
                self.window_samples, self.sub_windows
            ));
        }
        if self.unread_min == 0 || self.idle_min == 0 {
            return Err("unread-min and idle-min must be at least 1".into());
        }
        if self.resolve_after == 0 {
            return Err("resolve-after must be at least 1".into());
        }
        for (name, value) in [
            ("port-pressure", self.port_pressure_percent),
            ("fd-headroom", self.fd_headroom_percent),
        ] {
            if !(1..=100).contains(&value) {
                return Err(format!("{name} must be a percentage from 1 to 100 (got {value})"));
            }
        }
        Ok(())
    }
}

/// A connection named in evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnBrief {
    /// Local endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub local: String,
    /// Remote endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub remote: String,
    /// TCP state, as in `conns`.
    #[schemars(extend("enum" = crate::events::state_names()))]
    pub state: String,
    /// Seconds since it opened.
    pub age_seconds: u64,
}

/// What the daemon knows about one process at one evaluation.
#[derive(Clone, Debug, Default)]
pub struct ProcessSample {
    pub id: Option<ProcessKey>,
    pub comm: String,
    pub open: u32,
    pub opened_total: u64,
    pub closed_total: u64,
    /// Open connections in CLOSE_WAIT for longer than the close_wait threshold.
    pub stale_close_wait: u32,
    /// Open connections in state `close` (reset by the peer) held longer than the threshold.
    pub stale_held_closed: u32,
    /// Open connections older than the age threshold (0 when the age rule is off).
    pub aged: u32,
    /// Open connections with unread data and no read progress for longer than `unread_after`.
    pub unread: u32,
    /// Open connections idle longer than the idle rule's threshold (0 when it is off).
    pub idle_alerting: u32,
    /// The unread connections with the most unread bytes (a handful).
    pub unread_examples: Vec<HealthBrief>,
    /// The longest-idle connections beyond the idle rule's threshold (a handful).
    pub idle_examples: Vec<HealthBrief>,
    pub exited: bool,
    /// The oldest open connections, oldest first (a handful).
    pub oldest: Vec<ConnBrief>,
    /// Remote endpoints by number of open connections, most first (a handful).
    pub top_remotes: Vec<(String, u32)>,
    /// Its share of the most pressed destination it holds ports towards (when a scan ran).
    pub port_hold: Option<PortHold>,
    /// Its descriptors (when the daemon read them).
    pub fd: Option<FdStatus>,
    /// Its container (`None` for a host process, or while its cgroup is not resolved).
    pub container: Option<crate::containers::Container>,
    /// A connection of it was refused for a table limit: `open` is a lower bound, whose rises
    /// and falls may be the limit's (refusals while full, room again later), so the growth
    /// rule neither raises nor resolves for it: an active alert stays active.
    pub over_limit: bool,
}

impl ProcessSample {
    /// What workload overrides match it by.
    pub fn workload(&self) -> overrides::Workload<'_> {
        overrides::Workload { comm: &self.comm, container: self.container.as_ref() }
    }
}

/// What the detector saw in a process when an alert raised (docs/leak-detection.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Evidence {
    /// Minimum open count in each sub-window of the window, oldest first.
    pub floors: Vec<u32>,
    /// Net change of the floor over the window (last floor minus first), connections.
    pub growth: i64,
    /// Connections it opened during the window.
    pub opens_in_window: u64,
    /// Connections it released during the window.
    pub closes_in_window: u64,
    /// Open connections in CLOSE_WAIT for longer than the close_wait threshold.
    pub stale_close_wait: u32,
    /// Open connections reset by the peer (state `close`) held longer than the threshold.
    pub stale_held_closed: u32,
    /// Open connections older than the age threshold (0 when the age rule is off).
    pub aged: u32,
    /// Open connections holding unread data with no read progress for longer than the unread
    /// threshold.
    #[serde(default)]
    pub unread: u32,
    /// Open connections idle longer than the idle rule's threshold (0 when it is off).
    #[serde(default)]
    pub idle: u32,
    /// The unread connections with the most unread bytes, most first (at most 5).
    #[serde(default)]
    pub unread_connections: Vec<HealthBrief>,
    /// The longest-idle connections beyond the idle rule's threshold, longest first (at most
    /// 5).
    #[serde(default)]
    pub idle_connections: Vec<HealthBrief>,
    /// What the alert means, in plain words (`unread` and `idle` alerts; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub reading: Option<String>,
    /// Its oldest open connections, oldest first (at most 5).
    pub oldest: Vec<ConnBrief>,
    /// Remote endpoints by its open connections, most first (at most 5).
    pub top_remotes: Vec<RemoteCount>,
    /// The most pressed destination it holds ephemeral ports towards, when a scan found one.
    #[serde(default)]
    pub port_pressure: Option<PortPressureEvidence>,
    /// Its descriptors, when the daemon read them (exported or growing processes).
    #[serde(default)]
    pub fds: Option<FdEvidence>,
    /// The opener stacks of the connections behind the rule, taken and symbolized when the
    /// alert raised and kept with it (so a resolved alert of an exited process still names
    /// them); `null` with `--stacks off`, and for the moment between the raise and their
    /// grouping.
    #[serde(default)]
    pub stacks: Option<crate::stacks::groups::AlertStacks>,
}

/// A destination's ephemeral ports, as `port_exhaustion` saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortPressureEvidence {
    /// Remote endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub remote: String,
    /// Ephemeral ports in use towards it, over every process (TIME_WAIT included unless
    /// `tcp_tw_reuse` frees them for this destination).
    pub ports_used: u32,
    /// The size of the namespace's `ip_local_port_range`.
    pub ports_available: u32,
    /// Of those in use, the ones this process holds (TIME_WAIT it caused included).
    pub held: u32,
}

/// Descriptors of a process, as `fd_exhaustion` saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FdEvidence {
    /// Open descriptors (/proc/PID/fd).
    pub used: u32,
    /// Soft RLIMIT_NOFILE (/proc/PID/limits); `null` when unlimited.
    pub limit: Option<u64>,
    /// Seconds until the rise seen over the window reaches the limit; `null` without a rise.
    pub exhaustion_seconds: Option<u64>,
}

impl Evidence {
    /// The evidence as an alert of `rule` carries it (with the rule's plain reading).
    fn for_rule(&self, rule: Rule) -> Evidence {
        Evidence { reading: rule.reading().map(str::to_owned), ..self.clone() }
    }
}

/// Open connections of one process to one remote endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RemoteCount {
    /// Remote endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub remote: String,
    /// The process's open connections to it.
    pub open: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub pid: u32,
    pub start_time_ns: u64,
    pub comm: String,
    /// Its container when it raised, or as first resolved while it was active; kept after the
    /// container is gone, so a resolved alert still names it. `None` for a host process.
    #[serde(default)]
    pub container: Option<crate::containers::Container>,
    pub rule: Rule,
    /// Clock time (ns) of the evaluation that raised it.
    pub since_ns: u64,
    pub open: u32,
    pub evidence: Evidence,
    /// Set once resolved.
    pub resolved_ns: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Raised(Alert),
    Resolved(Alert),
}

/// Per-process history kept between evaluations.
#[derive(Default)]
struct History {
    open: VecDeque<u32>,
    opened_total: VecDeque<u64>,
    closed_total: VecDeque<u64>,
}

struct Active {
    alert: Alert,
    clear_streak: u32,
}

pub struct Detector {
    config: DetectorConfig,
    history: HashMap<ProcessKey, History>,
    active: HashMap<(ProcessKey, Rule), Active>,
    resolved: VecDeque<Alert>,
    evaluations: u64,
}

/// How long resolved alerts stay listed by `tracer leaks`.
pub const RESOLVED_RETENTION_NS: u64 = 3600 * 1_000_000_000;

impl Detector {
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            history: HashMap::new(),
            active: HashMap::new(),
            resolved: VecDeque::new(),
            evaluations: 0,
        }
    }

    /// Evaluations done so far (one per leak interval).
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// One evaluation at clock time `now_ns` over every live process.
    pub fn evaluate(&mut self, now_ns: u64, samples: &[ProcessSample]) -> Vec<Change> {
        self.evaluations += 1;
        let mut changes = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(samples.len());
        for sample in samples {
            let Some(id) = sample.id else { continue };
            seen.insert(id);
            let history = self.history.entry(id).or_default();
            push_bounded(&mut history.open, sample.open, self.config.window_samples);
            push_bounded(
                &mut history.opened_total,
                sample.opened_total,
                self.config.window_samples,
            );
            push_bounded(
                &mut history.closed_total,
                sample.closed_total,
                self.config.window_samples,
            );
            let evidence = evidence(&self.config, history, sample);
            let config = self.config.for_comm(sample.workload());
            let growth = growth::holds(&history.open, &config);
            let verdicts = Rule::ALL.map(|rule| {
                let holds = !sample.exited
                    && self.config.rule_enabled(rule, sample.workload())
                    && rule_holds(&config, rule, sample, growth);
                (rule, holds)
            });
            for (rule, holds) in verdicts {
                if rule == Rule::Growth && sample.over_limit && !sample.exited {
                    continue;
                }
                self.step(now_ns, id, rule, holds, sample, &evidence, &mut changes);
            }
        }
        // A process that disappeared (exited and expired from the table): resolve its alerts.
        let gone: Vec<(ProcessKey, Rule)> =
            self.active.keys().filter(|(id, _)| !seen.contains(id)).copied().collect();
        for key in gone {
            if let Some(active) = self.active.remove(&key) {
                changes.push(Change::Resolved(self.retire(active.alert, now_ns)));
            }
        }
        self.history.retain(|id, _| seen.contains(id));
        while self.resolved.front().is_some_and(|a| {
            a.resolved_ns.is_some_and(|t| now_ns.saturating_sub(t) > RESOLVED_RETENTION_NS)
        }) {
            self.resolved.pop_front();
        }
        changes
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        now_ns: u64,
        id: ProcessKey,
        rule: Rule,
        holds: bool,
        sample: &ProcessSample,
        evidence: &Evidence,
        changes: &mut Vec<Change>,
    ) {
        let key = (id, rule);
        match (self.active.get_mut(&key), holds) {
            (Some(active), true) => {
                active.clear_streak = 0;
                active.alert.open = sample.open;
                active.alert.comm.clone_from(&sample.comm);
                if active.alert.container.is_none() {
                    active.alert.container.clone_from(&sample.container);
                }
                // The stacks stay those of the raise: the daemon attached them then.
                let stacks = active.alert.evidence.stacks.take();
                active.alert.evidence = evidence.for_rule(rule);
                active.alert.evidence.stacks = stacks;
            }
            (Some(active), false) => {
                active.clear_streak += 1;
                active.alert.open = sample.open;
                // An exited process's alert resolves at once: nothing is left to leak.
                if (sample.exited || active.clear_streak >= self.config.resolve_after)
                    && let Some(active) = self.active.remove(&key)
                {
                    changes.push(Change::Resolved(self.retire(active.alert, now_ns)));
                }
            }
            (None, true) => {
                let alert = Alert {
                    pid: id.pid,
                    start_time_ns: id.start_time_ns,
                    comm: sample.comm.clone(),
                    container: sample.container.clone(),
                    rule,
                    since_ns: now_ns,
                    open: sample.open,
                    evidence: evidence.for_rule(rule),
                    resolved_ns: None,
                };
                changes.push(Change::Raised(alert.clone()));
                self.active.insert(key, Active { alert, clear_streak: 0 });
            }
            (None, false) => {}
        }
    }

    fn retire(&mut self, mut alert: Alert, now_ns: u64) -> Alert {
        alert.resolved_ns = Some(now_ns);
        self.resolved.push_back(alert.clone());
        alert
    }

    /// Attaches the opener stacks the daemon took when the alert of `id` and `rule` raised at
    /// `since_ns`, whether it is still active or resolved since. Returns the alert as it is
    /// now, or `None` when it is no longer listed.
    pub fn attach_stacks(
        &mut self,
        id: ProcessKey,
        rule: Rule,
        since_ns: u64,
        stacks: crate::stacks::groups::AlertStacks,
    ) -> Option<&Alert> {
        let matches = |a: &Alert| {
            a.pid == id.pid
                && a.start_time_ns == id.start_time_ns
                && a.rule == rule
                && a.since_ns == since_ns
        };
        let alert = match self.active.get_mut(&(id, rule)) {
            Some(active) if matches(&active.alert) => &mut active.alert,
            _ => self.resolved.iter_mut().rev().find(|a| matches(a))?,
        };
        alert.evidence.stacks = Some(stacks);
        Some(alert)
    }

    /// Replaces the Go request groups of the active alert of `id` and `rule` raised at
    /// `since_ns` (its opener stacks stay as they were at the raise). False when that alert is
    /// not active, or carries no stacks.
    pub fn refresh_requests(
        &mut self,
        id: ProcessKey,
        rule: Rule,
        since_ns: u64,
        requests: crate::stacks::groups::RequestGroups,
    ) -> bool {
        match self.active.get_mut(&(id, rule)) {
            Some(active) if active.alert.since_ns == since_ns => {
                match active.alert.evidence.stacks.as_mut() {
                    Some(stacks) => {
                        stacks.requests = Some(requests);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values().map(|a| &a.alert)
    }

    /// Alerts resolved within the last hour, oldest first.
    pub fn recently_resolved(&self) -> impl Iterator<Item = &Alert> {
        self.resolved.iter()
    }

    /// Rules alerting for `id` now.
    pub fn alerts_for(&self, id: ProcessKey) -> Vec<Rule> {
        let mut rules: Vec<Rule> =
            self.active.keys().filter(|(pid, _)| *pid == id).map(|(_, rule)| *rule).collect();
        rules.sort();
        rules
    }

    /// Net change of the floor over the current window (0 until a sub-window is complete).
    /// Processes whose connections' opener stacks should all be captured: a `growth` alert is
    /// active, or its floor is rising ([`growth::suspect`]). Other rules (`unread` and `idle`
    /// included: their connections are not new) make no suspects.
    pub fn suspects(&self) -> impl Iterator<Item = ProcessKey> + '_ {
        self.history.iter().filter_map(|(id, history)| {
            let alerting = self.active.contains_key(&(*id, Rule::Growth));
            (alerting || growth::suspect(&history.open, &self.config)).then_some(*id)
        })
    }

    /// The rise of `id`'s floor as `top` shows it, and whether it is partial (the first window
    /// still filling: [`growth::so_far`]).
    pub fn growth_of(&self, id: ProcessKey) -> (i64, bool) {
        self.history.get(&id).map_or((0, false), |h| growth::so_far(&h.open, &self.config))
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, value: T, capacity: usize) {
    if queue.len() == capacity {
        queue.pop_front();
    }
    queue.push_back(value);
}

fn floor_growth(floors: &[u32]) -> i64 {
    match (floors.first(), floors.last()) {
        (Some(first), Some(last)) if floors.len() >= 2 => i64::from(*last) - i64::from(*first),
        _ => 0,
    }
}

fn rule_holds(
    config: &DetectorConfig,
    rule: Rule,
    sample: &ProcessSample,
    growth_holds: bool,
) -> bool {
    match rule {
        Rule::Growth => growth_holds,
        Rule::CloseWait => sample.stale_close_wait >= config.close_wait_min,
        Rule::HeldClosed => sample.stale_held_closed >= config.held_closed_min,
        Rule::Age => sample.aged >= config.age_min,
        Rule::Unread => sample.unread >= config.unread_min,
        Rule::Idle => sample.idle_alerting >= config.idle_min,
        Rule::PortExhaustion => sample.port_hold.as_ref().is_some_and(|h| {
            h.rank < defaults::PORT_HOLDERS_NAMED
                && h.held > 0
                && u64::from(h.used) * 100
                    > u64::from(h.available) * u64::from(config.port_pressure_percent)
        }),
        Rule::FdExhaustion => sample.fd.is_some_and(|fd| {
            let Some(limit) = fd.limit else { return false };
            let near = u64::from(fd.used) * 100
                >= limit * u64::from(100 - config.fd_headroom_percent.min(100));
            let soon = growth_holds
                && fd.exhaustion_seconds.is_some_and(|s| {
                    u128::from(s) * 1_000_000_000 <= u128::from(config.fd_exhaustion_within_ns)
                });
            near || soon
        }),
    }
}

fn evidence(config: &DetectorConfig, history: &History, sample: &ProcessSample) -> Evidence {
    let floors = sub_window_floors(&history.open, config);
    let delta = |q: &VecDeque<u64>| match (q.front(), q.back()) {
        (Some(first), Some(last)) => last.saturating_sub(*first),
        _ => 0,
    };
    Evidence {
        growth: floor_growth(&floors),
        floors,
        opens_in_window: delta(&history.opened_total),
        closes_in_window: delta(&history.closed_total),
        stale_close_wait: sample.stale_close_wait,
        stale_held_closed: sample.stale_held_closed,
        aged: sample.aged,
        unread: sample.unread,
        idle: sample.idle_alerting,
        unread_connections: sample.unread_examples.clone(),
        idle_connections: sample.idle_examples.clone(),
        reading: None,
        oldest: sample.oldest.clone(),
        top_remotes: sample
            .top_remotes
            .iter()
            .map(|(remote, open)| RemoteCount { remote: remote.clone(), open: *open })
            .collect(),
        port_pressure: sample.port_hold.as_ref().map(|h| PortPressureEvidence {
            remote: h.remote.to_string(),
            ports_used: h.used,
            ports_available: h.available,
            held: h.held,
        }),
        fds: sample.fd.map(|fd| FdEvidence {
            used: fd.used,
            limit: fd.limit,
            exhaustion_seconds: fd.exhaustion_seconds,
        }),
        stacks: None,
    }
}

#[cfg(test)]
mod tests;
