//! A Debian root file system to install the package into: bookworm, minimal, with systemd (its
//! `deb-systemd-helper` runs the unit's maintainer scripts) and its own kernel, made once with debootstrap from
//! the Debian mirror the host's apt uses, and kept as a tarball in the cache outside the clone
//! (`~/.cache/tracer/rootfs/`). Each use unpacks a fresh copy, so no test sees another's files.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{setup, vm::kernels::Mirror};

const SUITE: &str = "bookworm";
/// systemd as init (and its helpers the maintainer scripts call), the suite's cloud kernel with
/// its modules and initramfs (the guest of service_vm.rs boots them), udev for the guest's
/// devices, and what the checks in the guest use (ss and ip, curl, bpftool).
const INCLUDE: &str =
    "systemd,systemd-sysv,dbus,udev,linux-image-cloud-amd64,iproute2,curl,procps,bpftool";

/// The cached tarball of the root file system, made first when it is missing.
pub fn tarball() -> Result<PathBuf> {
    let dir = setup::cache_dir().join("rootfs");
    let tarball = dir.join(format!("{SUITE}-{}.tar", INCLUDE.replace(',', "-")));
    if tarball.is_file() {
        return Ok(tarball);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mirror = Mirror::from_host_sources()?;
    let work = dir.join(format!("{SUITE}.debootstrap"));
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    eprintln!(
        "rootfs: debootstrap {SUITE} from {} into {} (about two minutes)",
        mirror.uri,
        work.display()
    );
    let log = dir.join(format!("{SUITE}.debootstrap.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    setup::run_cmd(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&work)
            .arg(&mirror.uri)
            .stdout(out),
    )
    .with_context(|| {
        format!("debootstrap of the test root file system (log: {})", log.display())
    })?;
    let partial = tarball.with_extension("tar.partial");
    setup::run_cmd(
        Command::new("tar")
            .arg("-C")
            .arg(&work)
            .arg("-cf")
            .arg(&partial)
            .args(["--numeric-owner", "."]),
    )?;
    std::fs::rename(&partial, &tarball)?;
    std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    Ok(tarball)
}

/// A fresh copy of the root file system in `dir` (emptied first).
pub fn unpack(dir: &Path) -> Result<()> {
    let tarball = tarball()?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    setup::run_cmd(
        Command::new("tar").arg("-C").arg(dir).arg("-xf").arg(&tarball).arg("--numeric-owner"),
    )
}
