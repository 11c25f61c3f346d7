//! A minimal NETLINK_SOCK_DIAG client: dumps the TCP sockets (IPv4 and IPv6, every state) of
//! one network namespace, each with its queues and (for full sockets) its `tcp_info`.
//! Hand-written over libc: two fixed structs, one attribute walk and one dump loop do not
//! justify a netlink dependency.
use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::{Namespace, tcp_info::TcpInfo};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const ALL_STATES: u32 = 0xfff;
/// `INET_DIAG_INFO`: the attribute carrying `struct tcp_info`; requested with bit (type - 1)
/// of the request's `ext`.
const INET_DIAG_INFO: u16 = 2;

/// One socket as the kernel's diag interface reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingSocket {
    pub netns: u32,
    pub family: u8,
    /// `tracer_common::tcp_state` numbering.
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Socket inode (0 for sockets no longer attached to a file, such as TIME_WAIT).
    pub inode: u64,
    pub uid: u32,
    pub cookie: u64,
    /// Receive queue: bytes received and not yet read by the application (`ss` Recv-Q).
    pub rqueue: u32,
    /// Send queue: bytes written and not yet acknowledged by the peer (`ss` Send-Q).
    pub wqueue: u32,
    /// The kernel's `tcp_info`; `None` for TIME_WAIT and request sockets, which carry none.
    pub info: Option<TcpInfo>,
}

#[repr(C)]
#[derive(Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// Dumps TCP sockets of `ns` (entering it from a helper thread, so the daemon's own threads
/// never change namespace).
pub fn scan_namespace(ns: &Namespace) -> io::Result<Vec<ExistingSocket>> {
    let ns = ns.clone();
    std::thread::spawn(move || -> io::Result<Vec<ExistingSocket>> {
        let file = std::fs::File::open(&ns.path)?;
        // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sockets = dump(libc::AF_INET as u8, ns.inode)?;
        sockets.extend(dump(libc::AF_INET6 as u8, ns.inode)?);
        Ok(sockets)
    })
    .join()
    .map_err(|_| io::Error::other("sock_diag thread panicked"))?
}

fn dump(family: u8, netns: u32) -> io::Result<Vec<ExistingSocket>> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    #[repr(C)]
    struct Request {
        header: NlMsgHdr,
        body: InetDiagReqV2,
    }
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 1 << (INET_DIAG_INFO - 1),
            states: ALL_STATES,
            ..InetDiagReqV2::default()
        },
    };
    // SAFETY: sending a fully initialised #[repr(C)] struct of the stated size.
    let sent =
        unsafe { libc::send(fd.as_raw_fd(), (&raw const request).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut sockets = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into an owned buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse_messages(&buf[..n as usize], netns, &mut sockets)? == Dump::Done {
            return Ok(sockets);
        }
    }
}

/// Whether a dump goes on after one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dump {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` came: the dump is complete.
    Done,
}

