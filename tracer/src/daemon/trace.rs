//! `tracer trace` subscribers: each gets the records its filter selects through a bounded
//! queue. A full queue never makes the event loop wait: the record is counted as dropped for
//! that subscriber and the count goes into its stream before the next record it gets.
use std::net::SocketAddr;

use tokio::sync::mpsc::{Sender, error::TrySendError};
use tracer_common::{ConnEvent, EventKind};

use crate::{
    containers::{Container, Directory, views::cell},
    detect::{Alert, Change},
    events::state_name,
    table::{Applied, ConnectionTable, ProcessKey, SocketKey},
    trace::{Dropped, TraceFilter, TraceKind, TraceLine, TraceRecord, connect_failure_reason},
};

struct Subscriber {
    filter: TraceFilter,
    tx: Sender<TraceLine>,
    /// Records it missed since its last line.
    dropped: u64,
}

#[derive(Default)]
pub(super) struct Subscribers {
    list: Vec<Subscriber>,
    /// Records dropped for slow subscribers, since start.
    dropped_total: u64,
}

impl Subscribers {
    pub fn add(&mut self, filter: TraceFilter, tx: Sender<TraceLine>) {
        self.list.push(Subscriber { filter, tx, dropped: 0 });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Streams open now (a reader that went away is pruned at the next record; not counted).
    pub fn count(&self) -> usize {
        self.list.iter().filter(|s| !s.tx.is_closed()).count()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// The endpoints of `event`'s connection before the table applies it (a released
    /// connection leaves the table), when anyone listens.
    pub fn endpoints_before(
        &self,
        event: &ConnEvent,
        table: &ConnectionTable,
    ) -> Option<(SocketAddr, SocketAddr)> {
        if self.is_empty() {
            return None;
        }
        table.connection(SocketKey::of(event)).map(|v| (v.conn.local(), v.conn.remote()))
    }

    /// The record of a table transition: opens, closes, failed connects and (for subscribers
    /// that asked) state changes of known owners.
    pub fn on_applied(
        &mut self,
        event: &ConnEvent,
        applied: &Applied,
        before: Option<(SocketAddr, SocketAddr)>,
        table: &ConnectionTable,
        containers: &Directory,
    ) {
        if self.is_empty() {
            return;
        }
        // Made only in the arms that publish: the rest of the events cost no record.
        let blank = |kind| TraceRecord::new(kind, 0, String::new(), String::new());
        let (owner, mut record) = match *applied {
            Applied::Opened { owner: Some(owner), direction, .. } => {
                let mut record = blank(TraceKind::Open);
                record.direction = Some(direction);
                (owner, record)
            }
            Applied::Closed { owner, direction, lifetime_ns, closed_first, .. } => {
                let mut record = blank(TraceKind::Close);
                record.direction = Some(direction);
                record.lifetime_seconds = Some(lifetime_ns as f64 / 1e9);
                record.closed_first = closed_first;
                record.bytes_received = Some(event.bytes_received);
                record.bytes_acked = Some(event.bytes_acked);
                (owner, record)
            }
            Applied::ConnectFailed { owner: Some(owner), .. } => {
                let mut record = blank(TraceKind::ConnectFailed);
                record.direction = Some(crate::table::Direction::Outbound);
                let released = event.kind() == Some(EventKind::Release);
                record.reason = connect_failure_reason(event.error, released);
                (owner, record)
            }
            Applied::StateChanged { old_state, new_state, .. } => {
                // Built only when someone asked: state changes are most of the events.
                if !self.list.iter().any(|s| s.filter.states) {
                    return;
                }
                let Some(view) = table.connection(SocketKey::of(event)) else { return };
                let Some(owner) = view.conn.owner() else { return };
                let mut record = blank(TraceKind::StateChange);
                record.direction = Some(view.conn.direction);
                record.old_state = Some(state_name(old_state).to_owned());
                record.new_state = Some(state_name(new_state).to_owned());
                (owner, record)
            }
            _ => return,
        };
        let endpoints = match record.kind {
            // Open and state changes: the table's own endpoints for the connection.
            TraceKind::Open | TraceKind::StateChange => table
                .connection(SocketKey::of(event))
                .map(|v| (v.conn.local(), v.conn.remote()))
                .or(before),
            _ => before.or_else(|| {
                Some((
                    crate::events::local_endpoint(&event.tuple),
                    crate::events::remote_endpoint(&event.tuple),
                ))
            }),
        };
        let (comm, container) = identity(owner, table, containers);
        record.pid = owner.pid;
        record.comm = comm;
        record.placement = cell(container.as_ref());
        record.local = endpoints.map(|e| e.0);
        record.remote = endpoints.map(|e| e.1);
        self.publish(record, container.as_ref());
    }

    /// The record of an alert raised or resolved.
    pub fn on_alert(&mut self, change: &Change) {
        if self.is_empty() {
            return;
        }
        let (kind, alert): (TraceKind, &Alert) = match change {
            Change::Raised(a) => (TraceKind::AlertRaised, a),
            Change::Resolved(a) => (TraceKind::AlertResolved, a),
        };
        let mut record =
            TraceRecord::new(kind, alert.pid, alert.comm.clone(), cell(alert.container.as_ref()));
        record.rule = Some(alert.rule.name().to_owned());
        self.publish(record, alert.container.as_ref());
    }

    fn publish(&mut self, record: TraceRecord, container: Option<&Container>) {
        let mut dropped_now = 0;
        self.list.retain_mut(|s| {
            if !s.filter.matches(&record, container) {
                return !s.tx.is_closed();
            }
            if s.dropped > 0 {
                match s.tx.try_send(TraceLine::Dropped(Dropped { dropped: s.dropped })) {
                    Ok(()) => s.dropped = 0,
                    Err(TrySendError::Full(_)) => {
                        s.dropped += 1;
                        dropped_now += 1;
                        return true;
                    }
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            match s.tx.try_send(TraceLine::Record(Box::new(record.clone()))) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.dropped += 1;
                    dropped_now += 1;
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        self.dropped_total += dropped_now;
    }
}

/// A process's command name and container, as the table and the directory know them.
fn identity(
    owner: ProcessKey,
    table: &ConnectionTable,
    containers: &Directory,
) -> (String, Option<Container>) {
    match table.process(owner) {
        Some(p) => (p.comm().into_owned(), containers.container(p.cgroup_id).cloned()),
        None => (String::new(), None),
    }
}
