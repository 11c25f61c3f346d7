//! `cargo xtask fuzz [--seconds N] [--target NAME]`: runs the fuzz targets of `tracer/fuzz/`
//! (cargo-fuzz, libFuzzer) with the nightly pinned in tracer-ebpf/ebpf-toolchain, each for N
//! seconds, then minimizes each target's corpus (`cargo fuzz cmin`) so that what is committed
//! stays small (the test command replays all of it), and prints a table: target, seconds,
//! executions, executions per second, corpus files, crashes. A crash leaves its input in
//! `tracer/fuzz/artifacts/<target>/` (not committed); once the parser is fixed, the input goes
//! into `tracer/fuzz/regressions/<target>/`, which `cargo test` replays.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::setup::{self, EBPF_TOOLCHAIN};

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Only this target (repeatable; `cargo fuzz list --fuzz-dir tracer/fuzz` lists them).
    #[arg(long)]
    target: Vec<String>,
}

/// How long one input may run before libFuzzer reports it as a timeout: every parser answers
/// in microseconds, and the daemon's event loop waits for some of them.
const TIMEOUT_SECONDS: u64 = 10;

/// What one target's run did.
struct Outcome {
    target: String,
    seconds: u64,
    execs: u64,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let cargo_fuzz = setup::cargo_fuzz()?;
    let root = crate::workspace_root();
    let fuzz_dir = root.join("tracer/fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen: Vec<String> = if args.target.is_empty() {
        all.clone()
    } else {
        for t in &args.target {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets: {}", all.join(", "));
            }
        }
        args.target.clone()
    };
    // cargo-fuzz runs as a cargo subcommand: through cargo, so that `+toolchain` picks the
    // nightly, with cargo-fuzz's directory on the PATH.
    let bin_dir = cargo_fuzz.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let cargo = |subcommand: &str| {
        let mut cmd = Command::new("cargo");
        cmd.arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["fuzz", subcommand, "--fuzz-dir"])
            .arg(&fuzz_dir)
            .env("PATH", &path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(&root);
        cmd
    };
    eprintln!("fuzz: building {} targets with {EBPF_TOOLCHAIN}", all.len());
    setup::run_cmd(&mut cargo("build"))?;
    let logs = setup::target_dir(&root).join("fuzz-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let before = files(&artifacts);
        let log = logs.join(format!("{target}.log"));
        eprintln!("fuzz: {target} for {} s (log: {})", args.seconds, log.display());
        let started = Instant::now();
        let output = cargo("run")
            .arg(target)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-timeout={TIMEOUT_SECONDS}"))
            .arg("-print_final_stats=1")
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        std::fs::write(&log, stderr.as_bytes())
            .with_context(|| format!("writing {}", log.display()))?;
        let seconds = started.elapsed().as_secs();
        let crashes: Vec<PathBuf> =
            files(&artifacts).into_iter().filter(|f| !before.contains(f)).collect();
        if !output.status.success() && crashes.is_empty() {
            bail!(
                "fuzz target {target} failed without a crash input ({}); see {}",
                output.status,
                log.display()
            );
        }
        let execs = stat(&stderr, "stat::number_of_executed_units").unwrap_or(0);
        // The fewest inputs that reach every edge the corpus reaches (edges only, not hit
        // counts: counted hits keep ten times as many files): what the test command replays.
        // The named seeds stay as they are, whatever cmin keeps.
        let corpus = fuzz_dir.join("corpus").join(target);
        let seeds = seeds(&corpus)?;
        setup::run_cmd(
            cargo("cmin")
                .arg(target)
                .arg("--")
                .arg(format!("-timeout={TIMEOUT_SECONDS}"))
                .arg("-use_counters=0"),
        )?;
        restore_seeds(&corpus, &seeds)?;
        outcomes.push(Outcome {
            target: target.clone(),
            seconds,
            execs,
            corpus: files(&corpus).len(),
            crashes,
        });
    }
    print_summary(&outcomes);
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.crashes.is_empty()).collect();
    if !crashed.is_empty() {
        for o in &crashed {
            for c in &o.crashes {
                eprintln!("fuzz: {} crashed on {}", o.target, c.display());
            }
        }
        bail!(
            "{} target(s) crashed: fix the parser, then move each input into \
             tracer/fuzz/regressions/<target>/",
            crashed.len()
        );
    }
    Ok(())
}

/// The targets of the fuzz crate's manifest, in its order.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let manifest = fuzz_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    Ok(text
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

/// Whether a corpus file is one libFuzzer named (the SHA-1 of its bytes), not a seed a person
/// named after what it is.
fn named_by_fuzzer(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The seeds of a corpus: (path, bytes).
fn seeds(corpus: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    files(corpus)
        .into_iter()
        .filter(|p| !named_by_fuzzer(p))
        .map(|p| {
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p, bytes))
        })
        .collect()
}

/// Puts the seeds back under their names, dropping the copies cmin kept under hashes.
fn restore_seeds(corpus: &Path, seeds: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    for path in files(corpus).into_iter().filter(|p| named_by_fuzzer(p)) {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if seeds.iter().any(|(_, seed)| *seed == bytes) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for (path, bytes) in seeds {
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A `-print_final_stats` line's value (`stat::number_of_executed_units: 123`).
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(name)?.trim_start_matches(':').trim().parse().ok())
}

fn print_summary(outcomes: &[Outcome]) {
    println!(
        "{:<16} {:>8} {:>12} {:>10} {:>8} {:>8}",
        "TARGET", "SECONDS", "EXECS", "EXECS/S", "CORPUS", "CRASHES"
    );
    for o in outcomes {
        println!(
            "{:<16} {:>8} {:>12} {:>10} {:>8} {:>8}",
            o.target,
            o.seconds,
            o.execs,
            o.execs / o.seconds.max(1),
            o.corpus,
            o.crashes.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#1234 DONE cov: 10\nstat::number_of_executed_units: 987654\n\
                   stat::average_exec_per_sec:     16460\n";
        assert_eq!(stat(log, "stat::number_of_executed_units"), Some(987_654));
        assert_eq!(stat(log, "stat::average_exec_per_sec"), Some(16_460));
        assert_eq!(stat(log, "stat::peak_rss_mb"), None);
    }

    #[test]
    fn seeds_are_the_files_a_person_named() {
        assert!(named_by_fuzzer(Path::new("c/0a1b2c3d4e5f60718293a4b5c6d7e8f901234567")));
        assert!(!named_by_fuzzer(Path::new("c/prometheus_scrape")));
        assert!(!named_by_fuzzer(Path::new("c/0a1b2c3d4e5f60718293a4b5c6d7e8f90123456")));
    }

    #[test]
    fn lists_the_fuzz_crate_targets() {
        let fuzz_dir = crate::workspace_root().join("tracer/fuzz");
        let targets = targets(&fuzz_dir).expect("the fuzz manifest");
        assert!(targets.iter().any(|t| t == "api_request"), "{targets:?}");
        for t in &targets {
            assert!(fuzz_dir.join("fuzz_targets").join(format!("{t}.rs")).is_file(), "{t}");
        }
    }
}
