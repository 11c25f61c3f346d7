//! fentry mode: fentry on `tcp_connect` and `tcp_close`, fexit on `inet_csk_accept`.
//! BPF trampolines (5.5+, x86-64/arm64): cheaper than kprobes, typed arguments from BTF.
use aya_ebpf::{
    EbpfContext,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use tracer_common::programs;

use crate::{
    core_shim::{BtfSock, SockPtr},
    lifecycle,
};

#[fentry(function = "tcp_connect")]
pub fn tcp_connect_fentry(ctx: FEntryContext) -> i32 {
    lifecycle::on_tcp_connect(Some(ctx.as_ptr()), BtfSock(ctx.arg::<SockPtr>(0)));
    0
}

#[fentry(function = "tcp_close")]
pub fn tcp_close_fentry(ctx: FEntryContext) -> i32 {
    lifecycle::on_tcp_close(BtfSock(ctx.arg::<SockPtr>(0)));
    0
}

/// Linux 6.10+: `inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)`; the return
/// value follows the two arguments in the trampoline's context. (Reading it this way, rather
/// than with bpf_get_func_ret, keeps 5.10 to 5.16 supported.)
#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit(ctx: FExitContext) -> i32 {
    lifecycle::on_accept_return(BtfSock(ctx.arg::<SockPtr>(2)), None);
    0
}

/// Before 6.10: `inet_csk_accept(struct sock *sk, int flags, int *err, bool kern)`.
#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit_pre_6_10(ctx: FExitContext) -> i32 {
    lifecycle::on_accept_return(BtfSock(ctx.arg::<SockPtr>(4)), None);
    0
}

named!(tcp_connect_fentry, programs::TCP_CONNECT_FENTRY);
named!(tcp_close_fentry, programs::TCP_CLOSE_FENTRY);
named!(inet_csk_accept_fexit, programs::INET_CSK_ACCEPT_FEXIT);
named!(inet_csk_accept_fexit_pre_6_10, programs::INET_CSK_ACCEPT_FEXIT_PRE_6_10);
