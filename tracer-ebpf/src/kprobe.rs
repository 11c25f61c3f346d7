//! kprobe mode: kprobe on `tcp_connect` and `tcp_close`, kretprobe on `inet_csk_accept`.
//! Works wherever CONFIG_KPROBES is set, whatever the trampoline support.
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use tracer_common::programs;

use crate::{
    core_shim::{AnySock, SockPtr},
    lifecycle,
};

#[kprobe]
pub fn tcp_connect_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<SockPtr>(0) {
        lifecycle::on_tcp_connect(None, AnySock::read(sk));
    }
    0
}

#[kprobe]
pub fn tcp_close_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<SockPtr>(0) {
        lifecycle::on_tcp_close(AnySock::read(sk));
    }
    0
}

/// The return register holds the accepted socket whatever the function's signature. Returns
/// beyond the kretprobe's `maxactive` concurrent calls are missed by the kernel; the accept
/// syscall tracepoint still attributes those.
#[kretprobe]
pub fn inet_csk_accept_kretprobe(ctx: RetProbeContext) -> u32 {
    lifecycle::on_accept_return(AnySock::read(ctx.ret::<SockPtr>()), None);
    0
}

named!(tcp_connect_kprobe, programs::TCP_CONNECT_KPROBE);
named!(tcp_close_kprobe, programs::TCP_CLOSE_KPROBE);
named!(inet_csk_accept_kretprobe, programs::INET_CSK_ACCEPT_KRETPROBE);
