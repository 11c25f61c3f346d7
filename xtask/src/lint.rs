//! `cargo xtask lint`: the gate every commit passes. rustfmt over the workspace, clippy with
//! warnings denied over every host crate and target, and clippy over the eBPF crate on its BPF
//! target with the pinned nightly (the host never compiles it).
use std::process::Command;

use anyhow::Result;

use crate::setup::{self, EBPF_TOOLCHAIN};

pub fn run() -> Result<()> {
    let root = crate::workspace_root();
    eprintln!("lint: rustfmt");
    setup::run_cmd(Command::new("cargo").args(["fmt", "--all", "--check"]).current_dir(&root))?;
    eprintln!("lint: clippy (host crates, all targets)");
    setup::run_cmd(
        Command::new("cargo")
            .args(["clippy", "--workspace", "--exclude", "tracer-ebpf", "--all-targets"])
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
