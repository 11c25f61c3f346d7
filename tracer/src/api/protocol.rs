//! Request and response envelopes. Payloads are the table's snapshot types (see `crate::table`)
//! and [`StatusReport`].
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to requests or payloads.
pub const API_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status {},
    Top {
        limit: Option<usize>,
        #[serde(default)]
        by: TopBy,
    },
    Conns {
        pid: Option<u32>,
        remote: Option<String>,
        state: Option<String>,
    },
    Leaks {},
    /// The age distribution of one process's open connections.
    Ages {
        pid: u32,
    },
}

/// What `tracer top` groups open connections by.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TopBy {
    #[default]
    Process,
    Remote,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

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
    /// Differences with the kernel's view confirmed by two scans and corrected (lost events).
    pub reconcile_corrections: u64,
    /// Connections handed to the process that really holds them (fork, passed descriptors).
    pub holder_changes: u64,
    /// Where /metrics is served, if anywhere.
    pub metrics_addr: Option<String>,
    /// kprobe mode: each probe's hits and the kernel's count of misses (empty in other modes).
    #[serde(default)]
    pub kprobes: Vec<crate::probes::ProbeMisses>,
    /// Size of the ring buffer (`--ring-bytes`).
    #[serde(default)]
    pub ring_bytes: u64,
    /// The ring's high-water fill: the fullest a drain found it, or `ring_bytes` once events
    /// were lost to a full ring.
    #[serde(default)]
    pub ring_high_water_bytes: u64,
}
