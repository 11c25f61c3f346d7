//! Pool health: what each tracked connection is doing, from the kernel's `tcp_info` and queues
//! (one sock_diag dump, no per-packet hooks), and per process how many connections sit idle or
//! hold data nobody reads. Pure and clock-injected: the daemon feeds it scans
//! ([`HealthScan`]) and the table; nothing here touches the kernel.
//!
//! `tcp_info` has no last-read time, so reading is inferred: a connection's *read progress* is
//! `bytes_received - unread_bytes` (what the application took out of the receive queue). A
//! connection counts as unread when data waits in its receive queue and that figure has not
//! changed across scans for longer than `unread_after`: a slow but steady reader moves it at
//! every scan and never counts. docs/leak-detection.md has the rules built on this.
use std::{collections::HashMap, net::SocketAddr, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracer_common::tcp_state;

use crate::{
    ground_truth::ExistingSocket,
    table::{ConnectionTable, Phase, ProcessKey, TupleKey},
};

/// Connections idle this long count as `idle` by default.
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(300);
/// Unread data with no read progress this long counts as `unread` by default.
pub const DEFAULT_UNREAD_AFTER: Duration = Duration::from_secs(60);

/// FxHash, as the connection table uses: at 100,000 sockets SipHash made per-process counting
/// take most of an evaluation's user-space time; the keys are addresses and cookies no peer
/// chooses freely enough to matter.
pub type Map<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Each process's pool health at one dump.
pub type PerProcess = Map<ProcessKey, ProcessHealth>;

/// How many connections the evidence of `unread` and `idle` names.
const EVIDENCE_ITEMS: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// An open connection with no data sent or received for this long is idle.
    pub idle_after_ns: u64,
    /// Unread data with no read progress for this long makes a connection unread.
    pub unread_after_ns: u64,
    /// The `idle` rule's threshold (`--idle-alert-after`); the rule is off without one.
    pub idle_alert_after_ns: Option<u64>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            idle_after_ns: crate::daemon::nanos(DEFAULT_IDLE_AFTER),
            unread_after_ns: crate::daemon::nanos(DEFAULT_UNREAD_AFTER),
            idle_alert_after_ns: None,
        }
    }
}

/// One sock_diag dump of every namespace at one clock time: every TCP socket, TIME_WAIT and
/// listeners included, so other consumers can be fed from the same dump.
#[derive(Clone, Debug, Default)]
pub struct HealthScan {
    pub at_ns: u64,
    pub sockets: Vec<ExistingSocket>,
}

impl HealthScan {
    /// The scan's sockets by address, for matching the table's connections. A TIME_WAIT
    /// socket never hides a live one with the same addresses.
    pub fn index(&self) -> Map<TupleKey, &ExistingSocket> {
        let mut by_tuple: Map<TupleKey, &ExistingSocket> =
            Map::with_capacity_and_hasher(self.sockets.len(), Default::default());
        for s in self.sockets.iter().filter(|s| s.state != tcp_state::LISTEN) {
            let key = TupleKey { netns: s.netns, local: s.local, remote: s.remote };
            let keep_old = by_tuple.get(&key).is_some_and(|old| old.state != tcp_state::TIME_WAIT);
            if !keep_old {
                by_tuple.insert(key, s);
            }
        }
        by_tuple
    }
}

/// One connection's health, as `tracer conns` shows it. Every figure is `null` when the
/// kernel gave none, with `health_unavailable` saying why; never a made-up zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnHealth {
    /// Seconds since data was last sent or received on it, whichever is later.
    pub idle_seconds: Option<u64>,
    /// Bytes received from the peer (the kernel's `tcpi_bytes_received`).
    pub bytes_received: Option<u64>,
    /// Bytes the peer acknowledged (`tcpi_bytes_acked`; as in `ss`, it counts the SYN too).
    pub bytes_acked: Option<u64>,
    /// Bytes received and not yet read by the application (receive queue, `ss` Recv-Q).
    pub unread_bytes: Option<u64>,
    /// Bytes written and not yet acknowledged by the peer (send queue, `ss` Send-Q).
    pub unsent_bytes: Option<u64>,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: Option<u32>,
    /// Why some figures are `null`; `null` when all are known.
    pub health_unavailable: Option<String>,
}

