//! `tracer trace`: the live stream of connection lifecycle events, derived from the table's
//! transitions (a connection became open, was closed, a connect failed, changed state) and the leak
//! detector's alerts, never from raw kernel records (the function-probe modes report an
//! accept twice; the table applies it once). The one definition of a trace record, its filter
//! and its text line; the daemon's subscribers are in `daemon/trace.rs`.
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    containers::{Container, views::PlacementFilter},
    table::{ClosedFirst, Direction},
};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A connection became open: ESTABLISHED for a connect, the accept for an inbound one.
    Open,
    /// Its owner released an open connection.
    Close,
    /// An outbound connect ended before ESTABLISHED.
    ConnectFailed,
    /// An owned connection changed TCP state (with `--states` only).
    StateChange,
    /// A leak alert raised.
    AlertRaised,
    /// A leak alert resolved.
    AlertResolved,
}

impl TraceKind {
    fn word(self) -> &'static str {
        match self {
            TraceKind::Open => "open",
            TraceKind::Close => "close",
            TraceKind::ConnectFailed => "connect_failed",
            TraceKind::StateChange => "state_change",
            TraceKind::AlertRaised => "alert_raised",
            TraceKind::AlertResolved => "alert_resolved",
        }
    }
}

/// One line of `tracer trace`: the text view's columns, named the same in `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TraceRecord {
    /// When it happened (UTC, milliseconds).
    pub time: String,
    /// What happened.
    pub kind: TraceKind,
    /// The owning process (the one an alert is about).
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Where the process runs, as `top` shows it: namespace, pod and container joined by
    /// slashes for Kubernetes, a container's name, or `host`.
    pub placement: String,
    /// `outbound` (connected) or `inbound` (accepted); `null` for alerts.
    pub direction: Option<Direction>,
    /// `null` for alerts.
    pub local: Option<SocketAddr>,
    /// `null` for alerts.
    pub remote: Option<SocketAddr>,
    /// How long the connection was open, seconds (`close` only; a lower bound for a
    /// connection older than the daemon).
    pub lifetime_seconds: Option<f64>,
    /// Bytes received from the peer until the release (`close` only; the kernel's
    /// `tcpi_bytes_received`, which counts a FIN received as one, as `ss` shows it).
    pub bytes_received: Option<u64>,
    /// Bytes the peer acknowledged until the release (`close` only; `tcpi_bytes_acked`, which
    /// counts the SYN as one, as `ss` shows it; data still unacknowledged at the release is not
    /// in it).
    pub bytes_acked: Option<u64>,
    /// Which side began closing it (`close` only): `local` (this process), `remote` (the
    /// peer's FIN came first) or `reset`; `null` when its states did not show it.
    pub closed_first: Option<ClosedFirst>,
    /// The state it left (`state_change` only), named as `tracer conns` names states.
    pub old_state: Option<String>,
    /// The state it entered (`state_change` only).
    pub new_state: Option<String>,
    /// Why a connect failed (`connect_failed` only): the kernel's errno (`ECONNREFUSED`,
    /// `ETIMEDOUT`, `EHOSTUNREACH`, ...), or `closed_by_owner` when the process released the
    /// socket before the handshake completed; `null` when the kernel gave none.
    pub reason: Option<String>,
    /// The leak rule (alerts only).
    pub rule: Option<String>,
}

impl TraceRecord {
    /// A record of `kind` with only the common fields to fill (every optional one `null`).
    pub fn new(kind: TraceKind, pid: u32, comm: String, placement: String) -> Self {
        Self {
            time: now_text(),
            kind,
            pid,
            comm,
            placement,
            direction: None,
            local: None,
            remote: None,
            lifetime_seconds: None,
            bytes_received: None,
            bytes_acked: None,
            closed_first: None,
            old_state: None,
            new_state: None,
            reason: None,
            rule: None,
        }
    }
}

