//! `tracer status`: probe mode, kernel, event and loss counters of the running daemon.
use std::{fmt::Write as _, path::Path};

use clap::Args;
use tracer::api::{
    answers::{LimitsStatus, StatusReport},
    protocol::Request,
};

use super::output;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output (the API's answer, docs/api.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: StatusArgs) -> anyhow::Result<()> {
    let text = output::answer::<StatusReport>(socket, Request::Status {}, args.json, status)?;
    output::emit(&text)?;
    Ok(())
}

fn status(s: &StatusReport) -> String {
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
    limits(&mut out, &s.limits);
    let _ = writeln!(out, "reconciles:          {}", s.reconciles);
    let _ = writeln!(out, "reconcile corrections: {}", s.reconcile_corrections);
    let _ = writeln!(out, "leak evaluations:    {}", s.leak_evaluations);
    let _ = writeln!(out, "holder changes:      {}", s.holder_changes);
    let _ = writeln!(
        out,
        "trace streams:       {} open, {} records dropped for slow readers",
        s.trace.subscribers, s.trace.dropped
    );
    let _ = writeln!(
        out,
        "API clients:         {} connected, {} closed for newer ones, {} refused",
        s.api.clients, s.api.evicted, s.api.refused
    );
    let privileges = |p: &tracer::api::answers::PrivilegesStatus| {
        let caps = &p.effective_capabilities;
        format!(
            "uid {}, {} effective capabilities{}{}",
            p.uid,
            caps.len(),
            if caps.is_empty() { String::new() } else { format!(" ({})", caps.join(" ")) },
            if p.no_new_privs { ", no_new_privs" } else { "" }
        )
    };
    let _ = writeln!(out, "privileges:          {}", privileges(&s.privileges));
    // The parts apart from the daemon, one line each.
    for (label, part) in [
        ("clients served by:  ", &s.clients_part),
        ("binaries parsed by: ", &s.inspector_part),
        ("  started by:       ", &s.inspector_launcher),
    ] {
        if let Some(part) = part {
            let _ = writeln!(
                out,
                "{label} pid {}, {}{}{}",
                part.pid,
                privileges(&part.privileges),
                if part.seccomp { ", seccomp" } else { "" },
                part.ended.as_deref().map(|e| format!("; ENDED: {e}")).unwrap_or_default()
            );
        }
    }
    if let Some(part) = s.inspector_part.as_ref().filter(|p| p.restarts > 0 || p.quarantined > 0) {
        let _ = writeln!(
            out,
            "  restarted:         {} times; last end: {}",
            part.restarts,
            part.last_end.as_deref().unwrap_or("-")
        );
        let more = part.quarantined as usize > part.quarantined_files.len();
        let _ = writeln!(
            out,
            "  quarantined files: {}{}{}",
            part.quarantined,
            if part.quarantined_files.is_empty() { "" } else { ": " },
            part.quarantined_files.join(", ") + if more { ", ..." } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "TIME_WAIT closes:    {} remembered, {} over tcp_max_tw_buckets",
        s.time_wait_closes_remembered, s.time_wait_closes_overflowed
    );
    if s.workload_overrides.is_empty() {
        let _ = writeln!(out, "workload overrides:  none");
    } else {
        let _ = writeln!(out, "workload overrides (first match applies):");
        for (i, o) in s.workload_overrides.iter().enumerate() {
            let _ = writeln!(out, "  {o}");
            // Older daemons send no matches: print the overrides alone.
            if let Some(m) = s.workload_override_matches.get(i) {
                let more = if m.processes as usize > m.examples.len() { ", ..." } else { "" };
                let _ = writeln!(
                    out,
                    "    applies to {} process(es){}{}{more}",
                    m.processes,
                    if m.examples.is_empty() { "" } else { ": " },
                    m.examples.join(", ")
                );
            }
        }
    }
    if !s.kprobes.is_empty() {
        // A missed accept return is covered by the accept syscall's exit; a missed entry
        // probe is a lost event (and shows as a reconcile correction).
        let _ = writeln!(out, "kprobes (hits, missed by the kernel):");
        for p in &s.kprobes {
            let _ = writeln!(out, "  {:<22} {} {}", p.probe, p.hits, p.missed);
        }
    }
    // Runs the kernel skipped never reach the ring: the only trace of those lost events.
    let _ = writeln!(
        out,
        "program runs skipped: {} (a program already running on the CPU, or never made){}",
        s.program_misses_total,
        if s.established_inferred > 0 {
            format!("; {} handshakes inferred from later events", s.established_inferred)
        } else {
            String::new()
        }
    );
    for p in s.program_misses.iter().filter(|p| p.missed > 0) {
        let _ = writeln!(out, "  {:<30} {}", p.program, p.missed);
    }
    let k = &s.stacks;
    let _ = writeln!(
        out,
        "opener stacks:       {} policy, capture {}; captured {}, lost {} (ring full) {} (unwind failed), \
         orphaned {}, processes exited before pinning {}, pins refused {}, pins failed {}{}, \
         suspects unmarked {}, frames unsymbolized {}",
        k.policy,
        match &k.capture_off_reason {
            Some(reason) => format!("{} ({reason})", k.capture),
            None => k.capture.clone(),
        },
        k.captured,
        k.lost_ringbuf,
        k.unwind_failed,
        k.orphaned,
        k.exited_before_pinning,
        k.pins_refused,
        k.pins_failed,
        k.last_pin_failure.as_deref().map(|e| format!(" (last: {e})")).unwrap_or_default(),
        k.suspects_unmarked,
        k.frames_unsymbolized
    );
    let g = &s.go_requests;
    let _ = writeln!(
        out,
        "go requests:         {} policy; {} processes probed, {} refused, {} attaches failed; \
         {} request stacks, {} unmatched, {} lost (ring full)",
        g.policy,
        g.probed_processes,
        g.refused_processes,
        g.attach_failed,
        g.requests,
        g.requests_unmatched,
        g.requests_lost
    );
    let c = &s.containers;
    let _ = writeln!(
        out,
        "containers:          {} cgroups resolved ({} in containers, {} not found), cgroup2 at {}; \
         scanned processes' cgroup ids: {}",
        c.resolved,
        c.containers,
        c.misses,
        c.cgroup_root.as_deref().unwrap_or("(not found)"),
        c.scanned_cgroup_ids_unavailable
            .as_deref()
            .map_or("from the task iterator".to_owned(), |why| format!("unknown ({why})"))
    );
    let _ = writeln!(
        out,
        "metrics:             {}",
        s.metrics_addr.as_deref().map_or("off".to_owned(), |a| {
            tracer::export::metrics_url(a, s.metrics_tls, s.metrics_basic_auth)
        })
    );
    out
}

/// The table limits: one line while nothing was refused, and a clear one (which limit, how
/// many, which flag raises it) once something was.
fn limits(out: &mut String, l: &LimitsStatus) {
    // An older daemon sends no limits.
    if l.max_connections == 0 {
        return;
    }
    if !l.over_limit {
        let _ = writeln!(
            out,
            "table limits:        {} connections, {} processes (none reached)",
            l.max_connections, l.max_processes
        );
        return;
    }
    let _ = writeln!(out, "TABLE LIMIT REACHED: counts are lower bounds");
    if l.connections_over_limit > 0 {
        let _ = writeln!(
            out,
            "  {} connections refused: the table held --max-connections {} (raise it to track \
             them)",
            l.connections_over_limit, l.max_connections
        );
    }
    if l.processes_over_limit > 0 {
        let _ = writeln!(
            out,
            "  {} connections of new processes refused: the table held --max-processes {} \
             (raise it to track them)",
            l.processes_over_limit, l.max_processes
        );
    }
    let _ = writeln!(
        out,
        "  {} refused still open (untracked for life); {} of their later events ignored; {} \
         untracked at the last reconcile",
        l.refused_open, l.over_limit_events, l.untracked_at_reconcile
    );
}
