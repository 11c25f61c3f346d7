//! The answer of each request, as the daemon serialises it and the CLI reads it back. These are
//! the API's contract (docs/api.md): a field never changes meaning without a bump of
//! [`super::protocol::API_VERSION`]. Types of the stages the answers carry (the table's
//! snapshots, the detector's evidence) are re-exported here so that clients need only `api`.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::{
    detect::{ConnBrief, Evidence, RemoteCount},
    table::{ConnSnapshot, ProcessSnapshot, StateCounts},
};

/// One `tracer top` row: the table's numbers plus what the leak detector says.
#[derive(Debug, Serialize, Deserialize)]
pub struct TopRow {
    #[serde(flatten)]
    pub process: ProcessSnapshot,
    /// Net change of the open count's floor over the detector's window.
    pub growth: i64,
    pub oldest_age_seconds: u64,
    /// Rules alerting for this process now.
    pub alerts: Vec<String>,
}

/// `tracer top`: alerting processes first, then by open connections.
#[derive(Debug, Serialize, Deserialize)]
pub struct TopReport {
    pub processes: Vec<TopRow>,
    pub unattributed: u64,
}

/// `tracer top --by remote`: open connections per remote endpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteRow {
    pub remote: String,
    pub open: u32,
    /// Pids holding connections to it (at most 8 listed), most connections first.
    pub pids: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteReport {
    pub remotes: Vec<RemoteRow>,
    pub unattributed: u64,
}

/// `tracer top --ages PID`: open connections by age (not cumulative: each bucket counts the
/// connections older than the previous bound and at most this one).
#[derive(Debug, Serialize, Deserialize)]
pub struct AgesReport {
    pub pid: u32,
    pub comm: String,
    pub open: u32,
    /// (upper bound in seconds, or null for the last open-ended bucket; count)
    pub buckets: Vec<(Option<u64>, u32)>,
}

/// One alert as `tracer leaks` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AlertView {
    pub pid: u32,
    pub comm: String,
    pub rule: String,
    /// When it raised, UTC, and how long ago.
    pub since: String,
    pub since_seconds: u64,
    pub open: u32,
    pub evidence: Evidence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_seconds_ago: Option<u64>,
}

/// `tracer leaks`: active alerts, and those resolved in the last hour.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaksReport {
    pub active: Vec<AlertView>,
    pub resolved: Vec<AlertView>,
}

/// `tracer conns`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnsReport {
    pub connections: Vec<ConnSnapshot>,
}

/// A `--remote` filter: an address, optionally with a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteFilter {
    pub ip: std::net::IpAddr,
    pub port: Option<u16>,
}

impl std::str::FromStr for RemoteFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self { ip: addr.ip(), port: Some(addr.port()) });
        }
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        bare.parse().map(|ip| Self { ip, port: None }).map_err(|_| {
            format!("invalid remote {s:?}: expected ADDR or ADDR:PORT (IPv6 as [ADDR]:PORT)")
        })
    }
}

impl RemoteFilter {
    pub fn matches(&self, remote: SocketAddr) -> bool {
        // An IPv4 filter also matches v4-mapped IPv6 peers of dual-stack sockets.
        let ip = match remote.ip() {
            std::net::IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().map_or(remote.ip(), std::net::IpAddr::V4)
            }
            v4 => v4,
        };
        (ip == self.ip || remote.ip() == self.ip) && self.port.is_none_or(|p| p == remote.port())
    }
}

pub const STATE_NAMES: [&str; 9] = [
    "connecting",
    "established",
    "close_wait",
    "fin_wait1",
    "fin_wait2",
    "closing",
    "last_ack",
    "time_wait",
    "close",
];

/// `tracer status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub api_version: u32,
    pub probe_mode: String,
    pub probe_mode_reason: String,
    pub kernel: String,
    pub uptime_seconds: u64,
    /// Events received by the daemon.
    pub events_total: u64,
    pub events_by_kind: std::collections::BTreeMap<String, u64>,
    /// Events the kernel emitted (received + lost + in flight).
    pub events_emitted: u64,
    pub events_lost: u64,
    pub events_lost_by_reason: std::collections::BTreeMap<String, u64>,
    pub tracked_connections: u64,
    pub unattributed: u64,
    pub processes: u64,
    /// Releases of sockets the table never knew (opened before the daemon started).
    pub unmatched_releases: u64,
    pub unknown_socket_events: u64,
    pub stale_replaced: u64,
    /// Reconcile scans compared with the table so far.
    #[serde(default)]
    pub reconciles: u64,
    /// Differences with the kernel's view confirmed by two scans and corrected (lost events).
    pub reconcile_corrections: u64,
    /// Leak rule evaluations done so far (one per `--leak-interval`).
    #[serde(default)]
    pub leak_evaluations: u64,
    /// Connections handed to the process that really holds them (fork, passed descriptors).
    pub holder_changes: u64,
    /// Where /metrics is served, if anywhere.
    pub metrics_addr: Option<String>,
    /// kprobe mode: each probe's hits and the kernel's count of misses (empty in other modes).
    #[serde(default)]
    pub kprobes: Vec<KprobeStatus>,
    /// Size of the ring buffer (`--ring-bytes`).
    #[serde(default)]
    pub ring_bytes: u64,
    /// The ring's high-water fill: the fullest a drain found it, or `ring_bytes` once events
    /// were lost to a full ring.
    #[serde(default)]
    pub ring_high_water_bytes: u64,
}

/// One kprobe's hits and the kernel's count of its misses (kprobe mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KprobeStatus {
    /// The probed kernel function, with `:return` for a return probe.
    pub probe: String,
    pub hits: u64,
    /// Calls the kernel could not hand to the program.
    pub missed: u64,
}

/// The state users filter and read by: `connecting` for SYN_SENT, else the TCP state name.
pub fn conn_state_label(phase: crate::table::Phase, state: &'static str) -> &'static str {
    if phase == crate::table::Phase::Connecting { "connecting" } else { state }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_filter_accepts_the_documented_forms() {
        let f: RemoteFilter = "127.0.0.1:80".parse().expect("v4 with port");
        assert!(f.matches("127.0.0.1:80".parse().expect("addr")));
        assert!(!f.matches("127.0.0.1:81".parse().expect("addr")));
        let f: RemoteFilter = "10.0.0.1".parse().expect("v4");
        assert!(f.matches("10.0.0.1:5".parse().expect("addr")));
        assert!(f.matches("[::ffff:10.0.0.1]:5".parse().expect("mapped")));
        let f: RemoteFilter = "[::1]:6379".parse().expect("v6 with port");
        assert!(f.matches("[::1]:6379".parse().expect("addr")));
        let f: RemoteFilter = "[::1]".parse().expect("bracketed v6");
        assert!(f.matches("[::1]:1".parse().expect("addr")));
        assert!("nope".parse::<RemoteFilter>().unwrap_err().contains("ADDR:PORT"));
    }
}
