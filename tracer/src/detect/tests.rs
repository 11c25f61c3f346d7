//! Rules against simulated workloads on a simulated clock: one sample per interval.
use super::*;

const SEC: u64 = 1_000_000_000;
const PID: ProcessKey = ProcessKey { pid: 42, start_time_ns: 7 };

/// A simulated process: `open` follows the workload, totals count its opens and closes.
struct Sim {
    detector: Detector,
    now: u64,
    sample: ProcessSample,
    changes: Vec<Change>,
}

impl Sim {
    fn new(config: DetectorConfig) -> Self {
        let sample =
            ProcessSample { id: Some(PID), comm: "app".into(), ..ProcessSample::default() };
        Self { detector: Detector::new(config), now: 0, sample, changes: Vec::new() }
    }

    fn open(&mut self, n: u32) {
        self.sample.open += n;
        self.sample.opened_total += u64::from(n);
    }

    fn close(&mut self, n: u32) {
        self.sample.open -= n;
        self.sample.closed_total += u64::from(n);
    }

    /// Advances one interval and evaluates; returns the changes of this evaluation.
    fn tick(&mut self) -> Vec<Change> {
        self.now += SEC;
        let changes = self.detector.evaluate(self.now, std::slice::from_ref(&self.sample));
        self.changes.extend(changes.clone());
        changes
    }

    fn raised(&self, rule: Rule) -> Vec<&Alert> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::Raised(a) if a.rule == rule => Some(a),
                _ => None,
            })
            .collect()
    }

    fn any_raised(&self) -> bool {
        self.changes.iter().any(|c| matches!(c, Change::Raised(_)))
    }
}

fn small_window() -> DetectorConfig {
    DetectorConfig {
        window_samples: 8,
        sub_windows: 4,
        growth_min: 10,
        ..DetectorConfig::default()
    }
}

#[test]
fn steady_leak_raises_growth_once_the_floor_rose_by_g_within_one_window() {
    // One new connection every 0.2 s, never closed: +5 per 1 s sample.
    let mut sim = Sim::new(small_window());
    let mut raised_at = None;
    for i in 1..=8 {
        sim.open(5);
        if !sim.tick().is_empty() && raised_at.is_none() {
            raised_at = Some(i);
        }
    }
    assert_eq!(raised_at, Some(8), "raises at the first full window, not before");
    let alert = sim.raised(Rule::Growth)[0];
    assert_eq!(alert.evidence.floors, vec![5, 15, 25, 35]);
    assert_eq!(alert.evidence.growth, 30);
    assert!(alert.evidence.growth >= 10);
    // Opens in the window: between the first and last samples of the window.
    assert_eq!(alert.evidence.opens_in_window, 35);
    assert_eq!(alert.evidence.closes_in_window, 0);
    assert_eq!(sim.detector.alerts_for(PID), vec![Rule::Growth]);
}

#[test]
fn growth_below_g_does_not_raise() {
    let mut sim = Sim::new(small_window());
    for i in 0..8 {
        if i % 2 == 0 {
            sim.open(1); // floor rises by 1 per sub-window: 3 in total < 10
        }
        sim.tick();
    }
    assert!(!sim.any_raised());
}

#[test]
fn leak_under_churn_raises_growth() {
    // Every 0.1 s: open two, close one -> +10 per second, with the count oscillating.
    let mut sim = Sim::new(small_window());
    for _ in 0..8 {
        for _ in 0..10 {
            sim.open(2);
            sim.close(1);
        }
        sim.tick();
    }
    assert_eq!(sim.raised(Rule::Growth).len(), 1);
    let alert = sim.raised(Rule::Growth)[0];
    assert_eq!(alert.evidence.opens_in_window, 140);
    assert_eq!(alert.evidence.closes_in_window, 70);
}

#[test]
fn pool_that_warms_up_and_plateaus_never_raises() {
    let mut sim = Sim::new(small_window());
    for i in 0..40 {
        if sim.sample.open < 20 {
            sim.open(if i < 4 { 5 } else { 0 });
        }
        sim.tick();
    }
    assert_eq!(sim.sample.open, 20);
    assert!(!sim.any_raised());
}

