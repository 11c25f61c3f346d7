//! The answer of each request, as the daemon serialises it and the CLI reads it back. These are
//! the API's contract (docs/api.md): a field never changes meaning without a bump of
//! [`super::protocol::API_VERSION`]. Types of the stages the answers carry (the table's
//! snapshots, the detector's evidence) are re-exported here so that clients need only `api`.
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::{
    containers::{Container, Runtime, views::GroupRow},
    detect::{ConnBrief, Evidence, RemoteCount},
    health::{ConnHealth, HealthBrief},
    stacks::groups::{AlertStacks, NoStack, RequestGroups, StackGroup, Unstacked},
    table::{ConnSnapshot, ProcessSnapshot, StateCounts},
};

/// One `tracer top` row: the table's numbers plus what the leak detector says.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TopRow {
    #[serde(flatten)]
    pub process: ProcessSnapshot,
    /// The container it runs in (from its cgroup); `null` for a host process, or while its
    /// cgroup is not resolved.
    #[serde(default)]
    pub container: Option<Container>,
    /// Net change of the open count's floor over the leak detector's window (connections); while
    /// the process's first window is still filling, over its samples so far (`growth_partial`).
    pub growth: i64,
    /// `growth` covers less than a window: the process is newer than the leak window, or the
    /// daemon is.
    #[serde(default)]
    pub growth_partial: bool,
    /// Age of its oldest open connection, seconds (0 when it has none).
    pub oldest_age_seconds: u64,
    /// Open connections with no data sent or received for longer than `--idle-after`, at the
    /// latest leak evaluation's sock_diag dump.
    #[serde(default)]
    pub idle: u32,
    /// Open connections holding unread data with no read progress for longer than
    /// `--unread-after`, at the latest leak evaluation's dump (docs/leak-detection.md).
    #[serde(default)]
    pub unread: u32,
    /// Leak rules alerting for this process now, by name, sorted.
    #[schemars(extend("items" = {"type": "string", "enum": rule_names()}))]
    pub alerts: Vec<String>,
    /// TIME_WAIT sockets alive at the last scan that this process caused by closing first.
    /// They are released connections, never part of `open` (unlike an open connection in
    /// state `time_wait`, counted in `states`).
    pub time_wait_caused: u32,
    /// TIME_WAIT sockets it caused since the daemon started, each counted when a scan first
    /// found it (with a leak interval under 60 s, every one is found).
    pub time_wait_caused_total: u64,
    /// Open descriptors (/proc/PID/fd) at the last scan; `null` when not read (only the most
    /// connected and the growing processes are read).
    pub fd_used: Option<u32>,
    /// Its soft RLIMIT_NOFILE (/proc/PID/limits); `null` when unlimited or not read.
    pub fd_limit: Option<u64>,
    /// Seconds until the rise of `fd_used` seen over the leak window reaches `fd_limit`;
    /// `null` when the count did not rise or there is no limit.
    pub fd_exhaustion_seconds: Option<u64>,
    /// While an alert is active: the leading function of the largest stack group behind it
    /// that names one (from the alert's evidence); `null` otherwise, or when no stack of it is
    /// named.
    #[serde(default)]
    pub leading_function: Option<String>,
}

/// `tracer top`: alerting processes first, then by open connections.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TopReport {
    /// One row per process the table knows (alive, or exited within the grace period), at most
    /// `limit` of them.
    pub processes: Vec<TopRow>,
    /// Open connections no process is counted for: waiting in a listener's backlog, or
    /// accepted unseen.
    pub unattributed: u64,
    /// A table limit refused connections or processes since the daemon started (`tracer run
    /// --max-connections`, `--max-processes`): rows may be missing and counts are lower bounds
    /// (exactly which processes lost connections: their `over_limit`).
    #[serde(default)]
    pub over_limit: bool,
}

