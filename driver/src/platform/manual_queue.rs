//! A KMDF manual queue: where pended IOCTLs (the ask path's get-requests,
//! the events stream's waits) sit until the driver takes them out. The
//! framework cancels a queued request by itself (`CancelIoEx`, the caller's
//! thread ending): it completes it with `STATUS_CANCELLED` without calling us.
//!
//! Every function here is callable at IRQL <= DISPATCH_LEVEL (the framework's
//! limit for these calls), so they may run under the ask path's spin lock —
//! except that completing a request is left to the caller, after it releases
//! its locks.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::ffi::{
    call_unsafe_wdf_function_binding, _WDF_IO_QUEUE_DISPATCH_TYPE, _WDF_TRI_STATE, NTSTATUS, PVOID,
    ULONG, WDFDEVICE, WDFFILEOBJECT, WDFQUEUE, WDFREQUEST, WDF_IO_QUEUE_CONFIG,
    WDF_NO_OBJECT_ATTRIBUTES,
};

/// A manual queue of the control device; empty (no queue) until created.
#[derive(Debug, Default)]
pub struct ManualQueue {
    queue: AtomicPtr<crate::ffi::WDFQUEUE__>,
}

impl ManualQueue {
    /// Creates the queue on `device` (PASSIVE, while the device is created).
    /// The device owns it: deleting the device deletes it.
    ///
    /// # Errors
    /// The status of `WdfIoQueueCreate`.
    ///
    /// # Safety
    /// `device` is the live control device.
    pub unsafe fn create(&self, device: WDFDEVICE) -> Result<(), NTSTATUS> {
        let mut config = WDF_IO_QUEUE_CONFIG {
            Size: core::mem::size_of::<WDF_IO_QUEUE_CONFIG>() as ULONG,
            DispatchType: _WDF_IO_QUEUE_DISPATCH_TYPE::WdfIoQueueDispatchManual,
            // A control device has no power states.
            PowerManaged: _WDF_TRI_STATE::WdfFalse,
            ..WDF_IO_QUEUE_CONFIG::default()
        };
        let mut queue: WDFQUEUE = ptr::null_mut();
        // SAFETY: a live device, a filled config and a local out pointer.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfIoQueueCreate,
                device,
                &raw mut config,
                WDF_NO_OBJECT_ATTRIBUTES,
                &raw mut queue
            )
        };
        if status < 0 {
            return Err(status);
        }
        self.queue.store(queue, Ordering::Release);
        Ok(())
    }

    /// Forgets the queue (the device that owns it is being deleted).
    pub fn forget(&self) {
        self.queue.store(ptr::null_mut(), Ordering::Release);
    }

    fn handle(&self) -> Option<WDFQUEUE> {
        let queue = self.queue.load(Ordering::Acquire);
        (!queue.is_null()).then_some(queue)
    }

    /// Puts `request` (presented by the device's default queue, not yet
    /// completed) in this queue. On `Err` the request is still the caller's
    /// to complete.
    pub(crate) fn forward(&self, request: WDFREQUEST) -> Result<(), NTSTATUS> {
        let Some(queue) = self.handle() else {
            return Err(crate::ffi::STATUS_INVALID_DEVICE_STATE);
        };
        // SAFETY: a presented request and our live queue.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(WdfRequestForwardToIoQueue, request, queue)
        };
        if status < 0 {
            Err(status)
        } else {
            Ok(())
        }
    }

    /// Takes the oldest queued request out (it is then ours to complete).
    pub fn take_next(&self) -> Option<WDFREQUEST> {
        let queue = self.handle()?;
        let mut request: WDFREQUEST = ptr::null_mut();
        // SAFETY: our live queue and a local out pointer.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfIoQueueRetrieveNextRequest,
                queue,
                &raw mut request
            )
        };
        (status >= 0 && !request.is_null()).then_some(request)
    }

    /// Takes the oldest queued request of `file` out.
    pub(crate) fn take_next_of(&self, file: WDFFILEOBJECT) -> Option<WDFREQUEST> {
        let queue = self.handle()?;
        let mut request: WDFREQUEST = ptr::null_mut();
        // SAFETY: our live queue, a file object the framework handed us and
        // a local out pointer.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfIoQueueRetrieveRequestByFileObject,
                queue,
                file,
                &raw mut request
            )
        };
        (status >= 0 && !request.is_null()).then_some(request)
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> u32 {
        let Some(queue) = self.handle() else {
            return 0;
        };
        let mut queued: ULONG = 0;
        let mut driver: ULONG = 0;
        // SAFETY: our live queue and local out pointers.
        unsafe {
            call_unsafe_wdf_function_binding!(
                WdfIoQueueGetState,
                queue,
                &raw mut queued,
                &raw mut driver
            )
        };
        queued
    }
}

/// The framework file object `request` came on.
pub(crate) fn file_object_of(request: WDFREQUEST) -> WDFFILEOBJECT {
    // SAFETY: a request the framework presented, not yet completed.
    unsafe { call_unsafe_wdf_function_binding!(WdfRequestGetFileObject, request) }
}

/// Completes `request` once (IRQL <= DISPATCH_LEVEL; never under a lock).
pub(crate) fn complete(request: WDFREQUEST, status: NTSTATUS, information: usize) {
    // SAFETY: a request that is ours (presented or taken out of a queue),
    // completed once.
    unsafe {
        call_unsafe_wdf_function_binding!(
            WdfRequestCompleteWithInformation,
            request,
            status,
            information as u64
        );
    }
}

/// Writes `bytes` into `request`'s output buffer and completes it with
/// their length; completes it with the framework's error when the buffer
/// is smaller.
pub(crate) fn complete_with_output(request: WDFREQUEST, bytes: &[u8]) {
    let mut buffer: PVOID = ptr::null_mut();
    let mut length: usize = 0;
    // SAFETY: a request that is ours; local out pointers.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfRequestRetrieveOutputBuffer,
            request,
            bytes.len(),
            &raw mut buffer,
            &raw mut length
        )
    };
    if status < 0 {
        complete(request, status, 0);
        return;
    }
    if buffer.is_null() || length < bytes.len() {
        complete(request, crate::ffi::STATUS_BUFFER_TOO_SMALL, 0);
        return;
    }
    // SAFETY: the framework guarantees `length` >= `bytes.len()` writable
    // bytes at `buffer` until completion; `bytes` is ours, not the buffer.
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len()) };
    complete(request, crate::ffi::STATUS_SUCCESS, bytes.len());
}
