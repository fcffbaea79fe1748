//! The driver's IOCTL dispatcher, as pure logic: checks every buffer, calls
//! the driver through [`ControlTarget`], encodes the response. The driver's
//! WDF queue adapter copies the request's buffers in and out and completes
//! the request with the [`Completion`]; host tests and the fuzzer call
//! [`dispatch`] directly.
//!
//! Rules: an unknown code gets `STATUS_INVALID_DEVICE_REQUEST`; an input
//! buffer of the wrong size or content gets `STATUS_INVALID_PARAMETER`; an
//! output buffer too small for what the code returns gets
//! `STATUS_BUFFER_TOO_SMALL`; in each of those cases nothing changes.

use crate::ioctl::{
    EventsHeader, PolicyHeader, RuleCountersResponse, SetPolicyRequest, Status, IOCTL_GET_POLICY,
    IOCTL_GET_RULE_COUNTERS, IOCTL_GET_STATUS, IOCTL_READ_EVENTS, IOCTL_RESET_COUNTERS,
    IOCTL_SET_POLICY,
};
use crate::AUDIT_RECORD_BYTES;

/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: i32 = 0;
/// `STATUS_BUFFER_OVERFLOW` (a warning: partial data returned).
pub const STATUS_BUFFER_OVERFLOW: i32 = 0x8000_0005_u32 as i32;
/// `STATUS_INVALID_PARAMETER`.
pub const STATUS_INVALID_PARAMETER: i32 = 0xC000_000D_u32 as i32;
/// `STATUS_INVALID_DEVICE_REQUEST`.
pub const STATUS_INVALID_DEVICE_REQUEST: i32 = 0xC000_0010_u32 as i32;
/// `STATUS_BUFFER_TOO_SMALL`.
pub const STATUS_BUFFER_TOO_SMALL: i32 = 0xC000_0023_u32 as i32;

/// How to complete the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// NTSTATUS.
    pub status: i32,
    /// Bytes written to the output buffer (`IoStatus.Information`).
    pub information: usize,
}

impl Completion {
    const fn status(status: i32) -> Self {
        Self {
            status,
            information: 0,
        }
    }

    const fn success(information: usize) -> Self {
        Self {
            status: STATUS_SUCCESS,
            information,
        }
    }
}

/// What the dispatcher needs from the driver.
pub trait ControlTarget {
    /// Current status.
    fn status(&self) -> Status;
    /// Validates `blob` completely, persists it if asked, then swaps it in.
    /// On any error nothing changes.
    ///
    /// # Errors
    /// The NTSTATUS to complete with.
    fn set_policy(&self, blob: &[u8], persist: bool) -> Result<(), i32>;
    /// The active blob's header (length, id).
    fn policy_header(&self) -> PolicyHeader;
    /// Copies the active blob into `out` (exactly `policy_header().blob_len`
    /// bytes long); returns false if the policy changed meanwhile (the
    /// dispatcher then reports the new size).
    fn copy_policy(&self, out: &mut [u8]) -> bool;
    /// Drains at most `out.len() / 64` whole records into `out`, oldest
    /// first; returns (records written, records still waiting, dropped so far).
    fn drain_events(&self, out: &mut [u8]) -> (usize, u64, u64);
    /// Zeroes the counters.
    fn reset_counters(&self);
    /// Rules whose counters `write_rule_counters` would write.
    fn rule_count(&self) -> usize;
    /// Writes the rule-counter response into `out` (sized for
    /// `rule_count()` rules); returns the bytes written, or `None` if the
    /// rule count changed meanwhile.
    fn write_rule_counters(&self, out: &mut [u8]) -> Option<usize>;
}