#[test]
fn pool_whose_peer_closes_idle_connections_never_raises() {
    // 20 connections; every third interval the peer closes 5 idle ones, the client reopens them.
    let mut sim = Sim::new(small_window());
    sim.open(20);
    for i in 0..40 {
        if i % 3 == 0 {
            sim.close(5);
        } else if sim.sample.open < 20 {
            sim.open(5);
        }
        sim.tick();
    }
    assert!(!sim.any_raised());
}

#[test]
fn churn_around_a_level_never_raises() {
    let mut sim = Sim::new(small_window());
    let levels = [30, 45, 28, 50, 33, 41, 29, 47];
    for i in 0..48 {
        let target = levels[i % levels.len()];
        if sim.sample.open < target {
            sim.open(target - sim.sample.open);
        } else {
            sim.close(sim.sample.open - target);
        }
        sim.tick();
    }
    assert!(!sim.any_raised());
}

#[test]
fn alert_resolves_after_r_clear_evaluations_and_does_not_flap() {
    let mut sim = Sim::new(DetectorConfig { resolve_after: 3, ..small_window() });
    for _ in 0..8 {
        sim.open(5);
        sim.tick();
    }
    assert_eq!(sim.raised(Rule::Growth).len(), 1);
    // The leak stops at 40. The window still shows the rise for two more evaluations
    // (floors 10,20,30,40 then 15,25,35,40); from the third (20,30,40,40) the rule is clear,
    // and three clear evaluations later the alert resolves.
    let mut resolved_after = None;
    for i in 1..=8 {
        let changes = sim.tick();
        if changes.iter().any(|c| matches!(c, Change::Resolved(a) if a.rule == Rule::Growth)) {
            resolved_after = Some(i);
        }
    }
    assert_eq!(resolved_after, Some(5));
    assert_eq!(sim.detector.active().count(), 0);
    assert_eq!(sim.detector.recently_resolved().count(), 1);
    assert_eq!(sim.raised(Rule::Growth).len(), 1, "raised once, no flapping");
}

#[test]
fn exit_resolves_at_once() {
    let mut sim = Sim::new(small_window());
    for _ in 0..8 {
        sim.open(5);
        sim.tick();
    }
    sim.sample.exited = true;
    let changes = sim.tick();
    assert!(changes.iter().any(|c| matches!(c, Change::Resolved(a) if a.rule == Rule::Growth)));
}

#[test]
fn disappeared_process_resolves() {
    let mut sim = Sim::new(small_window());
    for _ in 0..8 {
        sim.open(5);
        sim.tick();
    }
    let changes = sim.detector.evaluate(sim.now + SEC, &[]);
    assert!(matches!(changes.as_slice(), [Change::Resolved(a)] if a.pid == PID.pid));
}

#[test]
fn close_wait_and_held_closed_raise_on_stale_counts() {
    let mut sim = Sim::new(small_window());
    sim.open(3);
    sim.sample.stale_close_wait = 1;
    sim.tick();
    assert_eq!(sim.raised(Rule::CloseWait).len(), 1);
    sim.sample.stale_held_closed = 2;
    sim.tick();
    assert_eq!(sim.raised(Rule::HeldClosed).len(), 1);
    assert_eq!(sim.raised(Rule::HeldClosed)[0].evidence.stale_held_closed, 2);
}

#[test]
fn age_rule_is_off_unless_enabled() {
    let mut sim = Sim::new(small_window());
    sim.open(1);
    sim.sample.aged = 1;
    sim.tick();
    assert!(!sim.any_raised());
    let mut sim = Sim::new(DetectorConfig { age_enabled: true, ..small_window() });
    sim.open(1);
    sim.sample.aged = 1;
    sim.tick();
    assert_eq!(sim.raised(Rule::Age).len(), 1);
}

