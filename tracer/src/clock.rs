//! The daemon's notion of "now", injected so that everything time-dependent (ages, grace
//! periods, leak windows) can be tested on a simulated clock.
//!
//! Always CLOCK_BOOTTIME nanoseconds: the clock the kernel stamps [`tracer_common::ConnEvent`]
//! records with (`bpf_ktime_get_boot_ns`), so event times and "now" compare directly, and it
//! keeps counting across suspend like a connection's real age does.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// A source of CLOCK_BOOTTIME nanoseconds.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// The real clock: `clock_gettime(CLOCK_BOOTTIME)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            // Cannot happen on the kernels we support (CLOCK_BOOTTIME exists since 2.6.39);
            // 0 makes every age read as "just now" rather than bringing the daemon down.
            return 0;
        }
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }
}

/// A clock that only moves when told to, for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        Self { now_ns: AtomicU64::new(start_ns) }
    }

    pub fn set(&self, now_ns: u64) {
        self.now_ns.store(now_ns, Ordering::SeqCst);
    }

    /// Moves the clock forward by `delta_ns` (saturating) and returns the new time.
    pub fn advance(&self, delta_ns: u64) -> u64 {
        let mut current = self.now_ns.load(Ordering::SeqCst);
        loop {
            let next = current.saturating_add(delta_ns);
            match self.now_ns.compare_exchange_weak(
                current,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }
}

/// Lets one clock be shared by the event loop and whatever else needs the time.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_moves_forward() {
        let a = BootClock.now_ns();
        let b = BootClock.now_ns();
        assert!(a > 0);
        assert!(b >= a);
    }

    #[test]
    fn manual_clock_is_set_and_advanced() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now_ns(), 5);
        assert_eq!(clock.advance(10), 15);
        clock.set(100);
        assert_eq!(clock.now_ns(), 100);
        assert_eq!(clock.advance(u64::MAX), u64::MAX);
        let shared: Arc<dyn Clock> = Arc::new(ManualClock::new(7));
        assert_eq!(shared.now_ns(), 7);
    }
}
