//! `cargo xtask lint`: the gate every commit passes. rustfmt over the workspace, clippy with
//! warnings denied over every host crate and target, and clippy over the eBPF crate on its BPF
//! target with the pinned nightly (the host never compiles it).
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::setup::{self, EBPF_TOOLCHAIN};

pub fn run() -> Result<()> {
    let root = crate::workspace_root();
    library_without_clap(&root)?;
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
