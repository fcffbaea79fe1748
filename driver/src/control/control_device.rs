//! The control device `\Device\ProcGuard` (`\\.\ProcGuard`) and its IOCTL
//! queue: the WDF adapter around `procguard_protocol::dispatch`.
//!
//! A KMDF control device, openable only by SYSTEM and Administrators (its
//! SDDL), with one sequential queue whose callbacks run at PASSIVE_LEVEL.
//! `METHOD_BUFFERED` gives input and output one shared system buffer: the
//! adapter copies the input out before it lends the buffer as output, so the
//! dispatcher never sees the two alias. The request is completed exactly
//! once, on every path.

use alloc::vec::Vec;
use core::ptr;

use procguard_protocol::ask::{
    IOCTL_ASK_CONNECT, IOCTL_ASK_DISCONNECT, IOCTL_ASK_GET_REQUEST, IOCTL_ASK_REPLY,
    IOCTL_WAIT_EVENTS,
};
use procguard_protocol::dispatch::dispatch;
use procguard_protocol::ioctl::{SetPolicyRequest, MAX_POLICY_BYTES};

use crate::driver_state::DriverState;
use crate::ffi::{
    call_unsafe_wdf_function_binding, _WDF_EXECUTION_LEVEL, _WDF_FILEOBJECT_CLASS,
    _WDF_IO_QUEUE_DISPATCH_TYPE, _WDF_SYNCHRONIZATION_SCOPE, _WDF_TRI_STATE, NTSTATUS, PVOID,
    PWDFDEVICE_INIT, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, ULONG, WDFDEVICE, WDFDRIVER, WDFFILEOBJECT, WDFQUEUE, WDFREQUEST,
    WDF_FILEOBJECT_CONFIG, WDF_IO_QUEUE_CONFIG, WDF_NO_OBJECT_ATTRIBUTES, WDF_OBJECT_ATTRIBUTES,
};
use crate::platform::trace;
use crate::platform::wide_string::{unicode_string, utf16};

const DEVICE_NAME: [u16; 17] = utf16("\\Device\\ProcGuard");
const SYMBOLIC_LINK: [u16; 21] = utf16("\\DosDevices\\ProcGuard");
/// `SDDL_DEVOBJ_SYS_ALL_ADM_ALL`: SYSTEM and Administrators, all access.
const SDDL: [u16; 27] = utf16("D:P(A;;GA;;;SY)(A;;GA;;;BA)");
/// Largest input any IOCTL takes (a set-policy request).
const MAX_INPUT: usize = SetPolicyRequest::HEADER + MAX_POLICY_BYTES;

const _: () = assert!(DEVICE_NAME[DEVICE_NAME.len() - 1] == b'd' as u16);
const _: () = assert!(SYMBOLIC_LINK[SYMBOLIC_LINK.len() - 1] == b'd' as u16);
const _: () = assert!(SDDL[SDDL.len() - 1] == b')' as u16);

/// The created control device; deleted by [`ControlDevice::delete`].
#[derive(Debug)]
pub struct ControlDevice {
    device: WDFDEVICE,
}

impl ControlDevice {
    /// The framework device (the parent of the registry work item).
    pub const fn handle(&self) -> WDFDEVICE {
        self.device
    }

