//! Project tasks: `cargo xtask setup | lint | run | test | vm-test | bench | fuzz | soak | deb | image | deploy-check`.
mod bench;
mod fuzz;
mod lint;
mod package;
mod setup;
mod soak;
mod vm;

use std::process::Command;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set-up, build, run and test tasks for tracer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every build and test dependency (idempotent; seconds when all is present).
    Setup,
    /// The lint gate: rustfmt check, clippy with warnings denied over every crate and target
    /// (the eBPF crate on its BPF target too). `cargo xtask test` runs it first.
    Lint,
    /// Set up, build in release mode, and run the daemon (`tracer run`) with the given flags.
    Run {
        /// Flags passed to `tracer run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, run the lint gate, then every test: the kernel matrix (Debian 5.10, 6.1, 6.12
    /// under qemu, every probe mode), then unit and BPF integration tests on this kernel.
    /// Needs root.
    Test {
        /// Skip the kernel matrix (for a quick local run; CI runs it).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (after `--`, e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the BPF integration tests on Debian kernels under qemu and on the host,
    /// in every probe mode; prints a kernel x mode table.
    VmTest(vm::Args),
    /// Overhead and scale benchmarks; writes docs/performance.md (see `cargo xtask bench --help`).
    Bench(bench::BenchArgs),
    /// Set up, then run every fuzz target (tracer/fuzz, cargo-fuzz with the pinned nightly) for
    /// --seconds each, minimize each corpus and print executions and crashes per target.
    Fuzz(fuzz::FuzzArgs),
    /// Set up, then run the soak test (tracer/tests/soak.rs) for --minutes: randomized churn,
    /// leaks, resets, holders and exits, counts checked against `ss` every minute; prints the
    /// result table (--write puts it into docs/performance.md). Needs root.
    Soak(soak::SoakArgs),
    /// Build the Debian package (cargo-deb) into target/debian/revision-1/: the binary, its systemd unit,
    /// the commented default /etc/tracer/tracer.toml, man pages, completions, alert rules.
    Deb,
    /// Check the deployment files with their users' tools: the systemd unit (systemd-analyze
    /// verify, security score), the Debian package installed, upgraded and purged in a Debian
    /// root. Part of `cargo xtask test`.
    DeployCheck(package::check::Args),
    /// Build the container image offline with podman (the static musl binary on an empty
    /// base, OCI labels), saved as an OCI archive in target/image/.
    Image,
    /// Development: only the benchmark's churn load, for profiling a tracer by hand.
    /// The guest half of deploy-check's boot of the package under systemd (run inside the
    /// guest only).
    #[command(hide = true)]
    ServiceGuest,
    #[command(hide = true)]
    Load {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long)]
        ipv6: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Lint => {
            setup::run()?;
            lint::run()
        }
        Task::Run { args } => {
            setup::run()?;
            let binary = setup::build_release_tracer()?;
            let mut cmd = Command::new(binary);
            cmd.arg("run").args(&args);
            // Replace this process so signals (Ctrl-C) reach the daemon directly.
            use std::os::unix::process::CommandExt;
            Err(cmd.exec().into())
        }
        Task::Test { no_vm, args } => {
            setup::run()?;
            require_root()?;
            require_free_space(if no_vm { HOST_TEST_BUILD_GIB } else { FULL_TEST_BUILD_GIB })?;
            lint::run()?;
            package::check::run(&package::check::Args::all())?;
            // The kernel matrix first when it runs: its table then does not bury cargo test's
            // summary, which ends the output.
            if !no_vm {
                vm::run(vm::Args::ci())?;
            }
            // The integration tests drive the `workload` example as a real process: build it as
            // a plain binary (--all-targets builds examples only as test harnesses).
            setup::run_cmd(Command::new("cargo").args([
                "build",
                "--package",
                "tracer",
                "--examples",
            ]))?;
            // BPF integration tests (the root-tests feature) load probes and drive real
            // sockets: run them one at a time so their exact counts are not disturbed by each
            // other's load.
            setup::run_cmd(
                Command::new("cargo")
                    .args(["test", "--workspace", "--exclude", "tracer-ebpf", "--all-targets"])
                    .args(["--features", "tracer/root-tests", "--", "--test-threads", "1"])
                    .args(&args),
            )
        }
        Task::Bench(args) => {
            setup::run()?;
            bench::run(args)
        }
        Task::Fuzz(args) => {
            setup::run()?;
            fuzz::run(args)
        }
        Task::Soak(args) => {
            setup::run()?;
            soak::run(args)
        }
        Task::Deb => {
            setup::run()?;
            package::deb::build("1").map(drop)
        }
        Task::Image => {
            setup::run()?;
            package::image::build().map(drop)
        }
        Task::DeployCheck(args) => {
            setup::run()?;
            package::check::run(&args)
        }
        Task::ServiceGuest => package::service_vm::guest(),
        Task::Load { seconds, threads, ipv6 } => bench::churn(seconds, threads, ipv6),
        Task::VmTest(args) => {
            setup::run()?;
            vm::run(args)
        }
    }
}

fn require_root() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() != Some("0") {
        anyhow::bail!("the tests load BPF programs: run `sudo cargo xtask test` (or as root)");
    }
    Ok(())
}

/// What a clean clone's test builds take in `target/`, with some room: measured at 9.4 GiB
/// (the host's debug build 5.0, the musl tests for the VMs 3.8, release, kernels and images).
const FULL_TEST_BUILD_GIB: u64 = 11;
const HOST_TEST_BUILD_GIB: u64 = 7;

/// A full disk fails the run half an hour in, as a linker error that does not say why; say it
/// first.
fn require_free_space(gib: u64) -> Result<()> {
    let target = workspace_root().join("target");
    let probe = if target.exists() { target } else { workspace_root() };
    let path = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct it is given; `path` is NUL-terminated.
    let free = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stats) != 0 {
            return Ok(()); // Unknown: let the build say it.
        }
        stats.f_bavail as u64 * stats.f_frsize as u64
    };
    let free_gib = free / (1 << 30);
    if free_gib < gib {
        anyhow::bail!(
            "{} has {free_gib} GiB free and the test builds need about {gib} GiB: \
             free some space (`cargo clean` in old clones) and run again",
            probe.display()
        );
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Into::into).unwrap_or_default()
}