#[test]
fn config_validation_names_the_problem() {
    assert!(DetectorConfig::default().validate().is_ok());
    let bad = DetectorConfig { window_samples: 10, sub_windows: 4, ..DetectorConfig::default() };
    assert!(bad.validate().unwrap_err().contains("multiple"));
}

/// docs/leak-detection.md states the detector's defaults and fixed counts: these constants.
#[test]
fn docs_state_the_defaults_and_fixed_counts() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/leak-detection.md");
    let doc = std::fs::read_to_string(path).expect("docs/leak-detection.md");
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let interval = crate::daemon::DEFAULT_LEAK_INTERVAL.as_secs();
    let window = defaults::WINDOW_SAMPLES as u64;
    let sub_windows = defaults::SUB_WINDOWS as u64;
    let secs = |d: std::time::Duration| d.as_secs();
    // Counts the doc spells out in words.
    let word = |n: u32| match n {
        1 => "one".to_owned(),
        n => n.to_string(),
    };
    for phrase in [
        format!("every **interval** (default {interval} s)"),
        format!("(default {window}, so {} minutes)", window * interval / 60),
        format!(
            "**Q sub-windows** (default {sub_windows}, so {} s each)",
            window * interval / sub_windows
        ),
        format!("by at least **G** in total (default {})", defaults::GROWTH_MIN),
        format!("At least **K** (default {})", defaults::CLOSE_WAIT_MIN),
        format!("for at least **T** (default {} s)", secs(crate::daemon::DEFAULT_CLOSE_WAIT_AFTER)),
        format!(
            "for at least **T** (default {} s). Only T",
            secs(crate::daemon::DEFAULT_HELD_CLOSED_AFTER)
        ),
        format!(
            "the count is fixed at {} (`detect::defaults::HELD_CLOSED_MIN`)",
            word(defaults::HELD_CLOSED_MIN)
        ),
        format!("the count of {} is fixed, `detect::defaults::AGE_MIN`", word(defaults::AGE_MIN)),
        format!("**R** consecutive clear evaluations (default {})", defaults::RESOLVE_AFTER),
        "and those resolved in the last hour".to_owned(),
    ] {
        assert!(doc.contains(&phrase), "docs/leak-detection.md should say \"{phrase}\"");
    }
    assert_eq!(RESOLVED_RETENTION_NS, 3_600 * SEC, "the doc says resolved alerts stay an hour");
}

#[test]
fn a_rising_floor_makes_a_suspect_before_growth_raises() {
    let mut sim = Sim::new(small_window());
    // Two samples per sub-window: the floor rises 0 -> 3 -> 6 over three sub-windows.
    let mut suspect_at = None;
    for tick in 0..8 {
        sim.open(3 * u32::from(tick % 2 == 0));
        sim.tick();
        if suspect_at.is_none() && sim.detector.suspects().any(|id| id == PID) {
            assert!(sim.raised(Rule::Growth).is_empty(), "suspect only after the alert");
            suspect_at = Some(tick);
        }
    }
    let suspect_at = suspect_at.expect("a steady leak becomes a suspect");
    assert!(suspect_at < 7, "suspect at tick {suspect_at}, before the window is full");
}

#[test]
fn a_plateaued_pool_is_no_suspect_and_an_active_growth_alert_is() {
    let mut sim = Sim::new(small_window());
    sim.open(20);
    for _ in 0..8 {
        sim.tick();
    }
    assert_eq!(sim.detector.suspects().count(), 0, "a flat floor");
    // A leak: the floor rises in every sub-window until growth raises.
    for _ in 0..8 {
        sim.open(3);
        sim.tick();
    }
    assert_eq!(sim.raised(Rule::Growth).len(), 1);
    // It stops leaking: the floor is flat, but the active alert keeps it a suspect.
    sim.tick();
    sim.tick();
    sim.tick();
    assert!(sim.detector.suspects().any(|id| id == PID), "alerting processes stay suspects");
}

