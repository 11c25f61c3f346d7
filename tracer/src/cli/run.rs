//! `tracer run`: the daemon. Every flag can also come from `--config FILE` (config.rs); every
//! default is the library's own constant, so `--help` and `DaemonOptions::default()` agree.
use std::{path::PathBuf, time::Duration};

use clap::Args;
use tracer::{
    containers::{
        Sources,
        names::{DEFAULT_CONTAINER_LOGS_DIR, DEFAULT_DOCKER_DIR, DEFAULT_POD_LOGS_DIR, NameDirs},
    },
    daemon::{
        self, DEFAULT_CLOSE_WAIT_AFTER, DEFAULT_DRAIN_INTERVAL, DEFAULT_HELD_CLOSED_AFTER,
        DEFAULT_LEAK_INTERVAL, DEFAULT_RECONCILE_INTERVAL, DEFAULT_SUMMARY_INTERVAL, DaemonOptions,
        LeakSettings, Serving, nanos,
    },
    detect::{DetectorConfig, WorkloadOverride, defaults as leak_defaults},
    export::{self, DEFAULT_METRICS_ADDR, WebhookUrl},
    gohttp::GoRequestPolicy,
    health::{DEFAULT_IDLE_AFTER, DEFAULT_UNREAD_AFTER, HealthSettings},
    logging::LogFormat,
    names::Switch,
    privsep::{
        self, ClientsUser, Part,
        inspector::{Fault, Inspection},
    },
    probes::{DEFAULT_WAKEUP_BYTES, LoadOptions, ProbeMode, StackOptions, StackPolicy},
    table::{
        DEFAULT_EXITED_GRACE_NS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PROCESSES,
        MAX_CONNECTIONS_CEILING, MAX_PROCESSES_CEILING, TableConfig, check_limit,
    },
};
use tracer_common::{
    DEFAULT_RING_BYTES,
    stacks::{DEFAULT_STACK_DEPTH, DEFAULT_STACK_SAMPLE, MAX_STACK_DEPTH},
};

use super::values::{Choice, Seconds, parse_positive_seconds, parse_seconds};

