//! An in-process fake of procguard.sys's control device, for tests: the same
//! dispatcher the driver runs ([`procguard_protocol::dispatch`], which checks
//! every buffer and answers `STATUS_INVALID_PARAMETER`,
//! `STATUS_BUFFER_TOO_SMALL`, `STATUS_INVALID_DEVICE_REQUEST` as the driver
//! does) over a [`FakeDriver`] that validates blobs completely with the policy
//! engine, keeps counters and a queue of audit records, and can decide
//! simulated handle requests with the compiled policy, like the callback.
//!
//! `IOCTL_WAIT_EVENTS` pends in the driver until a record arrives; the fake
//! is single-threaded, so a wait that would pend instead takes the next
//! batch of [`FakeState::arrivals`] (records the callback appended while the
//! request pended) and completes with it. With no batch left, the reader's
//! Ctrl-C is what ends the wait: the fake marks the device interrupted and
//! fails the wait with `STATUS_CANCELLED`, as `CancelIoEx` makes the driver
//! do. A fake of an older driver ([`FakeState::wait_events_supported`]
//! false) refuses the wait as unknown, and delivers a batch when a read
//! finds the queue empty instead (what a poller sees).

use std::cell::RefCell;
use std::collections::VecDeque;

use procguard_policy::{
    CompiledPolicy, DecodeError, HandleRequest, ObjectKind, Operation, ProcessIdentity,
};
use procguard_protocol::ask::{AskStatus, EventsWaiting, IOCTL_WAIT_EVENTS, STATUS_CANCELLED};
use procguard_protocol::dispatch::{
    dispatch, Completion, ControlTarget, STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};
use procguard_protocol::ioctl::{
    Counters, EventsHeader, PolicyHeader, RuleCountersResponse, Status, IOCTL_READ_EVENTS,
};
use procguard_protocol::{AuditMode, AuditObject, AuditRecord, AUDIT_RECORD_BYTES};

use crate::device::{Device, DeviceError};

/// `STATUS_INSUFFICIENT_RESOURCES`, what the driver answers when it cannot
/// allocate the new policy.
const STATUS_INSUFFICIENT_RESOURCES: i32 = 0xC000_009A_u32.cast_signed();

/// The fake driver's state.
#[derive(Debug, Clone)]
pub struct FakeState {
    /// Status fields the fake does not compute (versions, flags, altitude,
    /// tracked processes, last error, audit capacity) and the counters.
    pub status: Status,
    /// The active blob (empty: no policy in force).
    pub blob: Vec<u8>,
    /// The active policy, compiled from `blob`.
    pub policy: CompiledPolicy,
    /// What `persist` wrote (`Parameters\Policy`).
    pub persisted: Option<Vec<u8>>,
    /// Queued audit records, oldest first.
    pub events: VecDeque<AuditRecord>,
    /// Most records the queue holds; older ones are dropped and counted.
    pub capacity: usize,
    /// Records dropped so far.
    pub dropped: u64,
    /// Next record sequence number.
    pub next_sequence: u64,
    /// Per-rule (hits, strips) of the active policy.
    pub rule_counters: Vec<(u64, u64)>,
    /// Requests that reached the dispatcher, in order (code, input length,
    /// output length).
    pub requests: Vec<(u32, usize, usize)>,
    /// Whether the driver knows `IOCTL_WAIT_EVENTS` (protocol 2); false:
    /// an older driver, which fails it with `STATUS_INVALID_DEVICE_REQUEST`.
    pub wait_events_supported: bool,
    /// Batches of records that arrive, one batch each time a reader would
    /// wait for records (see the module documentation).
    pub arrivals: VecDeque<Vec<AuditRecord>>,
    /// Ctrl-C was pressed (the reader ran out of arrivals).
    pub interrupted: bool,
    /// The reader asked for Ctrl-C to cancel its requests
    /// ([`Device::cancel_on_ctrl_c`]).
    pub cancel_on_ctrl_c: bool,
}

