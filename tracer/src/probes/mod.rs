//! Loading and attaching the kernel programs, per probe mode, and reading their counters.
//!
//! [`hooks`] lists which hook each mode uses; docs/kernels.md says why.
mod error;
mod go_requests;
pub mod hooks;
pub(crate) mod kprobe;
pub mod preflight;
mod recursion;
mod task_cgroups;
mod tracepoint;
mod unrun;

pub use error::ProbeError;
pub use go_requests::{GoRequestProbe, GoRequestsError};
pub use kprobe::ProbeMisses;
pub use recursion::ProgramMisses;
pub use task_cgroups::{
    CgroupIds, TaskCgroupsError, parse as parse_task_cgroups, read as read_task_cgroups,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
};
use tracer_common::{
    CONFIG_GLOBAL, COUNTERS_MAP, Config, DEFAULT_RING_BYTES, EVENTS_MAP, EventKind, counters,
    stacks::{LOST_REQUESTS_MAP, STACK_SUSPECT_COUNT_MAP, STACK_SUSPECTS_MAP, STACKS_MAP},
};

use error::Result;

use crate::names::{Switch, named_enum};

/// The kernel object built by `tracer/build.rs`, embedded so the binary is self-contained.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

named_enum! {
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum ProbeMode ("probe mode") {
        /// The best mode this kernel loads and attaches.
        #[default]
        Auto => "auto",
        /// fentry/fexit on tcp_connect, inet_csk_accept, tcp_close.
        Fentry => "fentry",
        /// kprobe/kretprobe on the same functions.
        Kprobe => "kprobe",
        /// tp_btf sock:inet_sock_set_state plus accept syscall tracepoints.
        Tracepoint => "tracepoint",
    }
}

impl ProbeMode {
    /// One line on what the mode hooks.
    pub fn about(self) -> &'static str {
        match self {
            ProbeMode::Auto => "the best mode this kernel loads and attaches",
            ProbeMode::Fentry => "fentry/fexit on tcp_connect, inet_csk_accept, tcp_close",
            ProbeMode::Kprobe => "kprobe/kretprobe on the same functions",
            ProbeMode::Tracepoint => {
                "tp_btf sock:inet_sock_set_state plus accept syscall tracepoints"
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub mode: ProbeMode,
    /// Ring buffer size in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// Test-only fault injection (see `tracer_common::Config`).
    pub drop_every_nth_release: u32,
    /// Test-only fault injection (see `tracer_common::Config`).
    pub skip_every_nth_state_change: u32,
    /// Count state-change runs the kernel never made, from tracefs (see unrun.rs).
    pub never_run_count: Switch,
    /// Wake the daemon each time the unread data crosses a multiple of this many bytes (0: the
    /// kernel's default, a wakeup whenever a record arrives while the daemon is idle); the
    /// daemon must then drain on a timer (`DaemonOptions::drain_interval`). At most a quarter of
    /// the ring.
    pub wakeup_threshold_bytes: u32,
    /// Which connections' opener stacks the kernel captures, and how deep.
    pub stacks: StackOptions,
}

named_enum! {
    /// Which connections' opener stacks the kernel captures (`--stacks`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum StackPolicy ("stack policy") {
        /// None.
        Off => "off",
        /// Every connection of the processes the leak detector marks suspect.
        Suspects => "suspects",
        /// Every Nth connection of each process, and every connection of a suspect.
        #[default]
        Sampled => "sampled",
        /// Every connection.
        All => "all",
    }
}

impl StackPolicy {
    pub fn about(self) -> &'static str {
        match self {
            StackPolicy::Off => "capture no stack",
            StackPolicy::Suspects => "every connection of processes whose open count is rising",
            StackPolicy::Sampled => "every Nth connection of each process, and all of suspects",
            StackPolicy::All => "every connection",
        }
    }

    /// The kernel's value (`tracer_common::stacks::policy`).
    pub fn abi(self) -> u32 {
        use tracer_common::stacks::policy;
        match self {
            StackPolicy::Off => policy::OFF,
            StackPolicy::Suspects => policy::SUSPECTS,
            StackPolicy::Sampled => policy::SAMPLED,
            StackPolicy::All => policy::ALL,
        }
    }
}