/// One `tracer top --by remote` row: the open connections to one remote endpoint.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RemoteRow {
    /// The remote endpoint, `ip:port` (IPv6 as `[ip]:port`).
    pub remote: String,
    /// Open connections to it, over every process.
    pub open: u32,
    /// Pids holding connections to it (at most 8 listed), most connections first; then pids
    /// holding only ephemeral ports towards it (TIME_WAIT they caused).
    pub pids: Vec<u32>,
    /// Ephemeral ports in use towards it at the last scan (connecting, open, and TIME_WAIT
    /// unless `tcp_tw_reuse` frees them for this destination), for its most pressed local
    /// address; `null` when none.
    pub ports_used: Option<u32>,
    /// The size of `ip_local_port_range` of its namespace; `null` with `ports_used`.
    pub ports_available: Option<u32>,
}

/// `tracer top --by container` and `--by pod`: processes grouped by their container (or pod),
/// host processes (and those whose cgroup is not resolved) together as `host`; alerting groups
/// first, then by open connections, then by name.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct GroupReport {
    /// At most `limit` rows.
    pub groups: Vec<GroupRow>,
    /// Open connections no process is counted for (as in `top`).
    pub unattributed: u64,
}

/// `tracer top --by remote`: remote endpoints by open connections, most first (then by
/// endpoint).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RemoteReport {
    /// At most `limit` rows; only attributed open connections count.
    pub remotes: Vec<RemoteRow>,
    /// Open connections no process is counted for (as in `top`).
    pub unattributed: u64,
}

/// `tracer top --ages PID`: open connections by age (not cumulative: each bucket counts the
/// connections older than the previous bound and at most this one).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AgesReport {
    /// The process asked for (its most recent incarnation, if the pid was reused).
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Its open connections now.
    pub open: u32,
    /// `[upper bound, count]` pairs: the open connections whose age in seconds is at most the
    /// bound and above the previous one; bounds increase (10, 60, 300, 1800, 3600, 21600, 86400,
    /// as the `age_le` labels of `/metrics`) and the last is `null` (older than every bound).
    pub buckets: Vec<(Option<u64>, u32)>,
}

/// One alert as `tracer leaks` shows it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AlertView {
    /// The process it is about.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Its container, as resolved when the alert was raised (or later, while it was active);
    /// `null` for a host process.
    #[serde(default)]
    pub container: Option<Container>,
    /// The rule that raised it (docs/leak-detection.md).
    #[schemars(extend("enum" = rule_names()))]
    pub rule: String,
    /// When it raised: RFC 3339 UTC time, to the millisecond (`2026-11-24T04:07:00.123Z`).
    pub since: String,
    /// How long ago it raised, seconds.
    pub since_seconds: u64,
    /// The process's open connections when it raised.
    pub open: u32,
    /// What the detector saw when it raised.
    pub evidence: Evidence,
    /// Resolved alerts only (absent from active ones): how long ago it resolved, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub resolved_seconds_ago: Option<u64>,
}

/// `tracer leaks`: active alerts, and those resolved in the last hour.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct LeaksReport {
    /// Alerts raised and not resolved, longest-standing first.
    pub active: Vec<AlertView>,
    /// Alerts resolved in the last hour.
    pub resolved: Vec<AlertView>,
}

/// `tracer conns`: open and connecting connections, with the request's filters applied.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ConnsReport {
    /// Matching connections, oldest tracked first (by `id`).
    pub connections: Vec<ConnRow>,
    /// The host's network namespace (init's, `/proc/1/ns/net`; the daemon's own when init's is
    /// not readable), to tell connections in containers' namespaces apart; `null` when neither
    /// can be read.
    #[serde(default)]
    pub host_netns: Option<u32>,
}

/// One `tracer conns` row: the table's connection and its health, from a sock_diag dump made
/// for the answer.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ConnRow {
    #[serde(flatten)]
    pub conn: ConnSnapshot,
    #[serde(flatten)]
    pub health: ConnHealth,
    /// Its owner's container; `null` for a host process or an unattributed connection.
    #[serde(default)]
    pub container: Option<Container>,
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