/// A fake procguard.sys (the driver side of [`ControlTarget`]).
#[derive(Debug)]
pub struct FakeDriver {
    /// Its state (the dispatcher takes `&self`).
    pub state: RefCell<FakeState>,
}

impl Default for FakeDriver {
    fn default() -> Self {
        let mut altitude = [0u16; 40];
        for (unit, byte) in altitude.iter_mut().zip(b"385201") {
            *unit = u16::from(*byte);
        }
        Self {
            state: RefCell::new(FakeState {
                status: Status {
                    driver_version: 0x0000_0100,
                    callbacks_registered: true,
                    notify_registered: true,
                    tracked_processes: 87,
                    audit_capacity: 4096,
                    altitude,
                    altitude_len: 6,
                    ask: AskStatus {
                        timeout_ms: 250,
                        slots: 64,
                        ..AskStatus::default()
                    },
                    ..Status::default()
                },
                blob: Vec::new(),
                policy: CompiledPolicy::empty(),
                persisted: None,
                events: VecDeque::new(),
                capacity: 4096,
                dropped: 0,
                next_sequence: 0,
                rule_counters: Vec::new(),
                requests: Vec::new(),
                wait_events_supported: true,
                arrivals: VecDeque::new(),
                interrupted: false,
                cancel_on_ctrl_c: false,
            }),
        }
    }
}

/// A handle request for [`FakeDriver::simulate`]: what the callback would see.
#[derive(Debug, Clone, Copy)]
pub struct SimulatedRequest<'a> {
    /// The process the handle is for.
    pub target: ProcessIdentity<'a>,
    /// The requester (for a duplicate, the process receiving the handle).
    pub requester: ProcessIdentity<'a>,
    /// For a duplicate, the process the handle is duplicated from.
    pub duplicate_source_pid: u32,
    /// The thread making the call.
    pub requester_thread_id: u32,
    /// For a thread handle, the thread.
    pub thread_id: u32,
    /// Process or thread handle.
    pub object: ObjectKind,
    /// Create or duplicate.
    pub operation: Operation,
    /// Access asked for.
    pub desired_access: u32,
    /// When (100 ns since 1601, UTC).
    pub timestamp: i64,
}

impl FakeDriver {
    /// The next batch of [`FakeState::arrivals`] into the queue; false (and
    /// Ctrl-C pressed) when none is left.
    fn arrive(&self) -> bool {
        let batch = self.state.borrow_mut().arrivals.pop_front();
        match batch {
            Some(batch) => {
                for record in batch {
                    self.push_event(record);
                }
                true
            }
            None => {
                self.state.borrow_mut().interrupted = true;
                false
            }
        }
    }

    /// `IOCTL_WAIT_EVENTS` (routed outside the dispatcher, as in the driver,
    /// where it pends): completes with the number of records waiting once
    /// there is one.
    fn wait_events(&self, input: &[u8], output: &mut [u8]) -> Completion {
        if !self.state.borrow().wait_events_supported {
            return completion(STATUS_INVALID_DEVICE_REQUEST, 0);
        }
        if !input.is_empty() {
            return completion(STATUS_INVALID_PARAMETER, 0);
        }
        let Some(out) = output.get_mut(..EventsWaiting::SIZE) else {
            return completion(STATUS_BUFFER_TOO_SMALL, 0);
        };
        if self.state.borrow().events.is_empty() && !self.arrive() {
            return completion(STATUS_CANCELLED, 0);
        }
        let pending = self.state.borrow().events.len() as u64;
        out.copy_from_slice(&EventsWaiting { pending }.to_bytes());
        completion(STATUS_SUCCESS, EventsWaiting::SIZE)
    }

    /// Queues a record as the audit ring would (dropping the oldest when full).
    pub fn push_event(&self, record: AuditRecord) {
        let mut state = self.state.borrow_mut();
        if state.events.len() >= state.capacity.max(1) {
            state.events.pop_front();
            state.dropped += 1;
        }
        state.events.push_back(record);
    }