/// `health_unavailable` of a connection the dump did not list.
pub const NOT_LISTED: &str = "not listed by sock_diag: a socket reset by its peer (state close) \
     and still held, or one that closed since, is out of the kernel's socket tables";
/// `health_unavailable` when no dump could be made.
pub const SCAN_FAILED: &str = "the sock_diag dump failed (see the daemon's log)";
const NO_TCP_INFO: &str = "the kernel sent no tcp_info for it (TIME_WAIT or request socket)";

impl ConnHealth {
    /// Every figure unknown, for `reason`.
    pub fn unavailable(reason: &str) -> Self {
        Self { health_unavailable: Some(reason.to_owned()), ..Self::default() }
    }

    pub fn of(socket: &ExistingSocket) -> Self {
        let queues = Self {
            unread_bytes: Some(u64::from(socket.rqueue)),
            unsent_bytes: Some(u64::from(socket.wqueue)),
            ..Self::default()
        };
        let Some(info) = socket.info else {
            return Self { health_unavailable: Some(NO_TCP_INFO.to_owned()), ..queues };
        };
        let health = Self {
            idle_seconds: info.idle_ms().map(|ms| u64::from(ms) / 1000),
            bytes_received: info.bytes_received,
            bytes_acked: info.bytes_acked,
            rtt_us: info.rtt_us,
            ..queues
        };
        let complete = health.idle_seconds.is_some()
            && health.bytes_received.is_some()
            && health.bytes_acked.is_some()
            && health.rtt_us.is_some();
        Self {
            health_unavailable: (!complete)
                .then(|| "this kernel's tcp_info lacks some of these fields".to_owned()),
            ..health
        }
    }
}

/// Read progress of one socket, kept between scans.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// `bytes_received - unread_bytes` at the last scan.
    read: u64,
    /// Since when data has waited unread with `read` unchanged; `None` while nothing waits or
    /// the application read since the previous scan.
    stalled_since_ns: Option<u64>,
    /// The scan that last saw it (entries no scan sees are dropped).
    seen_at_ns: u64,
}

/// Per-socket read progress across scans (keyed by namespace and socket cookie, unique for
/// the boot).
#[derive(Debug, Default)]
pub struct ReadTracker {
    progress: Map<(u32, u64), Progress>,
}

impl ReadTracker {
    /// Takes in one scan: sockets whose read figure stayed put while data waited keep their
    /// stall start; sockets no longer listed are forgotten.
    pub fn observe(&mut self, scan: &HealthScan) {
        for s in &scan.sockets {
            let Some(received) = s.info.and_then(|i| i.bytes_received) else { continue };
            let read = received.saturating_sub(u64::from(s.rqueue));
            let key = (s.netns, s.cookie);
            let stalled_since_ns = match self.progress.get(&key) {
                _ if s.rqueue == 0 => None,
                // Data arrived since the last scan and nothing was read: counts from now, so data that
                // arrived just before this scan is not taken for a long stall.
                Some(p) if p.read == read => p.stalled_since_ns.or(Some(scan.at_ns)),
                // First seen with data waiting: the stall counts from this scan (a lower
                // bound: nothing tells how long it waited before).
                None => Some(scan.at_ns),
                Some(_) => None,
            };
            self.progress.insert(key, Progress { read, stalled_since_ns, seen_at_ns: scan.at_ns });
        }
        self.progress.retain(|_, p| p.seen_at_ns == scan.at_ns);
    }