/// The filters of a `conns` request, checked as the daemon applies them: the remote parsed, an
/// unknown state or an empty placement filter refused.
pub fn conns_filter(
    remote: Option<&str>,
    state: Option<&str>,
    placement: &crate::containers::views::PlacementFilter,
) -> Result<Option<RemoteFilter>, String> {
    placement.validate()?;
    let remote = remote.map(str::parse::<RemoteFilter>).transpose()?;
    if let Some(state) = state
        && !STATE_NAMES.contains(&state)
    {
        return Err(format!("unknown state {state:?}; one of: {}", STATE_NAMES.join(", ")));
    }
    Ok(remote)
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

/// `tracer status`: the daemon's probe mode, event and loss counters, and table size.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct StatusReport {
    /// The daemon's release (`tracer --version`).
    pub version: String,
    /// The API version it speaks (the envelopes' `version`).
    pub api_version: u32,
    /// The probe mode in use.
    #[schemars(extend("enum" = probe_mode_names()))]
    pub probe_mode: String,
    /// Why this mode (and why not better ones), in words.
    pub probe_mode_reason: String,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// Time since the daemon started, seconds.
    pub uptime_seconds: u64,
    /// Events received from the kernel since start.
    pub events_total: u64,
    /// Events received since start, by kind (every kind is listed, 0 included).
    #[schemars(extend("propertyNames" = {"enum": event_kind_names()}))]
    pub events_by_kind: std::collections::BTreeMap<String, u64>,
    /// Events the kernel programs produced since start: received, plus those lost to a full
    /// ring (`ringbuf_full`), plus those still in the ring.
    pub events_emitted: u64,
    /// Events lost since start: the sum of `events_lost_by_reason`.
    pub events_lost: u64,
    /// Events lost since start, by reason (every reason is listed, 0 included): the ring was
    /// full, an accept could not be resolved to its socket, the map of reset-but-held sockets
    /// was full, a record was malformed.
    #[schemars(extend("propertyNames" = {"enum": loss_reason_names()}))]
    pub events_lost_by_reason: std::collections::BTreeMap<String, u64>,
    /// Sockets in the table now, in any phase (connecting, in a backlog, open, failed but
    /// held).
    pub tracked_connections: u64,
    /// Open connections no process is counted for (as in `top`).
    pub unattributed: u64,
    /// Processes in the table now (alive, or exited within the grace period).
    pub processes: u64,
    /// Releases of sockets the table never knew (opened before the daemon started), since
    /// start.
    pub unmatched_releases: u64,
    /// State changes (or failed connects) of sockets the table never knew, since start.
    pub unknown_socket_events: u64,
    /// New lifecycles on a socket whose previous release was never seen, since start.
    pub stale_replaced: u64,
    /// Reconcile scans compared with the table, since start.
    #[serde(default)]
    pub reconciles: u64,
    /// Differences with the kernel's view confirmed by two scans and corrected (lost events),
    /// since start.
    pub reconcile_corrections: u64,
    /// Leak rule evaluations done, since start (one per `--leak-interval`).
    #[serde(default)]
    pub leak_evaluations: u64,
    /// Connections handed to the process that really holds them (fork, passed descriptors),
    /// since start.
    pub holder_changes: u64,
    /// Where /metrics is served (`ip:port`), or `null` when it is off.
    pub metrics_addr: Option<String>,
    /// /metrics is served over TLS (`--web-config`).
    #[serde(default)]
    pub metrics_tls: bool,
    /// /metrics asks for a user and password (`--web-config`).
    #[serde(default)]
    pub metrics_basic_auth: bool,
    /// kprobe mode: each probe's hits and the kernel's count of misses (empty in other modes).
    #[serde(default)]
    pub kprobes: Vec<KprobeStatus>,
    /// Every loaded kernel program with the runs the kernel skipped because that program was
    /// already running on the CPU (an interrupt's softirq landing on it): events never
    /// reported, so never in `events_lost`. 0 before Linux 5.12, which does not count them.
    /// Where tracefs allows, one more entry, `inet_sock_set_state:never_run`: state changes
    /// tracefs recorded that the kernel ran no program for and did not count as skipped
    /// (docs/semantics.md).
    #[serde(default)]
    pub program_misses: Vec<ProgramMissesStatus>,
    /// The sum of `program_misses`' counts.
    #[serde(default)]
    pub program_misses_total: u64,
    /// Outbound connections counted as opened without their handshake-completion event (a
    /// kernel-side miss), because a later event showed them past it, since start.
    #[serde(default)]
    pub established_inferred: u64,
    /// Size of the ring buffer, bytes (`--ring-bytes`).
    #[serde(default)]
    pub ring_bytes: u64,
    /// The ring's high-water fill, bytes: the fullest a drain found it, or `ring_bytes` once
    /// events were lost to a full ring.
    #[serde(default)]
    pub ring_high_water_bytes: u64,
    /// Opener stacks.
    #[serde(default)]
    pub stacks: StacksStatus,
    /// Go HTTP request probing.
    #[serde(default)]
    pub go_requests: GoRequestsStatus,
    /// `tracer trace` streams.
    #[serde(default)]
    pub trace: TraceStatus,
    /// Clients of the API socket.
    #[serde(default)]
    pub api: ApiStatus,
    /// What the daemon runs with (docs/security.md); with `--privsep on`, the privileged part
    /// (the monitor).
    #[serde(default)]
    pub privileges: PrivilegesStatus,
    /// The part that serves API and metrics clients, when it is a process of its own
    /// (`--privsep on`, docs/security.md "Two processes").
    #[serde(default)]
    pub clients_part: Option<PartStatus>,
    /// The part that parses other processes' binaries for the daemon, when it is a process of
    /// its own (`--privsep on`, docs/security.md "A third process").
    #[serde(default)]
    pub inspector_part: Option<PartStatus>,
    /// The process that starts inspector parts (root, with only what starting one takes:
    /// docs/security.md "A third process").
    #[serde(default)]
    pub inspector_launcher: Option<PartStatus>,
    /// Per-workload overrides (`--workload`), in the order they are tried, as
    /// `GLOB:KEY=VALUE,...`.
    #[serde(default)]
    pub workload_overrides: Vec<String>,
    /// The processes each override applies to now (first match wins), in the order of
    /// `workload_overrides`.
    #[serde(default)]
    pub workload_override_matches: Vec<OverrideMatches>,
    /// Active closes remembered now, to blame TIME_WAIT sockets on the process that closed
    /// first.
    #[serde(default)]
    pub time_wait_closes_remembered: u64,
    /// Active closes not remembered because their namespace held `tcp_max_tw_buckets` of
    /// them already, since start.
    #[serde(default)]
    pub time_wait_closes_overflowed: u64,
    /// sock_diag dumps with `tcp_info` made for pool health (one per leak evaluation, shared
    /// with a reconcile due at the same time), since start; `conns` makes its own, not counted.
    #[serde(default)]
    pub health_scans: u64,
    /// How long the latest of them took, microseconds (off the event loop; 0 before the first).
    #[serde(default)]
    pub health_scan_us: u64,
    /// Container resolution: cgroup ids resolved and missed, walks, placements held.
    #[serde(default)]
    pub containers: crate::containers::ResolverStatus,
    /// The table's memory bounds and what they refused (docs/security.md, "Memory bounds").
    #[serde(default)]
    pub limits: LimitsStatus,
}

