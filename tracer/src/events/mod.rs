//! Event decoding: ring buffer bytes to [`ConnEvent`], and the small views that make an event
//! readable (endpoints, states, command names). No allocation on the decode path.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tracer_common::{AF_INET, ConnEvent, EventKind, Tuple, tcp_state};

/// Decodes one ring buffer record; `None` for a record of the wrong size (a build mismatch
/// between the kernel object and this binary), which the caller counts. `comm` comes out
/// NUL-padded, so that equal names are equal keys.
#[inline]
pub fn decode(bytes: &[u8]) -> Option<ConnEvent> {
    if bytes.len() < ConnEvent::SIZE {
        return None;
    }
    // SAFETY: ConnEvent is #[repr(C)] plain data valid for any bytes, and the length was
    // checked; read_unaligned places no alignment requirement on the source.
    let mut event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ConnEvent>()) };
    clear_after_nul(&mut event.comm);
    Some(event)
}

/// The kernel copies comm whole: after its NUL may be what is left of a longer earlier name
/// (kernels that do not clear it on rename).
fn clear_after_nul(comm: &mut [u8; 16]) {
    if let Some(end) = comm.iter().position(|&b| b == 0) {
        comm[end..].fill(0);
    }
}

pub fn local_endpoint(tuple: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(tuple.family, &tuple.local_addr), tuple.local_port)
}

pub fn remote_endpoint(tuple: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(tuple.family, &tuple.remote_addr), tuple.remote_port)
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == u16::from(AF_INET) {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// The NUL-padded command name as text (lossy: comm is bytes, not necessarily UTF-8).
pub fn comm_str(comm: &[u8; 16]) -> std::borrow::Cow<'_, str> {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len])
}

/// Lower-case state names as `ss` prints them, with `_` for `-`.
pub fn state_name(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "established",
        tcp_state::SYN_SENT => "syn_sent",
        tcp_state::SYN_RECV => "syn_recv",
        tcp_state::FIN_WAIT1 => "fin_wait1",
        tcp_state::FIN_WAIT2 => "fin_wait2",
        tcp_state::TIME_WAIT => "time_wait",
        tcp_state::CLOSE => "close",
        tcp_state::CLOSE_WAIT => "close_wait",
        tcp_state::LAST_ACK => "last_ack",
        tcp_state::LISTEN => "listen",
        tcp_state::CLOSING => "closing",
        tcp_state::NEW_SYN_RECV => "new_syn_recv",
        _ => "unknown",
    }
}

/// Every name [`state_name`] gives, in TCP state order (`unknown` last).
pub fn state_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for state in (1..=u8::MAX).chain([0]) {
        let name = state_name(state);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// One-line human rendering, for debug logs.
pub struct Display<'a>(pub &'a ConnEvent);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        let kind = e.kind().map_or("invalid", EventKind::name);
        write!(
            f,
            "{kind} sock={:#x} {} -> {} {}->{}",
            e.sock,
            local_endpoint(&e.tuple),
            remote_endpoint(&e.tuple),
            state_name(e.old_state),
            state_name(e.new_state),
        )?;
        if e.in_owner_context() {
            write!(f, " pid={} tid={} comm={}", e.tgid, e.tid, comm_str(&e.comm))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::AF_INET6;

    fn event() -> ConnEvent {
        ConnEvent {
            timestamp_ns: 1,
            sock: 0xffff_8880_0000_1000,
            start_time_ns: 0,
            cgroup_id: 0,
            netns: 4026531840,
            tgid: 0,
            tid: 0,
            tuple: Tuple::default(),
            kind: EventKind::Established as u8,
            flags: 0,
            old_state: tcp_state::SYN_SENT,
            new_state: tcp_state::ESTABLISHED,
            comm: [0; 16],
            error: 0,
            _pad: 0,
            bytes_received: 0,
            bytes_acked: 0,
            socket_inode: 0,
        }
    }

    #[test]
    fn decode_round_trips_and_rejects_short_records() {
        let e = event();
        // SAFETY: viewing plain data as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const e).cast::<u8>(), ConnEvent::SIZE) };
        let back = decode(bytes).expect("full record");
        assert_eq!(back.sock, e.sock);
        assert_eq!(back.kind(), Some(EventKind::Established));
        assert!(decode(&bytes[..ConnEvent::SIZE - 1]).is_none());
    }

    #[test]
    fn decode_clears_what_follows_the_nul_of_comm() {
        let mut e = event();
        e.comm = *b"sh\0old-long-name";
        // SAFETY: viewing plain data as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const e).cast::<u8>(), ConnEvent::SIZE) };
        let back = decode(bytes).expect("full record");
        assert_eq!(back.comm, *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    }

    #[test]
    fn endpoints_render_like_ss() {
        let mut t = Tuple {
            family: AF_INET.into(),
            local_port: 8080,
            remote_port: 40000,
            ..Tuple::default()
        };
        t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.remote_addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(local_endpoint(&t).to_string(), "127.0.0.1:8080");
        assert_eq!(remote_endpoint(&t).to_string(), "10.1.2.3:40000");
        let mut t6 = Tuple { family: AF_INET6.into(), local_port: 443, ..Tuple::default() };
        t6.local_addr[15] = 1;
        assert_eq!(local_endpoint(&t6).to_string(), "[::1]:443");
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        assert_eq!(comm_str(&comm), "nginx");
        assert_eq!(comm_str(&[b'x'; 16]), "x".repeat(16));
    }
}
