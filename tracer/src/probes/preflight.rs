//! Checks made before loading anything, so that a user gets one clear message instead of a
//! verifier log: privileges, BTF, kernel version, tracefs.
use std::{fs, io, path::Path};

use super::error::{ProbeError, Result};

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// (major, minor) parsed from a release such as `6.1.0-27-cloud-amd64`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn check() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && !has_bpf_capabilities() {
        return Err(ProbeError::MissingPrivileges);
    }
    if !Path::new(BTF_PATH).exists() {
        return Err(ProbeError::NoBtf);
    }
    let release = kernel_release();
    match parse_kernel_version(&release) {
        Some(version) if version >= (5, 8) => {}
        _ => return Err(ProbeError::KernelTooOld { found: release }),
    }
    ensure_tracefs()
}

/// CAP_BPF and CAP_PERFMON in the effective set.
fn has_bpf_capabilities() -> bool {
    use crate::privileges::{CAP_BPF, CAP_PERFMON, Privileges};
    Privileges::of_self().is_some_and(|p| p.has(CAP_BPF) && p.has(CAP_PERFMON))
}

/// aya attaches classic tracepoints through tracefs ids; some hosts (this project's CI VMs
/// among them) boot without tracefs mounted.
fn ensure_tracefs() -> Result<()> {
    let mounted = |p: &str| Path::new(p).join("events").is_dir();
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    // Mounted but unreadable (mode 0700) looks the same as not mounted to a process without
    // CAP_DAC_READ_SEARCH: its mount then fails with EBUSY, whose message would mislead.
    if fs::metadata(TRACEFS).is_ok()
        && fs::read_dir(TRACEFS).is_err_and(|e| e.kind() == io::ErrorKind::PermissionDenied)
    {
        return Err(ProbeError::TracefsUnreadable { path: TRACEFS.into() });
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; mount(2) has no memory preconditions.
    let rc = unsafe {
        libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs {
            path: TRACEFS.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The tracefs events directory, once [`check`] made sure it is mounted.
pub fn tracefs_events() -> &'static Path {
    if Path::new(TRACEFS).join("events").is_dir() {
        Path::new("/sys/kernel/tracing/events")
    } else {
        Path::new("/sys/kernel/debug/tracing/events")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distribution_kernel_releases() {
        assert_eq!(parse_kernel_version("5.10.0-33-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_kernel_version("6.12.48+deb13-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }
}
