//! `tracer conns`: open and connecting connections, with filters.
use std::{fmt::Write as _, path::Path};

use clap::Args;
use tracer::api::{
    answers::{ConnRow, ConnsReport, RemoteFilter, STATE_NAMES, conn_state_label},
    protocol::Request,
};

use super::{
    output,
    placement::{self, Column, PlacementArgs},
    text::{age, clip},
};

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
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Machine-readable output (the API's answer, docs/api.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: ConnsArgs) -> anyhow::Result<()> {
    // Validate locally first, so a typo never needs a running daemon to be reported.
    if let Some(remote) = &args.remote {
        remote.parse::<RemoteFilter>().map_err(anyhow::Error::msg)?;
    }
    let placement = args.placement.filter()?;
    let request =
        Request::Conns { pid: args.pid, remote: args.remote, state: args.state, placement };
    let text = output::answer::<ConnsReport>(socket, request, args.json, conns)?;
    output::emit(&text)?;
    Ok(())
}

/// Placement column width: keeps a row within 120 columns (IPv4 endpoints).
const PLACEMENT_WIDTH: usize = 22;

pub(super) fn conns(report: &ConnsReport) -> String {
    let mut out = String::new();
    let column =
        Column::new(report.connections.iter().map(|r| r.container.as_ref()), PLACEMENT_WIDTH);
    // The namespace only when some connection is outside the host's.
    let foreign = |netns: u32| report.host_netns.is_some_and(|host| host != netns);
    let netns_column = report.connections.iter().any(|r| foreign(r.conn.netns));
    // Endpoints as wide as the longest (IPv6 ones reach 47 characters), at least an IPv4 one.
    let width = |side: fn(&ConnRow) -> std::net::SocketAddr| {
        report.connections.iter().map(|r| side(r).to_string().len()).max().unwrap_or(0).max(21)
    };
    let (local_width, remote_width) = (width(|r| r.conn.local), width(|r| r.conn.remote));
    let _ = writeln!(
        out,
        "{:>7} {:<10}{} {:<3} {:<local_width$} {:<remote_width$} {:<11} {:>4} {:>4} {:>8}{}",
        "PID",
        "COMM",
        placement::header(&column),
        "DIR",
        "LOCAL",
        "REMOTE",
        "STATE",
        "AGE",
        "IDLE",
        "UNREAD",
        if netns_column { format!(" {:>10}", "NETNS") } else { String::new() }
    );
    for row in &report.connections {
        let c = &row.conn;
        // `-` where the kernel gave no figure (conns --json says why).
        let idle = row.health.idle_seconds.map_or_else(|| "-".to_owned(), age);
        let unread = row.health.unread_bytes.map_or_else(|| "-".to_owned(), bytes);
        let pid = c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let dir = match c.direction {
            tracer::table::Direction::Outbound => "out",
            tracer::table::Direction::Inbound => "in",
        };
        let state = conn_state_label(c.phase, state_static(&c.state));
        let netns = match (netns_column, foreign(c.netns)) {
            (false, _) => String::new(),
            (true, true) => format!(" {:>10}", c.netns),
            (true, false) => format!(" {:>10}", "host"),
        };
        let _ = writeln!(
            out,
            "{:>7} {:<10}{} {:<3} {:<local_width$} {:<remote_width$} {:<11} {:>4} {:>4} {:>8}{}",
            pid,
            clip(c.comm.as_deref().unwrap_or("-"), 10),
            placement::cell_of(&column, row.container.as_ref()),
            dir,
            c.local.to_string(),
            c.remote.to_string(),
            state,
            age(c.age_seconds),
            idle,
            unread,
            netns
        );
    }
    let _ = writeln!(out, "{} connection(s)", report.connections.len());
    out
}

/// A byte count, short: `0`, `512`, `64K`, `3.2M`.
fn bytes(n: u64) -> String {
    match n {
        0..1024 => n.to_string(),
        1024..1_048_576 => format!("{}K", n / 1024),
        _ => format!("{:.1}M", n as f64 / 1_048_576.0),
    }
}

/// The state names come from a fixed set; map back to a static str for the label helper.
fn state_static(state: &str) -> &'static str {
    STATE_NAMES
        .iter()
        .chain(["syn_sent", "syn_recv", "listen", "unknown"].iter())
        .find(|s| **s == state)
        .copied()
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use tracer::{
        api::answers::{ConnHealth, ConnRow, ConnSnapshot},
        table::{Direction, Phase},
    };

    use super::*;

    const HOST_NETNS: u32 = 4_026_531_840;

    fn row(pid: u32, netns: u32, container: Option<tracer::containers::Container>) -> ConnRow {
        ConnRow {
            conn: ConnSnapshot {
                id: u64::from(pid),
                pid: Some(pid),
                comm: Some("client".into()),
                direction: Direction::Outbound,
                phase: Phase::Open,
                local: "10.200.0.2:40000".parse().expect("addr"),
                remote: "10.200.0.1:8080".parse().expect("addr"),
                state: "established".into(),
                age_seconds: 5,
                netns,
                preexisting: false,
                holders: Vec::new(),
                stack_group: None,
                no_stack: None,
            },
            health: ConnHealth::unavailable("test"),
            container,
        }
    }

    #[test]
    fn containers_and_foreign_namespaces_get_columns_only_when_present() {
        let host = ConnsReport {
            connections: vec![row(1, HOST_NETNS, None)],
            host_netns: Some(HOST_NETNS),
        };
        let text = conns(&host);
        assert!(!text.contains("POD/CONTAINER") && !text.contains("NETNS"), "{text}");

        let web = tracer::containers::Container {
            id: "fedcba9876543210".into(),
            name: Some("web".into()),
            runtime: tracer::containers::Runtime::Docker,
            pod: None,
            namespace: None,
            pod_uid: None,
            cgroup: "/system.slice/docker-fedcba9876543210.scope".into(),
            role: tracer::containers::Role::Workload,
        };
        let mixed = ConnsReport {
            connections: vec![row(1, HOST_NETNS, None), row(2, 4_026_532_999, Some(web))],
            host_netns: Some(HOST_NETNS),
        };
        let text = conns(&mixed);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("NS/POD/CONTAINER") && lines[0].ends_with("NETNS"), "{text}");
        assert!(lines[1].contains(" host ") && lines[1].trim_end().ends_with("host"), "{text}");
        assert!(lines[2].contains(" web ") && lines[2].ends_with("4026532999"), "{text}");
        // Without the namespace column a row fits 120 columns.
        let no_netns = ConnsReport { host_netns: Some(4_026_532_999), ..mixed };
        let text = conns(&no_netns);
        assert!(text.contains("NETNS"), "the host's own namespace differs from the first row's");
        let one = ConnsReport {
            connections: no_netns.connections.into_iter().skip(1).collect(),
            host_netns: Some(4_026_532_999),
        };
        let text = conns(&one);
        assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
    }
}