/// Longest `--drain-interval-ms`: a minute (events would wait that long between drains).
const MAX_DRAIN_INTERVAL_MS: u64 = 60_000;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML file of `tracer run` flags (keys are the long flag names); flags given here
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Let the members of GROUP (a name or a numeric gid) query the daemon: its API socket
    /// becomes mode 0660 owned by that group. Without it only root may (mode 0600).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Serve API and metrics clients from a process of their own, with no capabilities and
    /// running as --clients-user, so that the privileged daemon never parses a client's bytes
    /// (docs/security.md, "Two processes").
    #[arg(long, value_parser = Switch::parser(), default_value_t = Switch::On)]
    pub privsep: Switch,
    /// With --privsep on, confine the part that serves clients to the system calls a server
    /// makes (a seccomp filter; any other call kills it, and the daemon stops saying so).
    #[arg(long, value_parser = Switch::parser(), default_value_t = Switch::On)]
    pub seccomp: Switch,
    /// Who serves clients with --privsep on: a user name, or UID[:GID].
    #[arg(long, value_name = "USER", default_value = privsep::DEFAULT_CLIENTS_USER)]
    pub clients_user: String,
    /// Give up capabilities the daemon would keep after start-up, and what they serve
    /// (docs/security.md says what breaks without each): cap_dac_read_search, cap_sys_ptrace,
    /// cap_sys_admin (comma-separated, or repeated).
    #[arg(long, value_name = "CAP", value_delimiter = ',', value_parser = parse_kept_capability)]
    pub drop_capability: Vec<u32>,
    /// Probe mode: auto picks the best one this kernel loads.
    #[arg(long, value_parser = ProbeMode::parser(), default_value_t = ProbeMode::default())]
    pub probe: ProbeMode,
    /// Ring buffer size in bytes (power of two, at least 4096).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Wake the daemon each time this many more bytes of events wait (0: whenever an event
    /// arrives while it is idle). Batching wakeups cuts the per-event cost at high connection
    /// rates. Capped at a quarter of --ring-bytes.
    #[arg(long, default_value_t = DEFAULT_WAKEUP_BYTES)]
    pub wakeup_bytes: u32,
    /// Milliseconds between drains of the ring buffer when no wakeup came (1 to 60000). Every
    /// query, scrape, leak check and reconcile drains first, so this only bounds how long
    /// events may sit in the ring between them; shorter costs more daemon wakeups at low
    /// event rates.
    #[arg(
        long,
        default_value_t = DEFAULT_DRAIN_INTERVAL.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..=MAX_DRAIN_INTERVAL_MS)
    )]
    pub drain_interval_ms: u64,
    /// Seconds between one-line summaries in the log (0 disables them).
    #[arg(long, value_parser = parse_seconds, default_value_t = Seconds::of(DEFAULT_SUMMARY_INTERVAL))]
    pub summary_interval: Seconds,
    /// Seconds an exited process stays listed.
    #[arg(
        long,
        value_parser = parse_seconds,
        default_value_t = Seconds::of(Duration::from_nanos(DEFAULT_EXITED_GRACE_NS))
    )]
    pub exited_grace: Seconds,
    /// Most sockets tracked at once (1 to 100000000; about 200 bytes each): beyond, new
    /// connections are refused and counted (tracer status, /metrics), so a host with millions of
    /// sockets degrades visibly instead of running out of memory.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = parse_max_connections)]
    pub max_connections: usize,
    /// Most processes tracked at once (1 to 4194304): beyond, connections of new processes are
    /// refused and counted.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PROCESSES, value_parser = parse_max_processes)]
    pub max_processes: usize,
    /// Seconds between reconciles with sock_diag and /proc (0 disables them).
    #[arg(long, value_parser = parse_seconds, default_value_t = Seconds::of(DEFAULT_RECONCILE_INTERVAL))]
    pub reconcile_interval: Seconds,
    /// Count the state changes the kernel never hands to the probes, from tracefs's count of
    /// the tracepoint's hits (docs/semantics.md, "Runs the kernel never made"). Off saves
    /// the tracefs record each state change costs (docs/performance.md).
    #[arg(long, value_parser = Switch::parser(), default_value_t = Switch::On)]
    pub never_run_count: Switch,
    /// Which connections' opener stacks to capture (docs/stacks.md).
    #[arg(long, value_parser = StackPolicy::parser(), default_value_t = StackPolicy::default())]
    pub stacks: StackPolicy,
    /// `--stacks sampled`: capture every Nth connection of each process (1 to 1000000).
    #[arg(
        long,
        default_value_t = DEFAULT_STACK_SAMPLE,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub stack_sample: u32,
    /// Frames of each opener stack (1 to 127).
    #[arg(
        long,
        default_value_t = DEFAULT_STACK_DEPTH,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_STACK_DEPTH))
    )]
    pub stack_depth: u32,
    /// Which Go processes' HTTP requests to probe for the code behind each connection's last
    /// request (docs/stacks.md).
    #[arg(long, value_parser = GoRequestPolicy::parser(), default_value_t = GoRequestPolicy::default())]
    pub go_requests: GoRequestPolicy,
    /// Log format of the daemon.
    #[arg(long, value_parser = LogFormat::parser(), default_value_t = LogFormat::default())]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub leaks: LeakArgs,
    /// Serve Prometheus metrics on ADDR:PORT (`off` to disable).
    #[arg(long, default_value_t = MetricsAddr(Some(DEFAULT_METRICS_ADDR)), value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// TLS and basic authentication for the metrics endpoint, from a web config file in the
    /// format Prometheus exporters share (tls_server_config, basic_auth_users).
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Processes with their own metric series (the rest are summed under pid="other").
    #[arg(long, default_value_t = export::DEFAULT_TOP_N)]
    pub metrics_top: usize,
    /// POST each alert raise and resolve as JSON to this http:// URL.
    #[arg(long)]
    pub alert_webhook: Option<String>,
    #[command(flatten)]
    pub containers: ContainerArgs,
    /// Test only: drop every Nth release in the kernel, to prove tests catch wrong counts.
    #[arg(long, default_value_t = 0, hide = true)]
    pub fault_drop_every_nth_release: u32,
    /// Test only: make the kernel refuse the stack capture code, to prove the daemon then runs
    /// with stacks off and says why.
    #[arg(long, hide = true)]
    pub fault_refuse_stacks: bool,
    /// Test only: every Nth run of the state-change program returns before it counts itself,
    /// to prove the daemon counts runs the kernel never made (from tracefs).
    #[arg(long, default_value_t = 0, hide = true)]
    pub fault_skip_every_nth_state_change: u32,
    /// Test only: the inspector part aborts on a Go binary that ends with a marker, as on a
    /// file that crashes a parser, to prove that a new part replaces it and the file is
    /// quarantined.
    #[arg(long, hide = true)]
    pub fault_inspector_crash_marker: bool,
}

