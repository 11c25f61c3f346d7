//! Which stack opened which connection: the daemon's side of opener stacks. Pure and
//! deterministic like the table (no clock read, no BPF): it is fed the table's events with what
//! they did, and the stack records of the stack ring, and it answers, per connection, whether
//! its opener stack was captured, and which.
//!
//! The two rings are drained one after the other, so a connection's stack may arrive before or
//! after its connect/accept event: whichever comes second completes the pair. Stacks are
//! interned per process (two processes of one non-PIE Go binary produce the same addresses but
//! are different code paths to the user: the key is (process, frames)), counted by the
//! connections that use them, and dropped with the last one.
//!
//! It also keeps, per connection, the stack of the last Go HTTP request sent on it (the
//! request probe's records, [`StackKind::GoRequest`]): each request replaces the previous one,
//! so an older, tidy caller is never blamed for a newer leak.
use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasher, Hash, Hasher},
};

use tracer_common::{
    ConnEvent, EventKind, flags,
    stacks::{KIND_GO_REQUEST, LostRequest, StackRecord},
};

use crate::table::{Applied, ConnectionTable, Direction, ProcessKey, SocketKey};

type Map<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// A stack interned by [`OpenerStacks`]; valid while a connection uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(pub u32);

/// Where a stack was captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackKind {
    /// In connect: the code that opened an outbound connection.
    Connect,
    /// At accept's return: the code that took an inbound one.
    Accept,
    /// At a Go HTTP/1 request (`(*persistConn).roundTrip`'s entry): the code that sent a request
    /// on the connection.
    GoRequest,
}

impl StackKind {
    /// The kind a stack record carries, if it is one of these.
    pub fn of_record(kind: u8) -> Option<Self> {
        match kind {
            KIND_GO_REQUEST => Some(StackKind::GoRequest),
            k if k == EventKind::Connect as u8 => Some(StackKind::Connect),
            k if k == EventKind::Accept as u8 => Some(StackKind::Accept),
            _ => None,
        }
    }

    /// The direction of the connections an opener stack of this kind opens.
    fn opens(self) -> Option<Direction> {
        match self {
            StackKind::Connect => Some(Direction::Outbound),
            StackKind::Accept => Some(Direction::Inbound),
            StackKind::GoRequest => None,
        }
    }
}

/// One distinct stack of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    pub process: ProcessKey,
    /// User-space instruction pointers, innermost first.
    pub frames: Box<[u64]>,
    /// Where it was captured.
    pub kind: StackKind,
    /// Open or connecting connections that carry it (and a pending record).
    connections: u32,
    /// Its key in `by_content`.
    hash: u64,
}

/// What is known of a connection's opener stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// Captured.
    Stack(StackId),
    /// The policy wanted it and the kernel was asked; its record has not arrived (or was lost:
    /// the kernel counts those).
    Wanted,
    /// The policy did not sample it.
    NotSampled,
    /// Opened before capture began (older than the daemon, or seen only by a scan).
    BeforeCapture,
}

/// How long a stack may wait for its event (or the event's connection for the stack) before it
/// is dropped and counted: the two rings are drained within one drain interval of each other.
pub const PENDING_GRACE_NS: u64 = 10 * 1_000_000_000;

/// Counters of what happened to stack records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCounters {
    /// Stack records received.
    pub received: u64,
    /// Records matched with their connection.
    pub attached: u64,
    /// Records whose connection never showed up (closed before its event was read, or its
    /// event was lost) and were dropped after [`PENDING_GRACE_NS`].
    pub orphaned: u64,
    /// Records that were malformed (an unknown kind, no frame).
    pub malformed: u64,
    /// Go request records received.
    pub requests: u64,
    /// Go request records whose connection was not (or not yet, within
    /// [`PENDING_GRACE_NS`]) in the table as the requesting process's: dropped.
    pub requests_unmatched: u64,
    /// Go requests whose stack the kernel could not send (the stack ring was full): their
    /// connections' last request became unknown.
    pub requests_lost: u64,
}

/// The last Go request on a connection: when it was sent, and its stack unless the kernel
/// lost it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LastRequest {
    at_ns: u64,
    stack: Option<StackId>,
}

/// What is known of a connection's last Go request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestSeen {
    Stack(StackId),
    /// Its stack was lost in the kernel: unknown, never an older request's.
    Lost,
}

