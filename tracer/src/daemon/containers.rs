//! Fills the daemon's [`Directory`] off the event loop: nothing runs per event. Each
//! housekeeping tick (and after each leak evaluation) collects the table's cgroup ids not yet
//! resolved, the containers whose names the node may still write, and the resolved ids no
//! process uses any more; one blocking task resolves, renames and checks them, and the loop
//! applies the result.
use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;

use crate::{
    containers::{Directory, Placement, Resolver, ResolverStatus, Sources},
    table::ConnectionTable,
};

/// How many times a container's names are read again while the kubelet has not linked its log
/// yet (once per tick: about half a minute), before they stay unknown.
pub(super) const NAME_ATTEMPTS: u32 = 30;

/// What one blocking task did.
pub(super) struct Landed {
    resolver: Resolver,
    placements: Vec<(u64, Placement)>,
    /// Unused ids whose directory is gone.
    gone: Vec<u64>,
}

pub(super) struct Resolution {
    /// `None` while a task has it, or when there is no cgroup2 mount.
    resolver: Option<Resolver>,
    cgroup_root: Option<String>,
    tx: mpsc::UnboundedSender<Landed>,
    /// Name lookups done per container id still missing names.
    name_attempts: HashMap<u64, u32>,
    resolved: u64,
    misses: u64,
    containers: u64,
    walks: u64,
}

impl Resolution {
    /// Results come back on `tx`, for the event loop to hand to [`Self::landed`].
    pub(super) fn start(sources: &Sources, tx: mpsc::UnboundedSender<Landed>) -> Self {
        let resolver = match Resolver::from_sources(sources) {
            Ok(resolver) => {
                log::info!("cgroup2 mount: {}", resolver.cgroup_root().display());
                Some(resolver)
            }
            Err(e) => {
                log::warn!("{e}");
                None
            }
        };
        let cgroup_root = resolver.as_ref().map(|r| r.cgroup_root().display().to_string());
        Self {
            resolver,
            cgroup_root,
            tx,
            name_attempts: HashMap::new(),
            resolved: 0,
            misses: 0,
            containers: 0,
            walks: 0,
        }
    }

    /// Hands the work due to a blocking task, unless one is out already or nothing is due.
    /// True when a task was launched.
    pub(super) fn launch(&mut self, table: &ConnectionTable, directory: &Directory) -> bool {
        if self.resolver.is_none() {
            return false;
        }
        let used: HashSet<u64> =
            table.processes().map(|p| p.cgroup_id).filter(|id| *id != 0).collect();
        let mut ids: Vec<u64> =
            used.iter().copied().filter(|id| !directory.contains(*id)).collect();
        ids.extend(directory.iter().filter_map(|(id, p)| {
            let due = p.names_pending()
                && self.name_attempts.get(&id).copied().unwrap_or(0) < NAME_ATTEMPTS;
            due.then_some(id)
        }));
        let unused: Vec<(u64, bool)> = directory
            .iter()
            .filter(|(id, _)| !used.contains(id))
            .map(|(id, p)| (id, p.cgroup.is_none()))
            .collect();
        if ids.is_empty() && unused.is_empty() {
            return false;
        }
        let Some(mut resolver) = self.resolver.take() else { return false };
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let placements = resolver.resolve_many(&ids);
            // An id never found has nothing to wait for; a found one goes with its directory.
            let gone = unused
                .into_iter()
                .filter(|(id, unknown)| *unknown || resolver.gone(*id))
                .map(|(id, _)| id)
                .collect();
            resolver.forget_gone();
            let _ = tx.send(Landed { resolver, placements, gone });
        });
        true
    }

    /// Takes a task's result into the directory. A gone id is dropped only if no process took
    /// it up meanwhile.
    pub(super) fn landed(
        &mut self,
        landed: Landed,
        table: &ConnectionTable,
        directory: &mut Directory,
    ) {
        let Landed { resolver, placements, gone } = landed;
        self.walks = resolver.walks();
        self.resolver = Some(resolver);
        for (id, placement) in placements {
            if directory.contains(id) {
                *self.name_attempts.entry(id).or_default() += 1;
            } else if placement.cgroup.is_none() {
                self.misses += 1;
            } else {
                self.resolved += 1;
                self.containers += u64::from(placement.container.is_some());
            }
            if !placement.names_pending() {
                self.name_attempts.remove(&id);
            }
            directory.insert(id, placement);
        }
        if !gone.is_empty() {
            let used: HashSet<u64> = table.processes().map(|p| p.cgroup_id).collect();
            for id in gone.into_iter().filter(|id| !used.contains(id)) {
                directory.remove(id);
                self.name_attempts.remove(&id);
            }
        }
    }

    pub(super) fn status(&self, directory: &Directory) -> ResolverStatus {
        ResolverStatus {
            cgroup_root: self.cgroup_root.clone(),
            resolved: self.resolved,
            misses: self.misses,
            containers: self.containers,
            walks: self.walks,
            cached: directory.len() as u64,
            names_pending: directory
                .iter()
                .filter(|(id, p)| {
                    p.names_pending()
                        && self.name_attempts.get(id).copied().unwrap_or(0) < NAME_ATTEMPTS
                })
                .count() as u64,
            // The probes know it; the status query fills it in.
            scanned_cgroup_ids_unavailable: None,
        }
    }
}

