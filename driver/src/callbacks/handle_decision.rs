//! One handle request, from what the callback read to the access it grants:
//! the process records of target and requester, the policy engine's
//! decision, the counters and the audit record.
//!
//! Steps, each a documented choice:
//! 1. The callback first asks the process table whether the target is
//!    protected at all (`ProcessTable::protection`): a tracked process no
//!    rule protects ends the work at once (the common case: one word read
//!    per probed slot, one kernel call in all). Everything below runs only
//!    otherwise.
//! 2. A protected target's record is used only if its creation key matches
//!    the process object's, so a record never applies to a later process that
//!    reused the id.
//! 3. The requester is the current thread's own process for a create (not
//!    the process the thread may be attached to: id and object both come
//!    from `IoThreadToProcess(PsGetCurrentThread())`) and the process that
//!    receives the handle for a duplicate; its record comes from the table
//!    the same way.
//! 4. A process missing from the table (its creation notification could not
//!    read its path, or the table was being rebuilt, or a stale entry) gets
//!    the policy's record for an unknown process: protected by nothing,
//!    restricted only by rules that apply to any requester. No image path is
//!    read here (`SeLocateProcessImageName` may do file-system I/O, and a
//!    callback can run on a thread holding file-system locks): the id is
//!    noted (`pending_classification.rs`) and the next process notification
//!    classifies it at PASSIVE_LEVEL. The `unclassified` counter says how
//!    often this happens.
//! 5. The engine decides; the result only ever loses bits.

use core::sync::atomic::Ordering;

use procguard_policy::{Exemption, HandleRequest, ObjectKind, Operation, ProcessRecord};
use procguard_protocol::{audit_record, AuditMode, AuditObject, AuditRecord};

use crate::driver_state::DriverState;
use crate::ffi::{ntddk, PEPROCESS, PVOID};
use crate::platform::kernel_sync;
use crate::state::policy_state::Generation;
use crate::tracking::process_identity;
use crate::tracking::process_table::TrackedSlot;

/// Who gains the access (resolved only when a rule could apply): the
/// process that receives a duplicated handle, or — null — the current
/// thread's own process for a create. A pointer rather than an enum: no tag
/// to keep beside it on the callbacks' path (measured: 3 to 9 instructions
/// fewer on a stripped request, `tests/emulator/measure_instructions.py`).
#[derive(Debug, Clone, Copy)]
pub struct Requester(PEPROCESS);

impl Requester {
    /// A create: the process that owns the current thread.
    pub const CURRENT: Self = Self(core::ptr::null_mut());

    /// A duplicate: the process that receives the handle (`TargetProcess`,
    /// never null).
    pub const fn receiver(process: PEPROCESS) -> Self {
        Self(process)
    }
}

/// What the callback read from `OB_PRE_OPERATION_INFORMATION`: only what
/// the common case needs is computed up front (the target's id); the rest
/// is resolved by [`decide`] when the target is protected.
#[derive(Debug, Clone, Copy)]
pub struct ObservedRequest<'a> {
    /// Process or thread handle.
    pub object: ObjectKind,
    /// Create or duplicate.
    pub operation: Operation,
    /// The object being opened (`EPROCESS` or `ETHREAD`).
    pub object_pointer: PVOID,
    /// The process the handle is for (a thread's owning process).
    pub target_pid: u32,
    /// Who gains the access.
    pub requester: Requester,
    /// Where the fast path found the target in the table, if it did.
    pub target_slot: Option<TrackedSlot<'a>>,
    /// Duplicate: the process the handle comes from (null for a create).
    pub source_process: PEPROCESS,
    /// `DesiredAccess` as received.
    pub desired_access: u32,
    /// The `KernelHandle` flag (only ever set under a policy that filters
    /// kernel handles: otherwise the callback passes them before deciding).
    pub kernel_handle: bool,
}

fn target_process(request: &ObservedRequest) -> PEPROCESS {
    match request.object {
        ObjectKind::Process => request.object_pointer.cast(),
        // SAFETY: for PsThreadType the object is a thread, valid during the callback.
        ObjectKind::Thread => unsafe { ntddk::IoThreadToProcess(request.object_pointer.cast()) },
    }
}

/// The requester's id and object: for a create, the process that owns the
/// current thread (the handle's requester even while the thread is attached
/// to another process's address space, which `IoGetCurrentProcess` would
/// give); both from the one object, so the id and the creation key always
/// describe the same process.
fn resolve(requester: Requester) -> (u32, PEPROCESS) {
    let process = if requester.0.is_null() {
        // SAFETY: a plain query about the current thread (any IRQL), which
        // outlives the callback.
        let thread = unsafe { ntddk::PsGetCurrentThread() };
        // SAFETY: the current thread's owning process (any IRQL).
        unsafe { ntddk::IoThreadToProcess(thread) }
    } else {
        // TargetProcess: a process object, valid during the callback.
        requester.0
    };
    // SAFETY: a process object valid during the callback (see above).
    let pid = process_identity::id_of(unsafe { ntddk::PsGetProcessId(process) });
    (pid, process)
}

