//! Ground truth: loading the sockets that exist at start-up, and the periodic reconcile that
//! compares the table with the kernel's own view (sock_diag plus /proc holders).
//!
//! Counts come from the event stream. A scan only ever fills in what events could not know —
//! connections older than the daemon, and holders after a fork or a passed descriptor — and
//! corrects a difference only when two consecutive scans agree on it, so a connection that
//! changes state while a scan runs is never "corrected".
use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    net::SocketAddr,
};

use tracer_common::{AF_INET, AF_INET6, ConnEvent, EventKind, Tuple, tcp_state};

use super::{
    Applied, Connection, ConnectionTable, Contribution, Direction, Limit, Phase, ProcessKey,
    ProcessStats, SocketKey, TupleKey,
};

/// A process holding a socket, as /proc shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedHolder {
    pub key: ProcessKey,
    pub comm: [u8; 16],
    /// Its cgroup v2 id from the task iterator (probes::task_cgroups); 0 when unknown.
    pub cgroup_id: u64,
}

/// A TCP socket found by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedSocket {
    pub netns: u32,
    /// Socket inode; 0 for a socket no file refers to (orphaned, or not yet accepted).
    pub inode: u64,
    /// The kernel's socket cookie: unique for the boot, unlike the addresses (loopback clients
    /// reuse a port within a second) or the inode (0 for every unaccepted socket).
    pub cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// Inbound when the local port is one a listener of the namespace serves.
    pub direction: Direction,
    /// Every process holding it, lowest pid first.
    pub holders: Vec<ScannedHolder>,
}

/// Processes holding sockets that sock_diag did not list, by socket inode: among them the
/// connections that left its view (reset, or closed by the peer) while still held. Every other
/// kind of socket is in it too; only the inodes the table remembers are looked up.
pub type UnlistedHolders = HashMap<u64, Vec<ScannedHolder>>;

/// One scan for a reconcile: the TCP sockets sock_diag listed, with their holders, and the
/// holders of the sockets it did not list.
#[derive(Clone, Debug, Default)]
pub struct KernelSockets {
    pub listed: Vec<ScannedSocket>,
    pub unlisted: UnlistedHolders,
}

impl ScannedSocket {
    fn tuple_key(&self) -> TupleKey {
        TupleKey { netns: self.netns, local: self.local, remote: self.remote }
    }

    /// A connection the table should know: held by a file, or waiting unaccepted in a
    /// backlog (no file yet, but in a state an orphan never has). Orphans, listeners, request
    /// sockets and TIME_WAIT are not connections of any process.
    fn is_connection(&self) -> bool {
        match self.state {
            tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT => true,
            tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSING
            | tcp_state::LAST_ACK => self.inode != 0,
            _ => false,
        }
    }
}

/// What one reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Differences confirmed by two consecutive scans and corrected, described for the log.
    pub corrections: Vec<String>,
    /// Connections given to the process that really holds them (fork, passed descriptor).
    pub holder_changes: u32,
    /// Differences seen once, to be confirmed (or not) by the next scan.
    pub pending: usize,
    /// Connections the kernel has and the table lacks, not corrected because connections
    /// refused for a limit are outstanding (they may be these: a refused connection stays
    /// untracked for its life).
    pub untracked_over_limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Difference {
    /// The kernel has a connection the table lacks (a lost open). Keyed by cookie: two scans
    /// must see the very same socket, not two short-lived ones that happened to share a tuple.
    Missing { tuple: TupleKey, cookie: u64 },
    /// The table has an open connection the kernel lacks (a lost release).
    Stale { key: SocketKey, id: u64 },
    /// The kernel reports another state (a lost state change).
    State { key: SocketKey, id: u64, state: u8 },
}

/// Keeps the differences of the previous scan, and the totals.
#[derive(Debug, Default)]
pub struct Reconciler {
    pending: HashSet<Difference>,
    /// Scans compared with the table (each reconcile is one).
    pub checks_total: u64,
    pub corrections_total: u64,
    pub holder_changes_total: u64,
    /// [`ReconcileReport::untracked_over_limit`] of the latest scan.
    pub untracked_over_limit: u64,
}

