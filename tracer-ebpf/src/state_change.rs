//! `tp_btf/inet_sock_set_state`: every TCP state change, in whatever context the kernel makes it.
//!
//! Context matters: CLOSE->SYN_SENT runs inside connect() (the owner), the handshake
//! completions run in softirq (any process may be current), and a change made by tcp_close()
//! runs in the task that dropped the file's last reference. Only the first and the last may
//! name a process.
use core::ffi::c_void;

use aya_ebpf::{EbpfContext, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{EventKind, flags, programs, tcp_state::*};

use crate::{
    core_shim::{BtfSock, Sock, SockPtr},
    emit::{config, count_state_change_run, emit, inject_release_drop},
    held_closed, stacks,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if !count_state_change_run() {
        return 0;
    }
    let sk: SockPtr = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    on_state_change(ctx.as_ptr(), BtfSock(sk), old as u8, new as u8);
    0
}

named!(inet_sock_set_state, programs::INET_SOCK_SET_STATE);

#[inline(always)]
fn on_state_change(ctx: *mut c_void, sk: BtfSock, old: u8, new: u8) {
    // Listeners, and children being created from one, are not connections.
    if old == LISTEN || new == LISTEN || new == SYN_RECV || new == NEW_SYN_RECV {
        return;
    }
    let own_lifecycle = config().lifecycle_from_state_changes != 0;
    if !sk.is_tcp() {
        return;
    }
    // Only tcp_close() moves a socket into these states, or an orphan on its way out: the
    // other transitions (into SYN_SENT, ESTABLISHED, CLOSE_WAIT) need neither check.
    if !matches!(new, SYN_SENT | ESTABLISHED | CLOSE_WAIT) {
        // After tcp_close() orphaned it, nothing about the socket changes what we report.
        if sk.orphaned() {
            return;
        }
        // A change made by tcp_close() itself: the release (reported here in tracepoint mode,
        // by the tcp_close probe in the other modes, so never a plain state change).
        if sk.file_released() {
            if own_lifecycle {
                release(sk, old, new);
            }
            return;
        }
    }
    // Only a socket a process holds: a child that reaches CLOSE before accept() took it is
    // remembered at the accept (if it ever comes), and one that never entered the queue (the
    // loser of two CPUs creating the same child, which the kernel closes and destroys at once
    // in softirq) is no connection at all.
    if own_lifecycle && new == CLOSE && sk.held() {
        held_closed::remember(sk.ptr());
    }
    match (old, new) {
        (CLOSE, SYN_SENT) => {
            if own_lifecycle {
                held_closed::forget(sk.ptr());
                // Inside connect(): the connecting code's stack is current.
                let stack = stacks::capture(ctx, sk, EventKind::Connect);
                emit(EventKind::Connect, sk, old, new, flags::OWNER_CONTEXT | stack);
            } else if config().stack_at_state_change != 0 {
                // kprobe mode: the tcp_connect kprobe reports the connect, this captures its
                // stack (see `Config::stack_at_state_change`).
                stacks::capture(ctx, sk, EventKind::Connect);
            }
        }
        (SYN_SENT, ESTABLISHED) => emit(EventKind::Established, sk, old, new, 0),
        (SYN_RECV, ESTABLISHED) => emit(EventKind::Established, sk, old, new, flags::INBOUND),
        (SYN_SENT, CLOSE) => emit(EventKind::ConnectFailed, sk, old, new, 0),
        _ => emit(EventKind::StateChange, sk, old, new, 0),
    }
}

/// Reports the release of `sk` by the current task (every mode ends up here). A socket that
/// never had a peer (created or bound, never connected) was no connection: nothing to release.
#[inline(always)]
pub fn release(sk: impl Sock, old: u8, new: u8) {
    if old == CLOSE && !sk.has_peer() {
        return;
    }
    if !inject_release_drop() {
        emit(EventKind::Release, sk, old, new, flags::OWNER_CONTEXT);
    }
}
