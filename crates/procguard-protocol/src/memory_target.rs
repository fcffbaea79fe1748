//! An in-memory [`ControlTarget`]: what the driver does, minus the kernel.
//! Used by the dispatcher's tests and fuzzer, and by the control tool's fake
//! device, so user-mode tests talk to the same dispatcher the driver runs.
//!
//! It accepts any non-empty blob that starts with `PGPB` (the policy
//! engine's magic) as valid; the driver validates blobs completely. Like
//! the driver, it counts applied and refused policies in
//! `Status.policy_updates` (source: control).

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::dispatch::{ControlTarget, STATUS_INVALID_PARAMETER};
use crate::ioctl::{PolicyHeader, RuleCountersResponse, Status};
use crate::{AuditRecord, AUDIT_RECORD_BYTES};

/// The mutable state of the fake driver.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    /// Status reported (counters included).
    pub status: Status,
    /// The active blob.
    pub policy: Vec<u8>,
    /// What `persist` wrote ("the registry").
    pub persisted: Option<Vec<u8>>,
    /// Queued audit records.
    pub events: VecDeque<AuditRecord>,
    /// Records dropped so far.
    pub dropped: u64,
    /// Per-rule (hits, strips).
    pub rule_counters: Vec<(u64, u64)>,
    /// Calls that changed something, for tests.
    pub mutations: u64,
}

/// The fake driver.
#[derive(Debug, Default)]
pub struct MemoryTarget {
    /// Its state.
    pub state: RefCell<MemoryState>,
}

impl ControlTarget for MemoryTarget {
    fn status(&self) -> Status {
        let state = self.state.borrow();
        let mut status = state.status;
        status.counters.events_pending = state.events.len() as u64;
        status.counters.events_dropped = state.dropped;
        status
    }

    fn set_policy(&self, blob: &[u8], persist: bool) -> Result<(), i32> {
        let mut state = self.state.borrow_mut();
        if blob.len() < 4 || &blob[..4] != b"PGPB" {
            // Counted as the driver counts a refusal (not a mutation: the
            // policy in force is unchanged).
            let updates = &mut state.status.policy_updates;
            updates.rejected = updates.rejected.wrapping_add(1);
            updates.last_rejected_status = STATUS_INVALID_PARAMETER;
            return Err(STATUS_INVALID_PARAMETER);
        }
        if persist {
            state.persisted = Some(blob.to_vec());
        }
        state.policy = blob.to_vec();
        let updates = &mut state.status.policy_updates;
        updates.applied = updates.applied.wrapping_add(1);
        updates.source = Some(crate::PolicySource::Control);
        state.mutations += 1;
        Ok(())
    }

    fn policy_header(&self) -> PolicyHeader {
        let state = self.state.borrow();
        PolicyHeader {
            blob_len: state.policy.len() as u32,
            policy_id: state.status.policy_id,
        }
    }

    fn copy_policy(&self, out: &mut [u8]) -> bool {
        let state = self.state.borrow();
        if out.len() != state.policy.len() {
            return false;
        }
        out.copy_from_slice(&state.policy);
        true
    }

    fn drain_events(&self, out: &mut [u8]) -> (usize, u64, u64) {
        let mut state = self.state.borrow_mut();
        let mut written = 0;
        for chunk in out.chunks_exact_mut(AUDIT_RECORD_BYTES) {
            let Some(record) = state.events.pop_front() else {
                break;
            };
            chunk.copy_from_slice(&record.to_bytes());
            written += 1;
        }
        if written > 0 {
            state.mutations += 1;
        }
        (written, state.events.len() as u64, state.dropped)
    }

    fn reset_counters(&self) {
        let mut state = self.state.borrow_mut();
        state.status.counters = crate::ioctl::Counters::default();
        for counters in &mut state.rule_counters {
            *counters = (0, 0);
        }
        state.mutations += 1;
    }

    fn rule_count(&self) -> usize {
        self.state.borrow().rule_counters.len()
    }

    fn write_rule_counters(&self, out: &mut [u8]) -> Option<usize> {
        let state = self.state.borrow();
        let needed = RuleCountersResponse::size(state.rule_counters.len());
        let out = out.get_mut(..needed)?;
        out[0..4].copy_from_slice(&(state.rule_counters.len() as u32).to_le_bytes());
        out[4..8].copy_from_slice(&state.status.policy_id.to_le_bytes());
        for (index, (hits, strips)) in state.rule_counters.iter().enumerate() {
            let at = RuleCountersResponse::HEADER + index * RuleCountersResponse::PER_RULE;
            out[at..at + 8].copy_from_slice(&hits.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&strips.to_le_bytes());
        }
        Some(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioctl::PolicyUpdates;

    #[test]
    fn set_policy_counts_applied_and_refused_policies() {
        let target = MemoryTarget::default();
        assert_eq!(target.status().policy_updates, PolicyUpdates::default());
        assert_eq!(target.set_policy(b"PGPB-one", false), Ok(()));
        assert_eq!(
            target.set_policy(b"XXXX", true),
            Err(STATUS_INVALID_PARAMETER)
        );
        assert_eq!(target.set_policy(b"PGPB-two", true), Ok(()));
        assert_eq!(
            target.status().policy_updates,
            PolicyUpdates {
                applied: 2,
                rejected: 1,
                last_rejected_status: STATUS_INVALID_PARAMETER,
                source: Some(crate::PolicySource::Control),
            }
        );
        assert_eq!(target.state.borrow().mutations, 2);
    }
}
