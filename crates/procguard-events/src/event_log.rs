//! The Windows Event Log sink: `RegisterEventSourceW("procguard")` and one
//! `ReportEventW` per event, with the event id, level and insertion strings
//! of [`crate::messages`] (windows-sys bindings; the only unsafe code of
//! the crate with `main.rs`'s stop handling). The source's registry key
//! (`EventMessageFile`, `TypesSupported`) is written by `procguardctl
//! service install`; without it the events are logged all the same, and
//! Event Viewer shows their strings without the message text.

use std::io;
use std::ptr;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, RegisterEventSourceW, ReportEventW,
};

use crate::drain::{Event, Sink};
use crate::messages::{log_event, LogEvent, SOURCE};

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

/// A registered event source, deregistered on drop.
#[derive(Debug)]
pub struct EventLogSink {
    handle: HANDLE,
}

impl EventLogSink {
    /// Registers the `procguard` source on this machine.
    ///
    /// # Errors
    /// `RegisterEventSourceW` failed.
    pub fn open() -> io::Result<Self> {
        let name = wide(SOURCE);
        // SAFETY: a null server name means this machine; `name` is
        // NUL-terminated and outlives the call.
        let handle = unsafe { RegisterEventSourceW(ptr::null(), name.as_ptr()) };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { handle })
    }

    /// Reports one event.
    ///
    /// # Errors
    /// `ReportEventW` failed.
    pub fn report(&self, event: &LogEvent) -> io::Result<()> {
        let strings: Vec<Vec<u16>> = event.strings.iter().map(|s| wide(s)).collect();
        let pointers: Vec<*const u16> = strings.iter().map(|s| s.as_ptr()).collect();
        let count =
            u16::try_from(pointers.len()).map_err(|_| io::Error::other("too many strings"))?;
        // SAFETY: the handle is registered; `pointers` holds `count`
        // NUL-terminated strings that outlive the call; no SID, no raw data.
        let ok = unsafe {
            ReportEventW(
                self.handle,
                event.kind.level().event_type(),
                0,
                event.kind.id(),
                ptr::null_mut(),
                count,
                0,
                pointers.as_ptr(),
                ptr::null(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for EventLogSink {
    fn drop(&mut self) {
        // SAFETY: registered by RegisterEventSourceW, deregistered only here.
        unsafe { DeregisterEventSource(self.handle) };
    }
}

impl Sink for EventLogSink {
    fn name(&self) -> &'static str {
        "eventlog"
    }

    fn write(&mut self, event: &Event<'_>) -> io::Result<()> {
        self.report(&log_event(event))
    }
}