impl Reconciler {
    pub fn check(
        &mut self,
        table: &mut ConnectionTable,
        kernel: &KernelSockets,
        now_ns: u64,
    ) -> ReconcileReport {
        let scan = &kernel.listed;
        let mut report = ReconcileReport::default();
        // The table's connections that a scan can see, by addresses. Two live sockets never
        // share their addresses in one namespace, so of two entries that do, one is a socket
        // gone without its release, or a scanned copy of the other: it must not stand for the
        // live one (it would take the live one's state, and neither would ever be found stale).
        let mut known: HashMap<TupleKey, SocketKey> =
            HashMap::with_capacity(table.connections.len());
        let mut shadowed = Vec::new();
        for (&key, conn) in table.connections.iter().filter(|(_, c)| listed_by_sock_diag(c)) {
            match known.entry(conn.tuple_key(key.netns)) {
                Entry::Vacant(slot) => {
                    slot.insert(key);
                }
                Entry::Occupied(mut slot) => {
                    let other = *slot.get();
                    let outranked =
                        table.connections.get(&other).is_some_and(|o| rank(o) > rank(conn));
                    shadowed.push(if outranked { key } else { slot.insert(key) });
                }
            }
        }
        let mut seen = HashSet::with_capacity(known.len());
        let mut differences = HashSet::new();
        // While connections refused for a limit are alive, the kernel's extra connections may
        // be theirs: not a lost open, and not to be added back past the limit.
        let refusals_outstanding = table.refused_outstanding() > 0;
        for socket in scan.iter().filter(|s| s.is_connection()) {
            let Some(&key) = known.get(&socket.tuple_key()) else {
                if refusals_outstanding {
                    report.untracked_over_limit += 1;
                    continue;
                }
                differences.insert(Difference::Missing {
                    tuple: socket.tuple_key(),
                    cookie: socket.cookie,
                });
                continue;
            };
            seen.insert(key);
            let Some(conn) = table.connections.get(&key) else { continue };
            let (id, state, owner) = (conn.id, conn.state, conn.owner());
            if state != socket.state {
                differences.insert(Difference::State { key, id, state: socket.state });
            }
            // Holders are a fact of this instant, not a lost event: follow them at once.
            match table.follow_holders(key, owner, &socket.holders, now_ns) {
                // Its holder could not be added (--max-processes): it left the table.
                None => continue,
                Some(moved) => report.holder_changes += u32::from(moved),
            }
        }
        for key in known.values().chain(&shadowed) {
            if !seen.contains(key)
                && let Some(conn) = table.connections.get(key)
            {
                differences.insert(Difference::Stale { key: *key, id: conn.id });
            }
        }

        let by_tuple: HashMap<TupleKey, &ScannedSocket> =
            scan.iter().map(|s| (s.tuple_key(), s)).collect();
        for difference in differences.intersection(&self.pending) {
            let done = match *difference {
                Difference::Missing { tuple, .. } => match table.connecting_at(
                    tuple,
                    by_tuple.get(&tuple).map_or(&[][..], |s| s.holders.as_slice()),
                ) {
                    // A connect whose handshake completion was never reported (a run the
                    // kernel skipped): the table has it, still connecting, at these addresses.
                    Some(key) => {
                        let state =
                            by_tuple.get(&tuple).map_or(tcp_state::ESTABLISHED, |s| s.state);
                        // The scan's addresses: the connect's event may lack the local port.
                        let addresses = tuple_of(tuple.local, tuple.remote);
                        table.open_missed_handshake(key, state, now_ns, Some(addresses)).map(|_| {
                            format!(
                                "opened a connect whose handshake the events missed: {} -> {} \
                                 (netns {})",
                                tuple.local, tuple.remote, tuple.netns
                            )
                        })
                    }
                    None => by_tuple.get(&tuple).and_then(|s| table.insert_scanned(s, now_ns)).map(
                        |_| {
                            format!(
                                "added a connection the events missed: {} -> {} (netns {})",
                                tuple.local, tuple.remote, tuple.netns
                            )
                        },
                    ),
                },
                Difference::Stale { key, id } => table.drop_stale(key, id).map(|c| {
                    format!(
                        "removed a connection the kernel no longer has: {} -> {} (a lost release)",
                        c.local(),
                        c.remote()
                    )
                }),
                Difference::State { key, id, state } => {
                    table.force_state(key, id, state, now_ns).map(|(was, since_ns, c)| {
                        // The state the events left, and since when, say which change was
                        // lost.
                        format!(
                            "state of {} -> {} is {}, not {} (the events' state for {:.1} s; a \
                             lost state change)",
                            c.local(),
                            c.remote(),
                            c.state_name(),
                            crate::events::state_name(was),
                            now_ns.saturating_sub(since_ns) as f64 / 1e9
                        )
                    })
                }
            };
            if let Some(description) = done {
                report.corrections.push(description);
            }
        }
        report.holder_changes += table.follow_unlisted_holders(&kernel.unlisted, now_ns);
        self.pending = differences.difference(&self.pending).copied().collect();
        report.pending = self.pending.len();
        self.checks_total += 1;
        self.corrections_total += report.corrections.len() as u64;
        self.holder_changes_total += u64::from(report.holder_changes);
        self.untracked_over_limit = report.untracked_over_limit as u64;
        report
    }
}

