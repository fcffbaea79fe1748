//! The fixed pool of slots a request occupies while it waits for the
//! handler, and the state machine of one slot.
//!
//! ```text
//!            claim (ask)                 get-request / ask's hand-over
//!   Free ───────────────▶ Queued ─────────────────────────────▶ Delivered
//!    ▲                      │  ╲ cancel (disconnect, unload)      │   │
//!    │                      │   ╲──────────────▶ Cancelled ◀──────┘   │ reply (id +
//!    │ finish (the waiter,  │                       │                 │ generation)
//!    │ always, once)        ▼ timeout               │                 ▼
//!    └──────────────────── (Queued/Delivered) ◀─────┴───────────── Answered
//! ```
//!
//! Every transition happens under the broker's spin lock, and only the
//! waiting callback (the slot's owner) moves a slot back to `Free`: a reply,
//! a disconnect or an unload only moves `Queued`/`Delivered` to `Answered`
//! or `Cancelled` and sets the slot's event while still holding the lock.
//! So whichever comes first of the event and the timeout, the owner reads
//! the final state under the lock, and no reply can touch a slot after its
//! owner let it go (the generation, bumped at every claim, also makes a
//! reply to an earlier use of the slot miss). An event set after the wait
//! timed out stays signaled; the next claim clears it before anyone can
//! set it again (nobody sets the event of a `Free` slot).

use alloc::vec::Vec;

use procguard_protocol::ask::AskRequest;

/// Requests that can wait for an answer at once.
pub const SLOTS: usize = 64;

/// Where one slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Unused.
    Free,
    /// Waiting for a handler worker (in the FIFO).
    Queued,
    /// Handed to a worker; waiting for its reply.
    Delivered,
    /// The handler replied with this access and result code.
    Answered {
        /// The access the handler granted (ANDed in by the owner).
        access: u32,
        /// The handler's result code.
        result_code: i32,
    },
    /// Released by a disconnect or unload.
    Cancelled,
}

/// One slot (read and written under the broker's lock).
#[derive(Debug, Clone)]
pub struct SlotRecord {
    /// Where it is.
    pub state: SlotState,
    /// Bumped at every claim; replies must echo it.
    pub generation: u32,
    /// The encoded request, for the worker that takes it.
    pub request: [u8; AskRequest::SIZE],
}

/// How a slot's wait ended, read by its owner when it frees the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The handler answered.
    Answered {
        /// The access it granted.
        access: u32,
        /// Its result code.
        result_code: i32,
    },
    /// Released by a disconnect or unload.
    Cancelled,
    /// Nobody answered in time; `queued`: it never reached a worker (the
    /// owner takes it out of the FIFO).
    TimedOut {
        /// Still in the FIFO.
        queued: bool,
    },
}

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWaiting;

/// The slots. Allocated once, at load.
#[derive(Debug)]
pub struct SlotTable {
    records: Vec<SlotRecord>,
}

impl SlotTable {
    /// [`SLOTS`] free slots; `None` when out of memory.
    pub fn new() -> Option<Self> {
        let mut records = Vec::new();
        for _ in 0..SLOTS {
            procguard_policy::fallible::try_push(
                &mut records,
                SlotRecord {
                    state: SlotState::Free,
                    generation: 0,
                    request: [0; AskRequest::SIZE],
                },
            )
            .ok()?;
        }
        Some(Self { records })
    }

    /// Takes a free slot: `(index, generation)`, or `None` when all are taken.
    pub fn claim(&mut self) -> Option<(usize, u32)> {
        let (index, record) = self
            .records
            .iter_mut()
            .enumerate()
            .find(|(_, record)| record.state == SlotState::Free)?;
        record.generation = record.generation.wrapping_add(1);
        record.state = SlotState::Queued;
        Some((index, record.generation))
    }

    /// The slot's record.
    pub fn get(&self, index: usize) -> Option<&SlotRecord> {
        self.records.get(index)
    }

