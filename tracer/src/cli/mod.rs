//! The `tracer` command line: a thin layer over the library. `run` is the daemon; the other
//! commands query it over its Unix socket.
mod config;
mod render;
mod watch;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tracer_common::DEFAULT_RING_BYTES;

use crate::{
    api::{
        DEFAULT_SOCKET, client,
        protocol::{Request, TopBy},
    },
    daemon::{
        self, AgesReport, ConnsReport, DaemonOptions, LeakSettings, LeaksReport, RemoteReport,
        TopReport,
    },
    detect::DetectorConfig,
    export,
    logging::{self, LogFormat},
    probes::{LoadOptions, ProbeMode},
    table::TableConfig,
    webhook::WebhookUrl,
};

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "System-wide TCP connection lifecycle tracer and leak detector"
)]
// A flag may appear twice (from --config, then the command line): the last one wins.
#[command(args_override_self = true)]
pub struct Cli {
    /// Log level: error, warn, info, debug (debug logs every event), trace.
    #[arg(long, global = true, default_value = "info", env = "TRACER_LOG")]
    pub log_level: log::LevelFilter,
    /// The daemon's API socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, env = "TRACER_SOCKET")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and run the daemon until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Processes by open connections.
    Top(TopArgs),
    /// Open and connecting connections, with filters.
    Conns(ConnsArgs),
    /// Probe mode, kernel, event and loss counters of the running daemon.
    Status(StatusArgs),
    /// Active leak alerts with their evidence, and those resolved in the last hour.
    Leaks(LeaksArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML file of `tracer run` flags (keys are the long flag names); flags given here
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Probe mode: auto picks the best one this kernel loads.
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto)]
    pub probe: ProbeMode,
    /// Ring buffer size in bytes (power of two, at least 4096).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Wake the daemon each time this many more bytes of events wait (0: whenever an event
    /// arrives while it is idle). Batching wakeups cuts the per-event cost at high connection
    /// rates. Capped at a quarter of --ring-bytes.
    #[arg(long, default_value_t = DEFAULT_WAKEUP_BYTES)]
    pub wakeup_bytes: u32,
    /// Milliseconds between drains of the ring buffer when no wakeup came. Every query, scrape,
    /// leak check and reconcile drains first, so this only bounds how long events may sit in
    /// the ring between them; shorter costs more daemon wakeups at low event rates.
    #[arg(long, default_value_t = 100)]
    pub drain_interval_ms: u64,
    /// Seconds between one-line summaries in the log (0 disables them).
    #[arg(long, default_value_t = 60)]
    pub summary_interval: u64,
    /// Seconds an exited process stays listed.
    #[arg(long, default_value_t = 60)]
    pub exited_grace: u64,
    /// Seconds between reconciles with sock_diag and /proc (0 disables them).
    #[arg(long, default_value_t = 60)]
    pub reconcile_interval: u64,
    /// Log format of the daemon.
    #[arg(long, value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub leaks: LeakArgs,
    /// Serve Prometheus metrics on ADDR:PORT (`off` to disable).
    #[arg(long, default_value = "127.0.0.1:9855", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Processes with their own metric series (the rest are summed under pid="other").
    #[arg(long, default_value_t = export::DEFAULT_TOP_N)]
    pub metrics_top: usize,
    /// POST each alert raise and resolve as JSON to this http:// URL.
    #[arg(long)]
    pub alert_webhook: Option<String>,
    /// Test only: drop every Nth release in the kernel, to prove tests catch wrong counts.
    #[arg(long, default_value_t = 0, hide = true)]
    pub fault_drop_every_nth_release: u32,
}

