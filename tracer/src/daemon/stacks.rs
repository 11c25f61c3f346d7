//! Opener stacks in the daemon: the stack ring, the pairing of stacks with connections, the
//! suspects the leak detector marks for the kernel's policy, pinning binaries while their
//! processes live, and the `tracer stacks PID` answer (symbolized off the event loop, within a
//! deadline).
use std::{
    collections::{HashMap, HashSet},
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::value::{RawValue, to_raw_value};
use tracer_common::{ConnEvent, stacks::StackRecord};

use crate::{
    api::answers::{
        AlertStacks, NoStack, RemoteCount, RequestGroups, StackGroup, StacksReport, StacksStatus,
        Unstacked,
    },
    detect::{Alert, Detector},
    pipeline::{LostRequestSource, StackSource},
    probes::{KernelCounters, Probes, StackPolicy, StackSuspectMaps},
    stacks::{
        self,
        store::{Opener, OpenerStacks, RequestSeen, StackId},
        symbolize::{AddressKind, SymbolizeError, Symbolizer, SymbolizerConfig},
        unwind::Unwinder,
    },
    table::{Applied, ConnView, ConnectionTable, Direction, Phase, ProcessKey, SocketKey},
};

/// The longest a `tracer stacks` answer waits for symbols; what is not ready by then shows as
/// `module+0xoffset`, and is named in the next answer.
const SYMBOLIZE_DEADLINE: Duration = Duration::from_millis(1500);
/// The longest a raised alert's evidence waits for symbols. Nobody waits on it but the alert's
/// webhook, and its names are kept for good: the first stack of a large Go binary takes tens
/// of milliseconds here, seconds on a slow or loaded machine.
pub(super) const EVIDENCE_SYMBOLIZE_DEADLINE: Duration = Duration::from_secs(30);
/// Remote endpoints listed per group.
const GROUP_REMOTES: usize = 3;
/// Stack groups an alert's evidence keeps.
const ALERT_GROUPS: usize = 3;

pub(super) struct StackCapture {
    /// The policy asked for (`--stacks`).
    policy: StackPolicy,
    /// Why nothing is captured although the policy asks for stacks: the kernel refused the
    /// capture code in this probe mode, and the programs were loaded without it.
    refused: Option<String>,
    source: StackSource,
    lost_requests: LostRequestSource,
    store: OpenerStacks,
    suspect_maps: StackSuspectMaps,
    /// Pids marked suspect in the kernel's map.
    suspects: HashSet<u32>,
    symbolizer: Arc<Symbolizer>,
    /// Processes whose binaries are pinned (at their first stack, while they run).
    pinned: HashSet<ProcessKey>,
    /// Processes that had exited by the time their first stack was read.
    exited_before_pinning: u64,
    /// Processes whose pinning the symbolizer's limits refused (their stacks stay
    /// `module+0xoffset`).
    pins_refused: u64,
    /// Processes none of whose binaries could be opened (no permission, most often: a
    /// capability dropped), and the last such failure in words.
    pins_failed: u64,
    last_pin_failure: Option<String>,
    /// Suspects the kernel's map refused (their connections stay sampled only).
    suspects_unmarked: u64,
    /// Frames left unnamed in answers and evidence (shared with the tasks that symbolize).
    frames_unsymbolized: Arc<AtomicU64>,
    /// Recovers the caller a C library wrapper hides from the kernel's walk.
    unwinder: Unwinder,
}

impl StackCapture {
    /// `inspection`: who parses the pinned files (symbolization, unwind rules); the daemon
    /// only opens them when it is the inspector part.
    pub(super) fn start(
        probes: &mut Probes,
        policy: StackPolicy,
        inspection: &crate::privsep::inspector::Inspection,
    ) -> crate::Result<Self> {
        let source = StackSource::new(probes.take_stacks()?);
        let lost_requests = probes.take_lost_requests()?;
        let suspect_maps = probes.take_stack_suspects()?;
        let refused = probes.stacks_refused().map(str::to_owned);
        let symbolizer = Symbolizer::start(SymbolizerConfig {
            fallback: Some(stacks::go_fallback()),
            elsewhere: inspection.resolver(),
            ..SymbolizerConfig::default()
        })?;
        Ok(Self {
            policy,
            refused,
            source,
            lost_requests,
            store: OpenerStacks::default(),
            suspect_maps,
            suspects: HashSet::new(),
            symbolizer: Arc::new(symbolizer),
            pinned: HashSet::new(),
            exited_before_pinning: 0,
            pins_refused: 0,
            pins_failed: 0,
            last_pin_failure: None,
            suspects_unmarked: 0,
            frames_unsymbolized: Arc::new(AtomicU64::new(0)),
            unwinder: inspection.rules().map_or_else(Unwinder::default, Unwinder::with_rules),
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
        let Self {
            source,
            lost_requests,
            store,
            symbolizer,
            pinned,
            exited_before_pinning,
            pins_refused,
            pins_failed,
            last_pin_failure,
            unwinder,
            ..
        } = self;
        // Go request stacks read at the last drain before their connection's event was.
        store.retry_requests(table);
        source.drain(|record| {
            let process = ProcessKey::new(record.tgid, record.start_time_ns);
            if pinned.insert(process)
                && let Err(e) = symbolizer.pin(record.tgid)
            {
                if exited(&e) {
                    *exited_before_pinning += 1;
                } else if matches!(e, SymbolizeError::Limit { .. }) {
                    *pins_refused += 1;
                } else {
                    // Said once at warn (a missing capability fails for every process alike),
                    // then counted, with the latest reason in `tracer status`.
                    if *pins_failed == 0 {
                        log::warn!("stacks of pid {} cannot be symbolized: {e}", record.tgid);
                    }
                    *pins_failed += 1;
                    *last_pin_failure = Some(e.to_string());
                }
                log::debug!("cannot pin pid {} for symbolization: {e}", record.tgid);
            }
            let recovered =
                symbolizer.pinned(record.tgid).and_then(|p| unwinder.recover(&p, record));
            match recovered {
                Some(frames) => store.on_stack(&with_frames(record, &frames), table, now_ns),
                None => store.on_stack(record, table, now_ns),
            }
        });
        // After the ring: a request sent before its socket's loss was read above.
        for (sock, lost) in lost_requests.take() {
            store.on_lost_request(SocketKey { netns: lost.netns, sock }, &lost, table);
        }
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
    /// captured) and unmarks those that are no longer. The count the kernel checks first is
    /// raised after the entries appear and lowered after they go.
    pub(super) fn mark_suspects(&mut self, detector: &Detector) {
        if !self.capturing() || self.policy == StackPolicy::All {
            return;
        }
        let now: HashSet<u32> = detector.suspects().map(|p| p.pid).collect();
        if now == self.suspects {
            return;
        }
        let maps = &mut self.suspect_maps;
        for pid in now.difference(&self.suspects) {
            if let Err(e) = maps.set.insert(pid, 1, 0) {
                self.suspects_unmarked += 1;
                log::debug!("cannot mark pid {pid} as a suspect: {e}");
            }
        }
        for pid in self.suspects.difference(&now) {
            if let Err(e) = maps.set.remove(pid) {
                log::debug!("cannot unmark pid {pid} as a suspect: {e}");
            }
        }
        let count = maps.set.keys().count() as u32;
        if let Err(e) = maps.count.set(0, count, 0) {
            log::debug!("cannot set the suspect count to {count}: {e}");
        }
        self.suspects = now;
    }

    /// Whether the kernel captures stacks: the policy asks for some, and the kernel took the
    /// capture code.
    fn capturing(&self) -> bool {
        self.policy != StackPolicy::Off && self.refused.is_none()
    }

    /// `tracer status`'s `capture` and its reason when off.
    fn capture_state(&self) -> (&'static str, Option<String>) {
        match (&self.refused, self.policy) {
            (Some(reason), _) => ("off", Some(reason.clone())),
            (None, StackPolicy::Off) => ("off", Some("the policy is off (--stacks off)".into())),
            (None, _) => ("on", None),
        }
    }

    /// The store's counters (requests included).
    pub(super) fn counters(&self) -> crate::stacks::store::StackCounters {
        self.store.counters()
    }

    pub(super) fn status(&self, kernel: &KernelCounters) -> StacksStatus {
        let counters = self.store.counters();
        let symbolizer = self.symbolizer.stats();
        let (capture, capture_off_reason) = self.capture_state();
        StacksStatus {
            policy: self.policy.to_string(),
            capture: capture.to_owned(),
            capture_off_reason,
            captured: kernel.stack_captured,
            lost_ringbuf: kernel.stack_lost_ringbuf,
            unwind_failed: kernel.stack_unwind_failed,
            window_failed: kernel.stack_window_failed,
            frames_recovered: self.unwinder.counters().recovered,
            orphaned: counters.orphaned,
            exited_before_pinning: self.exited_before_pinning,
            pins_refused: self.pins_refused,
            pins_failed: self.pins_failed,
            last_pin_failure: self.last_pin_failure.clone(),
            suspects_unmarked: self.suspects_unmarked,
            frames_unsymbolized: self.frames_unsymbolized.load(Ordering::Relaxed),
            distinct: self.store.stack_count() as u64,
            pinned_processes: symbolizer.pinned_processes as u64,
            pinned_files: symbolizer.pinned_files as u64,
            symbol_cache_bytes: symbolizer.cached_bytes as u64,
        }
    }

    /// Connection `view`'s stack group, or why it has none.
    pub(super) fn group_of(&self, view: &ConnView<'_>) -> Result<StackId, NoStack> {
        match self.store.opener(view.conn.id, view.conn.preexisting) {
            Opener::BeforeCapture => Err(NoStack::OpenedBeforeCapture),
            Opener::NotSampled => Err(NoStack::NotSampled),
            Opener::Wanted => Err(NoStack::StackMissing),
            Opener::Stack(id) => match self.store.stack(id) {
                Some(stack) if Some(stack.process) == view.conn.owner() => Ok(id),
                _ => Err(NoStack::HeldByAnotherProcess),
            },
        }
    }

    /// The open connections of `process` that `behind` selects, grouped by opener stack (most
    /// connections first), with how many of them were selected.
    fn group(
        &self,
        table: &ConnectionTable,
        process: ProcessKey,
        now_ns: u64,
        behind: impl FnMut(&ConnView<'_>) -> bool,
    ) -> (GroupsDraft, Unstacked, u32) {
        let mut unstacked = Unstacked::default();
        let (draft, selected) = self.group_by(
            table,
            process,
            now_ns,
            behind,
            |view| self.group_of(view),
            |reason| unstacked.count(reason),
        );
        (draft, unstacked, selected)
    }

    /// The open connections of `process` that `behind` selects, grouped by the stack `key`
    /// gives each (most connections first), with how many were selected; `unkeyed` counts
    /// those that have none, by reason.
    fn group_by<E>(
        &self,
        table: &ConnectionTable,
        process: ProcessKey,
        now_ns: u64,
        mut behind: impl FnMut(&ConnView<'_>) -> bool,
        key: impl Fn(&ConnView<'_>) -> Result<StackId, E>,
        mut unkeyed: impl FnMut(E),
    ) -> (GroupsDraft, u32) {
        struct Acc {
            count: u32,
            direction: Direction,
            oldest_ns: u64,
            remotes: HashMap<String, u32>,
        }
        let mut selected = 0;
        let mut groups: HashMap<StackId, Acc> = HashMap::new();
        for view in table.connections() {
            let conn = view.conn;
            if conn.phase() != Phase::Open || conn.owner() != Some(process) || !behind(&view) {
                continue;
            }
            selected += 1;
            match key(&view) {
                Err(reason) => unkeyed(reason),
                Ok(id) => {
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
        let mut draft = GroupsDraft {
            pid: process.pid,
            groups: Vec::with_capacity(groups.len()),
            addresses: Vec::with_capacity(groups.len()),
            symbolizer: Arc::clone(&self.symbolizer),
            unsymbolized: Arc::clone(&self.frames_unsymbolized),
        };
        for (id, acc) in groups {
            let mut remotes: Vec<(String, u32)> = acc.remotes.into_iter().collect();
            remotes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            remotes.truncate(GROUP_REMOTES);
            draft.groups.push(StackGroup {
                id: id.0,
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
            draft
                .addresses
                .push(self.store.stack(id).map(|s| s.frames.to_vec()).unwrap_or_default());
        }
        (draft, selected)
    }

    /// `process`'s open connections by the stack of their last Go request, if the request
    /// probe was attached to it at `probed_since`.
    fn request_groups(
        &self,
        table: &ConnectionTable,
        process: ProcessKey,
        probed_since: u64,
        now_ns: u64,
        behind: impl FnMut(&ConnView<'_>) -> bool,
    ) -> (RequestGroups, GroupsDraft) {
        let mut report = RequestGroups {
            probed_for_seconds: now_ns.saturating_sub(probed_since) / 1_000_000_000,
            ..RequestGroups::default()
        };
        let (draft, selected) = self.group_by(
            table,
            process,
            now_ns,
            behind,
            |view| match self.store.last_request(view.conn.id) {
                Some(RequestSeen::Stack(stack)) => Ok(stack),
                Some(RequestSeen::Lost) => Err(NoRequest::Lost),
                None if view.conn.preexisting
                    || view.conn.opened_at_ns().is_none_or(|at| at < probed_since) =>
                {
                    Err(NoRequest::BeforeProbing)
                }
                None => Err(NoRequest::NotSeen),
            },
            |why| match why {
                NoRequest::BeforeProbing => report.before_probing += 1,
                NoRequest::NotSeen => report.no_request += 1,
                NoRequest::Lost => report.request_lost += 1,
            },
        );
        report.connections = selected;
        (report, draft)
    }

    /// `tracer stacks PID` with the frames left to resolve.
    pub(super) fn draft(
        &self,
        table: &ConnectionTable,
        containers: &crate::containers::Directory,
        go_requests: &super::go_requests::GoRequests,
        pid: u32,
        now_ns: u64,
    ) -> Result<StacksDraft, String> {
        let process = table
            .processes()
            .filter(|p| p.pid() == pid)
            .max_by_key(|p| p.start_time_ns())
            .ok_or_else(|| gone_message(table, pid, now_ns))?;
        let (groups, unstacked, _) = self.group(table, process.key, now_ns, |_| true);
        let requests = go_requests
            .probed_since(process.key)
            .map(|since| self.request_groups(table, process.key, since, now_ns, |_| true));
        let (requests, request_groups) = match requests {
            Some((report, draft)) => (Some(report), Some(draft)),
            None => (None, None),
        };
        let no_requests = request_groups.as_ref().is_none_or(|d| d.groups.is_empty());
        if groups.groups.is_empty() && no_requests {
            return Err(no_stacks_message(
                pid,
                &process.comm(),
                process.open,
                self.policy,
                self.refused.as_deref(),
                &unstacked,
            ));
        }
        let report = StacksReport {
            pid,
            comm: process.comm().into_owned(),
            container: containers.container(process.cgroup_id).cloned(),
            open: process.open,
            policy: self.policy.to_string(),
            groups: Vec::new(),
            unstacked,
            requests,
        };
        Ok(StacksDraft { report, groups, request_groups })
    }

    /// The stacks behind an alert that just raised: the largest groups of the connections
    /// `behind` selects, by opener stack and, when the process's Go requests are probed (since
    /// `probed_since`), by last request; named as far as the symbolizer's cache goes (no wait),
    /// with what is left to symbolize. `None` when capture is off.
    pub(super) fn alert_evidence(
        &self,
        table: &ConnectionTable,
        alert: &Alert,
        now_ns: u64,
        probed_since: Option<u64>,
        behind: impl Fn(&ConnView<'_>) -> bool + Copy,
    ) -> Option<(AlertStacks, EvidenceDraft)> {
        if !self.capturing() {
            return None;
        }
        let process = ProcessKey::new(alert.pid, alert.start_time_ns);
        let (mut draft, unstacked, connections) = self.group(table, process, now_ns, behind);
        let in_other_groups = draft.truncate(ALERT_GROUPS);
        let mut now = AlertStacks {
            connections,
            groups: draft.groups.clone(),
            in_other_groups,
            unstacked,
            requests: None,
        };
        draft.fill_cached(&mut now.groups);
        let requests = probed_since.map(|since| {
            let (report, draft) = self.request_evidence(table, process, since, now_ns, behind);
            now.requests = Some(report);
            draft
        });
        Some((now, EvidenceDraft { openers: draft, requests }))
    }

    /// The request groups of an alert's evidence: the connections `behind` selects by last
    /// request, the largest groups named as far as the symbolizer's cache goes.
    pub(super) fn request_evidence(
        &self,
        table: &ConnectionTable,
        process: ProcessKey,
        probed_since: u64,
        now_ns: u64,
        behind: impl Fn(&ConnView<'_>) -> bool,
    ) -> (RequestGroups, GroupsDraft) {
        let (mut report, mut draft) =
            self.request_groups(table, process, probed_since, now_ns, behind);
        report.in_other_groups = draft.truncate(ALERT_GROUPS);
        report.groups = draft.groups.clone();
        draft.fill_cached(&mut report.groups);
        (report, draft)
    }
}

/// An alert's stack groups whose frames are still addresses: by opener, and by last request.
pub(super) struct EvidenceDraft {
    openers: GroupsDraft,
    requests: Option<GroupsDraft>,
}

impl EvidenceDraft {
    /// Names `stacks`' groups (those this draft was made with), waiting at most `wait` for
    /// each kind.
    pub(super) async fn finish(self, stacks: &mut AlertStacks, wait: Duration) {
        stacks.groups = self.openers.finish(wait).await;
        if let (Some(draft), Some(requests)) = (self.requests, stacks.requests.as_mut()) {
            requests.groups = draft.finish(wait).await;
        }
    }
}

/// Why a connection is in no request group.
enum NoRequest {
    BeforeProbing,
    NotSeen,
    Lost,
}

/// Why `tracer stacks PID` has nothing for a `pid` the table does not hold: it exited longer
/// ago than `--exited-grace` (the table remembers the last processes it dropped), or tracer
/// never saw it.
fn gone_message(table: &ConnectionTable, pid: u32, now_ns: u64) -> String {
    let secs = |ns: u64| ns / 1_000_000_000;
    match table.forgotten(pid) {
        Some(gone) => format!(
            "process {pid} ({}) exited {}s ago, longer ago than --exited-grace ({}s): its \
             connections and stacks were dropped {}s ago (stacks of its leak alerts stay in \
             `tracer leaks`)",
            gone.comm(),
            secs(now_ns.saturating_sub(gone.exited_at_ns)),
            secs(table.config().exited_grace_ns),
            secs(now_ns.saturating_sub(gone.forgotten_at_ns)),
        ),
        None => format!(
            "no process {pid} in the table (it holds no connection tracer has seen, or it \
             exited longer ago than --exited-grace and was forgotten since)"
        ),
    }
}

/// Why a process the table holds has no stack group: each reason its open connections have
/// none, with how to get stacks next time.
fn no_stacks_message(
    pid: u32,
    comm: &str,
    open: u32,
    policy: StackPolicy,
    refused: Option<&str>,
    unstacked: &Unstacked,
) -> String {
    let head = format!("process {pid} ({comm}) has no captured stacks");
    if let Some(reason) = refused {
        return format!(
            "{head}: stack capture is off in this probe mode ({reason}); the daemon runs \
             without it (`tracer status` says so), see docs/stacks.md"
        );
    }
    if policy == StackPolicy::Off {
        return format!(
            "{head}: stack capture is off (--stacks off); start the daemon with --stacks \
             sampled (the default) or --stacks all to capture the stacks of new connections"
        );
    }
    if open == 0 {
        return format!(
            "{head}: it holds no open connection (stacks are shown for open connections only)"
        );
    }
    let mut reasons = Vec::new();
    if unstacked.not_sampled > 0 {
        let how = match policy {
            StackPolicy::Suspects => {
                "--stacks suspects captures only the connections of \
                                      processes the leak detector suspects, and this one is \
                                      not one"
            }
            _ => {
                "--stacks sampled captures every --stack-sample'th connection of each \
                  process, and none of these was one"
            }
        };
        reasons.push(format!(
            "{} not sampled ({how}; its new connections are all captured once its open \
             count keeps rising and it becomes a suspect, or with --stacks all)",
            unstacked.not_sampled
        ));
    }
    if unstacked.opened_before_capture > 0 {
        reasons.push(format!(
            "{} opened before capture began (before the daemon started, or found by a scan): \
             only connections opened from then on have stacks",
            unstacked.opened_before_capture
        ));
    }
    if unstacked.stack_missing > 0 {
        reasons.push(format!(
            "{} with their stack lost (stacks.lost_ringbuf and stacks.unwind_failed in \
             `tracer status`)",
            unstacked.stack_missing
        ));
    }
    if unstacked.held_by_another_process > 0 {
        reasons.push(format!(
            "{} opened by another process (a parent before fork, or a passed descriptor): \
             ask `tracer stacks` of the process that opened them",
            unstacked.held_by_another_process
        ));
    }
    format!("{head}: of its {open} open connections, {}", reasons.join("; "))
}

/// Whether pinning failed because the process was gone.
fn exited(error: &SymbolizeError) -> bool {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3);
    match error {
        SymbolizeError::ReadMaps { source, .. } | SymbolizeError::NothingPinned { source, .. } => {
            gone(source)
        }
        _ => false,
    }
}

/// Stack groups whose frames are still addresses.
pub(super) struct GroupsDraft {
    pid: u32,
    groups: Vec<StackGroup>,
    /// Per group, its stack's addresses, innermost first.
    addresses: Vec<Vec<u64>>,
    symbolizer: Arc<Symbolizer>,
    unsymbolized: Arc<AtomicU64>,
}

// Return addresses all but the first, which is where the thread entered the kernel: looking
// both up one byte back stays inside their functions.
const KIND: AddressKind = AddressKind::Return;

impl GroupsDraft {
    /// Keeps the first `groups` groups; returns how many connections the others held.
    fn truncate(&mut self, groups: usize) -> u32 {
        let dropped = self.groups.iter().skip(groups).map(|g| g.count).sum();
        self.groups.truncate(groups);
        self.addresses.truncate(groups);
        dropped
    }

    /// Names `groups` (this draft's, in order) from the symbolizer's cache, without waiting:
    /// the rest shows as `module+0xoffset`.
    fn fill_cached(&self, groups: &mut [StackGroup]) {
        for (group, addresses) in groups.iter_mut().zip(&self.addresses) {
            let resolved = self.symbolizer.cached(self.pid, addresses, KIND);
            group.frames = resolved.into_iter().flat_map(|r| r.frames).collect();
            group.leading_function = stacks::leading_function(&group.frames);
        }
    }

    /// Has the symbolizer name every group's frames (for a later [`Self::fill_cached`]),
    /// waiting at most `wait` in all; counts nothing.
    pub(super) async fn warm(self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        for addresses in &self.addresses {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = self.symbolizer.resolve_within(self.pid, addresses, KIND, left).await;
        }
    }

    /// Symbolizes every group's frames, waiting at most `wait` in all, and counts the frames
    /// left unnamed.
    pub(super) async fn finish(mut self, wait: Duration) -> Vec<StackGroup> {
        let deadline = tokio::time::Instant::now() + wait;
        for (group, addresses) in self.groups.iter_mut().zip(&self.addresses) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let resolved = self.symbolizer.resolve_within(self.pid, addresses, KIND, left).await;
            group.frames = resolved.into_iter().flat_map(|r| r.frames).collect();
            group.leading_function = stacks::leading_function(&group.frames);
            let unnamed = group.frames.iter().filter(|f| f.function.is_none()).count();
            self.unsymbolized.fetch_add(unnamed as u64, Ordering::Relaxed);
        }
        self.groups
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
    groups: GroupsDraft,
    request_groups: Option<GroupsDraft>,
}

impl StacksDraft {
    /// Symbolizes every group's frames, waiting at most [`SYMBOLIZE_DEADLINE`] for each kind.
    pub(super) async fn finish(mut self) -> Result<Box<RawValue>, String> {
        self.report.groups = self.groups.finish(SYMBOLIZE_DEADLINE).await;
        if let (Some(requests), Some(draft)) = (self.report.requests.as_mut(), self.request_groups)
        {
            requests.groups = draft.finish(SYMBOLIZE_DEADLINE).await;
        }
        to_raw_value(&self.report).map_err(|e| format!("cannot encode the answer: {e}"))
    }
}
