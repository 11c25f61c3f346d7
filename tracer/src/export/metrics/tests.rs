//! The exporter against a real connection table driven by hand-built events (shaped like
//! `table/tests.rs`'s), scraped as Prometheus would.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use prometheus::proto::{Metric, MetricFamily, MetricType};
use tracer_common::{AF_INET, ConnEvent, EventKind, Tuple, flags, tcp_state::*};

use super::*;
use crate::{
    detect::{Evidence, Rule},
    table::{ConnectionTable, TableConfig},
};

const SEC: u64 = 1_000_000_000;
const NETNS: u32 = 4026531840;

#[derive(Clone, Copy, Debug)]
struct Proc {
    pid: u32,
    start: u64,
    comm: [u8; 16],
    /// Its cgroup id (0: none, as events of scanned processes have).
    cgroup: u64,
}

fn comm(name: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name[..n]);
    out
}

fn process(pid: u32, name: &str) -> Proc {
    Proc { pid, start: u64::from(pid) * SEC, comm: comm(name.as_bytes()), cgroup: 0 }
}

fn tuple() -> Tuple {
    let mut t =
        Tuple { family: AF_INET.into(), local_port: 40_000, remote_port: 80, ..Tuple::default() };
    t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t
}

fn event(kind: EventKind, sock: u64, at: u64, old: u8, new: u8) -> ConnEvent {
    ConnEvent {
        timestamp_ns: at,
        sock,
        start_time_ns: 0,
        cgroup_id: 0,
        netns: NETNS,
        tgid: 0,
        tid: 0,
        tuple: tuple(),
        kind: kind as u8,
        flags: 0,
        old_state: old,
        new_state: new,
        comm: [0; 16],
        error: 0,
        _pad: 0,
        bytes_received: 0,
        bytes_acked: 0,
        socket_inode: 0,
    }
}

fn by(mut e: ConnEvent, p: Proc) -> ConnEvent {
    e.flags |= flags::OWNER_CONTEXT;
    e.tgid = p.pid;
    e.tid = p.pid;
    e.start_time_ns = p.start;
    e.comm = p.comm;
    e.cgroup_id = p.cgroup;
    e
}

/// A table, the exporter, and everything the daemon would hand to a scrape.
struct Sim {
    table: ConnectionTable,
    metrics: Metrics,
    now: u64,
    next_sock: u64,
    received: [u64; EventKind::COUNT],
    alerts: Vec<Alert>,
    kernel: Option<KernelCounters>,
    top_n: usize,
    exhaustion: ExhaustionInput,
    health: crate::health::PerProcess,
    containers: crate::containers::Directory,
}