/// Where container identities are read (docs/containers.md).
#[derive(Debug, Args)]
#[command(next_help_heading = "Containers")]
pub struct ContainerArgs {
    /// The cgroup2 mount to resolve cgroup ids in (default: found in /proc/self/mountinfo;
    /// give the host's when a pod mounts it elsewhere).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// The kubelet's pod log directories (`<namespace>_<pod>_<uid>/`): pod names by UID.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_POD_LOGS_DIR)]
    pub pod_logs_dir: PathBuf,
    /// The kubelet's container log links (`<pod>_<namespace>_<container>-<id>.log`):
    /// container names by id.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONTAINER_LOGS_DIR)]
    pub container_logs_dir: PathBuf,
    /// docker's data root (`containers/<id>/config.v2.json`): docker container names.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DOCKER_DIR)]
    pub docker_dir: PathBuf,
}

impl ContainerArgs {
    fn sources(&self) -> Sources {
        Sources {
            cgroup_root: self.cgroup_root.clone(),
            names: NameDirs {
                pod_logs: self.pod_logs_dir.clone(),
                container_logs: self.container_logs_dir.clone(),
                docker: self.docker_dir.clone(),
            },
        }
    }
}

fn parse_limit(text: &str, flag: &str, ceiling: usize) -> Result<usize, String> {
    let value: usize = text
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("expected a whole number from 1 to {ceiling}, got {text:?}"))?;
    check_limit(flag, value, ceiling)?;
    Ok(value)
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    parse_limit(text, "max-connections", MAX_CONNECTIONS_CEILING)
}

fn parse_max_processes(text: &str) -> Result<usize, String> {
    parse_limit(text, "max-processes", MAX_PROCESSES_CEILING)
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Debug)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("off"),
        }
    }
}

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr(None));
    }
    text.parse().map(|a| MetricsAddr(Some(a))).map_err(|_| {
        format!("expected ADDR:PORT (e.g. 127.0.0.1:9855 or 0.0.0.0:9855) or `off`, got {text:?}")
    })
}

/// Leak rules (docs/leak-detection.md).
#[derive(Debug, Args)]
#[command(next_help_heading = "Leak detection")]
pub struct LeakArgs {
    /// Seconds between evaluations (one sample of each process's open count).
    #[arg(long, value_parser = parse_positive_seconds, default_value_t = Seconds::of(DEFAULT_LEAK_INTERVAL))]
    pub leak_interval: Seconds,
    /// Samples per window.
    #[arg(long, default_value_t = leak_defaults::WINDOW_SAMPLES)]
    pub leak_window: usize,
    /// Sub-windows per window (the window must be a multiple of it).
    #[arg(long, default_value_t = leak_defaults::SUB_WINDOWS)]
    pub leak_sub_windows: usize,
    /// growth: minimum rise of the open-count floor over the window.
    #[arg(long, default_value_t = leak_defaults::GROWTH_MIN)]
    pub leak_growth_min: u32,
    /// close_wait: how many connections must be stale in CLOSE_WAIT.
    #[arg(long, default_value_t = leak_defaults::CLOSE_WAIT_MIN)]
    pub close_wait_min: u32,
    /// close_wait: seconds in CLOSE_WAIT before a connection counts as stale.
    #[arg(long, value_parser = parse_seconds, default_value_t = Seconds::of(DEFAULT_CLOSE_WAIT_AFTER))]
    pub close_wait_after: Seconds,
    /// held_closed: seconds a connection reset by the peer may stay held.
    #[arg(long, value_parser = parse_seconds, default_value_t = Seconds::of(DEFAULT_HELD_CLOSED_AFTER))]
    pub held_closed_after: Seconds,
    /// age: alert on connections older than this many seconds (off unless set).
    #[arg(long, value_parser = parse_seconds)]
    pub age_threshold: Option<Seconds>,
    /// unread and top's `unread`: seconds a connection may hold unread data without any read
    /// progress before it counts as unread (checked at each evaluation's sock_diag dump).
    #[arg(long, value_parser = parse_positive_seconds, default_value_t = Seconds::of(DEFAULT_UNREAD_AFTER))]
    pub unread_after: Seconds,
    /// unread: how many unread connections a process must hold.
    #[arg(long, default_value_t = leak_defaults::UNREAD_MIN, value_parser = clap::value_parser!(u32).range(1..))]
    pub unread_min: u32,
    /// top's `idle`: seconds without data sent or received before an open connection counts
    /// as idle.
    #[arg(long, value_parser = parse_positive_seconds, default_value_t = Seconds::of(DEFAULT_IDLE_AFTER))]
    pub idle_after: Seconds,
    /// idle: alert on processes holding many connections idle longer than this many seconds
    /// (a pool without an idle timeout; off unless set).
    #[arg(long, value_parser = parse_positive_seconds)]
    pub idle_alert_after: Option<Seconds>,
    /// idle: how many connections must be idle beyond --idle-alert-after.
    #[arg(long, default_value_t = leak_defaults::IDLE_MIN, value_parser = clap::value_parser!(u32).range(1..))]
    pub idle_min: u32,
    /// Consecutive clear evaluations before an alert resolves.
    #[arg(long, default_value_t = leak_defaults::RESOLVE_AFTER)]
    pub leak_resolve_after: u32,
    /// port_exhaustion: percentage of a destination's ephemeral ports in use above which its
    /// top holders are alerted (TIME_WAIT included unless tcp_tw_reuse frees it).
    #[arg(long, value_name = "PERCENT", default_value_t = leak_defaults::PORT_PRESSURE_PERCENT)]
    pub port_pressure: u32,
    /// fd_exhaustion: alert within this percentage of the soft descriptor limit.
    #[arg(long, value_name = "PERCENT", default_value_t = leak_defaults::FD_HEADROOM_PERCENT)]
    pub fd_headroom: u32,
    /// fd_exhaustion: alert when the descriptor rise seen over the window reaches the limit
    /// within this many seconds, while growth holds.
    #[arg(long, value_parser = parse_positive_seconds, default_value_t = Seconds(Duration::from_secs(leak_defaults::FD_EXHAUSTION_WITHIN_SECONDS)))]
    pub fd_exhaustion_within: Seconds,
    /// Per-workload override, SELECTOR:KEY=VALUE[,KEY=VALUE...] (repeatable; the first match
    /// applies): a rule on/off (`postgres:age=off`) or a threshold by its flag name
    /// (`backup-*:close-wait-after=600`). SELECTOR is a command-name glob, or FIELD=GLOB,...
    /// over comm, container, pod, namespace (`namespace=shop,container=api:idle=off`). In a
    /// config file: [workload."SELECTOR"] tables.
    #[arg(long, value_name = "SELECTOR:SETTINGS")]
    pub workload: Vec<WorkloadOverride>,
}

