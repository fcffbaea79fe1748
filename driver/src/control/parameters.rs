//! The service's `Parameters` registry key: altitude, collision retries, the
//! policy the driver starts with and the size of the audit ring.
//!
//! Everything read here is untrusted input (an administrator, or malware
//! running as one, controls it). A missing value takes its default; a value
//! of the wrong type, size or content is reported in the debug log and in
//! [`Settings::problems`], and its default is used instead: the driver always
//! loads, with no rules rather than with a half-understood policy.

use alloc::vec::Vec;
use core::ptr;

use crate::control::altitude::{Altitude, AltitudeError, DEFAULT_RETRIES, MAX_RETRIES};
use crate::ffi::{
    ntddk, _KEY_VALUE_INFORMATION_CLASS, HANDLE, KEY_READ, KEY_WRITE, NTSTATUS, OBJECT_ATTRIBUTES,
    OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, PCUNICODE_STRING, REG_BINARY, REG_DWORD,
    REG_OPTION_NON_VOLATILE, REG_SZ, STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_BUFFER_SIZE, STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_TYPE_MISMATCH, UNICODE_STRING,
};
use crate::platform::trace;
use crate::platform::wide_string::{unicode_string, utf16};

/// Largest registry value the driver reads (the policy blob is the big one).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// `FIELD_OFFSET(KEY_VALUE_PARTIAL_INFORMATION, Data)`.
const PARTIAL_INFO_HEADER: usize = 12;

const PARAMETERS_KEY: [u16; 10] = utf16("Parameters");
const ALTITUDE_VALUE: [u16; 8] = utf16("Altitude");
const RETRIES_VALUE: [u16; 15] = utf16("AltitudeRetries");
const POLICY_VALUE: [u16; 6] = utf16("Policy");
const AUDIT_RECORDS_VALUE: [u16; 12] = utf16("AuditRecords");

/// Audit ring size when the registry does not say.
pub const DEFAULT_AUDIT_RECORDS: u32 = 4096;

/// A value that could not be used, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueProblem {
    /// Present with a registry type other than the one documented.
    WrongType(u32),
    /// Larger than [`MAX_VALUE_BYTES`], or of a size its type does not allow.
    BadSize(usize),
    /// The registry call failed with this status.
    ReadFailed(NTSTATUS),
    /// `Altitude` is not a valid altitude.
    Altitude(AltitudeError),
}

/// What the driver starts with, and what was wrong with the registry.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The altitude to register at first.
    pub altitude: Altitude,
    /// Collision retries (0: fail on a collision).
    pub altitude_retries: u32,
    /// The starting policy blob (empty: no policy). Validated when the
    /// driver compiles it (`driver_entry.rs`).
    pub policy_blob: Vec<u8>,
    /// Audit ring size, in records (rounded up to a power of two).
    pub audit_records: u32,
    /// Problems with `Altitude`, `AltitudeRetries`, `Policy`, `AuditRecords`, in that order.
    pub problems: [Option<ValueProblem>; 4],
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            altitude: Altitude::default_altitude(),
            altitude_retries: DEFAULT_RETRIES,
            policy_blob: Vec::new(),
            audit_records: DEFAULT_AUDIT_RECORDS,
            problems: [None; 4],
        }
    }
}

/// An open registry key, closed on drop.
struct Key(HANDLE);

impl Key {
    /// Opens `name` for reading, relative to `root` when given.
    fn open(root: Option<&Self>, name: &UNICODE_STRING) -> Result<Self, NTSTATUS> {
        Self::open_with(root, name, KEY_READ)
    }

