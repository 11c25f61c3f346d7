//! `cargo xtask deb`: the Debian package of tracer (into target/debian/revision-1/), built by
//! cargo-deb from `[package.metadata.deb]` in tracer/Cargo.toml. It ships the static (musl)
//! release binary, the one the container image has: one build serves both, and the package
//! then depends on no libc, so it installs on any Debian or Ubuntu release. That binary is
//! built first, then asked
//! for its man pages and shell completions (generated from its clap definitions, so they list
//! exactly the flags it takes), which the package ships beside the systemd unit
//! (deploy/systemd/tracer.service), the commented default config (deploy/tracer.toml, a
//! conffile) and the Prometheus alert rules.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::setup;

/// cargo-deb, pinned like the other tools, installed once into the cache outside the clone.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Builds the package with Debian revision `revision` (`1` for releases; the upgrade check
/// builds a `2` to upgrade to); returns the path of the `.deb`.
pub fn build(revision: &str) -> Result<PathBuf> {
    let cargo_deb = setup::cached_cargo_tool("cargo-deb", CARGO_DEB_VERSION)?;
    let root = crate::workspace_root();
    let binary =
        setup::build_release("tracer", setup::Artifact::Bin("tracer"), Some(setup::MUSL_TARGET))?;
    write_generated_assets(&binary, &root.join("target/deb-assets"))?;
    // One directory per revision: cargo-deb clears older packages from its output directory.
    let out_dir = setup::target_dir(&root).join("debian").join(format!("revision-{revision}"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let printed = setup::capture(
        Command::new(&cargo_deb)
            .current_dir(&root)
            .args(["--package", "tracer", "--no-build", "--no-dbgsym", "--quiet"])
            // target/release/ in the assets then means target/<triple>/release/.
            .args(["--target", setup::MUSL_TARGET])
            .args(["--deb-revision", revision, "--output"])
            .arg(&out_dir),
    )?;
    let deb = printed
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo-deb did not print the package it wrote")?;
    if !deb.is_file() {
        bail!("cargo-deb printed {} but there is no such file", deb.display());
    }
    eprintln!("deb: {}", deb.display());
    Ok(deb)
}

/// The man pages (gzipped, as Debian installs them) and completion scripts the binary renders.
fn write_generated_assets(binary: &Path, dir: &Path) -> Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    setup::run_cmd(Command::new(binary).arg("man").arg("--out-dir").arg(&man))?;
    for page in std::fs::read_dir(&man)?.filter_map(Result::ok).map(|e| e.path()) {
        setup::run_cmd(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&page))?;
    }
    for (shell, file) in [("bash", "tracer.bash"), ("zsh", "_tracer"), ("fish", "tracer.fish")] {
        let script = setup::capture(Command::new(binary).args(["completions", shell]))?;
        let path = completions.join(file);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(script.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
