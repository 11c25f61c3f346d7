//! The connection table: every tracked socket and per-process aggregates, updated from the one
//! ordered stream of [`ConnEvent`]s. Pure and deterministic: no clock is read here (event
//! timestamps and an explicit `now_ns` are the only time), nothing touches BPF, and applying an
//! event allocates nothing beyond amortised map growth.
//!
//! Counting follows docs/semantics.md. The aggregates are never edited piecemeal: each entry
//! contributes to exactly one place (an owner's `connecting`, an owner's `open` and state
//! counts, or `unattributed`), and every change to an entry withdraws its old contribution and
//! adds its new one (`Aggregates::withdraw` then `Aggregates::add`), so the counts cannot
//! drift from the entries.
mod model;
mod reconcile;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use tracer_common::{ConnEvent, EventKind, tcp_state};

pub use model::{
    ClosedFirst, Connection, Direction, DirectionStats, Phase, ProcessKey, ProcessStats,
    START_TIME_RESOLUTION_NS, SocketKey, StateCounts, TupleKey,
};
pub use reconcile::{
    KernelSockets, ReconcileReport, Reconciler, ScannedHolder, ScannedSocket, UnlistedHolders,
};
pub use snapshot::{ConnSnapshot, ConnView, ProcessSnapshot, TableSummary};

/// States only a connection past its handshake reaches (CLOSE and SYN_SENT are not: a failed
/// connect has them too).
fn past_handshake(state: u8) -> bool {
    matches!(
        state,
        tcp_state::ESTABLISHED
            | tcp_state::CLOSE_WAIT
            | tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSING
            | tcp_state::LAST_ACK
            | tcp_state::TIME_WAIT
    )
}

/// How long an exited process stays listed by default.
pub const DEFAULT_EXITED_GRACE_NS: u64 = 60 * 1_000_000_000;

/// Most connections the table tracks by default (`tracer run --max-connections`): about 0.2 GB
/// of table at the measured cost per entry (docs/security.md, "Memory bounds").
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_000_000;
/// Most processes the table tracks by default (`tracer run --max-processes`).
pub const DEFAULT_MAX_PROCESSES: usize = 100_000;
/// The largest `--max-connections` accepted: 100 million entries would take about 20 GB.
pub const MAX_CONNECTIONS_CEILING: usize = 100_000_000;
/// The largest `--max-processes` accepted: Linux's own ceiling on pids (PID_MAX_LIMIT).
pub const MAX_PROCESSES_CEILING: usize = 4_194_304;

/// Fixed-key hashing: iteration order depends only on the events applied, so runs replay
/// identically. Keys are kernel addresses and pids, which no remote peer chooses.
type Map<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
type Set<K> = HashSet<K, rustc_hash::FxBuildHasher>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// How long an exited process stays listed (once it holds nothing).
    pub exited_grace_ns: u64,
    /// How long an unaccepted connection that reached `close` stays in the backlog view: it can
    /// still be accepted for a while, but a listener that closed never reports it again.
    pub closed_backlog_grace_ns: u64,
    /// Most sockets tracked at once (entries in any phase); a new one beyond is refused and
    /// counted in [`TableCounters::connections_over_limit`].
    pub max_connections: usize,
    /// Most processes tracked at once (alive, or exited within the grace period); a new one
    /// beyond is refused, with its connection, and counted in
    /// [`TableCounters::processes_over_limit`].
    pub max_processes: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            exited_grace_ns: DEFAULT_EXITED_GRACE_NS,
            closed_backlog_grace_ns: DEFAULT_EXITED_GRACE_NS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_processes: DEFAULT_MAX_PROCESSES,
        }
    }
}

/// Checks a `--max-connections` or `--max-processes` value: at least 1 and at most `ceiling`,
/// with an error that names the flag and the fix.
pub fn check_limit(flag: &str, value: usize, ceiling: usize) -> Result<(), String> {
    if value == 0 {
        return Err(format!(
            "--{flag} 0 would track nothing: give at least 1 (the default is {})",
            if flag == "max-processes" { DEFAULT_MAX_PROCESSES } else { DEFAULT_MAX_CONNECTIONS }
        ));
    }
    if value > ceiling {
        let why = if flag == "max-processes" {
            "Linux's own ceiling on pids"
        } else {
            "more than any host holds in memory"
        };
        return Err(format!(
            "--{flag} {value} is beyond {ceiling} ({why}): give at most {ceiling} \
             (docs/security.md, \"Memory bounds\", has the bytes per entry)"
        ));
    }
    Ok(())
}

