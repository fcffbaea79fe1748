//! The ask path: requests that match an `ask` rule are decided by a
//! user-mode handler, synchronously, over the control device (an inverted
//! call). The protocol is `procguard_protocol::ask`.
//!
//! - [`slot_pool`]: the 64 slots a request occupies while it waits, and the
//!   slot state machine (why no reply, disconnect or timeout can race).
//! - [`waiting_fifo`]: requests waiting for a handler worker, oldest first.
//! - [`handler_connection`]: the one connected handler.
//! - [`ask_ioctls`]: connect, get-request, reply, disconnect, file cleanup.
//!
//! Locking: one spin lock (the broker's) guards the slot states, the FIFO
//! and the connection. Under it the broker sets slot events (`KeSetEvent`,
//! Wait = FALSE), takes requests out of the get-request queue and forwards
//! get-requests into it (all allowed at DISPATCH_LEVEL); it completes WDF
//! requests only after releasing it. Pending and taking are both under the
//! lock, so a request never waits in the FIFO while a worker is pended.
//!
//! IRQL: `ask` runs in the object callback at PASSIVE_LEVEL (it waits only
//! there; above it, or with all APCs disabled, the request gets its
//! fallback); the IOCTLs and the file cleanup run at PASSIVE_LEVEL.

pub mod ask_ioctls;
pub mod handler_connection;
pub mod slot_pool;
pub mod waiting_fifo;

#[cfg(test)]
mod broker_tests;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use procguard_policy::AskPlan;
use procguard_protocol::ask::{AskCounters, AskOutcome, AskRequest, AskStatus};

use crate::ffi::{NTSTATUS, WDFDEVICE, WDFFILEOBJECT, WDFREQUEST};
use crate::platform::kernel_sync::{self, KernelEvent, SpinLock};
use crate::platform::manual_queue::{self, ManualQueue};

use handler_connection::HandlerConnection;
use slot_pool::{Ending, SlotTable, SLOTS};
use waiting_fifo::WaitingFifo;

/// Shortest and longest wait (the policy's `ask_timeout_ms` bounds).
const TIMEOUT_MS_MIN: u32 = 1;
const TIMEOUT_MS_MAX: u32 = 5000;
/// The policy language's default `ask_timeout_ms`.
const DEFAULT_TIMEOUT_MS: u32 = 250;

/// What the broker decided for one asked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskAnswer {
    /// What happened.
    pub outcome: AskOutcome,
    /// The access to grant: the handler's answer ANDed into the enforce
    /// result, or the plan's fallback. Always a subset of the access the
    /// broker was given.
    pub access: u32,
    /// The handler's `result_code` (0 unless it answered with one).
    pub result_code: i32,
    /// How long the callback waited, in microseconds.
    pub waited_us: u32,
}

/// A worker's get-request taken out of the queue with the request it gets,
/// completed after the lock is released.
struct Handover {
    worker: WDFREQUEST,
    bytes: Option<[u8; AskRequest::SIZE]>,
}

impl Handover {
    fn complete(self) {
        match self.bytes {
            Some(bytes) => manual_queue::complete_with_output(self.worker, &bytes),
            None => manual_queue::complete(self.worker, crate::ffi::STATUS_CANCELLED, 0),
        }
    }
}

/// What the broker's lock guards.
#[derive(Debug)]
struct Shared {
    slots: SlotTable,
    fifo: WaitingFifo,
    connection: Option<HandlerConnection>,
    /// Unloading: no new ask, no new connection.
    closed: bool,
}

/// Totals since load (or the last reset).
#[derive(Debug, Default)]
struct Totals {
    asked: AtomicU64,
    answered: AtomicU64,
    timed_out: AtomicU64,
    no_handler: AtomicU64,
    pool_full: AtomicU64,
    unaskable: AtomicU64,
    cancelled: AtomicU64,
    late_replies: AtomicU64,
}

impl Totals {
    fn outcome(&self, outcome: AskOutcome) -> &AtomicU64 {
        match outcome {
            AskOutcome::Answered => &self.answered,
            AskOutcome::TimedOut => &self.timed_out,
            AskOutcome::NoHandler => &self.no_handler,
            AskOutcome::PoolFull => &self.pool_full,
            AskOutcome::Unaskable => &self.unaskable,
            AskOutcome::Cancelled => &self.cancelled,
        }
    }

    fn all(&self) -> [&AtomicU64; 8] {
        [
            &self.asked,
            &self.answered,
            &self.timed_out,
            &self.no_handler,
            &self.pool_full,
            &self.unaskable,
            &self.cancelled,
            &self.late_replies,
        ]
    }
}

/// The handler connection, the slot pool, the FIFO of requests waiting for
/// a worker and the counters.
pub struct AskBroker {
    shared: SpinLock<Shared>,
    /// One event per slot, at a fixed (heap) address from load to unload.
    events: Vec<KernelEvent>,
    /// Pended get-requests (idle handler workers).
    workers: ManualQueue,
    /// The connected handler's pid (0: none), read without the lock.
    handler_pid: AtomicU32,
    /// The ask timeout of the policy in force.
    timeout_ms: AtomicU32,
    totals: Totals,
}

