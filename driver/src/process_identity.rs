//! Who a process is: its id, its creation key and its full image path, read
//! from the kernel at PASSIVE_LEVEL; and the list of running processes.
//!
//! The creation key is the process's creation time
//! (`PsGetProcessCreateTimeQuadPart`): a later process that reuses the id
//! has a later creation time, so a table entry is never mistaken for it.
//! Image paths come from `SeLocateProcessImageName`, the NT form
//! (`\Device\HarddiskVolume3\Windows\System32\svchost.exe`) that policy
//! globs are written against — unlike the notify routine's
//! `ImageFileName`, which may be a `\??\C:\...` path.

use alloc::string::String;
use alloc::vec::Vec;
use core::ptr;

use crate::ffi::system_information::{
    SystemProcessInformation, ZwQuerySystemInformation, SYSTEM_PROCESS_INFORMATION,
};
use crate::ffi::{
    ntddk, HANDLE, NTSTATUS, PEPROCESS, PUNICODE_STRING, STATUS_INFO_LENGTH_MISMATCH,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_PENDING,
};

/// Largest process list read at once (grows from 256 KiB up to this).
const MAX_PROCESS_LIST_BYTES: usize = 16 * 1024 * 1024;

/// A process as the policy engine classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Process id.
    pub pid: u32,
    /// Creation time (see the module documentation).
    pub creation_key: u64,
    /// NT image path; empty for processes without one (System, Registry, …).
    pub image_path: String,
}

/// The process or thread id carried in a `HANDLE` (as `PsGetProcessId`,
/// `PsGetCurrentThreadId` and the like return them). Windows ids are 32-bit
/// values (`CLIENT_ID` holds them zero-extended), so the upper half is zero
/// and keeping the low half loses nothing; it costs no test on the callbacks'
/// path.
#[inline(always)]
pub fn id_of(handle: HANDLE) -> u32 {
    handle as usize as u32
}

/// The creation key of `process` (any IRQL up to DISPATCH_LEVEL).
///
/// # Safety
/// `process` is a valid, referenced process object.
pub unsafe fn creation_key(process: PEPROCESS) -> u64 {
    // SAFETY: per the caller; a plain read of the process's creation time.
    let time = unsafe { ntddk::PsGetProcessCreateTimeQuadPart(process) };
    time.cast_unsigned()
}

fn utf16_to_string(units: &[u16]) -> Option<String> {
    let mut text = String::new();
    text.try_reserve(units.len()).ok()?;
    text.extend(
        char::decode_utf16(units.iter().copied())
            .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER)),
    );
    Some(text)
}

/// The full image path of `process` (PASSIVE_LEVEL only). `Err` when the
/// kernel has none to give or memory runs out.
///
/// # Safety
/// `process` is a valid, referenced process object; IRQL is PASSIVE_LEVEL.
pub unsafe fn image_path(process: PEPROCESS) -> Result<String, NTSTATUS> {
    let mut name: PUNICODE_STRING = ptr::null_mut();
    // SAFETY: per the caller; on success the kernel allocates `name`, freed below.
    let status = unsafe { ntddk::SeLocateProcessImageName(process, &raw mut name) };
    if status < 0 {
        return Err(status);
    }
    // SAFETY: on success `name` is a valid UNICODE_STRING allocated by the kernel.
    let text = match unsafe { name.as_ref() } {
        Some(string) if !string.Buffer.is_null() && string.Length >= 2 => {
            // SAFETY: Length bytes of Buffer are valid characters.
            let units = unsafe {
                core::slice::from_raw_parts(string.Buffer, usize::from(string.Length / 2))
            };
            utf16_to_string(units).ok_or(STATUS_INSUFFICIENT_RESOURCES)
        }
        _ => Ok(String::new()),
    };
    if !name.is_null() {
        // SAFETY: allocated by SeLocateProcessImageName, freed once, as documented.
        unsafe { ntddk::ExFreePool(name.cast()) };
    }
    text
}

