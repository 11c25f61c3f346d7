//! The `tracer` command line: a thin layer over the library, one file per subcommand. `run` is
//! the daemon; the other commands query it over its Unix socket. Only this binary uses clap:
//! the library's types know their names (`FromStr`), and [`values`] offers them to clap.
mod config;
mod conns;
#[cfg(test)]
mod docs;
mod generate;
#[cfg(test)]
mod golden;
mod leaks;
mod output;
mod placement;
mod run;
mod stacks;
mod status;
mod text;
mod top;
mod trace;
mod values;
mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracer::{
    api::DEFAULT_SOCKET,
    logging::{self, LogFormat},
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
    // Boxed: its flags make it several times larger than every other command.
    Run(Box<run::RunArgs>),
    /// Processes by open connections.
    Top(top::TopArgs),
    /// Open and connecting connections, with filters.
    Conns(conns::ConnsArgs),
    /// Probe mode, kernel, event and loss counters of the running daemon.
    Status(status::StatusArgs),
    /// Active leak alerts with their evidence, and those resolved in the last hour.
    Leaks(leaks::LeaksArgs),
    /// A process's open connections grouped by the code (user-space stack) that opened them.
    Stacks(stacks::StacksArgs),
    /// Connections opening and closing, failed connects and leak alerts, live, filtered.
    Trace(trace::TraceArgs),
    /// Print the shell completion script for bash, zsh or fish.
    Completions(generate::CompletionsArgs),
    /// Print the tracer(1) man page, or write every command's page into a directory.
    Man(generate::ManArgs),
}

/// Parses the process's arguments (expanding `--config`) and runs the command; returns the
/// exit code.
pub fn main() -> i32 {
    // Before any thread starts, so that every thread has it (docs/security.md).
    if let Err(e) = tracer::privileges::forbid_new_privileges() {
        eprintln!("tracer: could not set no_new_privs (prctl PR_SET_NO_NEW_PRIVS): {e}");
        return 1;
    }
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
            run::run(*args, socket)
        }
        command => {
            logging::init(cli.log_level, LogFormat::Logfmt);
            match command {
                Command::Top(args) => top::run(&socket, args),
                Command::Conns(args) => conns::run(&socket, args),
                Command::Status(args) => status::run(&socket, args),
                Command::Leaks(args) => leaks::run(&socket, args),
                Command::Stacks(args) => stacks::run(&socket, args),
                Command::Trace(args) => trace::run(&socket, args),
                Command::Completions(args) => generate::run_completions(&args),
                Command::Man(args) => generate::run_man(&args),
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
