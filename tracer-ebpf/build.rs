//! Compiles the CO-RE shim (core/shim.c) to LLVM bitcode and hands it to bpf-linker. The shim is
//! built for BPF CPU v2, which Linux 5.10 accepts; rustc already passes its target's generic
//! CPU (v1 features) to bpf-linker for the Rust side.
use std::{env, path::PathBuf, process::Command};

const CLANG: &str = "clang-22";
const BPF_CPU: &str = "v2";

fn main() {
    println!("cargo:rerun-if-changed=core");
    // The bin is only meaningful for the BPF target; on the host (as a build-dependency of
    // `tracer`) only the empty lib is compiled.
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let shim_out = out_dir.join("shim.bc");
    let status = Command::new(CLANG)
        .args(["-O2", "-g", "-target", "bpf", "-emit-llvm", "-c"])
        .arg(format!("-mcpu={BPF_CPU}"))
        .args(["-Wall", "-Werror", "-I", "core"])
        .arg("core/shim.c")
        .arg("-o")
        .arg(&shim_out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {CLANG} (run `cargo xtask setup`): {e}"));
    assert!(status.success(), "{CLANG} failed to compile core/shim.c");
    println!("cargo:rustc-link-arg={}", shim_out.display());
}
