//! Descriptor exhaustion: open descriptors against the soft RLIMIT_NOFILE, both from /proc, and
//! for a process whose descriptor count rose over the window, when that rise reaches the limit.
//! /proc is read only for the processes the daemon picks (exported or growing ones), never for
//! every pid.
use std::collections::{HashMap, VecDeque};

use crate::table::ProcessKey;

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdSample {
    /// Entries of /proc/PID/fd.
    pub used: u32,
    /// Soft "Max open files" of /proc/PID/limits; `None` when unlimited.
    pub limit: Option<u64>,
}

/// What `top` and the rule see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdStatus {
    pub used: u32,
    pub limit: Option<u64>,
    /// At the rise seen over the window, seconds until `used` reaches `limit`; `None` unless
    /// the count rose over the window and there is a limit.
    pub exhaustion_seconds: Option<u64>,
}

/// Readings per process over the leak window.
#[derive(Debug, Default)]
pub struct FdTracker {
    window_ns: u64,
    history: HashMap<ProcessKey, VecDeque<(u64, FdSample)>>,
}

impl FdTracker {
    pub fn new(window_ns: u64) -> Self {
        Self { window_ns, history: HashMap::new() }
    }

    /// Records a reading taken at `now_ns`.
    pub fn record(&mut self, process: ProcessKey, now_ns: u64, sample: FdSample) {
        let h = self.history.entry(process).or_default();
        h.push_back((now_ns, sample));
        while h.front().is_some_and(|(t, _)| now_ns.saturating_sub(*t) > self.window_ns) {
            h.pop_front();
        }
    }

    /// The latest reading with its projection.
    pub fn status(&self, process: ProcessKey) -> Option<FdStatus> {
        let h = self.history.get(&process)?;
        let (first_ns, first) = h.front()?;
        let (last_ns, last) = h.back()?;
        let rise = last.used.saturating_sub(first.used);
        let elapsed_ns = last_ns.saturating_sub(*first_ns);
        let exhaustion_seconds = match last.limit {
            Some(limit) if rise > 0 && elapsed_ns > 0 => {
                let left = limit.saturating_sub(u64::from(last.used));
                // left / (rise / elapsed), in seconds, in integers.
                let ns = u128::from(left) * u128::from(elapsed_ns) / u128::from(rise);
                Some(u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX))
            }
            _ => None,
        };
        Some(FdStatus { used: last.used, limit: last.limit, exhaustion_seconds })
    }

    /// Forgets processes `keep` rejects (exited, or no longer read).
    pub fn retain(&mut self, keep: impl Fn(ProcessKey) -> bool) {
        self.history.retain(|p, _| keep(*p));
    }
}

/// Parses the soft "Max open files" of /proc/PID/limits: `Some(None)` for unlimited.
pub fn parse_soft_nofile(limits: &str) -> Option<Option<u64>> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" { Some(None) } else { soft.parse().ok().map(Some) }
}

/// Reads a process's descriptors and limit (blocking: /proc). `None` once it is gone.
pub fn read_process(pid: u32) -> Option<FdSample> {
    let used = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    Some(FdSample {
        used: u32::try_from(used).unwrap_or(u32::MAX),
        limit: parse_soft_nofile(&limits)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ProcessKey = ProcessKey { pid: 10, start_time_ns: 0 };
    const S: u64 = 1_000_000_000;

    #[test]
    fn projects_the_rise_over_the_window_to_the_limit() {
        let mut t = FdTracker::new(100 * S);
        t.record(A, 0, FdSample { used: 10, limit: Some(110) });
        assert_eq!(t.status(A).unwrap().exhaustion_seconds, None, "one reading: no rise");
        t.record(A, 10 * S, FdSample { used: 20, limit: Some(110) });
        // 1 fd/s, 90 left.
        assert_eq!(t.status(A).unwrap().exhaustion_seconds, Some(90));
        // The window forgets the first reading: 20 -> 20 over [10 s, 120 s] is no rise.
        t.record(A, 120 * S, FdSample { used: 20, limit: Some(110) });
        assert_eq!(t.status(A).unwrap().exhaustion_seconds, None);
        t.record(A, 121 * S, FdSample { used: 30, limit: None });
        assert_eq!(t.status(A).unwrap().exhaustion_seconds, None, "unlimited never runs out");
    }

    #[test]
    fn reads_its_own_descriptors_and_limit_as_getrlimit_says() {
        let sample = read_process(std::process::id()).unwrap();
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        let expected = (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur);
        assert_eq!(sample.limit, expected);
        assert!(sample.used >= 3, "stdin, stdout, stderr at least: {sample:?}");
        assert_eq!(
            parse_soft_nofile(
                "Max open files            1024                 524288               files\n"
            ),
            Some(Some(1024))
        );
    }
}
