//! What the table holds: connection entries and per-process aggregates. Plain data, `Copy` where
//! it can be, with the command name kept as the kernel's 16 bytes so that no event allocates.
use std::{borrow::Cow, net::SocketAddr, num::NonZeroU32};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracer_common::{ConnEvent, Tuple, tcp_state};

use crate::events::{comm_str, local_endpoint, remote_endpoint, state_name};

/// A live kernel socket: its `struct sock` address within its network namespace. Addresses are
/// reused after a socket is freed, which is why entries also carry a generation ([`Connection::id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketKey {
    pub netns: u32,
    pub sock: u64,
}

impl SocketKey {
    pub fn of(event: &ConnEvent) -> Self {
        Self { netns: event.netns, sock: event.sock }
    }
}

/// A process identity that survives pid reuse: pid plus the thread-group leader's start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_time_ns: u64,
}

/// `/proc/<pid>/stat` gives start times in clock ticks (USER_HZ, 100 per second on every Linux
/// ABI): keys keep that resolution so that a process seen in /proc and in events is one process.
pub const START_TIME_RESOLUTION_NS: u64 = 10_000_000;

impl ProcessKey {
    pub fn new(pid: u32, start_time_ns: u64) -> Self {
        Self { pid, start_time_ns: start_time_ns - start_time_ns % START_TIME_RESOLUTION_NS }
    }

    /// The process an event names, if it ran in that process's context. Never pid 0, the idle
    /// task, which opens and releases no socket: entries store their owner as a non-zero pid.
    pub fn of(event: &ConnEvent) -> Option<Self> {
        (event.in_owner_context() && event.tgid != 0)
            .then(|| Self::new(event.tgid, event.start_time_ns))
    }
}

/// A connection by its addresses within its namespace: how sockets found by a scan (which
/// has no kernel address) are matched with the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TupleKey {
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl TupleKey {
    pub fn of(event: &ConnEvent) -> Self {
        Self {
            netns: event.netns,
            local: local_endpoint(&event.tuple),
            remote: remote_endpoint(&event.tuple),
        }
    }
}

/// Which side opened a connection.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Created by `connect()`.
    Outbound,
    /// Created by a listener and handed out by `accept()`.
    Inbound,
}

/// Which side of a connection began closing it, as its TCP states show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClosedFirst {
    /// This host's process: it closed or shut down its side while the peer's was open
    /// (ESTABLISHED -> FIN_WAIT1, or a release while ESTABLISHED).
    Local,
    /// The peer: its FIN came first (ESTABLISHED -> CLOSE_WAIT).
    Remote,
    /// Neither: a reset ended it while both sides were open (ESTABLISHED -> CLOSE).
    Reset,
}

impl ClosedFirst {
    /// What a connection's being in `state` shows, alone (a scanned socket has no history).
    pub fn implied_by(state: u8) -> Option<Self> {
        match state {
            tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSING
            | tcp_state::TIME_WAIT => Some(Self::Local),
            tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK => Some(Self::Remote),
            _ => None,
        }
    }

    /// What the change from `old` to `new` shows.
    pub fn from_change(old: u8, new: u8) -> Option<Self> {
        match (old, new) {
            (tcp_state::ESTABLISHED | tcp_state::SYN_RECV, tcp_state::CLOSE) => Some(Self::Reset),
            _ => Self::implied_by(new),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
            Self::Reset => "reset",
        }
    }
}

/// Where an entry is in its life, which decides what it counts towards.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `connect()` started, handshake not complete (SYN_SENT): counts as `connecting`, not open.
    Connecting,
    /// Handshake complete on the server side, not (yet) accepted: unattributed.
    Backlog,
    /// Open for its owner until released; unattributed when the owner is unknown.
    Open,
    /// The connect failed (counted once in `connect_failed`) but the process still holds the
    /// socket: kept, counting towards nothing, so that its release is expected, not unmatched.
    Failed,
}

