//! The real control device: `\\.\ProcGuard` through `CreateFileW` and
//! `DeviceIoControl` (windows-sys). The only unsafe code of the tool.
//!
//! When the device cannot be opened because it does not exist, the service
//! control manager tells apart "not installed" (no procguard service) from
//! "not running" (the service exists, the driver is stopped).
//!
//! Ctrl-C during `events --follow`: the main thread blocks in a synchronous
//! `DeviceIoControl(IOCTL_WAIT_EVENTS)`. Rather than moving that call to a
//! worker thread (two threads sharing the device, and a main thread that
//! must still be woken somehow), a console control handler marks the tool
//! interrupted and cancels the device's I/O with `CancelIoEx` (which also
//! cancels synchronous requests of other threads of the process): the wait
//! fails with `ERROR_OPERATION_ABORTED`, the loop sees the mark and ends
//! normally (exit code 0, output flushed). If the tool has not ended 2 s
//! later, the default handler ends the process, which cancels the wait too.

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND,
    ERROR_INSUFFICIENT_BUFFER, ERROR_INVALID_FUNCTION, ERROR_INVALID_PARAMETER, ERROR_MORE_DATA,
    ERROR_OPERATION_ABORTED, ERROR_PATH_NOT_FOUND, ERROR_SERVICE_DOES_NOT_EXIST, FALSE,
    GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, TRUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::Console::{
    SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT,
};
use windows_sys::Win32::System::Diagnostics::Debug::{
    FormatMessageW, FORMAT_MESSAGE_FROM_SYSTEM, FORMAT_MESSAGE_IGNORE_INSERTS,
};
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, OpenSCManagerW, OpenServiceW, QueryServiceStatus, SC_MANAGER_CONNECT,
    SERVICE_CONTINUE_PENDING, SERVICE_PAUSED, SERVICE_PAUSE_PENDING, SERVICE_QUERY_STATUS,
    SERVICE_RUNNING, SERVICE_START_PENDING, SERVICE_STATUS, SERVICE_STOPPED, SERVICE_STOP_PENDING,
};
use windows_sys::Win32::System::IO::{CancelIoEx, DeviceIoControl};

use procguard_protocol::ask::STATUS_CANCELLED;
use procguard_protocol::dispatch::{STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER};
use procguard_protocol::ioctl::USER_MODE_PATH;

use crate::device::{Device, DeviceError};

/// The service the INF installs.
const SERVICE_NAME: &str = "procguard";

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

/// The system's text for a Win32 error.
fn message(code: u32) -> String {
    let mut buffer = [0u16; 512];
    // SAFETY: `buffer` is writable for its whole length, which is what we
    // pass as nSize; no insert arguments are read (IGNORE_INSERTS).
    let length = unsafe {
        FormatMessageW(
            FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
            ptr::null(),
            code,
            0,
            buffer.as_mut_ptr(),
            buffer.len() as u32,
            ptr::null(),
        )
    } as usize;
    let text = String::from_utf16_lossy(buffer.get(..length).unwrap_or_default());
    let text = text.trim_end();
    if text.is_empty() {
        "(no description)".to_owned()
    } else {
        text.to_owned()
    }
}

fn win32(code: u32) -> DeviceError {
    DeviceError::Win32 {
        code,
        message: message(code),
    }
}

/// A service control manager handle, closed on drop.
struct ServiceHandle(windows_sys::Win32::System::Services::SC_HANDLE);

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was returned non-null by OpenSCManagerW or
        // OpenServiceW and is closed only here.
        unsafe { CloseServiceHandle(self.0) };
    }
}

/// Why the device is missing: no service at all, or a stopped driver.
fn missing_device() -> DeviceError {
    let name = wide(SERVICE_NAME);
    // SAFETY: null machine and database names mean the local active database.
    let manager = unsafe { OpenSCManagerW(ptr::null(), ptr::null(), SC_MANAGER_CONNECT) };
    if manager.is_null() {
        return DeviceError::NotInstalled;
    }
    let manager = ServiceHandle(manager);
    // SAFETY: `manager` is open; `name` is NUL-terminated and outlives the call.
    let service = unsafe { OpenServiceW(manager.0, name.as_ptr(), SERVICE_QUERY_STATUS) };
    if service.is_null() {
        // SAFETY: reads the calling thread's last error; no preconditions.
        let code = unsafe { GetLastError() };
        return if code == ERROR_SERVICE_DOES_NOT_EXIST {
            DeviceError::NotInstalled
        } else {
            DeviceError::NotRunning {
                state: format!("unknown ({})", message(code)),
            }
        };
    }
    let service = ServiceHandle(service);
    // SAFETY: SERVICE_STATUS is plain data; all zeroes is a valid value.
    let mut status: SERVICE_STATUS = unsafe { std::mem::zeroed() };
    // SAFETY: `service` is open with SERVICE_QUERY_STATUS; `status` is writable.
    let ok = unsafe { QueryServiceStatus(service.0, &raw mut status) };
    let state = if ok == 0 {
        "unknown".to_owned()
    } else {
        match status.dwCurrentState {
            SERVICE_STOPPED => "stopped",
            SERVICE_START_PENDING => "start pending",
            SERVICE_STOP_PENDING => "stop pending",
            SERVICE_RUNNING => "running, but the device is missing",
            SERVICE_CONTINUE_PENDING => "continue pending",
            SERVICE_PAUSE_PENDING => "pause pending",
            SERVICE_PAUSED => "paused",
            _ => "unknown",
        }
        .to_owned()
    };
    DeviceError::NotRunning { state }
}