/// Which of two entries at one address pair stands for the socket a scan lists there: one made
/// from the socket's own events over a scanned copy (added when a lost event hid which entry it
/// was: the events' entry knows its stack and open time), then the newer (the older one's
/// release was lost).
fn rank(conn: &Connection) -> (bool, u64) {
    (!conn.preexisting, conn.id)
}

impl ConnectionTable {
    /// Loads the connections a start-up scan found, skipping those the events already know.
    /// Returns how many were added.
    pub fn load_existing(&mut self, scan: &[ScannedSocket], now_ns: u64) -> usize {
        let known: HashSet<TupleKey> = self
            .connections
            .iter()
            .filter(|(_, c)| c.phase() != Phase::Failed && c.phase() != Phase::Connecting)
            .map(|(key, c)| c.tuple_key(key.netns))
            .collect();
        scan.iter()
            .filter(|s| s.is_connection() && !known.contains(&s.tuple_key()))
            .filter_map(|s| self.insert_scanned(s, now_ns))
            .count()
    }

    /// The outbound entry still connecting at these addresses, if any: the one with exactly
    /// them (its connect event carried its local port: fentry and kprobe modes), else the only
    /// connect in flight from that local address to that peer by a process that holds the
    /// socket (tracepoint mode learns the local port only at the handshake, whose event was the
    /// one lost). Two such connects in flight leave it unknown which one this is: none.
    fn connecting_at(&self, tuple: TupleKey, holders: &[ScannedHolder]) -> Option<SocketKey> {
        let connecting =
            |c: &Connection| c.phase() == Phase::Connecting && c.direction == Direction::Outbound;
        let exact = self.connections.iter().find(|(key, c)| {
            connecting(c) && c.tuple.local_port != 0 && c.tuple_key(key.netns) == tuple
        });
        if let Some((&key, _)) = exact {
            return Some(key);
        }
        let mut unported = self.connections.iter().filter(|(key, c)| {
            connecting(c)
                && c.tuple.local_port == 0
                && key.netns == tuple.netns
                && c.remote() == tuple.remote
                && c.local().ip() == tuple.local.ip()
                && c.owner().is_some_and(|o| holders.iter().any(|h| h.key.pid == o.pid))
        });
        let (&key, _) = unported.next()?;
        unported.next().is_none().then_some(key)
    }

    /// Extra pids holding `key` (empty unless a scan found several holders).
    pub fn shared_holders(&self, key: SocketKey) -> &[u32] {
        self.shared_holders.get(&key).map_or(&[], Vec::as_slice)
    }

    /// Adds one scanned connection, open for its first holder (unattributed if none holds it).
    /// Its open time is unknown: it counts from `now_ns` and is marked `preexisting`.
    /// `None` when a limit refuses it (counted; a scanned socket has no kernel address to be
    /// remembered by, so it counts among the unremembered refusals).
    pub(super) fn insert_scanned(&mut self, s: &ScannedSocket, now_ns: u64) -> Option<u64> {
        let tuple_key = s.tuple_key();
        if self.scanned.contains_key(&tuple_key) {
            return None;
        }
        let holder = s.holders.first();
        let limit = if holder.is_some_and(|h| !self.room_for_process(h.key)) {
            Some(Limit::Processes)
        } else if self.connections.len() >= self.config.max_connections {
            Some(Limit::Connections)
        } else {
            None
        };
        if let Some(limit) = limit {
            self.count_refusal(limit, holder.map(|h| h.key));
            self.refused_unremembered += 1;
            return None;
        }
        let owner = holder.map(|h| self.touch_holder(h, now_ns));
        let phase = match (owner, s.direction) {
            (None, Direction::Inbound) => Phase::Backlog,
            _ => Phase::Open,
        };
        // No kernel address is known: the inode stands in (user-range values never collide
        // with kernel addresses); unaccepted sockets have no inode, so their id does.
        let id = self.next_id;
        self.next_id += 1;
        let key = SocketKey { netns: s.netns, sock: if s.inode != 0 { s.inode } else { id } };
        let tuple = tuple_of(s.local, s.remote);
        let mut conn = Connection::new(id, s.direction, phase, owner, s.state, tuple, now_ns);
        conn.preexisting = true;
        self.aggregates.add(Contribution::of(&conn));
        if phase == Phase::Open {
            self.aggregates.count_opened(owner, s.direction);
        }
        self.scanned.insert(tuple_key, key);
        self.connections.insert(key, conn);
        Some(id)
    }

