//! fentry mode: BPF trampolines on tcp_connect and tcp_close, fexit on inet_csk_accept.
use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit},
};
use aya_obj::btf::BtfKind;

use super::error::Result;
use super::{program, step};

pub fn attach(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    for (name, function) in
        [("tcp_connect_fentry", "tcp_connect"), ("tcp_close_fentry", "tcp_close")]
    {
        let prog: &mut FEntry = program(ebpf, name)?;
        prog.load(function, btf).map_err(step("load", name))?;
        prog.attach().map_err(step("attach", name))?;
    }
    // Linux 6.10 changed inet_csk_accept's arguments (and added struct proto_accept_arg with
    // them); the return value sits after the arguments, so each signature has its program.
    let name = if btf.id_by_type_name_kind("proto_accept_arg", BtfKind::Struct).is_ok() {
        "inet_csk_accept_fexit"
    } else {
        "inet_csk_accept_fexit_pre_6_10"
    };
    let prog: &mut FExit = program(ebpf, name)?;
    prog.load("inet_csk_accept", btf).map_err(step("load", name))?;
    prog.attach().map_err(step("attach", name))?;
    Ok(())
}