impl Sim {
    fn new(top_n: usize) -> Self {
        Self {
            table: ConnectionTable::new(TableConfig::default()),
            metrics: Metrics::new(),
            now: 1_000 * SEC,
            next_sock: 0x1000,
            received: [0; EventKind::COUNT],
            alerts: Vec::new(),
            kernel: Some(KernelCounters::default()),
            top_n,
            exhaustion: ExhaustionInput::default(),
            health: crate::health::PerProcess::default(),
            containers: crate::containers::Directory::default(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.now += 1_000;
        self.now
    }

    fn apply(&mut self, e: ConnEvent) {
        self.received[e.kind as usize] += 1;
        let applied = self.table.apply(&e);
        self.metrics.observe(&applied, &self.table);
    }

    fn sock(&mut self) -> u64 {
        self.next_sock += 0x100;
        self.next_sock
    }

    /// connect() then the handshake: one open outbound connection.
    fn open_outbound(&mut self, p: Proc) -> u64 {
        let sock = self.sock();
        let at = self.tick();
        self.apply(by(event(EventKind::Connect, sock, at, CLOSE, SYN_SENT), p));
        let at = self.tick();
        self.apply(event(EventKind::Established, sock, at, SYN_SENT, ESTABLISHED));
        sock
    }

    /// Server-side handshake then accept(): one open inbound connection.
    fn accept_inbound(&mut self, p: Proc) -> u64 {
        let sock = self.sock();
        let at = self.tick();
        let mut e = event(EventKind::Established, sock, at, SYN_RECV, ESTABLISHED);
        e.flags |= flags::INBOUND;
        self.apply(e);
        let at = self.tick();
        let mut e = by(event(EventKind::Accept, sock, at, ESTABLISHED, ESTABLISHED), p);
        e.flags |= flags::INBOUND;
        self.apply(e);
        sock
    }

    fn fail_connect(&mut self, p: Proc) {
        let sock = self.sock();
        let at = self.tick();
        self.apply(by(event(EventKind::Connect, sock, at, CLOSE, SYN_SENT), p));
        let at = self.tick();
        self.apply(event(EventKind::ConnectFailed, sock, at, SYN_SENT, CLOSE));
        let at = self.tick();
        self.apply(by(event(EventKind::Release, sock, at, CLOSE, CLOSE), p));
    }

    fn state(&mut self, sock: u64, old: u8, new: u8) {
        let at = self.tick();
        self.apply(event(EventKind::StateChange, sock, at, old, new));
    }

    fn release(&mut self, p: Proc, sock: u64) {
        let at = self.tick();
        self.apply(by(event(EventKind::Release, sock, at, ESTABLISHED, FIN_WAIT1), p));
    }

    fn exit(&mut self, p: Proc) {
        let at = self.tick();
        let mut e = by(event(EventKind::ProcessExit, 0, at, 0, 0), p);
        e.netns = 0;
        e.tuple = Tuple::default();
        self.apply(e);
    }

    fn alert(&mut self, p: Proc, rule: Rule) {
        self.alerts.push(Alert {
            pid: p.pid,
            start_time_ns: p.start,
            comm: crate::events::comm_str(&p.comm).into_owned(),
            container: None,
            rule,
            since_ns: self.now,
            open: 0,
            evidence: Evidence {
                floors: Vec::new(),
                growth: 0,
                opens_in_window: 0,
                closes_in_window: 0,
                stale_close_wait: 0,
                stale_held_closed: 0,
                aged: 0,
                unread: 0,
                idle: 0,
                unread_connections: Vec::new(),
                idle_connections: Vec::new(),
                reading: None,
                oldest: Vec::new(),
                top_remotes: Vec::new(),
                port_pressure: None,
                fds: None,
                stacks: None,
            },
            resolved_ns: None,
        });
    }

    fn with_input<T>(&mut self, f: impl FnOnce(&mut Metrics, &MetricsInput<'_>) -> T) -> T {
        let alerts: Vec<&Alert> = self.alerts.iter().collect();
        let kprobes = [crate::probes::ProbeMisses {
            probe: "inet_csk_accept:return".into(),
            hits: 10,
            missed: 4,
        }];
        // The programs fentry mode loads on a 6.10+ kernel, the most any mode loads.
        let program_misses: Vec<crate::probes::ProgramMisses> = crate::probes::hooks::HOOKS
            .iter()
            .filter(|h| h.modes.contains(&crate::probes::ProbeMode::Fentry))
            .filter(|h| {
                !matches!(h.requires, Some(crate::probes::hooks::Requires::NoStruct { .. }))
            })
            .map(|h| crate::probes::ProgramMisses { program: h.program.into(), missed: 1 })
            .collect();
        let input = MetricsInput {
            program_misses: &program_misses,
            exhaustion: &self.exhaustion,
            table: &self.table,
            alerts: &alerts,
            kernel: self.kernel.as_ref(),
            events_received: &self.received,
            malformed: 2,
            reconcile_corrections: 3,
            kprobes: &kprobes,
            ring: RingFill { size_bytes: 8 << 20, high_water_bytes: 4096 },
            stacks: StackMetrics {
                orphaned: 1,
                frames_unsymbolized: 2,
                exited_before_pinning: 3,
                pins_refused: 4,
                suspects_unmarked: 5,
                pins_failed: 6,
            },
            build: BuildInfo { version: "0.1.0", probe_mode: "fentry", kernel: "6.1.0-test" },
            health: &self.health,
            now_ns: self.now,
            top_n: self.top_n,
            containers: &self.containers,
        };
        f(&mut self.metrics, &input)
    }

    fn scrape(&mut self) -> Scraped {
        Scraped(self.with_input(|metrics, input| metrics.gather(input)))
    }

    fn render(&mut self) -> String {
        self.with_input(|metrics, input| metrics.render(input))
    }
}

type Labels = BTreeMap<String, String>;

fn labels_of(metric: &Metric) -> Labels {
    metric.get_label().iter().map(|l| (l.name().to_owned(), l.value().to_owned())).collect()
}

fn matches(labels: &Labels, wanted: &[(&str, &str)]) -> bool {
    wanted.iter().all(|(k, v)| labels.get(*k).is_some_and(|have| have == v))
}

/// Cumulative buckets (by bound label), count and sum of one histogram series.
type HistogramValue = (Vec<(String, u64)>, u64, f64);

/// One scrape's families, with lookups for assertions.
struct Scraped(Vec<MetricFamily>);

impl Scraped {
    fn family(&self, name: &str) -> Option<&MetricFamily> {
        self.0.iter().find(|f| f.name() == name)
    }

    /// `(labels, value)` of every gauge or counter series of `name`.
    fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        let Some(family) = self.family(name) else {
            return Vec::new();
        };
        family
            .get_metric()
            .iter()
            .map(|m| {
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    other => panic!("{name} is a {other:?}"),
                };
                (labels_of(m), value)
            })
            .collect()
    }

    fn sum(&self, name: &str, wanted: &[(&str, &str)]) -> f64 {
        self.series(name).iter().filter(|(l, _)| matches(l, wanted)).map(|(_, v)| v).sum()
    }

    /// The one series of `name` with these labels.
    fn value(&self, name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .series(name)
            .into_iter()
            .filter(|(l, _)| matches(l, wanted))
            .map(|(_, v)| v)
            .collect();
        assert!(found.len() <= 1, "{name} {wanted:?} matches {} series", found.len());
        found.first().copied()
    }

    fn pids(&self, name: &str) -> HashSet<String> {
        self.series(name).into_iter().filter_map(|(l, _)| l.get("pid").cloned()).collect()
    }

    /// `comm -> (cumulative buckets by bound label, count, sum)` of the lifetime histogram.
    fn lifetimes(&self) -> HashMap<String, HistogramValue> {
        let Some(family) = self.family("tcp_tracer_connection_lifetime_seconds") else {
            return HashMap::new();
        };
        family
            .get_metric()
            .iter()
            .map(|m| {
                let h = m.get_histogram();
                let buckets = h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound().to_string(), b.cumulative_count()))
                    .collect();
                let comm = labels_of(m).get("comm").cloned().unwrap_or_default();
                (comm, (buckets, h.get_sample_count(), h.get_sample_sum()))
            })
            .collect()
    }

    /// Every counter series (and histogram count) keyed by name and labels, for monotonicity.
    fn counters(&self) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for family in &self.0 {
            for m in family.get_metric() {
                let key = format!("{}{:?}", family.name(), labels_of(m));
                match family.get_field_type() {
                    MetricType::COUNTER => {
                        out.insert(key, m.get_counter().get_value());
                    }
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        out.insert(format!("{key}_count"), h.get_sample_count() as f64);
                        for b in h.get_bucket() {
                            out.insert(
                                format!("{key}_le{}", b.upper_bound()),
                                b.cumulative_count() as f64,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

const PER_PROCESS: [&str; 9] = [
    "tcp_tracer_open_connections",
    "tcp_tracer_connections",
    "tcp_tracer_open_connections_by_age",
    "tcp_tracer_connections_opened_total",
    "tcp_tracer_connections_closed_total",
    "tcp_tracer_connect_failures_total",
    "tcp_tracer_idle_connections",
    "tcp_tracer_unread_connections",
    "tcp_tracer_time_wait_caused",
];

#[test]
fn three_thousand_processes_give_top_n_series_plus_other_with_exact_sums() {
    let mut sim = Sim::new(DEFAULT_TOP_N);
    for i in 0..3_000 {
        sim.open_outbound(process(10_000 + i, "worker"));
    }
    let scraped = sim.scrape();

    for name in PER_PROCESS {
        let pids = scraped.pids(name);
        assert_eq!(pids.len(), DEFAULT_TOP_N + 1, "{name}: top {DEFAULT_TOP_N} plus other");
        assert!(pids.contains(OTHER), "{name} has no other series");
    }
    assert_eq!(scraped.series("tcp_tracer_open_connections").len(), DEFAULT_TOP_N + 1);
    assert_eq!(scraped.sum("tcp_tracer_open_connections", &[]), 3_000.0);
    assert_eq!(scraped.value("tcp_tracer_open_connections", &[("pid", OTHER)]), Some(2_900.0));
    assert_eq!(scraped.sum("tcp_tracer_connections", &[("state", "established")]), 3_000.0);
    assert_eq!(scraped.sum("tcp_tracer_connections", &[]), 3_000.0);
    assert_eq!(scraped.sum("tcp_tracer_open_connections_by_age", &[("age_le", "+Inf")]), 3_000.0);
    let outbound = [("direction", "outbound")];
    assert_eq!(scraped.sum("tcp_tracer_connections_opened_total", &outbound), 3_000.0);
    assert_eq!(
        scraped.value("tcp_tracer_connections_opened_total", &[("pid", OTHER), outbound[0]]),
        Some(2_900.0)
    );
    assert_eq!(
        scraped.sum("tcp_tracer_connections_opened_total", &[("direction", "inbound")]),
        0.0
    );
    assert_eq!(scraped.value("tcp_tracer_tracked_processes", &[]), Some(3_000.0));
    // Per-process series in all: 101 rows x (1 open + 8 states + 8 ages + 2 opened + 2 closed
    // + 1 connect failures + 1 idle + 1 unread + 1 TIME_WAIT caused).
    let per_process: usize = PER_PROCESS.iter().map(|n| scraped.series(n).len()).sum();
    assert_eq!(per_process, 101 * 25);
}

#[test]
fn most_open_processes_are_the_ones_exported() {
    let mut sim = Sim::new(2);
    let (a, b, c) = (process(1, "a"), process(2, "b"), process(3, "c"));
    sim.open_outbound(a);
    for _ in 0..3 {
        sim.open_outbound(b);
    }
    for _ in 0..2 {
        sim.open_outbound(c);
    }
    let scraped = sim.scrape();
    assert_eq!(
        scraped.value("tcp_tracer_open_connections", &[("pid", "2"), ("comm", "b")]),
        Some(3.0)
    );
    assert_eq!(
        scraped.value("tcp_tracer_open_connections", &[("pid", "3"), ("comm", "c")]),
        Some(2.0)
    );
    assert_eq!(
        scraped.value("tcp_tracer_open_connections", &[("pid", OTHER), ("comm", OTHER)]),
        Some(1.0)
    );
    assert_eq!(scraped.value("tcp_tracer_open_connections", &[("pid", "1")]), None);
}

#[test]
fn a_process_leaving_and_rejoining_the_top_n_never_lowers_a_counter() {
    let mut sim = Sim::new(1);
    let (a, b) = (process(1, "a"), process(2, "b"));
    let opened = "tcp_tracer_connections_opened_total";
    let out = ("direction", "outbound");
    sim.open_outbound(a);
    sim.open_outbound(a);
    sim.open_outbound(b);
    let s1 = sim.scrape();
    assert_eq!(s1.value(opened, &[("pid", "1"), out]), Some(2.0));
    assert_eq!(s1.value(opened, &[("pid", OTHER), out]), Some(1.0));

    // b overtakes a: b's own series starts with what it opened while exported; what it opened
    // before is already in other, which keeps it.
    sim.open_outbound(b);
    sim.open_outbound(b);
    let s2 = sim.scrape();
    assert_eq!(s2.value(opened, &[("pid", "2"), out]), Some(2.0));
    assert_eq!(s2.value(opened, &[("pid", "1"), out]), None);
    assert_eq!(s2.value(opened, &[("pid", OTHER), out]), Some(1.0));

    // a comes back: its series resumes from 2 with what it opened since, nothing counted twice.
    sim.open_outbound(a);
    sim.open_outbound(a);
    let s3 = sim.scrape();
    assert_eq!(s3.value(opened, &[("pid", "1"), out]), Some(4.0));
    assert_eq!(s3.value(opened, &[("pid", OTHER), out]), Some(1.0));

    // b, folded, keeps opening: other takes it.
    sim.open_outbound(b);
    let s4 = sim.scrape();
    assert_eq!(s4.value(opened, &[("pid", OTHER), out]), Some(2.0));
    // Every connection opened is in exactly one series (b's frozen 2 included).
    assert_eq!(4.0 + 2.0 + 2.0, 8.0);
}

/// A small deterministic generator for the randomized scenario.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[test]
fn counters_never_decrease_and_count_every_event_once_while_the_top_n_churns() {
    let top_n = 3;
    let mut sim = Sim::new(top_n);
    let procs: Vec<Proc> = (0..12).map(|i| process(100 + i, &format!("p{i}"))).collect();
    let mut held: Vec<Vec<u64>> = vec![Vec::new(); procs.len()];
    let mut rng = Lcg(42);
    // Last value of every counter series ever exposed, present or not.
    let mut last: HashMap<String, f64> = HashMap::new();
    let mut exported_history: Vec<HashSet<String>> = Vec::new();

    for step in 0..600 {
        let i = rng.next(procs.len() as u64) as usize;
        let p = procs[i];
        match rng.next(10) {
            0..=3 => held[i].push(sim.open_outbound(p)),
            4..=5 => held[i].push(sim.accept_inbound(p)),
            6..=8 => {
                if let Some(sock) = held[i].pop() {
                    sim.release(p, sock);
                }
            }
            _ => sim.fail_connect(p),
        }
        if step % 7 != 0 {
            continue;
        }
        let scraped = sim.scrape();
        for (key, value) in scraped.counters() {
            if let Some(before) = last.get(&key) {
                assert!(value >= *before, "step {step}: {key} went from {before} to {value}");
            }
            last.insert(key, value);
        }
        // Each event is in exactly one series: sum of the last values of all series (absent
        // ones stand still) equals the table's totals.
        for (family, total) in [
            (
                "tcp_tracer_connections_opened_total",
                sim.table.processes().map(|p| p.opened_total).sum::<u64>(),
            ),
            (
                "tcp_tracer_connections_closed_total",
                sim.table.processes().map(|p| p.closed_total).sum(),
            ),
            (
                "tcp_tracer_connect_failures_total",
                sim.table.processes().map(|p| p.connect_failed).sum(),
            ),
        ] {
            let counted: f64 = last
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{family}{{")))
                .map(|(_, v)| v)
                .sum();
            assert_eq!(counted, total as f64, "step {step}: {family}");
        }
        let open_total: u32 = sim.table.processes().map(|p| p.open).sum();
        assert_eq!(scraped.sum("tcp_tracer_open_connections", &[]), f64::from(open_total));
        let mut pids = scraped.pids("tcp_tracer_open_connections");
        assert!(pids.remove(OTHER));
        assert!(pids.len() <= top_n);
        exported_history.push(pids);
    }
    // The scenario did move processes out of the top N and back in.
    let rejoined = procs.iter().any(|p| {
        let pid = p.pid.to_string();
        // Exported, then not, then exported again.
        let mut phase = 0;
        for present in exported_history.iter().map(|s| s.contains(&pid)) {
            phase = match (phase, present) {
                (0, true) => 1,
                (1, false) => 2,
                (2, true) => return true,
                (same, _) => same,
            };
        }
        false
    });
    assert!(rejoined, "no process left and rejoined the top N: the test proves nothing");
}

#[test]
fn alerting_processes_are_exported_even_outside_the_top_n() {
    let mut sim = Sim::new(DEFAULT_TOP_N);
    let mut last = process(0, "x");
    for i in 0..3_000 {
        last = process(10_000 + i, "worker");
        sim.open_outbound(last);
    }
    sim.alert(last, Rule::CloseWait);
    // An alert for a process the table already dropped still shows.
    sim.alert(process(99, "gone"), Rule::Growth);
    let scraped = sim.scrape();

    let pid = last.pid.to_string();
    assert_eq!(scraped.value("tcp_tracer_open_connections", &[("pid", &pid)]), Some(1.0));
    assert_eq!(scraped.series("tcp_tracer_open_connections").len(), DEFAULT_TOP_N + 2);
    assert_eq!(scraped.value("tcp_tracer_open_connections", &[("pid", OTHER)]), Some(2_899.0));
    assert_eq!(scraped.sum("tcp_tracer_open_connections", &[]), 3_000.0);
    assert_eq!(
        scraped.value(
            "tcp_tracer_leak_suspected",
            &[("pid", &pid), ("comm", "worker"), ("rule", "close_wait")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scraped.value(
            "tcp_tracer_leak_suspected",
            &[("pid", "99"), ("comm", "gone"), ("rule", "growth")]
        ),
        Some(1.0)
    );
    assert_eq!(scraped.series("tcp_tracer_leak_suspected").len(), 2);

    // top_n = 0: only the alerting process and other.
    sim.top_n = 0;
    let scraped = sim.scrape();
    assert_eq!(scraped.pids("tcp_tracer_open_connections"), HashSet::from([pid, OTHER.to_owned()]));
    assert_eq!(scraped.sum("tcp_tracer_open_connections", &[]), 3_000.0);
}

#[test]
fn no_alert_no_leak_series() {
    let mut sim = Sim::new(10);
    sim.open_outbound(process(1, "a"));
    let scraped = sim.scrape();
    assert!(scraped.family("tcp_tracer_leak_suspected").is_none());
    assert!(sim.render().contains("tcp_tracer_open_connections{pid=\"1\",comm=\"a\"} 1\n"));
}

#[test]
fn lifetime_histogram_counts_closed_connections_per_comm() {
    let mut sim = Sim::new(10);
    let curl = process(7, "curl");
    for lifetime in [500_000, 2 * SEC, 2 * 3_600 * SEC] {
        let sock = sim.open_outbound(curl);
        sim.now += lifetime;
        sim.release(curl, sock);
    }
    // Exactly on a bound counts in that bucket (`le`).
    sim.metrics.observe_close(&comm(b"curl"), SEC);
    let scraped = sim.scrape();
    let lifetimes = scraped.lifetimes();
    let (buckets, count, sum) = &lifetimes["curl"];
    assert_eq!(*count, 4);
    // Each lifetime plus the 1,000 ns the release event's tick adds.
    let expected_sum = (500_000 + 2 * SEC + 2 * 3_600 * SEC + SEC + 3 * 1_000) as f64 / 1e9;
    assert!((sum - expected_sum).abs() < 1e-6, "sum {sum} vs {expected_sum}");
    let at = |bound: &str| buckets.iter().find(|(b, _)| b == bound).map(|(_, n)| *n);
    assert_eq!(at("0.001"), Some(1));
    assert_eq!(at("1"), Some(2));
    assert_eq!(at("10"), Some(3));
    assert_eq!(at("3600"), Some(3));
    assert_eq!(at("21600"), Some(4));
    assert_eq!(at("86400"), Some(4));
    assert_eq!(lifetimes[OTHER].1, 0);

    let text = sim.render();
    assert!(text.contains("# TYPE tcp_tracer_connection_lifetime_seconds histogram\n"));
    assert!(
        text.contains(
            "tcp_tracer_connection_lifetime_seconds_bucket{comm=\"curl\",le=\"+Inf\"} 4\n"
        )
    );
    assert!(text.contains("tcp_tracer_connection_lifetime_seconds_count{comm=\"curl\"} 4\n"));
}

#[test]
fn lifetime_histograms_keep_the_top_comms_and_fold_the_rest_monotonically() {
    let mut metrics = Metrics::new();
    let mut observed = 0u64;
    let observe = |metrics: &mut Metrics, name: String, times: u64| {
        for _ in 0..times {
            metrics.observe_close(&comm(name.as_bytes()), SEC);
        }
        times
    };
    for i in 0..150u64 {
        observed += observe(&mut metrics, format!("c{i}"), i + 1);
    }
    let mut sim = Sim::new(100);
    sim.metrics = metrics;
    let first = sim.scrape();
    let lifetimes = first.lifetimes();
    assert_eq!(lifetimes.len(), 101, "100 comms plus other");
    assert!(lifetimes.contains_key("c149") && !lifetimes.contains_key("c0"));
    let total: u64 = lifetimes.values().map(|(_, n, _)| n).sum();
    assert_eq!(total, observed);

    // c0 becomes the busiest: it enters the top, the 100th drops out; nothing decreases.
    observed += observe(&mut sim.metrics, "c0".to_owned(), 500);
    let second = sim.scrape();
    let after = second.lifetimes();
    assert_eq!(after["c0"].1, 500, "its own series counts from when it was exported");
    assert!(!after.contains_key("c50"));
    assert_eq!(after[OTHER].1, lifetimes[OTHER].1, "other keeps what it had");
    for (key, value) in second.counters() {
        if let Some(before) = first.counters().get(&key) {
            assert!(value >= *before, "{key}: {before} -> {value}");
        }
    }
    // Every observation in exactly one series (c50's frozen count included).
    let present: u64 = after.values().map(|(_, n, _)| n).sum();
    assert_eq!(present + lifetimes["c50"].1, observed);
}

#[test]
fn comms_are_bounded_in_memory_and_counted_in_other_beyond_the_bound() {
    let mut sim = Sim::new(5);
    for i in 0..(lifetimes::MAX_TRACKED_COMMS + 500) {
        sim.metrics.observe_close(&comm(format!("n{i}").as_bytes()), SEC);
    }
    assert_eq!(sim.metrics.lifetimes.tracked(), lifetimes::MAX_TRACKED_COMMS);
    let scraped = sim.scrape();
    let lifetimes = scraped.lifetimes();
    assert_eq!(lifetimes.len(), 6);
    let total: u64 = lifetimes.values().map(|(_, n, _)| n).sum();
    assert_eq!(total as usize, lifetimes::MAX_TRACKED_COMMS + 500);

    // Idle for an hour: forgotten, making room again.
    sim.now += lifetimes::COMM_IDLE_EVICT_NS;
    sim.scrape();
    assert_eq!(sim.metrics.lifetimes.tracked(), 0);
    let scraped = sim.scrape();
    assert_eq!(scraped.lifetimes().len(), 1, "only other");
    assert_eq!(scraped.lifetimes()[OTHER].1 as usize, lifetimes::MAX_TRACKED_COMMS + 500 - 5);
}

#[test]
fn a_comm_named_other_and_garbage_after_the_nul_do_not_split_series() {
    let mut sim = Sim::new(10);
    sim.metrics.observe_close(&comm(b"other"), SEC);
    let mut padded = comm(b"svc");
    padded[10] = b'x'; // after the terminator
    sim.metrics.observe_close(&padded, SEC);
    sim.metrics.observe_close(&comm(b"svc"), SEC);
    let lifetimes = sim.scrape().lifetimes();
    assert_eq!(lifetimes.len(), 2);
    assert_eq!(lifetimes["svc"].1, 2);
    assert_eq!(lifetimes[OTHER].1, 1);
}

#[test]
fn age_gauges_are_cumulative_and_their_inf_equals_open() {
    let mut sim = Sim::new(1);
    let (old, young) = (process(1, "old"), process(2, "young"));
    // Ages at scrape time: 3 days, 2 h, 2 min, 30 s, 5 s.
    let start = sim.now;
    let mut opened_at = Vec::new();
    for age in [3 * 86_400 * SEC, 2 * 3_600 * SEC, 120 * SEC, 30 * SEC, 5 * SEC] {
        sim.now = start + 3 * 86_400 * SEC - age;
        sim.open_outbound(old);
        opened_at.push(sim.now);
    }
    sim.now = start + 3 * 86_400 * SEC - 5 * SEC;
    sim.open_outbound(young);
    sim.now = start + 3 * 86_400 * SEC;
    let scraped = sim.scrape();

    let ages = |pid: &str| -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = scraped
            .series("tcp_tracer_open_connections_by_age")
            .into_iter()
            .filter(|(l, _)| l["pid"] == pid)
            .map(|(l, v)| (l["age_le"].clone(), v))
            .collect();
        out.sort_by(|a, b| {
            let bound = |s: &str| {
                if s == "+Inf" { f64::INFINITY } else { s.parse().unwrap_or(f64::NAN) }
            };
            bound(&a.0).total_cmp(&bound(&b.0))
        });
        out
    };
    let old_ages = ages("1");
    let values: Vec<f64> = old_ages.iter().map(|(_, v)| *v).collect();
    assert_eq!(
        old_ages.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(),
        ["10", "60", "300", "1800", "3600", "21600", "86400", "+Inf"]
    );
    assert_eq!(values, [1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 5.0]);
    for pid in ["1", OTHER] {
        let values: Vec<f64> = ages(pid).iter().map(|(_, v)| *v).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{pid}: not cumulative: {values:?}");
        let open = scraped.value("tcp_tracer_open_connections", &[("pid", pid)]);
        assert_eq!(values.last().copied(), open, "{pid}: +Inf is not the open count");
    }
    assert_eq!(ages(OTHER).first().map(|(_, v)| *v), Some(1.0));
}

#[test]
fn connections_not_open_do_not_count_as_open_or_by_age() {
    let mut sim = Sim::new(10);
    let p = process(1, "a");
    let sock = sim.open_outbound(p);
    sim.state(sock, ESTABLISHED, CLOSE_WAIT);
    // A connect still in SYN_SENT and a backlogged inbound connection: not open for anyone.
    let at = sim.tick();
    sim.apply(by(event(EventKind::Connect, 0xdead, at, CLOSE, SYN_SENT), p));
    let at = sim.tick();
    let mut backlog = event(EventKind::Established, 0xbeef, at, SYN_RECV, ESTABLISHED);
    backlog.flags |= flags::INBOUND;
    sim.apply(backlog);
    let scraped = sim.scrape();
    assert_eq!(scraped.value("tcp_tracer_open_connections", &[("pid", "1")]), Some(1.0));
    assert_eq!(
        scraped.value("tcp_tracer_connections", &[("pid", "1"), ("state", "close_wait")]),
        Some(1.0)
    );
    assert_eq!(
        scraped.value("tcp_tracer_connections", &[("pid", "1"), ("state", "established")]),
        Some(0.0)
    );
    assert_eq!(scraped.sum("tcp_tracer_open_connections_by_age", &[("age_le", "+Inf")]), 1.0);
    assert_eq!(scraped.value("tcp_tracer_unattributed_connections", &[]), Some(1.0));
}

#[test]
fn series_of_an_exited_process_disappear_when_the_table_drops_it() {
    let mut sim = Sim::new(10);
    let (gone, stays) = (process(1, "gone"), process(2, "stays"));
    let s1 = sim.open_outbound(gone);
    let s2 = sim.open_outbound(gone);
    sim.open_outbound(stays);
    sim.release(gone, s1);
    sim.scrape();
    sim.exit(gone);
    sim.release(gone, s2);
    // Within the grace period: still there, with its final counts.
    let during = sim.scrape();
    let closed = "tcp_tracer_connections_closed_total";
    assert_eq!(during.value(closed, &[("pid", "1"), ("direction", "outbound")]), Some(2.0));
    sim.now += crate::table::DEFAULT_EXITED_GRACE_NS;
    sim.table.expire(sim.now);
    let after = sim.scrape();
    for family in &after.0 {
        for m in family.get_metric() {
            assert_ne!(labels_of(m).get("pid").map(String::as_str), Some("1"), "{}", family.name());
        }
    }
    assert_eq!(after.value("tcp_tracer_open_connections", &[("pid", "2")]), Some(1.0));
    assert_eq!(after.value(closed, &[("pid", OTHER), ("direction", "outbound")]), Some(0.0));
}

#[test]
fn a_reused_pid_with_the_same_comm_continues_the_series() {
    let mut sim = Sim::new(10);
    let old = Proc { pid: 500, start: SEC, comm: comm(b"svc"), cgroup: 0 };
    let new = Proc { pid: 500, start: 2 * SEC, comm: comm(b"svc"), cgroup: 0 };
    let socks: Vec<u64> = (0..5).map(|_| sim.open_outbound(old)).collect();
    let opened = "tcp_tracer_connections_opened_total";
    let labels = [("pid", "500"), ("comm", "svc"), ("direction", "outbound")];
    assert_eq!(sim.scrape().value(opened, &labels), Some(5.0));
    sim.exit(old);
    for sock in socks {
        sim.release(old, sock);
    }
    sim.open_outbound(new);
    // Both in the table, one label set: one series, held by the newer process, not lowered.
    let scraped = sim.scrape();
    assert_eq!(scraped.value(opened, &labels), Some(6.0));
    assert_eq!(scraped.value("tcp_tracer_open_connections", &[("pid", "500")]), Some(1.0));
    sim.now += crate::table::DEFAULT_EXITED_GRACE_NS;
    sim.table.expire(sim.now);
    sim.open_outbound(new);
    assert_eq!(sim.scrape().value(opened, &labels), Some(7.0));
}

#[test]
fn pipeline_counters_and_build_info() {
    let mut sim = Sim::new(10);
    sim.open_outbound(process(1, "a"));
    let mut kernel = KernelCounters::default();
    kernel.lost_ringbuf[EventKind::Release as usize] = 4;
    kernel.lost_ringbuf[EventKind::Connect as usize] = 1;
    kernel.accept_unresolved = 6;
    kernel.held_closed_map_full = 7;
    kernel.stack_captured = 11;
    kernel.stack_lost_ringbuf = 12;
    kernel.stack_unwind_failed = 13;
    sim.kernel = Some(kernel);
    let scraped = sim.scrape();
    assert_eq!(scraped.value("tcp_tracer_stacks_captured_total", &[]), Some(11.0));
    let stacks_lost = "tcp_tracer_stacks_lost_total";
    assert_eq!(scraped.value(stacks_lost, &[("reason", "ringbuf_full")]), Some(12.0));
    assert_eq!(scraped.value(stacks_lost, &[("reason", "unwind_failed")]), Some(13.0));
    assert_eq!(scraped.value(stacks_lost, &[("reason", "orphaned")]), Some(1.0));
    assert_eq!(scraped.value(stacks_lost, &[("reason", "pin_refused")]), Some(4.0));
    assert_eq!(scraped.value(stacks_lost, &[("reason", "pin_failed")]), Some(6.0));
    assert_eq!(scraped.value(stacks_lost, &[("reason", "suspect_unmarked")]), Some(5.0));
    assert_eq!(scraped.value("tcp_tracer_stack_frames_unsymbolized_total", &[]), Some(2.0));
    assert_eq!(
        scraped.value("tcp_tracer_stack_processes_exited_before_pinning_total", &[]),
        Some(3.0)
    );
    assert_eq!(scraped.value("tcp_tracer_events_total", &[("kind", "connect")]), Some(1.0));
    assert_eq!(scraped.value("tcp_tracer_events_total", &[("kind", "established")]), Some(1.0));
    assert_eq!(scraped.series("tcp_tracer_events_total").len(), EventKind::COUNT);
    let lost = "tcp_tracer_events_lost_total";
    assert_eq!(scraped.value(lost, &[("reason", "ringbuf_full")]), Some(5.0));
    assert_eq!(scraped.value(lost, &[("reason", "accept_unresolved")]), Some(6.0));
    assert_eq!(scraped.value(lost, &[("reason", "held_closed_map_full")]), Some(7.0));
    assert_eq!(scraped.value(lost, &[("reason", "malformed")]), Some(2.0));
    assert_eq!(scraped.value("tcp_tracer_ring_buffer_size_bytes", &[]), Some(8388608.0));
    assert_eq!(scraped.value("tcp_tracer_ring_buffer_high_water_bytes", &[]), Some(4096.0));
    assert_eq!(scraped.value("tcp_tracer_reconcile_corrections_total", &[]), Some(3.0));
    assert_eq!(
        scraped.value("tcp_tracer_kprobe_missed_total", &[("probe", "inet_csk_accept:return")]),
        Some(4.0)
    );
    assert_eq!(
        scraped.value("tcp_tracer_bpf_program_missed_total", &[("program", "inet_sock_set_state")]),
        Some(1.0)
    );
    assert_eq!(
        scraped.value(
            "tcp_tracer_build_info",
            &[("version", "0.1.0"), ("probe_mode", "fentry"), ("kernel", "6.1.0-test")]
        ),
        Some(1.0)
    );
    // Kernel counters unreadable at the next scrape: the last values, not zeros.
    sim.kernel = None;
    let scraped = sim.scrape();
    assert_eq!(scraped.value(lost, &[("reason", "ringbuf_full")]), Some(5.0));
    assert_eq!(scraped.value(lost, &[("reason", "accept_unresolved")]), Some(6.0));
    assert_eq!(scraped.value("tcp_tracer_stacks_captured_total", &[]), Some(11.0));
}

#[test]
fn table_anomalies_are_counted() {
    let mut sim = Sim::new(10);
    let p = process(1, "a");
    let at = sim.tick();
    sim.apply(by(event(EventKind::Release, 0x77, at, ESTABLISHED, CLOSE), p));
    let scraped = sim.scrape();
    let anomalies = "tcp_tracer_table_anomalies_total";
    assert_eq!(scraped.value(anomalies, &[("reason", "unmatched_release")]), Some(1.0));
    assert_eq!(scraped.series(anomalies).len(), 6);
}

/// `promtool check metrics` lints the exposition as Prometheus' own tooling does (naming,
/// units, counters' `_total`, reserved labels, duplicates, parse errors).
#[test]
fn exposition_passes_promtool_check_metrics() {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };

    let mut sim = Sim::new(3);
    let odd = Proc { pid: 42, start: 42 * SEC, comm: comm(b"we\"ird\\n\nme"), cgroup: 0 };
    let binary = Proc { pid: 43, start: 43 * SEC, comm: comm(&[0xff, 0xfe, b'x']), cgroup: 0 };
    for p in [odd, binary, process(44, "other"), process(45, "a"), process(46, "b")] {
        let sock = sim.open_outbound(p);
        sim.accept_inbound(p);
        sim.fail_connect(p);
        sim.now += 3 * SEC;
        sim.release(p, sock);
    }
    sim.alert(odd, Rule::HeldClosed);
    sim.alert(process(99, "gone"), Rule::Growth);
    let text = sim.render();

    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found: run `cargo xtask setup` (it installs Debian's `prometheus` \
             package, which provides promtool)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).expect("write to promtool");
    drop(stdin);
    let output = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n---\n{text}"
    );
}

// docs/metrics.md against the exporter: the metric table, the lifetime buckets, the series
// counts of the Cardinality section, and every metric name the docs and alert rules use.

/// A text file of the repository (docs, README, alert rules).
fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// The text between backticks, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// One row of the table under docs/metrics.md's "## Metrics".
#[derive(Debug)]
struct DocMetric {
    name: String,
    kind: String,
    labels: BTreeSet<String>,
    meaning: String,
}

fn doc_metrics(doc: &str) -> Vec<DocMetric> {
    let section = doc.split("\n## Metrics\n").nth(1).expect("docs/metrics.md has ## Metrics");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `tcp_tracer_"))
        .map(|line| {
            let inner = line.trim().strip_prefix('|').unwrap_or(line);
            let inner = inner.strip_suffix('|').unwrap_or(inner);
            let cells: Vec<&str> = inner.splitn(4, '|').map(str::trim).collect();
            assert_eq!(cells.len(), 4, "docs/metrics.md row without 4 cells: {line}");
            DocMetric {
                name: cells[0].trim_matches('`').to_owned(),
                kind: cells[1].to_owned(),
                labels: backticked(cells[2]).into_iter().map(str::to_owned).collect(),
                meaning: cells[3].to_owned(),
            }
        })
        .collect()
}

/// A scrape with a series in every family: processes that connect, accept, fail, release;
/// an alert of every rule; the kprobe counters of `Sim::with_input`.
fn scrape_of_every_family() -> Scraped {
    let mut sim = Sim::new(DEFAULT_TOP_N);
    // b runs in a Kubernetes container: its series carry the workload labels.
    sim.containers.insert(100, k8s("shop", "checkout-7d9f", "api", "aaaa000011112222"));
    let (a, b) = (process(1, "a"), in_cgroup(process(2, "b"), 100));
    for p in [a, b] {
        let sock = sim.open_outbound(p);
        sim.accept_inbound(p);
        sim.fail_connect(p);
        sim.now += 3 * SEC;
        sim.release(p, sock);
    }
    // A match without a wildcard: a new rule does not compile until it is added here.
    for rule in Rule::ALL {
        match rule {
            Rule::Growth
            | Rule::CloseWait
            | Rule::HeldClosed
            | Rule::Age
            | Rule::Unread
            | Rule::Idle
            | Rule::PortExhaustion
            | Rule::FdExhaustion => sim.alert(a, rule),
        }
    }
    sim.alert(b, Rule::Growth);
    sim.exhaustion.remote_ports = vec![("127.0.0.1:80".into(), 0.5)];
    sim.exhaustion.time_wait_caused.insert(ProcessKey { pid: 1, start_time_ns: a.start }, 2);
    sim.scrape()
}

/// Labels that name things (processes, versions, kernels, probes, programs): their values are not a
/// fixed set the table could list.
const OPEN_ENDED_LABELS: [&str; 13] = [
    "pid",
    "comm",
    "le",
    "version",
    "probe_mode",
    "kernel",
    "probe",
    "program",
    "remote",
    "k8s_namespace",
    "k8s_pod",
    "k8s_container",
    "container_id",
];

/// docs/metrics.md's table is the exporter's families: names, types, labels, and for each label
/// with a fixed set of values (`state`, `reason`, `kind`, ...), the values its meaning lists.
#[test]
fn docs_metric_table_is_what_the_exporter_registers() {
    let doc = doc_metrics(&repo_file("docs/metrics.md"));
    let scraped = scrape_of_every_family();
    let documented: BTreeSet<&str> = doc.iter().map(|m| m.name.as_str()).collect();
    let exported: BTreeSet<&str> = scraped.0.iter().map(|f| f.name()).collect();
    assert_eq!(
        documented, exported,
        "docs/metrics.md's metric table (left) differs from the families the exporter registers \
         (right)"
    );

    for row in &doc {
        let family = scraped.family(&row.name).expect("documented family is exported");
        let kind = match family.get_field_type() {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            other => panic!("{}: unexpected type {other:?}", row.name),
        };
        assert_eq!(row.kind, kind, "docs/metrics.md: type of {}", row.name);

        let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for metric in family.get_metric() {
            for (label, value) in labels_of(metric) {
                values.entry(label).or_default().insert(value);
            }
        }
        if kind == "histogram" {
            // The encoder adds `le` to each bucket.
            values.entry("le".to_owned()).or_default();
        }
        let labels: BTreeSet<String> = values.keys().cloned().collect();
        assert_eq!(row.labels, labels, "docs/metrics.md: labels of {}", row.name);

        // The values a fixed-set label takes are the backticked words of the meaning, less
        // flags and label names.
        let listed: BTreeSet<String> = backticked(&row.meaning)
            .into_iter()
            .filter(|t| !t.starts_with("--") && !t.contains('=') && !labels.contains(*t))
            .map(str::to_owned)
            .collect();
        for (label, values) in &values {
            if OPEN_ENDED_LABELS.contains(&label.as_str()) {
                continue;
            }
            assert_eq!(
                &listed, values,
                "docs/metrics.md: the values of {}'s `{label}` label (left: backticked in its \
                 meaning; right: exported)",
                row.name
            );
        }
    }

    // build_info's probe modes: every mode `auto` can resolve to.
    let build = doc.iter().find(|m| m.name == "tcp_tracer_build_info").expect("build_info row");
    let listed: BTreeSet<&str> = backticked(&build.meaning).into_iter().collect();
    let modes: BTreeSet<&str> = crate::probes::ProbeMode::ALL
        .into_iter()
        .filter(|m| *m != crate::probes::ProbeMode::Auto)
        .map(|m| m.name())
        .collect();
    assert_eq!(listed, modes, "docs/metrics.md: probe modes of tcp_tracer_build_info");
}

/// "1 ms" → 0.001, "`+Inf`" → infinity.
fn doc_duration_seconds(text: &str) -> f64 {
    let text = text.trim().trim_matches('`');
    if text == "+Inf" {
        return f64::INFINITY;
    }
    let (number, unit) = text.split_once(' ').unwrap_or((text, "s"));
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("not a duration: {text:?}"));
    let unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "min" => 60.0,
        "h" => 3_600.0,
        "day" | "days" => 86_400.0,
        other => panic!("unknown unit {other:?} in {text:?}"),
    };
    number * unit
}

#[test]
fn docs_lifetime_buckets_are_the_histogram_bounds() {
    let doc = doc_metrics(&repo_file("docs/metrics.md"));
    let row = doc
        .iter()
        .find(|m| m.name == "tcp_tracer_connection_lifetime_seconds")
        .expect("lifetime row");
    let listed = row.meaning.split("buckets ").nth(1).expect("the row lists its buckets");
    let listed: Vec<f64> = listed.split(", ").map(doc_duration_seconds).collect();
    let mut bounds = lifetimes::bounds_seconds().to_vec();
    bounds.push(f64::INFINITY);
    assert_eq!(listed, bounds, "docs/metrics.md: buckets of the lifetime histogram");
}

/// The first number after `marker` in `text` ("1,024" → 1024).
fn number_after(text: &str, marker: &str) -> u64 {
    let rest = text.split(marker).nth(1).unwrap_or_else(|| panic!("no {marker:?} in the doc"));
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after {marker:?}"))
}

/// The Cardinality section's counts: series per process and per comm, the host-wide ones, the
/// total at the defaults, and the bounds behind them.
#[test]
fn docs_cardinality_counts_are_the_exporters() {
    let doc = repo_file("docs/metrics.md");
    let section = doc.split("\n## Cardinality\n").nth(1).expect("## Cardinality");
    // One line: sentences wrap anywhere.
    let section = section.split("\n## ").next().unwrap_or(section);
    let section = &section.split_whitespace().collect::<Vec<_>>().join(" ");
    let scraped = scrape_of_every_family();

    // Per process, family by family in the table's order.
    let per_family: Vec<u64> = PER_PROCESS
        .iter()
        .map(|name| {
            let series = scraped.series(name);
            series.iter().filter(|(l, _)| l.get("pid").map(String::as_str) == Some("1")).count()
                as u64
        })
        .collect();
    let per_process: u64 = per_family.iter().sum();
    assert_eq!(number_after(section, "Each exported process has"), per_process);
    let breakdown = section.split(&format!("has {per_process} series:")).nth(1).expect("breakdown");
    let breakdown = breakdown.split('.').next().unwrap_or_default();
    let listed: Vec<u64> = breakdown
        .split(',')
        .map(|part| {
            let number = part.split_whitespace().next().unwrap_or_default();
            number.parse().unwrap_or_else(|_| panic!("{part:?} does not start with a count"))
        })
        .collect();
    assert_eq!(listed, per_family, "docs/metrics.md: series per process, family by family");

    // Per comm: buckets (with +Inf), _sum and _count.
    let buckets = lifetimes::bounds_seconds().len() as u64 + 1;
    assert_eq!(number_after(section, "each with"), buckets + 2);
    assert_eq!(number_after(section, &format!("each with {} series (", buckets + 2)), buckets);

    // Host-wide series: every family without a pid or comm label, with kprobe mode's probes.
    let doc_rows = doc_metrics(&doc);
    let kprobes = doc_rows
        .iter()
        .find(|m| m.name == "tcp_tracer_kprobe_missed_total")
        .map(|m| backticked(&m.meaning).len() as u64)
        .expect("kprobe row");
    let host_wide: u64 = scraped
        .0
        .iter()
        .filter(|f| f.name() != "tcp_tracer_kprobe_missed_total")
        .filter(|f| {
            f.get_metric().iter().all(|m| m.get_label().iter().all(|l| l.name() != "pid"))
                && f.get_field_type() != MetricType::HISTOGRAM
                && f.name() != "tcp_tracer_leak_suspected"
                // Per destination, bounded apart (at most N).
                && f.name() != "tcp_tracer_remote_ports_used_ratio"
                // Per container, bounded apart (N plus other).
                && !f.name().starts_with("tcp_tracer_container_")
        })
        .map(|f| f.get_metric().len() as u64)
        .sum::<u64>()
        + kprobes;
    // Per container: one series per family for each exported container.
    let per_container = scraped
        .0
        .iter()
        .filter(|f| f.name().starts_with("tcp_tracer_container_"))
        .map(|f| {
            f.get_metric()
                .iter()
                .filter(|m| labels_of(m).get("container_id").map(String::as_str) == Some("other"))
                .count() as u64
        })
        .sum::<u64>();
    assert_eq!(number_after(section, "Each exported container has"), per_container);
    let rows = DEFAULT_TOP_N as u64 + 1;
    let formula = format!(
        "{rows} × {per_process} + {rows} × {} + {rows} × {per_container} + {host_wide} ≈",
        buckets + 2
    );
    assert!(
        section.contains(&formula),
        "docs/metrics.md's Cardinality should state \"{formula}\" (exported rows × series each, \
         comms × series each, host-wide series)"
    );
    let total = rows * per_process + rows * (buckets + 2) + rows * per_container + host_wide;
    assert_eq!(number_after(section, "≈"), (total + 50) / 100 * 100, "≈ the total, rounded");
    assert_eq!(number_after(section, "N = "), DEFAULT_TOP_N as u64);
    assert_eq!(number_after(section, "tracks at most"), lifetimes::MAX_TRACKED_COMMS as u64);
}

/// Every `tcp_tracer_*` name in the README, docs/ and the alert rules is an exported metric
/// (a histogram's `_bucket`, `_sum` and `_count` included).
#[test]
fn every_metric_name_in_the_docs_is_exported() {
    let scraped = scrape_of_every_family();
    let mut known: HashSet<String> = HashSet::new();
    for family in &scraped.0 {
        known.insert(family.name().to_owned());
        if family.get_field_type() == MetricType::HISTOGRAM {
            for suffix in ["_bucket", "_sum", "_count"] {
                known.insert(format!("{}{suffix}", family.name()));
            }
        }
    }
    let mut files = vec!["README.md".to_owned()];
    for dir in ["docs", "deploy/prometheus"] {
        let full = format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(&full)
            .unwrap_or_else(|e| panic!("{full}: {e}"))
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".md") || name.ends_with(".yml"))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        names.sort();
        files.extend(names);
    }
    let mut unknown = Vec::new();
    for file in &files {
        let text = repo_file(file);
        for (at, _) in text.match_indices("tcp_tracer_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `tcp_tracer` alone is the scrape job's name in examples.
            if name != "tcp_tracer_" && !known.contains(&name) {
                unknown.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(unknown.is_empty(), "metric names the exporter does not have:\n{}", unknown.join("\n"));
}

#[test]
fn idle_and_unread_follow_the_exported_processes_and_the_rest_sum_under_other() {
    let mut sim = Sim::new(1);
    let (a, b) = (process(10, "pool"), process(11, "reader"));
    for _ in 0..3 {
        sim.open_outbound(a);
    }
    sim.open_outbound(b);
    for (p, idle, unread) in [(a, 3, 1), (b, 1, 1)] {
        let key = ProcessKey { pid: p.pid, start_time_ns: p.start };
        let health = crate::health::ProcessHealth { idle, unread, ..Default::default() };
        sim.health.insert(key, health);
    }
    let scraped = sim.scrape();
    let at = |name: &str, pid: &str| scraped.value(name, &[("pid", pid)]);
    assert_eq!(at("tcp_tracer_idle_connections", "10"), Some(3.0));
    assert_eq!(at("tcp_tracer_unread_connections", "10"), Some(1.0));
    // Process 11 is not in the top 1: its figures are in `other`.
    assert_eq!(at("tcp_tracer_idle_connections", "11"), None);
    assert_eq!(at("tcp_tracer_idle_connections", "other"), Some(1.0));
    assert_eq!(at("tcp_tracer_unread_connections", "other"), Some(1.0));
}

fn k8s(ns: &str, pod: &str, name: &str, id: &str) -> crate::containers::Placement {
    crate::containers::Placement {
        cgroup: Some(format!("/kubepods.slice/cri-containerd-{id}.scope")),
        container: Some(crate::containers::Container {
            id: id.to_owned(),
            name: Some(name.to_owned()),
            runtime: crate::containers::Runtime::Containerd,
            pod: Some(pod.to_owned()),
            namespace: Some(ns.to_owned()),
            pod_uid: None,
            cgroup: format!("/kubepods.slice/cri-containerd-{id}.scope"),
            role: crate::containers::Role::Workload,
        }),
        unit: None,
        role: crate::containers::Role::Workload,
    }
}

fn host_unit(unit: &str) -> crate::containers::Placement {
    crate::containers::Placement {
        cgroup: Some(format!("/system.slice/{unit}")),
        container: None,
        unit: Some(unit.to_owned()),
        role: crate::containers::Role::Workload,
    }
}

fn in_cgroup(mut p: Proc, cgroup: u64) -> Proc {
    p.cgroup = cgroup;
    p
}

/// The labels Prometheus' Kubernetes discovery attaches to tracer's own pod.
const TARGET_LABELS: [&str; 8] =
    ["namespace", "pod", "container", "service", "endpoint", "node", "instance", "job"];

#[test]
fn processes_in_containers_carry_workload_labels_and_host_ones_none() {
    let mut sim = Sim::new(10);
    sim.containers.insert(100, k8s("shop", "checkout-7d9f", "api", "aaaa000011112222"));
    sim.containers.insert(200, host_unit("nginx.service"));
    let api = in_cgroup(process(10, "java"), 100);
    let nginx = in_cgroup(process(11, "nginx"), 200);
    let unresolved = in_cgroup(process(12, "curl"), 300);
    for p in [api, api, nginx, unresolved] {
        sim.open_outbound(p);
    }
    sim.alert(api, Rule::Growth);
    let scraped = sim.scrape();
    let open = scraped.series("tcp_tracer_open_connections");
    let of = |pid: &str| {
        open.iter().find(|(l, _)| l.get("pid").map(String::as_str) == Some(pid)).cloned()
    };
    let (labels, value) = of("10").expect("api's series");
    assert_eq!(value, 2.0);
    assert_eq!(labels.get("k8s_namespace").map(String::as_str), Some("shop"));
    assert_eq!(labels.get("k8s_pod").map(String::as_str), Some("checkout-7d9f"));
    assert_eq!(labels.get("k8s_container").map(String::as_str), Some("api"));
    for pid in ["11", "12", "other"] {
        let (labels, _) = of(pid).expect("series");
        assert!(labels.keys().all(|k| !k.starts_with("k8s_")), "{pid}: {labels:?}");
    }
    // Every per-process family has them, the alert's too.
    for name in ["tcp_tracer_connections_opened_total", "tcp_tracer_leak_suspected"] {
        assert!(scraped.sum(name, &[("pid", "10"), ("k8s_pod", "checkout-7d9f")]) > 0.0, "{name}");
    }
    // Never a label Kubernetes discovery sets on tracer's own target.
    for family in &scraped.0 {
        for m in family.get_metric() {
            for l in m.get_label() {
                assert!(!TARGET_LABELS.contains(&l.name()), "{} has {}", family.name(), l.name());
            }
        }
    }
}

#[test]
fn a_placement_resolved_later_keeps_the_series_counts() {
    let mut sim = Sim::new(10);
    let api = in_cgroup(process(10, "java"), 100);
    sim.open_outbound(api);
    sim.open_outbound(api);
    let before = sim.scrape();
    let opened = "tcp_tracer_connections_opened_total";
    let outbound = [("pid", "10"), ("direction", "outbound")];
    assert_eq!(before.value(opened, &outbound), Some(2.0));
    sim.containers.insert(100, k8s("shop", "checkout-7d9f", "api", "aaaa000011112222"));
    sim.open_outbound(api);
    let after = sim.scrape();
    // One series per process at any scrape, now labelled, continuing from the same count.
    let series: Vec<_> =
        after.series(opened).into_iter().filter(|(l, _)| matches(l, &outbound)).collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].1, 3.0);
    assert_eq!(series[0].0.get("k8s_container").map(String::as_str), Some("api"));
}

#[test]
fn container_series_are_the_top_n_plus_other_and_never_go_down() {
    let mut sim = Sim::new(1);
    sim.containers.insert(100, k8s("shop", "checkout", "api", "aaaa000011112222"));
    sim.containers.insert(200, k8s("shop", "cart", "api", "bbbb000011112222"));
    sim.containers.insert(300, k8s("shop", "search", "api", "cccc000011112222"));
    let (a, a2) = (in_cgroup(process(10, "java"), 100), in_cgroup(process(11, "envoy"), 100));
    let b = in_cgroup(process(20, "java"), 200);
    let c = in_cgroup(process(30, "java"), 300);
    let host = process(40, "curl");
    for p in [a, a, a2, b, host, host, host, host, host] {
        sim.open_outbound(p);
    }
    let open = "tcp_tracer_container_open_connections";
    let first = sim.scrape();
    assert_eq!(first.value(open, &[("container_id", "aaaa00001111")]), Some(3.0), "two processes");
    assert_eq!(first.value(open, &[("k8s_pod", "checkout"), ("k8s_container", "api")]), Some(3.0));
    assert_eq!(first.value(open, &[("container_id", "bbbb00001111")]), None, "beyond the top 1");
    assert_eq!(first.value(open, &[("container_id", "other")]), Some(1.0));
    assert_eq!(first.sum(open, &[]), 4.0, "host processes are not counted");

    // b overtakes a; c alerts: both exported, a's counts go to other from now on.
    for _ in 0..4 {
        sim.open_outbound(b);
    }
    sim.open_outbound(c);
    sim.alert(c, Rule::Growth);
    let second = sim.scrape();
    assert_eq!(second.value(open, &[("container_id", "bbbb00001111")]), Some(5.0));
    assert_eq!(second.value(open, &[("container_id", "cccc00001111")]), Some(1.0));
    assert_eq!(
        second.value("tcp_tracer_container_leak_alerts", &[("k8s_pod", "search")]),
        Some(1.0)
    );
    assert_eq!(second.value(open, &[("container_id", "aaaa00001111")]), None);
    assert_eq!(second.value(open, &[("container_id", "other")]), Some(3.0));
    let opened = "tcp_tracer_container_connections_opened_total";
    // Every open counted once: in the series exported now, or in a's, standing still while
    // it is folded into other.
    let a_before = first.value(opened, &[("container_id", "aaaa00001111")]).unwrap_or(0.0);
    assert_eq!(a_before, 3.0);
    assert_eq!(second.sum(opened, &[]) + a_before, 9.0);
    for (key, value) in first.counters() {
        if let Some(now) = second.counters().get(&key) {
            assert!(*now >= value, "{key} went down: {value} -> {now}");
        }
    }
    assert!(second.value(opened, &[("container_id", "other")]).is_some_and(|v| v >= 1.0));

    // A container whose processes left the table loses its series.
    sim.alerts.clear();
    sim.exit(c);
    sim.now += 3_600 * SEC;
    sim.table.expire(sim.now);
    let third = sim.scrape();
    assert!(
        third
            .series(open)
            .iter()
            .all(|(l, _)| l.get("k8s_pod").map(String::as_str) != Some("search"))
    );
}

#[test]
fn a_gone_containers_series_stay_until_the_exit_grace_period_ends_then_go() {
    let mut sim = Sim::new(10);
    sim.containers.insert(100, k8s("shop", "checkout", "api", "aaaa000011112222"));
    let api = in_cgroup(process(10, "java"), 100);
    let sock = sim.open_outbound(api);
    sim.release(api, sock);
    // Its last process exits: the container is gone.
    sim.exit(api);
    let exited_at = sim.now;
    let grace = TableConfig::default().exited_grace_ns;
    let open = "tcp_tracer_container_open_connections";
    let opened = "tcp_tracer_container_connections_opened_total";
    let id = [("container_id", "aaaa00001111")];

    // Just before the grace period ends: still exported, with what it did.
    sim.now = exited_at + grace - 1;
    sim.table.expire(sim.now);
    let before = sim.scrape();
    assert_eq!(before.value(open, &id), Some(0.0));
    assert_eq!(before.value(opened, &id), Some(1.0));
    assert_eq!(
        before.value(opened, &[("k8s_pod", "checkout"), ("k8s_container", "api")]),
        Some(1.0)
    );

    // Just after: the table dropped the process, and the container's series are gone.
    sim.now = exited_at + grace;
    sim.table.expire(sim.now);
    let after = sim.scrape();
    for name in [open, opened, "tcp_tracer_container_connections_closed_total"] {
        assert!(
            after
                .series(name)
                .iter()
                .all(|(l, _)| l.get("k8s_pod").map(String::as_str) != Some("checkout")),
            "{name} still exported"
        );
    }
}

#[test]
fn a_pod_sandbox_has_pod_labels_but_no_container_series() {
    let mut sim = Sim::new(10);
    let mut pause = k8s("shop", "checkout", "api", "eeee000011112222");
    if let Some(c) = pause.container.as_mut() {
        c.name = None;
        c.role = crate::containers::Role::Sandbox;
    }
    pause.role = crate::containers::Role::Sandbox;
    sim.containers.insert(300, pause);
    sim.containers.insert(100, k8s("shop", "checkout", "api", "aaaa000011112222"));
    let sandbox = in_cgroup(process(30, "pause"), 300);
    let api = in_cgroup(process(10, "java"), 100);
    sim.open_outbound(sandbox);
    sim.open_outbound(api);
    let scraped = sim.scrape();
    let open = scraped.series("tcp_tracer_open_connections");
    let (labels, value) = open
        .iter()
        .find(|(l, _)| l.get("pid").map(String::as_str) == Some("30"))
        .cloned()
        .expect("the sandbox's process series");
    assert_eq!(value, 1.0);
    assert_eq!(labels.get("k8s_namespace").map(String::as_str), Some("shop"));
    assert_eq!(labels.get("k8s_pod").map(String::as_str), Some("checkout"));
    assert_eq!(labels.get("k8s_container"), None, "{labels:?}");
    let containers = "tcp_tracer_container_open_connections";
    assert_eq!(scraped.value(containers, &[("container_id", "eeee00001111")]), None);
    assert_eq!(scraped.value(containers, &[("container_id", "aaaa00001111")]), Some(1.0));
    assert_eq!(scraped.sum(containers, &[]), 1.0, "the sandbox's connection is in no container");
}