    /// The first event about a scanned socket gives it its kernel identity. An `Established`
    /// is then no news (the scan already counted it open); other events proceed as usual.
    pub(super) fn adopt_scanned(&mut self, kind: EventKind, event: &ConnEvent) -> Option<Applied> {
        if matches!(kind, EventKind::Connect | EventKind::ProcessExit | EventKind::ProcessExec) {
            return None;
        }
        let old_key = self.scanned.remove(&TupleKey::of(event))?;
        let conn = self.connections.remove(&old_key)?;
        let key = SocketKey::of(event);
        if let Some(pids) = self.shared_holders.remove(&old_key) {
            self.shared_holders.insert(key, pids);
        }
        if let Some(inode) = self.inodes.remove(&old_key) {
            self.inodes.insert(key, inode);
        }
        self.connections.insert(key, conn);
        (kind == EventKind::Established).then_some(Applied::Ignored)
    }

    /// Removes a scanned entry with `event`'s addresses but another identity: the same socket,
    /// counted once already by the events. Its open count is withdrawn, and the open it added
    /// to `opened_total` taken back (a start-up race, settled before anyone relies on it).
    pub(super) fn drop_scanned_duplicate(&mut self, event: &ConnEvent) {
        let tuple = TupleKey::of(event);
        let Some(&key) = self.scanned.get(&tuple) else { return };
        if key == SocketKey::of(event) {
            return;
        }
        if let Some(dup) = self.remove(key)
            && let (Phase::Open, Some(owner)) = (dup.phase(), dup.owner())
        {
            self.aggregates.uncount_opened(owner, dup.direction);
        }
    }

    /// Counts `key` for one of `holders` (the lowest pid) unless its `owner` is among them,
    /// and remembers them all when there are several. `Some(true)` when it moved, `None` when
    /// it left the table instead (see [`Self::transfer`]).
    fn follow_holders(
        &mut self,
        key: SocketKey,
        owner: Option<ProcessKey>,
        holders: &[ScannedHolder],
        now_ns: u64,
    ) -> Option<bool> {
        let mut moved = false;
        if let Some(first) = holders.first()
            && owner.is_none_or(|o| !holders.iter().any(|h| h.key == o))
        {
            if !self.transfer(key, first, now_ns) {
                return None;
            }
            moved = true;
        }
        if holders.len() > 1 {
            self.shared_holders.insert(key, holders.iter().map(|h| h.key.pid).collect());
        } else {
            self.shared_holders.remove(&key);
        }
        Some(moved)
    }

    fn owner_of(&self, key: SocketKey) -> Option<ProcessKey> {
        self.connections.get(&key).and_then(Connection::owner)
    }

    /// Follows the holders of the connections sock_diag no longer lists (reset, or closed by
    /// the peer, and still held) by the inodes their state changes into CLOSE carried;
    /// returns how many moved.
    /// A remembered socket no process holds is left alone: its release is on its way.
    fn follow_unlisted_holders(&mut self, unlisted: &UnlistedHolders, now_ns: u64) -> u32 {
        let unlisted_held: Vec<(SocketKey, &[ScannedHolder])> = self
            .inodes
            .iter()
            .filter(|(key, _)| {
                self.connections
                    .get(key)
                    .is_some_and(|c| c.phase() == Phase::Open && !listed_by_sock_diag(c))
            })
            .filter_map(|(&key, inode)| {
                Some((key, unlisted.get(inode).filter(|h| !h.is_empty())?.as_slice()))
            })
            .collect();
        let mut moved = 0;
        for (key, holders) in unlisted_held {
            let owner = self.owner_of(key);
            if self.follow_holders(key, owner, holders, now_ns) == Some(true) {
                moved += 1;
            }
        }
        moved
    }