/// Default wakeup threshold: 1 MiB, about 9,400 events (an eighth of the default ring, which
/// leaves 7 MiB for the daemon to wake up in). At 9,000 connections/s it cut the daemon's CPU
/// from 1.01 to 0.76 µs per connection against 256 KiB (docs/performance.md).
pub const DEFAULT_WAKEUP_BYTES: u32 = 1 << 20;

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Debug)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

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
    #[arg(long, default_value_t = 15.0)]
    pub leak_interval: f64,
    /// Samples per window.
    #[arg(long, default_value_t = 20)]
    pub leak_window: usize,
    /// Sub-windows per window (the window must be a multiple of it).
    #[arg(long, default_value_t = 4)]
    pub leak_sub_windows: usize,
    /// growth: minimum rise of the open-count floor over the window.
    #[arg(long, default_value_t = 10)]
    pub leak_growth_min: u32,
    /// close_wait: how many connections must be stale in CLOSE_WAIT.
    #[arg(long, default_value_t = 1)]
    pub close_wait_min: u32,
    /// close_wait: seconds in CLOSE_WAIT before a connection counts as stale.
    #[arg(long, default_value_t = 60.0)]
    pub close_wait_after: f64,
    /// held_closed: seconds a connection reset by the peer may stay held.
    #[arg(long, default_value_t = 60.0)]
    pub held_closed_after: f64,
    /// age: alert on connections older than this many seconds (off unless set).
    #[arg(long)]
    pub age_threshold: Option<f64>,
    /// Consecutive clear evaluations before an alert resolves.
    #[arg(long, default_value_t = 4)]
    pub leak_resolve_after: u32,
}

impl LeakArgs {
    fn settings(&self) -> anyhow::Result<LeakSettings> {
        let seconds = |name: &str, v: f64| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(v).map_err(|_| {
                anyhow::anyhow!("--{name} {v}: expected a non-negative number of seconds")
            })
        };
        let interval = seconds("leak-interval", self.leak_interval)?;
        if interval.is_zero() {
            anyhow::bail!("--leak-interval must be more than 0 seconds");
        }
        let detector = DetectorConfig {
            window_samples: self.leak_window,
            sub_windows: self.leak_sub_windows,
            growth_min: self.leak_growth_min,
            close_wait_min: self.close_wait_min,
            held_closed_min: 1,
            age_min: 1,
            age_enabled: self.age_threshold.is_some(),
            resolve_after: self.leak_resolve_after,
        };
        detector.validate().map_err(|e| anyhow::anyhow!("leak detection settings: {e}"))?;
        Ok(LeakSettings {
            interval,
            detector,
            close_wait_after_ns: seconds("close-wait-after", self.close_wait_after)?.as_nanos()
                as u64,
            held_closed_after_ns: seconds("held-closed-after", self.held_closed_after)?.as_nanos()
                as u64,
            age_threshold_ns: self
                .age_threshold
                .map(|t| seconds("age-threshold", t))
                .transpose()?
                .map(|d| d.as_nanos() as u64),
        })
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Show at most N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Group open connections by process (default) or by remote endpoint.
    #[arg(long, value_enum, default_value_t = TopBy::Process)]
    pub by: TopBy,
    /// Show the age distribution of one process's open connections instead.
    #[arg(long, value_name = "PID", conflicts_with = "by")]
    pub ages: Option<u32>,
    /// Redraw every SECS seconds (default 2) until q or Ctrl-C.
    #[arg(long, num_args = 0..=1, default_missing_value = "2", value_name = "SECS")]
    pub watch: Option<f64>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LeaksArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// Only connections of this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only connections to this peer: ADDR or ADDR:PORT (IPv6 as [ADDR]:PORT).
    #[arg(long)]
    pub remote: Option<String>,
    /// Only connections in this state (connecting, established, close_wait, fin_wait1,
    /// fin_wait2, closing, last_ack, time_wait, close).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

/// Parses the process's arguments (expanding `--config`) and runs the command; returns the
/// exit code.
pub fn main() -> i32 {
    let argv = match config::expand(std::env::args().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("tracer: {e}");
            return 2;
        }
    };
    run(Cli::parse_from(argv))
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let socket = cli.socket;
    let result = match cli.command {
        Command::Run(args) => {
            logging::init(cli.log_level, args.log_format);
            run_daemon(args, socket)
        }
        command => {
            logging::init(cli.log_level, LogFormat::Logfmt);
            match command {
                Command::Top(args) => top(&socket, args),
                Command::Conns(args) => conns(&socket, args),
                Command::Status(args) => status(&socket, args),
                Command::Leaks(args) => leaks(&socket, args),
                Command::Run(_) => Ok(()),
            }
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            // Every error's message already names its cause: print it once, not as a chain.
            eprintln!("tracer: {e}");
            1
        }
    }
}