/// What a subscriber missed: its queue was full (it read too slowly), counted since its last
/// line. Sent in the stream as soon as there is room again, never silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Dropped {
    pub dropped: u64,
}

/// A line of the stream: a record, or what was dropped before it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TraceLine {
    Record(Box<TraceRecord>),
    Dropped(Dropped),
}

/// Which records a subscriber gets (every field set must match).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceFilter {
    #[serde(default)]
    pub pid: Option<u32>,
    /// A glob on the command name (`*`, `?`).
    #[serde(default)]
    pub comm: Option<String>,
    /// Either side's port.
    #[serde(default)]
    pub port: Option<u16>,
    /// `ADDR`, `ADDR/PREFIX`, `ADDR:PORT` or `[V6]/PREFIX:PORT`: the remote endpoint.
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(default)]
    pub direction: Option<Direction>,
    /// Closes of connections open at least this long (other kinds pass).
    #[serde(default)]
    pub min_lifetime_ms: Option<u64>,
    /// State changes of owned connections too (`--states`); off, none are sent.
    #[serde(default)]
    pub states: bool,
    #[serde(default, flatten)]
    pub placement: PlacementFilter,
}

/// A parsed `--remote`: an address or network, and maybe a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteMatch {
    network: std::net::IpAddr,
    prefix: u8,
    port: Option<u16>,
}

impl RemoteMatch {
    /// `10.0.0.5`, `10.0.0.0/8`, `10.0.0.5:5432`, `10.0.0.0/8:5432`, `[::1]:80`, `[fd00::]/8:80`,
    /// `fd00::/8`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?}: expected ADDR, ADDR/PREFIX, ADDR:PORT or ADDR/PREFIX:PORT (IPv6 in \
                 brackets with a port: [::1]:80)"
            )
        };
        let (address, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            let (prefix, port) = match after.split_once(':') {
                Some((p, port)) => (p, Some(port.parse::<u16>().map_err(|_| bad())?)),
                None => (after, None),
            };
            (format!("{inside}{prefix}"), port)
        } else if text.matches(':').count() == 1 {
            let (a, port) = text.split_once(':').ok_or_else(bad)?;
            (a.to_owned(), Some(port.parse::<u16>().map_err(|_| bad())?))
        } else {
            (text.to_owned(), None)
        };
        let (addr, prefix) = match address.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (address.as_str(), None),
        };
        let network: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { network, prefix, port })
    }

    pub fn matches(&self, remote: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != remote.port()) {
            return false;
        }
        // A v4-mapped v6 peer matches a v4 network.
        let ip = match remote.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(remote.ip(), Into::into),
            v4 => v4,
        };
        let bits = |ip: std::net::IpAddr| -> Option<u128> {
            match (ip, self.network) {
                (std::net::IpAddr::V4(a), std::net::IpAddr::V4(_)) => {
                    Some(u128::from(u32::from(a)) << 96)
                }
                (std::net::IpAddr::V6(a), std::net::IpAddr::V6(_)) => Some(u128::from(a)),
                _ => None,
            }
        };
        let (Some(have), Some(want)) = (bits(ip), bits(self.network)) else {
            return false;
        };
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        have & mask == want & mask
    }
}

impl TraceFilter {
    /// Rejects what can never match, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(remote) = &self.remote {
            RemoteMatch::parse(remote).map_err(|e| format!("--remote {e}"))?;
        }
        self.placement.validate()
    }

    /// Whether `record`, of a process in `container`, passes.
    pub fn matches(&self, record: &TraceRecord, container: Option<&Container>) -> bool {
        let is_alert = matches!(record.kind, TraceKind::AlertRaised | TraceKind::AlertResolved);
        (self.states || record.kind != TraceKind::StateChange)
            && self.pid.is_none_or(|p| p == record.pid)
            && self.comm.as_deref().is_none_or(|g| {
                crate::detect::overrides::glob_match(g.as_bytes(), record.comm.as_bytes())
            })
            && self.port.is_none_or(|p| {
                !is_alert
                    && (record.local.is_some_and(|a| a.port() == p)
                        || record.remote.is_some_and(|a| a.port() == p))
            })
            && self.remote.as_deref().is_none_or(|r| {
                let Ok(m) = RemoteMatch::parse(r) else { return false };
                record.remote.is_some_and(|a| m.matches(a))
            })
            && self.direction.is_none_or(|d| record.direction == Some(d))
            && self.min_lifetime_ms.is_none_or(|min| {
                record.kind != TraceKind::Close
                    || record.lifetime_seconds.is_some_and(|s| s * 1e3 >= min as f64)
            })
            && self.placement.matches(container)
    }
}

