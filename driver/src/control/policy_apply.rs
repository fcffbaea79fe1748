//! Putting a policy in force, from any source: `Parameters\Policy` at
//! start ([`PolicySource::Boot`]), `IOCTL_SET_POLICY`
//! ([`PolicySource::Control`]) and a change of `Parameters\Policy` while
//! the driver runs ([`PolicySource::Registry`], `registry_watch.rs`).
//!
//! Every source goes through [`apply_policy`]: the blob is validated and
//! compiled completely before anything changes, so a refused policy leaves
//! the one in force untouched. Each outcome is counted
//! ([`PolicyUpdateCounters`], reported in `Status.policy_updates`) and
//! written to the audit ring as a policy record (applied or rejected). A
//! registry blob byte-identical to the one in force changes nothing and is
//! neither counted nor recorded: the driver's own `ZwSetValueKey`
//! (`procguardctl apply --persist`) makes the registry callback fire.
//! PASSIVE_LEVEL.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use procguard_policy::{CompiledPolicy, DecodeError};
use procguard_protocol::ioctl::PolicyUpdates;
use procguard_protocol::{audit_record, AuditRecord, PolicySource};

use crate::control::parameters;
use crate::driver_state::DriverState;
use crate::ffi::{ntddk, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER};
use crate::platform::{kernel_sync, trace};
use crate::tracking::process_identity;

/// Policies applied and refused since load (relaxed atomics: counters).
#[derive(Debug, Default)]
pub struct PolicyUpdateCounters {
    applied: AtomicU32,
    rejected: AtomicU32,
    last_rejected_status: AtomicI32,
    /// [`PolicySource::code`] of the policy in force (0: none yet).
    source: AtomicU32,
}

impl PolicyUpdateCounters {
    /// The counters as `Status.policy_updates` reports them.
    pub fn snapshot(&self) -> PolicyUpdates {
        PolicyUpdates {
            applied: self.applied.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            last_rejected_status: self.last_rejected_status.load(Ordering::Relaxed),
            source: PolicySource::from_code(self.source.load(Ordering::Relaxed)),
        }
    }
}

/// What [`apply_policy`] did with an acceptable blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Put in force; this many processes classified.
    InForce(usize),
    /// A registry blob identical to the one in force: nothing changed.
    Unchanged,
}

/// Where a policy comes from, and who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The source.
    pub source: PolicySource,
    /// The process and thread that sent it (`IOCTL_SET_POLICY`); 0, 0 otherwise.
    pub by: (u32, u32),
}

impl Origin {
    /// A policy read from the registry (at start or after a change).
    pub const fn registry(source: PolicySource) -> Self {
        Self { source, by: (0, 0) }
    }

    /// `IOCTL_SET_POLICY`, sent by the current process and thread (an IOCTL
    /// at PASSIVE_LEVEL runs in its sender's thread).
    pub fn caller() -> Self {
        // SAFETY: no preconditions; the current process's id.
        let pid = unsafe { ntddk::PsGetCurrentProcessId() };
        // SAFETY: no preconditions; the current thread's id.
        let tid = unsafe { ntddk::PsGetCurrentThreadId() };
        Self {
            source: PolicySource::Control,
            by: (process_identity::id_of(pid), process_identity::id_of(tid)),
        }
    }
}

/// Compiles `blob`: empty is the empty policy except from the control
/// plane (which always sends a complete blob).
fn compile(blob: &[u8], source: PolicySource) -> Result<CompiledPolicy, i32> {
    if blob.is_empty() && source != PolicySource::Control {
        return Ok(CompiledPolicy::empty());
    }
    match CompiledPolicy::from_blob(blob) {
        Ok(policy) => Ok(policy),
        Err(DecodeError::OutOfMemory) => Err(STATUS_INSUFFICIENT_RESOURCES),
        Err(error) => {
            trace::error(format_args!("{} policy rejected: {error}", source.name()));
            Err(STATUS_INVALID_PARAMETER)
        }
    }
}

/// Appends a policy record (`result` of a policy from `origin`; `id` and
/// `rules` of the policy in force afterwards) to the audit ring and wakes
/// its readers.
fn record(state: &DriverState, origin: Origin, result: Result<(), i32>, id: u32, rules: u32) {
    let record = AuditRecord::policy_event(
        kernel_sync::system_time(),
        origin.source,
        result,
        id,
        rules,
        origin.by,
    );
    let words = record.to_words();
    state.ring.append(|sequence| {
        let mut words = words;
        words[audit_record::SEQUENCE_WORD] = sequence;
        words
    });
    state.events_wait.notify();
}

/// The policy in force: (id, rules); (0, 0) when none.
fn in_force(state: &DriverState) -> (u32, u32) {
    state.active.read().map_or((0, 0), |generation| {
        (
            generation.policy.policy_id(),
            u32::try_from(generation.policy.rule_count()).unwrap_or(u32::MAX),
        )
    })
}