    /// Creates the device, its symbolic link and its queue.
    ///
    /// # Errors
    /// The status of the framework call that failed (everything created
    /// before it is deleted again).
    ///
    /// # Safety
    /// `driver` is the handle `WdfDriverCreate` returned.
    pub unsafe fn create(driver: WDFDRIVER) -> Result<Self, NTSTATUS> {
        let sddl = unicode_string(&SDDL);
        // SAFETY: a valid driver handle and SDDL string.
        let mut init: PWDFDEVICE_INIT = unsafe {
            call_unsafe_wdf_function_binding!(WdfControlDeviceInitAllocate, driver, &raw const sddl)
        };
        if init.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let name = unicode_string(&DEVICE_NAME);
        // SAFETY: `init` is the live device init; the name is copied.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(WdfDeviceInitAssignName, init, &raw const name)
        };
        if status < 0 {
            // SAFETY: not yet handed to WdfDeviceCreate: ours to free.
            unsafe { call_unsafe_wdf_function_binding!(WdfDeviceInitFree, init) };
            return Err(status);
        }
        // File cleanup: a handler's handle closing ends its connection and
        // its pended IOCTLs (the ask path, the events wait).
        let mut file_config = WDF_FILEOBJECT_CONFIG {
            Size: core::mem::size_of::<WDF_FILEOBJECT_CONFIG>() as ULONG,
            EvtDeviceFileCreate: None,
            EvtFileClose: None,
            EvtFileCleanup: Some(evt_file_cleanup),
            // WDF_FILEOBJECT_CONFIG_INIT's values.
            AutoForwardCleanupClose: _WDF_TRI_STATE::WdfUseDefault,
            FileObjectClass: _WDF_FILEOBJECT_CLASS::WdfFileObjectWdfCanUseFsContext,
        };
        // SAFETY: the live device init; the config is copied.
        unsafe {
            call_unsafe_wdf_function_binding!(
                WdfDeviceInitSetFileObjectConfig,
                init,
                &raw mut file_config,
                WDF_NO_OBJECT_ATTRIBUTES
            );
        };
        let mut attributes = WDF_OBJECT_ATTRIBUTES {
            Size: core::mem::size_of::<WDF_OBJECT_ATTRIBUTES>() as ULONG,
            // IOCTLs compile policies, classify processes and write the registry.
            ExecutionLevel: _WDF_EXECUTION_LEVEL::WdfExecutionLevelPassive,
            SynchronizationScope:
                _WDF_SYNCHRONIZATION_SCOPE::WdfSynchronizationScopeInheritFromParent,
            ..WDF_OBJECT_ATTRIBUTES::default()
        };
        let mut device: WDFDEVICE = ptr::null_mut();
        // SAFETY: valid init, attributes and out pointer; on success the
        // framework owns the init and sets our pointer to null.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfDeviceCreate,
                &raw mut init,
                &raw mut attributes,
                &raw mut device
            )
        };
        if status < 0 {
            if !init.is_null() {
                // SAFETY: WdfDeviceCreate failed and left the init to us.
                unsafe { call_unsafe_wdf_function_binding!(WdfDeviceInitFree, init) };
            }
            return Err(status);
        }
        let created = Self { device };
        let link = unicode_string(&SYMBOLIC_LINK);
        // SAFETY: a live device; the name is copied.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(WdfDeviceCreateSymbolicLink, device, &raw const link)
        };
        if status < 0 {
            created.delete();
            return Err(status);
        }
        let mut queue = WDF_IO_QUEUE_CONFIG {
            Size: core::mem::size_of::<WDF_IO_QUEUE_CONFIG>() as ULONG,
            DispatchType: _WDF_IO_QUEUE_DISPATCH_TYPE::WdfIoQueueDispatchSequential,
            // A control device has no power states.
            PowerManaged: _WDF_TRI_STATE::WdfFalse,
            DefaultQueue: 1,
            EvtIoDeviceControl: Some(evt_io_device_control),
            ..WDF_IO_QUEUE_CONFIG::default()
        };
        let no_queue_handle: *mut WDFQUEUE = ptr::null_mut();
        // SAFETY: a live device and a filled config; no queue handle wanted.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfIoQueueCreate,
                device,
                &raw mut queue,
                WDF_NO_OBJECT_ATTRIBUTES,
                no_queue_handle
            )
        };
        if status < 0 {
            created.delete();
            return Err(status);
        }
        // The manual queues of the pended IOCTLs (get-request, wait-events).
        if let Some(state) = DriverState::global() {
            // SAFETY: a live device, being created.
            let queues = unsafe { state.ask.create_queues(device) }
                // SAFETY: as above.
                .and_then(|()| unsafe { state.events_wait.create_queue(device) });
            if let Err(status) = queues {
                created.delete();
                return Err(status);
            }
        }
        // SAFETY: a live control device, fully set up.
        unsafe { call_unsafe_wdf_function_binding!(WdfControlFinishInitializing, device) };
        Ok(created)
    }

    /// Deletes the device (and its queue and link); no IOCTL runs afterwards.
    pub fn delete(self) {
        // SAFETY: our live device, deleted once (consumes self).
        unsafe { call_unsafe_wdf_function_binding!(WdfObjectDelete, self.device.cast()) };
    }
}

