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

    /// Hands the work due to a blocking task, unless one is out already.
    pub(super) fn launch(&mut self, table: &ConnectionTable, directory: &Directory) {
        if self.resolver.is_none() {
            return;
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
            return;
        }
        let Some(mut resolver) = self.resolver.take() else { return };
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
        }
    }
}