/// One tracked socket: the value of the table's map, whose key is its [`SocketKey`]. The table
/// holds one per tracked socket, so the layout is kept small (80 bytes; docs/performance.md sets
/// the memory per socket): the key is not repeated here, and the owner and the open time are
/// stored compactly behind [`Connection::owner`] and [`Connection::opened_at_ns`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Unique, increasing generation: a reused kernel address never merges two sockets.
    pub id: u64,
    pub direction: Direction,
    /// Private so that it becomes `Open` only through [`Connection::open`], which records when
    /// (the open time is read back from it).
    phase: Phase,
    /// The owner's pid; `None` while unattributed (pid 0 is the idle task, which holds no
    /// socket). Kept apart from its start time so that it packs with the small fields: an
    /// `Option<ProcessKey>` would take 24 bytes instead of 12.
    owner_pid: Option<NonZeroU32>,
    /// The owner's start time (as in [`ProcessKey`]); 0 while unattributed.
    owner_start_time_ns: u64,
    /// A [`tcp_state`] value.
    pub state: u8,
    /// Endpoints as last reported by an event that names them reliably (connect, handshake,
    /// accept); later state changes do not overwrite them, so a reset socket keeps its address.
    pub tuple: Tuple,
    /// What its age counts from: when the entry was created (connect start, server-side
    /// handshake, or scan), then, once open, when it opened. One field serves both because
    /// the first-seen time is only needed until the open time exists.
    age_from_ns: u64,
    /// When it entered its current TCP state: how long a CLOSE_WAIT or reset socket was held.
    pub state_since_ns: u64,
    /// Found already open when the daemon started: its open time is a lower bound.
    pub preexisting: bool,
    /// The side that began closing it, from the first state change that shows one.
    closed_first: Option<ClosedFirst>,
}

impl Connection {
    /// A new entry first seen at `at_ns` (and open since then if `phase` is `Open`).
    pub(super) fn new(
        id: u64,
        direction: Direction,
        phase: Phase,
        owner: Option<ProcessKey>,
        state: u8,
        tuple: Tuple,
        at_ns: u64,
    ) -> Self {
        let mut conn = Self {
            id,
            direction,
            phase,
            owner_pid: None,
            owner_start_time_ns: 0,
            state,
            tuple,
            age_from_ns: at_ns,
            state_since_ns: at_ns,
            preexisting: false,
            closed_first: ClosedFirst::implied_by(state),
        };
        conn.set_owner(owner);
        conn
    }

    /// The connecting or accepting process; `None` while unattributed.
    pub fn owner(&self) -> Option<ProcessKey> {
        self.owner_pid
            .map(|pid| ProcessKey { pid: pid.get(), start_time_ns: self.owner_start_time_ns })
    }

    pub(super) fn set_owner(&mut self, owner: Option<ProcessKey>) {
        debug_assert!(owner.is_none_or(|o| o.pid != 0), "pid 0 cannot own a socket");
        (self.owner_pid, self.owner_start_time_ns) = match owner {
            Some(o) => (NonZeroU32::new(o.pid), o.start_time_ns),
            None => (None, 0),
        };
    }

    /// When it became open (ESTABLISHED outbound, accepted inbound); `None` before that.
    pub fn opened_at_ns(&self) -> Option<u64> {
        (self.phase == Phase::Open).then_some(self.age_from_ns)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Marks a connect that never reached ESTABLISHED as failed.
    pub(super) fn fail(&mut self) {
        self.phase = Phase::Failed;
    }

    /// Marks it open since `at_ns`.
    pub(super) fn open(&mut self, at_ns: u64) {
        self.phase = Phase::Open;
        self.age_from_ns = at_ns;
    }

    pub fn local(&self) -> SocketAddr {
        local_endpoint(&self.tuple)
    }

    pub fn remote(&self) -> SocketAddr {
        remote_endpoint(&self.tuple)
    }

    /// Its addresses within `netns`, the namespace of its [`SocketKey`].
    pub fn tuple_key(&self, netns: u32) -> TupleKey {
        TupleKey { netns, local: self.local(), remote: self.remote() }
    }

    pub fn state_name(&self) -> &'static str {
        state_name(self.state)
    }

