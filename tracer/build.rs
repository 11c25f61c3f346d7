//! Builds the kernel programs (`tracer-ebpf`) for the BPF target with the pinned nightly and
//! embeds them: at run time the `tracer` binary is all a user needs.
use aya_build::{Package, Toolchain};

/// The nightly the eBPF crate is built with (LLVM 22, matching bpf-linker's). Installed by
/// `cargo xtask setup`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(EBPF_TOOLCHAIN))
}
