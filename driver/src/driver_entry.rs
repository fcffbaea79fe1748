//! `DriverEntry` and unload: the driver's lifetime.
//!
//! Load: read the `Parameters` key, create the (non-PnP) WDF driver object
//! with an unload callback, allocate the callback context, register the
//! object callbacks. Each step that fails undoes the ones before it (WDF
//! deletes its driver object itself when `DriverEntry` fails).
//!
//! Unload: unregister the callbacks first — `ObUnRegisterCallbacks` returns
//! only when no callback is running — then free what they used.

use alloc::boxed::Box;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::ffi::{
    call_unsafe_wdf_function_binding, _WDF_DRIVER_INIT_FLAGS, NTSTATUS, PCUNICODE_STRING,
    PDRIVER_OBJECT, STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS, ULONG, WDFDRIVER,
    WDF_DRIVER_CONFIG, WDF_NO_HANDLE, WDF_NO_OBJECT_ATTRIBUTES,
};
use crate::object_callbacks::{CallbackContext, Counters, Registration};
use crate::parameters::{read_settings, Settings};
use crate::trace;

/// Everything the driver owns between a successful load and unload.
pub struct DriverState {
    /// Read by the callbacks; must not move while registered (it is boxed).
    pub context: CallbackContext,
    /// `None` only while being torn down.
    pub registration: Option<Registration>,
    /// What the registry said, including the problems found.
    pub settings: Settings,
}

/// The loaded driver's state (null when not loaded).
static DRIVER_STATE: AtomicPtr<DriverState> = AtomicPtr::new(ptr::null_mut());

/// Allocates without aborting on failure (`Box::new` would bugcheck).
fn try_box<T>(value: T) -> Option<Box<T>> {
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

/// The driver's entry point, called by the framework's entry stub
/// (`FxDriverEntry`) after binding to KMDF.
///
/// # Safety
/// Called once by the system with a valid driver object and registry path.
#[cfg_attr(target_os = "windows", export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: the registry path DriverEntry received.
    let mut settings = unsafe { read_settings(registry_path) };
    // The policy moves into the callback context (no copy that could fail).
    let policy = core::mem::take(&mut settings.policy);

    let mut config = WDF_DRIVER_CONFIG {
        Size: core::mem::size_of::<WDF_DRIVER_CONFIG>() as ULONG,
        EvtDriverUnload: Some(evt_driver_unload),
        DriverInitFlags: _WDF_DRIVER_INIT_FLAGS::WdfDriverInitNonPnpDriver as ULONG,
        ..WDF_DRIVER_CONFIG::default()
    };
    // SAFETY: driver object and registry path from the system; no attributes;
    // the config lives across the call; no driver handle wanted.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDriverCreate,
            driver,
            registry_path,
            WDF_NO_OBJECT_ATTRIBUTES,
            &raw mut config,
            WDF_NO_HANDLE.cast::<WDFDRIVER>(),
        )
    };
    if status < 0 {
        trace::error(format_args!(
            "WdfDriverCreate failed with {}",
            trace::Status(status)
        ));
        return status;
    }

    let Some(mut state) = try_box(DriverState {
        context: CallbackContext {
            policy,
            counters: Counters::default(),
        },
        registration: None,
        settings,
    }) else {
        trace::error(format_args!("no memory for the driver state"));
        return STATUS_INSUFFICIENT_RESOURCES;
    };

    // SAFETY: the context lives in the boxed state, which is freed only after
    // unregistration (below on failure, in evt_driver_unload otherwise).
    let registration = unsafe {
        Registration::register(
            &state.context,
            &state.settings.altitude,
            state.settings.altitude_retries,
        )
    };
    match registration {
        Ok(registration) => {
            trace::info(format_args!(
                "object callbacks registered at altitude {} after {} attempt(s); {} protected process(es)",
                registration.altitude,
                registration.attempts,
                state.context.policy.len()
            ));
            state.registration = Some(registration);
        }
        Err((status, altitude)) => {
            trace::error(format_args!(
                "ObRegisterCallbacks failed with {} (last altitude tried {altitude})",
                trace::Status(status)
            ));
            return status;
        }
    }

    DRIVER_STATE.store(Box::into_raw(state), Ordering::Release);
    STATUS_SUCCESS
}