/// Opener-stack capture settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackOptions {
    pub policy: StackPolicy,
    /// `sampled`: every Nth connection of each process (at least 1).
    pub sample_every: u32,
    /// Frames captured, 1 to [`tracer_common::stacks::MAX_STACK_DEPTH`].
    pub depth: u32,
    /// Test only: make the kernel refuse the capture code (`Config::fault_refuse_stacks`).
    pub fault_refuse: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            policy: StackPolicy::default(),
            sample_every: tracer_common::stacks::DEFAULT_STACK_SAMPLE,
            depth: tracer_common::stacks::DEFAULT_STACK_DEPTH,
            fault_refuse: false,
        }
    }
}

/// Default wakeup threshold: 1 MiB, about 9,400 events (an eighth of the default ring, which
/// leaves 7 MiB for the daemon to wake up in). At 9,000 connections/s it cut the daemon's CPU
/// from 1.01 to 0.76 µs per connection against 256 KiB (docs/performance.md).
pub const DEFAULT_WAKEUP_BYTES: u32 = 1 << 20;

/// The daemon's defaults (`tracer run` without flags).
impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            mode: ProbeMode::default(),
            ring_bytes: DEFAULT_RING_BYTES,
            drop_every_nth_release: 0,
            skip_every_nth_state_change: 0,
            never_run_count: Switch::On,
            wakeup_threshold_bytes: DEFAULT_WAKEUP_BYTES,
            stacks: StackOptions::default(),
        }
    }
}

/// Loaded and attached kernel programs. Dropping it detaches everything.
pub struct Probes {
    /// `None` once detached; the maps taken out of it (events, counters) stay readable.
    ebpf: Option<Ebpf>,
    mode: ProbeMode,
    mode_reason: String,
    counters: PerCpuArray<MapData, u64>,
    /// Messages of the kernel programs (aya-log), forwarded to the daemon's log.
    kernel_log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// kprobe mode's probes, which live outside `ebpf` (see kprobe.rs).
    kprobes: Option<kprobe::Kprobes>,
    /// Why the task iterator did not load (`None`: it did).
    task_cgroups_unavailable: Option<String>,
    /// Why the programs were loaded without the stack capture: the kernel refused them with it
    /// (`None`: it did not, or the policy is `off`).
    stacks_refused: Option<String>,
    /// tracefs's count of the state-change tracepoint's hits (`None`: tracefs refused it, as
    /// logged at start).
    hit_counter: Option<unrun::HitCounter>,
}

/// The entry of [`Probes::program_misses`] for the state-change runs the kernel never made
/// and never counted (see unrun.rs).
pub const UNRUN_STATE_CHANGES: &str = "inet_sock_set_state:never_run";

/// Per-kind counters summed over CPUs, as the kernel programs kept them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub emitted: [u64; EventKind::COUNT],
    pub lost_ringbuf: [u64; EventKind::COUNT],
    pub accept_unresolved: u64,
    pub release_dropped_by_fault_injection: u64,
    pub held_closed_map_full: u64,
    /// Opener stacks written to the stack ring.
    pub stack_captured: u64,
    /// Wanted stacks that found no room in the stack ring.
    pub stack_lost_ringbuf: u64,
    /// Wanted stacks the kernel could not walk.
    pub stack_unwind_failed: u64,
    /// Captured stacks without the user registers or stack window (no C library recovery).
    pub stack_window_failed: u64,
}

impl KernelCounters {
    pub fn emitted_total(&self) -> u64 {
        self.emitted.iter().sum()
    }
    pub fn lost_total(&self) -> u64 {
        self.lost_ringbuf.iter().sum()
    }
}

/// The kernel's suspect set (tgid -> 1) and its size, which the kernel reads first.
pub struct StackSuspectMaps {
    pub set: HashMap<MapData, u32, u8>,
    pub count: Array<MapData, u32>,
}

impl Probes {
    /// Loads and attaches the programs of `options.mode`; for `auto`, of the best mode that
    /// actually loads and attaches here (fentry, then kprobe, then tracepoint).
    pub fn load(options: &LoadOptions) -> Result<Self> {
        preflight::check()?;
        kprobe::remove_stale_events();
        if options.ring_bytes < 4096 || !options.ring_bytes.is_power_of_two() {
            return Err(ProbeError::RingSize(options.ring_bytes));
        }
        if options.mode != ProbeMode::Auto {
            return Self::load_mode(options.mode, options)
                .map(|probes| probes.with_reason("requested with --probe".to_owned()))
                .map_err(|cause| ProbeError::ModeUnavailable {
                    mode: options.mode,
                    cause: Box::new(cause),
                });
        }
        let mut rejected = Vec::new();
        for mode in [ProbeMode::Fentry, ProbeMode::Kprobe, ProbeMode::Tracepoint] {
            match Self::load_mode(mode, options) {
                Ok(probes) => {
                    let reason = if rejected.is_empty() {
                        format!("auto: {mode} is the best mode and it loads")
                    } else {
                        format!("auto: {}", rejected.join("; "))
                    };
                    return Ok(probes.with_reason(reason));
                }
                Err(e) => {
                    log::info!("probe mode {mode} unavailable: {}", first_line(&e));
                    log::debug!("probe mode {mode} failed in full: {e}");
                    rejected.push(format!("{mode} unavailable ({})", first_line(&e)));
                }
            }
        }
        Err(ProbeError::NoModeWorks { reasons: rejected.join("; ") })
    }