/// The record of a process the table has no (current) entry for: the
/// policy's unknown-process record, with the id noted for classification
/// at the next process notification (step 4 above: no I/O here). Rare, so
/// out of line: the callbacks' path keeps fewer registers live.
#[cold]
#[inline(never)]
fn record_not_in_table(state: &DriverState, generation: &Generation, pid: u32) -> ProcessRecord {
    state.counters.unclassified.fetch_add(1, Ordering::Relaxed);
    state.pending.note(pid);
    generation.policy.unknown_process_record()
}

/// Decides `request`, whose target the process table did not clear
/// (`ProcessTable::protection`); returns the access to leave in
/// `DesiredAccess` (a subset of `request.desired_access`). Always inlined,
/// as is all it calls on the path of a stripped request: each of the two
/// callbacks carries its own copy (see `object_callbacks.rs`), and a call
/// would cost a frame and spilled arguments.
#[inline(always)]
pub fn decide(state: &DriverState, generation: &Generation, request: &ObservedRequest) -> u32 {
    let desired = request.desired_access;
    // Each record part comes from the table if the entry's creation key
    // matches the process object's, else from `record_not_in_table`.
    let target_process = target_process(request);
    // SAFETY: the target process object of this callback.
    let target_key = unsafe { process_identity::creation_key(target_process) };
    let target = match generation.target_record(
        request.target_pid,
        request.target_slot,
        request.object,
        request.operation,
    ) {
        Some((key, part)) if key == target_key => part,
        _ => record_not_in_table(state, generation, request.target_pid)
            .target_part(request.object, request.operation),
    };
    if !target.is_protected() {
        return desired;
    }
    let (requester_pid, requester_process) = resolve(request.requester);
    // SAFETY: the requester process object of this callback.
    let requester_key = unsafe { process_identity::creation_key(requester_process) };
    let requester = match generation.requester_record(requester_pid) {
        Some((key, part)) if key == requester_key => part,
        _ => record_not_in_table(state, generation, requester_pid).requester_part(),
    };
    let decision = generation.policy.decide_parts(
        target,
        requester,
        &HandleRequest {
            object: request.object,
            operation: request.operation,
            desired_access: desired,
            kernel_handle: request.kernel_handle,
            same_process: requester_pid == request.target_pid,
        },
    );
    let access = decision.access & desired;
    let stripped = access != desired;
    generation.count(decision.rule, stripped);
    if stripped {
        state.counters.modified.fetch_add(1, Ordering::Relaxed);
    }
    if decision.audit {
        state.counters.audited.fetch_add(1, Ordering::Relaxed);
        append_audit_record(
            state,
            request,
            requester_pid,
            access,
            decision.rule,
            stripped,
        );
    } else {
        // An exempted request is never audited (nor stripped).
        match decision.exemption {
            Some(Exemption::SelfAccess) => {
                state.counters.skipped_self.fetch_add(1, Ordering::Relaxed)
            }
            // A kernel handle met while a policy that exempts them was
            // being published (see `ActivePolicy::kernel_handles_exempt`).
            Some(Exemption::KernelHandle) => state
                .counters
                .skipped_kernel
                .fetch_add(1, Ordering::Relaxed),
            Some(_) => state.counters.exempt.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }
    access
}

/// Appends the audit record of a decision (inlined: see [`decide`]).
#[inline(always)]
fn append_audit_record(
    state: &DriverState,
    request: &ObservedRequest,
    requester_pid: u32,
    access: u32,
    rule: Option<u16>,
    stripped: bool,
) {
    let timestamp = kernel_sync::system_time();
    let duplication = request.operation == Operation::Duplicate;
    // For a create the requester is the current process: no second query.
    let originator_pid = if duplication {
        // SAFETY: a plain query about the current process.
        process_identity::id_of(unsafe { ntddk::PsGetCurrentProcessId() })
    } else {
        requester_pid
    };
    // SAFETY: a plain query about the current thread.
    let originator_tid = process_identity::id_of(unsafe { ntddk::PsGetCurrentThreadId() });
    let source_pid = if duplication {
        // SAFETY: SourceProcess is a process object, valid during the callback.
        process_identity::id_of(unsafe { ntddk::PsGetProcessId(request.source_process) })
    } else {
        0
    };
    let thread_id = match request.object {
        ObjectKind::Thread => {
            // SAFETY: for PsThreadType the object is a thread, valid during the callback.
            process_identity::id_of(unsafe { ntddk::PsGetThreadId(request.object_pointer.cast()) })
        }
        ObjectKind::Process => 0,
    };
    // Built before a ring cell is claimed; the ring's sequence number goes
    // into its word once it is.
    let words = AuditRecord {
        sequence: 0,
        timestamp,
        object: match request.object {
            ObjectKind::Process => AuditObject::Process,
            ObjectKind::Thread => AuditObject::Thread,
        },
        duplication,
        process_id: request.target_pid,
        thread_id,
        originator_process_id: originator_pid,
        originator_thread_id: originator_tid,
        source_process_id: source_pid,
        target_process_id: if duplication { requester_pid } else { 0 },
        original_desired_access: request.desired_access,
        desired_access: access,
        result_code: 0,
        rule_id: rule.map_or(audit_record::NO_RULE, u32::from),
        mode: if stripped {
            AuditMode::Enforce
        } else {
            AuditMode::Audit
        },
        ask_outcome: None,
        ask_wait_us: 0,
    }
    .to_words();
    state.ring.append(|sequence| {
        let mut words = words;
        words[audit_record::SEQUENCE_WORD] = sequence;
        words
    });
}
