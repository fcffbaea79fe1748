//! The registry callback and the work item that applies `Parameters\Policy`
//! after it changes (see `registry_watch.rs` for what is filtered and why).
//!
//! - `CmRegisterCallbackEx` (PASSIVE_LEVEL, Windows Vista+) at the driver's
//!   altitude, after the policy is loaded and the control device exists.
//! - The callback runs at PASSIVE_LEVEL in the thread that changed the
//!   registry. It returns `STATUS_SUCCESS` always (it never blocks or alters
//!   an operation) and only enqueues the work item (`WdfWorkItemEnqueue`,
//!   IRQL <= DISPATCH_LEVEL; an item already queued is not queued again).
//!   The key's name comes from `CmCallbackGetKeyObjectID` (Windows Vista+; the
//!   system owns the name). When it cannot tell (no pre-information, no
//!   name), it enqueues: a false match only costs a re-read.
//! - The work item (PASSIVE_LEVEL, a system worker thread, parented to the
//!   control device) reads the value again and applies it
//!   (`policy_apply::apply_from_registry`).
//! - Unload: `CmUnRegisterCallback` (waits for running callbacks: no new
//!   enqueue after it), then `WdfWorkItemFlush` (waits for a queued or
//!   running item), before anything else is torn down (PITFALLS item 10).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr;
use core::sync::atomic::{AtomicI64, Ordering};

use crate::control::altitude::Altitude;
use crate::control::policy_apply;
use crate::control::registry_watch::{
    self, REG_NT_POST_DELETE_VALUE_KEY, REG_NT_POST_SET_VALUE_KEY,
};
use crate::driver_state::DriverState;
use crate::ffi::{
    call_unsafe_wdf_function_binding, ntddk, _WDF_EXECUTION_LEVEL, _WDF_SYNCHRONIZATION_SCOPE,
    LARGE_INTEGER, NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT, PREG_DELETE_VALUE_KEY_INFORMATION,
    PREG_POST_OPERATION_INFORMATION, PREG_SET_VALUE_KEY_INFORMATION, PVOID, STATUS_SUCCESS, ULONG,
    UNICODE_STRING, WDFDEVICE, WDFWORKITEM, WDF_OBJECT_ATTRIBUTES, WDF_WORKITEM_CONFIG,
};
use crate::platform::trace;
use crate::platform::wide_string::unicode_string;

/// What the callback reads (boxed: its address is the callback's context).
struct WatchContext {
    /// `CmRegisterCallbackEx`'s cookie (0 until it returns).
    cookie: AtomicI64,
    work_item: WDFWORKITEM,
    /// The service's name (the last component of the service key path).
    service: Vec<u16>,
}

/// The live registry callback and its work item.
pub struct RegistryWatch {
    context: Box<WatchContext>,
}

