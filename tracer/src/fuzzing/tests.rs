//! The fuzz targets' corpora and regressions, replayed as ordinary unit tests: `cargo test`
//! runs every input the fuzzer kept and every crash it found (after the fix) through the same
//! entries, with no fuzzing build and no nightly.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir` (none when it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

/// The directories under `dir`, by name.
fn subdirectories(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_target_replays_its_corpus_and_its_regressions() {
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, entry) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        if corpus.is_empty() {
            failures.push(format!("tracer/fuzz/corpus/{name}/ is missing or empty"));
        }
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let bytes = match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    failures.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            replayed += 1;
            if std::panic::catch_unwind(|| entry(&bytes)).is_err() {
                failures.push(format!("{name}: {} panics (its message is above)", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("replayed {replayed} inputs of {} targets in {:?}", TARGETS.len(), started.elapsed());
}

/// The fuzz crate builds one target per entry, each calling its entry, and no corpus or
/// regressions directory belongs to a target that is gone.
#[test]
fn the_fuzz_crate_has_one_target_per_entry() {
    let names: BTreeSet<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(names.len(), TARGETS.len(), "target names repeat");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz manifest");
    let bins: BTreeSet<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect();
    assert_eq!(bins, names, "tracer/fuzz/Cargo.toml's [[bin]] targets");
    for name in &names {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let source = std::fs::read_to_string(&path).expect("a fuzz target's source");
        assert!(
            source.contains(&format!("tracer::fuzzing::{name}(data)")),
            "{} calls tracer::fuzzing::{name}",
            path.display()
        );
    }
    for dir in ["corpus", "regressions"] {
        let stale: Vec<String> =
            subdirectories(&fuzz_dir().join(dir)).difference(&names).cloned().collect();
        assert!(stale.is_empty(), "tracer/fuzz/{dir}/ has directories of no target: {stale:?}");
    }
}
