//! One handle request, from what the callback read to the access it grants:
//! the process records of target and requester, the policy engine's
//! decision, the counters and the audit record.
//!
//! Steps, each a documented choice:
//! 1. The target's record comes from the process table. A target the policy
//!    does not protect ends the work at once (the common case: one table
//!    read, no further kernel call).
//! 2. A protected target's record is used only if its creation key matches
//!    the process object's, so a record never applies to a later process that
//!    reused the id.
//! 3. The requester is the current process for a create and the process that
//!    receives the handle for a duplicate; its record comes from the table
//!    the same way.
//! 4. A process missing from the table (created while the table was being
//!    rebuilt, or a stale entry) is classified on the spot when the IRQL is
//!    PASSIVE_LEVEL; at APC_LEVEL it gets the policy's record for an unknown
//!    process (protected by nothing, restricted only by rules that apply to
//!    any requester), and the `unclassified` counter says how often.
//! 5. The engine decides; the result only ever loses bits.

use core::sync::atomic::Ordering;

use procguard_policy::{HandleRequest, ObjectKind, Operation, ProcessRecord};
use procguard_protocol::{AuditMode, AuditObject, AuditRecord};

use crate::driver_state::DriverState;
use crate::ffi::{ntddk, PEPROCESS, PVOID};
use crate::kernel_sync;
use crate::policy_state::Generation;
use crate::process_identity::{self, Identity};

/// A process taking part in a request: its id and its object.
#[derive(Debug, Clone, Copy)]
pub struct ProcessRef {
    /// Process id.
    pub pid: u32,
    /// The process object (valid for the duration of the callback).
    pub process: PEPROCESS,
}

/// What the callback read from `OB_PRE_OPERATION_INFORMATION`.
#[derive(Debug, Clone, Copy)]
pub struct ObservedRequest {
    /// Process or thread handle.
    pub object: ObjectKind,
    /// Create or duplicate.
    pub operation: Operation,
    /// The object being opened (`EPROCESS` or `ETHREAD`).
    pub object_pointer: PVOID,
    /// The process the handle is for (a thread's owning process).
    pub target_pid: u32,
    /// Who gains the access.
    pub requester: ProcessRef,
    /// Duplicate: the process the handle comes from (0 for a create).
    pub source_pid: u32,
    /// `DesiredAccess` as received.
    pub desired_access: u32,
}

fn target_process(request: &ObservedRequest) -> PEPROCESS {
    match request.object {
        ObjectKind::Process => request.object_pointer.cast(),
        // SAFETY: for PsThreadType the object is a thread, valid during the callback.
        ObjectKind::Thread => unsafe { ntddk::IoThreadToProcess(request.object_pointer.cast()) },
    }
}

/// The record of `process` under `generation`: from the table if the
/// creation key matches, else classified now (PASSIVE only), else the
/// policy's unknown-process record.
fn record_of(
    state: &DriverState,
    generation: &Generation,
    pid: u32,
    process: PEPROCESS,
    table: Option<(u64, ProcessRecord)>,
) -> ProcessRecord {
    // SAFETY: `process` is the target or requester object of this callback.
    let key = unsafe { process_identity::creation_key(process) };
    if let Some((stored_key, record)) = table {
        if stored_key == key {
            return record;
        }
    }
    state.counters.unclassified.fetch_add(1, Ordering::Relaxed);
    if kernel_sync::current_irql() == 0 {
        // SAFETY: PASSIVE_LEVEL (checked), `process` valid during the callback.
        if let Ok(image_path) = unsafe { process_identity::image_path(process) } {
            return generation.classify(&Identity {
                pid,
                creation_key: key,
                image_path,
            });
        }
    }
    generation.policy.unknown_process_record()
}

/// Decides `request`; returns the access to leave in `DesiredAccess` (a
/// subset of `request.desired_access`).
pub fn decide(state: &DriverState, request: &ObservedRequest) -> u32 {
    let desired = request.desired_access;
    let Some(generation) = state.active.read() else {
        return desired;
    };
    let target_entry = generation.lookup(request.target_pid);
    if let Some((_, record)) = target_entry {
        if !record.is_protected() {
            // The common case: one table read, no further kernel call.
            return desired;
        }
    }
    let target = record_of(
        state,
        &generation,
        request.target_pid,
        target_process(request),
        target_entry,
    );
    if !target.is_protected() {
        return desired;
    }
    let requester_entry = generation.lookup(request.requester.pid);
    let requester = record_of(
        state,
        &generation,
        request.requester.pid,
        request.requester.process,
        requester_entry,
    );
    let same_process = request.requester.pid == request.target_pid;
    let decision = generation.policy.decide(
        &target,
        &requester,
        &HandleRequest {
            object: request.object,
            operation: request.operation,
            desired_access: desired,
            kernel_handle: false,
            same_process,
        },
    );
    let access = decision.access & desired;
    let stripped = access != desired;
    generation.count(decision.rule, stripped);
    if decision.exemption.is_some() {
        state.counters.exempt.fetch_add(1, Ordering::Relaxed);
    }
    if stripped {
        state.counters.modified.fetch_add(1, Ordering::Relaxed);
    }
    if decision.audit {
        state.counters.audited.fetch_add(1, Ordering::Relaxed);
        append_audit_record(state, request, access, decision.rule, stripped);
    }
    access
}

fn append_audit_record(
    state: &DriverState,
    request: &ObservedRequest,
    access: u32,
    rule: Option<u16>,
    stripped: bool,
) {
    let timestamp = kernel_sync::system_time();
    // SAFETY: a plain query about the current process.
    let originator_pid = unsafe { ntddk::PsGetCurrentProcessId() };
    // SAFETY: a plain query about the current thread.
    let originator_tid = unsafe { ntddk::PsGetCurrentThreadId() };
    let thread_id = match request.object {
        ObjectKind::Thread => {
            // SAFETY: for PsThreadType the object is a thread, valid during the callback.
            let thread_id = unsafe { ntddk::PsGetThreadId(request.object_pointer.cast()) };
            thread_id as usize
        }
        ObjectKind::Process => 0,
    };
    let duplication = request.operation == Operation::Duplicate;
    let to_u32 = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
    state.ring.append(|sequence| {
        AuditRecord {
            sequence,
            timestamp,
            object: match request.object {
                ObjectKind::Process => AuditObject::Process,
                ObjectKind::Thread => AuditObject::Thread,
            },
            duplication,
            process_id: request.target_pid,
            thread_id: to_u32(thread_id),
            originator_process_id: to_u32(originator_pid as usize),
            originator_thread_id: to_u32(originator_tid as usize),
            source_process_id: if duplication { request.source_pid } else { 0 },
            target_process_id: if duplication {
                request.requester.pid
            } else {
                0
            },
            original_desired_access: request.desired_access,
            desired_access: access,
            result_code: 0,
            rule_id: rule.map_or(procguard_protocol::audit_record::NO_RULE, u32::from),
            mode: if stripped {
                AuditMode::Enforce
            } else {
                AuditMode::Audit
            },
        }
        .to_words()
    });
}