#[cfg(test)]
mod tests {

    use std::os::unix::fs::MetadataExt;

    use tracer_common::{ConnEvent, EventKind, flags, tcp_state};

    use super::*;
    use crate::table::TableConfig;

    /// A process of `cgroup_id` starting a connect: the table now counts it.
    fn connect_from(table: &mut ConnectionTable, pid: u32, cgroup_id: u64) {
        let event = ConnEvent {
            timestamp_ns: 1,
            sock: u64::from(pid),
            start_time_ns: 1,
            cgroup_id,
            netns: 1,
            tgid: pid,
            tid: pid,
            tuple: tracer_common::Tuple::default(),
            kind: EventKind::Connect as u8,
            flags: flags::OWNER_CONTEXT,
            old_state: tcp_state::CLOSE,
            new_state: tcp_state::SYN_SENT,
            comm: [b'x'; 16],
            error: 0,
            _pad: 0,
            bytes_received: 0,
            bytes_acked: 0,
            socket_inode: 0,
        };
        table.apply(&event);
    }

    async fn round(
        resolution: &mut Resolution,
        rx: &mut mpsc::UnboundedReceiver<Landed>,
        table: &ConnectionTable,
        directory: &mut Directory,
    ) {
        assert!(resolution.launch(table, directory), "work was due");
        let landed = rx.recv().await.expect("the task reports back");
        resolution.landed(landed, table, directory);
    }

    #[tokio::test]
    async fn resolves_new_ids_off_the_loop_and_drops_unused_gone_ones() {
        // A directory tree stands in for the cgroup2 mount (ids are inode numbers).
        let root = std::env::temp_dir().join(format!("tracer-resolution-{}", std::process::id()));
        let _cleanup = crate::containers::TempTree(root.clone());
        let (used_dir, gone_dir) = (root.join("system.slice/a.service"), root.join("b.scope"));
        std::fs::create_dir_all(&used_dir).unwrap();
        std::fs::create_dir_all(&gone_dir).unwrap();
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        let (used, gone) = (ino(&used_dir), ino(&gone_dir));
        let sources = Sources { cgroup_root: Some(root.clone()), ..Sources::default() };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut resolution = Resolution::start(&sources, tx);
        let mut table = ConnectionTable::new(TableConfig::default());
        let mut directory = Directory::default();
        connect_from(&mut table, 10, used);
        connect_from(&mut table, 11, gone);
        round(&mut resolution, &mut rx, &table, &mut directory).await;
        let placement = directory.get(used).expect("resolved");
        assert_eq!(placement.cgroup.as_deref(), Some("/system.slice/a.service"));
        assert_eq!(placement.unit.as_deref(), Some("a.service"));
        assert!(directory.contains(gone));
        let status = resolution.status(&directory);
        assert_eq!((status.resolved, status.misses, status.walks, status.cached), (2, 0, 1, 2));

        // Its directory goes, but a process still has the id: nothing to do.
        std::fs::remove_dir(&gone_dir).unwrap();
        assert!(!resolution.launch(&table, &directory));
        // No process has it any more: dropped.
        let table = ConnectionTable::new(TableConfig::default());
        round(&mut resolution, &mut rx, &table, &mut directory).await;
        assert!(!directory.contains(gone));
        assert!(directory.contains(used), "an unused id stays while its directory exists");
        assert_eq!(resolution.status(&directory).cached, 1);
    }
}
