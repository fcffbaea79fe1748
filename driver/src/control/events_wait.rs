//! `IOCTL_WAIT_EVENTS`: the events stream's wait. A reader's request pends
//! until the audit ring holds a record, so `events --follow` and the Python
//! stream never poll.
//!
//! A request completes at once when records are waiting; otherwise it pends
//! in a manual queue until [`EventsWait::notify`] (called by the callbacks
//! after an append) completes it. `armed` says a request may be pended, so a
//! notify with nobody waiting is one atomic load. The lost-wakeup race (a
//! reader finds the ring empty, a record is appended and notified, then the
//! reader pends) is closed by ordering: the reader arms, then re-checks the
//! ring; the notifier appends, then checks `armed` (SeqCst fences on both
//! sides), so at least one of them sees the other.

use core::sync::atomic::{fence, AtomicBool, Ordering};

use procguard_protocol::ask::EventsWaiting;

use crate::driver_state::DriverState;
use crate::ffi::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_INVALID_PARAMETER, WDFDEVICE,
    WDFFILEOBJECT, WDFREQUEST,
};
use crate::platform::manual_queue::{complete, complete_with_output, ManualQueue};

/// The pended readers.
#[derive(Debug, Default)]
pub struct EventsWait {
    readers: ManualQueue,
    /// A reader may be pended (cleared by the notify that takes them).
    armed: AtomicBool,
}

/// Records waiting in the loaded driver's ring (0 when not loaded).
fn ring_pending() -> u64 {
    DriverState::global().map_or(0, |state| state.ring.pending())
}

impl EventsWait {
    /// Creates the readers' manual queue on the control device (PASSIVE,
    /// while the device is being created).
    ///
    /// # Errors
    /// The status of `WdfIoQueueCreate`.
    ///
    /// # Safety
    /// `device` is the live control device.
    pub unsafe fn create_queue(&self, device: WDFDEVICE) -> Result<(), NTSTATUS> {
        // SAFETY: forwarded contract.
        unsafe { self.readers.create(device) }
    }

    /// `IOCTL_WAIT_EVENTS` from the control device's queue (PASSIVE).
    pub(crate) fn handle_ioctl(&self, request: WDFREQUEST, input: &[u8], output_length: usize) {
        self.handle_with(request, input, output_length, ring_pending);
    }

    /// [`EventsWait::handle_ioctl`] over a given ring.
    fn handle_with(
        &self,
        request: WDFREQUEST,
        input: &[u8],
        output_length: usize,
        pending: impl Fn() -> u64,
    ) {
        if !input.is_empty() {
            complete(request, STATUS_INVALID_PARAMETER, 0);
            return;
        }
        if output_length < EventsWaiting::SIZE {
            complete(request, STATUS_BUFFER_TOO_SMALL, 0);
            return;
        }
        let waiting = pending();
        if waiting > 0 {
            complete_with_output(request, &EventsWaiting { pending: waiting }.to_bytes());
            return;
        }
        self.armed.store(true, Ordering::SeqCst);
        if let Err(status) = self.readers.forward(request) {
            complete(request, status, 0);
            return;
        }
        fence(Ordering::SeqCst);
        // Appended between the first look and the arming: wake ourselves.
        if pending() > 0 {
            self.notify_with(pending);
        }
    }

    /// Called after records were appended to the ring (any IRQL up to
    /// DISPATCH_LEVEL): completes the pended readers. One atomic load when
    /// nobody waits.
    #[inline(always)]
    pub fn notify(&self) {
        // Pairs with the reader's arm-then-recheck: the append is visible
        // before `armed` is read, or the reader sees the record itself.
        fence(Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) {
            self.wake_readers(ring_pending);
        }
    }

    /// The rare half of [`notify`](Self::notify): out of line, so the
    /// callbacks' append path carries one fence, one load and one branch.
    #[cold]
    #[inline(never)]
    fn wake_readers(&self, pending: impl Fn() -> u64) {
        self.armed.store(false, Ordering::SeqCst);
        let waiting = pending().max(1);
        while let Some(reader) = self.readers.take_next() {
            complete_with_output(reader, &EventsWaiting { pending: waiting }.to_bytes());
        }
    }