/// `EvtDriverUnload`: unregister, then free.
///
/// # Safety
/// Called once by the framework at unload, after a successful `DriverEntry`.
pub unsafe extern "C" fn evt_driver_unload(_driver: WDFDRIVER) {
    let state = DRIVER_STATE.swap(ptr::null_mut(), Ordering::AcqRel);
    if state.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in driver_entry and was
    // taken out of DRIVER_STATE exactly once (the swap above).
    let mut state = unsafe { Box::from_raw(state) };
    if let Some(registration) = state.registration.take() {
        registration.unregister();
    }
    trace::info(format_args!("unloaded"));
    drop(state);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{reset_host, with_host};
    use crate::ffi::{DRIVER_OBJECT, STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, UNICODE_STRING};
    use std::sync::Mutex;

    /// DRIVER_STATE is process-wide; tests that load the driver take turns.
    static LOAD_LOCK: Mutex<()> = Mutex::new(());

    fn load() -> NTSTATUS {
        let mut path: Vec<u16> =
            "\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet\\Services\\procguard"
                .encode_utf16()
                .collect();
        let registry_path = UNICODE_STRING {
            Length: (path.len() * 2) as u16,
            MaximumLength: (path.len() * 2) as u16,
            Buffer: path.as_mut_ptr(),
        };
        // SAFETY: zeroed DRIVER_OBJECT is a valid value for the doubles.
        let mut driver: DRIVER_OBJECT = unsafe { core::mem::zeroed() };
        // SAFETY: valid object and path.
        unsafe { driver_entry(&raw mut driver, &raw const registry_path) }
    }

    #[test]
    fn load_then_unload_registers_once_unregisters_once_and_frees_everything() {
        let _turn = LOAD_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reset_host();
        assert_eq!(load(), STATUS_SUCCESS);
        let config = with_host(|host| host.wdf_driver_config).expect("WdfDriverCreate called");
        assert_eq!(
            config.DriverInitFlags,
            _WDF_DRIVER_INIT_FLAGS::WdfDriverInitNonPnpDriver as u32
        );
        assert!(config.EvtDriverUnload.is_some());
        assert_eq!(with_host(|host| host.registrations.len()), 1);
        // SAFETY: the framework calls this once after a successful load.
        unsafe { evt_driver_unload(ptr::null_mut()) };
        assert_eq!(with_host(|host| host.unregistered.clone()), [0xC0B0_0001]);
        // A second unload does nothing (no double unregister).
        // SAFETY: as above; the state is already gone.
        unsafe { evt_driver_unload(ptr::null_mut()) };
        assert_eq!(with_host(|host| host.unregistered.len()), 1);
        assert!(DRIVER_STATE.load(Ordering::Acquire).is_null());
    }

    #[test]
    fn a_failed_registration_fails_the_load_and_leaves_nothing_registered() {
        let _turn = LOAD_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reset_host();
        with_host(|host| {
            host.register_results
                .extend([crate::ffi::STATUS_ACCESS_DENIED])
        });
        assert_eq!(load(), crate::ffi::STATUS_ACCESS_DENIED);
        assert!(DRIVER_STATE.load(Ordering::Acquire).is_null());
        assert!(with_host(|host| host.unregistered.is_empty()));
        let trace = with_host(|host| host.trace.clone());
        assert!(
            trace
                .iter()
                .any(|line| line.contains("ObRegisterCallbacks failed with 0xC0000022")),
            "{trace:?}"
        );
    }

    #[test]
    fn every_collision_exhausts_the_retries_then_fails() {
        let _turn = LOAD_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reset_host();
        with_host(|host| {
            host.register_results
                .extend([STATUS_FLT_INSTANCE_ALTITUDE_COLLISION; 20])
        });
        assert_eq!(load(), STATUS_FLT_INSTANCE_ALTITUDE_COLLISION);
        assert_eq!(
            with_host(|host| host.registrations.len()),
            1 + crate::altitude::DEFAULT_RETRIES as usize
        );
        assert!(DRIVER_STATE.load(Ordering::Acquire).is_null());
    }

    #[test]
    fn a_failed_wdf_driver_create_stops_before_registering() {
        let _turn = LOAD_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reset_host();
        with_host(|host| host.wdf_driver_create_result = crate::ffi::STATUS_UNSUCCESSFUL);
        assert_eq!(load(), crate::ffi::STATUS_UNSUCCESSFUL);
        assert!(with_host(|host| host.registrations.is_empty()));
    }
}
