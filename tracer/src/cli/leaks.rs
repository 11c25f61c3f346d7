//! `tracer leaks`: active leak alerts with their evidence, and those resolved in the last hour.
use std::{fmt::Write as _, path::Path};

use clap::Args;
use tracer::api::{answers::LeaksReport, protocol::Request};

use super::{output, placement::PlacementArgs, text::age};

#[derive(Debug, Args)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Machine-readable output (the API's answer, docs/api.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: LeaksArgs) -> anyhow::Result<()> {
    let request = Request::Leaks { placement: args.placement.filter()? };
    let text = output::answer::<LeaksReport>(socket, request, args.json, leaks)?;
    output::emit(&text)?;
    Ok(())
}

pub(super) fn leaks(report: &LeaksReport) -> String {
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
            if let Some(c) = &a.container {
                let _ = writeln!(out, "    in {}", placement_words(c));
            }
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
            if let Some(p) = &e.port_pressure {
                let _ = writeln!(
                    out,
                    "    ephemeral ports to {}: {}/{} in use, {} of them held by this process",
                    p.remote, p.ports_used, p.ports_available, p.held
                );
            }
            if let Some(f) = &e.fds {
                let limit = f.limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
                let eta = f.exhaustion_seconds.map_or_else(String::new, |s| {
                    format!(", limit reached in {} at this rise", age(s))
                });
                let _ = writeln!(out, "    descriptors: {} of {limit}{eta}", f.used);
            }
            // As wide as the longest remote (an IPv6 one reaches 47 characters).
            let width = e.top_remotes.iter().map(|r| r.remote.len()).max().unwrap_or(0).max(21);
            for r in &e.top_remotes {
                let _ = writeln!(out, "    to {:<width$} {:>6} open", r.remote, r.open);
            }
            if let Some(stacks) = &e.stacks {
                for g in &stacks.groups {
                    let _ = writeln!(
                        out,
                        "    {} opened by {}",
                        g.count,
                        g.leading_function.as_deref().unwrap_or("?")
                    );
                }
                if stacks.in_other_groups > 0 {
                    let _ = writeln!(out, "    {} opened by other stacks", stacks.in_other_groups);
                }
                if let Some(requests) = &stacks.requests {
                    for g in &requests.groups {
                        let _ = writeln!(
                            out,
                            "    {} last requested by {}",
                            g.count,
                            g.leading_function.as_deref().unwrap_or("?")
                        );
                    }
                    if requests.in_other_groups > 0 {
                        let _ = writeln!(
                            out,
                            "    {} last requested by other stacks",
                            requests.in_other_groups
                        );
                    }
                    if requests.before_probing + requests.no_request + requests.request_lost > 0 {
                        let _ = writeln!(
                            out,
                            "    no request seen: {} before probing, {} since; {} request \
                             stacks lost",
                            requests.before_probing, requests.no_request, requests.request_lost
                        );
                    }
                }
                let u = &stacks.unstacked;
                if u.total() > 0 {
                    let _ = writeln!(
                        out,
                        "    no stack: {} opened before capture, {} not sampled, {} missing, {} \
                         held by another process",
                        u.opened_before_capture,
                        u.not_sampled,
                        u.stack_missing,
                        u.held_by_another_process
                    );
                }
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

/// `namespace shop, pod checkout-7d9f, container api (containerd 0123456789ab)`: what is known.
fn placement_words(c: &tracer::containers::Container) -> String {
    let mut parts = Vec::new();
    if let Some(ns) = &c.namespace {
        parts.push(format!("namespace {ns}"));
    }
    if let Some(pod) = c.pod.as_ref().or(c.pod_uid.as_ref()) {
        parts.push(format!("pod {pod}"));
    }
    let runtime = serde_json::to_value(c.runtime)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    parts.push(format!("container {} ({runtime} {})", c.label(), c.short_id()));
    parts.join(", ")
}