#[derive(Default)]
pub struct OpenerStacks {
    stacks: Map<StackId, Stack>,
    by_content: Map<(ProcessKey, u64), Vec<StackId>>,
    /// By table connection id; connections absent here were not sampled or predate capture.
    by_connection: Map<u64, Opener>,
    /// Stacks whose connection is not in the table yet: (stack, received at), by socket and
    /// kind. The kind is part of the key because a process that accepts and dials can free an
    /// accepted socket and reuse its address for its next connect before either stack is
    /// paired: both then wait at one address, each for its own event.
    pending: Map<(SocketKey, StackKind), (StackId, u64)>,
    /// By table connection id: the last Go request sent on it.
    last_request: Map<u64, LastRequest>,
    /// Request stacks whose connection was not in the table when they were read (its connect
    /// event was committed after the event ring's drain began), with their request's time:
    /// retried at the next drain.
    pending_requests: Map<SocketKey, ((StackId, u64), u64)>,
    next_id: u32,
    counters: StackCounters,
}

impl OpenerStacks {
    pub fn counters(&self) -> StackCounters {
        self.counters
    }

    /// Connections whose stack was wanted (captured or not yet), plus those with a request.
    pub fn tracked_connections(&self) -> usize {
        self.by_connection.len() + self.last_request.len()
    }

    /// Distinct stacks held now.
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    pub fn stack(&self, id: StackId) -> Option<&Stack> {
        self.stacks.get(&id)
    }

    /// What is known of connection `id`'s opener; `preexisting` connections predate capture.
    pub fn opener(&self, id: u64, preexisting: bool) -> Opener {
        match self.by_connection.get(&id) {
            Some(opener) => *opener,
            None if preexisting => Opener::BeforeCapture,
            None => Opener::NotSampled,
        }
    }

    /// Follows an event the table just applied (`applied` is what it did).
    pub fn on_event(&mut self, event: &ConnEvent, applied: &Applied, table: &ConnectionTable) {
        let wanted = event.flags & flags::STACK_WANTED != 0
            && matches!(event.kind(), Some(EventKind::Connect | EventKind::Accept));
        match *applied {
            Applied::Connecting { id, .. } | Applied::Opened { id, .. } if wanted => {
                self.wanted(id, event);
            }
            // kprobe mode captures connect's stack apart from its event, which then carries no
            // flag: a stack that came first still belongs to it.
            Applied::Connecting { id, .. } if !self.pending.is_empty() => {
                if let Some(stack) = self.take_pending(event, StackKind::Connect) {
                    self.counters.attached += 1;
                    self.set(id, Opener::Stack(stack));
                }
            }
            // The function-probe modes report an accept twice (the function's return, then
            // the syscall's exit, which alone captures): the table ignores the second report.
            Applied::Ignored if wanted => {
                if let Some(view) = table.connection(SocketKey::of(event))
                    && !self.by_connection.contains_key(&view.id())
                {
                    self.wanted(view.id(), event);
                }
            }
            Applied::Closed { id, .. }
            | Applied::ConnectFailed { id, .. }
            | Applied::ReleasedUnattributed { id } => self.forget_connection(id),
            _ => {}
        }
    }

    /// Takes a stack record from the stack ring; `table` finds its connection if its event was
    /// applied already.
    pub fn on_stack(&mut self, record: &StackRecord, table: &ConnectionTable, now_ns: u64) {
        self.counters.received += 1;
        let (Some(kind), false) = (StackKind::of_record(record.kind), record.frames().is_empty())
        else {
            self.counters.malformed += 1;
            return;
        };
        let process = ProcessKey::new(record.tgid, record.start_time_ns);
        if kind == StackKind::GoRequest {
            self.counters.requests += 1;
            let stack = self.intern(process, record.frames(), kind);
            let key = SocketKey { netns: record.netns, sock: record.sock };
            let at_ns = record.timestamp_ns;
            if !self.request_on(key, process, at_ns, Some(stack), table)
                && let Some(((old, _), _)) =
                    self.pending_requests.insert(key, ((stack, at_ns), now_ns))
            {
                self.release_stack(old);
                self.counters.requests_unmatched += 1;
            }
            return;
        }
        let stack = self.intern(process, record.frames(), kind);
        let key = SocketKey { netns: record.netns, sock: record.sock };
        // Its connection waits for it, or (kprobe mode, see `on_event`) was reported without
        // the flag: any stack that arrives for a connection the events opened is its own.
        // A stack of the other direction is a previous lifecycle's of the same socket address
        // (an accepted socket closed and freed, its address reused by a connect of the same
        // process before the accept's stack was read): never this connection's.
        let waiting = table
            .connection(key)
            .filter(|view| !view.conn.preexisting && kind.opens() == Some(view.conn.direction))
            .map(|view| view.id())
            .filter(|id| matches!(self.by_connection.get(id), None | Some(Opener::Wanted)));
        // The use `intern` counted goes to the connection, or to the pending slot.
        match waiting {
            Some(id) => {
                self.counters.attached += 1;
                self.set(id, Opener::Stack(stack));
            }
            None => {
                if let Some((old, _)) = self.pending.insert((key, kind), (stack, now_ns)) {
                    self.release_stack(old);
                    self.counters.orphaned += 1;
                }
            }
        }
    }

