//! Processes a callback met without a current record, waiting to be
//! classified from PASSIVE_LEVEL.
//!
//! The callbacks never read an image path: `SeLocateProcessImageName` may
//! query the file system, and a callback runs on an arbitrary thread that
//! may hold file-system locks. A process the table does not know gets the
//! policy's unknown-process record there (`handle_decision.rs`, step 4) and
//! its id is noted here; the next process notification (PASSIVE_LEVEL, the
//! creating or exiting thread) reads its path and tracks it
//! (`process_tracking.rs`). Noting takes no lock and never allocates: a
//! fixed set of ids, each claimed with one compare-and-swap; when the set is
//! full the id is not noted (the process is still tracked by the next
//! enumeration, and the `unclassified` counter shows the misses).
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};

/// Ids the set holds at once.
pub const PENDING_PROCESSES: usize = 16;

/// Empty slot marker: pid 0 is the Idle process, never looked up.
const EMPTY: u32 = 0;

/// The set of process ids waiting to be classified.
#[derive(Debug, Default)]
pub struct PendingClassification {
    pids: [AtomicU32; PENDING_PROCESSES],
}

impl PendingClassification {
    /// Notes `pid` (any IRQL). `false` when the set was full (or `pid` is 0).
    pub fn note(&self, pid: u32) -> bool {
        if pid == EMPTY {
            return false;
        }
        if self
            .pids
            .iter()
            .any(|slot| slot.load(Ordering::Relaxed) == pid)
        {
            return true;
        }
        self.pids.iter().any(|slot| {
            slot.compare_exchange(EMPTY, pid, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Removes `pid` if noted (its process exited: tracking it now would
    /// leave an entry no exit notification removes).
    pub fn forget(&self, pid: u32) {
        if pid == EMPTY {
            return;
        }
        for slot in &self.pids {
            let _ = slot.compare_exchange(pid, EMPTY, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Empties the set, passing each noted id to `each` once (a race may
    /// note an id twice; classifying it twice is harmless).
    pub fn take(&self, mut each: impl FnMut(u32)) {
        for slot in &self.pids {
            let pid = slot.swap(EMPTY, Ordering::Relaxed);
            if pid != EMPTY {
                each(pid);
            }
        }
    }

    /// Whether no id is waiting (a hint: ids may be noted meanwhile).
    pub fn is_empty(&self) -> bool {
        self.pids
            .iter()
            .all(|slot| slot.load(Ordering::Relaxed) == EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(set: &PendingClassification) -> Vec<u32> {
        let mut pids = Vec::new();
        set.take(|pid| pids.push(pid));
        pids
    }

    #[test]
    fn noted_ids_are_taken_once_and_the_set_empties() {
        let set = PendingClassification::default();
        assert!(set.is_empty());
        assert!(set.note(1200));
        assert!(set.note(1200), "already noted");
        assert!(set.note(1300));
        assert!(!set.note(0), "Idle is never noted");
        assert_eq!(taken(&set), [1200, 1300]);
        assert!(set.is_empty());
        assert_eq!(taken(&set), Vec::<u32>::new());
    }

    #[test]
    fn a_forgotten_id_is_not_taken() {
        let set = PendingClassification::default();
        assert!(set.note(1200));
        assert!(set.note(1300));
        set.forget(1200);
        set.forget(0);
        assert_eq!(taken(&set), [1300]);
    }

    #[test]
    fn a_full_set_refuses_new_ids_and_keeps_the_old_ones() {
        let set = PendingClassification::default();
        for pid in 1..=PENDING_PROCESSES as u32 {
            assert!(set.note(pid * 4));
        }
        assert!(!set.note(9999));
        assert_eq!(taken(&set).len(), PENDING_PROCESSES);
        assert!(set.note(9999));
    }
}
