//! `tracepoint/syscalls/sys_exit_accept{,4}`: the accepting process, in its own context.
//!
//! The server side's ESTABLISHED transition runs in softirq, so it cannot name the owner; the
//! syscall exit can. It also sees accepts that were already blocked when the probes attached.
use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use tracer_common::{SYSCALL_EXIT_RET_OFFSET, counters, programs};

use crate::{core_shim, emit::bump, lifecycle};

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

named!(sys_exit_accept4, programs::SYS_EXIT_ACCEPT4);
named!(sys_exit_accept, programs::SYS_EXIT_ACCEPT);

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    // SAFETY: reading the tracepoint record at its documented offset.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(SYSCALL_EXIT_RET_OFFSET) }) else {
        return;
    };
    if ret < 0 {
        return;
    }
    // SAFETY: the shim validates the fd against the task's fd table and the file's back pointer.
    let sk = unsafe { core_shim::tracer_fd_sock(ret as u32) };
    if sk.is_null() {
        bump(counters::ACCEPT_UNRESOLVED);
        // A rare path: diagnostics only (pruned by the verifier below --log-level debug).
        aya_log_ebpf::debug!(ctx, "accept returned fd {} that does not resolve to a socket", ret);
        return;
    }
    // The peer may already have hung up while it waited in the backlog: the event carries the
    // state it has now (the same report as the fexit/kretprobe accept path).
    lifecycle::on_accept_return(core_shim::AnySock::read(sk), Some(ctx.as_ptr()));
}