    /// Opens or creates the subkey `name` of `root` for writing.
    fn create(root: &Self, name: &UNICODE_STRING) -> Result<Self, NTSTATUS> {
        let mut attributes = OBJECT_ATTRIBUTES {
            Length: core::mem::size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: root.0,
            ObjectName: ptr::from_ref(name).cast_mut(),
            Attributes: OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE,
            SecurityDescriptor: ptr::null_mut(),
            SecurityQualityOfService: ptr::null_mut(),
        };
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: attributes and name live across the call; a kernel handle.
        let status = unsafe {
            ntddk::ZwCreateKey(
                &raw mut handle,
                KEY_WRITE,
                &raw mut attributes,
                0,
                ptr::null_mut(),
                REG_OPTION_NON_VOLATILE,
                ptr::null_mut(),
            )
        };
        if status < 0 {
            return Err(status);
        }
        Ok(Self(handle))
    }

    /// Opens `name` with `access`, relative to `root` when given.
    fn open_with(
        root: Option<&Self>,
        name: &UNICODE_STRING,
        access: u32,
    ) -> Result<Self, NTSTATUS> {
        let mut attributes = OBJECT_ATTRIBUTES {
            Length: core::mem::size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: root.map_or(ptr::null_mut(), |key| key.0),
            ObjectName: ptr::from_ref(name).cast_mut(),
            Attributes: OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE,
            SecurityDescriptor: ptr::null_mut(),
            SecurityQualityOfService: ptr::null_mut(),
        };
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: `attributes` and the name it points to live across the call;
        // a kernel handle (OBJ_KERNEL_HANDLE) cannot be used by user mode.
        let status = unsafe { ntddk::ZwOpenKey(&raw mut handle, access, &raw mut attributes) };
        if status < 0 {
            return Err(status);
        }
        Ok(Self(handle))
    }