    /// How long data has waited unread on this socket with no read progress, at `now_ns`.
    pub fn stalled_ns(&self, socket: &ExistingSocket, now_ns: u64) -> Option<u64> {
        let p = self.progress.get(&(socket.netns, socket.cookie))?;
        p.stalled_since_ns.map(|since| now_ns.saturating_sub(since))
    }

    pub fn len(&self) -> usize {
        self.progress.len()
    }

    pub fn is_empty(&self) -> bool {
        self.progress.is_empty()
    }
}

/// A connection named in the evidence of `unread` or `idle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthBrief {
    /// Remote endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub remote: String,
    /// Bytes waiting unread in its receive queue.
    pub unread_bytes: u64,
    /// Seconds since data was last sent or received on it.
    pub idle_seconds: u64,
    /// Seconds its read progress has not moved while data waited (0 when nothing waits).
    pub no_read_seconds: u64,
}

/// One process's pool health at one scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessHealth {
    /// Open connections idle longer than `idle_after`.
    pub idle: u32,
    /// Open connections with unread data and no read progress for longer than `unread_after`.
    pub unread: u32,
    /// Open connections idle longer than the `idle` rule's threshold (0 when it is off).
    pub idle_alerting: u32,
    /// The unread connections with the most unread bytes (a handful).
    pub unread_examples: Vec<HealthBrief>,
    /// The longest-idle connections beyond the idle rule's threshold (a handful).
    pub idle_examples: Vec<HealthBrief>,
}

fn keep_top(list: &mut Vec<HealthBrief>, item: HealthBrief, key: fn(&HealthBrief) -> u64) {
    list.push(item);
    list.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.remote.cmp(&b.remote)));
    list.truncate(EVIDENCE_ITEMS);
}

/// Per process, from the table's open connections matched with the scan by address.
pub fn per_process(
    table: &ConnectionTable,
    scan: &HealthScan,
    reads: &ReadTracker,
    settings: &HealthSettings,
) -> PerProcess {
    per_process_with(table, scan, reads, |_| settings.clone())
}

/// [`per_process`] with each process's own settings (its workload override), asked once per
/// process.
pub fn per_process_with(
    table: &ConnectionTable,
    scan: &HealthScan,
    reads: &ReadTracker,
    mut settings_of: impl FnMut(ProcessKey) -> HealthSettings,
) -> PerProcess {
    let index = scan.index();
    let now = scan.at_ns;
    let mut out = PerProcess::default();
    let mut settings_by: Map<ProcessKey, HealthSettings> = Map::default();
    for view in table.connections() {
        let (Phase::Open, Some(owner)) = (view.phase(), view.owner_key()) else { continue };
        let Some(socket) = index.get(&view.conn.tuple_key(view.netns())) else { continue };
        let Some(idle_ms) = socket.info.and_then(|i| i.idle_ms()) else { continue };
        let idle_ns = u64::from(idle_ms) * 1_000_000;
        let stalled_ns = reads.stalled_ns(socket, now).unwrap_or(0);
        let settings = settings_by.entry(owner).or_insert_with(|| settings_of(owner));
        let acc = out.entry(owner).or_default();
        let brief = || HealthBrief {
            remote: remote_text(view.remote()),
            unread_bytes: u64::from(socket.rqueue),
            idle_seconds: idle_ns / 1_000_000_000,
            no_read_seconds: stalled_ns / 1_000_000_000,
        };
        if idle_ns >= settings.idle_after_ns {
            acc.idle += 1;
        }
        if settings.idle_alert_after_ns.is_some_and(|t| idle_ns >= t) {
            acc.idle_alerting += 1;
            keep_top(&mut acc.idle_examples, brief(), |b| b.idle_seconds);
        }
        if socket.rqueue > 0 && stalled_ns >= settings.unread_after_ns.max(1) {
            acc.unread += 1;
            keep_top(&mut acc.unread_examples, brief(), |b| b.unread_bytes);
        }
    }
    out
}

fn remote_text(addr: SocketAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
mod tests;