    /// Gives `key` to `holder`: the old owner closed it as far as it is concerned, the new one
    /// opened it (so each process keeps open = opened_total - closed_total). When `holder` is
    /// new and the table holds `max_processes`, the connection leaves the table instead
    /// (closed for its old owner, refused for the limit): `false`.
    fn transfer(&mut self, key: SocketKey, holder: &ScannedHolder, now_ns: u64) -> bool {
        if !self.room_for_process(holder.key) {
            self.refuse_entry(key);
            return false;
        }
        let new_owner = self.touch_holder(holder, now_ns);
        let Some(conn) = self.connections.get_mut(&key) else { return true };
        let before = Contribution::of(conn);
        let (old_owner, was_open) = (conn.owner(), conn.phase() == Phase::Open);
        conn.set_owner(Some(new_owner));
        if conn.phase() == Phase::Backlog {
            conn.open(now_ns);
        }
        let (after, direction) = (Contribution::of(conn), conn.direction);
        self.aggregates.withdraw(before);
        if let (Some(old), true) = (old_owner, was_open) {
            self.aggregates.count_closed(old, direction);
        }
        self.aggregates.add(after);
        self.aggregates.count_opened(Some(new_owner), direction);
        true
    }

    /// Takes the entry `key` out of the table because its new holder is over the process
    /// limit: its old owner closed it, and it is refused like a new connection would be.
    fn refuse_entry(&mut self, key: SocketKey) {
        let Some(conn) = self.connections.get(&key) else { return };
        // An entry a scan found and no event named yet is keyed by its inode: no event will
        // carry that key.
        let by_address =
            !(conn.preexisting && self.scanned.get(&conn.tuple_key(key.netns)) == Some(&key));
        let Some(conn) = self.remove(key) else { return };
        if let (Phase::Open, Some(owner)) = (conn.phase(), conn.owner()) {
            self.aggregates.count_closed(owner, conn.direction);
        }
        if by_address {
            self.refuse(key, Limit::Processes, None);
        } else {
            self.count_refusal(Limit::Processes, None);
            self.refused_unremembered += 1;
        }
    }

    fn drop_stale(&mut self, key: SocketKey, id: u64) -> Option<Connection> {
        if self.connections.get(&key).is_none_or(|c| c.id != id) {
            return None;
        }
        let conn = self.remove(key)?;
        if let (Phase::Open, Some(owner)) = (conn.phase(), conn.owner()) {
            self.aggregates.count_closed(owner, conn.direction);
        }
        Some(conn)
    }

    fn force_state(
        &mut self,
        key: SocketKey,
        id: u64,
        state: u8,
        now_ns: u64,
    ) -> Option<(u8, u64, Connection)> {
        let conn = self.connections.get_mut(&key).filter(|c| c.id == id)?;
        let (before, was, since_ns) = (Contribution::of(conn), conn.state, conn.state_since_ns);
        conn.set_state(state, now_ns);
        let (after, copy) = (Contribution::of(conn), *conn);
        self.aggregates.withdraw(before);
        self.aggregates.add(after);
        Some((was, since_ns, copy))
    }

    fn touch_holder(&mut self, holder: &ScannedHolder, now_ns: u64) -> ProcessKey {
        let p = self.aggregates.processes.entry(holder.key).or_insert_with(|| {
            ProcessStats::new(holder.key, holder.comm, holder.cgroup_id, now_ns)
        });
        // A scan's id is as fresh as an event's; an unknown one (0) never overwrites.
        if holder.cgroup_id != 0 {
            p.cgroup_id = holder.cgroup_id;
        }
        holder.key
    }
}

/// Whether sock_diag lists `conn`'s socket: the kernel unhashes a socket when it reaches
/// CLOSE, so a socket held after a reset is invisible to sock_diag (and to ss).
fn listed_by_sock_diag(conn: &Connection) -> bool {
    matches!(conn.phase(), Phase::Open | Phase::Backlog) && conn.state != tcp_state::CLOSE
}

fn tuple_of(local: SocketAddr, remote: SocketAddr) -> Tuple {
    let bytes = |addr: SocketAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match addr {
            SocketAddr::V4(v4) => out[..4].copy_from_slice(&v4.ip().octets()),
            SocketAddr::V6(v6) => out = v6.ip().octets(),
        }
        out
    };
    Tuple {
        local_addr: bytes(local),
        remote_addr: bytes(remote),
        local_port: local.port(),
        remote_port: remote.port(),
        family: u16::from(if local.is_ipv4() { AF_INET } else { AF_INET6 }),
    }
}
