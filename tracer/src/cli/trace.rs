//! `tracer trace`: connections opening and closing, failed connects and leak alerts, live
//! from the running daemon (docs/trace.md), filtered, as text or NDJSON.
use std::{io::Write, path::Path};

use serde_json::value::RawValue;

use clap::{Args, ValueEnum};
use tracer::{
    api::{client, protocol::Request},
    table::Direction,
    trace::{TraceFilter, TraceLine, header, text_line},
};

use super::{
    placement::PlacementArgs,
    values::{Seconds, parse_seconds},
};

/// `--direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// Connections this host's processes made.
    Out,
    /// Connections they accepted.
    In,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Only this process's events.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only processes whose command name matches this glob (`*`, `?`).
    #[arg(long)]
    pub comm: Option<String>,
    /// Only connections with this port on either side.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only connections to this peer: ADDR, ADDR/PREFIX, ADDR:PORT or ADDR/PREFIX:PORT (IPv6
    /// in brackets with a port: [::1]:80).
    #[arg(long, value_name = "ADDR[/PREFIX][:PORT]")]
    pub remote: Option<String>,
    /// Only outbound (out) or inbound (in) connections.
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Only closes of connections open at least this long (opens and failures still show).
    #[arg(long, value_parser = parse_seconds, value_name = "DURATION")]
    pub min_lifetime: Option<Seconds>,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Also every TCP state change of an owned connection (ESTABLISHED -> CLOSE_WAIT, ...).
    #[arg(long)]
    pub states: bool,
    /// One JSON object per line (the text view's fields, named the same).
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: TraceArgs) -> anyhow::Result<()> {
    let filter = TraceFilter {
        pid: args.pid,
        comm: args.comm,
        port: args.port,
        remote: args.remote,
        direction: args.direction.map(|d| match d {
            DirectionArg::Out => Direction::Outbound,
            DirectionArg::In => Direction::Inbound,
        }),
        min_lifetime_ms: args.min_lifetime.map(|s| s.0.as_millis() as u64),
        placement: args.placement.filter()?,
        states: args.states,
    };
    // Checked here too, so that a typo never needs a running daemon to be reported.
    filter.validate().map_err(anyhow::Error::msg)?;
    exit_when_the_reader_goes();
    let mut out = std::io::stdout().lock();
    let json = args.json;
    if !json && writeln!(out, "{}", header()).is_err() {
        return Ok(());
    }
    let mut failed = None;
    // JSON lines go out as the daemon wrote them (checked to be JSON, not rebuilt); output is
    // flushed whenever no more lines are waiting, so a busy stream costs one write per batch.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    client::stream(socket, Request::Trace { filter }, |line: Box<RawValue>, more| {
        let written = if json {
            writeln!(out, "{}", line.get())
        } else {
            match serde_json::from_str::<TraceLine>(line.get()) {
                Ok(line) => writeln!(out, "{}", text_line(&line)),
                Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        };
        match written.and_then(|()| if more { Ok(()) } else { out.flush() }) {
            Ok(()) => true,
            // `| head`: the reader is gone, which ends the trace without an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// `tracer trace | head -3`: once the pipe's reader has closed, exit at once, without waiting
/// for the next record to find out (a quiet host may send none for a long time).
fn exit_when_the_reader_goes() {
    std::thread::spawn(|| {
        let mut fd = libc::pollfd { fd: libc::STDOUT_FILENO, events: 0, revents: 0 };
        loop {
            // SAFETY: one valid pollfd; events 0 still reports POLLERR and POLLHUP, which a
            // pipe's write end gets when its reader closes.
            let n = unsafe { libc::poll(&raw mut fd, 1, -1) };
            if n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                std::process::exit(0);
            }
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
    });
}
