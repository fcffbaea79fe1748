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
//! 6. When an ask rule applies (`Decision::ask`), the rest happens out of
//!    line (`decide_asked`: a request no ask rule applies to pays one test
//!    for it): the handler's own requests get the enforce rules only; any
//!    other request is handed to the ask broker (`ask/`) with every field a
//!    handler needs, and gets the broker's answer ANDed into what the
//!    enforce rules left, with one audit record of mode ask.

use core::sync::atomic::Ordering;

use procguard_policy::{Decision, Exemption, HandleRequest, ObjectKind, Operation, ProcessRecord};
use procguard_protocol::ask::{AskObject, AskRequest, ImageName};
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
    if decision.ask.is_needed() {
        return decide_asked(
            state,
            generation,
            request,
            Keys {
                requester_pid,
                requester: requester_key,
                target: target_key,
            },
            &decision,
        );
    }
    settle(state, generation, request, requester_pid, &decision)
}

/// The request's creation keys (see `process_identity::creation_key`) and
/// the requester's id, for an asked request.
#[derive(Debug, Clone, Copy)]
struct Keys {
    requester_pid: u32,
    requester: u64,
    target: u64,
}

/// Grants a decision no handler takes part in: counters, the rule's
/// counters and the audit record (inlined: see [`decide`]).
#[inline(always)]
fn settle(
    state: &DriverState,
    generation: &Generation,
    request: &ObservedRequest,
    requester_pid: u32,
    decision: &Decision,
) -> u32 {
    let desired = request.desired_access;
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

/// A request no handler is asked about because its requester is the
/// handler: the enforce rules only (the plan is dropped, and with it the
/// audit record and rule count an ask rule alone would have caused).
#[inline(always)]
fn without_ask(decision: &Decision, desired: u32) -> Decision {
    let access = decision.access & desired;
    let enforced = access != desired || decision.would_strip != 0;
    Decision {
        rule: if enforced { decision.rule } else { None },
        audit: enforced,
        ask: procguard_policy::AskPlan::NONE,
        ..*decision
    }
}

/// The rest of [`decide`] for a request an ask rule applies to
/// (`decision.ask.is_needed()`): out of line, so a request no ask rule
/// applies to pays one test for the ask path. Not for the handler's own
/// requests (enforce rules only, [`without_ask`]); any other request goes to
/// the broker, which asks the handler or applies the plan's fallback (no
/// handler, not askable, above PASSIVE_LEVEL, pool full, timeout), and gets
/// its answer ANDed into what the enforce rules left. One audit record of
/// mode ask says what happened; the ask rule counts a hit, and a strip when
/// the answer (or fallback) removed bits; the enforce or audit rule that
/// also applied counts as it would without the ask rule.
#[cold]
#[inline(never)]
fn decide_asked(
    state: &DriverState,
    generation: &Generation,
    request: &ObservedRequest,
    keys: Keys,
    decision: &Decision,
) -> u32 {
    let desired = request.desired_access;
    #[cfg(test)]
    let handler = test_broker::handler_pid(state);
    #[cfg(not(test))]
    let handler = state.ask.handler_pid();
    if handler != 0 && keys.requester_pid == handler {
        let enforced = without_ask(decision, desired);
        return settle(state, generation, request, keys.requester_pid, &enforced);
    }
    let plan = decision.ask;
    let access = decision.access & desired;
    let timeout_ms = generation.policy.settings().ask_timeout_ms;
    let timestamp = kernel_sync::system_time();
    let parties = Parties::of(request, keys.requester_pid);
    // Names from the table only when its entry is this very process (the
    // keys match), else none: the callback reads no image path itself.
    let name_of = |pid: u32, key: u64| match generation.table.image_name(pid) {
        Some((stored, name)) if stored == key => name,
        _ => ImageName::EMPTY,
    };
    let rule_id = plan.rule.map_or(audit_record::NO_RULE, u32::from);
    let mut ask = AskRequest {
        id: 0,
        generation: 0,
        timestamp,
        object: match request.object {
            ObjectKind::Process => AskObject::Process,
            ObjectKind::Thread => AskObject::Thread,
        },
        duplication: parties.duplication,
        rule_id,
        process_id: request.target_pid,
        thread_id: parties.thread_id,
        originator_process_id: parties.originator_pid,
        originator_thread_id: parties.originator_tid,
        source_process_id: parties.source_pid,
        target_process_id: parties.receiver_pid,
        original_desired_access: desired,
        desired_access: access,
        ask_rights: plan.rights & access,
        fallback_access: plan.fallback_access(access),
        timeout_ms,
        requester_pid: keys.requester_pid,
        requester_create_time: keys.requester.cast_signed(),
        target_create_time: keys.target.cast_signed(),
        requester_image: name_of(keys.requester_pid, keys.requester),
        target_image: name_of(request.target_pid, keys.target),
    };
    #[cfg(test)]
    let answer = test_broker::ask(state, &mut ask, access, &plan, timeout_ms);
    #[cfg(not(test))]
    let answer = state.ask.ask(&mut ask, access, &plan, timeout_ms);
    // The broker never adds a bit; made certain here all the same.
    let granted = answer.access & access;
    let enforced = access != desired;
    if enforced || decision.would_strip != 0 {
        // The enforce (or audit) rule that decided the rest of the request.
        generation.count(decision.rule, enforced);
    }
    generation.count(plan.rule, granted != access);
    if granted != desired {
        state.counters.modified.fetch_add(1, Ordering::Relaxed);
    }
    state.counters.audited.fetch_add(1, Ordering::Relaxed);
    append_record(
        state,
        &AuditRecord {
            sequence: 0,
            // The request's time, as in the ask request (a handler can match
            // the two); the wait is `ask_wait_us`.
            timestamp,
            object: parties.audit_object,
            duplication: parties.duplication,
            process_id: request.target_pid,
            thread_id: parties.thread_id,
            originator_process_id: parties.originator_pid,
            originator_thread_id: parties.originator_tid,
            source_process_id: parties.source_pid,
            target_process_id: parties.receiver_pid,
            original_desired_access: desired,
            desired_access: granted,
            result_code: answer.result_code,
            rule_id,
            mode: AuditMode::Ask,
            ask_outcome: Some(answer.outcome),
            ask_wait_us: answer.waited_us,
        },
    );
    granted
}

/// Who took part in a request besides the target (the audit record's and
/// the ask request's process and thread fields).
#[derive(Debug, Clone, Copy)]
struct Parties {
    audit_object: AuditObject,
    duplication: bool,
    /// The thread, for a thread handle; 0 otherwise.
    thread_id: u32,
    originator_pid: u32,
    originator_tid: u32,
    /// Duplicate: the process the handle comes from; 0 otherwise.
    source_pid: u32,
    /// Duplicate: the process that receives the handle; 0 otherwise.
    receiver_pid: u32,
}

impl Parties {
    /// The ids, from the callback's objects and the current thread
    /// (inlined: see [`decide`]).
    #[inline(always)]
    fn of(request: &ObservedRequest, requester_pid: u32) -> Self {
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
                process_identity::id_of(unsafe {
                    ntddk::PsGetThreadId(request.object_pointer.cast())
                })
            }
            ObjectKind::Process => 0,
        };
        Self {
            audit_object: match request.object {
                ObjectKind::Process => AuditObject::Process,
                ObjectKind::Thread => AuditObject::Thread,
            },
            duplication,
            thread_id,
            originator_pid,
            originator_tid,
            source_pid,
            receiver_pid: if duplication { requester_pid } else { 0 },
        }
    }
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
    let parties = Parties::of(request, requester_pid);
    append_record(
        state,
        &AuditRecord {
            sequence: 0,
            timestamp,
            object: parties.audit_object,
            duplication: parties.duplication,
            process_id: request.target_pid,
            thread_id: parties.thread_id,
            originator_process_id: parties.originator_pid,
            originator_thread_id: parties.originator_tid,
            source_process_id: parties.source_pid,
            target_process_id: parties.receiver_pid,
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
        },
    );
}

