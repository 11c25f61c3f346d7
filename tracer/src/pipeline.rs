//! The event path from the ring buffer into userspace: wait for readiness, drain in batches,
//! decode in place, count what was received per kind, and how full the ring got.
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{ConnEvent, EventKind, ring_record_bytes};

use crate::events;

pub struct EventSource {
    ring: AsyncFd<RingBuf<MapData>>,
    counts: Counts,
}

/// What the drains have seen so far.
#[derive(Debug, Default)]
struct Counts {
    received: [u64; EventKind::COUNT],
    malformed: u64,
    /// The most bytes taken out of the ring in one drain (see
    /// [`EventSource::ring_high_water_bytes`]).
    high_water: u64,
}

impl EventSource {
    /// Must be called inside a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
        // RingBuf (owned by the AsyncFd) is dropped.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
        Ok(Self { ring, counts: Counts::default() })
    }

    /// Waits until the kernel signals new records, then hands every available record to
    /// `sink`. Returns how many were delivered.
    pub async fn next_batch(&mut self, sink: impl FnMut(&ConnEvent)) -> std::io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let n = self.counts.drain(ring, sink);
        guard.clear_ready();
        Ok(n)
    }

    /// Delivers whatever is in the ring right now, without waiting.
    pub fn drain_now(&mut self, sink: impl FnMut(&ConnEvent)) -> usize {
        self.counts.drain(self.ring.get_mut(), sink)
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

    /// The largest backlog taken out of the ring in one drain, in ring bytes (headers
    /// included): the ring's high-water fill as the reader saw it. Records that arrive while a
    /// drain runs count towards it, so it can exceed the fill at any one instant, never fall
    /// short of it. Near `--ring-bytes`, the ring is about to overflow.
    pub fn ring_high_water_bytes(&self) -> u64 {
        self.counts.high_water
    }
}

impl Counts {
    fn drain(&mut self, ring: &mut RingBuf<MapData>, mut sink: impl FnMut(&ConnEvent)) -> usize {
        let (mut n, mut bytes) = (0, 0);
        while let Some(item) = ring.next() {
            bytes += ring_record_bytes(item.len());
            match events::decode(&item).filter(|e| e.kind().is_some()) {
                Some(event) => {
                    self.received[event.kind as usize] += 1;
                    sink(&event);
                    n += 1;
                }
                None => self.malformed += 1,
            }
        }
        self.high_water = self.high_water.max(bytes);
        n
    }
}