fn run_daemon(args: RunArgs, socket: PathBuf) -> anyhow::Result<()> {
    let options = DaemonOptions {
        load: LoadOptions {
            mode: args.probe,
            ring_bytes: args.ring_bytes,
            drop_every_nth_release: args.fault_drop_every_nth_release,
            wakeup_threshold_bytes: args.wakeup_bytes,
        },
        table: TableConfig {
            exited_grace_ns: args.exited_grace * 1_000_000_000,
            ..TableConfig::default()
        },
        socket,
        summary_interval: Duration::from_secs(args.summary_interval),
        reconcile_interval: Duration::from_secs(args.reconcile_interval),
        leaks: args.leaks.settings()?,
        webhook: args.alert_webhook.as_deref().map(str::parse::<WebhookUrl>).transpose()?,
        metrics_addr: args.metrics_addr.0,
        metrics_top_n: args.metrics_top,
        drain_interval: Duration::from_millis(args.drain_interval_ms.max(1)),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(daemon::run(options))
}

fn top(socket: &std::path::Path, args: TopArgs) -> anyhow::Result<()> {
    let frame = || -> anyhow::Result<String> {
        if let Some(pid) = args.ages {
            let report: AgesReport = client::request(socket, Request::Ages { pid })?;
            return Ok(if args.json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                render::ages(&report)
            });
        }
        let request = Request::Top { limit: args.limit, by: args.by };
        Ok(match (args.by, args.json) {
            (TopBy::Process, true) => {
                serde_json::to_string_pretty(&client::request::<TopReport>(socket, request)?)?
                    + "\n"
            }
            (TopBy::Process, false) => render::top(&client::request(socket, request)?),
            (TopBy::Remote, true) => {
                serde_json::to_string_pretty(&client::request::<RemoteReport>(socket, request)?)?
                    + "\n"
            }
            (TopBy::Remote, false) => render::remotes(&client::request(socket, request)?),
        })
    };
    match args.watch {
        None => print!("{}", frame()?),
        Some(seconds) => {
            let period =
                Duration::try_from_secs_f64(seconds).ok().filter(|d| !d.is_zero()).ok_or_else(
                    || anyhow::anyhow!("--watch {seconds}: expected a positive number of seconds"),
                )?;
            watch::run(period, frame)?;
        }
    }
    Ok(())
}

fn leaks(socket: &std::path::Path, args: LeaksArgs) -> anyhow::Result<()> {
    let report: LeaksReport = client::request(socket, Request::Leaks {})?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render::leaks(&report));
    }
    Ok(())
}

fn conns(socket: &std::path::Path, args: ConnsArgs) -> anyhow::Result<()> {
    // Validate locally first, so a typo never needs a running daemon to be reported.
    if let Some(remote) = &args.remote {
        remote.parse::<daemon::RemoteFilter>().map_err(anyhow::Error::msg)?;
    }
    let request = Request::Conns { pid: args.pid, remote: args.remote, state: args.state };
    let report: ConnsReport = client::request(socket, request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render::conns(&report));
    }
    Ok(())
}

fn status(socket: &std::path::Path, args: StatusArgs) -> anyhow::Result<()> {
    let report: crate::api::protocol::StatusReport = client::request(socket, Request::Status {})?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render::status(&report));
    }
    Ok(())
}
