//! kprobe mode's probes (the rows of [`super::hooks`] of kind kprobe and kretprobe: tcp_connect,
//! tcp_close, the return of inet_csk_accept).
//!
//! The probes are created through tracefs `kprobe_events`, not the kprobe PMU that aya uses,
//! for two things only tracefs offers on every kernel from 5.10:
//! - a kretprobe's `maxactive`, how many calls may be pending at once. The PMU's default is
//!   about two per CPU, and every thread blocked in accept() holds one: a busy server would
//!   make the kretprobe miss returns. We ask for the kernel's maximum.
//! - the kernel's count of missed hits per probe (`kprobe_profile`), which `tracer status`
//!   and the metrics report. A missed accept return loses nothing (the accept syscall's exit
//!   reports the same socket), but the count says how often it happened.
use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{Ebpf, programs::KProbe};

use super::{
    error::{ProbeError, Result},
    preflight, program, step,
};

/// The largest `maxactive` tracefs accepts (KRETPROBE_MAXACTIVE_MAX).
const KRETPROBE_MAXACTIVE: u32 = 4096;
/// The tracefs event group our probes live in; event names carry the daemon's pid.
const GROUP: &str = "tracer";

/// The attached probes. Dropping it detaches them and removes their tracefs events.
pub struct Kprobes {
    tracefs: PathBuf,
    attached: Vec<AttachedProbe>,
}

struct AttachedProbe {
    function: &'static str,
    event: String,
    /// The perf event the program is attached to; closing it detaches the program.
    perf: Option<OwnedFd>,
}

/// Hits and misses of one probe, as the kernel counts them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeMisses {
    /// The probed kernel function, with `:return` for a return probe.
    pub probe: String,
    pub hits: u64,
    /// Calls the probe could not handle: for a kretprobe, returns missed because `maxactive`
    /// calls were already pending; for any probe, hits while another kprobe was running.
    pub missed: u64,
}

impl Kprobes {
    /// An empty set, once tracefs shows that this kernel has kprobe events.
    pub fn open() -> Result<Self> {
        let tracefs = tracefs_root();
        if !tracefs.join("kprobe_events").exists() {
            return Err(ProbeError::NoKprobes("kprobe_events in tracefs (/sys/kernel/tracing)"));
        }
        Ok(Self { tracefs, attached: Vec::new() })
    }

    /// Loads program `name` and attaches it to a new tracefs probe on `function` (its return
    /// with `is_return`).
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        name: &'static str,
        function: &'static str,
        is_return: bool,
    ) -> Result<()> {
        let prog: &mut KProbe = program(ebpf, name)?;
        prog.load().map_err(step("load", name))?;
        let event = format!(
            "tracer_{}_{function}{}",
            std::process::id(),
            if is_return { "_ret" } else { "" }
        );
        let definition = if is_return {
            format!("r{KRETPROBE_MAXACTIVE}:{GROUP}/{event} {function}")
        } else {
            format!("p:{GROUP}/{event} {function}")
        };
        write_kprobe_events(&self.tracefs, &definition).map_err(|source| ProbeError::Kprobe {
            what: format!("creating `{definition}`"),
            source,
        })?;
        // Registered now: dropping the set removes it even if the attach below fails.
        self.attached.push(AttachedProbe { function, event: event.clone(), perf: None });
        let perf = open_and_attach(&self.tracefs, &event, prog).map_err(|source| {
            ProbeError::Kprobe { what: format!("attaching {name} to {function}"), source }
        })?;
        if let Some(last) = self.attached.last_mut() {
            last.perf = Some(perf);
        }
        Ok(())
    }

    /// Hits and misses of each probe, from tracefs `kprobe_profile`.
    pub fn misses(&self) -> io::Result<Vec<ProbeMisses>> {
        let profile = std::fs::read_to_string(self.tracefs.join("kprobe_profile"))?;
        Ok(self
            .attached
            .iter()
            .filter_map(|probe| {
                let (hits, missed) = profile_line(&profile, &probe.event)?;
                let suffix = if probe.event.ends_with("_ret") { ":return" } else { "" };
                Some(ProbeMisses { probe: format!("{}{suffix}", probe.function), hits, missed })
            })
            .collect())
    }
}

impl Drop for Kprobes {
    fn drop(&mut self) {
        for probe in &mut self.attached {
            // Detach first: tracefs refuses to remove an event that is still in use.
            probe.perf = None;
            if let Err(e) =
                write_kprobe_events(&self.tracefs, &format!("-:{GROUP}/{}", probe.event))
            {
                log::warn!("could not remove kprobe event {GROUP}/{}: {e}", probe.event);
            }
        }
    }
}