/// Appends `record` to the ring and wakes the events stream's readers
/// (`IOCTL_WAIT_EVENTS`; one atomic load when none waits).
#[inline(always)]
fn append_record(state: &DriverState, record: &AuditRecord) {
    // Built before a ring cell is claimed; the ring's sequence number goes
    // into its word once it is.
    let words = record.to_words();
    state.ring.append(|sequence| {
        let mut words = words;
        words[audit_record::SEQUENCE_WORD] = sequence;
        words
    });
    state.events_wait.notify();
    #[cfg(test)]
    test_broker::note_notify();
}

/// The host tests' stand-in between [`decide_asked`] and the broker: it
/// records every request the callback hands over, exactly as handed over,
/// and answers from a script when a test set one (a handler's reply, or a
/// fallback outcome the skeleton-free broker would give), else lets the
/// real broker answer.
#[cfg(test)]
pub(crate) mod test_broker {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::vec::Vec;

    use procguard_policy::AskPlan;
    use procguard_protocol::ask::{AskOutcome, AskRequest};

    use crate::ask::AskAnswer;
    use crate::driver_state::DriverState;

    /// One scripted answer.
    #[derive(Debug, Clone, Copy)]
    pub enum Scripted {
        /// The handler answered with this access and result code after
        /// this many microseconds: ANDed in, as the broker does.
        Reply {
            access: u32,
            result_code: i32,
            waited_us: u32,
        },
        /// No answer: the plan's fallback with this outcome and wait.
        Fallback(AskOutcome, u32),
        /// Exactly this answer (a broker that breaks its contract).
        Raw(AskAnswer),
    }