    /// Open with no known owner, or waiting in a backlog: counted by nobody but `unattributed`.
    pub fn is_unattributed(&self) -> bool {
        match self.phase {
            Phase::Backlog => true,
            Phase::Open => self.owner_pid.is_none(),
            Phase::Connecting | Phase::Failed => false,
        }
    }

    /// Age as a user means it: since open once open, else since first seen.
    pub fn age_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.age_from_ns)
    }

    /// The side that began closing it, as a release now would record it: one still
    /// ESTABLISHED when its owner releases it is closed by that release.
    pub fn closed_first(&self) -> Option<ClosedFirst> {
        self.closed_first
            .or_else(|| (self.state == tcp_state::ESTABLISHED).then_some(ClosedFirst::Local))
    }

    /// Takes `state` unless this connection is already past it. An accept reads the socket's
    /// state in the accepting process, and the peer's FIN can change it in softirq after that
    /// read and before the accept's record is reserved: the ring then holds the state change
    /// first and the accept's older state after it.
    pub(super) fn advance_state(&mut self, state: u8, at_ns: u64) {
        if lifecycle_step(state) >= lifecycle_step(self.state) {
            self.set_state(state, at_ns);
        }
    }

    pub(super) fn set_state(&mut self, state: u8, at_ns: u64) {
        if self.closed_first.is_none() {
            self.closed_first = ClosedFirst::from_change(self.state, state);
        }
        if self.state != state {
            self.state = state;
            self.state_since_ns = at_ns;
        }
    }
}

/// How far along its life a connection in `state` is: a connected socket only moves forward
/// (ESTABLISHED, then one side's FIN, then the other's, then TIME_WAIT or CLOSE), so of two
/// reports of its state the further one is the newer.
fn lifecycle_step(state: u8) -> u8 {
    match state {
        tcp_state::SYN_SENT | tcp_state::SYN_RECV | tcp_state::NEW_SYN_RECV => 0,
        tcp_state::ESTABLISHED => 1,
        tcp_state::FIN_WAIT1 | tcp_state::CLOSE_WAIT => 2,
        tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK => 3,
        tcp_state::TIME_WAIT => 4,
        _ => 5,
    }
}

/// Open connections of one process by TCP state: only the states an open connection can be in,
/// named as `tracer conns` names states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateCounts {
    /// In ESTABLISHED.
    pub established: u32,
    /// In CLOSE_WAIT: the peer hung up, the process has not closed.
    pub close_wait: u32,
    /// In FIN_WAIT1: shut down for writing (or closing), our FIN not yet acknowledged.
    pub fin_wait1: u32,
    /// In FIN_WAIT2: shut down for writing, waiting for the peer's FIN.
    pub fin_wait2: u32,
    /// In CLOSING: both sides sent FIN at once.
    pub closing: u32,
    /// In LAST_ACK: the peer hung up, then the process shut down; waiting for the last ACK.
    pub last_ack: u32,
    /// In TIME_WAIT while still held.
    pub time_wait: u32,
    /// Reset by the peer but still held by the process: the leak `ss` cannot show.
    pub close: u32,
}

impl StateCounts {
    /// The open states, in the order [`StateCounts::iter`] yields them.
    pub const STATES: [u8; 8] = [
        tcp_state::ESTABLISHED,
        tcp_state::CLOSE_WAIT,
        tcp_state::FIN_WAIT1,
        tcp_state::FIN_WAIT2,
        tcp_state::CLOSING,
        tcp_state::LAST_ACK,
        tcp_state::TIME_WAIT,
        tcp_state::CLOSE,
    ];

    /// Count for a [`tcp_state`] value; 0 for states an open connection is never in.
    pub fn get(&self, state: u8) -> u32 {
        match state {
            tcp_state::ESTABLISHED => self.established,
            tcp_state::CLOSE_WAIT => self.close_wait,
            tcp_state::FIN_WAIT1 => self.fin_wait1,
            tcp_state::FIN_WAIT2 => self.fin_wait2,
            tcp_state::CLOSING => self.closing,
            tcp_state::LAST_ACK => self.last_ack,
            tcp_state::TIME_WAIT => self.time_wait,
            tcp_state::CLOSE => self.close,
            _ => 0,
        }
    }