impl LeakArgs {
    fn settings(&self) -> anyhow::Result<LeakSettings> {
        let detector = DetectorConfig {
            window_samples: self.leak_window,
            sub_windows: self.leak_sub_windows,
            growth_min: self.leak_growth_min,
            close_wait_min: self.close_wait_min,
            age_enabled: self.age_threshold.is_some(),
            unread_min: self.unread_min,
            idle_min: self.idle_min,
            idle_enabled: self.idle_alert_after.is_some(),
            resolve_after: self.leak_resolve_after,
            port_pressure_percent: self.port_pressure,
            fd_headroom_percent: self.fd_headroom,
            fd_exhaustion_within_ns: nanos(self.fd_exhaustion_within.0),
            overrides: self.workload.clone(),
            ..DetectorConfig::default()
        };
        detector.validate().map_err(|e| anyhow::anyhow!("leak detection settings: {e}"))?;
        Ok(LeakSettings {
            interval: self.leak_interval.0,
            detector,
            close_wait_after_ns: nanos(self.close_wait_after.0),
            held_closed_after_ns: nanos(self.held_closed_after.0),
            age_threshold_ns: self.age_threshold.map(|t| nanos(t.0)),
            health: HealthSettings {
                idle_after_ns: nanos(self.idle_after.0),
                unread_after_ns: nanos(self.unread_after.0),
                idle_alert_after_ns: self.idle_alert_after.map(|t| nanos(t.0)),
            },
        })
    }
}

/// A capability the daemon keeps after start-up, by name (`cap_sys_ptrace` or `sys_ptrace`).
fn parse_kept_capability(name: &str) -> Result<u32, String> {
    use tracer::privileges::{KEPT, capability_by_name, capability_name};
    let kept = || KEPT.iter().map(|k| capability_name(k.capability)).collect::<Vec<_>>().join(", ");
    match capability_by_name(name) {
        Some(cap) if KEPT.iter().any(|k| k.capability == cap) => Ok(cap),
        Some(_) => Err(format!(
            "the daemon does not keep {name} after start-up (nothing to drop); it keeps at most {}",
            kept()
        )),
        None => Err(format!("no capability is called {name:?}; the daemon keeps {}", kept())),
    }
}

