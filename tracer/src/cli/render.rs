//! Tables for people: aligned, and readable in an 80-column terminal.
use std::fmt::Write as _;

use crate::{
    api::protocol::StatusReport,
    daemon::{AgesReport, ConnsReport, LeaksReport, RemoteReport, TopReport, conn_state_label},
    table::StateCounts,
};

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

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width { s.to_owned() } else { s.chars().take(width).collect() }
}

pub fn top(report: &TopReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} {:<15} {:>6} {:>7} {:>7} {:>5} {:>6}  STATES / ALERTS",
        "PID", "COMM", "OPEN", "OPENED", "CLOSED", "FAIL", "GROWTH"
    );
    for row in &report.processes {
        let p = &row.process;
        let mut notes = states_summary(&p.states);
        if p.connecting > 0 {
            notes = format!("{notes} syn={}", p.connecting);
        }
        if p.exited {
            notes = format!("{notes} [exited, held {}]", p.open_at_exit.unwrap_or(0));
        }
        if !row.alerts.is_empty() {
            notes = format!("LEAK({}) {notes}", row.alerts.join(","));
        }
        let _ = writeln!(
            out,
            "{:>7} {:<15} {:>6} {:>7} {:>7} {:>5} {:>+6}  {}",
            p.pid,
            clip(&p.comm, 15),
            p.open,
            p.opened_total,
            p.closed_total,
            p.connect_failed,
            row.growth,
            clip(notes.trim(), 24)
        );
    }
    let _ = writeln!(
        out,
        "unattributed (not yet accepted, or accepted unseen): {}",
        report.unattributed
    );
    out
}

pub fn remotes(report: &RemoteReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<46} {:>6}  PIDS", "REMOTE", "OPEN");
    for r in &report.remotes {
        let pids = r.pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let _ = writeln!(out, "{:<46} {:>6}  {}", clip(&r.remote, 46), r.open, clip(&pids, 24));
    }
    let _ = writeln!(
        out,
        "unattributed (not yet accepted, or accepted unseen): {}",
        report.unattributed
    );
    out
}

pub fn ages(report: &AgesReport) -> String {
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

pub fn leaks(report: &LeaksReport) -> String {
    let mut out = String::new();
    if report.active.is_empty() {
        let _ = writeln!(out, "no active leak alerts");
    }
    for (title, alerts) in
        [("ACTIVE", &report.active), ("RESOLVED IN THE LAST HOUR", &report.resolved)]
    {
        if alerts.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}");
        for a in alerts {
            let e = &a.evidence;
            let _ = writeln!(
                out,
                "  pid {} ({}) rule {} since {} ({}s ago), open {}",
                a.pid, a.comm, a.rule, a.since, a.since_seconds, a.open
            );
            let floors = e.floors.iter().map(u32::to_string).collect::<Vec<_>>().join(" -> ");
            let _ = writeln!(
                out,
                "    floor per sub-window: {floors} (growth {:+}); in window: {} opened, {} closed",
                e.growth, e.opens_in_window, e.closes_in_window
            );
            if e.stale_close_wait > 0 || e.stale_held_closed > 0 {
                let _ = writeln!(
                    out,
                    "    stale close_wait: {}, reset but held: {}",
                    e.stale_close_wait, e.stale_held_closed
                );
            }
            for r in &e.top_remotes {
                let _ = writeln!(out, "    to {:<40} {} open", r.remote, r.open);
            }
            for c in e.oldest.iter().take(3) {
                let _ = writeln!(
                    out,
                    "    oldest: {} -> {} {} {}",
                    c.local,
                    c.remote,
                    c.state,
                    age(c.age_seconds)
                );
            }
        }
    }
    out
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn conns(report: &ConnsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} {:<10} {:<3} {:<21} {:<21} {:<11} {:>4}",
        "PID", "COMM", "DIR", "LOCAL", "REMOTE", "STATE", "AGE"
    );
    for c in &report.connections {
        let pid = c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let dir = match c.direction {
            crate::table::Direction::Outbound => "out",
            crate::table::Direction::Inbound => "in",
        };
        let state = conn_state_label(c.phase, state_static(&c.state));
        let _ = writeln!(
            out,
            "{:>7} {:<10} {:<3} {:<21} {:<21} {:<11} {:>4}",
            pid,
            clip(c.comm.as_deref().unwrap_or("-"), 10),
            dir,
            c.local.to_string(),
            c.remote.to_string(),
            state,
            age(c.age_seconds)
        );
    }
    let _ = writeln!(out, "{} connection(s)", report.connections.len());
    out
}

/// The state names come from a fixed set; map back to a static str for the label helper.
fn state_static(state: &str) -> &'static str {
    crate::daemon::STATE_NAMES
        .iter()
        .chain(["syn_sent", "syn_recv", "listen", "unknown"].iter())
        .find(|s| **s == state)
        .copied()
        .unwrap_or("unknown")
}

pub fn status(s: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tracer {} (API v{})", s.version, s.api_version);
    let _ = writeln!(out, "probe mode:          {} ({})", s.probe_mode, s.probe_mode_reason);
    let _ = writeln!(out, "kernel:              {}", s.kernel);
    let _ = writeln!(out, "uptime:              {}s", s.uptime_seconds);
    let _ = writeln!(out, "events received:     {}", s.events_total);
    for (kind, n) in &s.events_by_kind {
        let _ = writeln!(out, "  {kind:<18} {n}");
    }
    let _ = writeln!(out, "events lost:         {}", s.events_lost);
    for (reason, n) in &s.events_lost_by_reason {
        let _ = writeln!(out, "  {reason:<18} {n}");
    }
    if s.ring_bytes > 0 {
        let _ = writeln!(
            out,
            "ring buffer:         high water {} of {} bytes ({:.1}%)",
            s.ring_high_water_bytes,
            s.ring_bytes,
            100.0 * s.ring_high_water_bytes as f64 / s.ring_bytes as f64
        );
    }
    let _ = writeln!(out, "tracked connections: {}", s.tracked_connections);
    let _ = writeln!(out, "unattributed:        {}", s.unattributed);
    let _ = writeln!(out, "processes:           {}", s.processes);
    let _ = writeln!(out, "unmatched releases:  {}", s.unmatched_releases);
    let _ = writeln!(out, "reconcile corrections: {}", s.reconcile_corrections);
    let _ = writeln!(out, "holder changes:      {}", s.holder_changes);
    if !s.kprobes.is_empty() {
        // A missed accept return is covered by the accept syscall's exit; a missed entry
        // probe is a lost event (and shows as a reconcile correction).
        let _ = writeln!(out, "kprobes (hits, missed by the kernel):");
        for p in &s.kprobes {
            let _ = writeln!(out, "  {:<22} {} {}", p.probe, p.hits, p.missed);
        }
    }
    let _ = writeln!(
        out,
        "metrics:             {}",
        s.metrics_addr.as_deref().map_or("off".to_owned(), |a| format!("http://{a}/metrics"))
    );
    out
}
