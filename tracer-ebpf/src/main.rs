//! Kernel programs of tracer. One file per hook; all of them report through [`emit`].
//!
//! Hooks common to every mode (see docs/kernels.md for the per-mode table):
//! - `tp_btf/inet_sock_set_state` ([`state_change`]): connect start, handshake completion,
//!   failed connects, state changes, and releases (detected by the dying file).
//! - `tracepoint/syscalls/sys_exit_accept{,4}` ([`accept`]): attributes accepted sockets to
//!   the accepting process, in its own context.
//! - `tp_btf/tcp_destroy_sock` ([`held_closed`], tracepoint mode): the release of a socket
//!   closed while already in CLOSE (reset by the peer, or a failed connect).
//! - `tp_btf/sched_process_exit` and `tp_btf/sched_process_exec` ([`process`]): a process's
//!   end (before its fds are closed) and its new command name.
//!
//! - `iter/task` ([`task_cgroups`]): run on demand, not a hook: the v2 cgroup id of every
//!   process, for those known only from scans.
//! - `uprobe` on Go's `net/http.(*persistConn).roundTrip` ([`go_requests`]): attached per Go
//!   process on demand: a request's goroutine stack and its connection's socket.
//!
//! Where the opener's own stack is current (connect start, accept syscall exit), [`stacks`]
//! captures it when the opener-stacks policy wants it.
//!
//! Connect starts and releases come from `inet_sock_set_state` in tracepoint mode, and from
//! [`fentry`] (fentry/fexit) or [`kprobe`] (kprobe/kretprobe) probes on `tcp_connect`,
//! `tcp_close` and `inet_csk_accept` in the other modes ([`lifecycle`] has their shared logic).
#![no_std]
#![no_main]

/// Fails the build unless `$item`, a program's function or a map's or global's static (the
/// object names each after it), is named `$name`: the tracer-common constant the loader looks it
/// up by.
macro_rules! named {
    ($item:ident, $name:expr) => {
        const _: () = assert!(
            tracer_common::same_name(stringify!($item), $name),
            concat!("`", stringify!($item), "` is not named as tracer-common says")
        );
    };
}

mod accept;
mod core_shim;
mod emit;
mod fentry;
mod go_requests;
mod held_closed;
mod kprobe;
mod lifecycle;
mod process;
mod stacks;
mod state_change;
mod task_cgroups;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program from which a panic path is reachable at runtime.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
