//! `tracer trace` subscribers: each gets the records its filter selects through a bounded
//! queue. A full queue never makes the event loop wait: the record is counted as dropped for
//! that subscriber and the count goes into its stream before the next record it gets.
use std::net::SocketAddr;

use tokio::sync::mpsc::{Sender, error::TrySendError};
use tracer_common::ConnEvent;

use crate::{
    containers::{Container, Directory, views::cell},
    detect::{Alert, Change},
    table::{Applied, ConnectionTable, ProcessKey, SocketKey},
    trace::{Dropped, TraceFilter, TraceKind, TraceLine, TraceRecord, now_text},
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

    /// The record of a table transition: opens, closes and failed connects of known owners.
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
        let (kind, owner, direction, lifetime_ns) = match *applied {
            Applied::Opened { owner: Some(owner), direction, .. } => {
                (TraceKind::Open, owner, Some(direction), None)
            }
            Applied::Closed { owner, direction, lifetime_ns, .. } => {
                (TraceKind::Close, owner, Some(direction), Some(lifetime_ns))
            }
            Applied::ConnectFailed { owner: Some(owner), .. } => {
                (TraceKind::ConnectFailed, owner, Some(crate::table::Direction::Outbound), None)
            }
            _ => return,
        };
        let endpoints = match kind {
            // Open: the table's own endpoints for the connection.
            TraceKind::Open => table
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
        let record = TraceRecord {
            time: now_text(),
            kind,
            pid: owner.pid,
            comm,
            placement: cell(container.as_ref()),
            direction,
            local: endpoints.map(|e| e.0),
            remote: endpoints.map(|e| e.1),
            lifetime_seconds: lifetime_ns.map(|ns| ns as f64 / 1e9),
            rule: None,
        };
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
        let record = TraceRecord {
            time: now_text(),
            kind,
            pid: alert.pid,
            comm: alert.comm.clone(),
            placement: cell(alert.container.as_ref()),
            direction: None,
            local: None,
            remote: None,
            lifetime_seconds: None,
            rule: Some(alert.rule.name().to_owned()),
        };
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
            match s.tx.try_send(TraceLine::Record(record.clone())) {
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
