//! The kernel's count of runs it skipped, per attached program (`bpf_prog_info`'s
//! `recursion_misses`, Linux 5.12+).
//!
//! The kernel refuses to run a program on a CPU where that same program is already running,
//! and counts the refusal. For the tp_btf programs (Linux 6.0+) this happens when an interrupt,
//! and the softirq that follows it, hits the CPU while the program runs in process context: a
//! handshake completed in that softirq is then never reported (docs/semantics.md, "Kernel-side
//! misses"). fentry/fexit trampolines and kprobes skip the same way. Nothing reaches the ring
//! buffer for a skipped run, so `emitted = received + lost` still holds: this count is the only
//! trace such a loss leaves.
use std::{
    io, mem,
    os::fd::{AsFd, AsRawFd, RawFd},
};

use aya::Ebpf;
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// One attached program and the runs the kernel skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgramMisses {
    /// The program's name in the kernel object (`tracer_common::programs`).
    pub program: String,
    /// Runs skipped because the program was already running on that CPU.
    pub missed: u64,
}

/// `recursion_misses` of every loaded program of `ebpf`, by program name. Programs the kernel
/// cannot describe are left out (logged at debug level).
pub(super) fn misses(ebpf: &Ebpf) -> Vec<ProgramMisses> {
    let mut out: Vec<ProgramMisses> = ebpf
        .programs()
        .filter_map(|(name, program)| {
            // Programs of other modes are never loaded: no descriptor.
            let fd = program.fd().ok()?;
            match recursion_misses(fd.as_fd().as_raw_fd()) {
                Ok(missed) => Some(ProgramMisses { program: name.to_owned(), missed }),
                Err(e) => {
                    log::debug!("cannot read the kernel's info on program {name}: {e}");
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.program.cmp(&b.program));
    out
}

/// `BPF_OBJ_GET_INFO_BY_FD`'s attribute for a program: aya keeps its own wrapper's field
/// private, so the call is made here.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn recursion_misses(fd: RawFd) -> io::Result<u64> {
    // SAFETY: bpf_prog_info is plain integers (pointer fields are u64 addresses): all-zero is a
    // valid value, and zeroed pointer fields with zero lengths ask the kernel to copy nothing.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let attr = InfoByFd {
        bpf_fd: u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        info_len: mem::size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` names a buffer of `info_len` bytes that lives across the call; a kernel
    // that knows a shorter struct fills its prefix and checks that our tail is zero.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw const attr,
            mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Before Linux 5.12 the field is not filled and stays 0 (nor did fentry skip then; tp_btf
    // programs skip only from Linux 6.0).
    Ok(info.recursion_misses)
}
