//! The `ObRegisterCallbacks` registration and the pre-operation callbacks:
//! the only code that touches `OB_PRE_OPERATION_INFORMATION`.
//!
//! One registration, two operation entries (`PsProcessType` and
//! `PsThreadType`, create and duplicate, pre-operation only), each with its
//! own callback: the same code, compiled once per object type so the object
//! kind is a constant in each (measured: 27 instructions fewer on a stripped
//! request than one callback that tells the types apart at run time). A
//! callback runs at PASSIVE or APC level in the requester's thread, with
//! normal kernel APCs disabled: it reads the request, asks
//! `handle_decision::decide`, and writes the (never larger) access mask
//! back. It takes no lock, does not block and touches no paged memory; it
//! allocates only in the rare PASSIVE fallback `handle_decision.rs`
//! documents.

use core::ptr;
use core::sync::atomic::Ordering;

use crate::callbacks::handle_decision::{self, ObservedRequest, Requester};
use crate::control::altitude::{register_with_retries, Altitude, RetryOutcome};
use crate::driver_state::DriverState;
use crate::ffi::_OB_PREOP_CALLBACK_STATUS::OB_PREOP_SUCCESS;
use crate::ffi::{
    ntddk, PsProcessType, PsThreadType, OB_CALLBACK_REGISTRATION, OB_FLT_REGISTRATION_VERSION,
    OB_OPERATION_HANDLE_CREATE, OB_OPERATION_HANDLE_DUPLICATE, OB_OPERATION_REGISTRATION,
    OB_PREOP_CALLBACK_STATUS, OB_PRE_OPERATION_INFORMATION, PEPROCESS,
    POB_PRE_OPERATION_INFORMATION, PVOID, STATUS_FLT_INSTANCE_ALTITUDE_COLLISION,
};
use crate::platform::wide_string::unicode_string;
use crate::state::policy_state::Generation;
use crate::tracking::process_identity;
use crate::tracking::process_table::{Protection, TrackedSlot};
use procguard_policy::{ObjectKind, Operation};

/// A live registration: unregistered exactly once, by [`Registration::unregister`].
#[derive(Debug)]
pub struct Registration {
    handle: PVOID,
    /// The altitude the registration holds.
    pub altitude: Altitude,
    /// Attempts it took (1 = no collision).
    pub attempts: u32,
}

impl Registration {
    /// Registers the callbacks with `context` at `base`, retrying nearby
    /// altitudes on collision (see `altitude.rs`).
    ///
    /// # Errors
    /// The last status `ObRegisterCallbacks` returned, with the altitude tried.
    ///
    /// # Safety
    /// `context` stays valid, and is not moved, until [`Registration::unregister`]
    /// has returned.
    pub unsafe fn register(
        context: &DriverState,
        base: &Altitude,
        retries: u32,
    ) -> Result<Self, (i32, Altitude)> {
        // `PsProcessType` is already the `POBJECT_TYPE*` ObjectType wants (the
        // address of the kernel's variable, as in C).
        let operations = [
            OB_OPERATION_REGISTRATION {
                // SAFETY: reading the import slot the loader filled.
                ObjectType: unsafe { PsProcessType },
                Operations: OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE,
                PreOperation: Some(process_pre_operation),
                PostOperation: None,
            },
            OB_OPERATION_REGISTRATION {
                // SAFETY: as above.
                ObjectType: unsafe { PsThreadType },
                Operations: OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE,
                PreOperation: Some(thread_pre_operation),
                PostOperation: None,
            },
        ];
        let RetryOutcome {
            result,
            altitude,
            attempts,
        } = register_with_retries(
            base,
            retries,
            STATUS_FLT_INSTANCE_ALTITUDE_COLLISION,
            |candidate| {
                let mut operations = operations;
                let text = candidate.units();
                let mut registration = OB_CALLBACK_REGISTRATION {
                    Version: OB_FLT_REGISTRATION_VERSION as u16,
                    OperationRegistrationCount: operations.len() as u16,
                    // The kernel only reads (and copies) the altitude.
                    Altitude: unicode_string(text),
                    RegistrationContext: ptr::from_ref(context).cast_mut().cast(),
                    OperationRegistration: operations.as_mut_ptr(),
                };
                let mut handle: PVOID = ptr::null_mut();
                // SAFETY: the registration, its altitude and operation array
                // live across the call (the kernel copies them); the context
                // outlives the registration per this function's contract.
                let status =
                    unsafe { ntddk::ObRegisterCallbacks(&raw mut registration, &raw mut handle) };
                if status < 0 {
                    Err(status)
                } else {
                    Ok(handle)
                }
            },
        );
        match result {
            Ok(handle) => Ok(Self {
                handle,
                altitude,
                attempts,
            }),
            Err(status) => Err((status, altitude)),
        }
    }

