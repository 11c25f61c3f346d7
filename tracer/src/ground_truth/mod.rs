//! Ground truth: the kernel's own view of TCP sockets, for the start-up load and the periodic
//! reconcile. Every TCP socket in every network namespace the daemon can see
//! (NETLINK_SOCK_DIAG, entered with setns), which processes hold each one (`/proc/<pid>/fd`
//! socket inodes), and its direction (from the namespace's listening ports), shaped as the
//! table's [`ScannedSocket`]s. The table decides what to do with them
//! (`table::ConnectionTable::load_existing`, `table::Reconciler`).
pub mod holders;
pub mod sock_diag;
pub mod sysctl;
pub mod tcp_info;

pub use holders::{Holder, scan_holders};
pub use sock_diag::{ExistingSocket, scan_namespace};
pub use tcp_info::TcpInfo;

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
};

use tracer_common::tcp_state;

use crate::table::{Direction, KernelSockets, ProcessKey, ScannedHolder, ScannedSocket};

/// A network namespace, by inode, with a path that opens it.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub inode: u32,
    pub path: std::path::PathBuf,
}

/// Every distinct network namespace some process is in (the daemon's own first).
pub fn namespaces() -> Vec<Namespace> {
    let mut found: HashMap<u32, Namespace> = HashMap::new();
    let own = std::path::PathBuf::from("/proc/self/ns/net");
    if let Ok(meta) = fs::metadata(&own) {
        found.insert(meta.ino() as u32, Namespace { inode: meta.ino() as u32, path: own });
    }
    for pid in holders::pids() {
        let path = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Ok(meta) = fs::metadata(&path) {
            found.entry(meta.ino() as u32).or_insert(Namespace { inode: meta.ino() as u32, path });
        }
    }
    let mut list: Vec<Namespace> = found.into_values().collect();
    list.sort_by_key(|ns| ns.inode);
    list
}

/// All TCP sockets of all namespaces, tagged with their namespace inode. Namespaces that
/// vanish mid-scan are skipped.
pub fn scan_all() -> std::io::Result<Vec<ExistingSocket>> {
    scan_all_and(|_| {})
}

/// [`scan_all`], calling `also` on each namespace in the same walk (for readings that ride
/// along with the dump, such as per-namespace sysctls).
pub fn scan_all_and(mut also: impl FnMut(&Namespace)) -> std::io::Result<Vec<ExistingSocket>> {
    let mut all = Vec::new();
    for ns in namespaces() {
        match scan_namespace(&ns) {
            Ok(sockets) => all.extend(sockets),
            Err(e) => log::debug!("skipping netns {} ({}): {e}", ns.inode, ns.path.display()),
        }
        also(&ns);
    }
    Ok(all)
}

/// One full scan. Blocking (it walks /proc): run it off the event loop.
pub fn scan_kernel() -> std::io::Result<KernelSockets> {
    Ok(with_holders(&scan_all()?))
}

/// The sockets of a dump ([`scan_all`]) as the table's [`ScannedSocket`]s, with their holders
/// from /proc, and the holders of the sockets the dump did not list (blocking: run it off the
/// event loop). Listeners are left out.
pub fn with_holders(sockets: &[ExistingSocket]) -> KernelSockets {
    let mut holders = scan_holders();
    let listening: HashSet<(u32, u16)> = sockets
        .iter()
        .filter(|s| s.state == tcp_state::LISTEN)
        .map(|s| (s.netns, s.local.port()))
        .collect();
    let scanned = |list: Vec<Holder>| -> Vec<ScannedHolder> {
        let mut list: Vec<ScannedHolder> = list
            .into_iter()
            .map(|h| ScannedHolder {
                key: ProcessKey::new(h.pid, h.start_time_ns),
                comm: comm_bytes(&h.comm),
                cgroup_id: 0,
            })
            .collect();
        list.sort_by_key(|h| h.key.pid);
        list
    };
    let listed = sockets
        .iter()
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
            holders: match s.inode {
                0 => Vec::new(),
                inode => holders.remove(&inode).map(&scanned).unwrap_or_default(),
            },
            local: s.local,
            remote: s.remote,
            state: s.state,
        })
        .collect();
    // Listeners' inodes are still in `holders`: harmless, the table never asks for them.
    let unlisted = holders.into_iter().map(|(inode, list)| (inode, scanned(list))).collect();
    KernelSockets { listed, unlisted }
}

/// Gives each holder of `scan` its cgroup v2 id from a run of the task iterator. A holder the
/// run did not see (started after it, or a pid reused since) keeps 0, unknown.
pub fn set_cgroup_ids(scan: &mut KernelSockets, ids: &crate::probes::CgroupIds) {
    let listed = scan.listed.iter_mut().flat_map(|s| s.holders.iter_mut());
    for holder in listed.chain(scan.unlisted.values_mut().flatten()) {
        holder.cgroup_id = ids.get(&holder.key).copied().unwrap_or(0);
    }
}

fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bytes = comm.as_bytes();
    let n = bytes.len().min(15);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::CgroupIds;

    fn socket(holders: &[ProcessKey]) -> ScannedSocket {
        ScannedSocket {
            netns: 1,
            inode: 10,
            cookie: 10,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            state: tcp_state::ESTABLISHED,
            direction: Direction::Outbound,
            holders: holders
                .iter()
                .map(|&key| ScannedHolder { key, comm: [0; 16], cgroup_id: 5 })
                .collect(),
        }
    }

    #[test]
    fn holders_take_the_cgroup_of_the_very_process_a_reused_pid_none() {
        let (a, b) = (ProcessKey::new(100, 1_000_000_000), ProcessKey::new(200, 2_000_000_000));
        // The run saw pid 200 as another process (started at another time): a reused pid.
        let ids: CgroupIds =
            [(a, 4321), (ProcessKey::new(200, 9_000_000_000), 99)].into_iter().collect();
        let mut scan = KernelSockets { listed: vec![socket(&[a, b])], ..Default::default() };
        set_cgroup_ids(&mut scan, &ids);
        let got: Vec<u64> = scan.listed[0].holders.iter().map(|h| h.cgroup_id).collect();
        assert_eq!(got, [4321, 0], "an unseen holder is unknown (0), never another's id");
    }
}