impl core::fmt::Debug for AskBroker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AskBroker")
            .field("handler_pid", &self.handler_pid)
            .finish_non_exhaustive()
    }
}

impl AskBroker {
    /// A broker with no handler connected; `None` when out of memory. The
    /// slots and their events are allocated here, once.
    pub fn new() -> Option<Self> {
        let slots = SlotTable::new()?;
        let mut events = Vec::new();
        events.try_reserve_exact(SLOTS).ok()?;
        for _ in 0..SLOTS {
            procguard_policy::fallible::try_push(&mut events, KernelEvent::new()).ok()?;
        }
        for event in &events {
            // SAFETY: the vector never grows again (its capacity was exact),
            // so each event keeps this heap address until the broker is
            // dropped; pool memory is non-paged; nothing waits on it yet.
            unsafe { event.init() };
        }
        Some(Self {
            shared: SpinLock::new(Shared {
                slots,
                fifo: WaitingFifo::new(),
                connection: None,
                closed: false,
            }),
            events,
            workers: ManualQueue::default(),
            handler_pid: AtomicU32::new(0),
            timeout_ms: AtomicU32::new(DEFAULT_TIMEOUT_MS),
            totals: Totals::default(),
        })
    }

    /// Creates the broker's WDF queues on the control device (PASSIVE, while
    /// the device is being created).
    ///
    /// # Errors
    /// The status of the framework call that failed.
    ///
    /// # Safety
    /// `device` is the live control device.
    pub unsafe fn create_queues(&self, device: WDFDEVICE) -> Result<(), NTSTATUS> {
        // SAFETY: forwarded contract.
        unsafe { self.workers.create(device) }
    }

    /// Records the policy in force's `ask_timeout_ms` (for the connect
    /// response and the status; each ask passes its own).
    pub fn set_timeout_ms(&self, timeout_ms: u32) {
        self.timeout_ms.store(
            timeout_ms.clamp(TIMEOUT_MS_MIN, TIMEOUT_MS_MAX),
            Ordering::Relaxed,
        );
    }

    /// Decides `request` by asking the handler (PASSIVE or APC_LEVEL: the
    /// pre-operation callback). `request` is filled by the caller except
    /// `id`, `generation` and `timeout_ms`; `access` is what the enforce
    /// rules left (`request.desired_access`), `plan` the engine's ask plan,
    /// `timeout_ms` the policy's `ask_timeout_ms`. Never waits longer than
    /// that, never at APC_LEVEL or above, never for the handler's own
    /// process, never when the plan is not askable.
    ///
    /// Not asked at all (access unchanged, outcome `Unaskable`, nothing
    /// counted): a plan with no rights, and the handler's own requests —
    /// callers check [`AskBroker::handler_pid`] first and apply the enforce
    /// rules only.
    pub fn ask(
        &self,
        request: &mut AskRequest,
        access: u32,
        plan: &AskPlan,
        timeout_ms: u32,
    ) -> AskAnswer {
        let handler = self.handler_pid.load(Ordering::Relaxed);
        if plan.rights & access == 0 || (handler != 0 && request.requester_pid == handler) {
            return AskAnswer {
                outcome: AskOutcome::Unaskable,
                access,
                result_code: 0,
                waited_us: 0,
            };
        }
        self.totals.asked.fetch_add(1, Ordering::Relaxed);
        let fallback = plan.fallback_access(access);
        if !plan.askable || !kernel_sync::may_wait() {
            return self.at_once(AskOutcome::Unaskable, fallback);
        }
        let timeout_ms = timeout_ms.clamp(TIMEOUT_MS_MIN, TIMEOUT_MS_MAX);
        let started = kernel_sync::system_time();
        let (slot, delivery) = {
            let mut shared = self.shared.lock();
            if shared.closed || shared.connection.is_none() {
                drop(shared);
                return self.at_once(AskOutcome::NoHandler, fallback);
            }
            let Some((slot, generation)) = shared.slots.claim() else {
                drop(shared);
                return self.at_once(AskOutcome::PoolFull, fallback);
            };
            request.id = slot as u32;
            request.generation = generation;
            request.timeout_ms = timeout_ms;
            if let Some(record) = shared.slots.get_mut(slot) {
                record.request = request.to_bytes();
            }
            // A set from the slot's previous use that came after its owner
            // timed out: nobody can set it again until we wait.
            if let Some(event) = self.events.get(slot) {
                event.clear();
            }
            shared.fifo.push_back(slot);
            (slot, self.hand_over(&mut shared))
        };
        if let Some(handover) = delivery {
            handover.complete();
        }
        if let Some(event) = self.events.get(slot) {
            event.wait(timeout_ms);
        }
        let ending = {
            let mut shared = self.shared.lock();
            let ending = shared.slots.finish(slot);
            if ending == (Ending::TimedOut { queued: true }) {
                shared.fifo.remove(slot);
            }
            ending
        };
        let waited_us =
            u32::try_from(kernel_sync::system_time().saturating_sub(started).max(0) / 10)
                .unwrap_or(u32::MAX);
        let (outcome, granted, result_code) = match ending {
            // AND: the handler can only remove bits.
            Ending::Answered {
                access: answer,
                result_code,
            } => (AskOutcome::Answered, access & answer, result_code),
            Ending::Cancelled => (AskOutcome::Cancelled, fallback, 0),
            Ending::TimedOut { .. } => (AskOutcome::TimedOut, fallback, 0),
        };
        self.totals.outcome(outcome).fetch_add(1, Ordering::Relaxed);
        AskAnswer {
            outcome,
            access: granted,
            result_code,
            waited_us,
        }
    }

