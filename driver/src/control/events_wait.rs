//! `IOCTL_WAIT_EVENTS`: the events stream's wait. A reader's request pends
//! until the audit ring holds a record, so `events --follow` and the Python
//! stream never poll.
//!
//! SKELETON (ask-base): completes at once; the ask-path branch replaces the
//! body, not the interface.

use procguard_protocol::dispatch::STATUS_INVALID_DEVICE_REQUEST;

use crate::ffi::{call_unsafe_wdf_function_binding, WDFREQUEST};

/// The pended readers.
#[derive(Debug, Default)]
pub struct EventsWait {
    _private: (),
}

impl EventsWait {
    /// `IOCTL_WAIT_EVENTS` from the control device's queue (PASSIVE).
    pub(crate) fn handle_ioctl(&self, request: WDFREQUEST, _input: &[u8], _output_length: usize) {
        // SAFETY: a presented request, completed once.
        unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestCompleteWithInformation,
                request,
                STATUS_INVALID_DEVICE_REQUEST,
                0
            );
        }
    }

    /// Called after records were appended to the ring (any IRQL up to
    /// DISPATCH_LEVEL): completes the pended readers. One atomic load when
    /// nobody waits.
    pub fn notify(&self) {}
}
