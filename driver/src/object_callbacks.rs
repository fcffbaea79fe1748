//! The `ObRegisterCallbacks` registration and the pre-operation callback: the
//! only code that touches `OB_PRE_OPERATION_INFORMATION`.
//!
//! One registration, two operation entries (`PsProcessType` and
//! `PsThreadType`, create and duplicate, pre-operation only). The callback
//! runs at PASSIVE or APC level in the requester's thread, with normal kernel
//! APCs disabled: it reads the request, asks `handle_request::decide`, and
//! writes the (never larger) access mask back. It does not allocate, block or
//! touch paged memory.

use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::altitude::{register_with_retries, Altitude, RetryOutcome};
use crate::ffi::{
    ntddk, OB_CALLBACK_REGISTRATION, OB_FLT_REGISTRATION_VERSION, OB_OPERATION_HANDLE_CREATE,
    OB_OPERATION_HANDLE_DUPLICATE, OB_OPERATION_REGISTRATION, OB_PREOP_CALLBACK_STATUS,
    OB_PREOP_SUCCESS, PEPROCESS, POB_PRE_OPERATION_INFORMATION, PVOID,
    STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, UNICODE_STRING,
};
use crate::handle_request::{decide, HandleRequest, Operation, Verdict};
use crate::pid_table::{ObjectKind, PidTable};

/// Request totals, updated with relaxed atomics (counters, not locks).
#[derive(Debug, Default)]
pub struct Counters {
    /// Pre-operation calls seen.
    pub seen: AtomicU64,
    /// Requests whose access was reduced.
    pub modified: AtomicU64,
    /// Kernel-handle requests passed untouched.
    pub skipped_kernel: AtomicU64,
    /// Self-opens passed untouched.
    pub skipped_self: AtomicU64,
}