/// Events the table could not match to what it knows; each is a sign of a missed event or of
/// state that predates the daemon, never silently absorbed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounters {
    /// Releases of sockets the table never knew (for example opened before the daemon started).
    pub unmatched_releases: u64,
    /// State changes (or failed connects) of sockets the table never knew.
    pub unknown_socket_events: u64,
    /// A new lifecycle started on a socket address whose previous release was never seen.
    pub stale_replaced: u64,
    /// Connections released while nobody was their known owner.
    pub released_unattributed: u64,
    /// Records with an event kind this build does not know.
    pub invalid_events: u64,
    /// Outbound connections whose Established event never came (the kernel skipped the
    /// program, see probes/recursion.rs) but whose later events showed them past the
    /// handshake: counted as opened then, not as failed connects.
    #[serde(default)]
    pub established_inferred: u64,
    /// Connections not tracked because the table held `max_connections` entries (each counted
    /// once, when refused; it stays untracked for its life).
    #[serde(default)]
    pub connections_over_limit: u64,
    /// Connections not tracked because their process was new and the table held
    /// `max_processes` processes (each refused connection counted once).
    #[serde(default)]
    pub processes_over_limit: u64,
    /// Later events (state changes, accepts, releases) of connections refused for a limit:
    /// expected, never counted as unmatched releases or unknown sockets.
    #[serde(default)]
    pub over_limit_events: u64,
}

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `--max-connections`.
    Connections,
    /// `--max-processes`: the connection's process could not be added.
    Processes,
}

/// The process of an event could not be added: the table holds `max_processes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcessRefused;

/// What one event did, for callers that react to transitions (lifetime histograms, exporters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// An outbound connect started.
    Connecting {
        id: u64,
        owner: Option<ProcessKey>,
    },
    /// A connection became open (`owner` is `None` when it is open but unattributed).
    Opened {
        id: u64,
        owner: Option<ProcessKey>,
        direction: Direction,
    },
    /// A server-side handshake completed; the connection waits in a backlog, unattributed.
    Backlogged {
        id: u64,
    },
    /// An outbound connect ended before ESTABLISHED (failed, or released while connecting).
    ConnectFailed {
        id: u64,
        owner: Option<ProcessKey>,
    },
    StateChanged {
        id: u64,
        old_state: u8,
        new_state: u8,
    },
    /// Its owner released an open connection. `lifetime_ns` is a lower bound when `preexisting`.
    Closed {
        id: u64,
        owner: ProcessKey,
        direction: Direction,
        lifetime_ns: u64,
        preexisting: bool,
        /// The side that began closing it, when its states showed one.
        closed_first: Option<ClosedFirst>,
    },
    /// A connection nobody was known to own went away.
    ReleasedUnattributed {
        id: u64,
    },
    /// Release of a socket the table did not know.
    UnmatchedRelease,
    /// A connection refused for a limit, or a later event of one: not tracked.
    OverLimit,
    /// State change of a socket the table did not know.
    UnknownSocket,
    ProcessExited {
        process: ProcessKey,
        open_at_exit: u32,
    },
    ProcessExec {
        process: ProcessKey,
    },
    /// Nothing to do: a repeated accept, exit or exec of a process that never touched TCP, or an
    /// event missing the process context it needs.
    Ignored,
    /// The record's kind is not one this build knows.
    Invalid,
}

/// What [`ConnectionTable::expire`] dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub processes: usize,
    pub closed_backlog: usize,
    /// Entries of failed connects whose (exited) process was dropped.
    pub failed_of_exited: usize,
}

/// Per-process counts plus the unattributed count: everything an entry can contribute to.
#[derive(Debug, Default)]
struct Aggregates {
    processes: Map<ProcessKey, ProcessStats>,
    unattributed: u32,
}

/// The fields of an entry that decide what it counts towards.
#[derive(Clone, Copy, Debug)]
struct Contribution {
    phase: Phase,
    owner: Option<ProcessKey>,
    direction: Direction,
    state: u8,
}

impl Contribution {
    fn of(conn: &Connection) -> Self {
        Self {
            phase: conn.phase(),
            owner: conn.owner(),
            direction: conn.direction,
            state: conn.state,
        }
    }
}

impl Aggregates {
    fn add(&mut self, c: Contribution) {
        self.tally(c, 1);
    }

    fn withdraw(&mut self, c: Contribution) {
        self.tally(c, -1);
    }

    /// Applies one entry's contribution with `sign` ±1; saturating, so a bug can never wrap a
    /// count, only leave it at zero.
    fn tally(&mut self, c: Contribution, sign: i8) {
        let step = |count: &mut u32| {
            *count = if sign > 0 { count.saturating_add(1) } else { count.saturating_sub(1) };
        };
        match (c.phase, c.owner) {
            (Phase::Backlog, _) | (Phase::Open, None) => step(&mut self.unattributed),
            (Phase::Connecting, None) | (Phase::Failed, _) => {}
            (Phase::Connecting, Some(owner)) => {
                if let Some(p) = self.processes.get_mut(&owner) {
                    step(&mut p.connecting);
                }
            }
            (Phase::Open, Some(owner)) => {
                if let Some(p) = self.processes.get_mut(&owner) {
                    step(&mut p.open);
                    step(&mut p.direction_mut(c.direction).open);
                    if let Some(slot) = p.states.slot_mut(c.state) {
                        step(slot);
                    }
                }
            }
        }
    }