/// The probes load after the drop: refuses a `--drop-capability` that leaves the daemon
/// without what loading them takes (the kernel would refuse with a bare EPERM).
fn check_capabilities_to_load(dropped: u64) -> anyhow::Result<()> {
    use tracer::privileges::{CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, Privileges, kept_set};
    let Some(now) = Privileges::of_self() else { return Ok(()) };
    let kept = kept_set(now.effective, dropped);
    for (needed, name) in [(CAP_BPF, "cap_bpf"), (CAP_PERFMON, "cap_perfmon")] {
        let has = |cap: u32| kept & (1 << cap) != 0;
        if dropped != 0 && !has(needed) && !has(CAP_SYS_ADMIN) {
            anyhow::bail!(
                "--drop-capability: the daemon loads its probes after it drops capabilities, \
                 and that needs {name} or cap_sys_admin: keep one of them"
            );
        }
    }
    Ok(())
}

pub fn run(args: RunArgs, socket: PathBuf) -> anyhow::Result<()> {
    let args_seccomp = args.seccomp;
    let fault = Fault { crash_on_marker: args.fault_inspector_crash_marker };
    let dropped: u64 = args.drop_capability.iter().fold(0, |set, cap| set | 1 << cap);
    check_capabilities_to_load(dropped)?;
    let clients_user = match args.privsep {
        Switch::On => Some(ClientsUser::resolve(&args.clients_user)?),
        Switch::Off => None,
    };
    let mut options = DaemonOptions {
        load: LoadOptions {
            mode: args.probe,
            ring_bytes: args.ring_bytes,
            drop_every_nth_release: args.fault_drop_every_nth_release,
            skip_every_nth_state_change: args.fault_skip_every_nth_state_change,
            never_run_count: args.never_run_count,
            wakeup_threshold_bytes: args.wakeup_bytes,
            stacks: StackOptions {
                policy: args.stacks,
                sample_every: args.stack_sample,
                depth: args.stack_depth,
                fault_refuse: args.fault_refuse_stacks,
            },
        },
        table: TableConfig {
            exited_grace_ns: nanos(args.exited_grace.0),
            max_connections: args.max_connections,
            max_processes: args.max_processes,
            ..TableConfig::default()
        },
        socket,
        socket_group: args
            .socket_group
            .as_deref()
            .map(tracer::api::server::resolve_group)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--socket-group {e}"))?,
        summary_interval: args.summary_interval.0,
        reconcile_interval: args.reconcile_interval.0,
        leaks: args.leaks.settings()?,
        webhook: args.alert_webhook.as_deref().map(str::parse::<WebhookUrl>).transpose()?,
        metrics_addr: args.metrics_addr.0,
        web_config: args
            .web_config
            .as_deref()
            .map(tracer::export::WebConfig::load)
            .transpose()?
            .unwrap_or_default(),
        metrics_top_n: args.metrics_top,
        drain_interval: Duration::from_millis(args.drain_interval_ms),
        containers: args.containers.sources(),
        go_requests: args.go_requests,
        inspection: Inspection::Here,
    };
    // Before any thread starts: the part that serves clients may be forked off with the
    // listeners.
    let listeners = daemon::prepare(&options)?;
    let api_file = listeners.api_file.clone();
    let serving = match clients_user {
        None => Serving::Here(listeners),
        Some(user) => {
            let metrics_addr = listeners.metrics.as_ref().and_then(|l| l.local_addr().ok());
            match privsep::split()? {
                Part::Child { link, monitor } => {
                    let web = options.web_config.clone();
                    let (api, metrics) = (listeners.api, listeners.metrics);
                    let seccomp = args_seccomp;
                    return privsep::run_clients(link, monitor, &user, api, metrics, web, seccomp);
                }
                Part::Monitor { link, child } => {
                    drop(listeners);
                    // The third part, which parses the binaries the daemon opens: forked now,
                    // while there is one thread still.
                    let inspector = privsep::inspector::spawn(&user, args_seccomp, fault)?;
                    options.inspection = Inspection::Apart(std::sync::Arc::new(inspector));
                    Serving::Relayed { link, child, metrics_addr }
                }
            }
        }
    };
    // Still one thread: the reduced sets are every later thread's (docs/security.md).
    tracer::privileges::keep_only_kept(dropped)
        .map_err(|e| anyhow::anyhow!("dropping the capabilities the daemon does not use: {e}"))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(daemon::run(options, serving, api_file))
}