    /// Reads a value: its registry type and data, at most [`MAX_VALUE_BYTES`].
    fn query(&self, name: &[u16]) -> Result<(u32, Vec<u8>), NTSTATUS> {
        let mut value_name = unicode_string(name);
        // First call: learn the size. A 4-byte-aligned header-sized buffer.
        let mut probe = [0u32; PARTIAL_INFO_HEADER.div_ceil(4) + 1];
        let mut needed: u32 = 0;
        // SAFETY: the buffer is `size_of_val(&probe)` bytes and writable;
        // `value_name` and `needed` live across the call.
        let status = unsafe {
            ntddk::ZwQueryValueKey(
                self.0,
                &raw mut value_name,
                _KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation,
                probe.as_mut_ptr().cast(),
                core::mem::size_of_val(&probe) as u32,
                &raw mut needed,
            )
        };
        let needed = needed as usize;
        if status < 0 && status != STATUS_BUFFER_OVERFLOW && status != STATUS_BUFFER_TOO_SMALL {
            return Err(status);
        }
        if !(PARTIAL_INFO_HEADER..=PARTIAL_INFO_HEADER + MAX_VALUE_BYTES).contains(&needed) {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let mut words: Vec<u32> = Vec::new();
        words
            .try_reserve_exact(needed.div_ceil(4))
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        words.resize(needed.div_ceil(4), 0);
        let mut written: u32 = 0;
        // SAFETY: `words` holds at least `needed` writable, 4-byte aligned bytes.
        let status = unsafe {
            ntddk::ZwQueryValueKey(
                self.0,
                &raw mut value_name,
                _KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation,
                words.as_mut_ptr().cast(),
                needed as u32,
                &raw mut written,
            )
        };
        if status < 0 {
            // Includes a value that grew between the two calls.
            return Err(status);
        }
        let (Some(&value_type), Some(&data_len)) = (words.get(1), words.get(2)) else {
            return Err(STATUS_INVALID_PARAMETER);
        };
        let data_len = data_len as usize;
        if data_len > needed - PARTIAL_INFO_HEADER {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let mut data = Vec::new();
        // Counted, within a fallible reservation: no regrow (panic) path.
        procguard_policy::fallible::try_extend_counted(
            &mut data,
            data_len,
            words
                .iter()
                .flat_map(|word| word.to_le_bytes())
                .skip(PARTIAL_INFO_HEADER),
        )
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        Ok((value_type, data))
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by `Key::open` and is closed once.
        unsafe { ntddk::ZwClose(self.0) };
    }
}

/// Writes `blob` to `<service key>\Parameters\Policy` (REG_BINARY),
/// creating the `Parameters` key if needed: the policy is then in force from
/// the next boot on. PASSIVE_LEVEL.
///
/// # Errors
/// The status of the failed registry call.
pub fn persist_policy(service_key_path: &[u16], blob: &[u8]) -> Result<(), NTSTATUS> {
    // A UNICODE_STRING holds at most 32,767 units (the path came from one).
    if service_key_path.len() > 0x7FFF {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let service = Key::open_with(None, &unicode_string(service_key_path), KEY_WRITE)?;
    let parameters = Key::create(&service, &unicode_string(&PARAMETERS_KEY))?;
    let mut value_name = unicode_string(&POLICY_VALUE);
    let size = u32::try_from(blob.len()).map_err(|_| STATUS_INVALID_PARAMETER)?;
    // SAFETY: the key is open for writing; the name and `size` bytes of data
    // live across the call (the kernel copies them).
    let status = unsafe {
        ntddk::ZwSetValueKey(
            parameters.0,
            &raw mut value_name,
            0,
            REG_BINARY,
            blob.as_ptr().cast_mut().cast(),
            size,
        )
    };
    if status < 0 {
        Err(status)
    } else {
        Ok(())
    }
}

/// The status a policy refused for `problem` is reported with (status
/// `last_rejected_status`, policy-rejected records).
#[must_use]
pub const fn problem_status(problem: ValueProblem) -> NTSTATUS {
    match problem {
        ValueProblem::WrongType(_) => STATUS_OBJECT_TYPE_MISMATCH,
        ValueProblem::BadSize(_) => STATUS_INVALID_BUFFER_SIZE,
        ValueProblem::ReadFailed(status) => status,
        ValueProblem::Altitude(_) => STATUS_INVALID_PARAMETER,
    }
}

/// Reads `<service key>\Parameters\Policy` again (after a change the
/// registry callback saw): the blob, empty when the key or the value is
/// absent (deleted: no rules). PASSIVE_LEVEL.
///
/// # Errors
/// The value's [`ValueProblem`]: wrong type, oversize, or a failed read.
pub fn read_policy(service_key_path: &[u16]) -> Result<Vec<u8>, ValueProblem> {
    if service_key_path.len() > 0x7FFF {
        return Err(ValueProblem::ReadFailed(STATUS_INVALID_PARAMETER));
    }
    let parameters = Key::open(None, &unicode_string(service_key_path))
        .and_then(|service| Key::open(Some(&service), &unicode_string(&PARAMETERS_KEY)));
    let key = match parameters {
        Ok(key) => key,
        Err(STATUS_OBJECT_NAME_NOT_FOUND) => return Ok(Vec::new()),
        Err(status) => return Err(ValueProblem::ReadFailed(status)),
    };
    read_value(&key, &POLICY_VALUE)
        .and_then(parse_policy)
        .map(Option::unwrap_or_default)
}

/// Reads one value: `Ok(None)` when absent.
fn read_value(key: &Key, name: &[u16]) -> Result<Option<(u32, Vec<u8>)>, ValueProblem> {
    match key.query(name) {
        Ok(value) => Ok(Some(value)),
        Err(STATUS_OBJECT_NAME_NOT_FOUND) => Ok(None),
        Err(STATUS_INVALID_PARAMETER) => Err(ValueProblem::BadSize(MAX_VALUE_BYTES + 1)),
        Err(status) => Err(ValueProblem::ReadFailed(status)),
    }
}

fn parse_altitude(value: Option<(u32, Vec<u8>)>) -> Result<Option<Altitude>, ValueProblem> {
    let Some((value_type, data)) = value else {
        return Ok(None);
    };
    if value_type != REG_SZ {
        return Err(ValueProblem::WrongType(value_type));
    }
    if data.len() % 2 != 0 {
        return Err(ValueProblem::BadSize(data.len()));
    }
    let mut units = [0u16; crate::control::altitude::MAX_LEN + 2];
    let count = data.len() / 2;
    // Trailing NULs do not count toward the length limit.
    let meaningful = data
        .chunks_exact(2)
        .rposition(|pair| pair != [0, 0])
        .map_or(0, |last| last + 1);
    if meaningful > crate::control::altitude::MAX_LEN {
        return Err(ValueProblem::Altitude(AltitudeError::TooLong));
    }
    for (unit, pair) in units
        .iter_mut()
        .zip(data.chunks_exact(2))
        .take(count.min(meaningful))
    {
        *unit = u16::from_le_bytes([pair[0], pair[1]]);
    }
    Altitude::from_utf16(&units[..meaningful])
        .map(Some)
        .map_err(ValueProblem::Altitude)
}

fn parse_dword(value: Option<(u32, Vec<u8>)>) -> Result<Option<u32>, ValueProblem> {
    let Some((value_type, data)) = value else {
        return Ok(None);
    };
    if value_type != REG_DWORD {
        return Err(ValueProblem::WrongType(value_type));
    }
    let bytes: [u8; 4] = data
        .as_slice()
        .try_into()
        .map_err(|_| ValueProblem::BadSize(data.len()))?;
    Ok(Some(u32::from_le_bytes(bytes)))
}

fn parse_retries(value: Option<(u32, Vec<u8>)>) -> Result<Option<u32>, ValueProblem> {
    parse_dword(value).map(|retries| retries.map(|retries| retries.min(MAX_RETRIES)))
}

fn parse_policy(value: Option<(u32, Vec<u8>)>) -> Result<Option<Vec<u8>>, ValueProblem> {
    let Some((value_type, data)) = value else {
        return Ok(None);
    };
    if value_type != REG_BINARY {
        return Err(ValueProblem::WrongType(value_type));
    }
    // Empty (what the INF installs): no rules, not an error.
    Ok(Some(data))
}

/// Ring size: clamped to what the ring accepts (`audit_ring.rs`).
fn parse_audit_records(value: Option<(u32, Vec<u8>)>) -> Result<Option<u32>, ValueProblem> {
    let max = u32::try_from(crate::state::audit_ring::MAX_RECORDS).unwrap_or(u32::MAX);
    let min = u32::try_from(crate::state::audit_ring::MIN_RECORDS).unwrap_or(2);
    parse_dword(value).map(|records| records.map(|records| records.clamp(min, max)))
}

fn report(name: &str, problem: ValueProblem) {
    match problem {
        ValueProblem::WrongType(value_type) => {
            trace::error(format_args!(
                "Parameters\\{name} has registry type {value_type}; ignored, default used"
            ));
        }
        ValueProblem::BadSize(size) => {
            trace::error(format_args!(
                "Parameters\\{name} has an unusable size ({size} bytes); ignored, default used"
            ));
        }
        ValueProblem::ReadFailed(status) => {
            trace::error(format_args!(
                "reading Parameters\\{name} failed with {}; default used",
                trace::Status(status)
            ));
        }
        ValueProblem::Altitude(error) => {
            trace::error(format_args!("Parameters\\{name}: {error}; default used"))
        }
    }
}

/// Reads the settings under `<registry_path>\Parameters`. Never fails: see
/// the module documentation.
///
/// # Safety
/// `registry_path` is the registry path `DriverEntry` received.
pub unsafe fn read_settings(registry_path: PCUNICODE_STRING) -> Settings {
    let mut settings = Settings::default();
    // SAFETY: DriverEntry's registry path is a valid UNICODE_STRING.
    let Some(path) = (unsafe { registry_path.as_ref() }) else {
        return settings;
    };
    let parameters = Key::open(None, path)
        .and_then(|service| Key::open(Some(&service), &unicode_string(&PARAMETERS_KEY)));
    let key = match parameters {
        Ok(key) => key,
        Err(STATUS_OBJECT_NAME_NOT_FOUND) => {
            trace::info(format_args!("no Parameters key; defaults in use"));
            return settings;
        }
        Err(status) => {
            trace::error(format_args!(
                "opening the Parameters key failed with {}; defaults in use",
                trace::Status(status)
            ));
            return settings;
        }
    };

    match read_value(&key, &ALTITUDE_VALUE).and_then(parse_altitude) {
        Ok(Some(altitude)) => settings.altitude = altitude,
        Ok(None) => {}
        Err(problem) => {
            report("Altitude", problem);
            settings.problems[0] = Some(problem);
        }
    }
    match read_value(&key, &RETRIES_VALUE).and_then(parse_retries) {
        Ok(Some(retries)) => settings.altitude_retries = retries,
        Ok(None) => {}
        Err(problem) => {
            report("AltitudeRetries", problem);
            settings.problems[1] = Some(problem);
        }
    }
    match read_value(&key, &POLICY_VALUE).and_then(parse_policy) {
        Ok(Some(blob)) => settings.policy_blob = blob,
        Ok(None) => {}
        Err(problem) => {
            report("Policy", problem);
            settings.problems[2] = Some(problem);
        }
    }
    match read_value(&key, &AUDIT_RECORDS_VALUE).and_then(parse_audit_records) {
        Ok(Some(records)) => settings.audit_records = records,
        Ok(None) => {}
        Err(problem) => {
            report("AuditRecords", problem);
            settings.problems[3] = Some(problem);
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{reset_host, with_host, FakeValue};
    use std::collections::BTreeMap;
    use std::string::{String, ToString};

    fn service_path() -> (Vec<u16>, UNICODE_STRING) {
        let mut units: Vec<u16> =
            "\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet\\Services\\procguard"
                .encode_utf16()
                .collect();
        let string = UNICODE_STRING {
            Length: (units.len() * 2) as u16,
            MaximumLength: (units.len() * 2) as u16,
            Buffer: units.as_mut_ptr(),
        };
        (units, string)
    }

    fn with_values(values: &[(&str, u32, Vec<u8>)]) -> Settings {
        reset_host();
        let map: BTreeMap<String, FakeValue> = values
            .iter()
            .map(|(name, value_type, data)| {
                (
                    name.to_string(),
                    FakeValue {
                        value_type: *value_type,
                        data: data.clone(),
                    },
                )
            })
            .collect();
        with_host(|host| host.parameters = Some(map));
        let (_units, path) = service_path();
        // SAFETY: a valid UNICODE_STRING backed by `_units`.
        let settings = unsafe { read_settings(&raw const path) };
        assert_eq!(
            with_host(|host| host.open_keys),
            0,
            "every key opened is closed"
        );
        settings
    }

    fn reg_sz(text: &str) -> Vec<u8> {
        text.encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect()
    }

    fn dword(value: u32) -> Vec<u8> {
        value.to_le_bytes().to_vec()
    }

    #[test]
    fn defaults_apply_without_a_parameters_key() {
        reset_host();
        let (_units, path) = service_path();
        // SAFETY: valid string.
        let settings = unsafe { read_settings(&raw const path) };
        assert_eq!(
            settings.altitude.to_string(),
            crate::control::altitude::DEFAULT_ALTITUDE
        );
        assert_eq!(settings.altitude_retries, DEFAULT_RETRIES);
        assert!(settings.policy_blob.is_empty());
        assert_eq!(settings.audit_records, DEFAULT_AUDIT_RECORDS);
        assert_eq!(settings.problems, [None; 4]);
        assert_eq!(with_host(|host| host.open_keys), 0);
    }

    #[test]
    fn valid_values_are_used() {
        let blob = vec![1u8, 2, 3, 4, 5];
        let settings = with_values(&[
            ("Altitude", REG_SZ, reg_sz("385210.25")),
            ("AltitudeRetries", REG_DWORD, dword(3)),
            ("Policy", REG_BINARY, blob.clone()),
            ("AuditRecords", REG_DWORD, dword(100)),
        ]);
        assert_eq!(settings.altitude.to_string(), "385210.25");
        assert_eq!(settings.altitude_retries, 3);
        assert_eq!(
            settings.policy_blob, blob,
            "the blob is passed on as read; the engine validates it"
        );
        assert_eq!(settings.audit_records, 100);
        assert_eq!(settings.problems, [None; 4]);
    }

    #[test]
    fn corrupt_values_are_reported_and_replaced_by_defaults() {
        let settings = with_values(&[
            ("Altitude", REG_SZ, reg_sz("not-a-number")),
            ("AltitudeRetries", REG_DWORD, vec![1, 2]),
            ("Policy", REG_SZ, reg_sz("a policy")),
            ("AuditRecords", REG_BINARY, dword(5)),
        ]);
        assert_eq!(
            settings.altitude.to_string(),
            crate::control::altitude::DEFAULT_ALTITUDE
        );
        assert_eq!(settings.altitude_retries, DEFAULT_RETRIES);
        assert!(settings.policy_blob.is_empty());
        assert_eq!(settings.audit_records, DEFAULT_AUDIT_RECORDS);
        assert_eq!(
            settings.problems,
            [
                Some(ValueProblem::Altitude(AltitudeError::NotDecimal)),
                Some(ValueProblem::BadSize(2)),
                Some(ValueProblem::WrongType(REG_SZ)),
                Some(ValueProblem::WrongType(REG_BINARY)),
            ]
        );
        let trace = with_host(|host| host.trace.clone());
        assert!(
            trace.iter().any(|line| line
                .contains("Parameters\\Policy has registry type 1; ignored, default used")),
            "{trace:?}"
        );
    }

    #[test]
    fn wrong_types_odd_sizes_and_oversized_values_are_rejected() {
        let settings = with_values(&[
            ("Altitude", REG_DWORD, vec![0; 4]),
            ("AltitudeRetries", REG_SZ, reg_sz("3")),
            ("Policy", REG_BINARY, vec![0; MAX_VALUE_BYTES + 1]),
        ]);
        assert_eq!(
            settings.problems,
            [
                Some(ValueProblem::WrongType(REG_DWORD)),
                Some(ValueProblem::WrongType(REG_SZ)),
                Some(ValueProblem::BadSize(MAX_VALUE_BYTES + 1)),
                None,
            ]
        );
        let odd = with_values(&[("Altitude", REG_SZ, vec![b'1', 0, b'2'])]);
        assert_eq!(odd.problems[0], Some(ValueProblem::BadSize(3)));
        let long = with_values(&[("Altitude", REG_SZ, reg_sz(&"1".repeat(40)))]);
        assert_eq!(
            long.problems[0],
            Some(ValueProblem::Altitude(AltitudeError::TooLong))
        );
    }

    #[test]
    fn an_empty_policy_means_no_rules_without_a_problem() {
        let settings = with_values(&[("Policy", REG_BINARY, Vec::new())]);
        assert!(settings.policy_blob.is_empty());
        assert_eq!(settings.problems, [None; 4]);
    }

    #[test]
    fn retries_and_ring_sizes_are_clamped() {
        let settings = with_values(&[
            ("AltitudeRetries", REG_DWORD, dword(u32::MAX)),
            ("AuditRecords", REG_DWORD, dword(u32::MAX)),
        ]);
        assert_eq!(settings.altitude_retries, MAX_RETRIES);
        assert_eq!(
            settings.audit_records as usize,
            crate::state::audit_ring::MAX_RECORDS
        );
        let small = with_values(&[("AuditRecords", REG_DWORD, dword(0))]);
        assert_eq!(
            small.audit_records as usize,
            crate::state::audit_ring::MIN_RECORDS
        );
    }
}