pub(super) fn tracefs_root() -> PathBuf {
    preflight::tracefs_events()
        .parent()
        .map_or_else(|| PathBuf::from("/sys/kernel/tracing"), Path::to_path_buf)
}

fn write_kprobe_events(tracefs: &Path, line: &str) -> io::Result<()> {
    // Append: truncating would remove every other tool's kprobes.
    let mut file = OpenOptions::new().append(true).open(tracefs.join("kprobe_events"))?;
    file.write_all(format!("{line}\n").as_bytes())
}

/// Removes events a previous daemon left behind (killed before it could clean up): ours are
/// named after the daemon's pid, so an event whose pid no longer runs is an orphan. Every
/// daemon does this at start-up, whatever its mode.
pub fn remove_stale_events() {
    let tracefs = tracefs_root();
    let Ok(events) = std::fs::read_to_string(tracefs.join("kprobe_events")) else { return };
    for event in stale_events(&events, super::pid_runs) {
        match write_kprobe_events(&tracefs, &format!("-:{GROUP}/{event}")) {
            Ok(()) => log::info!("removed kprobe event {GROUP}/{event} left by a previous run"),
            Err(e) => log::warn!("could not remove stale kprobe event {GROUP}/{event}: {e}"),
        }
    }
}

/// Our events in a `kprobe_events` listing ("p:tracer/tracer_123_tcp_connect tcp_connect")
/// whose pid does not run.
pub(crate) fn stale_events(listing: &str, running: impl Fn(u32) -> bool) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            line.split_whitespace().next()?.split_once(':')?.1.strip_prefix("tracer/")
        })
        .filter(|event| {
            let pid =
                event.strip_prefix("tracer_").and_then(|rest| rest.split('_').next()?.parse().ok());
            pid.is_some_and(|pid| !running(pid))
        })
        .map(str::to_owned)
        .collect()
}

/// `hits` and `missed` of `event` in a `kprobe_profile` listing ("  <event>  <hits>  <missed>").
pub(crate) fn profile_line(profile: &str, event: &str) -> Option<(u64, u64)> {
    profile.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != event {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The prefix of `struct perf_event_attr` that PERF_ATTR_SIZE_VER0 covers: all a tracepoint
/// event needs (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
// The ioctl request type differs between C libraries (glibc: c_ulong, musl: c_int): the
// calls cast.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// _IOW('$', 8, __u32)
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// Opens the perf event of tracefs kprobe `event` (system-wide: a kprobe fires on every CPU
/// whatever the event's CPU) and runs `prog` on it.
fn open_and_attach(tracefs: &Path, event: &str, prog: &KProbe) -> io::Result<OwnedFd> {
    let id_path = tracefs.join("events").join(GROUP).join(event).join("id");
    let id: u64 = std::fs::read_to_string(&id_path)?.trim().parse().map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", id_path.display()))
    })?;
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: perf_event_open(2) with a fully initialised attr of the size it states.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            -1 as libc::pid_t,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let perf = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let prog_fd = prog.fd().map_err(io::Error::other)?;
    // SAFETY: ioctls on our own perf fd; SET_BPF takes the program fd by value.
    unsafe {
        if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF as _, prog_fd.as_fd().as_raw_fd())
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(perf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_events_left_by_daemons_that_no_longer_run() {
        let listing = "p:tracer/tracer_100_tcp_connect tcp_connect\n\
                       r4096:tracer/tracer_100_inet_csk_accept_ret inet_csk_accept\n\
                       p:tracer/tracer_200_tcp_close tcp_close\n\
                       p:kprobes/someone_else do_sys_open\n";
        let stale = stale_events(listing, |pid| pid == 200);
        assert_eq!(stale, ["tracer_100_tcp_connect", "tracer_100_inet_csk_accept_ret"]);
    }

    #[test]
    fn reads_hits_and_misses_of_one_event() {
        let profile = "  tracer_7_tcp_connect                              1200               0\n  \
                       tracer_7_inet_csk_accept_ret                       5000              42\n";
        assert_eq!(profile_line(profile, "tracer_7_inet_csk_accept_ret"), Some((5000, 42)));
        assert_eq!(profile_line(profile, "tracer_7_tcp_close"), None);
    }
}
