//! Kernel programs of tracer. One file per hook; all of them report through [`emit`].
//!
//! Hooks (tracepoint mode):
//! - `tp_btf/inet_sock_set_state` ([`state_change`]): connect start, handshake completion,
//!   failed connects, state changes, and releases (detected by the dying file).
//! - `tracepoint/syscalls/sys_exit_accept{,4}` ([`accept`]): attributes accepted sockets to
//!   the accepting process, in its own context.
//! - `tp_btf/sched_process_exit` and `tp_btf/sched_process_exec` ([`process`]): a process's
//!   end (before its fds are closed) and its new command name.
#![no_std]
#![no_main]

mod accept;
mod core_shim;
mod emit;
mod process;
mod state_change;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program from which a panic path is reachable at runtime.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
