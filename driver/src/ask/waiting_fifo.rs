//! The requests waiting for a handler worker, oldest first: slot indices in
//! a fixed ring as large as the slot pool, so it can never overflow (a slot
//! is in it at most once). Used under the broker's spin lock only.

use super::slot_pool::SLOTS;

/// Slot indices in arrival order.
#[derive(Debug)]
pub struct WaitingFifo {
    entries: [u8; SLOTS],
    head: usize,
    len: usize,
}

impl Default for WaitingFifo {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitingFifo {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            entries: [0; SLOTS],
            head: 0,
            len: 0,
        }
    }

    /// Entries waiting.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Nothing waits.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `slot`; false (nothing stored) when full or `slot` is out of range.
    pub fn push_back(&mut self, slot: usize) -> bool {
        let Ok(value) = u8::try_from(slot) else {
            return false;
        };
        if self.len >= SLOTS || slot >= SLOTS {
            return false;
        }
        let at = (self.head + self.len) % SLOTS;
        if let Some(entry) = self.entries.get_mut(at) {
            *entry = value;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// The oldest entry, removed.
    pub fn pop_front(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let slot = usize::from(*self.entries.get(self.head)?);
        self.head = (self.head + 1) % SLOTS;
        self.len -= 1;
        Some(slot)
    }

    /// Removes `slot` wherever it is, keeping the order of the others; false
    /// if it was not there.
    pub fn remove(&mut self, slot: usize) -> bool {
        let Some(position) = (0..self.len).find(|&i| {
            self.entries
                .get((self.head + i) % SLOTS)
                .copied()
                .map(usize::from)
                == Some(slot)
        }) else {
            return false;
        };
        for i in position..self.len - 1 {
            let next = self
                .entries
                .get((self.head + i + 1) % SLOTS)
                .copied()
                .unwrap_or(0);
            if let Some(entry) = self.entries.get_mut((self.head + i) % SLOTS) {
                *entry = next;
            }
        }
        self.len -= 1;
        true
    }

    /// Empties the FIFO.
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_oldest_first_and_the_fifo_holds_exactly_the_pool() {
        let mut fifo = WaitingFifo::new();
        for slot in 0..SLOTS {
            assert!(fifo.push_back(slot));
        }
        assert!(!fifo.push_back(0), "bounded by the pool size");
        assert_eq!(fifo.len(), SLOTS);
        for slot in 0..SLOTS {
            assert_eq!(fifo.pop_front(), Some(slot));
        }
        assert_eq!(fifo.pop_front(), None);
        assert!(!fifo.push_back(SLOTS), "no index outside the pool");
    }

    #[test]
    fn removing_a_timed_out_entry_keeps_the_others_in_order() {
        let mut fifo = WaitingFifo::new();
        // Wrap around the ring first.
        for slot in 0..60 {
            fifo.push_back(slot);
            fifo.pop_front();
        }
        for slot in [5, 9, 2, 7] {
            fifo.push_back(slot);
        }
        assert!(fifo.remove(9));
        assert!(!fifo.remove(9));
        assert_eq!(fifo.pop_front(), Some(5));
        assert_eq!(fifo.pop_front(), Some(2));
        assert_eq!(fifo.pop_front(), Some(7));
        assert!(fifo.is_empty());
    }
}
