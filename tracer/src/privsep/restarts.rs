//! When an inspector part that ended is replaced, and which files are not handed to a new one
//! (docs/security.md, "A third process"). Pure: the clock is the caller's.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// Most new parts started within [`RESTART_WINDOW`]: a file that crashes every parser is not
/// handed over again, so only a run of different hostile files (or a bug on every file) ends
/// parts this often, and then the daemon waits rather than fork in a loop.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(3600);

/// The restarts of the last [`RESTART_WINDOW`].
#[derive(Debug, Default)]
pub struct RestartBudget {
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// Takes a restart at `now` if fewer than [`MAX_RESTARTS`] were taken in the window before
    /// it; otherwise returns how long until one is free.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= RESTART_WINDOW) {
            self.recent.pop_front();
        }
        if self.recent.len() >= MAX_RESTARTS {
            let oldest = self.recent.front().copied().unwrap_or(now);
            return Err(RESTART_WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        self.recent.push_back(now);
        Ok(())
    }
}

/// A file by device and inode: the same file whichever path or process it is reached by.
pub type FileKey = (u64, u64);

/// How many quarantined files `tracer status` names (all are refused).
pub const NAMED_QUARANTINED: usize = 16;

/// Files a part ended on while parsing them, refused from then on.
#[derive(Debug, Default)]
pub struct Quarantine {
    files: HashMap<FileKey, String>,
}

impl Quarantine {
    pub fn add(&mut self, key: FileKey, path: String) {
        self.files.entry(key).or_insert(path);
    }

    /// The path under which the first of `keys` in quarantine was added.
    pub fn first_of(&self, keys: &[FileKey]) -> Option<&str> {
        keys.iter().find_map(|k| self.files.get(k)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Up to [`NAMED_QUARANTINED`] paths, sorted.
    pub fn named(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.files.values().cloned().collect();
        paths.sort();
        paths.truncate(NAMED_QUARANTINED);
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_refused_past_the_budget_until_the_oldest_leaves_the_window() {
        let start = Instant::now();
        let mut budget = RestartBudget::default();
        let minute = Duration::from_secs(60);
        for i in 0..MAX_RESTARTS as u32 {
            assert_eq!(budget.take(start + minute * i), Ok(()));
        }
        let late = start + minute * 10;
        assert_eq!(budget.take(late), Err(RESTART_WINDOW - minute * 10));
        // A refused restart takes nothing: the wait counts from the oldest taken.
        assert_eq!(
            budget.take(start + RESTART_WINDOW - Duration::from_secs(1)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(budget.take(start + RESTART_WINDOW), Ok(()));
        assert!(budget.take(start + RESTART_WINDOW).is_err(), "the second is still in the window");
        assert_eq!(budget.take(start + RESTART_WINDOW + minute), Ok(()));
    }

    #[test]
    fn a_quarantined_file_is_found_by_its_key_whatever_its_path() {
        let mut quarantine = Quarantine::default();
        assert_eq!(quarantine.len(), 0);
        quarantine.add((1, 42), "/usr/bin/crasher".into());
        quarantine.add((1, 42), "/proc/7/root/usr/bin/crasher".into());
        assert_eq!(quarantine.len(), 1);
        assert_eq!(quarantine.first_of(&[(1, 7), (1, 42)]), Some("/usr/bin/crasher"));
        assert_eq!(quarantine.first_of(&[(2, 42)]), None);
        for i in 0..40 {
            quarantine.add((3, i), format!("/f{i:02}"));
        }
        let named = quarantine.named();
        assert_eq!((named.len(), named[0].as_str()), (NAMED_QUARANTINED, "/f00"));
    }
}