fn hold(rank: usize, used: u32) -> crate::exhaustion::PortHold {
    crate::exhaustion::PortHold {
        remote: "10.0.0.5:5432".parse().expect("addr"),
        used,
        available: 100,
        held: used,
        rank,
    }
}

#[test]
fn port_exhaustion_names_the_top_holders_above_the_pressure_only() {
    let mut sim = Sim::new(small_window());
    sim.sample.port_hold = Some(hold(0, 80));
    sim.tick();
    assert!(sim.raised(Rule::PortExhaustion).is_empty(), "80% is not above 80%");
    sim.sample.port_hold = Some(hold(3, 81));
    sim.tick();
    assert!(sim.raised(Rule::PortExhaustion).is_empty(), "only the top 3 holders are named");
    sim.sample.port_hold = Some(hold(0, 81));
    sim.tick();
    let raised = sim.raised(Rule::PortExhaustion);
    let evidence = raised[0].evidence.port_pressure.as_ref().expect("evidence");
    assert_eq!((evidence.ports_used, evidence.ports_available), (81, 100));
}

#[test]
fn fd_exhaustion_near_the_limit_or_projected_while_growth_holds() {
    let fd = |used, exhaustion_seconds| crate::exhaustion::FdStatus {
        used,
        limit: Some(100),
        exhaustion_seconds,
    };
    let mut sim = Sim::new(small_window());
    // Projected in 60 s, but no growth: no alert; 90 of 100 is within 10%: alert.
    sim.sample.fd = Some(fd(50, Some(60)));
    sim.tick();
    assert!(sim.raised(Rule::FdExhaustion).is_empty());
    sim.sample.fd = Some(fd(90, None));
    sim.tick();
    assert_eq!(sim.raised(Rule::FdExhaustion).len(), 1);

    // A growing process far from its limit, projected to reach it within 10 minutes.
    let mut sim = Sim::new(small_window());
    for _ in 0..8 {
        sim.open(5);
        sim.sample.fd = Some(fd(20, Some(300)));
        sim.tick();
    }
    assert_eq!(sim.raised(Rule::Growth).len(), 1);
    assert_eq!(sim.raised(Rule::FdExhaustion).len(), 1, "raised with growth");
    assert_eq!(sim.raised(Rule::FdExhaustion)[0].evidence.fds.as_ref().map(|f| f.used), Some(20));
}

#[test]
fn workload_overrides_switch_rules_and_thresholds_by_command_name() {
    let mut config = small_window();
    config.overrides = vec![
        "app:close_wait=off".parse().expect("override"),
        "other:close-wait-min=1".parse().expect("override"),
    ];
    let mut sim = Sim::new(config.clone());
    sim.sample.stale_close_wait = 3;
    sim.tick();
    assert!(sim.raised(Rule::CloseWait).is_empty(), "off for app");

    // A higher K for this comm only; everyone else keeps K = 1.
    config.overrides = vec!["ap?:close-wait-min=5".parse().expect("override")];
    let mut sim = Sim::new(config.clone());
    sim.sample.stale_close_wait = 3;
    sim.tick();
    assert!(sim.raised(Rule::CloseWait).is_empty(), "3 < 5 for app");
    sim.sample.stale_close_wait = 5;
    sim.tick();
    assert_eq!(sim.raised(Rule::CloseWait).len(), 1);
    let mut sim = Sim::new(config.clone());
    sim.sample.comm = "nginx".into();
    sim.sample.stale_close_wait = 1;
    sim.tick();
    assert_eq!(sim.raised(Rule::CloseWait).len(), 1, "the daemon-wide K for others");

    // The age rule, off daemon-wide, on for one comm.
    config.overrides = vec!["app:age=on".parse().expect("override")];
    let mut sim = Sim::new(config);
    sim.sample.aged = 1;
    sim.tick();
    assert_eq!(sim.raised(Rule::Age).len(), 1);
}