/// The text view's columns: the JSON fields' names, upper-cased, in the same order.
const COLUMNS: [&str; 16] = [
    "TIME",
    "KIND",
    "PID",
    "COMM",
    "PLACEMENT",
    "DIRECTION",
    "LOCAL",
    "REMOTE",
    "LIFETIME_SECONDS",
    "BYTES_RECEIVED",
    "BYTES_ACKED",
    "CLOSED_FIRST",
    "OLD_STATE",
    "NEW_STATE",
    "REASON",
    "RULE",
];

/// One row: widths fit IPv6 endpoints (`[8 groups]:port`, 47 characters), every kind, state
/// and errno name, and a clipped placement.
fn row(cells: [&str; 16]) -> String {
    let [
        time,
        kind,
        pid,
        comm,
        placement,
        direction,
        local,
        remote,
        lifetime,
        received,
        acked,
        closed_first,
        old_state,
        new_state,
        reason,
        rule,
    ] = cells;
    format!(
        "{time:<24} {kind:<14} {pid:>7} {comm:<15} {placement:<22} {direction:<9} {local:<47} \
         {remote:<47} {lifetime:>16} {received:>14} {acked:>14} {closed_first:<12} {old_state:<11} {new_state:<11} \
         {reason:<15} {rule}"
    )
}

/// The text view's header.
pub fn header() -> String {
    row(COLUMNS)
}

/// One record as a text line (a null shows as `-`), or what was dropped.
pub fn text_line(line: &TraceLine) -> String {
    let record = match line {
        TraceLine::Dropped(d) => {
            return format!("--- {} records dropped: this reader fell behind ---", d.dropped);
        }
        TraceLine::Record(r) => r,
    };
    let endpoint = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let direction = match record.direction {
        Some(Direction::Outbound) => "outbound",
        Some(Direction::Inbound) => "inbound",
        None => "-",
    };
    let lifetime = record.lifetime_seconds.map_or_else(|| "-".to_owned(), |s| format!("{s:.3}"));
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let comm: String = record.comm.chars().take(15).collect();
    let placement = crate::containers::views::clip_middle(&record.placement, 22);
    row([
        &record.time,
        record.kind.word(),
        &record.pid.to_string(),
        &comm,
        &placement,
        direction,
        &endpoint(record.local),
        &endpoint(record.remote),
        &lifetime,
        &count(record.bytes_received),
        &count(record.bytes_acked),
        record.closed_first.map_or("-", ClosedFirst::name),
        &or_dash(&record.old_state),
        &or_dash(&record.new_state),
        &or_dash(&record.reason),
        record.rule.as_deref().unwrap_or("-"),
    ])
}

/// Why a connect failed: `error` is the event's errno (0: the kernel set none), `released`
/// whether the failure was the owner's release of the still-connecting socket.
pub fn connect_failure_reason(error: u8, released: bool) -> Option<String> {
    if released {
        return Some("closed_by_owner".to_owned());
    }
    let name = match i32::from(error) {
        0 => return None,
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENETDOWN => "ENETDOWN",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPROTO => "EPROTO",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        other => return Some(format!("errno {other}")),
    };
    Some(name.to_owned())
}

/// CLOCK_REALTIME now, as `time` fields show it.
pub fn now_text() -> String {
    crate::logging::rfc3339(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests;