    /// The slot's record, to fill its request.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut SlotRecord> {
        self.records.get_mut(index)
    }

    /// A worker takes the slot: `Queued` → `Delivered`; its request bytes.
    pub fn deliver(&mut self, index: usize) -> Option<[u8; AskRequest::SIZE]> {
        let record = self.records.get_mut(index)?;
        if record.state != SlotState::Queued {
            return None;
        }
        record.state = SlotState::Delivered;
        Some(record.request)
    }

    /// A reply for `id` + `generation`: `Delivered` → `Answered`. The
    /// caller sets the slot's event (under the lock) on `Ok`.
    ///
    /// # Errors
    /// [`NotWaiting`] for an unknown id, another generation, or a slot that
    /// is not waiting for a reply (late, or never delivered).
    pub fn answer(
        &mut self,
        id: u32,
        generation: u32,
        access: u32,
        result_code: i32,
    ) -> Result<usize, NotWaiting> {
        let index = usize::try_from(id).map_err(|_| NotWaiting)?;
        let record = self.records.get_mut(index).ok_or(NotWaiting)?;
        if record.generation != generation || record.state != SlotState::Delivered {
            return Err(NotWaiting);
        }
        record.state = SlotState::Answered {
            access,
            result_code,
        };
        Ok(index)
    }

    /// Releases every waiting slot (`Queued`/`Delivered` → `Cancelled`);
    /// calls `signal` with each index (the caller sets its event).
    pub fn cancel_all(&mut self, mut signal: impl FnMut(usize)) {
        for (index, record) in self.records.iter_mut().enumerate() {
            if matches!(record.state, SlotState::Queued | SlotState::Delivered) {
                record.state = SlotState::Cancelled;
                signal(index);
            }
        }
    }

    /// The owner ends its wait: how it ended; the slot is `Free` again.
    pub fn finish(&mut self, index: usize) -> Ending {
        let Some(record) = self.records.get_mut(index) else {
            return Ending::Cancelled;
        };
        let ending = match record.state {
            SlotState::Answered {
                access,
                result_code,
            } => Ending::Answered {
                access,
                result_code,
            },
            SlotState::Cancelled | SlotState::Free => Ending::Cancelled,
            SlotState::Queued => Ending::TimedOut { queued: true },
            SlotState::Delivered => Ending::TimedOut { queued: false },
        };
        record.state = SlotState::Free;
        ending
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.records
            .iter()
            .filter(|record| record.state != SlotState::Free)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_goes_round_its_states_and_each_claim_bumps_the_generation() {
        let mut table = SlotTable::new().expect("memory");
        let (index, generation) = table.claim().expect("a free slot");
        assert_eq!((index, generation), (0, 1));
        assert!(table.deliver(index).is_some());
        assert!(table.deliver(index).is_none(), "delivered once");
        assert_eq!(table.answer(0, 1, 0x10, 7), Ok(0));
        assert_eq!(
            table.answer(0, 1, 0x10, 7),
            Err(NotWaiting),
            "answered once"
        );
        assert_eq!(
            table.finish(index),
            Ending::Answered {
                access: 0x10,
                result_code: 7
            }
        );
        assert_eq!(table.claim(), Some((0, 2)));
    }

    #[test]
    fn replies_for_another_generation_an_unknown_id_or_an_undelivered_slot_miss() {
        let mut table = SlotTable::new().expect("memory");
        let (index, generation) = table.claim().expect("a free slot");
        assert_eq!(
            table.answer(0, generation, 0, 0),
            Err(NotWaiting),
            "still queued"
        );
        table.deliver(index);
        assert_eq!(table.answer(0, generation + 1, 0, 0), Err(NotWaiting));
        assert_eq!(table.answer(64, generation, 0, 0), Err(NotWaiting));
        assert_eq!(table.answer(u32::MAX, generation, 0, 0), Err(NotWaiting));
        assert_eq!(table.finish(index), Ending::TimedOut { queued: false });
        assert_eq!(table.answer(0, generation, 0, 0), Err(NotWaiting), "late");
    }

    #[test]
    fn the_pool_runs_out_after_sixty_four_claims_and_cancel_releases_only_waiters() {
        let mut table = SlotTable::new().expect("memory");
        for _ in 0..SLOTS {
            assert!(table.claim().is_some());
        }
        assert_eq!(table.claim(), None);
        assert_eq!(table.in_use(), SLOTS);
        table.deliver(3);
        let mut signalled = Vec::new();
        table.cancel_all(|index| signalled.push(index));
        assert_eq!(signalled.len(), SLOTS);
        assert_eq!(table.finish(3), Ending::Cancelled);
        assert_eq!(table.finish(4), Ending::Cancelled);
        let mut again = Vec::new();
        table.cancel_all(|index| again.push(index));
        assert!(!again.contains(&3), "a free slot is not signalled");
    }
}
