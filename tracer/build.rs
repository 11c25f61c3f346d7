//! Builds the kernel programs (`tracer-ebpf`) for the BPF target with the pinned nightly and
//! embeds them: at run time the `tracer` binary is all a user needs.
use aya_build::{Package, Toolchain};

/// The nightly the eBPF crate is built with (LLVM 22, matching bpf-linker's), pinned in
/// tracer-ebpf/ebpf-toolchain, which `cargo xtask setup` installs from too. (Cargo rebuilds this
/// script when the file changes: it is part of the script's source.)
const EBPF_TOOLCHAIN: &str = include_str!("../tracer-ebpf/ebpf-toolchain").trim_ascii();

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(EBPF_TOOLCHAIN))
}
