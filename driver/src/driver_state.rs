//! Everything the driver owns between load and unload, and the writer-side
//! operations on it (installing a policy, rebuilding the process table).
//!
//! Readers (the object callbacks) use `&DriverState` with no lock: the
//! published generation through a grace period, counters and the audit ring
//! through atomics. Writers (process notifications, policy changes, load and
//! unload) hold the writer mutex, whose token proves it to `policy_state`.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use procguard_policy::CompiledPolicy;

use crate::callbacks::object_callbacks::Registration;
use crate::control::altitude::Altitude;
use crate::platform::kernel_sync::{PassiveLock, PassiveLockGuard};
use crate::platform::trace;
use crate::state::audit_ring::AuditRing;
use crate::state::policy_state::{ActivePolicy, BuildError, Generation, Writer};

/// Tracked processes a fresh table has room for, at least.
pub const INITIAL_PROCESS_CAPACITY: usize = 1024;

/// Request totals (relaxed atomics: counters, not synchronisation).
#[derive(Debug, Default)]
pub struct Counters {
    /// Pre-operation calls seen.
    pub seen: AtomicU64,
    /// Requests whose access was reduced.
    pub modified: AtomicU64,
    /// Requests reported to the audit ring (stripped or audit-only).
    pub audited: AtomicU64,
    /// Kernel-handle requests passed untouched (`exempt_kernel_handles`).
    pub skipped_kernel: AtomicU64,
    /// Requests a rule matched but a process opening itself passed untouched.
    pub skipped_self: AtomicU64,
    /// Requests a rule matched but a critical system requester passed
    /// untouched (`exempt_critical_requesters`).
    pub exempt: AtomicU64,
    /// Lookups that found no current record (see `handle_decision.rs`, step 4).
    pub unclassified: AtomicU64,
}

/// What load found and did, kept for status reporting.
#[derive(Debug, Default)]
pub struct LoadInfo {
    /// The live object-callback registration.
    pub registration: Option<Registration>,
    /// Whether the process notify routine is registered.
    pub notify_registered: bool,
    /// The altitude in use.
    pub altitude: Option<Altitude>,
    /// The control device (`\\Device\\ProcGuard`), deleted first at unload.
    pub control_device: Option<crate::control::control_device::ControlDevice>,
    /// The registry callback and its work item (`Parameters\\Policy` changes).
    pub registry_watch: Option<crate::control::registry_callback::RegistryWatch>,
}

/// The driver's state.
pub struct DriverState {
    /// The published policy generation.
    pub active: ActivePolicy,
    /// Serialises writers; holds the writer token.
    writer: PassiveLock<Writer>,
    /// Audit records awaiting the control plane.
    pub ring: AuditRing,
    /// Totals.
    pub counters: Counters,
    /// Load-time facts (writers only).
    pub load_info: PassiveLock<LoadInfo>,
    /// The service key path (`DriverEntry`'s registry path), for persisting
    /// policies.
    pub service_key_path: Vec<u16>,
    /// Last failure status (0: none), for status reporting.
    pub last_error: core::sync::atomic::AtomicI32,
    /// Processes the callbacks met unclassified, for the next notification.
    pub pending: crate::tracking::pending_classification::PendingClassification,
    /// The ask path: the handler connection and the requests it decides.
    pub ask: crate::ask::AskBroker,
    /// Readers waiting for audit records (`IOCTL_WAIT_EVENTS`).
    pub events_wait: crate::control::events_wait::EventsWait,
    /// Policies applied and refused (`Status.policy_updates`).
    pub policy_updates: crate::control::policy_apply::PolicyUpdateCounters,
    /// Serialises the registry work item's read-and-apply (a WDF work item
    /// enqueued again while it runs may run twice at once: the later read
    /// must be applied last).
    pub registry_apply: PassiveLock<()>,
}

/// The loaded driver's state, for routines the kernel calls without a
/// context pointer (the process notify routine).
static DRIVER_STATE: AtomicPtr<DriverState> = AtomicPtr::new(ptr::null_mut());

/// Allocates without aborting on failure (`Box::new` would bug-check).
pub fn try_box<T>(value: T) -> Option<Box<T>> {
    let layout = core::alloc::Layout::new::<T>();
    if layout.size() == 0 {
        return Some(Box::new(value));
    }
    // SAFETY: non-zero-size layout of T.
    let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if raw.is_null() {
        return None;
    }
    // SAFETY: `raw` is a fresh, properly aligned allocation for one T.
    unsafe { raw.write(value) };
    // SAFETY: allocated by the global allocator with T's layout and initialised.
    Some(unsafe { Box::from_raw(raw) })
}

impl DriverState {
    /// Records a failure status for status reporting.
    pub fn note_error(&self, status: i32) {
        self.last_error.store(status, Ordering::Relaxed);
    }