    fn count_opened(&mut self, owner: Option<ProcessKey>, direction: Direction) {
        if let Some(p) = owner.and_then(|o| self.processes.get_mut(&o)) {
            p.opened_total += 1;
            p.direction_mut(direction).opened_total += 1;
        }
    }

    fn uncount_opened(&mut self, owner: ProcessKey, direction: Direction) {
        if let Some(p) = self.processes.get_mut(&owner) {
            p.opened_total = p.opened_total.saturating_sub(1);
            let d = p.direction_mut(direction);
            d.opened_total = d.opened_total.saturating_sub(1);
        }
    }

    fn count_closed(&mut self, owner: ProcessKey, direction: Direction) {
        if let Some(p) = self.processes.get_mut(&owner) {
            p.closed_total += 1;
            p.direction_mut(direction).closed_total += 1;
        }
    }

    fn count_connect_failed(&mut self, owner: Option<ProcessKey>) {
        if let Some(p) = owner.and_then(|o| self.processes.get_mut(&o)) {
            p.connect_failed += 1;
        }
    }
}

/// The connection table. One instance, owned by the event loop; queries read it between batches.
#[derive(Debug)]
pub struct ConnectionTable {
    config: TableConfig,
    connections: Map<SocketKey, Connection>,
    aggregates: Aggregates,
    counters: TableCounters,
    /// Generation of the next entry; starts at 1.
    next_id: u64,
    /// Entries found by a scan (keyed by socket inode, having no kernel address) that no event
    /// has named yet: the first event with the same addresses takes them over.
    scanned: Map<TupleKey, SocketKey>,
    /// Every process holding a socket, where a scan found more than one.
    shared_holders: Map<SocketKey, Vec<u32>>,
    /// Socket inodes of the open connections that left sock_diag's view while held (reset, or
    /// closed by the peer), from their state change into CLOSE: /proc's descriptors, the only
    /// way left to their holders, name them by inode. Only those: an inode for every
    /// connection would cost 8 bytes each.
    inodes: Map<SocketKey, u64>,
    /// The last [`FORGOTTEN_KEPT`] processes [`Self::expire`] dropped, oldest first: so that a
    /// query can tell a pid that exited past the grace period from one never seen.
    forgotten: VecDeque<Forgotten>,
    /// Sockets refused for a limit whose release has not come yet: their events are the
    /// limit's, not drift. At most `max_connections` of them (16 bytes each, plus the map's
    /// slack); refusals beyond that are counted in `refused_unremembered`.
    refused: Set<SocketKey>,
    /// Refused connections not remembered by their kernel address (the set above full, or a
    /// scanned socket, which has none): as many releases of sockets the table never knew are
    /// taken as theirs, and while any is outstanding, unknown events count as the limit's.
    refused_unremembered: u64,
}

/// How many expired processes the table remembers (pid, name and times: about 40 bytes each).
pub const FORGOTTEN_KEPT: usize = 1024;

/// A process [`ConnectionTable::expire`] dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forgotten {
    pub key: ProcessKey,
    pub comm: [u8; 16],
    /// When its ProcessExit event arrived.
    pub exited_at_ns: u64,
    /// When the table dropped it.
    pub forgotten_at_ns: u64,
}

impl Forgotten {
    pub fn comm(&self) -> std::borrow::Cow<'_, str> {
        crate::events::comm_str(&self.comm)
    }
}

impl Default for ConnectionTable {
    fn default() -> Self {
        Self::new(TableConfig::default())
    }
}

