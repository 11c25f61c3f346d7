//! kprobe mode: kprobes on tcp_connect and tcp_close, a kretprobe on inet_csk_accept.
use aya::{Ebpf, programs::KProbe};

use super::{program, step};
use crate::error::{Error, Result};

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    // aya creates kprobes through the kprobe PMU (or tracefs on old kernels, which have both).
    if !std::path::Path::new(KPROBE_PMU).exists() {
        return Err(Error::NoKprobes(KPROBE_PMU));
    }
    for (name, function) in [
        ("tcp_connect_kprobe", "tcp_connect"),
        ("tcp_close_kprobe", "tcp_close"),
        ("inet_csk_accept_kretprobe", "inet_csk_accept"),
    ] {
        let prog: &mut KProbe = program(ebpf, name)?;
        prog.load().map_err(step("load", name))?;
        prog.attach(function, 0).map_err(step("attach", name))?;
    }
    Ok(())
}