/// The connection table's limits (`tracer run --max-connections`, `--max-processes`) and what
/// they refused. A refused connection stays untracked for its life, even once there is room.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LimitsStatus {
    /// Most sockets the table tracks at once (`--max-connections`).
    pub max_connections: u64,
    /// Most processes the table tracks at once (`--max-processes`).
    pub max_processes: u64,
    /// Connections refused because the table held `max_connections` sockets, since start.
    pub connections_over_limit: u64,
    /// Connections refused because their process was new and the table held `max_processes`
    /// processes, since start.
    pub processes_over_limit: u64,
    /// Later events (state changes, accepts, releases) of refused connections, since start:
    /// expected, and counted here instead of `unmatched_releases` or unknown sockets.
    pub over_limit_events: u64,
    /// Refused connections not released yet: live connections the table does not track.
    pub refused_open: u64,
    /// At the latest reconcile: connections the kernel had that the table lacked, left
    /// uncorrected because refused connections were still open (they may be those).
    pub untracked_at_reconcile: u64,
    /// A limit refused something since start: counts are lower bounds (the processes that lost
    /// connections say `over_limit` in `top`).
    pub over_limit: bool,
}

/// The processes one workload override applies to, for `tracer status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OverrideMatches {
    /// The override's selector, as written (`postgres`, `namespace=shop,container=api`).
    pub selector: String,
    /// Processes in the table it applies to now.
    pub processes: u32,
    /// A few of them, as `PID COMM` followed by ` in NAMESPACE/POD/CONTAINER` (or the
    /// container's name) for processes in containers.
    pub examples: Vec<String>,
}