/// Parses one datagram of a sock_diag dump (netlink messages, each 4-byte aligned), appending
/// the sockets it reports to `sockets`; an `NLMSG_ERROR` or a truncated message is an error.
pub fn parse_messages(
    datagram: &[u8],
    netns: u32,
    sockets: &mut Vec<ExistingSocket>,
) -> io::Result<Dump> {
    let mut rest = datagram;
    while rest.len() >= size_of::<NlMsgHdr>() {
        // SAFETY: length checked; read_unaligned copes with any alignment.
        let header: NlMsgHdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
        let len = header.len as usize;
        if len < size_of::<NlMsgHdr>() || len > rest.len() {
            return Err(io::Error::other("truncated netlink message"));
        }
        match header.kind {
            NLMSG_DONE => return Ok(Dump::Done),
            NLMSG_ERROR => {
                let code = rest
                    .get(size_of::<NlMsgHdr>()..size_of::<NlMsgHdr>() + 4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                // A negative errno; anything else (an acknowledgement, or a value no errno
                // negates to) is a protocol error, not a number to negate.
                let errno = code.checked_neg().filter(|e| *e > 0).unwrap_or(libc::EPROTO);
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                let payload = &rest[size_of::<NlMsgHdr>()..len];
                if payload.len() >= size_of::<InetDiagMsg>() {
                    // SAFETY: length checked; plain data.
                    let msg: InetDiagMsg =
                        unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
                    let attrs = &payload[size_of::<InetDiagMsg>()..];
                    sockets.push(convert(&msg, netns, info_attribute(attrs)));
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let advance = (len + 3) & !3;
        rest = rest.get(advance..).unwrap_or(&[]);
    }
    Ok(Dump::More)
}

/// The smallest message that reports a socket: a netlink header and an `inet_diag_msg`.
pub const INET_DIAG_MSG_BYTES: usize = size_of::<NlMsgHdr>() + size_of::<InetDiagMsg>();

/// The payload of the `INET_DIAG_INFO` attribute among those following `inet_diag_msg`
/// (each a 4-byte `rtattr` header, length then type, padded to 4 bytes).
pub fn info_attribute(mut attrs: &[u8]) -> Option<TcpInfo> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == INET_DIAG_INFO {
            return Some(TcpInfo::parse(&attrs[4..len]));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

fn convert(msg: &InetDiagMsg, netns: u32, info: Option<TcpInfo>) -> ExistingSocket {
    let ip = |raw: &[u8; 16]| -> IpAddr {
        if msg.family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*raw))
        }
    };
    ExistingSocket {
        netns,
        family: msg.family,
        state: msg.state,
        local: SocketAddr::new(ip(&msg.id.src), u16::from_be_bytes(msg.id.sport)),
        remote: SocketAddr::new(ip(&msg.id.dst), u16::from_be_bytes(msg.id.dport)),
        inode: u64::from(msg.inode),
        uid: msg.uid,
        cookie: u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32),
        rqueue: msg.rqueue,
        wqueue: msg.wqueue,
        info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn own_namespace() -> Namespace {
        let ns_path = std::path::PathBuf::from("/proc/self/ns/net");
        Namespace { inode: std::fs::metadata(&ns_path).expect("ns").ino() as u32, path: ns_path }
    }

    /// A netlink message header of `len` bytes and `kind`, then `payload`.
    fn message(len: u32, kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(len.to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend([0u8; 10]);
        out.extend(payload);
        out
    }

    #[test]
    fn a_datagram_ends_the_dump_or_says_why_not() {
        let mut sockets = Vec::new();
        let done = message(20, NLMSG_DONE, &[0; 4]);
        assert_eq!(parse_messages(&done, 1, &mut sockets).ok(), Some(Dump::Done));
        let error = |code: i32| {
            let m = message(20, NLMSG_ERROR, &code.to_ne_bytes());
            parse_messages(&m, 1, &mut Vec::new()).err().and_then(|e| e.raw_os_error())
        };
        assert_eq!(error(-libc::EINVAL), Some(libc::EINVAL));
        // An acknowledgement, or a code that negates to no errno (the fuzz target's find:
        // `-i32::MIN` overflowed): a protocol error, never a panic.
        assert_eq!(error(0), Some(libc::EPROTO));
        assert_eq!(error(i32::MIN), Some(libc::EPROTO));
        assert!(parse_messages(&message(64, NLMSG_DONE, &[]), 1, &mut sockets).is_err());
        assert_eq!(parse_messages(&[], 1, &mut sockets).ok(), Some(Dump::More));
        assert!(sockets.is_empty());
    }

    #[test]
    fn attributes_are_walked_to_the_info_one() {
        let mut attrs = Vec::new();
        // An unrelated 5-byte attribute (padded to 8), then INET_DIAG_INFO with 136 bytes.
        attrs.extend(9u16.to_ne_bytes());
        attrs.extend(1u16.to_ne_bytes());
        attrs.extend([7, 7, 7, 7, 7, 0, 0, 0]);
        let mut info = vec![0u8; 136];
        info[128..136].copy_from_slice(&77u64.to_ne_bytes());
        attrs.extend((4 + info.len() as u16).to_ne_bytes());
        attrs.extend(INET_DIAG_INFO.to_ne_bytes());
        attrs.extend(&info);
        assert_eq!(info_attribute(&attrs).and_then(|i| i.bytes_received), Some(77));
        assert_eq!(info_attribute(&attrs[..12]), None, "no info attribute");
        assert_eq!(info_attribute(&attrs[..20]), None, "a truncated attribute is not read");
    }

    /// Unsent and unread data on a real loopback connection, as the dump reports it.
    #[test]
    fn reports_queues_and_tcp_info_of_a_live_connection() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        // The server reads 1000 of 5000 bytes: 4000 wait unread in its receive queue.
        client.write_all(&[1u8; 5000]).expect("write");
        let mut got = [0u8; 1000];
        server.read_exact(&mut got).expect("read");
        let client_local = client.local_addr().expect("local");
        let find = |sockets: &[ExistingSocket], local, remote| {
            sockets.iter().find(|s| s.local == local && s.remote == remote).cloned()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (client_side, server_side) = loop {
            let sockets = scan_namespace(&own_namespace()).expect("dump");
            let c = find(&sockets, client_local, addr).expect("client listed");
            let s = find(&sockets, addr, client_local).expect("server listed");
            // Wait for the ack of all 5000 bytes (loopback: immediate, but not synchronous).
            if c.wqueue == 0 || std::time::Instant::now() > deadline {
                break (c, s);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(server_side.rqueue, 4000, "unread bytes");
        let s = server_side.info.expect("tcp_info of a full socket");
        assert_eq!(s.bytes_received, Some(5000));
        assert_eq!(client_side.wqueue, 0);
        let c = client_side.info.expect("tcp_info");
        // bytes_acked counts the SYN's sequence number too (the kernel starts it at 1).
        assert_eq!(c.bytes_acked.map(|b| b.saturating_sub(1)), Some(5000));
        assert!(c.rtt_us.is_some_and(|r| r > 0));
        assert!(c.idle_ms().is_some_and(|ms| ms < 5000));
    }

    #[test]
    fn finds_a_live_connection_with_its_inode_and_state() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let ns_path = std::path::PathBuf::from("/proc/self/ns/net");
        let ns = Namespace {
            inode: std::fs::metadata(&ns_path).expect("ns").ino() as u32,
            path: ns_path,
        };
        let sockets = scan_namespace(&ns).expect("sock_diag dump");
        let local = client.local_addr().expect("local");
        // Match the whole tuple: a TIME_WAIT left by other tests may share the local port.
        let found = sockets
            .iter()
            .find(|s| s.local == local && s.remote == addr)
            .expect("client socket listed");
        assert_eq!(found.state, tracer_common::tcp_state::ESTABLISHED);
        assert_eq!(found.netns, ns.inode);
        // The inode is the one /proc/self/fd shows for the client's descriptor.
        use std::os::fd::AsRawFd;
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", client.as_raw_fd())).expect("fd link");
        assert_eq!(link.to_string_lossy(), format!("socket:[{}]", found.inode));
        assert!(
            sockets.iter().any(|s| s.local == addr && s.state == tracer_common::tcp_state::LISTEN)
        );
    }
}
