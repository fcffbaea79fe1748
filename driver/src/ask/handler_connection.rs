//! The one connected handler: the file object it connected on (every ask
//! IOCTL must come on it; its cleanup ends the connection) and its process
//! id (never asked about).

use crate::ffi::{ntddk, WDFFILEOBJECT};

/// A connected handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerConnection {
    /// The framework file object of the handler's handle (an address,
    /// compared only).
    pub file: usize,
    /// The handler's process id.
    pub pid: u32,
}

impl HandlerConnection {
    /// The connection of the process running the connect IOCTL (it runs in
    /// the caller's context, at PASSIVE_LEVEL), on `file`.
    pub fn of_current_process(file: WDFFILEOBJECT) -> Self {
        // SAFETY: returns the current process, valid while its thread runs
        // (no reference taken: we keep only its id).
        let process = unsafe { ntddk::IoGetCurrentProcess() };
        // SAFETY: a live process object.
        let pid = unsafe { ntddk::PsGetProcessId(process) } as usize;
        Self {
            file: file as usize,
            pid: u32::try_from(pid).unwrap_or(u32::MAX),
        }
    }

    /// `file` is the connected handle's file object.
    pub fn is_on(&self, file: WDFFILEOBJECT) -> bool {
        self.file == file as usize
    }
}
