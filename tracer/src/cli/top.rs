//! `tracer top`: processes by open connections, or remote endpoints (`--by remote`), or one
//! process's connections by age (`--ages PID`); `--watch` redraws it.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use clap::Args;
use tracer::api::{
    answers::{AgesReport, GroupReport, RemoteReport, StateCounts, TopReport},
    protocol::{Request, TopBy},
};

use super::{
    output,
    placement::{self, Column, PlacementArgs},
    text::{age, clip, wrap},
    values::{Choice, Seconds, parse_positive_seconds},
    watch,
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Show at most N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Group open connections by process (default), remote endpoint, container or pod.
    #[arg(long, value_parser = TopBy::parser(), default_value_t = TopBy::Process)]
    pub by: TopBy,
    /// Show the age distribution of one process's open connections instead.
    #[arg(long, value_name = "PID", conflicts_with_all = ["by", "container", "pod", "namespace"])]
    pub ages: Option<u32>,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Redraw every SECS seconds (default 2) until q or Ctrl-C; with --json, print one answer
    /// every SECS seconds instead.
    #[arg(
        long,
        num_args = 0..=1,
        default_missing_value = "2",
        value_name = "SECS",
        value_parser = parse_positive_seconds
    )]
    pub watch: Option<Seconds>,
    /// Machine-readable output (the API's answer, docs/api.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: TopArgs) -> anyhow::Result<()> {
    let mut new_alerts = NewAlerts::default();
    let redrawn = args.watch.is_some() && !args.json;
    let mut frame = || -> anyhow::Result<String> {
        if let Some(pid) = args.ages {
            return output::answer::<AgesReport>(socket, Request::Ages { pid }, args.json, ages);
        }
        let placement = args.placement.clone().filter()?;
        let request = Request::Top { limit: args.limit, by: args.by, placement };
        match args.by {
            // Redrawn: rows whose alerts just raised stand out.
            TopBy::Process if redrawn => output::answer::<TopReport>(socket, request, false, |r| {
                top_marked(r, &new_alerts.update(r, Instant::now()))
            }),
            TopBy::Process => output::answer::<TopReport>(socket, request, args.json, top),
            TopBy::Remote => output::answer::<RemoteReport>(socket, request, args.json, remotes),
            TopBy::Container | TopBy::Pod => {
                output::answer::<GroupReport>(socket, request, args.json, groups)
            }
        }
    };
    match args.watch {
        None => {
            output::emit(&frame()?)?;
        }
        // Machine output is never drawn on a screen: one answer after another.
        Some(Seconds(period)) if args.json => watch::stream(period, frame)?,
        Some(Seconds(period)) => watch::run(period, frame)?,
    }
    Ok(())
}

