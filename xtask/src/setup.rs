//! `cargo xtask setup`: installs everything the project needs, idempotently. When everything is
//! present it only asks dpkg, rustup and bpf-linker for their versions (well under a second).
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The nightly that builds the eBPF crate (must match `tracer/build.rs`).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_CONFIG: &str = "llvm-config-22";

/// Debian packages by purpose. Build: the CO-RE shim compiler, libbpf headers, and LLVM 22
/// for bpf-linker. Test: ground truth (`ss`), network namespaces, real peers.
const BUILD_PACKAGES: &[&str] = &[
    "clang-22", "llvm-22-dev", "libpolly-22-dev", "libbpf-dev", "libzstd-dev", "zlib1g-dev",
];
const TEST_PACKAGES: &[&str] = &["iproute2", "procps"];

pub fn packages() -> Vec<&'static str> {
    BUILD_PACKAGES.iter().chain(TEST_PACKAGES).copied().collect()
}

pub fn run() -> Result<()> {
    apt_packages(&packages())?;
    ebpf_toolchain()?;
    bpf_linker()?;
    Ok(())
}

fn apt_packages(wanted: &[&str]) -> Result<()> {
    if which("apt-get").is_none() {
        bail!(
            "this host has no apt-get; install these packages (or your distribution's \
             equivalents) and run `cargo xtask setup` again: {}",
            wanted.join(" ")
        );
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    let sudo = needs_sudo();
    run_cmd(apt(sudo).arg("update").arg("-q"))?;
    run_cmd(apt(sudo).args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing))
}

fn apt(sudo: bool) -> Command {
    let mut cmd = if sudo {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    } else {
        Command::new("apt-get")
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn needs_sudo() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() != 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn ebpf_toolchain() -> Result<()> {
    let installed = capture(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", EBPF_TOOLCHAIN]))
        .is_ok_and(|out| out.lines().any(|l| l.starts_with("rust-src")));
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing Rust {EBPF_TOOLCHAIN} with rust-src (builds the eBPF crate)");
    run_cmd(Command::new("rustup").args([
        "toolchain", "install", EBPF_TOOLCHAIN, "--profile", "minimal", "--component", "rust-src",
    ]))
}

fn bpf_linker() -> Result<()> {
    let current = capture(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let bindir = capture(Command::new(LLVM_CONFIG).arg("--bindir")).context("llvm-config-22 --bindir")?;
    let path = format!("{}:{}", bindir.trim(), std::env::var("PATH").unwrap_or_default());
    run_cmd(
        Command::new("cargo")
            .args(["install", "--locked", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path),
    )
}

pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}

pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
