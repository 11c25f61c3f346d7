//! Tracepoint mode only: sockets that reached CLOSE while their process still holds them (reset
//! by the peer, or a failed connect), and `tp_btf/tcp_destroy_sock`, their release.
//!
//! tcp_close() on a socket already in CLOSE makes no state change: it destroys the socket at
//! once, inside the holder's close() (or exit). So the one hook that sees that release is the
//! destroy tracepoint, and it must only count sockets remembered here: every other socket is
//! destroyed later, orphaned, from a timer, long after its release was reported.
//!
//! "Held" is exact: a socket is remembered when it reaches CLOSE with a process holding it, or
//! when accept() hands out one that was reset in the queue. A child that never left its
//! listener's queue, or that lost the race to be created (two CPUs completing one handshake:
//! the loser is closed and destroyed at once, in softirq), is never released by anyone.
// The map calls take references on purpose: `&0` is a promoted constant (passed by value, it
// becomes a stack store per insert), and one `&key` serves both the lookup and the delete.
#![allow(clippy::needless_borrows_for_generic_args)]
use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use tracer_common::{HELD_CLOSED_CAPACITY, HELD_CLOSED_MAP, counters, programs, tcp_state::CLOSE};

use crate::{
    core_shim::{BtfSock, SockPtr},
    emit::{bump, config},
    state_change::release,
};

#[map]
static HELD_CLOSED: HashMap<u64, u8> = HashMap::with_max_entries(HELD_CLOSED_CAPACITY, 0);
named!(HELD_CLOSED, HELD_CLOSED_MAP);

#[inline(always)]
pub fn remember(sk: SockPtr) {
    if HELD_CLOSED.insert(&(sk as u64), &0, 0).is_err() {
        bump(counters::HELD_CLOSED_MAP_FULL);
    }
}

#[inline(always)]
pub fn forget(sk: SockPtr) {
    let key = sk as u64;
    // Called on every connect, and almost never for a remembered socket: a lookup is lock-free,
    // a delete takes the bucket lock even for a missing key.
    // SAFETY: the value is not read, only its presence.
    if unsafe { HELD_CLOSED.get(&key) }.is_some() {
        let _ = HELD_CLOSED.remove(&key);
    }
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    if config().lifecycle_from_state_changes == 0 {
        return 0;
    }
    let sk: SockPtr = ctx.arg(0);
    let key = sk as u64;
    // SAFETY: the value is not read, only its presence.
    if unsafe { HELD_CLOSED.get(&key) }.is_some() {
        let _ = HELD_CLOSED.remove(&key);
        release(BtfSock(sk), CLOSE, CLOSE);
    }
    0
}

named!(tcp_destroy_sock, programs::TCP_DESTROY_SOCK);