/// Short names for the per-state summary of `top`.
fn states_summary(states: &StateCounts) -> String {
    let short = |name: &str| {
        match name {
            "established" => "est",
            "close_wait" => "cw",
            "fin_wait1" => "fw1",
            "fin_wait2" => "fw2",
            "closing" => "cls",
            "last_ack" => "la",
            "time_wait" => "tw",
            "close" => "close",
            other => other,
        }
        .to_owned()
    };
    states
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{}={n}", short(name)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Placement column width: with it a row stays within 115 columns.
const PLACEMENT_WIDTH: usize = 29;
/// The notes (last) column's width; longer notes continue on the next lines.
const NOTES_WIDTH: usize = 24;

pub(super) fn top(report: &TopReport) -> String {
    top_marked(report, &HashSet::new())
}

/// How long `top --watch` highlights the row of a process whose alert it saw raise.
const HIGHLIGHT_FOR: Duration = Duration::from_secs(10);

/// `top --watch`'s memory of alerts: when it first saw each (process, rule), so that rows
/// whose alerts raised while it watched stand out for [`HIGHLIGHT_FOR`]. Alerts already active
/// in the first frame did not just raise and are not marked.
#[derive(Default)]
struct NewAlerts {
    /// `None` for the alerts of the first frame.
    first_seen: HashMap<(u32, String), Option<Instant>>,
    started: bool,
}

impl NewAlerts {
    /// The pids to highlight in `report`, seen at `now`.
    fn update(&mut self, report: &TopReport, now: Instant) -> HashSet<u32> {
        let current: HashSet<(u32, String)> = report
            .processes
            .iter()
            .flat_map(|r| r.alerts.iter().map(|a| (r.process.pid, a.clone())))
            .collect();
        // A resolved alert that raises again is new again.
        self.first_seen.retain(|key, _| current.contains(key));
        let seen_now = self.started.then_some(now);
        for key in current {
            self.first_seen.entry(key).or_insert(seen_now);
        }
        self.started = true;
        self.first_seen
            .iter()
            .filter(|(_, seen)| seen.is_some_and(|at| now.duration_since(at) < HIGHLIGHT_FOR))
            .map(|((pid, _), _)| *pid)
            .collect()
    }
}

/// `top`, with the rows of `marked` processes in reverse video (`--watch` draws on a terminal).
fn top_marked(report: &TopReport, marked: &HashSet<u32>) -> String {
    let mut out = String::new();
    let column =
        Column::new(report.processes.iter().map(|r| r.container.as_ref()), PLACEMENT_WIDTH);
    let _ = writeln!(
        out,
        "{:>7} {:<15}{} {:>6} {:>7} {:>7} {:>5} {:>6}  STATES / ALERTS",
        "PID",
        "COMM",
        placement::header(&column),
        "OPEN",
        "OPENED",
        "CLOSED",
        "FAIL",
        "GROWTH"
    );
    for row in &report.processes {
        let p = &row.process;
        let mut notes = states_summary(&p.states);
        if p.connecting > 0 {
            notes = format!("{notes} syn={}", p.connecting);
        }
        if row.unread > 0 {
            notes = format!("{notes} unread={}", row.unread);
        }
        if row.idle > 0 {
            notes = format!("{notes} idle={}", row.idle);
        }
        if p.exited {
            notes = format!("{notes} [exited, held {}]", p.open_at_exit.unwrap_or(0));
        }
        if p.over_limit {
            notes = format!("{notes} over-limit");
        }
        // Released connections it left in TIME_WAIT, and descriptors near their limit.
        if row.time_wait_caused > 0 {
            notes = format!("{notes} tw-caused={}", row.time_wait_caused);
        }
        if let (Some(used), Some(limit)) = (row.fd_used, row.fd_limit)
            && u64::from(used) * 2 >= limit
        {
            notes = format!("{notes} fd={used}/{limit}");
        }
        if !row.alerts.is_empty() {
            notes = format!("LEAK({}) {notes}", row.alerts.join(","));
        }
        let notes = wrap(&notes, NOTES_WIDTH);
        let (on, off) = if marked.contains(&p.pid) { ("\x1b[7m", "\x1b[0m") } else { ("", "") };
        let _ = writeln!(
            out,
            "{on}{:>7} {:<15}{} {:>6} {:>7} {:>7} {:>5} {:>6}  {}{off}",
            p.pid,
            clip(&p.comm, 15),
            placement::cell_of(&column, row.container.as_ref()),
            p.open,
            p.opened_total,
            p.closed_total,
            p.connect_failed,
            growth_cell(row.growth, row.growth_partial),
            notes[0]
        );
        // The rest of the notes under the first, so that none is lost to the width.
        let indent = 7 + 1 + 15 + placement::header(&column).chars().count() + 38;
        for more in &notes[1..] {
            let _ = writeln!(out, "{:indent$}{more}", "");
        }
        // The code behind the alert, from its evidence's largest stack group.
        if let Some(function) = &row.leading_function {
            let _ = writeln!(out, "{:>7} leaking from {function}", "");
        }
    }
    if report.processes.iter().any(|r| r.growth_partial) {
        let _ = writeln!(out, "* growth over the samples so far: the first leak window is filling");
    }
    let _ = writeln!(
        out,
        "unattributed (not yet accepted, or accepted unseen): {}",
        report.unattributed
    );
    if report.over_limit {
        let _ = writeln!(
            out,
            "table limit reached: some connections are not tracked, counts are lower bounds \
             (over-limit rows; see tracer status)"
        );
    }
    out
}

/// `+624`, or `+624*` while the first window is filling.
fn growth_cell(growth: i64, partial: bool) -> String {
    format!("{growth:+}{}", if partial { "*" } else { "" })
}

/// Group column width: a row stays within 100 columns.
const GROUP_WIDTH: usize = 44;

fn groups(report: &GroupReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:>5} {:>6} {:>7} {:>7} {:>6} {:>6}",
        "GROUP", "PROCS", "OPEN", "OPENED", "CLOSED", "GROWTH", "ALERTS"
    );
    for g in &report.groups {
        let _ = writeln!(
            out,
            "{:<44} {:>5} {:>6} {:>7} {:>7} {:>+6} {:>6}",
            tracer::containers::views::clip_middle(&g.group, GROUP_WIDTH),
            g.processes,
            g.open,
            g.opened_total,
            g.closed_total,
            g.growth,
            g.alerts
        );
    }
    let _ = writeln!(
        out,
        "unattributed (not yet accepted, or accepted unseen): {}",
        report.unattributed
    );
    out
}

fn remotes(report: &RemoteReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<46} {:>6} {:>13}  PIDS", "REMOTE", "OPEN", "PORTS");
    for r in &report.remotes {
        let pids = r.pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let ports = match (r.ports_used, r.ports_available) {
            (Some(used), Some(available)) => format!("{used}/{available}"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<46} {:>6} {:>13}  {}",
            clip(&r.remote, 46),
            r.open,
            ports,
            clip(&pids, 24)
        );
    }
    let _ = writeln!(
        out,
        "unattributed (not yet accepted, or accepted unseen): {}",
        report.unattributed
    );
    out
}

