//! What can go wrong while checking the kernel, loading and attaching the programs, and reading
//! their maps; each message names the fix.
use std::path::PathBuf;

use super::ProbeMode;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "tracer needs root, or the capabilities CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE, \
         CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH (tracefs is root-only): run it with sudo or \
         grant them with `setcap \
         cap_bpf,cap_perfmon,cap_sys_resource,cap_sys_admin,cap_dac_read_search+ep $(which tracer)`"
    )]
    MissingPrivileges,

    #[error(
        "this kernel exposes no BTF at /sys/kernel/btf/vmlinux; tracer reads kernel structures \
         through CO-RE and needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (every major \
         distribution kernel since 2021 has it)"
    )]
    NoBtf,

    #[error(
        "kernel {found} is too old: tracer needs Linux 5.8 or newer (BPF ring buffer); \
         upgrade the kernel"
    )]
    KernelTooOld { found: String },

    #[error(
        "probe mode `{mode}` does not work on this kernel: {cause}. Use `--probe auto` to pick \
         the best mode that works (or another --probe)"
    )]
    ModeUnavailable { mode: ProbeMode, cause: Box<ProbeError> },

    #[error("this kernel has no kprobe support (no {0}; built without CONFIG_KPROBES)")]
    NoKprobes(&'static str),

    #[error("kprobe setup failed {what}: {source}")]
    Kprobe { what: String, source: std::io::Error },

    #[error("no probe mode loads on this kernel: {reasons}")]
    NoModeWorks { reasons: String },

    #[error("cannot mount tracefs at {path}: {source}; mount it with `mount -t tracefs nodev {path}`", path = path.display())]
    Tracefs { path: PathBuf, source: std::io::Error },

    #[error(
        "tracefs is mounted at {path} but this process cannot read it (it is root-only): run \
         as root or grant CAP_DAC_READ_SEARCH",
        path = path.display()
    )]
    TracefsUnreadable { path: PathBuf },

    #[error(
        "cannot read the tracepoint format {path}: {source}",
        path = path.display()
    )]
    TracepointFormat { path: PathBuf, source: std::io::Error },

    #[error(
        "unexpected layout of tracepoint {tracepoint}: `ret` is not at offset {expected} in \
         {format_file}; please report this kernel at the project's issue tracker",
        format_file = format_file.display()
    )]
    TracepointLayout { tracepoint: String, expected: usize, format_file: PathBuf },

    #[error("invalid --ring-bytes {0}: use a power of two of at least 4096 (for example 8388608)")]
    RingSize(u32),

    #[error("failed to load the kernel programs: {0}")]
    Load(#[from] aya::EbpfError),

    #[error("failed to {action} program `{program}`: {source}")]
    Program {
        action: &'static str,
        program: String,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("kernel object has no map `{0}` (build mismatch: rebuild tracer)")]
    MissingMap(&'static str),

    #[error("kernel object has no program `{0}` (build mismatch: rebuild tracer)")]
    MissingProgram(&'static str),

    #[error("BPF map error: {0}")]
    Map(#[from] aya::maps::MapError),

    #[error("cannot read kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
}

pub type Result<T, E = ProbeError> = std::result::Result<T, E>;
