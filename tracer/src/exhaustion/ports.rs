//! Port pressure: for each destination (namespace, local address, remote address and port), the
//! ephemeral ports its connections hold against the namespace's `ip_local_port_range`. A
//! connect() needs a local port no other connection to the same destination uses, so this is
//! the number that runs out (EADDRNOTAVAIL) for a client that churns short connections.
//! Counted: connecting, open and closing connections, and TIME_WAIT unless the namespace's
//! `tcp_tw_reuse` lets a connect() to this destination take the port over.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use tracer_common::tcp_state;

use crate::{
    ground_truth::{ExistingSocket, sysctl::NetnsSysctls},
    table::{ProcessKey, TupleKey},
};

/// How many processes a destination names.
pub const HOLDERS_LISTED: usize = 5;

/// One destination's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub netns: u32,
    pub local: IpAddr,
    pub remote: SocketAddr,
    /// Ephemeral ports in use towards it (TIME_WAIT included when not reusable).
    pub used: u32,
    /// Of which in TIME_WAIT.
    pub time_wait: u32,
    /// The size of the namespace's port range.
    pub available: u32,
    /// Processes by ports held, most first (at most [`HOLDERS_LISTED`]); TIME_WAIT ports count
    /// for the process that closed first.
    pub holders: Vec<(ProcessKey, u32)>,
}

impl Destination {
    /// `used / available` (1.0 when the range is empty).
    pub fn ratio(&self) -> f64 {
        used_ratio(self.used, self.available)
    }
}

/// `used / available` ports, 1.0 when the range is empty (nothing left to take).
fn used_ratio(used: u32, available: u32) -> f64 {
    if available == 0 { 1.0 } else { f64::from(used) / f64::from(available) }
}

/// A process's share of its most pressed destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHold {
    pub remote: SocketAddr,
    pub used: u32,
    pub available: u32,
    /// Ports this process holds towards it.
    pub held: u32,
    /// 0 for the process holding the most, 1 for the next...
    pub rank: usize,
}

fn holds_a_port(state: u8) -> bool {
    use tcp_state::*;
    matches!(
        state,
        SYN_SENT
            | ESTABLISHED
            | FIN_WAIT1
            | FIN_WAIT2
            | CLOSE_WAIT
            | CLOSING
            | LAST_ACK
            | TIME_WAIT
    )
}

/// One destination's ports before attribution (the part of [`port_pressure`] that needs no
/// table: the daemon runs it off its event loop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationCount {
    pub netns: u32,
    pub local: IpAddr,
    pub remote: SocketAddr,
    pub used: u32,
    pub time_wait: u32,
    pub available: u32,
    /// The sockets holding its ports, `(addresses, state)`: kept only for destinations at
    /// least as pressed as [`count_ports`] was asked, the only ones whose holders are named.
    pub sockets: Vec<(TupleKey, u8)>,
}

impl DestinationCount {
    fn ratio(&self) -> f64 {
        used_ratio(self.used, self.available)
    }
}

/// Destinations by pressure, most pressed first. `owner_of` names the process a socket counts
/// for (the table's owner, or the closer for TIME_WAIT). Sockets whose local port is outside the
/// range, or one the namespace listens on (the server side of inbound connections), hold no
/// ephemeral port.
pub fn port_pressure(
    sockets: &[ExistingSocket],
    sysctls: &HashMap<u32, NetnsSysctls>,
    owner_of: impl Fn(&TupleKey, u8) -> Option<ProcessKey>,
) -> Vec<Destination> {
    attribute(count_ports(sockets, sysctls, 0.0), owner_of)
}

/// Names the holders of each counted destination (those whose sockets were kept).
pub fn attribute(
    counts: Vec<DestinationCount>,
    owner_of: impl Fn(&TupleKey, u8) -> Option<ProcessKey>,
) -> Vec<Destination> {
    counts
        .into_iter()
        .map(|c| {
            let mut holders: HashMap<ProcessKey, u32> = HashMap::new();
            for (tuple, state) in &c.sockets {
                if let Some(owner) = owner_of(tuple, *state) {
                    *holders.entry(owner).or_default() += 1;
                }
            }
            let mut holders: Vec<(ProcessKey, u32)> = holders.into_iter().collect();
            holders.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            holders.truncate(HOLDERS_LISTED);
            Destination {
                netns: c.netns,
                local: c.local,
                remote: c.remote,
                used: c.used,
                time_wait: c.time_wait,
                available: c.available,
                holders,
            }
        })
        .collect()
}