    /// Loads `mode` with the stack capture the policy asks for; if the kernel refuses that,
    /// loads it again without the capture code (unreachable with the policy `off`, so the
    /// verifier prunes it) and keeps why: the mode then runs with stacks off.
    fn load_mode(mode: ProbeMode, options: &LoadOptions) -> Result<Self> {
        if options.stacks.policy == StackPolicy::Off {
            return Self::load_mode_with(mode, options, false);
        }
        match Self::load_mode_with(mode, options, true) {
            Ok(probes) => Ok(probes),
            Err(with_stacks) => match Self::load_mode_with(mode, options, false) {
                Ok(mut probes) => {
                    let reason = format!(
                        "the kernel refused the stack capture in {mode} mode: {}",
                        first_line(&with_stacks)
                    );
                    log::warn!("opener stacks are off: {reason}");
                    log::debug!(
                        "loading {mode} with the stack capture failed in full: {with_stacks}"
                    );
                    probes.stacks_refused = Some(reason);
                    Ok(probes)
                }
                // Not the capture's fault: the mode does not load either way.
                Err(_) => Err(with_stacks),
            },
        }
    }

    fn load_mode_with(mode: ProbeMode, options: &LoadOptions, capture: bool) -> Result<Self> {
        let stack_policy =
            if capture { options.stacks.policy.abi() } else { StackPolicy::Off.abi() };
        let config = Config {
            drop_every_nth_release: options.drop_every_nth_release,
            lifecycle_from_state_changes: u32::from(mode == ProbeMode::Tracepoint),
            // At least four wakeup points per ring's worth of data (see tracer-ebpf's emit.rs).
            wakeup_threshold_bytes: options.wakeup_threshold_bytes.min(options.ring_bytes / 4),
            stack_policy,
            stack_sample_every: options.stacks.sample_every.max(1),
            stack_depth: options.stacks.depth.clamp(1, tracer_common::stacks::MAX_STACK_DEPTH),
            stack_at_state_change: u32::from(mode == ProbeMode::Kprobe),
            fault_refuse_stacks: u32::from(options.stacks.fault_refuse),
            fault_skip_every_nth_state_change: options.skip_every_nth_state_change,
        };
        // Kernel log statements above the daemon's level are constants the verifier prunes.
        let kernel_log_level = match log::max_level() {
            log::LevelFilter::Off => 0u8,
            log::LevelFilter::Error => aya_log::Level::Error as u8,
            log::LevelFilter::Warn => aya_log::Level::Warn as u8,
            log::LevelFilter::Info => aya_log::Level::Info as u8,
            log::LevelFilter::Debug => aya_log::Level::Debug as u8,
            log::LevelFilter::Trace => aya_log::Level::Trace as u8,
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, options.ring_bytes)
            .override_global(CONFIG_GLOBAL, &config, true)
            .override_global(aya_log::LEVEL, &kernel_log_level, false)
            .load(EBPF_OBJECT)?;
        let kernel_log = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("kernel-side logging not available: {e}");
                None
            }
        };
        if mode == ProbeMode::Auto {
            return Err(ProbeError::NoModeWorks { reasons: "auto is not a mode".into() });
        }
        let btf = Btf::from_sys_fs()?;
        let kprobes = hooks::attach(&mut ebpf, &btf, mode)?;
        // Not a hook of the mode: a refusal costs only the cgroup ids of scanned processes.
        let task_cgroups_unavailable = task_cgroups::load(&mut ebpf, &btf).err().map(|e| match e {
            TaskCgroupsError::Unavailable(reason) => reason,
            other => other.to_string(),
        });
        let counters = PerCpuArray::try_from(
            ebpf.take_map(COUNTERS_MAP).ok_or(ProbeError::MissingMap(COUNTERS_MAP))?,
        )?;
        let mut probes = Self {
            ebpf: Some(ebpf),
            mode,
            mode_reason: String::new(),
            counters,
            kernel_log,
            kprobes,
            task_cgroups_unavailable,
            stacks_refused: None,
            hit_counter: None,
        };
        if options.never_run_count == Switch::Off {
            log::info!(
                "state-change runs the kernel never makes are not counted: --never-run-count off"
            );
            return Ok(probes);
        }
        // After the programs attached: tracefs's probe then runs after theirs on every hit.
        probes.hit_counter = match unrun::HitCounter::start(&kprobe::tracefs_root(), || {
            probes
                .state_change_runs(&probes.ebpf.as_ref().map(recursion::misses).unwrap_or_default())
        }) {
            Ok(counter) => Some(counter),
            Err(e) => {
                log::info!(
                    "state-change runs the kernel never makes are not counted: tracefs \
                         refused an instance ({e})"
                );
                None
            }
        };
        Ok(probes)
    }

    /// Runs of `inet_sock_set_state` the program counted, plus those the kernel skipped and
    /// counted (read before, in `misses`): every hit the kernel handed to it, one way or the
    /// other.
    fn state_change_runs(&self, misses: &[ProgramMisses]) -> u64 {
        let runs = self
            .counters
            .get(&counters::STATE_CHANGE_RUNS, 0)
            .map_or(0, |per_cpu| per_cpu.iter().copied().sum::<u64>());
        let skipped: u64 = misses
            .iter()
            .filter(|m| m.program == tracer_common::programs::INET_SOCK_SET_STATE)
            .map(|m| m.missed)
            .sum();
        runs + skipped
    }

    fn with_reason(mut self, reason: String) -> Self {
        self.mode_reason = reason;
        self
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
            .ok_or(ProbeError::MissingMap(EVENTS_MAP))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Follows the HTTP/1 requests of Go process `pid` (running `binary`, described by `go`):
    /// each request's stack arrives on the stack ring with kind
    /// [`tracer_common::stacks::KIND_GO_REQUEST`] and the socket it goes out on.
    pub fn attach_go_requests(
        &mut self,
        pid: u32,
        binary: &std::path::Path,
        go: &crate::gohttp::GoHttpBinary,
    ) -> std::result::Result<GoRequestProbe, GoRequestsError> {
        let ebpf = self.ebpf.as_mut().ok_or(GoRequestsError::Missing)?;
        go_requests::attach(ebpf, pid, binary, go)
    }

    /// Undoes [`Probes::attach_go_requests`].
    pub fn detach_go_requests(
        &mut self,
        probe: GoRequestProbe,
    ) -> std::result::Result<(), GoRequestsError> {
        let ebpf = self.ebpf.as_mut().ok_or(GoRequestsError::Missing)?;
        go_requests::detach(ebpf, probe)
    }

    /// The opener-stack ring buffer; can be taken once, before [`Probes::detach`].
    pub fn take_stacks(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .as_mut()
            .and_then(|ebpf| ebpf.take_map(STACKS_MAP))
            .ok_or(ProbeError::MissingMap(STACKS_MAP))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The Go request probe's lost requests; can be taken once.
    pub fn take_lost_requests(&mut self) -> Result<crate::pipeline::LostRequestSource> {
        let map = self
            .ebpf
            .as_mut()
            .and_then(|ebpf| ebpf.take_map(LOST_REQUESTS_MAP))
            .ok_or(ProbeError::MissingMap(LOST_REQUESTS_MAP))?;
        Ok(crate::pipeline::LostRequestSource::new(aya::maps::HashMap::try_from(map)?))
    }

    /// Where the daemon marks suspects: the set and its size; can be taken once.
    pub fn take_stack_suspects(&mut self) -> Result<StackSuspectMaps> {
        let mut take = |name: &'static str| {
            self.ebpf
                .as_mut()
                .and_then(|ebpf| ebpf.take_map(name))
                .ok_or(ProbeError::MissingMap(name))
        };
        let set = take(STACK_SUSPECTS_MAP)?;
        let count = take(STACK_SUSPECT_COUNT_MAP)?;
        Ok(StackSuspectMaps { set: HashMap::try_from(set)?, count: Array::try_from(count)? })
    }

    /// Starts a run of the task iterator: read the file with [`read_task_cgroups`] (blocking,
    /// off the event loop).
    pub fn start_task_cgroups(&mut self) -> Result<std::fs::File, TaskCgroupsError> {
        if let Some(reason) = &self.task_cgroups_unavailable {
            return Err(TaskCgroupsError::Unavailable(reason.clone()));
        }
        let ebpf = self
            .ebpf
            .as_mut()
            .ok_or_else(|| TaskCgroupsError::Unavailable("the probes are detached".into()))?;
        task_cgroups::start(ebpf)
    }

    /// Why the task iterator is unavailable here (`None`: it loaded).
    /// Why the stack capture is off although the policy asked for it: the kernel refused the
    /// capture code in this mode (`None`: it did not, or the policy is `off`).
    pub fn stacks_refused(&self) -> Option<&str> {
        self.stacks_refused.as_deref()
    }

    pub fn task_cgroups_unavailable(&self) -> Option<&str> {
        self.task_cgroups_unavailable.as_deref()
    }

    /// Forwards pending kernel-side log messages to the daemon's log (rare, diagnostic).
    pub fn flush_kernel_log(&mut self) {
        if let Some(logger) = self.kernel_log.as_mut() {
            logger.flush();
        }
    }

    /// Detaches and unloads every program. Nothing is emitted afterwards, so a final drain of
    /// the ring buffer then makes `emitted = received + lost` exact.
    pub fn detach(&mut self) {
        self.hit_counter = None;
        self.kprobes = None;
        self.ebpf = None;
    }

    /// Hits and misses of each kprobe, as the kernel counts them (empty outside kprobe mode).
    pub fn kprobe_misses(&self) -> Vec<ProbeMisses> {
        let Some(kprobes) = &self.kprobes else { return Vec::new() };
        kprobes.misses().unwrap_or_else(|e| {
            log::debug!("cannot read kprobe_profile: {e}");
            Vec::new()
        })
    }

    /// Runs the kernel skipped per loaded program because that program was already running on
    /// the CPU (0 before Linux 5.12; empty once detached). See recursion.rs.
    /// With tracefs, one more entry ([`UNRUN_STATE_CHANGES`]): state-change runs the kernel
    /// neither made nor counted (see unrun.rs).
    pub fn program_misses(&self) -> Vec<ProgramMisses> {
        // tracefs's hits first, so that every hit it counted was already run or skipped.
        let hits = self.hit_counter.as_ref().map(|c| (c, c.hits()));
        let mut out = self.ebpf.as_ref().map(recursion::misses).unwrap_or_default();
        match hits {
            Some((counter, Ok(hits))) if self.ebpf.is_some() => out.push(ProgramMisses {
                program: UNRUN_STATE_CHANGES.to_owned(),
                missed: counter.unrun(hits, self.state_change_runs(&out)),
            }),
            Some((_, Err(e))) => log::debug!("cannot read the tracefs hit count: {e}"),
            _ => {}
        }
        out
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let read =
            |slot: u32| -> Result<u64> { Ok(self.counters.get(&slot, 0)?.iter().copied().sum()) };
        let mut out = KernelCounters::default();
        for kind in EventKind::ALL {
            out.emitted[kind as usize] = read(counters::emitted(kind))?;
            out.lost_ringbuf[kind as usize] = read(counters::lost_ringbuf(kind))?;
        }
        out.accept_unresolved = read(counters::ACCEPT_UNRESOLVED)?;
        out.release_dropped_by_fault_injection =
            read(counters::RELEASE_DROPPED_BY_FAULT_INJECTION)?;
        out.held_closed_map_full = read(counters::HELD_CLOSED_MAP_FULL)?;
        out.stack_captured = read(counters::STACK_CAPTURED)?;
        out.stack_lost_ringbuf = read(counters::STACK_LOST_RINGBUF)?;
        out.stack_unwind_failed = read(counters::STACK_UNWIND_FAILED)?;
        out.stack_window_failed = read(counters::STACK_WINDOW_FAILED)?;
        Ok(out)
    }
}

fn first_line(e: &ProbeError) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    // Verifier logs follow the first sentence; keep the reason, not the log.
    line.split(". Verifier output").next().unwrap_or(line).to_owned()
}

/// Finds program `name` in the object as a `T` (FEntry, KProbe, ...).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { action: "find", program: name.into(), source })
}

/// Wraps a program error with what was being done to which program.
fn step(
    action: &'static str,
    name: &str,
) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    let program = name.to_owned();
    move |source| ProbeError::Program { action, program, source }
}

/// Whether a process with this pid runs: what decides that the tracefs objects a daemon names
/// after its pid (kprobe events, the never-run count's instance) were left by a killed one.
fn pid_runs(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