    /// Pairs the request stacks that waited for their connection with the table as it is now.
    pub fn retry_requests(&mut self, table: &ConnectionTable) {
        if self.pending_requests.is_empty() {
            return;
        }
        let waiting: Vec<(SocketKey, StackId, u64)> = self
            .pending_requests
            .iter()
            .map(|(key, ((stack, at_ns), _))| (*key, *stack, *at_ns))
            .collect();
        for (key, stack, at_ns) in waiting {
            let Some(process) = self.stacks.get(&stack).map(|s| s.process) else { continue };
            if self.request_on(key, process, at_ns, Some(stack), table) {
                self.pending_requests.remove(&key);
            }
        }
    }

    /// A Go request on the socket at `key` whose stack the kernel lost (the probe's lost map):
    /// the connection's last request becomes unknown unless a later one is known.
    pub fn on_lost_request(&mut self, key: SocketKey, lost: &LostRequest, table: &ConnectionTable) {
        self.counters.requests_lost += 1;
        let process = ProcessKey::new(lost.tgid, lost.start_time_ns);
        self.request_on(key, process, lost.timestamp_ns, None, table);
    }

    /// The last request on connection `id`, if a Go request probe saw one.
    pub fn last_request(&self, id: u64) -> Option<RequestSeen> {
        self.last_request
            .get(&id)
            .map(|last| last.stack.map_or(RequestSeen::Lost, RequestSeen::Stack))
    }

    /// Records a request of `process` sent at `at_ns` (with `stack`, or lost) as the last
    /// request on the connection at `key` if the table holds it as `process`'s and no later
    /// request is recorded there (the lost map is read after the ring, so their order is the
    /// requests' times). The stack's use goes to the connection, or is released. False when
    /// the table does not hold the connection.
    fn request_on(
        &mut self,
        key: SocketKey,
        process: ProcessKey,
        at_ns: u64,
        stack: Option<StackId>,
        table: &ConnectionTable,
    ) -> bool {
        let Some(id) = table
            .connection(key)
            .filter(|view| view.conn.owner() == Some(process))
            .map(|view| view.id())
        else {
            return false;
        };
        let incoming = LastRequest { at_ns, stack };
        // The one not kept: the incoming request when a later one is recorded, else the old.
        let dropped = match self.last_request.get(&id) {
            Some(last) if last.at_ns > at_ns => Some(incoming),
            _ => self.last_request.insert(id, incoming),
        };
        if let Some(LastRequest { stack: Some(old), .. }) = dropped {
            self.release_stack(old);
        }
        true
    }

    /// Drops stacks that waited longer than [`PENDING_GRACE_NS`] for their connection.
    pub fn expire(&mut self, now_ns: u64) {
        for (stack, _) in take_expired(&mut self.pending_requests, now_ns) {
            self.release_stack(stack);
            self.counters.requests_unmatched += 1;
        }
        for stack in take_expired(&mut self.pending, now_ns) {
            self.release_stack(stack);
            self.counters.orphaned += 1;
        }
    }

    /// Forgets every connection the table no longer holds (after a reconcile corrected it, or
    /// it expired) so that their stacks go.
    pub fn retain_connections(&mut self, mut alive: impl FnMut(u64) -> bool) {
        let gone: Vec<u64> = self
            .by_connection
            .keys()
            .chain(self.last_request.keys())
            .copied()
            .filter(|id| !alive(*id))
            .collect();
        for id in gone {
            self.forget_connection(id);
        }
    }

