//! `tracer stacks PID`: a process's open connections grouped by the stack that opened them, and
//! for a probed Go HTTP client by the stack of the last request sent on each.
use std::{fmt::Write as _, path::Path};

use clap::Args;
use tracer::api::{
    answers::{StackGroup, StacksReport},
    protocol::Request,
};

use super::{output, text::age};

#[derive(Debug, Args)]
pub struct StacksArgs {
    /// The process.
    pub pid: u32,
    /// Machine-readable output (the API's answer, docs/api.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: StacksArgs) -> anyhow::Result<()> {
    let request = Request::Stacks { pid: args.pid };
    let text = output::answer::<StacksReport>(socket, request, args.json, stacks)?;
    output::emit(&text)?;
    Ok(())
}

fn stacks(report: &StacksReport) -> String {
    let mut out = String::new();
    let placement = report
        .container
        .as_ref()
        .map_or_else(String::new, |c| format!(" in {}", tracer::containers::views::cell(Some(c))));
    let _ = writeln!(
        out,
        "pid {} ({}){placement}: {} open connections, opener stacks ({} policy)",
        report.pid, report.comm, report.open, report.policy
    );
    for group in &report.groups {
        let direction = match group.direction {
            tracer::table::Direction::Outbound => "opened",
            tracer::table::Direction::Inbound => "accepted",
        };
        let remotes = group
            .top_remotes
            .iter()
            .map(|r| format!("{}={}", r.remote, r.open))
            .collect::<Vec<_>>();
        write_group(
            &mut out,
            group,
            &format!("{direction} by"),
            &format!("; {}", remotes.join(", ")),
        );
    }
    let _ = writeln!(
        out,
        "\nopened before capture: {}  not sampled: {}  stack missing: {}  held by another process: {}",
        report.unstacked.opened_before_capture,
        report.unstacked.not_sampled,
        report.unstacked.stack_missing,
        report.unstacked.held_by_another_process
    );
    if let Some(requests) = &report.requests {
        let _ = writeln!(
            out,
            "\nby the last HTTP request sent on each (probed for {}):",
            age(requests.probed_for_seconds)
        );
        for group in &requests.groups {
            write_group(&mut out, group, "last requested by", "");
        }
        let _ = writeln!(
            out,
            "\nrequests before probing: {}  no request: {}  request stack lost: {}",
            requests.before_probing, requests.no_request, requests.request_lost
        );
    }
    out
}

/// One group: its count, `verb` and leading function, id, age and `extra`, then its frames.
fn write_group(out: &mut String, group: &StackGroup, verb: &str, extra: &str) {
    let _ = writeln!(
        out,
        "\n{:>6} {verb} {}  (group {}; oldest {}{extra})",
        group.count,
        group.leading_function.as_deref().unwrap_or("?"),
        group.id,
        age(group.oldest_age_seconds),
    );
    for frame in &group.frames {
        let _ = writeln!(out, "         {frame}");
    }
}
