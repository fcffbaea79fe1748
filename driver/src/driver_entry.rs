//! `DriverEntry` and unload: the driver's lifetime.
//!
//! Load, in order (each failure undoes what came before; WDF deletes its
//! driver object itself when `DriverEntry` fails):
//! 1. read the `Parameters` key;
//! 2. create the non-PnP WDF driver object with an unload callback;
//! 3. allocate the driver state (audit ring, counters, writer mutex) and make
//!    it reachable for the process notify routine;
//! 4. compile the policy from the registry (a corrupt one is reported and
//!    replaced by the empty policy: the driver loads with no rules);
//! 5. as the writer: register the process notify routine, then enumerate and
//!    classify the running processes and publish the first generation —
//!    processes started meanwhile wait for the writer mutex and are added
//!    after, so none is missed;
//! 6. register the object callbacks (altitude retries on collision);
//! 7. create the control device `\Device\ProcGuard` and its IOCTL queue.
//!
//! Unload: the ask broker first (new asks get their fallback at once, every
//! callback waiting for a handler's answer is released with its fallback,
//! every pended ask IOCTL is completed: nothing is left for the object
//! callbacks' unregistration to wait on, and the broker's queues are done
//! before their device goes), then the control device (no more IOCTLs),
//! then the object callbacks, then the notify routine (each unregistration
//! waits for running calls), then the policy generation and the state.

use alloc::boxed::Box;
use alloc::vec::Vec;

use procguard_policy::CompiledPolicy;

use crate::callbacks::object_callbacks::Registration;
use crate::callbacks::process_tracking;
use crate::control::altitude::Altitude;
use crate::control::control_device::ControlDevice;
use crate::control::parameters::{self, read_settings, Settings};
use crate::control::policy_apply;
use crate::control::registry_callback::RegistryWatch;
use crate::driver_state::DriverState;
use crate::ffi::{
    call_unsafe_wdf_function_binding, _WDF_DRIVER_INIT_FLAGS, NTSTATUS, PCUNICODE_STRING,
    PDRIVER_OBJECT, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, ULONG,
    WDFDRIVER, WDF_DRIVER_CONFIG, WDF_NO_OBJECT_ATTRIBUTES,
};
use crate::platform::trace;

/// Compiles the registry's policy; a corrupt one becomes the empty policy
/// (`Err` with the refusal's status, for the boot policy record).
fn compile_policy(settings: &mut Settings) -> (CompiledPolicy, Vec<u8>, Result<(), NTSTATUS>) {
    if let Some(problem) = settings.problems[2] {
        return (
            CompiledPolicy::empty(),
            Vec::new(),
            Err(parameters::problem_status(problem)),
        );
    }
    let blob = core::mem::take(&mut settings.policy_blob);
    if blob.is_empty() {
        return (CompiledPolicy::empty(), blob, Ok(()));
    }
    match CompiledPolicy::from_blob(&blob) {
        Ok(policy) => (policy, blob, Ok(())),
        Err(error) => {
            trace::error(format_args!(
                "Parameters\\Policy: {error}; starting with no rules"
            ));
            let status = match error {
                procguard_policy::DecodeError::OutOfMemory => STATUS_INSUFFICIENT_RESOURCES,
                _ => STATUS_INVALID_PARAMETER,
            };
            (CompiledPolicy::empty(), Vec::new(), Err(status))
        }
    }
}

/// Stops the ask broker: before the control device is deleted and the
/// object callbacks are unregistered (see the module documentation).
fn shut_down_ask(state: &DriverState) {
    #[cfg(test)]
    unload_order::note_ask_shutdown();
    state.ask.shutdown();
}

