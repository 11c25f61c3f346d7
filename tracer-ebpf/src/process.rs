//! Process lifecycle: `tp_btf/sched_process_exit` and `tp_btf/sched_process_exec`.
//!
//! Exit fires before do_exit() closes the process's files, so the table learns that a process
//! is gone, and how much it still held, before the releases of its sockets arrive.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{EventKind, programs};

use crate::{core_shim, emit::emit_process};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    // Only the last thread's exit ends the process.
    // SAFETY: the shim reads the current task through CO-RE.
    if unsafe { core_shim::tracer_current_group_dead() } != 0 {
        emit_process(EventKind::ProcessExit);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(_ctx: BtfTracePointContext) -> i32 {
    emit_process(EventKind::ProcessExec);
    0
}

named!(sched_process_exit, programs::SCHED_PROCESS_EXIT);
named!(sched_process_exec, programs::SCHED_PROCESS_EXEC);