/// Counts and records a refused policy (the one in force stays); returns
/// `status` for the caller to pass on.
pub fn reject(state: &DriverState, origin: Origin, status: i32) -> i32 {
    let counters = &state.policy_updates;
    counters.rejected.fetch_add(1, Ordering::Relaxed);
    counters
        .last_rejected_status
        .store(status, Ordering::Relaxed);
    if origin.source == PolicySource::Boot {
        // What is in force after a refusal at start is the empty policy.
        counters
            .source
            .store(PolicySource::Boot.code(), Ordering::Relaxed);
    }
    let (id, rules) = in_force(state);
    trace::error(format_args!(
        "{} policy rejected with {}; policy {id:#010x} ({rules} rule(s)) stays in force",
        origin.source.name(),
        trace::Status(status)
    ));
    record(state, origin, Err(status), id, rules);
    status
}

/// Counts a policy put in force from `origin` (`id`, `rules`) and records it.
fn note_applied(state: &DriverState, origin: Origin, id: u32, rules: u32) {
    let counters = &state.policy_updates;
    counters.applied.fetch_add(1, Ordering::Relaxed);
    counters
        .source
        .store(origin.source.code(), Ordering::Relaxed);
    record(state, origin, Ok(()), id, rules);
}

/// Counts and records the policy read at start, installed by `DriverEntry`
/// before anything else could run: `Ok` the registry's policy is in force,
/// `Err(status)` it was refused and the empty policy is in force.
pub fn record_boot(state: &DriverState, result: Result<(), i32>) {
    let origin = Origin::registry(PolicySource::Boot);
    if let Err(status) = result {
        reject(state, origin, status);
        return;
    }
    let (id, rules) = in_force(state);
    note_applied(state, origin, id, rules);
}

/// Validates, compiles and puts `blob` in force (writing it to
/// `Parameters\Policy` first when `persist`), counting and recording the
/// outcome (see the module documentation). PASSIVE_LEVEL.
///
/// # Errors
/// The refusal's status (the policy in force is unchanged).
pub fn apply_policy(
    state: &DriverState,
    blob: &[u8],
    origin: Origin,
    persist: bool,
) -> Result<Applied, i32> {
    let policy = compile(blob, origin.source).map_err(|status| reject(state, origin, status))?;
    let mut owned = Vec::new();
    if owned.try_reserve_exact(blob.len()).is_err() {
        return Err(reject(state, origin, STATUS_INSUFFICIENT_RESOURCES));
    }
    owned.extend_from_slice(blob);
    let mut writer = state.writer();
    if origin.source == PolicySource::Registry {
        let unchanged = state
            .active
            .writer_view(&writer)
            .is_some_and(|current| current.blob.as_slice() == blob);
        if unchanged {
            return Ok(Applied::Unchanged);
        }
    }
    if persist {
        // Persist first: if the registry write fails, nothing changed.
        if let Err(status) = parameters::persist_policy(&state.service_key_path, blob) {
            trace::error(format_args!(
                "writing Parameters\\Policy failed with {}",
                trace::Status(status)
            ));
            state.note_error(status);
            drop(writer);
            return Err(reject(state, origin, status));
        }
    }
    let id = policy.policy_id();
    let rules = u32::try_from(policy.rule_count()).unwrap_or(u32::MAX);
    match state.install_policy(&mut writer, policy, owned) {
        Ok(tracked) => {
            drop(writer);
            trace::info(format_args!(
                "{} policy {id:#010x} of {rules} rule(s) in force; {tracked} process(es) classified",
                origin.source.name()
            ));
            note_applied(state, origin, id, rules);
            Ok(Applied::InForce(tracked))
        }
        Err(error) => {
            drop(writer);
            trace::error(format_args!("no memory to install the policy ({error:?})"));
            state.note_error(STATUS_INSUFFICIENT_RESOURCES);
            Err(reject(state, origin, STATUS_INSUFFICIENT_RESOURCES))
        }
    }
}

/// Reads `Parameters\Policy` again and applies it ([`PolicySource::Registry`]):
/// the registry work item's body. A value of the wrong type or size, or a
/// failed read, is refused like an invalid blob. PASSIVE_LEVEL.
///
/// # Errors
/// The refusal's status (the policy in force is unchanged).
pub fn apply_from_registry(state: &DriverState) -> Result<Applied, i32> {
    let origin = Origin::registry(PolicySource::Registry);
    // One read-and-apply at a time: the value read last is applied last.
    let _serial = state.registry_apply.lock();
    match parameters::read_policy(&state.service_key_path) {
        Ok(blob) => apply_policy(state, &blob, origin, false),
        Err(problem) => {
            trace::error(format_args!("Parameters\\Policy unusable: {problem:?}"));
            Err(reject(state, origin, parameters::problem_status(problem)))
        }
    }
}