impl ConnectionTable {
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            connections: Map::default(),
            aggregates: Aggregates::default(),
            counters: TableCounters::default(),
            next_id: 1,
            scanned: Map::default(),
            shared_holders: Map::default(),
            inodes: Map::default(),
            forgotten: VecDeque::new(),
            refused: Set::default(),
            refused_unremembered: 0,
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Applies one event. Events must arrive in ring buffer order.
    pub fn apply(&mut self, event: &ConnEvent) -> Applied {
        let Some(kind) = event.kind() else {
            self.counters.invalid_events += 1;
            return Applied::Invalid;
        };
        if !self.refused.is_empty()
            && let Some(applied) = self.on_refused_socket(kind, event)
        {
            return applied;
        }
        if !self.scanned.is_empty()
            && !self.connections.contains_key(&SocketKey::of(event))
            && let Some(applied) = self.adopt_scanned(kind, event)
        {
            return applied;
        }
        let applied = match kind {
            EventKind::Connect => self.on_connect(event),
            EventKind::Established if event.is_inbound() => self.on_inbound_established(event),
            EventKind::Established => self.on_outbound_established(event),
            EventKind::ConnectFailed => self.on_connect_failed(event),
            EventKind::StateChange => self.on_state_change(event),
            EventKind::Accept => self.on_accept(event),
            EventKind::Release => self.on_release(event),
            EventKind::ProcessExit => self.on_process_exit(event),
            EventKind::ProcessExec => self.on_process_exec(event),
        };
        // A start-up scan may have loaded this socket while its connect was already in the
        // table (no address yet): the event that gives it its addresses settles the duplicate.
        if !self.scanned.is_empty() && matches!(kind, EventKind::Established | EventKind::Accept) {
            self.drop_scanned_duplicate(event);
        }
        applied
    }