/// Looks up process `pid` and runs `body` with the referenced object.
/// `None` when no such process exists (any more).
pub fn with_process<R>(pid: u32, body: impl FnOnce(PEPROCESS) -> R) -> Option<R> {
    let mut process: PEPROCESS = ptr::null_mut();
    // SAFETY: a lookup by id; on success we hold a reference, dropped below.
    let status = unsafe { ntddk::PsLookupProcessByProcessId(pid as usize as _, &raw mut process) };
    if status < 0 || process.is_null() {
        return None;
    }
    let result = body(process);
    // SAFETY: drops the reference PsLookupProcessByProcessId took.
    unsafe { ntddk::ObfDereferenceObject(process.cast()) };
    Some(result)
}

/// The identity of process `pid`, read at PASSIVE_LEVEL. A process without
/// an image path gets an empty one (the policy engine recognises System by
/// its id); `None` if the process is gone or memory ran out.
pub fn identify(pid: u32) -> Option<Identity> {
    with_process(pid, |process| {
        // A process that has exited is still listed and found by id while
        // references to it remain; its exit notification may already have
        // run, and nothing would remove a record added now.
        // SAFETY: `process` is referenced for the duration of this closure.
        if unsafe { ntddk::PsGetProcessExitStatus(process) } != STATUS_PENDING {
            return None;
        }
        // SAFETY: `process` is referenced for the duration of this closure,
        // and identification runs at PASSIVE_LEVEL (enumeration, notify).
        let creation_key = unsafe { creation_key(process) };
        // SAFETY: as above.
        let image_path = unsafe { image_path_for_policy(process) }?;
        Some(Identity {
            pid,
            creation_key,
            image_path,
        })
    })
    .flatten()
}

/// The image path to classify `process` with: the kernel's path, or an empty
/// one for a process that has none (System, Registry, …). `None` when memory
/// ran out: the process must then not be classified now (an empty path would
/// silently drop its protection); it is classified when next met
/// (`handle_decision.rs`, step 4).
///
/// # Safety
/// As [`image_path`].
pub unsafe fn image_path_for_policy(process: PEPROCESS) -> Option<String> {
    // SAFETY: per the caller.
    match unsafe { image_path(process) } {
        Ok(path) => Some(path),
        Err(STATUS_INSUFFICIENT_RESOURCES) => {
            crate::trace::error(format_args!(
                "no memory for a process image path ({}); the process is classified when next met",
                crate::trace::Status(STATUS_INSUFFICIENT_RESOURCES)
            ));
            None
        }
        Err(_) => Some(String::new()),
    }
}

/// The ids of the running processes, from one consistent snapshot of the
/// kernel's process list (PASSIVE_LEVEL).
///
/// # Errors
/// The status of the failed query (or out of memory).
pub fn running_process_ids() -> Result<Vec<u32>, NTSTATUS> {
    let mut size = 256 * 1024;
    loop {
        let mut buffer: Vec<u64> = Vec::new();
        buffer
            .try_reserve_exact(size / 8)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        buffer.resize(size / 8, 0);
        let mut needed: u32 = 0;
        // SAFETY: the buffer is `size` writable, 8-byte aligned bytes.
        let status = unsafe {
            ZwQuerySystemInformation(
                SystemProcessInformation,
                buffer.as_mut_ptr().cast(),
                size as u32,
                &raw mut needed,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH {
            // The list grows between calls: ask for more than was needed.
            let next = (needed as usize).max(size).saturating_mul(2);
            if next > MAX_PROCESS_LIST_BYTES || next <= size {
                return Err(status);
            }
            size = next.next_multiple_of(8);
            continue;
        }
        if status < 0 {
            return Err(status);
        }
        return parse_process_list(&buffer);
    }
}

/// `N` little-endian bytes at byte `offset` of `words`, if all inside.
fn bytes_at<const N: usize>(words: &[u64], offset: usize) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        let at = offset.checked_add(index)?;
        let word = words.get(at / 8)?;
        *byte = word.to_le_bytes()[at % 8];
    }
    Some(bytes)
}