impl core::fmt::Debug for RegistryWatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RegistryWatch")
            .field("cookie", &self.context.cookie.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The characters of a `UNICODE_STRING`, or `None` when there is none.
///
/// # Safety
/// `string` is null or points to a valid `UNICODE_STRING` that outlives `'a`.
unsafe fn units<'a>(string: *const UNICODE_STRING) -> Option<&'a [u16]> {
    // SAFETY: per the contract.
    let string = unsafe { string.as_ref() }?;
    if string.Buffer.is_null() {
        return (string.Length == 0).then_some(&[][..]);
    }
    // SAFETY: Length bytes of Buffer are the string's characters.
    Some(unsafe { core::slice::from_raw_parts(string.Buffer, usize::from(string.Length / 2)) })
}

/// Whether the notification may be a change of `Parameters\Policy`.
///
/// # Safety
/// Called from [`registry_callback`] with its arguments.
unsafe fn may_change_policy(watch: &WatchContext, class: i32, argument2: PVOID) -> bool {
    // SAFETY: a post-notification's Argument2 is its REG_POST_OPERATION_INFORMATION.
    let Some(post) =
        (unsafe { PREG_POST_OPERATION_INFORMATION::cast_const(argument2.cast()).as_ref() })
    else {
        return false;
    };
    if post.Status < 0 {
        return false;
    }
    let value_name = if class == REG_NT_POST_SET_VALUE_KEY {
        let pre: PREG_SET_VALUE_KEY_INFORMATION = post.PreInformation.cast();
        // SAFETY: the pre-information of a set-value is this structure.
        unsafe { pre.as_ref() }.map(|pre| pre.ValueName)
    } else {
        let pre: PREG_DELETE_VALUE_KEY_INFORMATION = post.PreInformation.cast();
        // SAFETY: the pre-information of a delete-value is this structure.
        unsafe { pre.as_ref() }.map(|pre| pre.ValueName)
    };
    // SAFETY: the value name the registry captured, valid for the call.
    if let Some(name) = value_name.and_then(|name| unsafe { units(name) }) {
        if !registry_watch::is_policy_value(name) {
            return false;
        }
    }
    let mut cookie = LARGE_INTEGER {
        QuadPart: watch.cookie.load(Ordering::Acquire),
    };
    let mut key_name: PCUNICODE_STRING = ptr::null();
    // SAFETY: our cookie, the key object of this notification, an out
    // pointer for the name (owned by the system; only read here).
    let status = unsafe {
        ntddk::CmCallbackGetKeyObjectID(
            &raw mut cookie,
            post.Object,
            ptr::null_mut(),
            &raw mut key_name,
        )
    };
    if status < 0 {
        return true;
    }
    // SAFETY: the system's name for the key, valid during the callback.
    unsafe { units(key_name) }
        .is_none_or(|name| registry_watch::is_parameters_key(name, &watch.service))
}

/// `EX_CALLBACK_FUNCTION`: see the module documentation.
///
/// # Safety
/// Called by the configuration manager with the context given at registration.
unsafe extern "C" fn registry_callback(
    context: PVOID,
    argument1: PVOID,
    argument2: PVOID,
) -> NTSTATUS {
    // Argument1 is the REG_NOTIFY_CLASS, passed as a pointer-sized value.
    let class = argument1 as usize as i32;
    if class != REG_NT_POST_SET_VALUE_KEY && class != REG_NT_POST_DELETE_VALUE_KEY {
        return STATUS_SUCCESS;
    }
    // SAFETY: the boxed context lives until after CmUnRegisterCallback.
    let Some(watch) = (unsafe { context.cast::<WatchContext>().as_ref() }) else {
        return STATUS_SUCCESS;
    };
    // SAFETY: this callback's arguments.
    if unsafe { may_change_policy(watch, class, argument2) } {
        // SAFETY: the work item lives until after the flush at unload.
        unsafe { call_unsafe_wdf_function_binding!(WdfWorkItemEnqueue, watch.work_item) };
    }
    STATUS_SUCCESS
}

/// `EVT_WDF_WORKITEM`: re-reads and applies `Parameters\Policy`.
///
/// # Safety
/// Called by the framework at PASSIVE_LEVEL.
unsafe extern "C" fn evt_work_item(_work_item: WDFWORKITEM) {
    if let Some(state) = DriverState::global() {
        // Counted, recorded and logged by policy_apply.
        let _ = policy_apply::apply_from_registry(state);
    }
}

impl RegistryWatch {
    /// Creates the work item (parent: the control device) and registers the
    /// registry callback at `altitude`. PASSIVE_LEVEL.
    ///
    /// # Errors
    /// The status of the failed call (nothing is left registered).
    ///
    /// # Safety
    /// `driver` is `DriverEntry`'s driver object and `device` the control
    /// device; the driver state is published ([`DriverState::global`]).
    pub unsafe fn start(
        driver: PDRIVER_OBJECT,
        device: WDFDEVICE,
        altitude: &Altitude,
        service_key_path: &[u16],
    ) -> Result<Self, NTSTATUS> {
        let service = registry_watch::service_name(service_key_path);
        let mut name = Vec::new();
        name.try_reserve_exact(service.len())
            .map_err(|_| crate::ffi::STATUS_INSUFFICIENT_RESOURCES)?;
        name.extend_from_slice(service);
        let mut config = WDF_WORKITEM_CONFIG {
            Size: core::mem::size_of::<WDF_WORKITEM_CONFIG>() as ULONG,
            EvtWorkItemFunc: Some(evt_work_item),
            // Serialised by policy_apply (the registry lock), not by WDF.
            AutomaticSerialization: 0,
        };
        let mut attributes = WDF_OBJECT_ATTRIBUTES {
            Size: core::mem::size_of::<WDF_OBJECT_ATTRIBUTES>() as ULONG,
            ExecutionLevel: _WDF_EXECUTION_LEVEL::WdfExecutionLevelInheritFromParent,
            SynchronizationScope:
                _WDF_SYNCHRONIZATION_SCOPE::WdfSynchronizationScopeInheritFromParent,
            ParentObject: device.cast(),
            ..WDF_OBJECT_ATTRIBUTES::default()
        };
        let mut work_item: WDFWORKITEM = ptr::null_mut();
        // SAFETY: config, attributes and the out pointer live across the call.
        let status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfWorkItemCreate,
                &raw mut config,
                &raw mut attributes,
                &raw mut work_item,
            )
        };
        if status < 0 {
            return Err(status);
        }
        let context = crate::driver_state::try_box(WatchContext {
            cookie: AtomicI64::new(0),
            work_item,
            service: name,
        })
        .ok_or(crate::ffi::STATUS_INSUFFICIENT_RESOURCES)?;
        let altitude_string = unicode_string(altitude.units());
        let mut cookie = LARGE_INTEGER { QuadPart: 0 };
        // SAFETY: the callback and its boxed context stay valid until
        // CmUnRegisterCallback; the altitude string is copied by the call.
        let status = unsafe {
            ntddk::CmRegisterCallbackEx(
                Some(registry_callback),
                &raw const altitude_string,
                driver.cast(),
                ptr::from_ref::<WatchContext>(&context).cast_mut().cast(),
                &raw mut cookie,
                ptr::null_mut(),
            )
        };
        if status < 0 {
            // The work item goes with its parent, the control device.
            return Err(status);
        }
        // SAFETY: CmRegisterCallbackEx wrote the cookie.
        context
            .cookie
            .store(unsafe { cookie.QuadPart }, Ordering::Release);
        Ok(Self { context })
    }

    /// Unregisters the callback (no enqueue after it returns), then waits for
    /// the work item (queued or running) to finish. PASSIVE_LEVEL.
    pub fn stop(self) {
        let cookie = LARGE_INTEGER {
            QuadPart: self.context.cookie.load(Ordering::Acquire),
        };
        // SAFETY: the cookie of our registration.
        let status = unsafe { ntddk::CmUnRegisterCallback(cookie) };
        // SAFETY: the work item, alive until its parent device is deleted.
        unsafe { call_unsafe_wdf_function_binding!(WdfWorkItemFlush, self.context.work_item) };
        if status < 0 {
            trace::error(format_args!(
                "CmUnRegisterCallback failed with {}; its context is leaked",
                trace::Status(status)
            ));
            // The callback may still be called: its context must stay.
            core::mem::forget(self);
        }
    }
}
