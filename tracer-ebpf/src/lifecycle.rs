//! Connect, accept and close as the function probes of the fentry and kprobe modes see them
//! (the same events, with the same owner rules, as tracepoint mode derives from state changes;
//! docs/semantics.md). The accept report is shared with the accept syscall-exit tracepoint.
use core::ffi::c_void;

use tracer_common::{EventKind, flags, tcp_state};

use crate::{
    core_shim::Sock,
    emit::{config, emit},
    held_closed, stacks,
    state_change::release,
};

/// `tcp_connect(sk)`: inside connect(), after CLOSE -> SYN_SENT and before the SYN leaves: the
/// connecting code's stack is current. `stack_ctx`, the program's context, captures it (kprobe
/// mode passes none: `inet_sock_set_state` captures there, see `Config::stack_at_state_change`).
#[inline(always)]
pub fn on_tcp_connect(stack_ctx: Option<*mut c_void>, sk: impl Sock) {
    if !sk.is_tcp() {
        return;
    }
    let stack = stack_ctx.map_or(0, |ctx| stacks::capture(ctx, sk, EventKind::Connect));
    emit(EventKind::Connect, sk, tcp_state::CLOSE, sk.state(), flags::OWNER_CONTEXT | stack);
}

/// `tcp_close(sk, timeout)`: called once, by the task that dropped the file's last reference.
#[inline(always)]
pub fn on_tcp_close(sk: impl Sock) {
    if !sk.is_tcp() {
        return;
    }
    let state = sk.state();
    // Closing a listener ends no connection.
    if state == tcp_state::LISTEN {
        return;
    }
    release(sk, state, state);
}

/// An accept returned `sk` to the current task: from `inet_csk_accept()`'s return (which also
/// covers io_uring accepts) or from the accept syscall's exit (which also covers accepts
/// blocked before the probes attached). Both may report one socket; the table ignores the
/// second report of an owned socket. `stack_ctx`, the syscall exit's context, captures the
/// accepting code's stack (only there: one capture per accept, at the user's own return).
#[inline(always)]
pub fn on_accept_return(sk: impl Sock, stack_ctx: Option<*mut c_void>) {
    if sk.is_null() || !sk.is_tcp() {
        return;
    }
    let stack = stack_ctx.map_or(0, |ctx| stacks::capture(ctx, sk, EventKind::Accept));
    let state = sk.state();
    // Reset while it waited in the queue: its release comes from its destruction (tracepoint
    // mode, see held_closed), which only counts sockets remembered as held.
    if state == tcp_state::CLOSE && config().lifecycle_from_state_changes != 0 {
        held_closed::remember(sk.ptr());
    }
    emit(EventKind::Accept, sk, state, state, flags::OWNER_CONTEXT | flags::INBOUND | stack);
}
