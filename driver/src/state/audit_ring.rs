//! The audit ring: a bounded, in-kernel queue of fixed-size audit records.
//!
//! Appending (from the callbacks, on any CPU at once) never blocks and never
//! allocates: when the ring is full the oldest record is discarded and the
//! `dropped` counter increments. Draining (the control plane, one reader at a
//! time) takes records oldest first.
//!
//! Mechanism: a bounded multi-producer queue with a sequence number per cell
//! (after D. Vyukov's bounded MPMC queue). A producer claims a position with a
//! compare-and-swap, writes the cell, then publishes it by storing the cell's
//! sequence; a consumer claims the oldest position the same way. A producer
//! that finds the ring full claims (discards) the oldest record itself; if
//! that record is still being written by a slower producer, the new record is
//! the one dropped. Every record's payload is atomics, so no reader can see a
//! torn record, with no `unsafe`. Model-checked with loom.
//!
//! A claimed cell blocks its lap until it is published (or, for a consumer,
//! handed back): a thread preempted in between would stop draining and,
//! one lap later, make every new record a drop, for as long as it stays
//! preempted. So both claim-to-publish (`append`, whole) and
//! claim-to-hand-back (each record `drain` takes) run at DISPATCH_LEVEL
//! (`kernel_sync::without_preemption`, as the process table's slot writes
//! do): a few dozen instructions that no thread switch can interrupt.
#![forbid(unsafe_code)]

use alloc::vec::Vec;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
use crate::platform::kernel_sync::without_preemption;

/// Loom models the protocol, not IRQLs: every interleaving is explored, as
/// if any thread could be preempted anywhere.
#[cfg(loom)]
fn without_preemption<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Words of one record.
pub const RECORD_WORDS: usize = 8;
/// Smallest and largest ring sizes accepted (records).
pub const MIN_RECORDS: usize = 2;
/// Largest ring (~80 MiB); larger settings are clamped.
pub const MAX_RECORDS: usize = 1 << 20;

struct Cell {
    sequence: AtomicU64,
    words: [AtomicU64; RECORD_WORDS],
}

/// The ring.
pub struct AuditRing {
    cells: Vec<Cell>,
    mask: u64,
    enqueue: AtomicU64,
    dequeue: AtomicU64,
    dropped: AtomicU64,
}

impl core::fmt::Debug for AuditRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AuditRing")
            .field("capacity", &self.capacity())
            .field("pending", &self.pending())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Stored under this sequence number.
    Stored(u64),
    /// Stored, and the oldest record was discarded to make room.
    StoredDroppingOldest(u64),
    /// Not stored: the ring was full and its oldest record was still being
    /// written (counted in `dropped`).
    Dropped,
}