/// The device handle Ctrl-C cancels the I/O of (null: none).
static CTRL_C_DEVICE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
/// Set by the console handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The console control handler (runs on a thread the system creates).
unsafe extern "system" fn on_console_event(event: u32) -> windows_sys::core::BOOL {
    if !matches!(event, CTRL_C_EVENT | CTRL_BREAK_EVENT | CTRL_CLOSE_EVENT) {
        return FALSE;
    }
    INTERRUPTED.store(true, Ordering::SeqCst);
    // The main thread may be between its look at INTERRUPTED and its next
    // wait, where one cancel would find nothing: cancel again until the
    // process ends (this thread ends with it), for at most 2 s.
    for _ in 0..40 {
        let handle = CTRL_C_DEVICE.load(Ordering::SeqCst);
        if handle.is_null() {
            break;
        }
        // SAFETY: `handle` is the open device handle (the device clears
        // CTRL_C_DEVICE before closing it; a close racing this load makes
        // the call fail with ERROR_INVALID_HANDLE); a null OVERLAPPED cancels
        // every request of the process on it and frees nothing.
        unsafe { CancelIoEx(handle, ptr::null()) };
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not handled: the next handler (the default one) ends the process.
    FALSE
}

/// `\\.\ProcGuard`, open for reading and writing.
#[derive(Debug)]
pub struct WindowsDevice {
    handle: HANDLE,
}

impl WindowsDevice {
    /// Opens the control device.
    ///
    /// # Errors
    /// [`DeviceError::NotInstalled`], [`DeviceError::NotRunning`],
    /// [`DeviceError::AccessDenied`] or another Win32 error.
    pub fn open() -> Result<Self, DeviceError> {
        let path = wide(USER_MODE_PATH);
        // SAFETY: `path` is NUL-terminated and outlives the call; no security
        // attributes nor template handle are passed.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                ptr::null(),
                OPEN_EXISTING,
                FILE_ATTRIBUTE_NORMAL,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            // SAFETY: reads the calling thread's last error; no preconditions.
            let code = unsafe { GetLastError() };
            return Err(match code {
                ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND => missing_device(),
                ERROR_ACCESS_DENIED => DeviceError::AccessDenied,
                other => win32(other),
            });
        }
        Ok(Self { handle })
    }
}

impl Drop for WindowsDevice {
    fn drop(&mut self) {
        // Ctrl-C must not cancel I/O on a closed (or reused) handle.
        let _ = CTRL_C_DEVICE.compare_exchange(
            self.handle,
            ptr::null_mut(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        // SAFETY: `handle` came from a successful CreateFileW and is closed
        // only here.
        unsafe { CloseHandle(self.handle) };
    }
}

impl Device for WindowsDevice {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        let too_large = |_| DeviceError::Win32 {
            code: 0,
            message: "buffer larger than 4 GiB".to_owned(),
        };
        let input_len = u32::try_from(input.len()).map_err(too_large)?;
        let output_len = u32::try_from(output.len()).map_err(too_large)?;
        let input_ptr = if input.is_empty() {
            ptr::null()
        } else {
            input.as_ptr().cast()
        };
        let output_ptr = if output.is_empty() {
            ptr::null_mut()
        } else {
            output.as_mut_ptr().cast()
        };
        let mut returned = 0u32;
        // SAFETY: the handle is open; each pointer is null with a zero
        // length or valid for its length (input read, output written);
        // `returned` is writable; the call is synchronous (no OVERLAPPED,
        // the device was not opened for overlapped I/O).
        let ok = unsafe {
            DeviceIoControl(
                self.handle,
                code,
                input_ptr,
                input_len,
                output_ptr,
                output_len,
                &raw mut returned,
                ptr::null_mut(),
            )
        };
        if ok != 0 {
            return Ok(returned as usize);
        }
        // SAFETY: reads the calling thread's last error; no preconditions.
        let error = unsafe { GetLastError() };
        Err(match error {
            ERROR_MORE_DATA => DeviceError::MoreData {
                returned: returned as usize,
            },
            ERROR_INSUFFICIENT_BUFFER => DeviceError::BufferTooSmall,
            ERROR_ACCESS_DENIED => DeviceError::AccessDenied,
            // The I/O manager turned the driver's NTSTATUS into these; say
            // what the driver said.
            ERROR_INVALID_PARAMETER => DeviceError::Driver(STATUS_INVALID_PARAMETER),
            ERROR_INVALID_FUNCTION => DeviceError::Driver(STATUS_INVALID_DEVICE_REQUEST),
            ERROR_OPERATION_ABORTED => DeviceError::Driver(STATUS_CANCELLED),
            other => win32(other),
        })
    }

    fn cancel_on_ctrl_c(&mut self) {
        CTRL_C_DEVICE.store(self.handle, Ordering::SeqCst);
        // SAFETY: registers a function that lives as long as the process;
        // it touches only atomics and the device handle.
        let added = unsafe { SetConsoleCtrlHandler(Some(on_console_event), TRUE) };
        if added == 0 {
            // No handler: Ctrl-C ends the process as before (the end of the
            // process cancels the wait).
            CTRL_C_DEVICE.store(ptr::null_mut(), Ordering::SeqCst);
        }
    }

    fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}
