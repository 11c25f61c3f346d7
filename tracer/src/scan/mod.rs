//! Ground truth from the kernel's own tables, for start-up and periodic reconcile:
//! every TCP socket in every network namespace the daemon can see (NETLINK_SOCK_DIAG, entered
//! with setns), and which processes hold each one (`/proc/<pid>/fd` socket inodes).
pub mod holders;
pub mod sock_diag;

pub use holders::{Holder, scan_holders};
pub use sock_diag::{ExistingSocket, scan_namespace};

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt};

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
    let mut all = Vec::new();
    for ns in namespaces() {
        match scan_namespace(&ns) {
            Ok(sockets) => all.extend(sockets),
            Err(e) => log::debug!("skipping netns {} ({}): {e}", ns.inode, ns.path.display()),
        }
    }
    Ok(all)
}