    /// Drops exited processes past the grace period that hold nothing any more, with the
    /// sockets of failed connects they still held (closed when they exited: their release was
    /// lost), and unaccepted connections that have sat in `close` longer than their grace
    /// period.
    pub fn expire(&mut self, now_ns: u64) -> Expired {
        let exited_grace = self.config.exited_grace_ns;
        let backlog_grace = self.config.closed_backlog_grace_ns;

        let before = self.connections.len();
        let aggregates = &mut self.aggregates;
        self.connections.retain(|_, conn| {
            let stale = conn.phase() == Phase::Backlog
                && conn.state == tcp_state::CLOSE
                && now_ns.saturating_sub(conn.state_since_ns) >= backlog_grace;
            if stale {
                aggregates.withdraw(Contribution::of(conn));
            }
            !stale
        });
        let closed_backlog = before - self.connections.len();

        let before = self.aggregates.processes.len();
        let forgotten = &mut self.forgotten;
        self.aggregates.processes.retain(|_, p| {
            let expired = p.exited_at_ns.filter(|at| now_ns.saturating_sub(*at) >= exited_grace);
            match expired {
                Some(exited_at_ns) if p.holds_nothing() => {
                    if forgotten.len() == FORGOTTEN_KEPT {
                        forgotten.pop_front();
                    }
                    forgotten.push_back(Forgotten {
                        key: p.key,
                        comm: p.comm,
                        exited_at_ns,
                        forgotten_at_ns: now_ns,
                    });
                    false
                }
                _ => true,
            }
        });
        let processes = before - self.aggregates.processes.len();

        // A failed connect counts towards nothing, so it does not keep its process: an entry
        // left of one whose process went would name a process the table no longer has.
        let known = &self.aggregates.processes;
        let failed: Vec<SocketKey> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.phase() == Phase::Failed && c.owner().is_some_and(|o| !known.contains_key(&o))
            })
            .map(|(key, _)| *key)
            .collect();
        for key in &failed {
            self.remove(*key);
        }

        Expired { processes, closed_backlog, failed_of_exited: failed.len() }
    }

    /// The aggregates agree with the entries: each process's open, connecting and per-state
    /// counts are those of its entries, its direction counts add up, every owner is a known
    /// process, and the unattributed count is that of the unattributed entries. Every table test
    /// ends with it, and so does each run of the ring-event fuzz target.
    #[doc(hidden)]
    pub fn check_consistent(&self) -> Result<(), String> {
        let mut unattributed = 0;
        for p in self.processes() {
            let open: Vec<_> = self
                .connections()
                .filter(|v| v.conn.owner() == Some(p.key) && v.conn.phase() == Phase::Open)
                .collect();
            let connecting = self
                .connections()
                .filter(|v| v.conn.owner() == Some(p.key) && v.conn.phase() == Phase::Connecting)
                .count();
            let comm = p.comm();
            if p.open as usize != open.len() {
                return Err(format!("open of {comm}: {} counted, {} entries", p.open, open.len()));
            }
            if p.connecting as usize != connecting {
                return Err(format!(
                    "connecting of {comm}: {} counted, {connecting} entries",
                    p.connecting
                ));
            }
            if p.outbound.open + p.inbound.open != p.open {
                return Err(format!("open of {comm}: outbound + inbound is not {}", p.open));
            }
            for state in StateCounts::STATES {
                let n = open.iter().filter(|v| v.conn.state == state).count();
                if p.states.get(state) as usize != n {
                    return Err(format!(
                        "state {state} of {comm}: {} counted, {n} entries",
                        p.states.get(state)
                    ));
                }
            }
            if p.outbound.opened_total + p.inbound.opened_total != p.opened_total {
                return Err(format!("opened_total of {comm}: directions do not add up"));
            }
            if p.outbound.closed_total + p.inbound.closed_total != p.closed_total {
                return Err(format!("closed_total of {comm}: directions do not add up"));
            }
        }
        for v in self.connections() {
            if v.conn.is_unattributed() {
                unattributed += 1;
            }
            if let Some(owner) = v.conn.owner()
                && self.process(owner).is_none()
            {
                return Err(format!("entry {} owned by a dropped process", v.id()));
            }
        }
        if self.unattributed() != unattributed {
            return Err(format!(
                "unattributed: {} counted, {unattributed} entries",
                self.unattributed()
            ));
        }
        Ok(())
    }

    // ---- read side ----

    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    /// Connections refused for a limit whose release has not come yet (those remembered by
    /// address plus those counted only): how many live connections the table does not track.
    pub fn refused_outstanding(&self) -> u64 {
        self.refused.len() as u64 + self.refused_unremembered
    }

    /// A limit refused something since start: some counts are lower bounds.
    pub fn over_limit(&self) -> bool {
        self.counters.connections_over_limit + self.counters.processes_over_limit > 0
    }

    /// Every tracked socket, in any phase.
    pub fn tracked_connections(&self) -> usize {
        self.connections.len()
    }

    /// Connections in a backlog plus open connections with no known owner.
    pub fn unattributed(&self) -> usize {
        self.aggregates.unattributed as usize
    }

    pub fn process_count(&self) -> usize {
        self.aggregates.processes.len()
    }

    /// Processes in no particular order (stable for a given event history).
    pub fn processes(&self) -> impl Iterator<Item = &ProcessStats> + '_ {
        self.aggregates.processes.values()
    }

    pub fn process(&self, key: ProcessKey) -> Option<&ProcessStats> {
        self.aggregates.processes.get(&key)
    }

    /// The latest process with `pid` that [`Self::expire`] dropped, among the last
    /// [`FORGOTTEN_KEPT`].
    pub fn forgotten(&self, pid: u32) -> Option<&Forgotten> {
        self.forgotten.iter().rev().find(|f| f.key.pid == pid)
    }

    /// Connections with their owner's record, in no particular order.
    pub fn connections(&self) -> impl Iterator<Item = ConnView<'_>> + '_ {
        self.connections.iter().map(|(&key, conn)| self.view(key, conn))
    }

    pub fn connection(&self, key: SocketKey) -> Option<ConnView<'_>> {
        self.connections.get(&key).map(|conn| self.view(key, conn))
    }

    fn view<'a>(&'a self, key: SocketKey, conn: &'a Connection) -> ConnView<'a> {
        ConnView {
            key,
            conn,
            owner: conn.owner().and_then(|o| self.aggregates.processes.get(&o)),
            holders: self.shared_holders(key),
        }
    }

    // ---- event handlers ----

    fn on_connect(&mut self, e: &ConnEvent) -> Applied {
        let Ok(owner) = self.touch_process(e) else {
            return self.refuse(SocketKey::of(e), Limit::Processes, None);
        };
        match self.insert_new(e, Direction::Outbound, Phase::Connecting, owner) {
            Some(id) => Applied::Connecting { id, owner },
            None => Applied::OverLimit,
        }
    }

    fn on_outbound_established(&mut self, e: &ConnEvent) -> Applied {
        let key = SocketKey::of(e);
        let Some(conn) = self.connections.get_mut(&key).filter(|c| c.phase() == Phase::Connecting)
        else {
            // A connect refused for a limit and not remembered by address: its handshake is
            // the limit's too, not an unattributed connection.
            if self.refused_unremembered > 0 && !self.connections.contains_key(&key) {
                self.counters.over_limit_events += 1;
                return Applied::OverLimit;
            }
            // Never saw the connect (probes attached mid-handshake) or the entry is a previous
            // lifecycle: open, but nobody to attribute it to.
            let Some(id) = self.insert_new(e, Direction::Outbound, Phase::Open, None) else {
                return Applied::OverLimit;
            };
            return Applied::Opened { id, owner: None, direction: Direction::Outbound };
        };
        let before = Contribution::of(conn);
        conn.open(e.timestamp_ns);
        conn.set_state(e.new_state, e.timestamp_ns);
        // The local port is only known now.
        conn.tuple = e.tuple;
        let (id, owner, after) = (conn.id, conn.owner(), Contribution::of(conn));
        self.aggregates.withdraw(before);
        self.aggregates.add(after);
        self.aggregates.count_opened(owner, Direction::Outbound);
        Applied::Opened { id, owner, direction: Direction::Outbound }
    }

    fn on_inbound_established(&mut self, e: &ConnEvent) -> Applied {
        // TCP Fast Open hands the child to accept() while still in SYN_RECV: the accept came
        // first, and this is the same socket finishing its handshake, not a new lifecycle.
        if let Some(conn) = self.connections.get(&SocketKey::of(e))
            && conn.phase() == Phase::Open
            && conn.direction == Direction::Inbound
            && conn.owner().is_some()
            && conn.state == tcp_state::SYN_RECV
        {
            return self.on_state_change(e);
        }
        match self.insert_new(e, Direction::Inbound, Phase::Backlog, None) {
            Some(id) => Applied::Backlogged { id },
            None => Applied::OverLimit,
        }
    }

    fn on_accept(&mut self, e: &ConnEvent) -> Applied {
        let key = SocketKey::of(e);
        let owner = self.touch_process(e);
        let existing = self.connections.get(&key).map(|c| (c.phase(), c.direction, c.owner()));
        if let Some((Phase::Open, Direction::Inbound, Some(_))) = existing {
            // Already accepted: a repeated report of the same socket.
            return Applied::Ignored;
        }
        let Ok(owner) = owner else {
            // Its process cannot be added: the connection leaves the table with it (from the
            // backlog, where nobody counted it but `unattributed`).
            self.remove(key);
            return self.refuse(key, Limit::Processes, None);
        };
        match existing {
            Some((Phase::Open, Direction::Inbound, Some(_))) => Applied::Ignored,
            Some((Phase::Backlog, ..)) | Some((Phase::Open, Direction::Inbound, None)) => {
                let Some(conn) = self.connections.get_mut(&key) else {
                    return Applied::Ignored;
                };
                let before = Contribution::of(conn);
                conn.set_owner(owner);
                conn.open(e.timestamp_ns);
                // The peer may have hung up while it waited: the event carries the state then,
                // unless a state change the table has already applied is newer.
                conn.advance_state(e.new_state, e.timestamp_ns);
                conn.tuple = e.tuple;
                let (id, after) = (conn.id, Contribution::of(conn));
                self.aggregates.withdraw(before);
                self.aggregates.add(after);
                self.aggregates.count_opened(owner, Direction::Inbound);
                Applied::Opened { id, owner, direction: Direction::Inbound }
            }
            // No entry: the handshake completed before the probes attached (a server blocked
            // in accept()). Any other entry is a previous lifecycle of the address.
            _ => {
                let Some(id) = self.insert_new(e, Direction::Inbound, Phase::Open, owner) else {
                    return Applied::OverLimit;
                };
                self.aggregates.count_opened(owner, Direction::Inbound);
                Applied::Opened { id, owner, direction: Direction::Inbound }
            }
        }
    }

    fn on_connect_failed(&mut self, e: &ConnEvent) -> Applied {
        let key = SocketKey::of(e);
        match self.connections.get(&key).map(|c| c.phase()) {
            None => self.unknown_socket(),
            Some(Phase::Connecting) => match self.connections.get_mut(&key) {
                Some(conn) => {
                    let before = Contribution::of(conn);
                    conn.fail();
                    conn.set_state(e.new_state, e.timestamp_ns);
                    let (id, owner) = (conn.id, conn.owner());
                    self.aggregates.withdraw(before);
                    self.aggregates.count_connect_failed(owner);
                    Applied::ConnectFailed { id, owner }
                }
                None => Applied::Ignored,
            },
            // A failed socket failing again (a retried connect whose start we missed).
            Some(Phase::Failed) => Applied::Ignored,
            // A reconnect whose Connect event we missed, on a socket the process still holds:
            // it stays held, now in `close`.
            Some(_) => self.on_state_change(e),
        }
    }

    fn on_state_change(&mut self, e: &ConnEvent) -> Applied {
        let key = SocketKey::of(e);
        if let Some(applied) = self.infer_established(key, e) {
            return applied;
        }
        let Some(conn) = self.connections.get_mut(&key) else {
            return self.unknown_socket();
        };
        let before = Contribution::of(conn);
        let old_state = conn.state;
        conn.set_state(e.new_state, e.timestamp_ns);
        let (id, after, open) = (conn.id, Contribution::of(conn), conn.phase() == Phase::Open);
        self.aggregates.withdraw(before);
        self.aggregates.add(after);
        // A held connection leaving sock_diag's view: its inode is how the reconcile still
        // finds who holds it.
        if e.socket_inode != 0 && open {
            self.inodes.insert(key, e.socket_inode);
        }
        Applied::StateChanged { id, old_state, new_state: e.new_state }
    }

    fn on_release(&mut self, e: &ConnEvent) -> Applied {
        // A connect whose Established was missed and that is released past the handshake was
        // a connection: opened, then closed (not a failed connect).
        self.infer_established(SocketKey::of(e), e);
        // The releasing process may not be the owner (an fd passed on, or inherited by a
        // child): the socket is gone either way, and the owner is the one that held it.
        let Some(conn) = self.remove(SocketKey::of(e)) else {
            // A connection refused for a limit and not remembered by address.
            if self.refused_unremembered > 0 {
                self.refused_unremembered -= 1;
                self.counters.over_limit_events += 1;
                return Applied::OverLimit;
            }
            self.counters.unmatched_releases += 1;
            return Applied::UnmatchedRelease;
        };
        match (conn.phase(), conn.owner()) {
            (Phase::Open, Some(owner)) => {
                self.aggregates.count_closed(owner, conn.direction);
                Applied::Closed {
                    id: conn.id,
                    owner,
                    direction: conn.direction,
                    lifetime_ns: conn.age_ns(e.timestamp_ns),
                    preexisting: conn.preexisting,
                    closed_first: conn.closed_first(),
                }
            }
            (Phase::Connecting, owner) => {
                self.aggregates.count_connect_failed(owner);
                Applied::ConnectFailed { id: conn.id, owner }
            }
            (Phase::Backlog, _) | (Phase::Open, None) => {
                self.counters.released_unattributed += 1;
                Applied::ReleasedUnattributed { id: conn.id }
            }
            // Its failure was counted when it happened.
            (Phase::Failed, _) => Applied::Ignored,
        }
    }

    /// An outbound entry still connecting that `e` shows past the handshake (its state before
    /// or after is one only an established connection reaches): its Established event was
    /// never delivered (the kernel skips a program already running on the CPU: an interrupt's
    /// softirq completing a handshake while the program runs in process context). It is
    /// opened as of `e`, counted for its owner, and the miss counted; the state change `e`
    /// carries is applied too. `None` when `e` is no such evidence.
    fn infer_established(&mut self, key: SocketKey, e: &ConnEvent) -> Option<Applied> {
        if !(past_handshake(e.old_state) || past_handshake(e.new_state)) {
            return None;
        }
        // The connect's event may lack the local port (tracepoint mode); this one has it,
        // unless a reset already freed it (then the release carries it).
        let tuple = (e.tuple.local_port != 0).then_some(e.tuple);
        self.open_missed_handshake(key, e.new_state, e.timestamp_ns, tuple)
    }

    /// Opens the outbound entry `key`, still connecting, whose handshake completed unreported,
    /// in `state` as of `at_ns`; counts it for its owner and as inferred. `None` when the entry
    /// is not an outbound connect in progress.
    pub(super) fn open_missed_handshake(
        &mut self,
        key: SocketKey,
        state: u8,
        at_ns: u64,
        tuple: Option<tracer_common::Tuple>,
    ) -> Option<Applied> {
        let conn = self.connections.get_mut(&key)?;
        if conn.phase() != Phase::Connecting || conn.direction != Direction::Outbound {
            return None;
        }
        let before = Contribution::of(conn);
        conn.open(at_ns);
        conn.set_state(state, at_ns);
        if let Some(tuple) = tuple {
            conn.tuple = tuple;
        }
        let (id, owner, after) = (conn.id, conn.owner(), Contribution::of(conn));
        self.aggregates.withdraw(before);
        self.aggregates.add(after);
        self.aggregates.count_opened(owner, Direction::Outbound);
        self.counters.established_inferred += 1;
        Some(Applied::Opened { id, owner, direction: Direction::Outbound })
    }

    fn on_process_exit(&mut self, e: &ConnEvent) -> Applied {
        let Some(process) = ProcessKey::of(e) else { return Applied::Ignored };
        let Some(p) = self.aggregates.processes.get_mut(&process) else {
            return Applied::Ignored;
        };
        if p.exited_at_ns.is_some() {
            return Applied::Ignored;
        }
        p.exited_at_ns = Some(e.timestamp_ns);
        p.open_at_exit = Some(p.open);
        Applied::ProcessExited { process, open_at_exit: p.open }
    }

    fn on_process_exec(&mut self, e: &ConnEvent) -> Applied {
        let Some(process) = ProcessKey::of(e) else { return Applied::Ignored };
        let Some(p) = self.aggregates.processes.get_mut(&process) else {
            return Applied::Ignored;
        };
        p.comm = e.comm;
        Applied::ProcessExec { process }
    }

    // ---- entry bookkeeping: the only places entries are added or removed ----

    /// The process an owner-context event names, created on first sight; its comm and cgroup
    /// are refreshed because the event carries the current ones.
    /// `Err` when the process is new and the table holds `max_processes` already (nothing
    /// counted yet: the caller refuses the connection).
    fn touch_process(&mut self, e: &ConnEvent) -> Result<Option<ProcessKey>, ProcessRefused> {
        let Some(key) = ProcessKey::of(e) else { return Ok(None) };
        if !self.room_for_process(key) {
            return Err(ProcessRefused);
        }
        let p = self
            .aggregates
            .processes
            .entry(key)
            .or_insert_with(|| ProcessStats::new(key, e.comm, e.cgroup_id, e.timestamp_ns));
        p.comm = e.comm;
        p.cgroup_id = e.cgroup_id;
        Ok(Some(key))
    }

    /// `key` is tracked already, or there is room for one more process.
    fn room_for_process(&self, key: ProcessKey) -> bool {
        self.aggregates.processes.len() < self.config.max_processes
            || self.aggregates.processes.contains_key(&key)
    }

    /// Refuses the connection `key` (an event's address) of `owner` for `limit`: counted,
    /// remembered so that its later events are known as the limit's. Always
    /// [`Applied::OverLimit`].
    fn refuse(&mut self, key: SocketKey, limit: Limit, owner: Option<ProcessKey>) -> Applied {
        self.count_refusal(limit, owner);
        if self.refused.len() < self.config.max_connections {
            self.refused.insert(key);
        } else {
            self.refused_unremembered += 1;
        }
        Applied::OverLimit
    }

    /// Counts one refused connection; its owner, if known and tracked, now has counts that
    /// are lower bounds.
    fn count_refusal(&mut self, limit: Limit, owner: Option<ProcessKey>) {
        match limit {
            Limit::Connections => self.counters.connections_over_limit += 1,
            Limit::Processes => self.counters.processes_over_limit += 1,
        }
        if let Some(p) = owner.and_then(|o| self.aggregates.processes.get_mut(&o)) {
            p.refused = p.refused.saturating_add(1);
        }
    }

    /// An event of a socket the table does not know: a refused connection's while refusals
    /// are outstanding that no address names, else an unknown socket.
    fn unknown_socket(&mut self) -> Applied {
        if self.refused_unremembered > 0 {
            self.counters.over_limit_events += 1;
            return Applied::OverLimit;
        }
        self.counters.unknown_socket_events += 1;
        Applied::UnknownSocket
    }

    /// An event of a socket refused for a limit (`None` when `event` is about no such socket).
    /// A connect starts a new connection on the address, which is tried afresh; a release ends
    /// the refused one; anything else is one of its events, counted and otherwise ignored (it
    /// stays untracked for its life, even once there is room).
    fn on_refused_socket(&mut self, kind: EventKind, event: &ConnEvent) -> Option<Applied> {
        if matches!(kind, EventKind::ProcessExit | EventKind::ProcessExec) {
            return None;
        }
        let key = SocketKey::of(event);
        if kind == EventKind::Connect {
            self.refused.remove(&key);
            return None;
        }
        if !self.refused.contains(&key) {
            return None;
        }
        if kind == EventKind::Release {
            self.refused.remove(&key);
        }
        if kind == EventKind::Accept
            && let Ok(Some(owner)) = self.touch_process(event)
            && let Some(p) = self.aggregates.processes.get_mut(&owner)
        {
            // It accepted a connection the table does not count for it.
            p.refused = p.refused.saturating_add(1);
        }
        self.counters.over_limit_events += 1;
        Some(Applied::OverLimit)
    }

    /// Adds a new entry for `e`'s socket; `None` (counted, remembered) when the table holds
    /// `max_connections` entries and `e` names none of them.
    fn insert_new(
        &mut self,
        e: &ConnEvent,
        direction: Direction,
        phase: Phase,
        owner: Option<ProcessKey>,
    ) -> Option<u64> {
        let key = SocketKey::of(e);
        if self.connections.len() >= self.config.max_connections
            && !self.connections.contains_key(&key)
        {
            self.refuse(key, Limit::Connections, owner);
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let conn =
            Connection::new(id, direction, phase, owner, e.new_state, e.tuple, e.timestamp_ns);
        self.aggregates.add(Contribution::of(&conn));
        // A new lifecycle on an address we still track means we missed the old one's release:
        // the old entry leaves every count it was in.
        if let Some(stale) = self.connections.insert(SocketKey::of(e), conn) {
            self.aggregates.withdraw(Contribution::of(&stale));
            self.counters.stale_replaced += 1;
            self.shared_holders.remove(&SocketKey::of(e));
            self.inodes.remove(&SocketKey::of(e));
        }
        Some(id)
    }

    fn remove(&mut self, key: SocketKey) -> Option<Connection> {
        let conn = self.connections.remove(&key)?;
        self.aggregates.withdraw(Contribution::of(&conn));
        if conn.preexisting {
            self.scanned.remove(&conn.tuple_key(key.netns));
        }
        self.shared_holders.remove(&key);
        self.inodes.remove(&key);
        Some(conn)
    }
}
