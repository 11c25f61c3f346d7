//! Opener stacks in the daemon: the stack ring, the pairing of stacks with connections, the
//! suspects the leak detector marks for the kernel's policy, pinning binaries while their
//! processes live, and the `tracer stacks PID` answer (symbolized off the event loop, within a
//! deadline).
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use serde_json::value::{RawValue, to_raw_value};
use tracer_common::{
    ConnEvent,
    stacks::{StackProcess, StackRecord},
};

use crate::{
    api::answers::{RemoteCount, StackGroup, StacksReport, StacksStatus},
    detect::Detector,
    pipeline::StackSource,
    probes::{KernelCounters, Probes, StackPolicy},
    stacks::{
        self,
        store::{Opener, OpenerStacks, StackId},
        symbolize::{AddressKind, Symbolizer, SymbolizerConfig},
        unwind::Unwinder,
    },
    table::{Applied, ConnectionTable, Direction, Phase, ProcessKey},
};

/// The longest a `tracer stacks` answer waits for symbols; what is not ready by then shows as
/// `module+0xoffset`, and is named in the next answer.
const SYMBOLIZE_DEADLINE: Duration = Duration::from_millis(1500);
/// Remote endpoints listed per group.
const GROUP_REMOTES: usize = 3;

pub(super) struct StackCapture {
    policy: StackPolicy,
    source: StackSource,
    store: OpenerStacks,
    processes: BpfHashMap<MapData, u32, StackProcess>,
    /// Pids marked suspect in the kernel's map.
    suspects: HashSet<u32>,
    symbolizer: Arc<Symbolizer>,
    /// Processes whose binaries are pinned (at their first stack, while they run).
    pinned: HashSet<ProcessKey>,
    /// Recovers the caller a C library wrapper hides from the kernel's walk.
    unwinder: Unwinder,
}

impl StackCapture {
    pub(super) fn start(probes: &mut Probes, policy: StackPolicy) -> crate::Result<Self> {
        let source = StackSource::new(probes.take_stacks()?);
        let processes = probes.take_stack_processes()?;
        let symbolizer = Symbolizer::start(SymbolizerConfig {
            fallback: Some(stacks::go_fallback()),
            ..SymbolizerConfig::default()
        })?;
        Ok(Self {
            policy,
            source,
            store: OpenerStacks::default(),
            processes,
            suspects: HashSet::new(),
            symbolizer: Arc::new(symbolizer),
            pinned: HashSet::new(),
            unwinder: Unwinder::default(),
        })
    }

    pub(super) fn on_event(
        &mut self,
        event: &ConnEvent,
        applied: &Applied,
        table: &ConnectionTable,
    ) {
        self.store.on_event(event, applied, table);
    }

    /// Reads the stack ring; pins the binaries of each process at its first stack, while it
    /// still runs (its stacks stay readable after it exits), and recovers the frames its C
    /// library's wrappers hid from the kernel's frame-pointer walk.
    pub(super) fn drain(&mut self, table: &ConnectionTable, now_ns: u64) {
        let Self { source, store, symbolizer, pinned, unwinder, .. } = self;
        source.drain(|record| {
            let process = ProcessKey::new(record.tgid, record.start_time_ns);
            if pinned.insert(process)
                && let Err(e) = symbolizer.pin(record.tgid)
            {
                log::debug!("cannot pin pid {} for symbolization: {e}", record.tgid);
            }
            let recovered =
                symbolizer.pinned(record.tgid).and_then(|p| unwinder.recover(&p, record));
            match recovered {
                Some(frames) => store.on_stack(&with_frames(record, &frames), table, now_ns),
                None => store.on_stack(record, table, now_ns),
            }
        });
    }

    /// After a reconcile corrected the table: connections it dropped without a release event
    /// leave the store too (every other end of a connection arrives as an event).
    pub(super) fn after_corrections(&mut self, table: &ConnectionTable) {
        if self.store.tracked_connections() > 0 {
            let alive: HashSet<u64> = table.connections().map(|view| view.id()).collect();
            self.store.retain_connections(|id| alive.contains(&id));
        }
    }

    /// Once a second: stacks that waited too long for their connection go, and so do the pins
    /// of processes the table forgot.
    pub(super) fn housekeeping(&mut self, table: &ConnectionTable, now_ns: u64) {
        self.store.expire(now_ns);
        let gone: Vec<ProcessKey> =
            self.pinned.iter().filter(|p| table.process(**p).is_none()).copied().collect();
        for process in gone {
            self.pinned.remove(&process);
            self.symbolizer.forget(process.pid);
        }
        self.unwinder.sweep();
    }

    /// Marks the detector's suspects in the kernel's map (every connection of theirs is then
    /// captured) and unmarks those that are no longer.
    pub(super) fn mark_suspects(&mut self, detector: &Detector) {
        if self.policy == StackPolicy::Off || self.policy == StackPolicy::All {
            return;
        }
        let now: HashSet<u32> = detector.suspects().map(|p| p.pid).collect();
        for (pid, suspect) in now
            .difference(&self.suspects)
            .map(|pid| (*pid, 1))
            .chain(self.suspects.difference(&now).map(|pid| (*pid, 0)))
            .collect::<Vec<_>>()
        {
            let mut state = self.processes.get(&pid, 0).unwrap_or_default();
            state.suspect = suspect;
            if let Err(e) = self.processes.insert(pid, state, 0) {
                log::debug!("cannot mark pid {pid} as suspect={suspect}: {e}");
            }
        }
        self.suspects = now;
    }

