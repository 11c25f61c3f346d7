//! The cgroup ids of processes known only from scans, from the task iterator
//! (probes::task_cgroups): started on the event loop (attaching a link is two syscalls), read
//! where the scan's /proc walk runs (at start-up, and in reconcile's blocking task).
use std::{fs::File, time::Instant};

use crate::{
    ground_truth,
    probes::{Probes, TaskCgroupsError, read_task_cgroups},
    table::KernelSockets,
};

/// Starts a run; `None` (said in the log) when the iterator is unavailable or fails.
pub(super) fn start(probes: &mut Probes) -> Option<File> {
    match probes.start_task_cgroups() {
        Ok(file) => Some(file),
        // Said once, at start-up (`status_line`).
        Err(TaskCgroupsError::Unavailable(_)) => None,
        Err(e) => {
            log::warn!("{e}; scanned processes keep cgroup id 0 (unknown) this time");
            None
        }
    }
}

/// Reads a run (blocking) and gives the holders of `scan` their cgroup ids.
pub(super) fn apply(run: Option<File>, scan: &mut KernelSockets) {
    let Some(file) = run else { return };
    let started = Instant::now();
    match read_task_cgroups(file) {
        Ok(ids) => {
            ground_truth::set_cgroup_ids(scan, &ids);
            log::debug!(
                "task iterator: cgroup ids of {} processes in {:.1} ms",
                ids.len(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        Err(e) => log::warn!("{e}; scanned processes keep cgroup id 0 (unknown) this time"),
    }
}

/// The start-up log line on where scanned processes' cgroup ids come from.
pub(super) fn log_status(probes: &Probes) {
    match probes.task_cgroups_unavailable() {
        None => log::info!("cgroup ids of scanned processes: from the task iterator"),
        Some(reason) => log::warn!("{}", TaskCgroupsError::Unavailable(reason.to_owned())),
    }
}