#[test]
fn workload_overrides_reach_the_idle_and_unread_rules() {
    // idle: off daemon-wide, on for `app` through its own threshold, with its own K.
    let mut config = small_window();
    config.overrides = vec!["app:idle-alert-after=60,idle-min=3".parse().expect("override")];
    let mut sim = Sim::new(config.clone());
    sim.sample.idle_alerting = 3;
    sim.tick();
    assert_eq!(sim.raised(Rule::Idle).len(), 1, "on for app at K = 3");
    let mut sim = Sim::new(config);
    sim.sample.comm = "postgres".into();
    sim.sample.idle_alerting = 30;
    sim.tick();
    assert!(sim.raised(Rule::Idle).is_empty(), "still off for others");

    // unread: on daemon-wide, off for `app`, a higher K for `ap*` elsewhere.
    let mut config = small_window();
    config.overrides = vec!["app:unread=off".parse().expect("override")];
    let mut sim = Sim::new(config);
    sim.sample.unread = 50;
    sim.tick();
    assert!(sim.raised(Rule::Unread).is_empty(), "off for app");
    let mut config = small_window();
    config.overrides = vec!["ap*:unread-min=8".parse().expect("override")];
    let mut sim = Sim::new(config);
    sim.sample.unread = 7;
    sim.tick();
    assert!(sim.raised(Rule::Unread).is_empty(), "7 < 8 for app");
    sim.sample.unread = 8;
    sim.tick();
    assert_eq!(sim.raised(Rule::Unread).len(), 1);

    // A daemon-wide idle rule turned off for one workload.
    let mut config = DetectorConfig { idle_enabled: true, ..small_window() };
    config.overrides = vec!["app:idle=off".parse().expect("override")];
    let mut sim = Sim::new(config);
    sim.sample.idle_alerting = 40;
    sim.tick();
    assert!(sim.raised(Rule::Idle).is_empty(), "off for app");
}

#[test]
fn unread_raises_at_k_connections_with_its_reading_and_resolves_after_the_clear_streak() {
    let mut sim = Sim::new(DetectorConfig { resolve_after: 2, ..small_window() });
    sim.sample.open = 10;
    sim.sample.unread = 4;
    sim.tick();
    assert!(sim.raised(Rule::Unread).is_empty(), "below K = 5");
    sim.sample.unread = 5;
    sim.sample.unread_examples = vec![HealthBrief {
        remote: "10.0.0.1:80".into(),
        unread_bytes: 70_000,
        idle_seconds: 90,
        no_read_seconds: 80,
    }];
    sim.tick();
    let alert = sim.raised(Rule::Unread)[0];
    assert_eq!(alert.evidence.unread, 5);
    assert_eq!(alert.evidence.unread_connections[0].unread_bytes, 70_000);
    assert!(alert.evidence.reading.as_deref().is_some_and(|r| r.contains("stopped reading")));
    assert!(sim.detector.suspects().next().is_none(), "unread makes no stack suspect");
    sim.sample.unread = 0;
    assert!(sim.tick().is_empty(), "one clear evaluation is not enough");
    assert!(matches!(&sim.tick()[..], [Change::Resolved(a)] if a.rule == Rule::Unread));
}

#[test]
fn idle_is_off_unless_enabled_and_then_needs_k_connections() {
    let mut sim = Sim::new(small_window());
    sim.sample.open = 40;
    sim.sample.idle_alerting = 40;
    sim.tick();
    assert!(!sim.any_raised(), "off by default");
    let mut sim = Sim::new(DetectorConfig { idle_enabled: true, ..small_window() });
    sim.sample.open = 40;
    sim.sample.idle_alerting = 19;
    sim.tick();
    assert!(!sim.any_raised(), "below K = 20");
    sim.sample.idle_alerting = 20;
    sim.tick();
    let alert = sim.raised(Rule::Idle)[0];
    assert_eq!(alert.evidence.idle, 20);
    assert!(alert.evidence.reading.as_deref().is_some_and(|r| r.contains("idle timeout")));
}