/// `EvtFileCleanup` (PASSIVE_LEVEL): the last handle of a file object closed.
unsafe extern "C" fn evt_file_cleanup(file: WDFFILEOBJECT) {
    if let Some(state) = DriverState::global() {
        state.ask.file_cleanup(file);
        state.events_wait.file_cleanup(file);
    }
}

/// Completes `request` once.
fn complete(request: WDFREQUEST, status: NTSTATUS, information: usize) {
    // SAFETY: a request the queue presented to us, not yet completed.
    unsafe {
        call_unsafe_wdf_function_binding!(
            WdfRequestCompleteWithInformation,
            request,
            status,
            information as u64
        );
    }
}

/// Copies the request's input out of the system buffer.
fn copy_input(request: WDFREQUEST, input_length: usize) -> Result<Vec<u8>, NTSTATUS> {
    let mut input = Vec::new();
    if input_length == 0 {
        return Ok(input);
    }
    if input_length > MAX_INPUT {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let mut buffer: PVOID = ptr::null_mut();
    // `size_t` in the WDF headers: `usize`.
    let mut length: usize = 0;
    // SAFETY: a presented request; out pointers are locals.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfRequestRetrieveInputBuffer,
            request,
            0,
            &raw mut buffer,
            &raw mut length
        )
    };
    if status < 0 {
        return Err(status);
    }
    if buffer.is_null() || length > MAX_INPUT {
        return Err(STATUS_INVALID_PARAMETER);
    }
    // SAFETY: the framework guarantees `length` readable bytes at `buffer`
    // until the request completes; the slice ends before we write output.
    let bytes = unsafe { core::slice::from_raw_parts(buffer.cast::<u8>(), length) };
    // Fallible and without a regrow path (`extend_from_slice` keeps one: a
    // panic path in the image).
    procguard_policy::fallible::try_extend_from_slice(&mut input, bytes)
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    Ok(input)
}

/// `EvtIoDeviceControl` of the control device's queue (PASSIVE_LEVEL).
pub(crate) unsafe extern "C" fn evt_io_device_control(
    _queue: WDFQUEUE,
    request: WDFREQUEST,
    output_length: usize,
    input_length: usize,
    code: ULONG,
) {
    let Some(state) = DriverState::global() else {
        complete(request, STATUS_INVALID_DEVICE_REQUEST, 0);
        return;
    };
    let input = match copy_input(request, input_length) {
        Ok(input) => input,
        Err(status) => {
            complete(request, status, 0);
            return;
        }
    };
    // The IOCTLs that may pend: their owners complete (or queue) the request.
    match code {
        IOCTL_ASK_CONNECT | IOCTL_ASK_GET_REQUEST | IOCTL_ASK_REPLY | IOCTL_ASK_DISCONNECT => {
            state.ask.handle_ioctl(request, code, &input, output_length);
            return;
        }
        IOCTL_WAIT_EVENTS => {
            state
                .events_wait
                .handle_ioctl(request, &input, output_length);
            return;
        }
        _ => {}
    }
    let mut buffer: PVOID = ptr::null_mut();
    let mut length: usize = 0;
    if output_length > 0 {
        // SAFETY: a presented request; out pointers are locals.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestRetrieveOutputBuffer,
                request,
                0,
                &raw mut buffer,
                &raw mut length
            )
        };
        if status < 0 {
            complete(request, status, 0);
            return;
        }
    }
    let output: &mut [u8] = if buffer.is_null() || length == 0 {
        &mut []
    } else {
        // SAFETY: `length` writable bytes at `buffer` until completion; the
        // input was copied out above, so nothing else refers to them.
        unsafe { core::slice::from_raw_parts_mut(buffer.cast::<u8>(), length) }
    };
    let completion = dispatch(state, code, &input, output);
    if completion.status < 0 {
        trace::info(format_args!(
            "IOCTL {code:#010x} refused with {}",
            trace::Status(completion.status)
        ));
    }
    complete(request, completion.status, completion.information);
}