    /// Unregisters. When this returns, no callback is running or will run.
    pub fn unregister(self) {
        // SAFETY: the handle came from a successful ObRegisterCallbacks and is
        // consumed here, so it is unregistered exactly once.
        unsafe { ntddk::ObUnRegisterCallbacks(self.handle) };
    }
}

/// The pre-operation callback registered for `PsProcessType`.
///
/// # Safety
/// Called by the object manager with the context given at registration (the
/// driver state) and a valid operation information block.
pub unsafe extern "C" fn process_pre_operation(
    registration_context: PVOID,
    operation_information: POB_PRE_OPERATION_INFORMATION,
) -> OB_PREOP_CALLBACK_STATUS {
    // SAFETY: as this function's contract.
    unsafe {
        pre_operation(
            ObjectKind::Process,
            registration_context,
            operation_information,
        )
    }
}

/// The pre-operation callback registered for `PsThreadType`.
///
/// # Safety
/// As [`process_pre_operation`].
pub unsafe extern "C" fn thread_pre_operation(
    registration_context: PVOID,
    operation_information: POB_PRE_OPERATION_INFORMATION,
) -> OB_PREOP_CALLBACK_STATUS {
    // SAFETY: as this function's contract.
    unsafe {
        pre_operation(
            ObjectKind::Thread,
            registration_context,
            operation_information,
        )
    }
}

/// The callback for handles to `object`s: one copy per object type (each
/// registered entry has its own callback), in which the object kind is a
/// constant the rest of the decision folds in.
///
/// # Safety
/// As [`process_pre_operation`], for the entry registered for `object`.
#[inline(always)]
unsafe fn pre_operation(
    object: ObjectKind,
    registration_context: PVOID,
    operation_information: POB_PRE_OPERATION_INFORMATION,
) -> OB_PREOP_CALLBACK_STATUS {
    // SAFETY: the context is the DriverState given at registration (a
    // reference, so never null), alive until unregistration (which waits for
    // running callbacks).
    let state = unsafe { &*registration_context.cast::<DriverState>() };
    // SAFETY: the object manager passes a valid block, ours for this call.
    let info = unsafe { &mut *operation_information };
    state.counters.seen.fetch_add(1, Ordering::Relaxed);

    // SAFETY: `Flags` covers the whole union; bit 0 is KernelHandle.
    if unsafe { info.__bindgen_anon_1.Flags } & 1 != 0 {
        // Kernel handles pass untouched unless the policy turned
        // `exempt_kernel_handles` off (the default keeps this one load): a
        // kernel component can always get a full handle another way, and
        // Windows components rely on theirs.
        if state.active.kernel_handles_exempt() {
            state
                .counters
                .skipped_kernel
                .fetch_add(1, Ordering::Relaxed);
            return OB_PREOP_SUCCESS;
        }
        filter_kernel_handle(object, state, info);
        return OB_PREOP_SUCCESS;
    }
    filter(object, state, info, false);
    OB_PREOP_SUCCESS
}

/// A kernel handle under a policy that filters them: decided like any
/// other request, with the `KernelHandle` flag set. Rare, so out of line:
/// the common path's copy of [`filter`] stays the one it was, with
/// `kernel_handle` a constant.
#[cold]
#[inline(never)]
fn filter_kernel_handle(
    object: ObjectKind,
    state: &DriverState,
    info: &mut OB_PRE_OPERATION_INFORMATION,
) {
    filter(object, state, info, true);
}

