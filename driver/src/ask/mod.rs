//! The ask path: requests that match an `ask` rule are decided by a
//! user-mode handler, synchronously, over the control device (an inverted
//! call). The protocol is `procguard_protocol::ask`.
//!
//! SKELETON (ask-base): the interface the callbacks and the control device
//! use. It answers every request with its fallback (`NoHandler`) and refuses
//! the ask IOCTLs; the ask-path branch replaces the body, not the interface.

use procguard_policy::AskPlan;
use procguard_protocol::ask::{AskOutcome, AskRequest, AskStatus, STATUS_INVALID_DEVICE_STATE};

use crate::ffi::{call_unsafe_wdf_function_binding, NTSTATUS, WDFDEVICE, WDFREQUEST};

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

/// The handler connection, the slot pool, the FIFO of requests waiting for
/// a worker and the counters.
#[derive(Debug)]
pub struct AskBroker {
    _private: (),
}

impl AskBroker {
    /// A broker with no handler connected; `None` when out of memory.
    pub fn new() -> Option<Self> {
        Some(Self { _private: () })
    }

    /// Creates the broker's WDF queues on the control device (PASSIVE, while
    /// the device is being created).
    ///
    /// # Errors
    /// The status of the framework call that failed.
    ///
    /// # Safety
    /// `device` is the live control device.
    pub unsafe fn create_queues(&self, _device: WDFDEVICE) -> Result<(), NTSTATUS> {
        Ok(())
    }

    /// Decides `request` by asking the handler (PASSIVE or APC_LEVEL: the
    /// pre-operation callback). `request` is filled by the caller except
    /// `id`, `generation` and `timeout_ms`; `access` is what the enforce
    /// rules left (`request.desired_access`), `plan` the engine's ask plan,
    /// `timeout_ms` the policy's `ask_timeout_ms`. Never waits longer than
    /// that, never at APC_LEVEL or above, never for the handler's own
    /// process, never when the plan is not askable.
    pub fn ask(
        &self,
        _request: &mut AskRequest,
        access: u32,
        plan: &AskPlan,
        _timeout_ms: u32,
    ) -> AskAnswer {
        AskAnswer {
            outcome: AskOutcome::NoHandler,
            access: plan.fallback_access(access),
            result_code: 0,
            waited_us: 0,
        }
    }

    /// One of the four ask IOCTLs from the control device's queue (PASSIVE):
    /// completes `request`, or pends it (get-request). `file` is the
    /// request's file object; `input` the copied input buffer.
    pub(crate) fn handle_ioctl(
        &self,
        request: WDFREQUEST,
        _code: u32,
        _input: &[u8],
        _output_length: usize,
    ) {
        // SAFETY: a presented request, completed once.
        unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestCompleteWithInformation,
                request,
                STATUS_INVALID_DEVICE_STATE,
                0
            );
        }
    }

    /// The handler's process id (0: none connected): the callbacks never
    /// ask about its own requests.
    pub fn handler_pid(&self) -> u32 {
        0
    }

    /// Connection, pool and counters for `IOCTL_GET_STATUS`.
    pub fn status(&self) -> AskStatus {
        AskStatus::default()
    }

    /// Zeroes the counters (`IOCTL_RESET_COUNTERS`).
    pub fn reset_counters(&self) {}

    /// Unload (PASSIVE, before the object callbacks are unregistered):
    /// refuses new asks, releases every waiter with its fallback at once and
    /// completes every pended IOCTL with `STATUS_CANCELLED`.
    pub fn shutdown(&self) {}
}
