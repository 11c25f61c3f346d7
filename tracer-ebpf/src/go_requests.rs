//! `uprobe` at the entry of Go's `net/http.(*persistConn).roundTrip`: the stack of the goroutine
//! that makes an HTTP/1 request, and the connection it goes out on.
//!
//! The Transport dials on a goroutine of its own, so a leaked response body's connection has an
//! opener stack that ends in the Transport: the request's stack is the one that names the code.
//! The daemon attaches this per Go process and writes the process's field offsets
//! ([`GoHttpTarget`]) first; the receiver (`*persistConn`, in RAX under Go's register ABI) leads
//! through `net.Conn` (and `*tls.Conn` for HTTPS) to the descriptor, and the descriptor to the
//! socket, as the accept path resolves one. Entry only: a return probe would corrupt goroutine
//! stacks, which Go moves.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated::bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use tracer_common::{
    counters, programs,
    stacks::{
        GO_HTTP_TARGETS_CAPACITY, GO_ITAB_FIRST_METHOD, GoHttpTarget, KIND_GO_REQUEST,
        LOST_REQUESTS_CAPACITY, LostRequest, UserRegs,
    },
};

use crate::{
    core_shim::{self, Sock},
    emit::{bump, config},
    stacks::{STACK_SCRATCH, send, walk_from},
};

#[map]
static GO_HTTP_TARGETS: HashMap<u32, GoHttpTarget> =
    HashMap::with_max_entries(GO_HTTP_TARGETS_CAPACITY, 0);
named!(GO_HTTP_TARGETS, tracer_common::stacks::GO_HTTP_TARGETS_MAP);

#[map]
static LOST_REQUESTS: LruHashMap<u64, LostRequest> =
    LruHashMap::with_max_entries(LOST_REQUESTS_CAPACITY, 0);
named!(LOST_REQUESTS, tracer_common::stacks::LOST_REQUESTS_MAP);

#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let Some(target) = (unsafe { GO_HTTP_TARGETS.get(tgid) }).copied() else {
        return 0;
    };
    // SAFETY: a uprobe's context is the thread's user registers.
    let (receiver, regs) = unsafe {
        let r = &*ctx.regs;
        (r.rax, UserRegs { ip: r.rip, sp: r.rsp, bp: r.rbp })
    };
    let Some(fd) = descriptor(receiver, &target) else {
        return 0;
    };
    // SAFETY: the shim validates the fd against the task's fd table and the file's back pointer.
    let sk = unsafe { core_shim::tracer_fd_sock(fd) };
    if sk.is_null() {
        return 0;
    }
    let sock = core_shim::AnySock::read(sk);
    if !sock.is_tcp() {
        return 0;
    }
    let netns = sock.netns();
    if !capture(regs, sk as u64, netns) {
        // The socket is known, its request's stack is not: the daemon must not keep showing
        // the previous request's.
        let mut lost = LostRequest {
            // SAFETY: a helper without arguments.
            timestamp_ns: unsafe { bpf_ktime_get_boot_ns() },
            netns,
            tgid,
            ..LostRequest::default()
        };
        let mut comm = [0u8; 16];
        // SAFETY: writes the current task's leader start time and name into the locals.
        unsafe {
            core_shim::tracer_leader_identity(&raw mut lost.start_time_ns, comm.as_mut_ptr())
        };
        let _ = LOST_REQUESTS.insert(sk as u64, lost, 0);
    }
    0
}

named!(go_round_trip, programs::GO_ROUND_TRIP);

/// Follows the chain of `tracer::gohttp::layout::ConnOffsets` from the receiver to the
/// descriptor, checking that each `net.Conn` on the way is a `*net.TCPConn` (its itab's first
/// method is `target.tcp_conn_close`): a custom dialer's wrapper is skipped, never read with
/// the wrong offsets.
#[inline(always)]
fn descriptor(persist_conn: u64, target: &GoHttpTarget) -> Option<u32> {
    let [pc_conn, pc_tls_state, iface_data, tls_conn, tcp_conn, conn_fd, net_fd_pfd, sysfd] =
        target.offsets;
    let mut iface = persist_conn.wrapping_add(pc_conn);
    if read_user(persist_conn.wrapping_add(pc_tls_state))? != 0 {
        let tls = pointer(iface.wrapping_add(iface_data))?;
        iface = tls.wrapping_add(tls_conn);
    }
    let itab = pointer(iface)?;
    if read_user(itab.wrapping_add(GO_ITAB_FIRST_METHOD))? != target.tcp_conn_close {
        return None;
    }
    let conn = pointer(iface.wrapping_add(iface_data))?;
    let net_fd = pointer(conn.wrapping_add(tcp_conn + conn_fd))?;
    let fd = read_user(net_fd.wrapping_add(net_fd_pfd + sysfd))?;
    u32::try_from(fd).ok()
}

#[inline(always)]
fn pointer(address: u64) -> Option<u64> {
    read_user(address).filter(|&p| p != 0)
}

#[inline(always)]
fn read_user(address: u64) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: reads 8 bytes of user memory into `value`; a fault returns an error.
    let read = unsafe {
        bpf_probe_read_user((&raw mut value).cast(), 8, address as *const core::ffi::c_void)
    };
    (read == 0).then_some(value)
}

/// The requesting goroutine's stack: at the function's entry its prologue has not run, so the
/// caller's return address is at sp and rbp is still the caller's frame pointer. Go keeps
/// frame pointers everywhere, so the walk needs no stack window for userspace to unwind (the
/// connect path's 256-byte copy is skipped). False when it could not be sent.
#[inline(never)]
fn capture(regs: UserRegs, sock: u64, netns: u32) -> bool {
    let Some(record) = STACK_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let UserRegs { ip, sp, bp } = regs;
    let Some(return_address) = (sp != 0).then(|| read_user(sp)).flatten() else {
        bump(counters::STACK_UNWIND_FAILED);
        return false;
    };
    // SAFETY: this CPU's scratch slot, written whole before `send` copies it.
    unsafe {
        (*record).regs = regs;
        (*record).window_len = 0;
        (*record)._pad2 = 0;
        // One byte into the function, as the other frames point one byte past their call:
        // userspace looks every frame up one byte back.
        (*record).frames[0] = ip + 1;
        (*record).frames[1] = return_address;
        let depth = config().stack_depth.clamp(2, tracer_common::stacks::MAX_STACK_DEPTH);
        let frames = walk_from(record, depth, 2, sp, bp);
        let sent = send(record, frames, sock, netns, KIND_GO_REQUEST);
        bump(if sent { counters::STACK_CAPTURED } else { counters::STACK_LOST_RINGBUF });
        sent
    }
}
