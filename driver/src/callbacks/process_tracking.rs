//! Process creation and exit: keeping the process table current.
//!
//! `PsSetCreateProcessNotifyRoutineEx` calls [`process_notify`] at
//! PASSIVE_LEVEL when a process is created (with its creation information)
//! and when it exits (without). Creation classifies the new process under the
//! policy in force and stores its record; exit removes the record, only if
//! its creation key is this process's, so an id reused later never inherits
//! or loses a protection. The notify routine is registered before the
//! running processes are enumerated, so no process falls between the two.
//! Every notification then classifies the processes the callbacks met
//! without a record (`pending_classification.rs`): the callbacks never read
//! an image path themselves.

use crate::driver_state::DriverState;
use crate::ffi::{ntddk, HANDLE, NTSTATUS, PEPROCESS, PPS_CREATE_NOTIFY_INFO};
use crate::platform::trace;
use crate::tracking::process_identity::{self, Identity};
use crate::tracking::process_table::InsertError;

/// Registers the notify routine.
///
/// # Errors
/// The status `PsSetCreateProcessNotifyRoutineEx` returned (it needs an
/// image with FORCE_INTEGRITY, like object callbacks).
pub fn start() -> Result<(), NTSTATUS> {
    // SAFETY: registers a routine that lives as long as the image; removed by `stop`.
    let status = unsafe { ntddk::PsSetCreateProcessNotifyRoutineEx(Some(process_notify), 0) };
    if status < 0 {
        return Err(status);
    }
    Ok(())
}

/// Removes the notify routine; when this returns, no call is running.
pub fn stop() {
    // SAFETY: removes the routine `start` registered.
    let status = unsafe { ntddk::PsSetCreateProcessNotifyRoutineEx(Some(process_notify), 1) };
    if status < 0 {
        trace::error(format_args!(
            "removing the process notify routine failed with {}",
            trace::Status(status)
        ));
    }
}

/// The process notify routine.
///
/// # Safety
/// Called by the kernel with a valid process object; `create_info` is
/// non-null for a creation and null for an exit.
pub unsafe extern "C" fn process_notify(
    process: PEPROCESS,
    process_id: HANDLE,
    create_info: PPS_CREATE_NOTIFY_INFO,
) {
    let Some(state) = DriverState::global() else {
        return;
    };
    // SAFETY: as this function's contract.
    unsafe { on_notification(state, process, process_id, create_info) };
    classify_pending(state);
}

/// Creation or exit of one process.
///
/// # Safety
/// As [`process_notify`].
unsafe fn on_notification(
    state: &DriverState,
    process: PEPROCESS,
    process_id: HANDLE,
    create_info: PPS_CREATE_NOTIFY_INFO,
) {
    let Ok(pid) = u32::try_from(process_id as usize) else {
        return;
    };
    // SAFETY: the kernel passes the process being created or exiting.
    let creation_key = unsafe { process_identity::creation_key(process) };
    if create_info.is_null() {
        // A process a callback met unknown and that exits before the next
        // notification is not tracked after its exit.
        state.pending.forget(pid);
        let writer = state.writer();
        if let Some(generation) = state.active.writer_view(&writer) {
            generation.untrack(pid, creation_key);
        }
        return;
    }
    // Read the identity before taking the writer mutex (it allocates and
    // takes kernel locks of its own).
    // SAFETY: PASSIVE_LEVEL (notify routines run there); `process` is valid.
    let Some(image_path) = (unsafe { process_identity::image_path_for_policy(process) }) else {
        // Out of memory: classified at a later notification instead.
        state.pending.note(pid);
        return;
    };
    let identity = Identity {
        pid,
        creation_key,
        image_path,
    };
    let mut writer = state.writer();
    let outcome = state.active.writer_view(&writer).map(|generation| {
        let result = generation.track(&identity);
        (result, generation.table.needs_rebuild())
    });
    let Some((result, needs_rebuild)) = outcome else {
        return;
    };
    if result == Err(InsertError::Full) || needs_rebuild {
        // From the table's own entries (defect 7 of issue 11): the creating
        // thread neither enumerates nor classifies the system's processes.
        match state.rebuild_table(&mut writer) {
            Ok(_) => {
                if result.is_err() {
                    if let Some(generation) = state.active.writer_view(&writer) {
                        // It did not fit in the old table: it goes in the new one.
                        let _ = generation.track(&identity);
                    }
                }
            }
            Err(error) => trace::error(format_args!(
                "rebuilding the process table failed: {error:?}"
            )),
        }
    }
}

/// Classifies the processes the callbacks met without a record
/// (`pending_classification.rs`): here, at PASSIVE_LEVEL in a notify
/// routine, reading an image path is allowed. Each is read before the writer
/// mutex is taken, like a new process's; one that has exited meanwhile is
/// skipped, one whose path cannot be allocated waits for the next
/// notification.
fn classify_pending(state: &DriverState) {
    if state.pending.is_empty() {
        return;
    }
    state.pending.take(|pid| {
        let Some(identity) = process_identity::identify(pid) else {
            if process_identity::with_process(pid, |_| ()).is_some() {
                state.pending.note(pid);
            }
            return;
        };
        let writer = state.writer();
        if let Some(generation) = state.active.writer_view(&writer) {
            if let Err(error) = generation.track(&identity) {
                trace::error(format_args!(
                    "tracking process {pid} after a callback met it failed: {error:?}"
                ));
            }
        }
    });
}
