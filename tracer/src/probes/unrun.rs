//! Runs of `inet_sock_set_state` that the kernel neither made nor counted as skipped
//! (docs/semantics.md, "Runs the kernel never made").
//!
//! The kernel counts a run it skips because the program is already running on the CPU
//! (`recursion_misses`, see recursion.rs). On Linux 6.18 it was also seen to run no BPF
//! program at all (neither ours nor any other daemon's, raw or perf tracepoint) for a few
//! tracepoint hits that tracefs recorded, and to count nothing. So the daemon keeps a count of
//! the hits that does not depend on BPF: a private tracefs instance with the event enabled and
//! the smallest buffer, whose per-CPU `entries + overrun` is every hit it recorded. The
//! program counts its own runs as it starts (`counters::STATE_CHANGE_RUNS`), so
//!
//! ```text
//! runs never made = hits - runs - recursion misses      (since the instance started)
//! ```
//!
//! Read in that order (hits first), the figure never runs ahead of the truth: tracefs's probe
//! was registered after the program's, so a hit it recorded was already run or skipped.
use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

/// The instance directory's name prefix; the daemon's pid and a number follow
/// (`tracer-<pid>-<n>`: one process may load the programs more than once, as tests do).
const PREFIX: &str = "tracer-";
const EVENT: &str = "events/sock/inet_sock_set_state/enable";

/// The private tracefs instance counting the tracepoint's hits. Dropping it removes the instance.
#[derive(Debug)]
pub struct HitCounter {
    dir: PathBuf,
    /// Runs and misses counted before the instance recorded its first hit.
    baseline: u64,
    /// The largest difference seen so far (a later read can only be as large).
    unrun: AtomicU64,
}

impl HitCounter {
    /// Creates the instance under `tracefs` and enables the event. `runs_and_misses` reads the
    /// program's runs plus the kernel's skipped runs: read before the event is enabled, they
    /// are the baseline. Removes the instances of daemons that no longer run first.
    pub fn start(tracefs: &Path, runs_and_misses: impl Fn() -> u64) -> io::Result<Self> {
        let instances = tracefs.join("instances");
        remove_stale(&instances, super::pid_runs);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = instances.join(format!("{PREFIX}{}-{n}", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            // A killed daemon's, whose pid this one got again (a container's pid 1, say): its
            // counts are not ours.
            let _ = fs::write(dir.join(EVENT), "0");
            fs::remove_dir(&dir)?;
            fs::create_dir(&dir)?;
        }
        // Dropped (instance removed) if a step below fails.
        let mut counter = Self { dir, baseline: 0, unrun: AtomicU64::new(0) };
        // The smallest buffer: only the counts are read, never the records.
        fs::write(counter.dir.join("buffer_size_kb"), "1")?;
        counter.baseline = runs_and_misses();
        fs::write(counter.dir.join(EVENT), "1")?;
        Ok(counter)
    }

    /// Every hit the instance recorded since it started.
    pub fn hits(&self) -> io::Result<u64> {
        let mut total = 0;
        for cpu in fs::read_dir(self.dir.join("per_cpu"))? {
            let stats = fs::read_to_string(cpu?.path().join("stats"))?;
            total += recorded(&stats).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "no entries/overrun in stats")
            })?;
        }
        Ok(total)
    }

    /// Runs the kernel never made, given `hits` (read first) and the program's runs plus the
    /// kernel's skipped runs (read after).
    pub fn unrun(&self, hits: u64, runs_and_misses: u64) -> u64 {
        let now = hits.saturating_sub(runs_and_misses.saturating_sub(self.baseline));
        self.unrun.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

impl Drop for HitCounter {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join(EVENT), "0");
        if let Err(e) = fs::remove_dir(&self.dir) {
            log::warn!("could not remove the tracefs instance {}: {e}", self.dir.display());
        }
    }
}

/// The events a per-CPU `stats` file says the buffer recorded: those it holds plus those it
/// overwrote.
pub(crate) fn recorded(stats: &str) -> Option<u64> {
    let field = |name: &str| {
        stats.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some(field("entries:")? + field("overrun:")?)
}

/// Removes the instances of daemons killed before they could (named after their pid).
fn remove_stale(instances: &Path, running: impl Fn(u32) -> bool) {
    let Ok(entries) = fs::read_dir(instances) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid =
            name.to_str().and_then(|n| n.strip_prefix(PREFIX)?.split('-').next()?.parse().ok());
        let Some(pid) = pid else {
            continue;
        };
        if !running(pid) {
            let _ = fs::write(entry.path().join(EVENT), "0");
            match fs::remove_dir(entry.path()) {
                Ok(()) => {
                    log::info!("removed tracefs instance {name:?} left by a previous run")
                }
                Err(e) => log::warn!("could not remove stale tracefs instance {name:?}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_events_are_those_held_plus_those_overwritten() {
        let stats = "entries: 91\noverrun: 101230\ncommit overrun: 0\nbytes: 6968\n\
                     oldest event ts: 68983.752421\nnow ts: 68984.762858\ndropped events: 0\n\
                     read events: 0\n";
        assert_eq!(recorded(stats), Some(101_321));
        assert_eq!(recorded("entries: 3\n"), None, "no overrun line");
    }

    #[test]
    fn the_count_never_goes_back_and_starts_from_the_baseline() {
        let counter = HitCounter {
            dir: PathBuf::from("/nonexistent"),
            baseline: 100,
            unrun: AtomicU64::new(0),
        };
        // 50 hits since the start; 147 runs and misses, 100 of them before it.
        assert_eq!(counter.unrun(50, 147), 3);
        // A read that caught runs of hits recorded after `hits` was read: not fewer.
        assert_eq!(counter.unrun(60, 160), 3);
        assert_eq!(counter.unrun(70, 165), 5);
        std::mem::forget(counter);
    }

    #[test]
    fn only_instances_of_daemons_that_ended_are_stale() {
        let dir = std::env::temp_dir().join(format!("tracer-unrun-{}", std::process::id()));
        for name in ["tracer-100-0", "tracer-100-3", "tracer-200-0", "other", "tracer-x"] {
            fs::create_dir_all(dir.join(name)).expect("dir");
        }
        remove_stale(&dir, |pid| pid == 200);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["other", "tracer-200-0", "tracer-x"]);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