    /// Decides a handle request with the active policy, as the callback does:
    /// counts it, counts the responsible rule, queues an audit record when
    /// the decision asks for one. Returns the access granted.
    pub fn simulate(&self, request: &SimulatedRequest<'_>) -> u32 {
        let (decision, record) = {
            let mut state = self.state.borrow_mut();
            let policy = &state.policy;
            let target = policy.classify(&request.target);
            let requester = policy.classify(&request.requester);
            let decision = policy.decide(
                &target,
                &requester,
                &HandleRequest {
                    object: request.object,
                    operation: request.operation,
                    desired_access: request.desired_access,
                    kernel_handle: false,
                    same_process: request.target.pid == request.requester.pid,
                },
            );
            state.status.counters.seen += 1;
            let removed = decision.removed(request.desired_access);
            if removed != 0 {
                state.status.counters.modified += 1;
            }
            if decision.exemption.is_some() {
                state.status.counters.exempt += 1;
            }
            if let Some(rule) = decision.rule {
                if let Some((hits, strips)) = state.rule_counters.get_mut(usize::from(rule)) {
                    *hits += 1;
                    if removed != 0 {
                        *strips += 1;
                    }
                }
            }
            let record = decision.audit.then(|| {
                state.status.counters.audited += 1;
                let sequence = state.next_sequence;
                state.next_sequence += 1;
                let duplication = request.operation == Operation::Duplicate;
                AuditRecord {
                    sequence,
                    timestamp: request.timestamp,
                    object: match request.object {
                        ObjectKind::Process => AuditObject::Process,
                        ObjectKind::Thread => AuditObject::Thread,
                    },
                    duplication,
                    process_id: request.target.pid,
                    thread_id: request.thread_id,
                    originator_process_id: request.requester.pid,
                    originator_thread_id: request.requester_thread_id,
                    source_process_id: if duplication {
                        request.duplicate_source_pid
                    } else {
                        0
                    },
                    target_process_id: if duplication {
                        request.requester.pid
                    } else {
                        0
                    },
                    original_desired_access: request.desired_access,
                    desired_access: decision.access,
                    result_code: 0,
                    rule_id: decision
                        .rule
                        .map_or(procguard_protocol::audit_record::NO_RULE, u32::from),
                    mode: if removed != 0 {
                        AuditMode::Enforce
                    } else {
                        AuditMode::Audit
                    },
                    ask_outcome: None,
                    ask_wait_us: 0,
                }
            });
            (decision, record)
        };
        if let Some(record) = record {
            self.push_event(record);
        }
        decision.access
    }
}

impl ControlTarget for FakeDriver {
    fn status(&self) -> Status {
        let state = self.state.borrow();
        let mut status = state.status;
        if state.blob.is_empty() {
            status.policy_id = 0;
            status.rule_count = 0;
        } else {
            status.policy_id = state.policy.policy_id();
            status.rule_count = u32::try_from(state.policy.rule_count()).unwrap_or(u32::MAX);
        }
        status.counters.events_pending = state.events.len() as u64;
        status.counters.events_dropped = state.dropped;
        status
    }

    fn set_policy(&self, blob: &[u8], persist: bool) -> Result<(), i32> {
        let policy = match CompiledPolicy::from_blob(blob) {
            Ok(policy) => policy,
            Err(DecodeError::OutOfMemory) => return Err(STATUS_INSUFFICIENT_RESOURCES),
            Err(_) => return Err(STATUS_INVALID_PARAMETER),
        };
        let mut state = self.state.borrow_mut();
        if persist {
            state.persisted = Some(blob.to_vec());
        }
        state.rule_counters = vec![(0, 0); policy.rule_count()];
        state.policy = policy;
        state.blob = blob.to_vec();
        Ok(())
    }

