//! Read-side views and the serializable snapshots the API, the CLI and exporters hand out.
//! Snapshots own their data (built between event batches, then sent elsewhere) and are sorted so
//! that the same table always renders the same way.
use std::{borrow::Cow, net::SocketAddr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    ConnectionTable, TableCounters,
    model::{
        Connection, Direction, DirectionStats, Phase, ProcessKey, ProcessStats, SocketKey,
        StateCounts,
    },
};

/// A connection together with its owner's record, if it has a known owner.
#[derive(Clone, Copy, Debug)]
pub struct ConnView<'a> {
    /// The entry's map key (entries do not repeat it).
    pub key: SocketKey,
    pub conn: &'a Connection,
    pub owner: Option<&'a ProcessStats>,
    /// Every holder's pid when a scan found several; empty otherwise.
    pub holders: &'a [u32],
}

impl ConnView<'_> {
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    pub fn owner_key(&self) -> Option<ProcessKey> {
        self.conn.owner()
    }

    pub fn pid(&self) -> Option<u32> {
        self.conn.owner().map(|o| o.pid)
    }

    pub fn comm(&self) -> Option<Cow<'_, str>> {
        self.owner.map(ProcessStats::comm)
    }

    pub fn direction(&self) -> Direction {
        self.conn.direction
    }

    pub fn phase(&self) -> Phase {
        self.conn.phase()
    }

    pub fn local(&self) -> SocketAddr {
        self.conn.local()
    }

    pub fn remote(&self) -> SocketAddr {
        self.conn.remote()
    }

    pub fn state_name(&self) -> &'static str {
        self.conn.state_name()
    }

    pub fn opened_at_ns(&self) -> Option<u64> {
        self.conn.opened_at_ns()
    }

    pub fn netns(&self) -> u32 {
        self.key.netns
    }

    pub fn snapshot(&self, now_ns: u64) -> ConnSnapshot {
        ConnSnapshot {
            id: self.conn.id,
            pid: self.pid(),
            comm: self.comm().map(Cow::into_owned),
            direction: self.conn.direction,
            phase: self.conn.phase(),
            local: self.local(),
            remote: self.remote(),
            state: self.state_name().to_owned(),
            age_seconds: self.conn.age_ns(now_ns) / 1_000_000_000,
            netns: self.netns(),
            preexisting: self.conn.preexisting,
            holders: self.holders.to_vec(),
            // The daemon fills these in from its opener stacks (the table knows none).
            stack_group: None,
            no_stack: None,
        }
    }
}

/// One process, as `tracer top` and the API show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessSnapshot {
    /// Process id (the thread-group id).
    pub pid: u32,
    /// When the process started, nanoseconds since boot (CLOCK_BOOTTIME), to 10 ms: with `pid`,
    /// identifies a process across pid reuse.
    pub start_time_ns: u64,
    /// Command name (the kernel's `comm`, at most 15 bytes; updated on exec).
    pub comm: String,
    /// Id of its cgroup (v2): the inode number of the cgroup's directory.
    pub cgroup_id: u64,
    /// Connections open now (docs/semantics.md).
    pub open: u32,
    /// Connections that reached ESTABLISHED for it (outbound) or that it accepted (inbound),
    /// since the daemon started.
    pub opened_total: u64,
    /// Open connections it released, since the daemon started.
    pub closed_total: u64,
    /// Outbound connects that never reached ESTABLISHED (refused, timed out, unreachable, or
    /// closed while connecting), since the daemon started.
    pub connect_failed: u64,
    /// Outbound connects still in SYN_SENT (not open).
    pub connecting: u32,
    /// Open connections by state (only the states an open connection can be in).
    pub states: StateCounts,
    /// The counts of its outbound connections (made with `connect()`).
    pub outbound: DirectionStats,
    /// The counts of its inbound connections (handed out by `accept()`).
    pub inbound: DirectionStats,
    /// It has exited (it stays listed for a grace period, 60 s by default).
    pub exited: bool,
    /// Connections it still held when it exited; `null` while it is alive.
    pub open_at_exit: Option<u32>,
    /// A connection of it was not tracked because the table was full (`tracer run
    /// --max-connections`): its counts are lower bounds, and the growth rule holds its verdict
    /// (docs/security.md, "Memory bounds").
    #[serde(default)]
    pub over_limit: bool,
    /// Its connections the table refused for `--max-connections` (connects, and connections it
    /// accepted that were refused while waiting in a backlog), since the daemon started.
    #[serde(default)]
    pub refused_connections: u32,
}