    /// [`notify`](Self::notify) with the ring's count from `pending`.
    fn notify_with(&self, pending: impl Fn() -> u64) {
        fence(Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) {
            self.wake_readers(pending);
        }
    }

    /// The control device's file cleanup: that handle's pended waits
    /// complete with `STATUS_CANCELLED`.
    pub(crate) fn file_cleanup(&self, file: WDFFILEOBJECT) {
        while let Some(reader) = self.readers.take_next_of(file) {
            complete(reader, STATUS_CANCELLED, 0);
        }
    }

    /// Unload: every pended wait completes with `STATUS_CANCELLED`.
    pub fn shutdown(&self) {
        self.armed.store(false, Ordering::SeqCst);
        while let Some(reader) = self.readers.take_next() {
            complete(reader, STATUS_CANCELLED, 0);
        }
        self.readers.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{completion_of, new_request, queued_in, reset_host, with_host};
    use crate::ffi::{STATUS_CANCELLED, STATUS_SUCCESS};
    use core::cell::Cell;

    fn waiter() -> (EventsWait, usize) {
        reset_host();
        let wait = EventsWait::default();
        // SAFETY: the host double's device.
        unsafe { wait.create_queue(0xDE71 as WDFDEVICE) }.expect("queue");
        let queue = with_host(|host| *host.manual_queues.last().expect("a manual queue"));
        (wait, queue)
    }

    #[test]
    fn a_wait_completes_at_once_when_records_are_waiting() {
        let (wait, queue) = waiter();
        let request = new_request(1, &[], 8);
        wait.handle_with(request, &[], 8, || 3);
        let (status, information, output) = completion_of(request).expect("completed");
        assert_eq!((status, information), (STATUS_SUCCESS, 8));
        assert_eq!(EventsWaiting::parse(&output).expect("8 bytes").pending, 3);
        assert_eq!(queued_in(queue), 0);
    }

    #[test]
    fn a_wait_pends_until_notify_and_notify_without_readers_does_nothing() {
        let (wait, queue) = waiter();
        wait.notify_with(|| panic!("an unarmed notify does not look at the ring"));
        let ring = Cell::new(0u64);
        let first = new_request(1, &[], 8);
        let second = new_request(2, &[], 16);
        wait.handle_with(first, &[], 8, || ring.get());
        wait.handle_with(second, &[], 16, || ring.get());
        assert_eq!(queued_in(queue), 2);
        assert!(completion_of(first).is_none());
        ring.set(5);
        wait.notify_with(|| ring.get());
        for request in [first, second] {
            let (status, _, output) = completion_of(request).expect("completed by notify");
            assert_eq!(status, STATUS_SUCCESS);
            assert_eq!(EventsWaiting::parse(&output).expect("8").pending, 5);
        }
        assert!(
            !wait.armed.load(Ordering::SeqCst),
            "disarmed: the next notify is one load"
        );
    }

    #[test]
    fn bad_input_or_a_short_buffer_is_refused() {
        let (wait, _) = waiter();
        let with_input = new_request(1, &[1], 8);
        wait.handle_with(with_input, &[1], 8, || 1);
        assert_eq!(
            completion_of(with_input).expect("done").0,
            STATUS_INVALID_PARAMETER
        );
        let short = new_request(1, &[], 4);
        wait.handle_with(short, &[], 4, || 1);
        assert_eq!(
            completion_of(short).expect("done").0,
            STATUS_BUFFER_TOO_SMALL
        );
    }

    #[test]
    fn cleanup_cancels_that_handles_waits_and_shutdown_cancels_all() {
        let (wait, queue) = waiter();
        let mine = new_request(7, &[], 8);
        let other = new_request(8, &[], 8);
        wait.handle_with(mine, &[], 8, || 0);
        wait.handle_with(other, &[], 8, || 0);
        wait.file_cleanup(7 as WDFFILEOBJECT);
        assert_eq!(completion_of(mine).expect("cancelled").0, STATUS_CANCELLED);
        assert!(completion_of(other).is_none());
        wait.shutdown();
        assert_eq!(completion_of(other).expect("cancelled").0, STATUS_CANCELLED);
        assert_eq!(queued_in(queue), 0);
    }
}
