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

use procguard_protocol::ask::ImageName;

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

/// The image file name an ask request carries for a process whose image
/// path is `path`: its last component (what a rule's `names` match), at
/// most [`procguard_protocol::ask::IMAGE_NAME_UNITS`] UTF-16 units, cut and flagged beyond; empty for
/// an empty path. No allocation.
pub fn image_file_name(path: &str) -> ImageName {
    let mut name = ImageName::EMPTY;
    let mut units = procguard_policy::identity::file_name(path).encode_utf16();
    let mut len = 0u16;
    for (slot, unit) in name.units.iter_mut().zip(units.by_ref()) {
        *slot = unit;
        len += 1;
    }
    name.len = len;
    name.truncated = units.next().is_some();
    name
}

/// Bytes `units` take as UTF-8 (unpaired surrogates count as U+FFFD).
fn utf8_length(units: &[u16]) -> usize {
    char::decode_utf16(units.iter().copied())
        .map(|unit| unit.map_or(char::REPLACEMENT_CHARACTER.len_utf8(), char::len_utf8))
        .fold(0usize, usize::saturating_add)
}

/// `units` as UTF-8 (unpaired surrogates become U+FFFD), in one allocation
/// of exactly the length needed: `None` when it fails. Nothing here can
/// grow a buffer or panic, so running out of pool on any path (the notify
/// routine, enumeration) never reaches the panic handler and its bug check.
fn utf16_to_string(units: &[u16]) -> Option<String> {
    let length = utf8_length(units);
    let mut bytes: Vec<u8> = Vec::new();
    bytes.try_reserve_exact(length).ok()?;
    let spare = bytes.spare_capacity_mut();
    let mut written = 0usize;
    for unit in char::decode_utf16(units.iter().copied()) {
        let mut encoded = [0u8; 4];
        let text = unit
            .unwrap_or(char::REPLACEMENT_CHARACTER)
            .encode_utf8(&mut encoded);
        for &byte in text.as_bytes() {
            spare.get_mut(written)?.write(byte);
            written += 1;
        }
    }
    if written != length {
        return None;
    }
    // SAFETY: the first `written` bytes of the spare capacity were
    // initialised above, and `written` is within it (`get_mut` checked).
    unsafe { bytes.set_len(written) };
    String::from_utf8(bytes).ok()
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
/// silently drop its protection); it is noted and classified at a later
/// process notification (`pending_classification.rs`).
///
/// # Safety
/// As [`image_path`].
pub unsafe fn image_path_for_policy(process: PEPROCESS) -> Option<String> {
    // SAFETY: per the caller.
    match unsafe { image_path(process) } {
        Ok(path) => Some(path),
        Err(STATUS_INSUFFICIENT_RESOURCES) => {
            crate::platform::trace::error(format_args!(
                "no memory for a process image path ({}); the process is classified at a later notification",
                crate::platform::trace::Status(STATUS_INSUFFICIENT_RESOURCES)
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
        zeroed_words(&mut buffer, size / 8).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
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

/// Makes the empty `words` `count` zeros long, allocating fallibly; unlike
/// `resize`, no path of it can grow infallibly (and so panic).
fn zeroed_words(words: &mut Vec<u64>, count: usize) -> Option<()> {
    if !words.is_empty() {
        return None;
    }
    words.try_reserve_exact(count).ok()?;
    let spare = words.spare_capacity_mut();
    for word in spare.get_mut(..count)? {
        word.write(0);
    }
    // SAFETY: the first `count` elements were initialised just above
    // (`get_mut` checked they are within the capacity).
    unsafe { words.set_len(count) };
    Some(())
}

/// Appends `value`, allocating fallibly; unlike `push`, no path of it can
/// grow infallibly (and so panic).
fn try_push<T>(items: &mut Vec<T>, value: T) -> Option<()> {
    items.try_reserve(1).ok()?;
    let length = items.len();
    items.spare_capacity_mut().first_mut()?.write(value);
    // SAFETY: the element after the initialised ones was just written.
    unsafe { items.set_len(length + 1) };
    Some(())
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
            try_push(&mut pids, pid).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
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
    use crate::ffi::ntddk::test_heap;
    use crate::ffi::ntddk::{reset_host, with_host};

    fn add_process(pid: u32, time: i64, image: &str) {
        with_host(|host| host.processes.insert(pid, (time, image.into())));
    }

    #[test]
    fn the_image_file_name_is_the_last_component_cut_at_64_units() {
        let name = image_file_name("\\Device\\HarddiskVolume3\\Program Files\\Acme\\agent.exe");
        assert_eq!(String::from_utf16(name.as_units()).unwrap(), "agent.exe");
        assert!(!name.truncated);
        assert_eq!(image_file_name(""), ImageName::EMPTY);
        assert_eq!(image_file_name("\\Device\\dir\\"), ImageName::EMPTY);
        // No separator: the whole path is the name (System's empty path aside).
        assert_eq!(image_file_name("Registry").as_units().len(), 8);
        // Exactly 64 units fit; one more is cut and flagged. A character
        // outside the BMP counts as its two UTF-16 units.
        let exact = "a".repeat(60) + ".exe";
        let name = image_file_name(&format!("\\x\\{exact}"));
        assert_eq!((name.len, name.truncated), (64, false));
        let long = format!("\\x\\\u{1f3ae}{exact}");
        let name = image_file_name(&long);
        assert_eq!((name.len, name.truncated), (64, true));
        assert_eq!(&name.as_units()[..2], &[0xD83C, 0xDFAE]);
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

    const NON_ASCII_PATHS: [&str; 4] = [
        "\\Device\\HarddiskVolume3\\Users\\J\u{fc}rgen\\B\u{fc}ro\\agent.exe",
        "\\Device\\HarddiskVolume3\\\u{30d7}\u{30ed}\u{30b0}\u{30e9}\u{30e0}\\\u{5b88}\u{308b}.exe",
        "\\Device\\HarddiskVolume3\\Games\\\u{1f3ae}\u{1f3ae}\u{1f3ae}.exe",
        "\u{42f}\u{43d}\u{434}\u{435}\u{43a}\u{441}",
    ];

    #[test]
    fn a_non_ascii_path_is_converted_in_exactly_one_allocation() {
        for path in NON_ASCII_PATHS {
            let units: Vec<u16> = path.encode_utf16().collect();
            let (text, allocations) = test_heap::with_heap(false, || utf16_to_string(&units));
            assert_eq!(text.as_deref(), Some(path));
            // A second one would be an infallible regrowth: a bug check
            // when the pool is exhausted.
            assert_eq!(allocations, 1, "{path}");
        }
    }

    #[test]
    fn a_failed_allocation_gives_no_path_instead_of_a_bug_check() {
        for path in NON_ASCII_PATHS {
            let units: Vec<u16> = path.encode_utf16().collect();
            let (text, _) = test_heap::with_heap(true, || utf16_to_string(&units));
            assert_eq!(text, None, "{path}");
        }
    }

    #[test]
    fn unpaired_surrogates_become_replacement_characters_of_the_computed_length() {
        let units = [0x41, 0xD800, 0x42, 0xDC00];
        assert_eq!(utf8_length(&units), 8);
        assert_eq!(
            utf16_to_string(&units).as_deref(),
            Some("A\u{fffd}B\u{fffd}")
        );
        assert_eq!(utf16_to_string(&[]).as_deref(), Some(""));
    }

    #[test]
    fn identify_keeps_a_non_ascii_path_whole() {
        reset_host();
        for (index, path) in NON_ASCII_PATHS.iter().enumerate() {
            let pid = 1200 + 4 * index as u32;
            add_process(pid, 777, path);
            assert_eq!(identify(pid).unwrap().image_path, *path);
        }
        assert_eq!(
            with_host(|host| (host.process_references, host.pool.len())),
            (0, 0)
        );
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