/// Ports per destination, most pressed first; the sockets are kept for the destinations whose
/// `used / available` is at least `keep_sockets_from` (naming holders costs a pass over the
/// table, worth it only near the rule's threshold).
pub fn count_ports(
    sockets: &[ExistingSocket],
    sysctls: &HashMap<u32, NetnsSysctls>,
    keep_sockets_from: f64,
) -> Vec<DestinationCount> {
    let listening: HashSet<(u32, u16)> = sockets
        .iter()
        .filter(|s| s.state == tcp_state::LISTEN)
        .map(|s| (s.netns, s.local.port()))
        .collect();
    let mut by_dest: HashMap<(u32, IpAddr, SocketAddr), (u32, u32)> = HashMap::new();
    let mut counted: Vec<&ExistingSocket> = Vec::new();
    for s in sockets {
        let ns = sysctls.get(&s.netns).copied().unwrap_or_default();
        if !holds_a_port(s.state)
            || !ns.is_ephemeral(s.local.port())
            || listening.contains(&(s.netns, s.local.port()))
        {
            continue;
        }
        let time_wait = s.state == tcp_state::TIME_WAIT;
        if time_wait && ns.reuses_time_wait(s.local.ip(), s.remote.ip()) {
            continue;
        }
        let (used, tw) = by_dest.entry((s.netns, s.local.ip(), s.remote)).or_default();
        *used += 1;
        *tw += u32::from(time_wait);
        counted.push(s);
    }
    let mut out: Vec<DestinationCount> = by_dest
        .into_iter()
        .map(|((netns, local, remote), (used, time_wait))| DestinationCount {
            netns,
            local,
            remote,
            used,
            time_wait,
            available: sysctls.get(&netns).copied().unwrap_or_default().ports_available(),
            sockets: Vec::new(),
        })
        .collect();
    let kept: HashMap<(u32, IpAddr, SocketAddr), usize> = out
        .iter()
        .enumerate()
        .filter(|(_, d)| d.ratio() >= keep_sockets_from)
        .map(|(i, d)| ((d.netns, d.local, d.remote), i))
        .collect();
    if !kept.is_empty() {
        for s in counted {
            if let Some(&i) = kept.get(&(s.netns, s.local.ip(), s.remote)) {
                let tuple = TupleKey { netns: s.netns, local: s.local, remote: s.remote };
                out[i].sockets.push((tuple, s.state));
            }
        }
    }
    out.sort_by(|a, b| {
        b.ratio()
            .total_cmp(&a.ratio())
            .then_with(|| (a.netns, a.local, a.remote).cmp(&(b.netns, b.local, b.remote)))
    });
    out
}

/// Each listed holder's share of its most pressed destination (`destinations` most pressed
/// first, as [`port_pressure`] returns them).
pub fn holds(destinations: &[Destination]) -> HashMap<ProcessKey, PortHold> {
    let mut out: HashMap<ProcessKey, PortHold> = HashMap::new();
    for d in destinations {
        for (rank, (process, held)) in d.holders.iter().enumerate() {
            out.entry(*process).or_insert(PortHold {
                remote: d.remote,
                used: d.used,
                available: d.available,
                held: *held,
                rank,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: u8, local: &str, remote: &str) -> ExistingSocket {
        ExistingSocket {
            netns: 1,
            family: 2,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode: 0,
            uid: 0,
            cookie: 0,
            rqueue: 0,
            wqueue: 0,
            info: None,
        }
    }

    const A: ProcessKey = ProcessKey { pid: 10, start_time_ns: 0 };
    const B: ProcessKey = ProcessKey { pid: 11, start_time_ns: 0 };

    fn ns(tw_reuse: u8) -> HashMap<u32, NetnsSysctls> {
        HashMap::from([(
            1,
            NetnsSysctls { port_range: (40000, 40099), tw_reuse, max_tw_buckets: 10 },
        )])
    }

    #[test]
    fn counts_ephemeral_ports_per_destination_with_time_wait_unless_reusable() {
        use tcp_state::*;
        let sockets = vec![
            sock(ESTABLISHED, "127.0.0.1:40001", "127.0.0.1:80"),
            sock(SYN_SENT, "127.0.0.1:40002", "127.0.0.1:80"),
            sock(TIME_WAIT, "127.0.0.1:40003", "127.0.0.1:80"),
            sock(TIME_WAIT, "127.0.0.1:40004", "127.0.0.1:80"),
            // Outside the range, and another destination.
            sock(ESTABLISHED, "127.0.0.1:50000", "127.0.0.1:80"),
            sock(ESTABLISHED, "127.0.0.1:40005", "127.0.0.1:81"),
            // A server's side of an inbound connection on a listening port within the range.
            sock(LISTEN, "0.0.0.0:40050", "0.0.0.0:0"),
            sock(ESTABLISHED, "127.0.0.1:40050", "127.0.0.1:40006"),
        ];
        let owner = |t: &TupleKey, state: u8| match (t.local.port(), state) {
            (_, TIME_WAIT) => Some(B),
            (40001 | 40002, _) => Some(A),
            _ => None,
        };
        let d = port_pressure(&sockets, &ns(0), owner);
        let to80 = d.iter().find(|d| d.remote.port() == 80).unwrap();
        assert_eq!((to80.used, to80.time_wait, to80.available), (4, 2, 100));
        assert_eq!(to80.holders, vec![(A, 2), (B, 2)]);
        assert_eq!(d.len(), 2, "inbound and out-of-range sockets hold no ephemeral port: {d:?}");
        // tcp_tw_reuse 2 on loopback: TIME_WAIT ports are free for the next connect.
        let d = port_pressure(&sockets, &ns(2), owner);
        let to80 = d.iter().find(|d| d.remote.port() == 80).unwrap();
        assert_eq!((to80.used, to80.time_wait), (2, 0));
        let h = holds(&d);
        assert_eq!(h[&A].rank, 0);
        assert!(!h.contains_key(&B));
        // Holders are named only for destinations at least as pressed as asked (2 of 100 are
        // not 10%): the ports are still counted.
        let counted = count_ports(&sockets, &ns(2), 0.1);
        let to80 = counted.iter().find(|d| d.remote.port() == 80).unwrap();
        assert_eq!((to80.used, to80.sockets.len()), (2, 0));
        let named = attribute(count_ports(&sockets, &ns(2), 0.02), owner);
        assert_eq!(named.iter().find(|d| d.remote.port() == 80).unwrap().holders, vec![(A, 2)]);
    }
}