impl AuditRing {
    /// A ring of `records` (rounded up to a power of two, clamped to
    /// [`MIN_RECORDS`]..=[`MAX_RECORDS`]). `None` if the allocation fails.
    pub fn with_capacity(records: usize) -> Option<Self> {
        let records = records
            .clamp(MIN_RECORDS, MAX_RECORDS)
            .checked_next_power_of_two()?;
        // No push after the reservation: it would keep a regrow (panic) path.
        let cells = procguard_policy::fallible::try_vec_from_fn(records, |position| Cell {
            sequence: AtomicU64::new(position as u64),
            words: core::array::from_fn(|_| AtomicU64::new(0)),
        })
        .ok()?;
        Some(Self {
            cells,
            mask: records as u64 - 1,
            enqueue: AtomicU64::new(0),
            dequeue: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Records the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// Records discarded or refused because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records appended and not yet drained (approximate under concurrency).
    pub fn pending(&self) -> u64 {
        self.enqueue
            .load(Ordering::Relaxed)
            .saturating_sub(self.dequeue.load(Ordering::Relaxed))
    }

    fn cell(&self, position: u64) -> Option<&Cell> {
        self.cells.get(usize::try_from(position & self.mask).ok()?)
    }

    /// Appends a record built by `fill` from its sequence number, at
    /// DISPATCH_LEVEL from claim to publication (see the module
    /// documentation). Lock-free; never blocks, never allocates. Inlined into
    /// the callbacks, which append on every stripped request. IRQL ≤
    /// DISPATCH_LEVEL.
    #[inline(always)]
    pub fn append(&self, fill: impl Fn(u64) -> [u64; RECORD_WORDS]) -> Append {
        without_preemption(|| self.append_unpreempted(&fill))
    }

    #[inline(always)]
    fn append_unpreempted(&self, fill: &impl Fn(u64) -> [u64; RECORD_WORDS]) -> Append {
        let mut discarded = false;
        let mut position = self.enqueue.load(Ordering::Relaxed);
        loop {
            let Some(cell) = self.cell(position) else {
                return Append::Dropped;
            };
            let sequence = cell.sequence.load(Ordering::Acquire);
            if sequence == position {
                // Free: claim it.
                match self.enqueue.compare_exchange_weak(
                    position,
                    position + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        for (word, value) in cell.words.iter().zip(fill(position)) {
                            word.store(value, Ordering::Relaxed);
                        }
                        cell.sequence.store(position + 1, Ordering::Release);
                        return if discarded {
                            Append::StoredDroppingOldest(position)
                        } else {
                            Append::Stored(position)
                        };
                    }
                    Err(current) => position = current,
                }
            } else if sequence < position {
                // Full: the cell still holds the record from one lap ago.
                // Discard the oldest record to make room, then retry.
                if self.take_oldest().is_some() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    discarded = true;
                } else if self
                    .cell(self.dequeue.load(Ordering::Relaxed))
                    .is_some_and(|oldest| {
                        oldest.sequence.load(Ordering::Acquire)
                            != self.dequeue.load(Ordering::Relaxed) + 1
                    })
                {
                    // The oldest record is still being written: drop ours.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return Append::Dropped;
                }
                position = self.enqueue.load(Ordering::Relaxed);
            } else {
                // Another producer claimed this position first.
                position = self.enqueue.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the oldest published record; `None` when the ring is empty or
    /// its oldest record is still being written. Callers run it without
    /// preemption (a claimed cell blocks producers until handed back).
    fn take_oldest(&self) -> Option<[u64; RECORD_WORDS]> {
        let mut position = self.dequeue.load(Ordering::Relaxed);
        loop {
            let cell = self.cell(position)?;
            let sequence = cell.sequence.load(Ordering::Acquire);
            if sequence == position + 1 {
                match self.dequeue.compare_exchange_weak(
                    position,
                    position + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let mut words = [0u64; RECORD_WORDS];
                        for (value, word) in words.iter_mut().zip(&cell.words) {
                            *value = word.load(Ordering::Relaxed);
                        }
                        // Hand the cell back to producers one lap later.
                        cell.sequence
                            .store(position + self.mask + 1, Ordering::Release);
                        return Some(words);
                    }
                    Err(current) => position = current,
                }
            } else if sequence <= position {
                return None; // empty, or the oldest is still being written
            } else {
                position = self.dequeue.load(Ordering::Relaxed);
            }
        }
    }

    /// Drains up to `max` records, oldest first, into `sink`; returns how
    /// many. Each record is taken at DISPATCH_LEVEL and passed to `sink`
    /// after (so `sink` may touch pageable memory). IRQL ≤ DISPATCH_LEVEL.
    pub fn drain(&self, max: usize, mut sink: impl FnMut(&[u64; RECORD_WORDS])) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(words) = without_preemption(|| self.take_oldest()) else {
                break;
            };
            sink(&words);
            taken += 1;
        }
        taken
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{reset_host, with_host};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn record(sequence: u64) -> [u64; RECORD_WORDS] {
        [sequence; RECORD_WORDS]
    }

    fn drain_all(ring: &AuditRing) -> Vec<u64> {
        let mut sequences = Vec::new();
        ring.drain(usize::MAX, |words| sequences.push(words[0]));
        sequences
    }

    #[test]
    fn records_come_out_in_order_with_their_sequence_numbers() {
        let ring = AuditRing::with_capacity(8).unwrap();
        for expected in 0..5 {
            assert_eq!(ring.append(record), Append::Stored(expected));
        }
        assert_eq!(ring.pending(), 5);
        assert_eq!(drain_all(&ring), [0, 1, 2, 3, 4]);
        assert_eq!(ring.pending(), 0);
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn overflow_drops_the_oldest_and_keeps_the_newest() {
        let ring = AuditRing::with_capacity(4).unwrap();
        for _ in 0..10 {
            ring.append(record);
        }
        assert_eq!(ring.dropped(), 6);
        assert_eq!(
            drain_all(&ring),
            [6, 7, 8, 9],
            "the newest records are intact"
        );
        assert_eq!(ring.append(record), Append::Stored(10));
        assert_eq!(drain_all(&ring), [10]);
    }

    #[test]
    fn drain_respects_its_limit_and_resumes() {
        let ring = AuditRing::with_capacity(8).unwrap();
        for _ in 0..6 {
            ring.append(record);
        }
        let mut first = Vec::new();
        assert_eq!(ring.drain(4, |words| first.push(words[0])), 4);
        assert_eq!(first, [0, 1, 2, 3]);
        assert_eq!(drain_all(&ring), [4, 5]);
    }

    #[test]
    fn sizes_are_rounded_and_clamped() {
        assert_eq!(AuditRing::with_capacity(0).unwrap().capacity(), MIN_RECORDS);
        assert_eq!(AuditRing::with_capacity(1000).unwrap().capacity(), 1024);
        assert_eq!(
            AuditRing::with_capacity(usize::MAX).map(|ring| ring.capacity()),
            Some(MAX_RECORDS)
        );
    }

    /// A cell claimed and not yet published blocks draining, and one lap
    /// later every append: what a producer preempted in between would do
    /// (shown here by appending from inside `fill`, where the claim is
    /// held). The ring relies on claim-to-publish running at DISPATCH_LEVEL
    /// so that no thread switch can happen there: the next test checks it.
    #[test]
    fn a_claimed_unpublished_cell_stalls_draining_and_then_drops_every_record() {
        let ring = AuditRing::with_capacity(4).unwrap();
        let inner = std::cell::Cell::new(Vec::new());
        ring.append(|sequence| {
            // "Preempted" with cell 0 claimed: others append a lap's worth.
            let mut outcomes = Vec::new();
            for _ in 0..6 {
                outcomes.push(ring.append(record));
            }
            let mut drained = 0;
            ring.drain(usize::MAX, |_| drained += 1);
            outcomes.push(Append::Stored(drained));
            inner.set(outcomes);
            record(sequence)
        });
        let outcomes = inner.take();
        assert_eq!(
            &outcomes[..3],
            [Append::Stored(1), Append::Stored(2), Append::Stored(3)]
        );
        assert_eq!(&outcomes[3..6], [Append::Dropped; 3], "stalled");
        assert_eq!(outcomes[6], Append::Stored(0), "nothing could be drained");
        assert_eq!(drain_all(&ring), [0, 1, 2, 3], "unstalled once published");
    }

    #[test]
    fn claim_to_publish_and_claim_to_hand_back_run_at_dispatch_level() {
        reset_host();
        let ring = AuditRing::with_capacity(4).unwrap();
        let irql = std::cell::Cell::new(0u8);
        for _ in 0..6 {
            ring.append(|sequence| {
                irql.set(crate::platform::kernel_sync::current_irql());
                record(sequence)
            });
            assert_eq!(irql.get(), crate::ffi::DISPATCH_LEVEL as u8);
            assert_eq!(crate::platform::kernel_sync::current_irql(), 0, "restored");
        }
        let scopes = with_host(|host| host.dispatch_scopes);
        assert_eq!(scopes, 6, "one scope per append, discarding included");
        assert_eq!(drain_all(&ring), [2, 3, 4, 5]);
        // One scope per record taken, and one for the take that found none.
        assert_eq!(with_host(|host| host.dispatch_scopes), scopes + 5);
        assert_eq!(crate::platform::kernel_sync::current_irql(), 0);
    }

    /// Producers on several threads append while a consumer drains: every
    /// record is whole, sequence numbers are unique and increasing in the
    /// drained order, and drained + dropped + left = appended.
    #[test]
    fn concurrent_appends_and_drains_lose_nothing_uncounted() {
        const PER_PRODUCER: u64 = 20_000;
        let ring = Arc::new(AuditRing::with_capacity(64).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (ring, done) = (ring.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = None;
                let mut count = 0u64;
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    ring.drain(usize::MAX, |words| {
                        assert!(
                            words.iter().all(|&word| word == words[0]),
                            "torn record {words:?}"
                        );
                        assert!(
                            last.is_none_or(|previous| words[0] > previous),
                            "out of order"
                        );
                        last = Some(words[0]);
                        count += 1;
                    });
                    if finished {
                        return count;
                    }
                }
            })
        };
        let producers: Vec<_> = (0..3)
            .map(|_| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for _ in 0..PER_PRODUCER {
                        ring.append(record);
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let drained = consumer.join().unwrap();
        let left = drain_all(&ring).len() as u64;
        assert_eq!(drained + ring.dropped() + left, 3 * PER_PRODUCER);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two producers overflow a two-record ring while a consumer drains:
    /// every record taken is whole and in order, and nothing is lost
    /// uncounted, in every interleaving.
    #[test]
    fn overflowing_producers_and_a_consumer_agree() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let ring = Arc::new(AuditRing::with_capacity(2).unwrap());
            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let ring = ring.clone();
                    loom::thread::spawn(move || {
                        for _ in 0..2 {
                            ring.append(|sequence| [sequence; RECORD_WORDS]);
                        }
                    })
                })
                .collect();
            let mut seen = 0u64;
            let mut last = None;
            ring.drain(usize::MAX, |words| {
                assert!(words.iter().all(|&word| word == words[0]));
                assert!(last.is_none_or(|previous| words[0] > previous));
                last = Some(words[0]);
                seen += 1;
            });
            for producer in producers {
                producer.join().unwrap();
            }
            ring.drain(usize::MAX, |words| {
                assert!(words.iter().all(|&word| word == words[0]));
                assert!(last.is_none_or(|previous| words[0] > previous));
                last = Some(words[0]);
                seen += 1;
            });
            assert_eq!(seen + ring.dropped(), 4);
        });
    }
}