/// One kprobe's hits and the kernel's count of its misses (kprobe mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KprobeStatus {
    /// The probed kernel function, with `:return` for a return probe.
    pub probe: String,
    /// Times the program ran, since the probes were attached.
    pub hits: u64,
    /// Calls the kernel could not hand to the program, since the probes were attached.
    pub missed: u64,
}

/// One loaded kernel program and the runs the kernel skipped (`bpf_prog_info.recursion_misses`),
/// or the state-change runs the kernel never made (counted from tracefs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProgramMissesStatus {
    /// The program's name in the kernel object, or `inet_sock_set_state:never_run`.
    pub program: String,
    /// Runs skipped because the program was already running on that CPU, since it was loaded;
    /// for `inet_sock_set_state:never_run`, tracepoint hits since start-up that no run and no
    /// counted skip answered.
    pub missed: u64,
}

/// The names of the leak rules (`rule` of an alert, `alerts` of a `top` row).
fn rule_names() -> Vec<&'static str> {
    crate::detect::Rule::ALL.iter().map(|r| r.name()).collect()
}

/// The probe modes a running daemon can be in (`auto` resolves to one of them).
fn probe_mode_names() -> Vec<&'static str> {
    use crate::probes::ProbeMode;
    ProbeMode::ALL.iter().filter(|m| **m != ProbeMode::Auto).map(|m| m.name()).collect()
}

/// The keys of `events_by_kind`.
fn event_kind_names() -> Vec<&'static str> {
    tracer_common::EventKind::ALL.iter().map(|k| k.name()).collect()
}

/// The keys of `events_lost_by_reason`.
fn loss_reason_names() -> Vec<&'static str> {
    crate::pipeline::LostEvents::default().by_reason().iter().map(|(name, _)| *name).collect()
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

/// `tracer stacks PID`: one process's open connections grouped by the user-space stack that
/// opened them (connect) or received them (accept), most connections first. The groups' counts
/// plus `opened_before_capture`, `not_sampled`, `stack_missing` and `held_by_another_process`
/// equal `open`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct StacksReport {
    pub pid: u32,
    pub comm: String,
    /// Its container; `null` for a host process.
    #[serde(default)]
    pub container: Option<Container>,
    /// The process's open connections (as `top` counts them).
    pub open: u32,
    /// The capture policy in force (`--stacks`).
    pub policy: String,
    pub groups: Vec<StackGroup>,
    #[serde(flatten)]
    pub unstacked: Unstacked,
    /// A probed Go HTTP client's open connections grouped by the stack of the last request
    /// sent on each (`--go-requests`); `null` when the process is not probed.
    #[serde(default)]
    pub requests: Option<RequestGroups>,
}

/// `tracer trace` streams, for `tracer status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct TraceStatus {
    /// Streams open now.
    pub subscribers: u64,
    /// Records not delivered to a stream whose reader fell behind (each stream is told its
    /// own count), since start.
    pub dropped: u64,
}

/// The daemon's privileges, for `tracer status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct PrivilegesStatus {
    /// Its effective uid.
    pub uid: u32,
    /// Its effective capabilities (`cap_bpf`, `cap_sys_admin`, ...), in the kernel's order.
    pub effective_capabilities: Vec<String>,
    /// `no_new_privs` is set: no program it could execute gains privileges (set at start).
    #[serde(default)]
    pub no_new_privs: bool,
}

/// A process apart from the privileged one (serving clients, or inspecting binaries), for
/// `tracer status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct PartStatus {
    /// Its process id (a child of the daemon).
    pub pid: u32,
    /// What it runs with: not root, no capabilities.
    pub privileges: PrivilegesStatus,
    /// It runs under its seccomp allow-list (`--seccomp on`, the default).
    #[serde(default)]
    pub seccomp: bool,
    /// Why it ended, when it has and no new part runs (the inspector part: what it is for is
    /// refused meanwhile); `null` while it runs.
    #[serde(default)]
    pub ended: Option<String>,
    /// The inspector part: how many times a new part replaced one that ended.
    #[serde(default)]
    pub restarts: u64,
    /// The inspector part: why the last one that ended did (`null` if none has).
    #[serde(default)]
    pub last_end: Option<String>,
    /// The inspector part: files it ended on while parsing them, never handed over again.
    #[serde(default)]
    pub quarantined: u64,
    /// The first 16 of them, by path, sorted.
    #[serde(default)]
    pub quarantined_files: Vec<String>,
}

