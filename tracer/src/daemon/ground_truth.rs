//! The kernel's own view of TCP sockets, shaped for the table: sock_diag in every namespace,
//! holders from /proc, direction from the namespace's listening ports.
use std::collections::{HashMap, HashSet};

use tracer_common::tcp_state;

use crate::{
    scan,
    table::{Direction, ProcessKey, ScannedHolder, ScannedSocket},
};

/// One full scan. Blocking (it walks /proc): run it off the event loop.
pub fn scan_kernel() -> std::io::Result<Vec<ScannedSocket>> {
    let sockets = scan::scan_all()?;
    let holders = scan::scan_holders();
    let listening: HashSet<(u32, u16)> = sockets
        .iter()
        .filter(|s| s.state == tcp_state::LISTEN)
        .map(|s| (s.netns, s.local.port()))
        .collect();
    let holders_of =
        |inode: u64, by_inode: &HashMap<u64, Vec<scan::Holder>>| -> Vec<ScannedHolder> {
            let mut list: Vec<ScannedHolder> = by_inode
                .get(&inode)
                .into_iter()
                .flatten()
                .map(|h| ScannedHolder {
                    key: ProcessKey::new(h.pid, h.start_time_ns),
                    comm: comm_bytes(&h.comm),
                })
                .collect();
            list.sort_by_key(|h| h.key.pid);
            list
        };
    Ok(sockets
        .into_iter()
        .filter(|s| s.state != tcp_state::LISTEN)
        .map(|s| ScannedSocket {
            netns: s.netns,
            inode: s.inode,
            cookie: s.cookie,
            direction: if listening.contains(&(s.netns, s.local.port())) {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
            holders: if s.inode == 0 { Vec::new() } else { holders_of(s.inode, &holders) },
            local: s.local,
            remote: s.remote,
            state: s.state,
        })
        .collect())
}

fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bytes = comm.as_bytes();
    let n = bytes.len().min(15);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}
