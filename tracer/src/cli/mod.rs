//! The `tracer` command line: a thin layer over the library.
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracer_common::DEFAULT_RING_BYTES;

use crate::{
    daemon::{self, DaemonOptions},
    probes::{LoadOptions, ProbeMode},
};

#[derive(Debug, Parser)]
#[command(name = "tracer", version, about = "System-wide TCP connection lifecycle tracer and leak detector")]
pub struct Cli {
    /// Log level: error, warn, info, debug (debug logs every event), trace.
    #[arg(long, global = true, default_value = "info", env = "TRACER_LOG")]
    pub log_level: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and run the daemon until SIGINT/SIGTERM.
    Run(RunArgs),
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
    /// Test only: drop every Nth release in the kernel, to prove tests catch wrong counts.
    #[arg(long, default_value_t = 0, hide = true)]
    pub fault_drop_every_nth_release: u32,
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    env_logger::Builder::new().filter_level(cli.log_level).format_target(false).init();
    let result = match cli.command {
        Command::Run(args) => run_daemon(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            1
        }
    }
}

fn run_daemon(args: RunArgs) -> anyhow::Result<()> {
    let options = DaemonOptions {
        load: LoadOptions {
            mode: args.probe,
            ring_bytes: args.ring_bytes,
            drop_every_nth_release: args.fault_drop_every_nth_release,
        },
        summary_interval: Duration::from_secs(args.summary_interval),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(daemon::run(options))?;
    Ok(())
}
