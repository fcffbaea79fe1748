//! What the control plane can ask of the driver: the driver side of
//! `procguard_protocol::dispatch::ControlTarget`. The dispatcher (pure,
//! host-tested and fuzzed) checks every buffer; this module does the work.
//! IOCTLs run at PASSIVE_LEVEL (the control device asks for it).

use core::sync::atomic::Ordering;

use procguard_protocol::dispatch::ControlTarget;
use procguard_protocol::ioctl::{
    Counters, PolicyHeader, RuleCountersResponse, Status, PROTOCOL_VERSION,
};
use procguard_protocol::AUDIT_RECORD_BYTES;

use crate::control::policy_apply;
use crate::driver_state::DriverState;

/// `major << 16 | minor << 8 | patch` of this crate's version.
const fn driver_version() -> u32 {
    let bytes = env!("CARGO_PKG_VERSION").as_bytes();
    let mut parts = [0u32; 3];
    let mut part = 0;
    let mut index = 0;
    while index < bytes.len() && part < 3 {
        let byte = bytes[index];
        if byte == b'.' {
            part += 1;
        } else if byte.is_ascii_digit() {
            parts[part] = parts[part] * 10 + (byte - b'0') as u32;
        }
        index += 1;
    }
    (parts[0] << 16) | (parts[1] << 8) | parts[2]
}

impl ControlTarget for DriverState {
    fn status(&self) -> Status {
        let counter = |value: &core::sync::atomic::AtomicU64| value.load(Ordering::Relaxed);
        let c = &self.counters;
        let mut status = Status {
            protocol_version: PROTOCOL_VERSION,
            driver_version: driver_version(),
            last_error: self.last_error.load(Ordering::Relaxed),
            audit_capacity: u32::try_from(self.ring.capacity()).unwrap_or(u32::MAX),
            counters: Counters {
                seen: counter(&c.seen),
                modified: counter(&c.modified),
                audited: counter(&c.audited),
                skipped_kernel: counter(&c.skipped_kernel),
                skipped_self: counter(&c.skipped_self),
                exempt: counter(&c.exempt),
                unclassified: counter(&c.unclassified),
                events_dropped: self.ring.dropped(),
                events_pending: self.ring.pending(),
            },
            ask: self.ask.status(),
            policy_updates: self.policy_updates.snapshot(),
            ..Status::default()
        };
        if let Some(generation) = self.active.read() {
            status.policy_id = generation.policy.policy_id();
            status.rule_count = u32::try_from(generation.policy.rule_count()).unwrap_or(u32::MAX);
            status.tracked_processes = u32::try_from(generation.table.len()).unwrap_or(u32::MAX);
            // The policy in force is the authority (the broker keeps a copy
            // for its connect response).
            status.ask.timeout_ms = generation.policy.settings().ask_timeout_ms;
        }
        let load_info = self.load_info.lock();
        status.callbacks_registered = load_info.registration.is_some();
        status.notify_registered = load_info.notify_registered;
        if let Some(altitude) = load_info.altitude {
            let units = altitude.units();
            for (slot, unit) in status.altitude.iter_mut().zip(units) {
                *slot = *unit;
            }
            status.altitude_len =
                u16::try_from(units.len().min(status.altitude.len())).unwrap_or(0);
        }
        status
    }

    fn set_policy(&self, blob: &[u8], persist: bool) -> Result<(), i32> {
        policy_apply::apply_policy(self, blob, policy_apply::Origin::caller(), persist).map(|_| ())
    }

    fn policy_header(&self) -> PolicyHeader {
        self.active.read().map_or(
            PolicyHeader {
                blob_len: 0,
                policy_id: 0,
            },
            |generation| PolicyHeader {
                blob_len: u32::try_from(generation.blob.len()).unwrap_or(u32::MAX),
                policy_id: generation.policy.policy_id(),
            },
        )
    }

    fn copy_policy(&self, out: &mut [u8]) -> bool {
        let Some(generation) = self.active.read() else {
            return out.is_empty();
        };
        if generation.blob.len() != out.len() {
            return false;
        }
        out.copy_from_slice(&generation.blob);
        true
    }

    fn drain_events(&self, out: &mut [u8]) -> (usize, u64, u64) {
        let mut chunks = out.chunks_exact_mut(AUDIT_RECORD_BYTES);
        let capacity = chunks.len();
        let written = self.ring.drain(capacity, |words| {
            if let Some(chunk) = chunks.next() {
                for (bytes, word) in chunk.chunks_exact_mut(8).zip(words) {
                    bytes.copy_from_slice(&word.to_le_bytes());
                }
            }
        });
        (written, self.ring.pending(), self.ring.dropped())
    }

    fn reset_counters(&self) {
        let c = &self.counters;
        for counter in [
            &c.seen,
            &c.modified,
            &c.audited,
            &c.skipped_kernel,
            &c.skipped_self,
            &c.exempt,
            &c.unclassified,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.ask.reset_counters();
        if let Some(generation) = self.active.read() {
            for stats in &generation.rule_stats {
                stats.hits.store(0, Ordering::Relaxed);
                stats.strips.store(0, Ordering::Relaxed);
            }
        }
    }

    fn rule_count(&self) -> usize {
        self.active
            .read()
            .map_or(0, |generation| generation.rule_stats.len())
    }

    fn write_rule_counters(&self, out: &mut [u8]) -> Option<usize> {
        let generation = self.active.read()?;
        let rules = generation.rule_stats.len();
        let needed = RuleCountersResponse::size(rules);
        let out = out.get_mut(..needed)?;
        out.get_mut(0..4)?
            .copy_from_slice(&u32::try_from(rules).ok()?.to_le_bytes());
        out.get_mut(4..8)?
            .copy_from_slice(&generation.policy.policy_id().to_le_bytes());
        let body = out.get_mut(RuleCountersResponse::HEADER..)?;
        for (chunk, stats) in body
            .chunks_exact_mut(RuleCountersResponse::PER_RULE)
            .zip(&generation.rule_stats)
        {
            chunk
                .get_mut(0..8)?
                .copy_from_slice(&stats.hits.load(Ordering::Relaxed).to_le_bytes());
            chunk
                .get_mut(8..16)?
                .copy_from_slice(&stats.strips.load(Ordering::Relaxed).to_le_bytes());
        }
        Some(needed)
    }
}