/// Undoes steps 3–5 (state allocated, maybe published, notify maybe registered).
fn tear_down(state: Box<DriverState>, notify_registered: bool) {
    if notify_registered {
        process_tracking::stop();
    }
    {
        let mut writer = state.writer();
        drop(state.active.take(&mut writer));
    }
    DriverState::unpublish_global();
    drop(state);
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
    // First, at PASSIVE_LEVEL: pick the pool routine before the first allocation.
    let pool_routine = crate::platform::pool::resolve_allocator();
    trace::info(format_args!("pool allocations use {pool_routine:?}"));
    // SAFETY: the registry path DriverEntry received.
    let mut settings = unsafe { read_settings(registry_path) };

    let mut config = WDF_DRIVER_CONFIG {
        Size: core::mem::size_of::<WDF_DRIVER_CONFIG>() as ULONG,
        EvtDriverUnload: Some(evt_driver_unload),
        DriverInitFlags: _WDF_DRIVER_INIT_FLAGS::WdfDriverInitNonPnpDriver as ULONG,
        ..WDF_DRIVER_CONFIG::default()
    };
    let mut wdf_driver: WDFDRIVER = core::ptr::null_mut();
    // SAFETY: driver object and registry path from the system; no attributes;
    // the config and the handle out-pointer live across the call.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDriverCreate,
            driver,
            registry_path,
            WDF_NO_OBJECT_ATTRIBUTES,
            &raw mut config,
            &raw mut wdf_driver,
        )
    };
    if status < 0 {
        trace::error(format_args!(
            "WdfDriverCreate failed with {}",
            trace::Status(status)
        ));
        return status;
    }

    // SAFETY: DriverEntry's registry path is a valid UNICODE_STRING.
    let service_key_path = unsafe { registry_path.as_ref() }
        .filter(|path| !path.Buffer.is_null())
        // SAFETY: Length bytes of Buffer are valid characters.
        .map(|path| unsafe {
            core::slice::from_raw_parts(path.Buffer, usize::from(path.Length / 2))
        })
        .unwrap_or_default();
    let Some(state) = DriverState::new(settings.audit_records as usize, service_key_path) else {
        trace::error(format_args!("no memory for the driver state"));
        return STATUS_INSUFFICIENT_RESOURCES;
    };
    DriverState::publish_global(&state);

    let (policy, blob, boot_result) = compile_policy(&mut settings);
    let rules = policy.rule_count();
    {
        let mut writer = state.writer();
        if let Err(status) = process_tracking::start() {
            trace::error(format_args!(
                "PsSetCreateProcessNotifyRoutineEx failed with {}",
                trace::Status(status)
            ));
            drop(writer);
            tear_down(state, false);
            return status;
        }
        match state.install_policy(&mut writer, policy, blob) {
            Ok(tracked) => {
                trace::info(format_args!(
                    "policy of {rules} rule(s) in force; {tracked} running process(es) classified"
                ));
                drop(writer);
                policy_apply::record_boot(&state, boot_result);
            }
            Err(error) => {
                trace::error(format_args!("no memory to install the policy ({error:?})"));
                drop(writer);
                tear_down(state, true);
                return STATUS_INSUFFICIENT_RESOURCES;
            }
        }
    }

    // SAFETY: the state is boxed (fixed address) and freed only after
    // unregistration (below on failure, in evt_driver_unload otherwise).
    let registration =
        unsafe { Registration::register(&state, &settings.altitude, settings.altitude_retries) };
    match registration {
        Ok(registration) => {
            trace::info(format_args!(
                "object callbacks registered at altitude {} after {} attempt(s)",
                registration.altitude, registration.attempts
            ));
            let mut load_info = state.load_info.lock();
            load_info.altitude = Some(registration.altitude);
            load_info.registration = Some(registration);
            load_info.notify_registered = true;
        }
        Err((status, altitude)) => {
            trace::error(format_args!(
                "ObRegisterCallbacks failed with {} (last altitude tried {altitude})",
                trace::Status(status)
            ));
            tear_down(state, true);
            return status;
        }
    }
    // SAFETY: the handle WdfDriverCreate returned above.
    match unsafe { ControlDevice::create(wdf_driver) } {
        Ok(device) => {
            let handle = device.handle();
            let mut load_info = state.load_info.lock();
            load_info.control_device = Some(device);
            let altitude = load_info
                .altitude
                .unwrap_or_else(Altitude::default_altitude);
            // SAFETY: DriverEntry's driver object, the control device just
            // created, the published state.
            let watch =
                unsafe { RegistryWatch::start(driver, handle, &altitude, &state.service_key_path) };
            match watch {
                Ok(watch) => load_info.registry_watch = Some(watch),
                Err(status) => {
                    // Not fatal: the policy still changes through the IOCTL
                    // and at the next start.
                    trace::error(format_args!(
                        "registering the registry callback failed with {}; Parameters\\Policy changes apply at the next start",
                        trace::Status(status)
                    ));
                    state.note_error(status);
                }
            }
        }
        Err(status) => {
            trace::error(format_args!(
                "creating the control device failed with {}",
                trace::Status(status)
            ));
            // The callbacks ran already and may have reached the broker
            // (no handler can have connected: the fallback applied): its
            // shutdown comes before their unregistration, as at unload.
            shut_down_ask(&state);
            let registration = state.load_info.lock().registration.take();
            if let Some(registration) = registration {
                registration.unregister();
            }
            tear_down(state, true);
            return status;
        }
    }
    // The state now lives until unload (reached through the global pointer).
    let _ = Box::into_raw(state);
    STATUS_SUCCESS
}

