//! The `tracer` command line: a thin layer over the library. `run` is the daemon; the other
//! commands query it over its Unix socket.
mod render;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tracer_common::DEFAULT_RING_BYTES;

use crate::{
    api::{DEFAULT_SOCKET, client, protocol::Request},
    daemon::{self, ConnsReport, DaemonOptions, TopReport},
    probes::{LoadOptions, ProbeMode},
    table::TableConfig,
};

#[derive(Debug, Parser)]
#[command(name = "tracer", version, about = "System-wide TCP connection lifecycle tracer and leak detector")]
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
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Probe mode: auto picks the best one this kernel loads.
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto)]
    pub probe: ProbeMode,
    /// Ring buffer size in bytes (power of two, at least 4096).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Seconds between one-line summaries in the log (0 disables them).
    #[arg(long, default_value_t = 60)]
    pub summary_interval: u64,
    /// Seconds an exited process stays listed.
    #[arg(long, default_value_t = 60)]
    pub exited_grace: u64,
    /// Seconds between reconciles with sock_diag and /proc (0 disables them).
    #[arg(long, default_value_t = 60)]
    pub reconcile_interval: u64,
    /// Test only: drop every Nth release in the kernel, to prove tests catch wrong counts.
    #[arg(long, default_value_t = 0, hide = true)]
    pub fault_drop_every_nth_release: u32,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Show at most N processes.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Machine-readable output.
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

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    env_logger::Builder::new().filter_level(cli.log_level).format_target(false).init();
    let socket = cli.socket;
    let result = match cli.command {
        Command::Run(args) => run_daemon(args, socket),
        Command::Top(args) => top(&socket, args),
        Command::Conns(args) => conns(&socket, args),
        Command::Status(args) => status(&socket, args),
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
        },
        table: TableConfig { exited_grace_ns: args.exited_grace * 1_000_000_000, ..TableConfig::default() },
        socket,
        summary_interval: Duration::from_secs(args.summary_interval),
        reconcile_interval: Duration::from_secs(args.reconcile_interval),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(daemon::run(options))
}

fn top(socket: &std::path::Path, args: TopArgs) -> anyhow::Result<()> {
    let report: TopReport = client::request(socket, Request::Top { limit: args.limit })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render::top(&report));
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
