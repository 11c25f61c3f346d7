//! The event path from the ring buffer into userspace: wait for readiness, drain in batches,
//! decode in place, count what was received per kind.
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{ConnEvent, EventKind};

use crate::events;

pub struct EventSource {
    ring: AsyncFd<RingBuf<MapData>>,
    received: [u64; EventKind::COUNT],
    malformed: u64,
}

impl EventSource {
    /// Must be called inside a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
        // RingBuf (owned by the AsyncFd) is dropped.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
        Ok(Self { ring, received: [0; EventKind::COUNT], malformed: 0 })
    }

    /// Waits until the kernel signals new records, then hands every available record to
    /// `sink`. Returns how many were delivered.
    pub async fn next_batch(&mut self, sink: impl FnMut(&ConnEvent)) -> std::io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let n = Self::drain_ring(ring, &mut self.received, &mut self.malformed, sink);
        guard.clear_ready();
        Ok(n)
    }

    /// Delivers whatever is in the ring right now, without waiting.
    pub fn drain_now(&mut self, sink: impl FnMut(&ConnEvent)) -> usize {
        let ring = self.ring.get_mut();
        Self::drain_ring(ring, &mut self.received, &mut self.malformed, sink)
    }

    fn drain_ring(
        ring: &mut RingBuf<MapData>,
        received: &mut [u64; EventKind::COUNT],
        malformed: &mut u64,
        mut sink: impl FnMut(&ConnEvent),
    ) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            match events::decode(&item).filter(|e| e.kind().is_some()) {
                Some(event) => {
                    received[event.kind as usize] += 1;
                    sink(&event);
                    n += 1;
                }
                None => *malformed += 1,
            }
        }
        n
    }

    /// Records received per [`EventKind`] (indexed by its value).
    pub fn received(&self) -> &[u64; EventKind::COUNT] {
        &self.received
    }

    pub fn received_total(&self) -> u64 {
        self.received.iter().sum()
    }

    /// Records that did not decode (wrong size or kind): always 0 unless the kernel object and
    /// the binary disagree.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}