/// Handles one IOCTL. `input` and `output` are separate buffers (the
/// adapter copies METHOD_BUFFERED's shared system buffer's input first).
pub fn dispatch(
    target: &impl ControlTarget,
    code: u32,
    input: &[u8],
    output: &mut [u8],
) -> Completion {
    match code {
        IOCTL_GET_STATUS => {
            if !input.is_empty() {
                return Completion::status(STATUS_INVALID_PARAMETER);
            }
            let Some(out) = output.get_mut(..Status::SIZE) else {
                return Completion::status(STATUS_BUFFER_TOO_SMALL);
            };
            out.copy_from_slice(&target.status().to_bytes());
            Completion::success(Status::SIZE)
        }
        IOCTL_SET_POLICY => match SetPolicyRequest::parse(input) {
            Ok(request) => match target
                .set_policy(request.blob, request.flags & SetPolicyRequest::PERSIST != 0)
            {
                Ok(()) => Completion::success(0),
                Err(status) => Completion::status(status),
            },
            Err(_) => Completion::status(STATUS_INVALID_PARAMETER),
        },
        IOCTL_GET_POLICY => {
            if !input.is_empty() {
                return Completion::status(STATUS_INVALID_PARAMETER);
            }
            let header = target.policy_header();
            let Some((head, rest)) = output.split_at_mut_checked(PolicyHeader::SIZE) else {
                return Completion::status(STATUS_BUFFER_TOO_SMALL);
            };
            head.copy_from_slice(&header.to_bytes());
            let length = header.blob_len as usize;
            let copied = rest
                .get_mut(..length)
                .is_some_and(|body| target.copy_policy(body));
            if copied {
                Completion::success(PolicyHeader::SIZE + length)
            } else {
                // Too small (or changed meanwhile): the header says the size.
                Completion {
                    status: STATUS_BUFFER_OVERFLOW,
                    information: PolicyHeader::SIZE,
                }
            }
        }
        IOCTL_READ_EVENTS => {
            if !input.is_empty() {
                return Completion::status(STATUS_INVALID_PARAMETER);
            }
            if EventsHeader::capacity(output.len()) == 0 {
                return Completion::status(STATUS_BUFFER_TOO_SMALL);
            }
            let Some((head, rest)) = output.split_at_mut_checked(EventsHeader::SIZE) else {
                return Completion::status(STATUS_BUFFER_TOO_SMALL);
            };
            let whole = rest.len() / AUDIT_RECORD_BYTES * AUDIT_RECORD_BYTES;
            let (records, remaining, dropped) =
                target.drain_events(rest.get_mut(..whole).unwrap_or_default());
            let header = EventsHeader {
                records: u32::try_from(records).unwrap_or(u32::MAX),
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                dropped,
            };
            head.copy_from_slice(&header.to_bytes());
            Completion::success(EventsHeader::SIZE + records * AUDIT_RECORD_BYTES)
        }
        IOCTL_RESET_COUNTERS => {
            if !input.is_empty() {
                return Completion::status(STATUS_INVALID_PARAMETER);
            }
            target.reset_counters();
            Completion::success(0)
        }
        IOCTL_GET_RULE_COUNTERS => {
            if !input.is_empty() {
                return Completion::status(STATUS_INVALID_PARAMETER);
            }
            let needed = RuleCountersResponse::size(target.rule_count());
            let Some(out) = output.get_mut(..needed) else {
                return Completion::status(STATUS_BUFFER_TOO_SMALL);
            };
            match target.write_rule_counters(out) {
                Some(written) => Completion::success(written),
                None => Completion::status(STATUS_BUFFER_TOO_SMALL),
            }
        }
        _ => Completion::status(STATUS_INVALID_DEVICE_REQUEST),
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;

    use super::*;
    use crate::ioctl::{
        ctl_code, EventsHeader, PolicyHeader, Status, DEVICE_TYPE, FILE_READ_ACCESS,
        METHOD_BUFFERED,
    };
    use crate::memory_target::MemoryTarget;
    use crate::{AuditMode, AuditObject, AuditRecord};
    use alloc::vec;
    use alloc::vec::Vec;

    fn record(sequence: u64) -> AuditRecord {
        AuditRecord {
            sequence,
            timestamp: 1,
            object: AuditObject::Process,
            duplication: false,
            process_id: 4,
            thread_id: 0,
            originator_process_id: 8,
            originator_thread_id: 12,
            source_process_id: 0,
            target_process_id: 0,
            original_desired_access: 1,
            desired_access: 0,
            result_code: 0,
            rule_id: 0,
            mode: AuditMode::Enforce,
            ask_outcome: None,
            ask_wait_us: 0,
        }
    }

    fn set_policy_input(blob: &[u8], flags: u32) -> Vec<u8> {
        let mut input = vec![0u8; SetPolicyRequest::HEADER + blob.len()];
        SetPolicyRequest { flags, blob }.write(&mut input).unwrap();
        input
    }

    #[test]
    fn status_needs_an_empty_input_and_a_full_size_output() {
        let target = MemoryTarget::default();
        let mut out = [0u8; 400];
        assert_eq!(
            dispatch(&target, IOCTL_GET_STATUS, &[], &mut out),
            Completion::success(Status::SIZE)
        );
        assert_eq!(
            Status::from_bytes(&out[..Status::SIZE]).unwrap(),
            target.status()
        );
        assert_eq!(
            dispatch(&target, IOCTL_GET_STATUS, &[], &mut out[..Status::SIZE - 1]).status,
            STATUS_BUFFER_TOO_SMALL
        );
        assert_eq!(
            dispatch(&target, IOCTL_GET_STATUS, &[1], &mut out).status,
            STATUS_INVALID_PARAMETER
        );
    }

    #[test]
    fn set_policy_applies_valid_requests_and_changes_nothing_on_bad_ones() {
        let target = MemoryTarget::default();
        let good = set_policy_input(b"PGPB-one", SetPolicyRequest::PERSIST);
        assert_eq!(
            dispatch(&target, IOCTL_SET_POLICY, &good, &mut []),
            Completion::success(0)
        );
        assert_eq!(
            target.state.borrow().persisted.as_deref(),
            Some(&b"PGPB-one"[..])
        );
        let before = target.state.borrow().clone();
        for bad in [
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            good[..7].to_vec(),
            set_policy_input(b"PGPB-two", 0x80),
            set_policy_input(b"XXXX-two", 0),
        ] {
            assert_eq!(
                dispatch(&target, IOCTL_SET_POLICY, &bad, &mut []).status,
                STATUS_INVALID_PARAMETER
            );
            let after = target.state.borrow();
            assert_eq!(
                (after.policy.as_slice(), after.mutations),
                (before.policy.as_slice(), before.mutations)
            );
        }
    }

    #[test]
    fn get_policy_reports_the_size_when_the_buffer_is_short() {
        let target = MemoryTarget::default();
        dispatch(
            &target,
            IOCTL_SET_POLICY,
            &set_policy_input(b"PGPB-blob", 0),
            &mut [],
        );
        let mut small = [0u8; 10];
        let completion = dispatch(&target, IOCTL_GET_POLICY, &[], &mut small);
        assert_eq!(
            completion,
            Completion {
                status: STATUS_BUFFER_OVERFLOW,
                information: 8
            }
        );
        assert_eq!(PolicyHeader::parse(&small).unwrap().blob_len, 9);
        let mut big = [0u8; 64];
        assert_eq!(
            dispatch(&target, IOCTL_GET_POLICY, &[], &mut big),
            Completion::success(17)
        );
        assert_eq!(&big[8..17], b"PGPB-blob");
        assert_eq!(
            dispatch(&target, IOCTL_GET_POLICY, &[], &mut [0u8; 7]).status,
            STATUS_BUFFER_TOO_SMALL
        );
    }

    #[test]
    fn events_drain_whole_records_oldest_first_and_report_what_is_left() {
        let target = MemoryTarget::default();
        {
            let mut state = target.state.borrow_mut();
            state.events.extend((0..5).map(record));
            state.dropped = 3;
        }
        // Room for two records and part of a third: only whole records.
        let mut out = vec![0u8; EventsHeader::SIZE + 2 * 64 + 40];
        let completion = dispatch(&target, IOCTL_READ_EVENTS, &[], &mut out);
        assert_eq!(completion, Completion::success(EventsHeader::SIZE + 128));
        let (header, records) = EventsHeader::parse(&out[..completion.information]).unwrap();
        assert_eq!(
            (header.records, header.remaining, header.dropped),
            (2, 3, 3)
        );
        let first = AuditRecord::from_bytes(&records[..64]).unwrap();
        let second = AuditRecord::from_bytes(&records[64..]).unwrap();
        assert_eq!((first.sequence, second.sequence), (0, 1));
        assert_eq!(
            dispatch(&target, IOCTL_READ_EVENTS, &[], &mut [0u8; 79]).status,
            STATUS_BUFFER_TOO_SMALL
        );
        assert_eq!(
            target.state.borrow().events.len(),
            3,
            "a refused drain takes nothing"
        );
    }

    #[test]
    fn unknown_codes_and_stray_inputs_are_refused() {
        let target = MemoryTarget::default();
        let unknown = ctl_code(DEVICE_TYPE, 0x9FF, METHOD_BUFFERED, FILE_READ_ACCESS);
        assert_eq!(
            dispatch(&target, unknown, &[], &mut [0u8; 512]).status,
            STATUS_INVALID_DEVICE_REQUEST
        );
        assert_eq!(
            dispatch(&target, IOCTL_RESET_COUNTERS, &[0], &mut []).status,
            STATUS_INVALID_PARAMETER
        );
        assert_eq!(target.state.borrow().mutations, 0);
    }

    #[test]
    fn rule_counters_need_room_for_every_rule() {
        let target = MemoryTarget::default();
        target.state.borrow_mut().rule_counters = vec![(5, 2), (7, 0)];
        let mut out = [0u8; 40];
        assert_eq!(
            dispatch(&target, IOCTL_GET_RULE_COUNTERS, &[], &mut out),
            Completion::success(40)
        );
        let mut seen = Vec::new();
        RuleCountersResponse::parse(&out, |hits, strips| seen.push((hits, strips))).unwrap();
        assert_eq!(seen, [(5, 2), (7, 0)]);
        assert_eq!(
            dispatch(&target, IOCTL_GET_RULE_COUNTERS, &[], &mut out[..39]).status,
            STATUS_BUFFER_TOO_SMALL
        );
        assert_eq!(
            dispatch(&target, IOCTL_RESET_COUNTERS, &[], &mut []),
            Completion::success(0)
        );
        assert_eq!(target.state.borrow().rule_counters, [(0, 0), (0, 0)]);
    }
}
