//! `--replay FILE` (diagnostics, hidden): a driver stand-in holding the
//! records of a file of raw 64-byte audit records, so the service can be
//! exercised without the driver (under Wine, on a machine before the driver
//! is installed). It answers like the driver (the fake device's dispatcher):
//! the records are read once; then a wait blocks until the service stops,
//! and fails with `STATUS_CANCELLED` as a cancelled wait does.

use std::path::Path;

use procguard_protocol::ask::{IOCTL_WAIT_EVENTS, STATUS_CANCELLED};
use procguard_protocol::{AuditMode, AuditRecord, AUDIT_RECORD_BYTES};
use procguardctl::device::{Device, DeviceError};
use procguardctl::fake_device::FakeDevice;

use crate::drain::Stop;

/// Reads a replay file.
///
/// # Errors
/// The file cannot be read, its size is not a multiple of 64 bytes or a
/// record does not decode (with its index).
pub fn load(path: &Path) -> Result<Vec<AuditRecord>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() % AUDIT_RECORD_BYTES != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of {AUDIT_RECORD_BYTES}-byte audit records",
            path.display(),
            bytes.len()
        ));
    }
    bytes
        .chunks_exact(AUDIT_RECORD_BYTES)
        .enumerate()
        .map(|(index, chunk)| {
            AuditRecord::from_bytes(chunk)
                .map_err(|e| format!("{}: record {index}: {e:?}", path.display()))
        })
        .collect()
}

/// A fake driver whose status counts the records as if it had decided
/// them.
#[must_use]
pub fn fake_with(records: &[AuditRecord], queued: bool) -> FakeDevice {
    let device = FakeDevice::default();
    {
        let mut state = device.driver.state.borrow_mut();
        state.capacity = records.len().max(1);
        // No processes are tracked: there is no driver.
        state.status.tracked_processes = 0;
        for record in records {
            let counters = &mut state.status.counters;
            match record.mode {
                AuditMode::Enforce | AuditMode::Audit | AuditMode::Ask => {
                    counters.seen += 1;
                    counters.audited += 1;
                    if record.mode == AuditMode::Enforce {
                        counters.modified += 1;
                    }
                }
                AuditMode::PolicyApplied | AuditMode::PolicyRejected => {}
            }
            if queued {
                state.events.push_back(*record);
            }
        }
    }
    device
}

/// The replay device.
#[derive(Debug)]
pub struct ReplayDevice {
    inner: FakeDevice,
    stop: Stop,
}

impl ReplayDevice {
    /// Holds `records` until read; waits end with `stop`.
    #[must_use]
    pub fn new(records: &[AuditRecord], stop: Stop) -> Self {
        Self {
            inner: fake_with(records, true),
            stop,
        }
    }
}

impl Device for ReplayDevice {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        if code == IOCTL_WAIT_EVENTS && self.inner.driver.state.borrow().events.is_empty() {
            self.stop.wait();
            return Err(DeviceError::Driver(STATUS_CANCELLED));
        }
        self.inner.ioctl(code, input, output)
    }

    fn interrupted(&self) -> bool {
        self.stop.requested()
    }
}
