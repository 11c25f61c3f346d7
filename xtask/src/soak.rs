//! `cargo xtask soak [--minutes N] [--seed S]`: the soak test (tracer/tests/soak.rs) for N
//! minutes: worker processes churn, leak, reset, half-close, fork holders and exit at random
//! while the daemon's counts are compared with `ss` and /proc at every checkpoint (every minute
//! from 5 minutes up). It prints the result table; `--write` also puts it into the "Soak"
//! section of docs/performance.md (which `cargo xtask bench` keeps when it rewrites the file).
//! The test command runs the same test for 2 minutes.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Minutes of churn.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// The seed of the workers' random actions (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds between checkpoints (default: 60, or 20 under 5 minutes).
    #[arg(long)]
    check_every: Option<u64>,
    /// Worker processes.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// Probe mode of the daemon under test (auto, fentry, kprobe, tracepoint).
    #[arg(long, default_value = "auto")]
    probe: String,
    /// Write the result into the "Soak" section of docs/performance.md.
    #[arg(long)]
    write: bool,
}

/// The heading of the section the soak owns in docs/performance.md.
pub const SECTION: &str = "## Soak: randomized churn against `ss`";

pub fn run(args: SoakArgs) -> Result<()> {
    crate::require_root()?;
    let root = crate::workspace_root();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
    });
    let out_dir = setup::target_dir(&root).join("soak");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let report = out_dir.join("report.md");
    let _ = std::fs::remove_file(&report);
    // The test drives the `workload` example as a real process.
    setup::run_cmd(Command::new("cargo").args(["build", "--package", "tracer", "--examples"]))?;
    let mut test = Command::new("cargo");
    test.args(["test", "--package", "tracer", "--features", "root-tests", "--test", "soak"])
        .args(["--", "--nocapture", "--test-threads", "1"])
        .env("TRACER_SOAK_MINUTES", args.minutes.to_string())
        .env("TRACER_SOAK_SEED", seed.to_string())
        .env("TRACER_SOAK_WORKERS", args.workers.to_string())
        .env("TRACER_SOAK_REPORT", &report)
        .env("TRACER_TEST_PROBE", &args.probe);
    if let Some(secs) = args.check_every {
        test.env("TRACER_SOAK_CHECK_SECS", secs.to_string());
    }
    let outcome = setup::run_cmd(&mut test);
    let table = std::fs::read_to_string(&report).ok();
    match &table {
        Some(_) => eprintln!("soak: report in {}", report.display()),
        None => eprintln!("soak: the test wrote no report (it failed before its end)"),
    }
    if args.write
        && let Some(table) = &table
    {
        let path = root.join("docs/performance.md");
        let doc = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let verdict = if outcome.is_ok() {
            "passed"
        } else {
            "**failed** (the disagreements are listed in the table)"
        };
        let section = section(table, args.minutes, verdict);
        std::fs::write(&path, replace_section(&doc, &section))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("soak: wrote its section of {}", path.display());
    }
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => bail!("the soak failed (seed {seed}; rerun with --seed {seed}): {e:#}"),
    }
}

/// The Soak section of docs/performance.md around the test's report.
fn section(report: &str, minutes: f64, verdict: &str) -> String {
    format!(
        "{SECTION}\n\n\
         Written by `sudo cargo xtask soak --minutes {minutes} --write` (tracer/tests/soak.rs; \
         2 minutes by default, as the test command runs it). Worker processes churn (connect, \
         write, close), leak, reset (SO_LINGER 0), half-close, get refused, fork holder children \
         that keep some of their connections (several holders, or only one the daemon never saw \
         open them) and exit, cleanly or by SIGKILL, while holding connections. At each \
         checkpoint they pause, and every connection of a tracked process is compared with `ss \
         -tanpe` (open, owned by a holder `ss` names) and with /proc (sockets held that `ss` \
         cannot see, reset or closed by the peer after a half-close, against the daemon's open \
         connections `ss` does not show); `agree (N s)` is how long the views took to agree \
         (holders move at the next 1-s reconcile). Corrections must not outnumber counted \
         losses (events lost, or program runs the kernel skipped or never made). `cargo xtask soak` without \
         `--minutes` runs the default 30 minutes. This run {verdict}.\n\n{report}\n"
    )
}

/// `doc` with its Soak section replaced by `section` (appended when it has none).
pub fn replace_section(doc: &str, section: &str) -> String {
    match doc.find(SECTION) {
        Some(start) => {
            let after = &doc[start + SECTION.len()..];
            let end = after.find("\n## ").map_or(doc.len(), |i| start + SECTION.len() + i + 1);
            format!("{}{section}{}", &doc[..start], &doc[end..])
        }
        None => format!("{}\n{section}", doc.trim_end_matches('\n').to_owned() + "\n"),
    }
}

/// The Soak section of `doc`, if it has one (kept by `cargo xtask bench`).
pub fn existing_section(doc: &str) -> Option<&str> {
    let start = doc.find(SECTION)?;
    let after = &doc[start + SECTION.len()..];
    let end = after.find("\n## ").map_or(doc.len(), |i| start + SECTION.len() + i + 1);
    Some(&doc[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        let new = format!("{SECTION}\n\nnew\n");
        let doc = format!("# P\n\n## A\n\na\n\n{SECTION}\n\nold\n\n## B\n\nb\n");
        assert_eq!(replace_section(&doc, &new), format!("# P\n\n## A\n\na\n\n{new}## B\n\nb\n"));
        assert_eq!(existing_section(&doc), Some(format!("{SECTION}\n\nold\n\n").as_str()));
        let last = format!("# P\n\n{SECTION}\n\nold\n");
        assert_eq!(replace_section(&last, &new), format!("# P\n\n{new}"));
        assert_eq!(replace_section("# P\n\ntext\n", &new), format!("# P\n\ntext\n\n{new}"));
        assert_eq!(existing_section("# P\n"), None);
    }
}
