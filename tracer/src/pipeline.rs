//! The event path from the ring buffer into userspace: wait for readiness, drain in batches,
//! decode in place, count what was received per kind, and how full the ring got.
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{
    ConnEvent, EventKind,
    stacks::{LostRequest, StackRecord},
};

use crate::{events, probes::KernelCounters};

/// Every way an event can be lost before it reaches the table, by reason: the one definition
/// behind `tracer status` (`events_lost`, `events_lost_by_reason`) and
/// `tcp_tracer_events_lost_total{reason}`, so the total is always the sum of its reasons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostEvents {
    /// The kernel could not reserve ring buffer space.
    pub ringbuf_full: u64,
    /// accept() returned a descriptor the probes could not resolve to a socket: that accept's
    /// owner is unknown.
    pub accept_unresolved: u64,
    /// Tracepoint mode: a socket reset while held could not be remembered, so its release
    /// will be missed.
    pub held_closed_map_full: u64,
    /// A record that did not decode.
    pub malformed: u64,
}

impl LostEvents {
    pub fn new(kernel: &KernelCounters, malformed: u64) -> Self {
        Self {
            ringbuf_full: kernel.lost_total(),
            accept_unresolved: kernel.accept_unresolved,
            held_closed_map_full: kernel.held_closed_map_full,
            malformed,
        }
    }

    /// (reason, count), in the order they are reported.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("ringbuf_full", self.ringbuf_full),
            ("accept_unresolved", self.accept_unresolved),
            ("held_closed_map_full", self.held_closed_map_full),
            ("malformed", self.malformed),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// The opener-stack ring: read on the daemon's drain timer and before queries (the kernel
/// never wakes the daemon for a stack).
pub struct StackSource {
    ring: RingBuf<MapData>,
    received: u64,
    malformed: u64,
}

impl StackSource {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring, received: 0, malformed: 0 }
    }

    /// Hands every stack record in the ring to `sink`; returns how many.
    pub fn drain(&mut self, mut sink: impl FnMut(&StackRecord)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            let Some(record) = StackRecord::from_bytes(&item) else {
                self.malformed += 1;
                continue;
            };
            self.received += 1;
            sink(&record);
            n += 1;
        }
        n
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Records whose length is no header plus whole frames: 0 unless the kernel object and the
    /// binary disagree.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// The Go request probe's lost requests (`LOST_REQUESTS`): read after each stack drain, so a
/// request's record, if it was sent, is read first.
pub struct LostRequestSource {
    map: aya::maps::HashMap<MapData, u64, LostRequest>,
}

impl LostRequestSource {
    pub fn new(map: aya::maps::HashMap<MapData, u64, LostRequest>) -> Self {
        Self { map }
    }

    /// Takes every entry out of the map: (`struct sock` address, the request lost on it).
    pub fn take(&mut self) -> Vec<(u64, LostRequest)> {
        let entries: Vec<(u64, LostRequest)> = self.map.iter().filter_map(Result::ok).collect();
        for (sock, _) in &entries {
            // A request lost again on the socket between the read and this removal goes with it
            // (two requests on one connection within microseconds, the ring full at both).
            let _ = self.map.remove(sock);
        }
        entries
    }
}

pub struct EventSource {
    ring: AsyncFd<RingBuf<MapData>>,
    positions: RingPositions,
    counts: Counts,
}

/// What the drains have seen so far.
#[derive(Debug, Default)]
struct Counts {
    received: [u64; EventKind::COUNT],
    malformed: u64,
    /// The fullest the ring was when a drain started (see
    /// [`EventSource::ring_high_water_bytes`]).
    high_water: u64,
}

impl EventSource {
    /// Must be called inside a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        let positions = RingPositions::map(&ring)?;
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
        // RingBuf (owned by the AsyncFd) is dropped.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
        Ok(Self { ring, positions, counts: Counts::default() })
    }

    /// Waits until the kernel signals new records, then hands every available record to
    /// `sink`. Returns how many were delivered.
    pub async fn next_batch(&mut self, sink: impl FnMut(&ConnEvent)) -> std::io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        // Clear before draining, not after: a wakeup that arrives during the drain then makes
        // the next wait return at once. Cleared after, it would be lost with the drained data's
        // readiness, and with the kernel's default wakeups (only when the reader has caught up)
        // no other would come: only the drain timer would read the ring again.
        guard.clear_ready();
        let n = self.counts.drain(guard.get_inner_mut(), &self.positions, sink);
        Ok(n)
    }

    /// Delivers whatever is in the ring right now, without waiting.
    pub fn drain_now(&mut self, sink: impl FnMut(&ConnEvent)) -> usize {
        self.counts.drain(self.ring.get_mut(), &self.positions, sink)
    }

    /// Records received per [`EventKind`] (indexed by its value).
    pub fn received(&self) -> &[u64; EventKind::COUNT] {
        &self.counts.received
    }

    pub fn received_total(&self) -> u64 {
        self.counts.received.iter().sum()
    }

    /// Records that did not decode (wrong size or kind): always 0 unless the kernel object and
    /// the binary disagree.
    pub fn malformed(&self) -> u64 {
        self.counts.malformed
    }

    /// The fullest the ring was at the start of a drain, in ring bytes (headers and records
    /// reserved but not yet written included): nothing is consumed between drains, so this is
    /// the peak up to what arrives while a drain runs. Near `--ring-bytes`, events are about to
    /// be lost.
    pub fn ring_high_water_bytes(&self) -> u64 {
        self.counts.high_water
    }
}

impl Counts {
    fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        positions: &RingPositions,
        mut sink: impl FnMut(&ConnEvent),
    ) -> usize {
        self.high_water = self.high_water.max(positions.unread());
        let mut n = 0;
        while let Some(item) = ring.next() {
            match events::decode(&item).filter(|e| e.kind().is_some()) {
                Some(event) => {
                    self.received[event.kind as usize] += 1;
                    sink(&event);
                    n += 1;
                }
                None => self.malformed += 1,
            }
        }
        n
    }
}

/// A read-only view of the ring's consumer and producer positions (the first two pages of its
/// mapping, a u64 at the start of each): how much is waiting, without consuming anything.
struct RingPositions {
    base: *const u8,
    page: usize,
}

// SAFETY: the mapping is read-only, owned by this value, and only read with volatile loads.
unsafe impl Send for RingPositions {}

impl RingPositions {
    fn map(ring: &RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a shared read-only mapping of the ring map's two position pages, which the
        // kernel allows whatever else maps it; unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { base: base.cast(), page })
    }

    /// Bytes reserved by the programs and not yet consumed by the daemon.
    fn unread(&self) -> u64 {
        // SAFETY: both positions are u64s at the start of their page, inside the mapping.
        let (consumer, producer) = unsafe {
            (
                std::ptr::read_volatile(self.base.cast::<u64>()),
                std::ptr::read_volatile(self.base.add(self.page).cast::<u64>()),
            )
        };
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base as *mut libc::c_void, 2 * self.page) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_total_is_the_sum_of_every_reason() {
        let mut kernel = KernelCounters::default();
        kernel.lost_ringbuf[EventKind::Release as usize] = 3;
        kernel.lost_ringbuf[EventKind::Connect as usize] = 4;
        kernel.accept_unresolved = 5;
        kernel.held_closed_map_full = 6;
        let lost = LostEvents::new(&kernel, 7);
        assert_eq!(
            lost.by_reason(),
            [
                ("ringbuf_full", 7),
                ("accept_unresolved", 5),
                ("held_closed_map_full", 6),
                ("malformed", 7)
            ]
        );
        assert_eq!(lost.total(), 25);
    }
}