    pub(super) fn status(&self, kernel: &KernelCounters) -> StacksStatus {
        let counters = self.store.counters();
        let symbolizer = self.symbolizer.stats();
        StacksStatus {
            policy: self.policy.to_string(),
            captured: kernel.stack_captured,
            lost_ringbuf: kernel.stack_lost_ringbuf,
            unwind_failed: kernel.stack_unwind_failed,
            window_failed: kernel.stack_window_failed,
            frames_recovered: self.unwinder.counters().recovered,
            orphaned: counters.orphaned,
            distinct: self.store.stack_count() as u64,
            pinned_processes: symbolizer.pinned_processes as u64,
            pinned_files: symbolizer.pinned_files as u64,
            symbol_cache_bytes: symbolizer.cached_bytes as u64,
        }
    }

    /// `tracer stacks PID` with the frames left to resolve.
    pub(super) fn draft(
        &self,
        table: &ConnectionTable,
        pid: u32,
        now_ns: u64,
    ) -> Result<StacksDraft, String> {
        let process = table
            .processes()
            .filter(|p| p.pid() == pid)
            .max_by_key(|p| p.start_time_ns())
            .ok_or_else(|| {
                format!(
                    "no process {pid} in the table (it holds no connection tracer has seen, or \
                     it exited longer ago than --exited-grace)"
                )
            })?;
        let mut report = StacksReport {
            pid,
            comm: process.comm().into_owned(),
            open: process.open,
            policy: self.policy.to_string(),
            groups: Vec::new(),
            opened_before_capture: 0,
            not_sampled: 0,
            stack_missing: 0,
            held_by_another_process: 0,
        };
        struct Acc {
            count: u32,
            direction: Direction,
            oldest_ns: u64,
            remotes: HashMap<String, u32>,
        }
        let mut groups: HashMap<StackId, Acc> = HashMap::new();
        for view in table.connections() {
            let conn = view.conn;
            if conn.phase() != Phase::Open || conn.owner() != Some(process.key) {
                continue;
            }
            match self.store.opener(conn.id, conn.preexisting) {
                Opener::BeforeCapture => report.opened_before_capture += 1,
                Opener::NotSampled => report.not_sampled += 1,
                Opener::Wanted => report.stack_missing += 1,
                Opener::Stack(id) => {
                    if self.store.stack(id).is_none_or(|s| s.process != process.key) {
                        report.held_by_another_process += 1;
                        continue;
                    }
                    let acc = groups.entry(id).or_insert(Acc {
                        count: 0,
                        direction: conn.direction,
                        oldest_ns: 0,
                        remotes: HashMap::new(),
                    });
                    acc.count += 1;
                    acc.oldest_ns = acc.oldest_ns.max(conn.age_ns(now_ns));
                    *acc.remotes.entry(conn.remote().to_string()).or_default() += 1;
                }
            }
        }
        let mut groups: Vec<(StackId, Acc)> = groups.into_iter().collect();
        groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        let mut addresses = Vec::with_capacity(groups.len());
        for (id, acc) in groups {
            let mut remotes: Vec<(String, u32)> = acc.remotes.into_iter().collect();
            remotes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            remotes.truncate(GROUP_REMOTES);
            report.groups.push(StackGroup {
                count: acc.count,
                direction: acc.direction,
                oldest_age_seconds: acc.oldest_ns / 1_000_000_000,
                top_remotes: remotes
                    .into_iter()
                    .map(|(remote, open)| RemoteCount { remote, open })
                    .collect(),
                leading_function: None,
                frames: Vec::new(),
            });
            addresses.push(self.store.stack(id).map(|s| s.frames.to_vec()).unwrap_or_default());
        }
        Ok(StacksDraft { report, addresses, symbolizer: Arc::clone(&self.symbolizer) })
    }
}

/// `record` with `frames` (innermost first) in place of its own, as many as it holds.
fn with_frames(record: &StackRecord, frames: &[u64]) -> StackRecord {
    let mut out = *record;
    let n = frames.len().min(out.frames.len());
    out.frames[..n].copy_from_slice(&frames[..n]);
    out.depth = n as u32;
    out
}

/// A `tracer stacks` answer whose frames are still addresses.
pub(super) struct StacksDraft {
    report: StacksReport,
    /// Per group, its stack's addresses, innermost first.
    addresses: Vec<Vec<u64>>,
    symbolizer: Arc<Symbolizer>,
}

impl StacksDraft {
    /// Symbolizes every group's frames, waiting at most [`SYMBOLIZE_DEADLINE`] in all.
    pub(super) async fn finish(mut self) -> Result<Box<RawValue>, String> {
        let pid = self.report.pid;
        let deadline = tokio::time::Instant::now() + SYMBOLIZE_DEADLINE;
        for (group, addresses) in self.report.groups.iter_mut().zip(&self.addresses) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Return addresses all but the first, which is where the thread entered the
            // kernel: looking both up one byte back stays inside their functions.
            let resolved =
                self.symbolizer.resolve_within(pid, addresses, AddressKind::Return, left).await;
            group.frames = resolved.into_iter().flat_map(|r| r.frames).collect();
            group.leading_function = stacks::leading_function(&group.frames);
        }
        to_raw_value(&self.report).map_err(|e| format!("cannot encode the answer: {e}"))
    }
}