    /// A boxed state with an audit ring of `audit_records`; `None` when out
    /// of memory. The mutexes are initialised at their final address.
    pub fn new(audit_records: usize, service_key_path: &[u16]) -> Option<Box<Self>> {
        let ring = AuditRing::with_capacity(audit_records)?;
        let mut path = Vec::new();
        path.try_reserve_exact(service_key_path.len()).ok()?;
        path.extend_from_slice(service_key_path);
        let state = try_box(Self {
            active: ActivePolicy::new(),
            writer: PassiveLock::new(Writer::new()),
            ring,
            counters: Counters::default(),
            load_info: PassiveLock::new(LoadInfo::default()),
            service_key_path: path,
            last_error: core::sync::atomic::AtomicI32::new(0),
            pending: crate::tracking::pending_classification::PendingClassification::default(),
            ask: crate::ask::AskBroker::new()?,
            events_wait: crate::control::events_wait::EventsWait::default(),
            policy_updates: crate::control::policy_apply::PolicyUpdateCounters::default(),
            registry_apply: PassiveLock::new(()),
        })?;
        // SAFETY: boxed, so the address is final; called once each, before any lock.
        unsafe { state.writer.init() };
        // SAFETY: as above.
        unsafe { state.load_info.init() };
        // SAFETY: as above.
        unsafe { state.registry_apply.init() };
        Some(state)
    }

    /// Becomes the writer (waits for another writer to finish). PASSIVE level.
    pub fn writer(&self) -> PassiveLockGuard<'_, Writer> {
        self.writer.lock()
    }

    /// Makes `state` reachable from [`DriverState::global`].
    pub fn publish_global(state: &Self) {
        DRIVER_STATE.store(ptr::from_ref(state).cast_mut(), Ordering::Release);
    }

    /// Makes the state unreachable again (before it is freed, after every
    /// routine that could call [`DriverState::global`] is unregistered).
    pub fn unpublish_global() {
        DRIVER_STATE.store(ptr::null_mut(), Ordering::Release);
    }

    /// The loaded state, for kernel routines without a context pointer.
    pub fn global() -> Option<&'static Self> {
        // SAFETY: the pointer is published only while the state is alive, and
        // every routine that calls this is unregistered (which waits for running
        // calls) before `unpublish_global` and the free.
        unsafe { DRIVER_STATE.load(Ordering::Acquire).as_ref() }
    }

    /// Builds a generation for `policy`, classifies every running process
    /// into it and publishes it. The previous generation stays in force on
    /// any error. Returns the number of processes tracked.
    pub fn install_policy(
        &self,
        writer: &mut Writer,
        policy: CompiledPolicy,
        blob: Vec<u8>,
    ) -> Result<usize, BuildError> {
        let capacity = self
            .active
            .writer_view(writer)
            .map_or(INITIAL_PROCESS_CAPACITY, |current| {
                current.table.len().saturating_mul(2)
            })
            .max(INITIAL_PROCESS_CAPACITY);
        let ask_timeout_ms = policy.settings().ask_timeout_ms;
        let generation = Generation::new(policy, blob, capacity)?;
        let tracked = match generation.track_running_processes() {
            Ok(tracked) => tracked,
            Err(status) => {
                // Not fatal: processes are then classified as they are met
                // (handle_decision.rs, step 4) and as they start.
                trace::error(format_args!(
                    "enumerating running processes failed with {}",
                    trace::Status(status)
                ));
                0
            }
        };
        let generation = try_box(generation).ok_or(BuildError::OutOfMemory)?;
        self.active.publish(writer, generation);
        // What a handler connecting from now on is told.
        self.ask.set_timeout_ms(ask_timeout_ms);
        Ok(tracked)
    }

    /// Replaces the current generation's table by a fresh one (tombstones
    /// gone, room for twice the live processes) built from the table's own
    /// entries: no enumeration and no classification, so the thread that
    /// creates a process (the notify routine calls this) does work bounded
    /// by the table, not by the system. Returns the number of processes
    /// carried over.
    pub fn rebuild_table(&self, writer: &mut Writer) -> Result<usize, BuildError> {
        let Some(current) = self.active.writer_view(writer) else {
            return Ok(0);
        };
        let capacity = current
            .table
            .len()
            .saturating_mul(2)
            .max(INITIAL_PROCESS_CAPACITY);
        let next = try_box(current.rebuilt(capacity)?).ok_or(BuildError::OutOfMemory)?;
        let tracked = next.table.len();
        self.active.publish(writer, next);
        Ok(tracked)
    }
}

impl core::fmt::Debug for DriverState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DriverState")
            .field("active", &self.active)
            .field("ring", &self.ring)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}