    /// An outcome decided without waiting.
    fn at_once(&self, outcome: AskOutcome, fallback: u32) -> AskAnswer {
        self.totals.outcome(outcome).fetch_add(1, Ordering::Relaxed);
        AskAnswer {
            outcome,
            access: fallback,
            result_code: 0,
            waited_us: 0,
        }
    }

    /// Under the lock: if a request waits in the FIFO and a worker is
    /// pended, takes both; the caller completes the worker's request after
    /// releasing the lock.
    fn hand_over(&self, shared: &mut Shared) -> Option<Handover> {
        if shared.fifo.is_empty() {
            return None;
        }
        let worker = self.workers.take_next()?;
        // Only `Queued` slots are in the FIFO, so this always finds bytes;
        // if it did not, the worker is released rather than stranded.
        let bytes = shared
            .fifo
            .pop_front()
            .and_then(|slot| shared.slots.deliver(slot));
        Some(Handover { worker, bytes })
    }

    /// One of the four ask IOCTLs from the control device's queue (PASSIVE):
    /// completes `request`, or pends it (get-request). `input` is the copied
    /// input buffer; the request's file object says whose handle it came on.
    pub(crate) fn handle_ioctl(
        &self,
        request: WDFREQUEST,
        code: u32,
        input: &[u8],
        output_length: usize,
    ) {
        ask_ioctls::handle(self, request, code, input, output_length);
    }

    /// The control device's file cleanup (PASSIVE): the connected handler's
    /// handle closing ends the connection.
    pub(crate) fn file_cleanup(&self, file: WDFFILEOBJECT) {
        ask_ioctls::file_cleanup(self, file);
    }

    /// The handler's process id (0: none connected): the callbacks never
    /// ask about its own requests.
    pub fn handler_pid(&self) -> u32 {
        self.handler_pid.load(Ordering::Relaxed)
    }

    /// Connection, pool and counters for `IOCTL_GET_STATUS`.
    pub fn status(&self) -> AskStatus {
        let (handler_pid, in_flight) = {
            let shared = self.shared.lock();
            (
                shared.connection.map_or(0, |connection| connection.pid),
                shared.slots.in_use(),
            )
        };
        let [asked, answered, timed_out, no_handler, pool_full, unaskable, cancelled, late_replies] =
            self.totals.all().map(|total| total.load(Ordering::Relaxed));
        AskStatus {
            handler_pid,
            timeout_ms: self.timeout_ms.load(Ordering::Relaxed),
            slots: SLOTS as u32,
            in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
            workers_waiting: self.workers.queued(),
            counters: AskCounters {
                asked,
                answered,
                timed_out,
                no_handler,
                pool_full,
                unaskable,
                cancelled,
                late_replies,
            },
        }
    }

    /// Zeroes the counters (`IOCTL_RESET_COUNTERS`).
    pub fn reset_counters(&self) {
        for total in self.totals.all() {
            total.store(0, Ordering::Relaxed);
        }
    }

    /// Unload (PASSIVE, before the object callbacks are unregistered):
    /// refuses new asks, releases every waiter with its fallback at once and
    /// completes every pended IOCTL with `STATUS_CANCELLED`.
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.release(None);
        self.workers.forget();
    }

    /// Ends the connection (if `file` is given: only if it is on that file
    /// object): every waiter is released with its fallback, and the pended
    /// get-requests (of that file object; all of them at unload) complete
    /// with `STATUS_CANCELLED`. True if a connection ended.
    fn release(&self, file: Option<WDFFILEOBJECT>) -> bool {
        let ended = {
            let mut shared = self.shared.lock();
            let ends = match (shared.connection, file) {
                (Some(connection), Some(file)) => connection.is_on(file),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if ends {
                shared.connection = None;
                self.handler_pid.store(0, Ordering::Relaxed);
            }
            if ends || shared.closed {
                let events = &self.events;
                shared.slots.cancel_all(|slot| {
                    if let Some(event) = events.get(slot) {
                        event.set();
                    }
                });
                shared.fifo.clear();
            }
            ends
        };
        // Outside the lock. By file object, so a handler that reconnects at
        // once keeps its new workers.
        loop {
            let worker = match file {
                Some(file) => self.workers.take_next_of(file),
                None => self.workers.take_next(),
            };
            let Some(worker) = worker else { break };
            manual_queue::complete(worker, crate::ffi::STATUS_CANCELLED, 0);
        }
        ended
    }
}
