//! Bounded client slots for the daemon's servers (the API socket and `/metrics`): a fixed
//! number of clients at once, and when all slots are taken a new client gets the slot of the
//! client idle longest, which is closed. No set of idle or slow clients can lock out the next
//! query or scrape, or hold the daemon's descriptors.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::Notify;

/// A served client, as the slot table knows it.
struct Slot {
    /// Since when it has been waiting for a request; `None` while it is answered or
    /// streamed to.
    idle_since: Option<Instant>,
    /// Wakes its task to close it (it lost its slot).
    evict: Arc<Notify>,
}

/// A server's slots.
#[derive(Default)]
struct Slots {
    next_id: u64,
    clients: HashMap<u64, Slot>,
    /// Clients closed for a newer one, and clients refused (no idle one to close), since start.
    evicted: u64,
    refused: u64,
}

type SharedSlots = Arc<Mutex<Slots>>;

/// A server's clients, shared between the server and `tracer status`.
#[derive(Clone, Default)]
pub struct Clients(SharedSlots);

impl Clients {
    /// A slot for a new client, closing the one idle longest when all `capacity` are taken;
    /// `None` when none is idle. Dropping the guard frees it.
    pub fn take(&self, capacity: usize) -> Option<(SlotGuard, Arc<Notify>)> {
        let (id, evict) = self.0.lock().ok()?.take(capacity)?;
        Some((SlotGuard { slots: Arc::clone(&self.0), id }, evict))
    }

    /// Clients connected now, clients closed for a newer one and clients refused (every slot
    /// busy), the last two since start.
    pub fn counts(&self) -> (usize, u64, u64) {
        self.0.lock().map_or((0, 0, 0), |s| (s.clients.len(), s.evicted, s.refused))
    }
}

impl Slots {
    /// A slot for a new client (closing the one idle longest when all are taken), or `None`
    /// when every slot is busy.
    fn take(&mut self, capacity: usize) -> Option<(u64, Arc<Notify>)> {
        if self.clients.len() >= capacity {
            let oldest = self
                .clients
                .iter()
                .filter_map(|(id, s)| s.idle_since.map(|t| (t, *id)))
                .min()
                .map(|(_, id)| id);
            match oldest.and_then(|id| self.clients.remove(&id)) {
                Some(slot) => {
                    slot.evict.notify_one();
                    self.evicted += 1;
                }
                None => {
                    self.refused += 1;
                    return None;
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let evict = Arc::new(Notify::new());
        self.clients
            .insert(id, Slot { idle_since: Some(Instant::now()), evict: Arc::clone(&evict) });
        Some((id, evict))
    }

    fn set_idle(&mut self, id: u64, idle: bool) {
        if let Some(slot) = self.clients.get_mut(&id) {
            slot.idle_since =
                if idle { Some(slot.idle_since.unwrap_or_else(Instant::now)) } else { None };
        }
    }
}

/// Frees a client's slot when its task ends, however it ends.
pub struct SlotGuard {
    slots: SharedSlots,
    id: u64,
}

impl SlotGuard {
    /// Marks the client idle (waiting for a request) or busy (being answered).
    pub fn set_idle(&self, idle: bool) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.set_idle(self.id, idle);
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.clients.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_client_takes_the_slot_of_the_one_idle_longest_or_is_refused() {
        let mut slots = Slots::default();
        let (a, evict_a) = slots.take(3).expect("a slot");
        let (b, _) = slots.take(3).expect("a slot");
        let (c, _) = slots.take(3).expect("a slot");
        // `a` is being answered: not idle, so `b`, idle longest, goes.
        slots.set_idle(a, false);
        let (d, _) = slots.take(3).expect("b's slot");
        assert!(!slots.clients.contains_key(&b) && slots.clients.contains_key(&d));
        assert_eq!(slots.evicted, 1);
        // Nobody idle: refused, counted.
        for id in [a, c, d] {
            slots.set_idle(id, false);
        }
        assert!(slots.take(3).is_none());
        assert_eq!(slots.refused, 1);
        // `a` idle again: it goes, and is told to close.
        slots.set_idle(a, true);
        assert!(slots.take(3).is_some());
        assert!(!slots.clients.contains_key(&a));
        let notified = evict_a.notified();
        tokio::pin!(notified);
        assert!(ready_at_once(notified.as_mut()), "the evicted client's task is woken to close");
    }

    /// Whether `future` is ready at its first poll.
    fn ready_at_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        future.poll(&mut cx).is_ready()
    }
}