#[test]
fn stacks_attached_at_raise_stay_while_the_alert_holds_and_after_it_resolves() {
    let mut sim = Sim::new(small_window());
    while sim.raised(Rule::Growth).is_empty() {
        sim.open(5);
        sim.tick();
        assert!(sim.now < 20 * SEC, "growth never raised");
    }
    let since = sim.raised(Rule::Growth)[0].since_ns;
    let stacks = crate::stacks::groups::AlertStacks { connections: 9, ..Default::default() };
    assert!(sim.detector.attach_stacks(PID, Rule::Growth, since, stacks.clone()).is_some());
    // A later raise time names another alert: nothing to attach to.
    assert!(sim.detector.attach_stacks(PID, Rule::Growth, since + 1, stacks.clone()).is_none());
    // Still growing: the evidence is refreshed, its stacks are the raise's.
    sim.open(5);
    sim.tick();
    let active = sim.detector.active().next().expect("active");
    assert!(active.evidence.opens_in_window > 0);
    assert_eq!(active.evidence.stacks.as_ref(), Some(&stacks));
    // Go request groups taken again while it is active replace only themselves, and only for
    // this raise.
    let requests = crate::stacks::groups::RequestGroups { before_probing: 4, ..Default::default() };
    assert!(!sim.detector.refresh_requests(PID, Rule::Growth, since + 1, requests.clone()));
    assert!(sim.detector.refresh_requests(PID, Rule::Growth, since, requests.clone()));
    let active = sim.detector.active().next().expect("active");
    let with_requests = active.evidence.stacks.clone().expect("stacks");
    assert_eq!(with_requests.requests.as_ref(), Some(&requests));
    assert_eq!(with_requests.connections, stacks.connections);
    let stacks = with_requests;
    // The process exits: the resolved alert keeps them.
    sim.sample.exited = true;
    sim.tick();
    let resolved = sim.detector.recently_resolved().next().expect("resolved");
    assert_eq!(resolved.evidence.stacks.as_ref(), Some(&stacks));
    // And stacks that arrive after the resolve still find it.
    let later = crate::stacks::groups::AlertStacks { connections: 3, ..Default::default() };
    assert!(sim.detector.attach_stacks(PID, Rule::Growth, since, later.clone()).is_some());
    let resolved = sim.detector.recently_resolved().next().expect("resolved");
    assert_eq!(resolved.evidence.stacks.as_ref(), Some(&later));
}

fn shop_api() -> crate::containers::Container {
    crate::containers::Container {
        id: "0123456789abcdef".into(),
        name: Some("api".into()),
        runtime: crate::containers::Runtime::Containerd,
        pod: Some("checkout-7d9f".into()),
        namespace: Some("shop".into()),
        pod_uid: None,
        cgroup: "/kubepods.slice/x".into(),
        role: crate::containers::Role::Workload,
    }
}

#[test]
fn workload_overrides_select_by_container_pod_and_namespace() {
    let mut config = small_window();
    config.overrides =
        vec!["namespace=shop,container=api:close_wait=off".parse().expect("override")];
    let mut sim = Sim::new(config.clone());
    sim.sample.container = Some(shop_api());
    sim.sample.stale_close_wait = 3;
    sim.tick();
    assert!(sim.raised(Rule::CloseWait).is_empty(), "off for shop's api container");
    // The same command name on the host: the override does not apply.
    let mut sim = Sim::new(config);
    sim.sample.stale_close_wait = 3;
    sim.tick();
    assert_eq!(sim.raised(Rule::CloseWait).len(), 1);
}