/// `EvtDriverUnload`: unregister, then free.
///
/// # Safety
/// Called once by the framework at unload, after a successful `DriverEntry`.
pub unsafe extern "C" fn evt_driver_unload(_driver: WDFDRIVER) {
    let Some(state) = DriverState::global() else {
        return;
    };
    // First: no registry callback, no work item queued or running.
    let watch = state.load_info.lock().registry_watch.take();
    if let Some(watch) = watch {
        watch.stop();
    }
    let (device, registration, notify_registered) = {
        let mut load_info = state.load_info.lock();
        (
            load_info.control_device.take(),
            load_info.registration.take(),
            core::mem::take(&mut load_info.notify_registered),
        )
    };
    // Waiters released and pended IOCTLs completed (new asks get their
    // fallback from here on), then no more IOCTLs, then no more callbacks,
    // then no more notifications.
    shut_down_ask(state);
    state.events_wait.shutdown();
    if let Some(device) = device {
        device.delete();
    }
    if let Some(registration) = registration {
        registration.unregister();
    }
    let raw = core::ptr::from_ref(state).cast_mut();
    // SAFETY: the pointer came from Box::into_raw in driver_entry; the object
    // callbacks are unregistered (above) and the notify routine is removed in
    // tear_down before anything is freed, and unload runs once.
    let state = unsafe { Box::from_raw(raw) };
    tear_down(state, notify_registered);
    trace::info(format_args!("unloaded"));
}

/// Host tests: what was already torn down when the ask broker was shut down.
#[cfg(test)]
pub(crate) mod unload_order {
    use core::cell::Cell;

    use crate::ffi::ntddk::with_host;

    /// (object-callback registrations removed, control devices deleted).
    pub type Seen = (usize, usize);

    std::thread_local! {
        static AT_ASK_SHUTDOWN: Cell<Option<Seen>> = const { Cell::new(None) };
    }

    pub(super) fn note_ask_shutdown() {
        let seen = with_host(|host| (host.unregistered.len(), host.control.deleted.len()));
        AT_ASK_SHUTDOWN.with(|at| at.set(Some(seen)));
    }

    /// What [`note_ask_shutdown`] saw last on this thread (and forgets it).
    pub fn at_ask_shutdown() -> Option<Seen> {
        AT_ASK_SHUTDOWN.with(Cell::take)
    }
}
