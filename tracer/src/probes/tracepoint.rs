//! Tracepoint mode: works on every kernel with BTF and a ring buffer (5.8+), and where fentry
//! and kprobes are unavailable (kernels built without kprobes, or that refuse fentry loads).
use std::fs;

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, TracePoint},
};

use super::error::{ProbeError, Result};
use super::{preflight, program, step};

/// Must match `tracer-ebpf/src/accept.rs`.
const SYSCALL_EXIT_RET_OFFSET: usize = 16;

/// Attaches the hooks every mode uses: state changes, process exit/exec, accept syscall exits.
pub fn attach(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    for name in ["inet_sock_set_state", "sched_process_exit", "sched_process_exec"] {
        let tp: &mut BtfTracePoint = program(ebpf, name)?;
        tp.load(name, btf).map_err(step("load", name))?;
        tp.attach().map_err(step("attach", name))?;
    }
    for name in ["sys_exit_accept4", "sys_exit_accept"] {
        check_ret_offset(name)?;
        let tp: &mut TracePoint = program(ebpf, name)?;
        tp.load().map_err(step("load", name))?;
        tp.attach("syscalls", name).map_err(step("attach", name))?;
    }
    Ok(())
}

/// Tracepoint mode's own hook: the release of sockets closed while already in CLOSE (the
/// function-probe modes see every release at tcp_close itself).
pub fn attach_release_of_closed(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    let name = "tcp_destroy_sock";
    let tp: &mut BtfTracePoint = program(ebpf, name)?;
    tp.load(name, btf).map_err(step("load", name))?;
    tp.attach().map_err(step("attach", name))?;
    Ok(())
}

/// The kernel program reads `ret` at a fixed offset of the syscall-exit record: check it
/// against the kernel's own description rather than trust it.
fn check_ret_offset(syscall: &str) -> Result<()> {
    let format_file = preflight::tracefs_events().join("syscalls").join(syscall).join("format");
    let format = fs::read_to_string(&format_file)
        .map_err(|source| ProbeError::TracepointFormat { path: format_file.clone(), source })?;
    let ok = format.lines().any(|line| {
        line.contains("long ret;") && line.contains(&format!("offset:{SYSCALL_EXIT_RET_OFFSET};"))
    });
    if ok {
        Ok(())
    } else {
        Err(ProbeError::TracepointLayout {
            tracepoint: format!("syscalls:{syscall}"),
            expected: SYSCALL_EXIT_RET_OFFSET,
            format_file,
        })
    }
}