fn ages(report: &AgesReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pid {} ({}): {} open connections by age",
        report.pid, report.comm, report.open
    );
    let widest = report.buckets.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let mut lower = "0s".to_owned();
    for (bound, count) in &report.buckets {
        let upper = bound.map_or_else(|| "older".to_owned(), age);
        let label = if bound.is_some() {
            format!("{lower:>4} .. {upper:<5}")
        } else {
            format!("   > {lower:<5}  ")
        };
        let bar = "#".repeat((*count as usize * 50).div_ceil(widest as usize));
        let _ = writeln!(out, "  {label} {count:>7} {bar}");
        if let Some(b) = bound {
            lower = age(*b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tracer::{
        api::answers::{ProcessSnapshot, TopRow},
        table::DirectionStats,
    };

    use super::*;

    fn row(pid: u32, comm: &str, counts: [u64; 4], states: StateCounts, growth: i64) -> TopRow {
        let [open, opened_total, closed_total, connect_failed] = counts;
        TopRow {
            process: ProcessSnapshot {
                pid,
                start_time_ns: u64::from(pid) * 1_000_000_000,
                comm: comm.to_owned(),
                cgroup_id: 0,
                open: open as u32,
                opened_total,
                closed_total,
                connect_failed,
                connecting: 0,
                states,
                outbound: DirectionStats::default(),
                inbound: DirectionStats::default(),
                exited: false,
                open_at_exit: None,
                over_limit: false,
                refused_connections: 0,
            },
            container: None,
            growth,
            growth_partial: false,
            oldest_age_seconds: 0,
            idle: 0,
            unread: 0,
            alerts: Vec::new(),
            time_wait_caused: 0,
            time_wait_caused_total: 0,
            fd_used: None,
            fd_limit: None,
            fd_exhaustion_seconds: None,
            leading_function: None,
        }
    }

    fn shop(name: &str, pod: &str) -> tracer::containers::Container {
        tracer::containers::Container {
            id: format!("{name}0123456789abcdef"),
            name: Some(name.to_owned()),
            runtime: tracer::containers::Runtime::Containerd,
            pod: Some(pod.to_owned()),
            namespace: Some("shop".to_owned()),
            pod_uid: None,
            cgroup: "/kubepods.slice/x".to_owned(),
            role: tracer::containers::Role::Workload,
        }
    }

    #[test]
    fn the_placement_column_shows_only_with_containers_and_fits_120_columns() {
        let host_only = TopReport {
            processes: vec![row(1, "nginx", [1, 1, 0, 0], StateCounts::default(), 0)],
            unattributed: 0,
            over_limit: false,
        };
        assert!(
            !top(&host_only).contains("NAMESPACE/POD/CONTAINER"),
            "no column without containers"
        );

        let mut leaking = row(
            2,
            "java",
            [40, 40, 0, 0],
            StateCounts { established: 40, close_wait: 3, ..StateCounts::default() },
            30,
        );
        leaking.alerts = vec!["growth".to_owned(), "close_wait".to_owned()];
        leaking.container = Some(shop("api", "checkout-7d9f8b6c5-x2x9z-with-a-very-long-name"));
        let report = TopReport {
            processes: vec![leaking, row(3, "nginx", [1, 1, 0, 0], StateCounts::default(), 0)],
            unattributed: 0,
            over_limit: false,
        };
        let text = top(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("NAMESPACE/POD/CONTAINER"), "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= 120), "{text}");
        // Both ends of a clipped cell survive; host processes say so.
        assert!(lines[1].contains("shop/checkout") && lines[1].contains("/api "), "{text}");
        assert!(text.lines().any(|l| l.contains("nginx") && l.contains(" host ")), "{text}");
        // The columns after it stay aligned with the header.
        let at = |line: &str, word: &str| line.find(word).map(|i| line[..i].chars().count());
        let open_end = at(lines[0], "OPEN").map(|i| i + 4);
        let forty = at(lines[1], " 40 ").map(|i| i + 3);
        assert_eq!(open_end, forty, "{text}");
    }

    /// `--watch` marks a row whose alert raised while it watched, for ten seconds; alerts of
    /// the first frame are old news, and an alert that resolves and raises again is new again.
    #[test]
    fn watch_highlights_alerts_that_just_raised() {
        let report = |alerting: &[(u32, &str)]| TopReport {
            processes: [1, 2]
                .into_iter()
                .map(|pid| {
                    let mut r = row(pid, "svc", [1, 1, 0, 0], StateCounts::default(), 0);
                    r.alerts = alerting
                        .iter()
                        .filter(|(p, _)| *p == pid)
                        .map(|(_, a)| (*a).to_owned())
                        .collect();
                    r
                })
                .collect(),
            unattributed: 0,
            over_limit: false,
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut alerts = NewAlerts::default();
        assert!(alerts.update(&report(&[(1, "growth")]), at(0)).is_empty(), "first frame");
        let marked = alerts.update(&report(&[(1, "growth"), (2, "close_wait")]), at(2));
        assert_eq!(marked, HashSet::from([2]));
        let text = top_marked(&report(&[(1, "growth"), (2, "close_wait")]), &marked);
        let line = |pid: &str| text.lines().find(|l| l.contains(pid)).unwrap().to_owned();
        assert!(
            line("      2 svc").starts_with("\x1b[7m") && line("      2 svc").ends_with("\x1b[0m")
        );
        assert!(!line("      1 svc").contains('\x1b'), "{text:?}");
        assert_eq!(
            alerts.update(&report(&[(1, "growth"), (2, "close_wait")]), at(11)),
            HashSet::from([2])
        );
        assert!(alerts.update(&report(&[(1, "growth"), (2, "close_wait")]), at(12)).is_empty());
        alerts.update(&report(&[(1, "growth")]), at(14));
        assert_eq!(
            alerts.update(&report(&[(1, "growth"), (2, "close_wait")]), at(16)),
            HashSet::from([2])
        );
    }

    #[test]
    fn groups_fit_100_columns() {
        let groups = tracer::containers::views::group(
            [
                (
                    Some(&shop("api", "checkout-7d9f8b6c5-x2x9z-with-a-very-long-name")),
                    Default::default(),
                ),
                (None, Default::default()),
            ],
            false,
        );
        let text = super::groups(&GroupReport { groups, unattributed: 2 });
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
        assert!(text.contains("host") && text.contains("/api"), "{text}");
    }

    /// The fenced block of `markdown` whose first line starts (after spaces) with `start`.
    fn code_block(markdown: &str, start: &str) -> Option<String> {
        let mut blocks = markdown.split("```").skip(1).step_by(2);
        blocks.find_map(|block| {
            // Skip the info string (`sh`, `text`, ...) on the fence's line.
            let body = block.split_once('\n')?.1;
            body.trim_start().starts_with(start).then(|| body.to_owned())
        })
    }

    /// README.md's example of `tracer top` is this function's output for the rows it shows:
    /// header, column widths, alert and state notes, the unattributed line.
    #[test]
    fn a_growth_over_less_than_a_window_is_marked_and_explained() {
        let mut new = row(77, "leaker", [600, 600, 0, 0], StateCounts::default(), 624);
        new.growth_partial = true;
        let old = row(78, "pool", [10, 10, 0, 0], StateCounts::default(), -3);
        let text =
            top(&TopReport { processes: vec![new, old], unattributed: 0, over_limit: false });
        let line = |pid: &str| text.lines().find(|l| l.trim_start().starts_with(pid)).unwrap();
        assert!(line("77 ").contains(" +624*"), "{text}");
        assert!(line("78 ").contains(" -3") && !line("78 ").contains('*'), "{text}");
        assert!(text.contains("* growth over the samples so far"), "{text}");
        let settled = top(&TopReport {
            processes: vec![row(78, "pool", [10, 10, 0, 0], StateCounts::default(), 0)],
            unattributed: 0,
            over_limit: false,
        });
        assert!(!settled.contains("samples so far"), "{settled}");
    }

    #[test]
    fn readme_top_example_is_the_real_output() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let example = code_block(&readme, "PID").expect("README.md has a `tracer top` example");

        let mut leaking = row(
            41860,
            "workload",
            [40, 40, 0, 0],
            StateCounts { established: 40, ..StateCounts::default() },
            30,
        );
        leaking.alerts = vec!["growth".to_owned()];
        let report = TopReport {
            processes: vec![
                leaking,
                row(
                    1207,
                    "nginx",
                    [25, 981, 956, 0],
                    StateCounts { established: 24, close_wait: 1, ..StateCounts::default() },
                    0,
                ),
                row(3310, "curl", [0, 3, 3, 2], StateCounts::default(), 0),
            ],
            unattributed: 0,
            over_limit: false,
        };
        let real = top(&report);
        // Trailing spaces (a row without notes) are invisible, and editors drop them.
        let lines = |text: &str| text.lines().map(str::trim_end).collect::<Vec<_>>().join("\n");
        let (example, real) = (lines(&example), lines(&real));
        assert_eq!(
            example.lines().next(),
            real.lines().next(),
            "README.md's `tracer top` header differs from the one `tracer top` prints"
        );
        assert_eq!(
            example, real,
            "README.md's `tracer top` example differs from what `tracer top` prints for its rows \
             (update README.md with the right side, or the rows of this test)"
        );
    }
}
