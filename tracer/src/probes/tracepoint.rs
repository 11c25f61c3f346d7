//! Tracepoint mode: works on every kernel with BTF and a ring buffer (5.8+), and where fentry
//! and kprobes are unavailable (kernels built without kprobes, or that refuse fentry loads).
use std::fs;

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, TracePoint},
};

use super::preflight;
use crate::error::{Error, Result};

/// Must match `tracer-ebpf/src/accept.rs`.
const SYSCALL_EXIT_RET_OFFSET: usize = 16;

pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    let btf = Btf::from_sys_fs()?;
    for program in ["inet_sock_set_state", "sched_process_exit", "sched_process_exec"] {
        let tp: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or(Error::MissingProgram(program))?
            .try_into()
            .map_err(|source| Error::Program { action: "find", program: program.into(), source })?;
        tp.load(program, &btf)
            .map_err(|source| Error::Program { action: "load", program: program.into(), source })?;
        tp.attach()
            .map_err(|source| Error::Program { action: "attach", program: program.into(), source })?;
    }

    for (program, syscall) in [("sys_exit_accept4", "sys_exit_accept4"), ("sys_exit_accept", "sys_exit_accept")] {
        check_ret_offset(syscall)?;
        let tp: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or(Error::MissingProgram(program))?
            .try_into()
            .map_err(|source| Error::Program { action: "find", program: program.into(), source })?;
        tp.load().map_err(|source| Error::Program { action: "load", program: program.into(), source })?;
        tp.attach("syscalls", syscall)
            .map_err(|source| Error::Program { action: "attach", program: program.into(), source })?;
    }
    Ok(())
}

/// The kernel program reads `ret` at a fixed offset of the syscall-exit record: check it
/// against the kernel's own description rather than trust it.
fn check_ret_offset(syscall: &str) -> Result<()> {
    let format_file = preflight::tracefs_events().join("syscalls").join(syscall).join("format");
    let format = fs::read_to_string(&format_file)?;
    let ok = format.lines().any(|line| {
        line.contains("long ret;") && line.contains(&format!("offset:{SYSCALL_EXIT_RET_OFFSET};"))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::TracepointLayout {
            tracepoint: format!("syscalls:{syscall}"),
            expected: SYSCALL_EXIT_RET_OFFSET,
            format_file,
        })
    }
}
