//! `cargo xtask deploy-check` (part of `cargo xtask test`): the deployment files checked with
//! the tools their users run.
//! - The systemd unit: `systemd-analyze verify` inside a Debian root where the package is
//!   installed, and `systemd-analyze security --offline=yes` at most [`MAX_EXPOSURE`].
//! - The Debian package: its files, then installed, upgraded and purged with dpkg in a fresh
//!   Debian root (rootfs.rs). The purge must leave the root as it was before the install, but
//!   for dpkg's own records.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::{deb, rootfs};
use crate::setup;

/// The highest exposure `systemd-analyze security` may give the unit (docs/deploy.md lists the
/// settings that would lower it and the functions each would break).
pub const MAX_EXPOSURE: f64 = 3.0;

const UNIT: &str = "deploy/systemd/tracer.service";

pub fn run() -> Result<()> {
    let root = crate::workspace_root();
    let exposure = unit_exposure(&root.join(UNIT))?;
    eprintln!("deploy-check: {UNIT}: exposure {exposure:.1} (at most {MAX_EXPOSURE:.1})");
    let first = deb::build("1")?;
    let second = deb::build("2")?;
    package_files(&root, &first)?;
    lifecycle(&root, &first, &second)?;
    eprintln!("deploy-check: the package installs, upgrades and purges cleanly");
    Ok(())
}

/// `systemd-analyze security --offline=yes`'s overall exposure of `unit`, refused above
/// [`MAX_EXPOSURE`].
fn unit_exposure(unit: &Path) -> Result<f64> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .context("running systemd-analyze (Debian's package systemd)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for tracer.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| {
            format!("no overall exposure in systemd-analyze security's output:\n{text}")
        })?;
    if exposure > MAX_EXPOSURE {
        let findings: String =
            text.lines().filter(|l| l.contains('✗')).map(|l| format!("{l}\n")).collect();
        bail!("{}: exposure {exposure:.1} is above {MAX_EXPOSURE:.1}:\n{findings}", unit.display());
    }
    Ok(exposure)
}

/// What the package must hold: the binary, the unit, the conffile equal to deploy/tracer.toml,
/// a man page per command the binary has, the three completion scripts, the alert rules.
fn package_files(root: &Path, deb: &Path) -> Result<()> {
    let listing = setup::capture(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let files: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    let binary = setup::target_dir(root).join("release/tracer");
    let help = setup::capture(Command::new(&binary).arg("--help"))?;
    let mut wanted: Vec<String> = [
        "/usr/bin/tracer",
        "/usr/lib/systemd/system/tracer.service",
        "/etc/tracer/tracer.toml",
        "/usr/share/man/man1/tracer.1.gz",
        "/usr/share/bash-completion/completions/tracer",
        "/usr/share/zsh/vendor-completions/_tracer",
        "/usr/share/fish/vendor_completions.d/tracer.fish",
        "/usr/share/tracer/prometheus/alerts.yml",
        "/usr/share/doc/tracer/copyright",
    ]
    .map(str::to_owned)
    .to_vec();
    // `Commands:` of --help: one page each (help is clap's own).
    let commands = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help");
    wanted.extend(commands.map(|c| format!("/usr/share/man/man1/tracer-{c}.1.gz")));
    let missing: Vec<&String> = wanted.iter().filter(|w| !files.contains(*w)).collect();
    ensure!(missing.is_empty(), "{} lacks {missing:?}; it holds:\n{listing}", deb.display());
    let conffiles = dpkg_control_file(deb, "conffiles")?;
    ensure!(
        conffiles.trim() == "/etc/tracer/tracer.toml",
        "conffiles should be /etc/tracer/tracer.toml alone, not {conffiles:?}"
    );
    Ok(())
}

fn dpkg_control_file(deb: &Path, name: &str) -> Result<String> {
    setup::capture(Command::new("dpkg-deb").arg("--info").arg(deb).arg(name))
}

/// Install, a change to the conffile, upgrade (the change kept), purge (nothing left) in a
/// fresh Debian root. dpkg runs the maintainer scripts in it (chroot), so systemd's helpers
/// enable the unit as they would on a host.
fn lifecycle(root: &Path, first: &Path, second: &Path) -> Result<()> {
    let dir = setup::target_dir(root).join("deploy-check/rootfs");
    rootfs::unpack(&dir)?;
    for deb in [first, second] {
        std::fs::copy(deb, dir.join("tmp").join(file_name(deb)))?;
    }
    let before = tree(&dir)?;
    let dpkg = |args: &[&str]| -> Result<String> {
        setup::capture(Command::new("dpkg").arg(format!("--root={}", dir.display())).args(args))
    };
    let chroot = |args: &[&str]| -> Result<String> {
        setup::capture(Command::new("chroot").arg(&dir).args(args))
    };
    let in_root = |deb: &Path| format!("{}/tmp/{}", dir.display(), file_name(deb));

    dpkg(&["--install", &in_root(first)])?;
    let version = chroot(&["/usr/bin/tracer", "--version"])?;
    ensure!(version.starts_with("tracer "), "tracer --version in the root: {version}");
    let conf = std::fs::read_to_string(dir.join("etc/tracer/tracer.toml"))?;
    ensure!(
        conf == std::fs::read_to_string(root.join("deploy/tracer.toml"))?,
        "/etc/tracer/tracer.toml is not deploy/tracer.toml"
    );
    let enabled = dir.join("etc/systemd/system/multi-user.target.wants/tracer.service");
    ensure!(enabled.is_symlink(), "the package did not enable tracer.service");
    // verify resolves ExecStart= and the man pages in Documentation= in the root.
    chroot(&["systemd-analyze", "verify", "--man=no", "tracer.service"])
        .context("systemd-analyze verify of the installed unit")?;

    let mut changed = conf.clone();
    changed.push_str("probe = \"tracepoint\"\n");
    std::fs::write(dir.join("etc/tracer/tracer.toml"), &changed)?;
    dpkg(&["--install", &in_root(second)])?;
    let status = chroot(&["dpkg-query", "-W", "-f=${Version} ${Status}", "tracer"])?;
    ensure!(status.starts_with("0.1.0-2 install ok installed"), "after the upgrade: {status}");
    ensure!(
        std::fs::read_to_string(dir.join("etc/tracer/tracer.toml"))? == changed,
        "the upgrade did not keep the changed /etc/tracer/tracer.toml"
    );

    dpkg(&["--purge", "tracer"])?;
    let after = tree(&dir)?;
    // dpkg's own database and log record the package's history: policy keeps them. /run is a
    // tmpfs on a running system (systemd-analyze verify left its marker there).
    let left: Vec<&String> = after
        .symmetric_difference(&before)
        .filter(|p| !["/var/lib/dpkg/", "/var/log/", "/run/"].iter().any(|d| p.starts_with(d)))
        .collect();
    ensure!(left.is_empty(), "the purge left the root changed: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Every path under `dir` (as seen inside it), with its kind and mode, for before/after.
fn tree(dir: &Path) -> Result<BTreeSet<String>> {
    fn walk(base: &Path, at: &PathBuf, out: &mut BTreeSet<String>) -> Result<()> {
        for entry in std::fs::read_dir(at).with_context(|| format!("reading {}", at.display()))? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let inside = format!("/{}", path.strip_prefix(base).unwrap_or(&path).display());
            use std::os::unix::fs::PermissionsExt;
            out.insert(format!("{inside} {:o}", meta.permissions().mode()));
            if meta.is_dir() {
                walk(base, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(dir, &dir.to_path_buf(), &mut out)?;
    Ok(out)
}