impl From<&ProcessStats> for ProcessSnapshot {
    fn from(p: &ProcessStats) -> Self {
        Self {
            pid: p.pid(),
            start_time_ns: p.start_time_ns(),
            comm: p.comm().into_owned(),
            cgroup_id: p.cgroup_id,
            open: p.open,
            opened_total: p.opened_total,
            closed_total: p.closed_total,
            connect_failed: p.connect_failed,
            connecting: p.connecting,
            states: p.states,
            outbound: p.outbound,
            inbound: p.inbound,
            exited: p.exited(),
            open_at_exit: p.open_at_exit,
            over_limit: p.over_limit(),
            refused_connections: p.refused,
        }
    }
}

/// One connection, as `tracer conns` and the API show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnSnapshot {
    /// The table's id of this connection: unique for the daemon's life, increasing in the
    /// order the daemon first saw connections.
    pub id: u64,
    /// The owner's pid; `null` while unattributed.
    pub pid: Option<u32>,
    /// The owner's command name; `null` while unattributed.
    pub comm: Option<String>,
    /// Who opened it.
    pub direction: Direction,
    /// Where it is in its life.
    pub phase: Phase,
    /// Local endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub local: SocketAddr,
    /// Remote endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub remote: SocketAddr,
    /// TCP state, the kernel's name in lower case (`syn_sent` while connecting).
    #[schemars(extend("enum" = crate::events::state_names()))]
    pub state: String,
    /// Seconds since it opened; since first seen for connections not open yet.
    pub age_seconds: u64,
    /// Its network namespace: the inode number of `/proc/<pid>/ns/net`.
    pub netns: u32,
    /// Found open at start-up (or by a reconcile): its open time is unknown and its age counts
    /// from when tracer found it.
    pub preexisting: bool,
    /// Pids of every process holding it, when a scan found more than one (absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<u32>,
    /// The id of its opener stack's group (as `tracer stacks` of its owner lists it); `null`
    /// when it has none, and `no_stack` says why.
    #[serde(default)]
    pub stack_group: Option<u32>,
    /// Why `stack_group` is `null`; `null` when it is not.
    #[serde(default)]
    pub no_stack: Option<crate::stacks::groups::NoStack>,
}

/// Table-wide numbers for `tracer status` and exporters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSummary {
    pub tracked_connections: u64,
    pub unattributed: u64,
    pub processes: u64,
    #[serde(flatten)]
    pub counters: TableCounters,
}

impl ConnectionTable {
    /// Every process, most open first (then by pid, start time).
    pub fn process_snapshots(&self) -> Vec<ProcessSnapshot> {
        let mut stats: Vec<&ProcessStats> = self.processes().collect();
        stats.sort_by(|a, b| b.open.cmp(&a.open).then(a.key.cmp(&b.key)));
        stats.into_iter().map(ProcessSnapshot::from).collect()
    }

    /// Every tracked connection, oldest entry first.
    pub fn conn_snapshots(&self, now_ns: u64) -> Vec<ConnSnapshot> {
        self.conn_snapshots_where(now_ns, |_| true)
    }

    /// The connections `keep` accepts, oldest entry first; filtering before building avoids
    /// materialising the whole table for a narrow query.
    pub fn conn_snapshots_where(
        &self,
        now_ns: u64,
        keep: impl FnMut(&ConnView<'_>) -> bool,
    ) -> Vec<ConnSnapshot> {
        self.conn_snapshots_annotated(now_ns, keep, |_, _| {})
    }

    /// [`Self::conn_snapshots_where`], with `annotate` filling in what other stages know of
    /// each connection (its opener stack).
    pub fn conn_snapshots_annotated(
        &self,
        now_ns: u64,
        mut keep: impl FnMut(&ConnView<'_>) -> bool,
        mut annotate: impl FnMut(&ConnView<'_>, &mut ConnSnapshot),
    ) -> Vec<ConnSnapshot> {
        let mut out: Vec<ConnSnapshot> = self
            .connections()
            // A failed connect still held is a socket, not a connection anyone lists.
            .filter(|view| view.phase() != Phase::Failed && keep(view))
            .map(|view| {
                let mut snapshot = view.snapshot(now_ns);
                annotate(&view, &mut snapshot);
                snapshot
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    pub fn summary(&self) -> TableSummary {
        TableSummary {
            tracked_connections: self.tracked_connections() as u64,
            unattributed: self.unattributed() as u64,
            processes: self.process_count() as u64,
            counters: *self.counters(),
        }
    }
}