/// What the callback reads through its registration context.
#[derive(Debug)]
pub struct CallbackContext {
    /// The policy in force.
    pub policy: PidTable,
    /// Totals.
    pub counters: Counters,
}

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
        context: &CallbackContext,
        base: &Altitude,
        retries: u32,
    ) -> Result<Self, (i32, Altitude)> {
        let operations = [
            OB_OPERATION_REGISTRATION {
                ObjectType: &raw mut ntddk::PsProcessType,
                Operations: OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE,
                PreOperation: Some(pre_operation),
                PostOperation: None,
            },
            OB_OPERATION_REGISTRATION {
                ObjectType: &raw mut ntddk::PsThreadType,
                Operations: OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE,
                PreOperation: Some(pre_operation),
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
                    Altitude: UNICODE_STRING {
                        Length: (text.len() * 2) as u16,
                        MaximumLength: (text.len() * 2) as u16,
                        // The kernel only reads the altitude.
                        Buffer: text.as_ptr().cast_mut(),
                    },
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

fn handle_to_pid(handle: PVOID) -> usize {
    handle as usize
}

/// The pre-operation callback for process and thread handles.
///
/// # Safety
/// Called by the object manager with the context given at registration and a
/// valid operation information block.
pub unsafe extern "C" fn pre_operation(
    registration_context: PVOID,
    operation_information: POB_PRE_OPERATION_INFORMATION,
) -> OB_PREOP_CALLBACK_STATUS {
    // SAFETY: the context is the CallbackContext given at registration, alive
    // until unregistration (which waits for running callbacks).
    let Some(context) = (unsafe { registration_context.cast::<CallbackContext>().as_ref() }) else {
        return OB_PREOP_SUCCESS;
    };
    // SAFETY: the object manager passes a valid, exclusively ours block.
    let Some(info) = (unsafe { operation_information.as_mut() }) else {
        return OB_PREOP_SUCCESS;
    };
    context.counters.seen.fetch_add(1, Ordering::Relaxed);

    // SAFETY: `Flags` covers the whole union; bit 0 is KernelHandle.
    let kernel_handle = unsafe { info.__bindgen_anon_1.Flags } & 1 != 0;
    if kernel_handle {
        context
            .counters
            .skipped_kernel
            .fetch_add(1, Ordering::Relaxed);
        return OB_PREOP_SUCCESS;
    }

    // SAFETY: reading the kernel's object type variable (a plain load of data
    // the kernel initialised before any driver loaded).
    let process_type = unsafe { ntddk::PsProcessType };
    // SAFETY: as above.
    let thread_type = unsafe { ntddk::PsThreadType };
    let (object, target_pid) = if info.ObjectType == process_type {
        // SAFETY: for PsProcessType, Object is the process being opened.
        (
            ObjectKind::Process,
            handle_to_pid(unsafe { ntddk::PsGetProcessId(info.Object.cast()) }),
        )
    } else if info.ObjectType == thread_type {
        // SAFETY: for PsThreadType, Object is the thread being opened.
        (
            ObjectKind::Thread,
            handle_to_pid(unsafe {
                ntddk::PsGetThreadProcessId(info.Object.cast::<crate::ffi::_KTHREAD>())
            }),
        )
    } else {
        return OB_PREOP_SUCCESS;
    };

    // SAFETY: Parameters points at the union matching Operation.
    let Some(parameters) = (unsafe { info.Parameters.as_mut() }) else {
        return OB_PREOP_SUCCESS;
    };
    let (operation, desired_access, requester_pid) = match info.Operation {
        OB_OPERATION_HANDLE_CREATE => {
            // SAFETY: Operation is create, so the create member is the live one.
            let create = unsafe { &mut parameters.CreateHandleInformation };
            // SAFETY: plain call; returns the current process id.
            let current = unsafe { ntddk::PsGetCurrentProcessId() };
            (
                Operation::Create,
                &mut create.DesiredAccess,
                handle_to_pid(current),
            )
        }
        OB_OPERATION_HANDLE_DUPLICATE => {
            // SAFETY: Operation is duplicate, so the duplicate member is the live one.
            let duplicate = unsafe { &mut parameters.DuplicateHandleInformation };
            let receiver: PEPROCESS = duplicate.TargetProcess.cast();
            // SAFETY: TargetProcess is the process receiving the handle.
            let receiver_pid = unsafe { ntddk::PsGetProcessId(receiver) };
            (
                Operation::Duplicate,
                &mut duplicate.DesiredAccess,
                handle_to_pid(receiver_pid),
            )
        }
        _ => return OB_PREOP_SUCCESS,
    };

    let request = HandleRequest {
        object,
        operation,
        kernel_handle,
        target_pid,
        requester_pid,
        desired_access: *desired_access,
    };
    match decide(&context.policy, &request) {
        Verdict::SkipSelf => {
            context
                .counters
                .skipped_self
                .fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Strip { access } => {
            // Only ever clears bits: `access` is a subset of the request.
            *desired_access &= access;
            context.counters.modified.fetch_add(1, Ordering::Relaxed);
        }
        Verdict::SkipKernelHandle | Verdict::Allow => {}
    }
    OB_PREOP_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{
        fake_process, fake_thread, reset_host, with_host, FAKE_PROCESS_TYPE, FAKE_THREAD_TYPE,
    };
    use crate::ffi::{
        _OB_PRE_OPERATION_INFORMATION__bindgen_ty_1, OB_OPERATION,
        OB_PRE_CREATE_HANDLE_INFORMATION, OB_PRE_DUPLICATE_HANDLE_INFORMATION,
        OB_PRE_OPERATION_INFORMATION, OB_PRE_OPERATION_PARAMETERS, POBJECT_TYPE,
    };
    use crate::pid_table::PidRule;

    const PROTECTED: u32 = 500;
    const OTHER: u32 = 600;

    fn context() -> CallbackContext {
        CallbackContext {
            policy: PidTable::from_rules(vec![PidRule {
                pid: PROTECTED,
                process_strip: 0x0801,
                thread_strip: 0x0002,
            }]),
            counters: Counters::default(),
        }
    }

    fn call(
        context: &CallbackContext,
        operation: OB_OPERATION,
        flags: u32,
        object_type: usize,
        object: PVOID,
        mut parameters: OB_PRE_OPERATION_PARAMETERS,
    ) -> u32 {
        let mut info = OB_PRE_OPERATION_INFORMATION {
            Operation: operation,
            __bindgen_anon_1: _OB_PRE_OPERATION_INFORMATION__bindgen_ty_1 { Flags: flags },
            Object: object,
            ObjectType: object_type as POBJECT_TYPE,
            CallContext: ptr::null_mut(),
            Parameters: &raw mut parameters,
        };
        // SAFETY: valid context and block, as the object manager would pass.
        let status =
            unsafe { pre_operation(ptr::from_ref(context).cast_mut().cast(), &raw mut info) };
        assert_eq!(status, OB_PREOP_SUCCESS);
        // SAFETY: DesiredAccess is the first field of both members.
        unsafe { parameters.CreateHandleInformation.DesiredAccess }
    }

    fn create(access: u32) -> OB_PRE_OPERATION_PARAMETERS {
        OB_PRE_OPERATION_PARAMETERS {
            CreateHandleInformation: OB_PRE_CREATE_HANDLE_INFORMATION {
                DesiredAccess: access,
                OriginalDesiredAccess: access,
            },
        }
    }

    fn duplicate(access: u32, source: u32, receiver: u32) -> OB_PRE_OPERATION_PARAMETERS {
        OB_PRE_OPERATION_PARAMETERS {
            DuplicateHandleInformation: OB_PRE_DUPLICATE_HANDLE_INFORMATION {
                DesiredAccess: access,
                OriginalDesiredAccess: access,
                SourceProcess: fake_process(source).cast(),
                TargetProcess: fake_process(receiver).cast(),
            },
        }
    }

    #[test]
    fn create_of_a_protected_process_handle_is_stripped() {
        reset_host();
        with_host(|host| host.current_process_id = OTHER);
        let context = context();
        let access = call(
            &context,
            OB_OPERATION_HANDLE_CREATE,
            0,
            FAKE_PROCESS_TYPE,
            fake_process(PROTECTED).cast(),
            create(0x0FFF),
        );
        assert_eq!(access, 0x0FFF & !0x0801);
        assert_eq!(context.counters.modified.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn thread_handles_follow_the_owning_process() {
        reset_host();
        with_host(|host| host.current_process_id = OTHER);
        let context = context();
        let access = call(
            &context,
            OB_OPERATION_HANDLE_CREATE,
            0,
            FAKE_THREAD_TYPE,
            fake_thread(PROTECTED).cast(),
            create(0x0003),
        );
        assert_eq!(access, 0x0001);
        let unprotected = call(
            &context,
            OB_OPERATION_HANDLE_CREATE,
            0,
            FAKE_THREAD_TYPE,
            fake_thread(OTHER + 1).cast(),
            create(0x0003),
        );
        assert_eq!(unprotected, 0x0003);
    }

    #[test]
    fn duplicates_use_the_receiving_process_as_requester() {
        reset_host();
        // The current process is the protected one (e.g. it calls
        // DuplicateHandle on its own handle), but the handle goes to OTHER.
        with_host(|host| host.current_process_id = PROTECTED);
        let context = context();
        let to_other = duplicate(0x0801, PROTECTED, OTHER);
        assert_eq!(
            call(
                &context,
                OB_OPERATION_HANDLE_DUPLICATE,
                0,
                FAKE_PROCESS_TYPE,
                fake_process(PROTECTED).cast(),
                to_other
            ),
            0
        );
        // Duplicated back into the protected process itself: a self-open.
        with_host(|host| host.current_process_id = OTHER);
        let to_self = duplicate(0x0801, OTHER, PROTECTED);
        assert_eq!(
            call(
                &context,
                OB_OPERATION_HANDLE_DUPLICATE,
                0,
                FAKE_PROCESS_TYPE,
                fake_process(PROTECTED).cast(),
                to_self
            ),
            0x0801
        );
        assert_eq!(context.counters.skipped_self.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn kernel_handles_self_opens_and_unknown_operations_pass_untouched() {
        reset_host();
        with_host(|host| host.current_process_id = OTHER);
        let context = context();
        let object = fake_process(PROTECTED).cast();
        assert_eq!(
            call(
                &context,
                OB_OPERATION_HANDLE_CREATE,
                1,
                FAKE_PROCESS_TYPE,
                object,
                create(0x0801)
            ),
            0x0801
        );
        assert_eq!(
            call(&context, 7, 0, FAKE_PROCESS_TYPE, object, create(0x0801)),
            0x0801
        );
        assert_eq!(
            call(
                &context,
                OB_OPERATION_HANDLE_CREATE,
                0,
                0x1234,
                object,
                create(0x0801)
            ),
            0x0801
        );
        with_host(|host| host.current_process_id = PROTECTED);
        assert_eq!(
            call(
                &context,
                OB_OPERATION_HANDLE_CREATE,
                0,
                FAKE_PROCESS_TYPE,
                object,
                create(0x0801)
            ),
            0x0801
        );
        assert_eq!(context.counters.skipped_kernel.load(Ordering::Relaxed), 1);
        assert_eq!(context.counters.skipped_self.load(Ordering::Relaxed), 1);
        assert_eq!(context.counters.seen.load(Ordering::Relaxed), 4);
        assert_eq!(context.counters.modified.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn null_context_or_parameters_do_nothing() {
        reset_host();
        // SAFETY: null pointers are what is being tested; the callback checks them.
        let status = unsafe { pre_operation(ptr::null_mut(), ptr::null_mut()) };
        assert_eq!(status, OB_PREOP_SUCCESS);
    }

    #[test]
    fn registration_has_one_entry_per_object_type_and_collisions_retry() {
        reset_host();
        with_host(|host| {
            host.register_results
                .push_back(STATUS_FLT_INSTANCE_ALTITUDE_COLLISION)
        });
        let context = context();
        let base = Altitude::from_ascii("385201").unwrap();
        // SAFETY: `context` outlives the registration (unregistered below).
        let registration = unsafe { Registration::register(&context, &base, 4) }.unwrap();
        assert_eq!(registration.attempts, 2);
        let recorded = with_host(|host| host.registrations.clone());
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0].altitude, "385201");
        assert_eq!(recorded[1].altitude, "385201.1");
        let last = &recorded[1];
        assert_eq!(last.version, 0x0100);
        assert_eq!(last.context, ptr::from_ref(&context) as usize);
        let both = OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE;
        assert_eq!(
            last.operations,
            [
                (&raw const ntddk::PsProcessType as usize, both, true, false),
                (&raw const ntddk::PsThreadType as usize, both, true, false),
            ]
        );
        registration.unregister();
        assert_eq!(with_host(|host| host.unregistered.clone()), [0xC0B0_0002]);
    }
}