    pub(super) fn slot_mut(&mut self, state: u8) -> Option<&mut u32> {
        match state {
            tcp_state::ESTABLISHED => Some(&mut self.established),
            tcp_state::CLOSE_WAIT => Some(&mut self.close_wait),
            tcp_state::FIN_WAIT1 => Some(&mut self.fin_wait1),
            tcp_state::FIN_WAIT2 => Some(&mut self.fin_wait2),
            tcp_state::CLOSING => Some(&mut self.closing),
            tcp_state::LAST_ACK => Some(&mut self.last_ack),
            tcp_state::TIME_WAIT => Some(&mut self.time_wait),
            tcp_state::CLOSE => Some(&mut self.close),
            _ => None,
        }
    }

    /// `(state name, count)` for every open state, zeros included (for exporters).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        Self::STATES.iter().map(|&s| (state_name(s), self.get(s)))
    }

    pub fn total(&self) -> u32 {
        Self::STATES.iter().map(|&s| self.get(s)).fold(0, u32::saturating_add)
    }
}

/// The part of a process's counts that belongs to one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DirectionStats {
    /// Connections of this direction open now.
    pub open: u32,
    /// Connections of this direction opened, since the daemon started.
    pub opened_total: u64,
    /// Open connections of this direction released, since the daemon started.
    pub closed_total: u64,
}

/// Aggregates of one process (see docs/semantics.md for what each count means).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessStats {
    pub key: ProcessKey,
    /// Thread-group leader's command name, NUL-padded; updated on exec.
    pub comm: [u8; 16],
    pub cgroup_id: u64,
    pub first_seen_ns: u64,
    pub open: u32,
    pub opened_total: u64,
    pub closed_total: u64,
    pub connect_failed: u64,
    pub connecting: u32,
    /// Open connections by state.
    pub states: StateCounts,
    pub outbound: DirectionStats,
    pub inbound: DirectionStats,
    /// When its ProcessExit event arrived.
    pub exited_at_ns: Option<u64>,
    /// `open` at that moment: what it still held when it died.
    pub open_at_exit: Option<u32>,
    /// Its connections refused for a limit (`--max-connections`), counted when refused (a
    /// connect, a scanned socket) or when it accepted one refused in a backlog. Once not 0,
    /// its counts are lower bounds, for its life.
    pub refused: u32,
}

impl ProcessStats {
    pub(super) fn new(key: ProcessKey, comm: [u8; 16], cgroup_id: u64, first_seen_ns: u64) -> Self {
        Self {
            key,
            comm,
            cgroup_id,
            first_seen_ns,
            open: 0,
            opened_total: 0,
            closed_total: 0,
            connect_failed: 0,
            connecting: 0,
            states: StateCounts::default(),
            outbound: DirectionStats::default(),
            inbound: DirectionStats::default(),
            exited_at_ns: None,
            open_at_exit: None,
            refused: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.key.pid
    }

    pub fn start_time_ns(&self) -> u64 {
        self.key.start_time_ns
    }

    /// The command name as text (lossy: comm is bytes).
    pub fn comm(&self) -> Cow<'_, str> {
        comm_str(&self.comm)
    }

    pub fn exited(&self) -> bool {
        self.exited_at_ns.is_some()
    }

    /// A connection of it was refused for a limit: its counts are lower bounds.
    pub fn over_limit(&self) -> bool {
        self.refused > 0
    }

    /// Holds no socket the table knows of: nothing would dangle if the record went away.
    pub fn holds_nothing(&self) -> bool {
        self.open == 0 && self.connecting == 0
    }

    pub fn direction(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        }
    }

    pub(super) fn direction_mut(&mut self, direction: Direction) -> &mut DirectionStats {
        match direction {
            Direction::Outbound => &mut self.outbound,
            Direction::Inbound => &mut self.inbound,
        }
    }
}