    /// The `kind` stack waiting for `event`'s socket, unless another process captured it: a
    /// freed socket's address is reused, and the stack of an earlier socket there (read after
    /// that socket's connection had closed) must not pass for the new one's. Events without an
    /// owner take any.
    fn take_pending(&mut self, event: &ConnEvent, kind: StackKind) -> Option<StackId> {
        let (stack, _) = self.pending.remove(&(SocketKey::of(event), kind))?;
        if event.flags & flags::OWNER_CONTEXT == 0
            || self.stacks.get(&stack).is_some_and(|s| s.process == owner_of(event))
        {
            return Some(stack);
        }
        self.release_stack(stack);
        self.counters.orphaned += 1;
        None
    }

    /// Connection `id` wants its stack: it may be waiting already.
    fn wanted(&mut self, id: u64, event: &ConnEvent) {
        let kind = match event.kind() {
            Some(EventKind::Accept) => StackKind::Accept,
            _ => StackKind::Connect,
        };
        let opener = match self.take_pending(event, kind) {
            Some(stack) => {
                self.counters.attached += 1;
                Opener::Stack(stack)
            }
            // An accepted connection is in the table before its accept (the handshake's event
            // put it in the backlog), and the kernel writes the accept's stack before the
            // accept's event: a stack read between the two found the connection and is its own.
            None if self.stack_of(id).is_some_and(|s| s.process == owner_of(event)) => return,
            None => Opener::Wanted,
        };
        self.set(id, opener);
    }

    /// Connection `id`'s captured stack.
    fn stack_of(&self, id: u64) -> Option<&Stack> {
        match self.by_connection.get(&id) {
            Some(Opener::Stack(stack)) => self.stacks.get(stack),
            _ => None,
        }
    }

    fn set(&mut self, id: u64, opener: Opener) {
        if let Some(Opener::Stack(old)) = self.by_connection.insert(id, opener) {
            self.release_stack(old);
        }
    }

    fn forget_connection(&mut self, id: u64) {
        if let Some(Opener::Stack(stack)) = self.by_connection.remove(&id) {
            self.release_stack(stack);
        }
        if let Some(LastRequest { stack: Some(stack), .. }) = self.last_request.remove(&id) {
            self.release_stack(stack);
        }
    }

    /// The id of `frames` for `process`, with one more use counted.
    fn intern(&mut self, process: ProcessKey, frames: &[u64], kind: StackKind) -> StackId {
        let hash = {
            let mut hasher = rustc_hash::FxBuildHasher.build_hasher();
            frames.hash(&mut hasher);
            kind.hash(&mut hasher);
            hasher.finish()
        };
        let candidates = self.by_content.entry((process, hash)).or_default();
        for id in candidates.iter() {
            if let Some(stack) = self.stacks.get_mut(id)
                && *stack.frames == *frames
                && stack.kind == kind
            {
                stack.connections += 1;
                return *id;
            }
        }
        let id = StackId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        candidates.push(id);
        self.stacks
            .insert(id, Stack { process, frames: frames.into(), kind, connections: 1, hash });
        id
    }

    fn release_stack(&mut self, id: StackId) {
        let Entry::Occupied(mut entry) = self.stacks.entry(id) else { return };
        let stack = entry.get_mut();
        stack.connections = stack.connections.saturating_sub(1);
        if stack.connections > 0 {
            return;
        }
        let stack = entry.remove();
        let key = (stack.process, stack.hash);
        if let Some(ids) = self.by_content.get_mut(&key) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_content.remove(&key);
            }
        }
    }
}

/// The process an event names (meaningful only in its owner's context).
fn owner_of(event: &ConnEvent) -> ProcessKey {
    ProcessKey::new(event.tgid, event.start_time_ns)
}

/// Removes the stacks of `waiting` received longer than [`PENDING_GRACE_NS`] before `now_ns`.
fn take_expired<K, V: Copy>(waiting: &mut Map<K, (V, u64)>, now_ns: u64) -> Vec<V> {
    let mut expired = Vec::new();
    waiting.retain(|_, (value, at)| {
        let keep = now_ns.saturating_sub(*at) <= PENDING_GRACE_NS;
        if !keep {
            expired.push(*value);
        }
        keep
    });
    expired
}

#[cfg(test)]
mod tests;