#[test]
fn an_alert_keeps_its_container_after_the_container_is_gone() {
    let mut sim = Sim::new(small_window());
    sim.sample.stale_close_wait = 3;
    // Not resolved yet at the raise: the alert takes the container once it is known.
    sim.tick();
    assert_eq!(sim.raised(Rule::CloseWait)[0].container, None);
    sim.sample.container = Some(shop_api());
    sim.tick();
    let active: Vec<&Alert> = sim.detector.active().collect();
    assert_eq!(active[0].container.as_ref().and_then(|c| c.name.as_deref()), Some("api"));
    // The pod is deleted: its process exits, the directory forgets the cgroup.
    sim.sample.container = None;
    sim.sample.exited = true;
    sim.sample.stale_close_wait = 0;
    sim.tick();
    let resolved: Vec<&Alert> = sim.detector.recently_resolved().collect();
    assert_eq!(resolved.len(), 1);
    let c = resolved[0].container.as_ref().expect("still named");
    assert_eq!((c.namespace.as_deref(), c.pod.as_deref()), (Some("shop"), Some("checkout-7d9f")));
    let resolved_change = sim.changes.iter().find_map(|c| match c {
        Change::Resolved(a) => Some(a),
        _ => None,
    });
    assert!(resolved_change.is_some_and(|a| a.container.is_some()), "the webhook's copy too");
}

#[test]
fn growth_so_far_shows_a_new_leak_before_the_first_window_is_full() {
    // A window of 40 samples in 4 sub-windows of 10.
    let config = DetectorConfig { window_samples: 40, sub_windows: 4, ..DetectorConfig::default() };
    let samples = |counts: &[u32]| counts.iter().copied().collect::<VecDeque<u32>>();
    assert_eq!(growth::so_far(&samples(&[]), &config), (0, true));
    assert_eq!(growth::so_far(&samples(&[7]), &config), (0, true));
    // Leaking 5 a sample for 8 samples: the newest 4's floor less the oldest 4's.
    let leak: Vec<u32> = (0..8).map(|i| 5 * i).collect();
    assert_eq!(growth::so_far(&samples(&leak), &config), (20, true));
    // 30 samples: a sub-window (10) from each end.
    let leak: Vec<u32> = (0..30).map(|i| 5 * i).collect();
    assert_eq!(growth::so_far(&samples(&leak), &config), (100, true));
    // A pool churning between 10 and 20 shows no rise.
    let churn: Vec<u32> = (0..30).map(|i| if i % 2 == 0 { 10 } else { 20 }).collect();
    assert_eq!(growth::so_far(&samples(&churn), &config), (0, true));
    // A full window: complete sub-windows, not partial, as the rule sees them.
    let leak: Vec<u32> = (0..40).map(|i| 5 * i).collect();
    let full = samples(&leak);
    let floors = growth::sub_window_floors(&full, &config);
    let want = i64::from(floors[3]) - i64::from(floors[0]);
    assert_eq!(growth::so_far(&full, &config), (want, false));
}

/// A process whose connections a table limit refused has an open count that is a lower bound:
/// refusals while the table is full push it down and room later lets it back up, which is no
/// leak. The growth rule then neither raises nor resolves for it (an active alert stays), and
/// `top` says why (its `over_limit`).
#[test]
fn growth_holds_its_verdict_for_a_process_over_the_table_limit() {
    // Steady at 50, the table full for a while (its count falls to 10 as refused connections
    // replace tracked ones), then room again (back to 50): no alert.
    let mut sim = Sim::new(small_window());
    sim.open(50);
    for _ in 0..8 {
        sim.tick();
    }
    sim.sample.over_limit = true;
    sim.close(40);
    for _ in 0..4 {
        sim.tick();
    }
    sim.open(40);
    for _ in 0..12 {
        sim.tick();
    }
    assert!(sim.raised(Rule::Growth).is_empty(), "{:?}", sim.changes);
    // A leak raised before the table filled stays active while its count cannot be trusted.
    let mut sim = Sim::new(small_window());
    for _ in 0..8 {
        sim.open(5);
        sim.tick();
    }
    assert_eq!(sim.raised(Rule::Growth).len(), 1);
    sim.sample.over_limit = true;
    for _ in 0..20 {
        sim.tick();
    }
    assert!(
        !sim.changes.iter().any(|c| matches!(c, Change::Resolved(_))),
        "resolved while over the limit: {:?}",
        sim.changes
    );
    assert_eq!(sim.detector.active().count(), 1);
}
