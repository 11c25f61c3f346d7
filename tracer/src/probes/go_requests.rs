//! The Go HTTP request uprobe (`go_round_trip`): loaded on first use, attached per Go process at
//! the entries [`crate::gohttp::inspect`] found, with the process's field offsets written to
//! the kernel first. Attached through the uprobe PMU (perf_event_open), so a probe lives exactly
//! as long as the daemon's file descriptor: a daemon that stops, even by SIGKILL, leaves none.
use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use tracer_common::{
    programs::GO_ROUND_TRIP,
    stacks::{GO_HTTP_TARGETS_MAP, GoHttpTarget},
};

use crate::gohttp::GoHttpBinary;

#[derive(Debug, thiserror::Error)]
pub enum GoRequestsError {
    #[error("no program `{GO_ROUND_TRIP}` or map `{GO_HTTP_TARGETS_MAP}` in the kernel object")]
    Missing,
    #[error("pid 0 is no process")]
    NoPid,
    #[error("the Go request probe did not load or attach: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("cannot record the process's field offsets for the probe: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("cannot place the position-independent binary in the process: {0}")]
    Layout(String),
}

/// The attachments to one process, to detach together.
#[derive(Debug)]
pub struct GoRequestProbe {
    pid: u32,
    links: Vec<UProbeLinkId>,
}

impl GoRequestProbe {
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Attaches to process `pid`, running `binary` (a path the daemon can open, such as
/// `/proc/PID/exe`), described by `go`.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    pid: u32,
    binary: &Path,
    go: &GoHttpBinary,
) -> Result<GoRequestProbe, GoRequestsError> {
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(GoRequestsError::NoPid)?);
    let mut targets: HashMap<&mut MapData, u32, GoHttpTarget> =
        HashMap::try_from(ebpf.map_mut(GO_HTTP_TARGETS_MAP).ok_or(GoRequestsError::Missing)?)?;
    let tcp_conn_close = if go.position_independent {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| GoRequestsError::Layout(format!("/proc/{pid}/maps: {e}")))?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| GoRequestsError::Layout(format!("/proc/{pid}/exe: {e}")))?;
        go.tcp_conn_close_in(&maps, &exe).ok_or_else(|| {
            GoRequestsError::Layout(format!("no mapping of {} in /proc/{pid}/maps", exe.display()))
        })?
    } else {
        go.tcp_conn_close
    };
    targets.insert(pid, GoHttpTarget { offsets: go.offsets.to_array(), tcp_conn_close }, 0)?;
    let program: &mut UProbe = ebpf
        .program_mut(GO_ROUND_TRIP)
        .ok_or(GoRequestsError::Missing)?
        .try_into()
        .map_err(GoRequestsError::Program)?;
    if program.fd().is_err() {
        program.load()?;
    }
    let mut links = Vec::new();
    for function in &go.functions {
        let location = UProbeAttachLocation::AbsoluteOffset(function.file_offset);
        match program.attach(location, binary, scope) {
            Ok(link) => links.push(link),
            Err(e) => {
                for link in links {
                    let _ = program.detach(link);
                }
                return Err(e.into());
            }
        }
    }
    Ok(GoRequestProbe { pid, links })
}

/// Detaches from the process and forgets its offsets.
pub(super) fn detach(ebpf: &mut Ebpf, probe: GoRequestProbe) -> Result<(), GoRequestsError> {
    let program: &mut UProbe = ebpf
        .program_mut(GO_ROUND_TRIP)
        .ok_or(GoRequestsError::Missing)?
        .try_into()
        .map_err(GoRequestsError::Program)?;
    for link in probe.links {
        program.detach(link)?;
    }
    let mut targets: HashMap<&mut MapData, u32, GoHttpTarget> =
        HashMap::try_from(ebpf.map_mut(GO_HTTP_TARGETS_MAP).ok_or(GoRequestsError::Missing)?)?;
    // Absent already: nothing to forget.
    let _ = targets.remove(&probe.pid);
    Ok(())
}
