//! `cargo xtask lint`: the gate every commit passes. rustfmt over the workspace, clippy with
//! warnings denied over every host crate and target, and clippy over the eBPF crate on its BPF
//! target with the pinned nightly (the host never compiles it).
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::setup::{self, EBPF_TOOLCHAIN};

pub fn run() -> Result<()> {
    let root = crate::workspace_root();
    library_without_clap(&root)?;
    root_tests_are_gated(&root)?;
    eprintln!("lint: rustfmt");
    setup::run_cmd(Command::new("cargo").args(["fmt", "--all", "--check"]).current_dir(&root))?;
    eprintln!("lint: clippy (host crates, all targets)");
    setup::run_cmd(
        Command::new("cargo")
            .args(["clippy", "--workspace", "--exclude", "tracer-ebpf", "--all-targets"])
            .args(["--features", "tracer/root-tests"])
            .args(["--", "-D", "warnings"])
            .current_dir(&root),
    )?;
    eprintln!("lint: clippy (tracer-ebpf, BPF target)");
    setup::run_cmd(
        Command::new("cargo")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["clippy", "--package", "tracer-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .current_dir(&root),
    )
}

/// The library (`tracer/src` but the binary's `main.rs` and `cli/`) must not use clap: its
/// types know their own names, and the CLI maps its arguments to them.
fn library_without_clap(root: &Path) -> Result<()> {
    let src = root.join("tracer/src");
    let mut offenders = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path == src.join("cli") || path == src.join("main.rs") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if text.contains("clap::") || text.contains("use clap") {
                    offenders.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
                }
            }
        }
    }
    if !offenders.is_empty() {
        bail!(
            "the library uses clap in {}: keep clap in the binary (tracer/src/cli)",
            offenders.join(", ")
        );
    }
    Ok(())
}

/// Every integration test of the tracer crate needs root and BPF, so each must be declared with
/// `required-features = ["root-tests"]`: otherwise a plain `cargo test` without root builds and
/// runs it, and it fails for want of privileges rather than for a defect.
fn root_tests_are_gated(root: &Path) -> Result<()> {
    let manifest_path = root.join("tracer/Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let gated = gated_tests(&manifest);
    let tests_dir = root.join("tracer/tests");
    let mut missing = Vec::new();
    for entry in
        std::fs::read_dir(&tests_dir).with_context(|| format!("reading {}", tests_dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
            && !gated.iter().any(|g| g == name)
        {
            missing.push(name.to_owned());
        }
    }
    missing.sort();
    if !missing.is_empty() {
        bail!(
            "tracer/tests/{{{}}}.rs: add a [[test]] with required-features = [\"root-tests\"] to \
             tracer/Cargo.toml for each",
            missing.join(",")
        );
    }
    Ok(())
}

/// Names of the `[[test]]` tables of a manifest that require the `root-tests` feature.
fn gated_tests(manifest: &str) -> Vec<String> {
    let mut gated = Vec::new();
    for table in manifest.split("[[test]]").skip(1) {
        let body = table.split("\n[").next().unwrap_or(table);
        let name = body.lines().find_map(|line| {
            let value = line.trim().strip_prefix("name")?.trim_start().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        });
        if let Some(name) = name
            && body.contains("required-features = [\"root-tests\"]")
        {
            gated.push(name);
        }
    }
    gated
}

#[cfg(test)]
mod tests {
    use super::gated_tests;

    #[test]
    fn reads_the_gated_test_tables_only() {
        let manifest = "[package]\nname = \"tracer\"\n\n[[test]]\nname = \"api\"\n\
                        required-features = [\"root-tests\"]\n\n[[test]]\nname = \"open\"\n\n\
                        [[bench]]\nname = \"pipeline\"\nrequired-features = [\"root-tests\"]\n";
        assert_eq!(gated_tests(manifest), vec!["api".to_owned()]);
    }
}