/// Looks the target up and, if a rule may protect it, decides the request
/// and clears the bits the decision removes.
#[inline(always)]
fn filter(
    object: ObjectKind,
    state: &DriverState,
    info: &mut OB_PRE_OPERATION_INFORMATION,
    kernel_handle: bool,
) {
    // The entry registered for a type is only called for that type; checked
    // anyway (two instructions) before the object is used as one.
    let target_pid = match object {
        ObjectKind::Process => {
            // SAFETY: reading the import slot the loader filled before the
            // driver ran.
            let process_type = unsafe { PsProcessType };
            // SAFETY: the slot holds the address of the kernel's object type
            // variable, initialised before any driver loaded.
            if info.ObjectType != unsafe { *process_type } {
                return;
            }
            // SAFETY: for PsProcessType, Object is the process being opened.
            process_identity::id_of(unsafe { ntddk::PsGetProcessId(info.Object.cast()) })
        }
        ObjectKind::Thread => {
            // SAFETY: as above.
            let thread_type = unsafe { PsThreadType };
            // SAFETY: as above.
            if info.ObjectType != unsafe { *thread_type } {
                return;
            }
            // SAFETY: for PsThreadType, Object is the thread being opened.
            process_identity::id_of(unsafe { ntddk::PsGetThreadProcessId(info.Object.cast()) })
        }
    };

    let Some(generation) = state.active.read() else {
        return;
    };
    let Protection::NeedsDecision(target_slot) = generation.table.protection(target_pid) else {
        // The common case: a tracked process no rule protects.
        return;
    };
    decide_request(
        state,
        &generation,
        info,
        object,
        target_pid,
        target_slot,
        kernel_handle,
    );
}

/// The rest of the callback, for a target a rule may protect: reads the
/// operation's parameters, decides, and clears the bits the decision
/// removes. Inlined into the callback: as a function of its own (a second
/// frame, its arguments spilled) it cost 33 more instructions on the
/// stripped-and-audited path, for 1 fewer on the common one
/// (`tests/emulator/measure_instructions.py`).
#[inline(always)]
fn decide_request(
    state: &DriverState,
    generation: &Generation,
    info: &mut OB_PRE_OPERATION_INFORMATION,
    object: ObjectKind,
    target_pid: u32,
    target_slot: Option<TrackedSlot<'_>>,
    kernel_handle: bool,
) {
    // SAFETY: Parameters points at the union matching Operation (the object
    // manager's own, valid for this call).
    let parameters = unsafe { &mut *info.Parameters };
    let (operation, desired_access, requester, source_process) = match info.Operation {
        OB_OPERATION_HANDLE_CREATE => {
            // SAFETY: Operation is create, so the create member is the live one.
            let create = unsafe { &mut parameters.CreateHandleInformation };
            (
                Operation::Create,
                &mut create.DesiredAccess,
                Requester::CURRENT,
                ptr::null_mut(),
            )
        }
        OB_OPERATION_HANDLE_DUPLICATE => {
            // SAFETY: Operation is duplicate, so the duplicate member is the live one.
            let duplicate = unsafe { &mut parameters.DuplicateHandleInformation };
            // The requester is the process that receives the handle: it gains the access.
            let receiver: PEPROCESS = duplicate.TargetProcess.cast();
            let source: PEPROCESS = duplicate.SourceProcess.cast();
            (
                Operation::Duplicate,
                &mut duplicate.DesiredAccess,
                Requester::receiver(receiver),
                source,
            )
        }
        _ => return,
    };
    let request = ObservedRequest {
        object,
        operation,
        object_pointer: info.Object,
        target_pid,
        target_slot,
        requester,
        source_process,
        desired_access: *desired_access,
        kernel_handle,
    };
    // Only ever clears bits: the decision is a subset of the request.
    *desired_access &= handle_decision::decide(state, generation, &request);
}