/// Walks the `NextEntryOffset` chain of the list in `words` (the kernel
/// wrote it into an 8-byte-aligned buffer).
///
/// # Errors
/// `STATUS_INVALID_PARAMETER` if an entry leaves the buffer,
/// `STATUS_INSUFFICIENT_RESOURCES` if the id list cannot grow.
fn parse_process_list(words: &[u64]) -> Result<Vec<u32>, NTSTATUS> {
    const PID_OFFSET: usize = core::mem::offset_of!(SYSTEM_PROCESS_INFORMATION, UniqueProcessId);
    let malformed = STATUS_INVALID_PARAMETER;
    let mut pids = Vec::new();
    let mut offset = 0usize;
    loop {
        let next = u32::from_le_bytes(bytes_at(words, offset).ok_or(malformed)?) as usize;
        let pid_at = offset.checked_add(PID_OFFSET).ok_or(malformed)?;
        let pid = u64::from_le_bytes(bytes_at(words, pid_at).ok_or(malformed)?);
        if let Ok(pid) = u32::try_from(pid) {
            pids.try_reserve(1)
                .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
            pids.push(pid);
        }
        if next == 0 {
            return Ok(pids);
        }
        offset = offset.checked_add(next).ok_or(malformed)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ntddk::{reset_host, with_host};

    fn add_process(pid: u32, time: i64, image: &str) {
        with_host(|host| host.processes.insert(pid, (time, image.into())));
    }

    #[test]
    fn identify_reads_path_and_creation_key_and_frees_what_it_took() {
        reset_host();
        add_process(
            1200,
            777,
            "\\Device\\HarddiskVolume3\\Program Files\\Acme\\agent.exe",
        );
        let identity = identify(1200).unwrap();
        assert_eq!(identity.creation_key, 777);
        assert_eq!(
            identity.image_path,
            "\\Device\\HarddiskVolume3\\Program Files\\Acme\\agent.exe"
        );
        assert_eq!(
            with_host(|host| (host.process_references, host.pool.len())),
            (0, 0)
        );
        assert!(identify(1204).is_none());
    }

    #[test]
    fn the_running_list_has_every_process_even_when_the_first_buffer_is_short() {
        reset_host();
        for pid in (4..40_000).step_by(4) {
            add_process(pid, i64::from(pid), "");
        }
        let pids = running_process_ids().unwrap();
        assert_eq!(pids.len(), 9_999);
        assert_eq!(pids.first(), Some(&4));
    }

    #[test]
    fn a_failing_query_is_reported() {
        reset_host();
        with_host(|host| host.system_information_result = Some(crate::ffi::STATUS_ACCESS_DENIED));
        assert_eq!(running_process_ids(), Err(crate::ffi::STATUS_ACCESS_DENIED));
    }

    #[test]
    fn a_malformed_process_list_is_rejected_not_followed() {
        let mut words = vec![0u64; 32];
        words[0] = 200; // next entry leaves the buffer
        assert_eq!(parse_process_list(&words), Err(STATUS_INVALID_PARAMETER));
        assert_eq!(
            parse_process_list(&[0u64; 1]),
            Err(STATUS_INVALID_PARAMETER)
        );
        let mut single = vec![0u64; 32];
        single[10] = 1234; // UniqueProcessId at byte 80
        assert_eq!(parse_process_list(&single), Ok(vec![1234]));
    }

    #[test]
    fn a_process_whose_path_cannot_be_allocated_is_not_classified_with_an_empty_path() {
        reset_host();
        add_process(1200, 777, "\\Device\\HarddiskVolume3\\agent.exe");
        with_host(|host| host.fail_allocations = true);
        assert!(identify(1200).is_none());
        with_host(|host| host.fail_allocations = false);
        assert!(identify(1200).is_some());
        assert_eq!(with_host(|host| host.process_references), 0);
    }
}
