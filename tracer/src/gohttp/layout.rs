//! The Go object fields the probe follows from `*persistConn` to the socket's descriptor, and
//! their offsets: read from a binary's DWARF, or from the tables below for binaries built
//! without it (`-w`).

use super::buildinfo::GoVersion;

/// One struct member the chain reads: (Go type name as in DWARF, member name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoField {
    pub type_name: &'static str,
    pub member: &'static str,
}

const fn field(type_name: &'static str, member: &'static str) -> GoField {
    GoField { type_name, member }
}

/// `net/http.persistConn.conn`: the connection, an interface `net.Conn` (itab, data).
pub const PERSIST_CONN_CONN: GoField = field("net/http.persistConn", "conn");
/// `net/http.persistConn.tlsState`: non-nil exactly when `conn` is a `*crypto/tls.Conn`
/// (set by `Transport.dialConn` for HTTPS, with or without a custom TLS dialer).
pub const PERSIST_CONN_TLS_STATE: GoField = field("net/http.persistConn", "tlsState");
/// `runtime.iface.data`: the pointer word of an interface value.
pub const IFACE_DATA: GoField = field("runtime.iface", "data");
/// `crypto/tls.Conn.conn`: the connection under TLS, again a `net.Conn`.
pub const TLS_CONN_CONN: GoField = field("crypto/tls.Conn", "conn");
/// `net.TCPConn.conn`: the embedded `net.conn`.
pub const TCP_CONN_CONN: GoField = field("net.TCPConn", "conn");
/// `net.conn.fd`: a `*net.netFD`.
pub const CONN_FD: GoField = field("net.conn", "fd");
/// `net.netFD.pfd`: the embedded `internal/poll.FD`.
pub const NET_FD_PFD: GoField = field("net.netFD", "pfd");
/// `internal/poll.FD.Sysfd`: the descriptor (a Go `int`).
pub const POLL_FD_SYSFD: GoField = field("internal/poll.FD", "Sysfd");

/// Every field of [`ConnOffsets`], in its order.
pub const FIELDS: [GoField; 8] = [
    PERSIST_CONN_CONN,
    PERSIST_CONN_TLS_STATE,
    IFACE_DATA,
    TLS_CONN_CONN,
    TCP_CONN_CONN,
    CONN_FD,
    NET_FD_PFD,
    POLL_FD_SYSFD,
];

/// The byte offsets of [`FIELDS`] on 64-bit targets. The chain, from the receiver `pc` of
/// `(*persistConn).roundTrip` (every step a pointer-sized read of user memory):
///
/// ```text
/// c  = *(pc + persist_conn_conn + iface_data)         // net.Conn's data word
/// if *(pc + persist_conn_tls_state) != 0 {            // HTTPS: c is a *tls.Conn
///     c = *(c + tls_conn_conn + iface_data)           // its inner net.Conn's data word
/// }
/// fd = *(c + tcp_conn_conn + conn_fd)                 // *net.TCPConn -> *net.netFD
/// sysfd = *(fd + net_fd_pfd + poll_fd_sysfd)          // the descriptor (int)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnOffsets {
    pub persist_conn_conn: u64,
    pub persist_conn_tls_state: u64,
    pub iface_data: u64,
    pub tls_conn_conn: u64,
    pub tcp_conn_conn: u64,
    pub conn_fd: u64,
    pub net_fd_pfd: u64,
    pub poll_fd_sysfd: u64,
}

impl ConnOffsets {
    /// The offsets in [`FIELDS`] order.
    pub fn to_array(self) -> [u64; 8] {
        [
            self.persist_conn_conn,
            self.persist_conn_tls_state,
            self.iface_data,
            self.tls_conn_conn,
            self.tcp_conn_conn,
            self.conn_fd,
            self.net_fd_pfd,
            self.poll_fd_sysfd,
        ]
    }

    /// From offsets in [`FIELDS`] order.
    pub fn from_array(a: [u64; 8]) -> Self {
        ConnOffsets {
            persist_conn_conn: a[0],
            persist_conn_tls_state: a[1],
            iface_data: a[2],
            tls_conn_conn: a[3],
            tcp_conn_conn: a[4],
            conn_fd: a[5],
            net_fd_pfd: a[6],
            poll_fd_sysfd: a[7],
        }
    }

    /// Follows the chain in a process's memory from the receiver `persist_conn`, as the probe
    /// does: each `net.Conn` on the way must be a `*net.TCPConn` (its itab's first method at
    /// `tcp_conn_close`). `read(addr)` reads one 8-byte little-endian word. `None` when a read
    /// fails, a pointer is nil or a connection is of another type.
    pub fn follow(
        &self,
        persist_conn: u64,
        tcp_conn_close: u64,
        read: impl Fn(u64) -> Option<u64>,
    ) -> Option<i64> {
        let deref = |addr: u64| read(addr).filter(|&p| p != 0);
        let mut iface = persist_conn.checked_add(self.persist_conn_conn)?;
        if read(persist_conn.checked_add(self.persist_conn_tls_state)?)? != 0 {
            let tls = deref(iface.checked_add(self.iface_data)?)?;
            iface = tls.checked_add(self.tls_conn_conn)?;
        }
        let itab = deref(iface)?;
        if read(itab.checked_add(tracer_common::stacks::GO_ITAB_FIRST_METHOD)?)? != tcp_conn_close {
            return None;
        }
        let conn = deref(iface.checked_add(self.iface_data)?)?;
        let fd = deref(conn.checked_add(self.tcp_conn_conn + self.conn_fd)?)?;
        read(fd.checked_add(self.net_fd_pfd + self.poll_fd_sysfd)?).map(|v| v as i64)
    }
}

/// A range of Go minor releases (`go1.<first>` to `go1.<last>`, every patch release) whose
/// layouts of [`FIELDS`] are equal and were checked against the DWARF of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinorRange {
    pub first: u32,
    pub last: u32,
}

/// The layout of Go 1.19, 1.22 and 1.27 (read from each one's DWARF by the tests): none of the
/// chain's structs changed before the fields it reads (`persistConn` gained fields only after
/// `tlsState`; between 1.19 and 1.22 `tls.Conn` gained `quic` after `conn` and `poll.FD` gained
/// `SysFile` after `Sysfd`).
const LAYOUT_1: ConnOffsets = ConnOffsets {
    persist_conn_conn: 80,
    persist_conn_tls_state: 96,
    iface_data: 8,
    tls_conn_conn: 0,
    tcp_conn_conn: 0,
    conn_fd: 0,
    net_fd_pfd: 0,
    poll_fd_sysfd: 16,
};

/// The offset tables for amd64 binaries without DWARF, by Go minor release. Only releases whose
/// DWARF the tests compared are listed: a release in between is not assumed to match (its
/// sources may differ); add it as docs/stacks.md describes.
pub const TABLES: &[(MinorRange, ConnOffsets)] = &[
    (MinorRange { first: 19, last: 19 }, LAYOUT_1),
    (MinorRange { first: 22, last: 22 }, LAYOUT_1),
    (MinorRange { first: 27, last: 27 }, LAYOUT_1),
];

/// The table entry for `version`, if there is one.
pub fn table_for(version: GoVersion) -> Option<ConnOffsets> {
    if version.major != 1 {
        return None;
    }
    TABLES
        .iter()
        .find(|(range, _)| (range.first..=range.last).contains(&version.minor))
        .map(|&(_, offsets)| offsets)
}