    /// What the callback handed to the broker for one request.
    #[derive(Debug, Clone, Copy)]
    pub struct Asked {
        pub request: AskRequest,
        pub access: u32,
        pub plan: AskPlan,
        pub timeout_ms: u32,
    }

    #[derive(Default)]
    struct Script {
        answers: VecDeque<Scripted>,
        asked: Vec<Asked>,
        handler_pid: Option<u32>,
        notifies: u64,
    }

    /// Makes `pid` the connected handler's process as the callbacks see it
    /// (`None`: whatever the broker says).
    pub fn set_handler_pid(pid: Option<u32>) {
        SCRIPT.with(|script| script.borrow_mut().handler_pid = pid);
    }

    /// `EventsWait::notify` calls after ring appends, since the last reset.
    pub fn notifies() -> u64 {
        SCRIPT.with(|script| script.borrow().notifies)
    }

    /// Forgets everything scripted and recorded on this thread.
    pub fn reset() {
        SCRIPT.with(|script| *script.borrow_mut() = Script::default());
    }

    pub(super) fn note_notify() {
        SCRIPT.with(|script| script.borrow_mut().notifies += 1);
    }

    pub(super) fn handler_pid(state: &DriverState) -> u32 {
        SCRIPT
            .with(|script| script.borrow().handler_pid)
            .unwrap_or_else(|| state.ask.handler_pid())
    }

    std::thread_local! {
        static SCRIPT: RefCell<Script> = RefCell::new(Script::default());
    }

    /// Queues answers for the next asked requests of this thread.
    pub fn script(answers: &[Scripted]) {
        SCRIPT.with(|script| script.borrow_mut().answers.extend(answers));
    }

    /// The requests handed over since the last call.
    pub fn take() -> Vec<Asked> {
        SCRIPT.with(|script| core::mem::take(&mut script.borrow_mut().asked))
    }

    pub(super) fn ask(
        state: &DriverState,
        request: &mut AskRequest,
        access: u32,
        plan: &AskPlan,
        timeout_ms: u32,
    ) -> AskAnswer {
        let scripted = SCRIPT.with(|script| {
            let mut script = script.borrow_mut();
            script.asked.push(Asked {
                request: *request,
                access,
                plan: *plan,
                timeout_ms,
            });
            script.answers.pop_front()
        });
        match scripted {
            None => state.ask.ask(request, access, plan, timeout_ms),
            Some(Scripted::Reply {
                access: reply,
                result_code,
                waited_us,
            }) => AskAnswer {
                outcome: AskOutcome::Answered,
                access: access & reply,
                result_code,
                waited_us,
            },
            Some(Scripted::Fallback(outcome, waited_us)) => AskAnswer {
                outcome,
                access: plan.fallback_access(access),
                result_code: 0,
                waited_us,
            },
            Some(Scripted::Raw(answer)) => answer,
        }
    }
}