    fn policy_header(&self) -> PolicyHeader {
        let state = self.state.borrow();
        PolicyHeader {
            blob_len: u32::try_from(state.blob.len()).unwrap_or(u32::MAX),
            policy_id: if state.blob.is_empty() {
                0
            } else {
                state.policy.policy_id()
            },
        }
    }

    fn copy_policy(&self, out: &mut [u8]) -> bool {
        let state = self.state.borrow();
        if out.len() != state.blob.len() {
            return false;
        }
        out.copy_from_slice(&state.blob);
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
        (written, state.events.len() as u64, state.dropped)
    }

    fn reset_counters(&self) {
        let mut state = self.state.borrow_mut();
        let pending = state.status.counters.events_pending;
        state.status.counters = Counters {
            events_pending: pending,
            ..Counters::default()
        };
        for counters in &mut state.rule_counters {
            *counters = (0, 0);
        }
    }

    fn rule_count(&self) -> usize {
        self.state.borrow().rule_counters.len()
    }

    fn write_rule_counters(&self, out: &mut [u8]) -> Option<usize> {
        let state = self.state.borrow();
        let needed = RuleCountersResponse::size(state.rule_counters.len());
        let out = out.get_mut(..needed)?;
        let rules = u32::try_from(state.rule_counters.len()).ok()?;
        out[0..4].copy_from_slice(&rules.to_le_bytes());
        let id = if state.blob.is_empty() {
            0
        } else {
            state.policy.policy_id()
        };
        out[4..8].copy_from_slice(&id.to_le_bytes());
        for (index, (hits, strips)) in state.rule_counters.iter().enumerate() {
            let at = RuleCountersResponse::HEADER + index * RuleCountersResponse::PER_RULE;
            out[at..at + 8].copy_from_slice(&hits.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&strips.to_le_bytes());
        }
        Some(needed)
    }
}

const fn completion(status: i32, information: usize) -> Completion {
    Completion {
        status,
        information,
    }
}

/// The fake control device: [`Device`] over the driver's dispatcher and a
/// [`FakeDriver`]. Completion statuses become [`DeviceError`]s the way
/// `DeviceIoControl` reports them.
#[derive(Debug, Default)]
pub struct FakeDevice {
    /// The driver behind the device.
    pub driver: FakeDriver,
}

impl FakeDevice {
    /// A device whose driver runs `blob` (panics if the fake refuses it).
    #[must_use]
    pub fn with_policy(blob: &[u8]) -> Self {
        let device = Self::default();
        assert!(
            device.driver.set_policy(blob, false).is_ok(),
            "the fake driver refused the blob"
        );
        device
    }
}

impl Device for FakeDevice {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        self.driver
            .state
            .borrow_mut()
            .requests
            .push((code, input.len(), output.len()));
        let Completion {
            status,
            information,
        } = if code == IOCTL_WAIT_EVENTS {
            self.driver.wait_events(input, output)
        } else {
            dispatch(&self.driver, code, input, output)
        };
        // An older driver's reader polls: a read that finds nothing is when
        // the next batch arrives.
        let polled_empty = code == IOCTL_READ_EVENTS
            && status == STATUS_SUCCESS
            && information == EventsHeader::SIZE
            && !self.driver.state.borrow().wait_events_supported;
        if polled_empty {
            self.driver.arrive();
        }
        match status {
            STATUS_SUCCESS => Ok(information),
            STATUS_BUFFER_OVERFLOW => Err(DeviceError::MoreData {
                returned: information,
            }),
            STATUS_BUFFER_TOO_SMALL => Err(DeviceError::BufferTooSmall),
            failure => Err(DeviceError::Driver(failure)),
        }
    }

    fn cancel_on_ctrl_c(&mut self) {
        self.driver.state.borrow_mut().cancel_on_ctrl_c = true;
    }

    fn interrupted(&self) -> bool {
        self.driver.state.borrow().interrupted
    }
}
