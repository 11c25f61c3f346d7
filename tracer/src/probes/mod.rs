//! Loading and attaching the kernel programs, per probe mode, and reading their counters.
//!
//! See docs/kernels.md for which hook each mode uses and why.
pub mod preflight;
mod tracepoint;

use std::fmt;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
};
use tracer_common::{COUNTERS_MAP, CONFIG_GLOBAL, Config, DEFAULT_RING_BYTES, EVENTS_MAP, EventKind, counters};

use crate::error::{Error, Result};

/// The kernel object built by `tracer/build.rs`, embedded so the binary is self-contained.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// The best mode this kernel loads and attaches.
    Auto,
    /// fentry/fexit on tcp_connect, inet_csk_accept, tcp_close.
    Fentry,
    /// kprobe/kretprobe on the same functions.
    Kprobe,
    /// tp_btf sock:inet_sock_set_state plus accept syscall tracepoints.
    Tracepoint,
}

impl fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeMode::Auto => "auto",
            ProbeMode::Fentry => "fentry",
            ProbeMode::Kprobe => "kprobe",
            ProbeMode::Tracepoint => "tracepoint",
        })
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub mode: ProbeMode,
    /// Ring buffer size in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// Test-only fault injection (see `tracer_common::Config`).
    pub drop_every_nth_release: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { mode: ProbeMode::Auto, ring_bytes: DEFAULT_RING_BYTES, drop_every_nth_release: 0 }
    }
}

/// Loaded and attached kernel programs. Dropping it detaches everything.
pub struct Probes {
    /// `None` once detached; the maps taken out of it (events, counters) stay readable.
    ebpf: Option<Ebpf>,
    mode: ProbeMode,
    mode_reason: String,
    counters: PerCpuArray<MapData, u64>,
}

/// Per-kind counters summed over CPUs, as the kernel programs kept them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub emitted: [u64; EventKind::COUNT],
    pub lost_ringbuf: [u64; EventKind::COUNT],
    pub accept_unresolved: u64,
    pub release_dropped_by_fault_injection: u64,
}

impl KernelCounters {
    pub fn emitted_total(&self) -> u64 {
        self.emitted.iter().sum()
    }
    pub fn lost_total(&self) -> u64 {
        self.lost_ringbuf.iter().sum()
    }
}

impl Probes {
    pub fn load(options: &LoadOptions) -> Result<Self> {
        preflight::check()?;
        if options.ring_bytes < 4096 || !options.ring_bytes.is_power_of_two() {
            return Err(Error::RingSize(options.ring_bytes));
        }
        let (mode, mode_reason) = match options.mode {
            ProbeMode::Auto => (
                ProbeMode::Tracepoint,
                "auto: fentry and kprobe modes are not built yet; using tracepoint".to_owned(),
            ),
            ProbeMode::Tracepoint => (ProbeMode::Tracepoint, "requested with --probe".to_owned()),
            ProbeMode::Fentry => return Err(Error::ModeNotImplemented { mode: "fentry" }),
            ProbeMode::Kprobe => return Err(Error::ModeNotImplemented { mode: "kprobe" }),
        };
        let config = Config { drop_every_nth_release: options.drop_every_nth_release, _reserved: 0 };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, options.ring_bytes)
            .override_global(CONFIG_GLOBAL, &config, true)
            .load(EBPF_OBJECT)?;
        if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
            // Only present when a kernel program logs; diagnostics are optional.
            log::debug!("kernel-side logging not available: {e}");
        }
        match mode {
            ProbeMode::Tracepoint => tracepoint::attach(&mut ebpf)?,
            ProbeMode::Auto | ProbeMode::Fentry | ProbeMode::Kprobe => {
                unreachable!("resolved above")
            }
        }
        let counters = PerCpuArray::try_from(
            ebpf.take_map(COUNTERS_MAP).ok_or(Error::MissingMap("COUNTERS"))?,
        )?;
        Ok(Self { ebpf: Some(ebpf), mode, mode_reason, counters })
    }

    pub fn mode(&self) -> ProbeMode {
        self.mode
    }

    /// Why this mode was chosen (and why better ones were not).
    pub fn mode_reason(&self) -> &str {
        &self.mode_reason
    }

    /// The event ring buffer; can be taken once, before [`Probes::detach`].
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .as_mut()
            .and_then(|ebpf| ebpf.take_map(EVENTS_MAP))
            .ok_or(Error::MissingMap("EVENTS"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Detaches and unloads every program. Nothing is emitted afterwards, so a final drain of
    /// the ring buffer then makes `emitted = received + lost` exact.
    pub fn detach(&mut self) {
        self.ebpf = None;
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let read = |slot: u32| -> Result<u64> {
            Ok(self.counters.get(&slot, 0)?.iter().copied().sum())
        };
        let mut out = KernelCounters::default();
        for kind in EventKind::ALL {
            out.emitted[kind as usize] = read(counters::emitted(kind))?;
            out.lost_ringbuf[kind as usize] = read(counters::lost_ringbuf(kind))?;
        }
        out.accept_unresolved = read(counters::ACCEPT_UNRESOLVED)?;
        out.release_dropped_by_fault_injection = read(counters::RELEASE_DROPPED_BY_FAULT_INJECTION)?;
        Ok(out)
    }
}