/// Clients of the API socket, for `tracer status` (docs/api.md, "Limits").
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ApiStatus {
    /// Clients connected now (at most 128; this query's included).
    pub clients: u64,
    /// Clients closed to give their slot to a newer one, the idle longest first, since start.
    pub evicted: u64,
    /// Clients refused because every slot was busy being answered or streamed to, since
    /// start.
    pub refused: u64,
}

/// Go HTTP request probing (`--go-requests`), for `tracer status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct GoRequestsStatus {
    /// Which Go processes are probed (`--go-requests`).
    pub policy: String,
    /// Processes with the request probe attached now.
    pub probed_processes: u64,
    /// Wanted processes that cannot be probed (not Go, no HTTP/1 client, a Go release without
    /// offsets; the daemon's log says why), known now.
    pub refused_processes: u64,
    /// Attachments the kernel refused, since start.
    pub attach_failed: u64,
    /// Request stacks received, since start.
    pub requests: u64,
    /// Request stacks whose connection the table did not hold as the requester's, dropped,
    /// since start.
    pub requests_unmatched: u64,
    /// Requests whose stack the kernel could not send (the stack ring was full), since start:
    /// their connections' last request shows as lost.
    pub requests_lost: u64,
}

/// Opener-stack capture and symbolization, for `tracer status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct StacksStatus {
    /// The capture policy (`--stacks`).
    pub policy: String,
    /// `on` when the kernel captures stacks, `off` when it does not: the policy is `off`, or
    /// the kernel refused the capture code in this probe mode (the daemon then runs without
    /// it).
    #[serde(default)]
    pub capture: String,
    /// Why `capture` is `off`; `null` when it is on.
    #[serde(default)]
    pub capture_off_reason: Option<String>,
    /// Stacks the kernel wrote to the stack ring, since start.
    pub captured: u64,
    /// Wanted stacks that found no room in the stack ring, since start.
    pub lost_ringbuf: u64,
    /// Wanted stacks the kernel could not walk, since start.
    pub unwind_failed: u64,
    /// Captured stacks without the user registers or stack window (their C library caller
    /// cannot be recovered), since start.
    pub window_failed: u64,
    /// Captured stacks that got frames back from call-frame information (the caller a C
    /// library wrapper hides from the frame-pointer walk), since start.
    pub frames_recovered: u64,
    /// Stacks whose connection never showed up (dropped), since start.
    pub orphaned: u64,
    /// Processes that exited before their binaries could be pinned (their stacks stay
    /// `module+0xoffset` or unnamed), since start.
    #[serde(default)]
    pub exited_before_pinning: u64,
    /// Processes whose binaries the symbolizer's limits (pinned processes or files) refused to
    /// pin: their stacks stay `module+0xoffset`, since start.
    #[serde(default)]
    pub pins_refused: u64,
    /// Processes none of whose binaries could be opened for symbolization (no permission:
    /// docs/security.md lists the capabilities it takes): their stacks stay unnamed, since
    /// start.
    #[serde(default)]
    pub pins_failed: u64,
    /// Why the latest of them failed.
    #[serde(default)]
    pub last_pin_failure: Option<String>,
    /// Suspects the kernel's suspect map refused (full, or a map error): their connections
    /// were captured as sampled only, not every one, since start.
    #[serde(default)]
    pub suspects_unmarked: u64,
    /// Frames left unnamed in answers and leak evidence (no symbol, or not resolved within
    /// the deadline), since start.
    #[serde(default)]
    pub frames_unsymbolized: u64,
    /// Distinct stacks held now.
    pub distinct: u64,
    /// Processes whose binaries are pinned for symbolization.
    pub pinned_processes: u64,
    /// Binaries held open for symbolization (shared by processes that map the same file).
    pub pinned_files: u64,
    /// Estimated bytes of symbolized frames kept.
    pub symbol_cache_bytes: u64,
}
