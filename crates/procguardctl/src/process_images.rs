//! [`ImageLookup`] on Windows: the NT image path of a running process,
//! `OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION)` then
//! `QueryFullProcessImageNameW(PROCESS_NAME_NATIVE)`
//! (`\Device\HarddiskVolume3\...\x.exe`, the form the policy matches).
//! A process that has exited, or that the caller may not query (a
//! protected process, without the right privileges), has no image: `None`.

use windows_sys::Win32::Foundation::{CloseHandle, FALSE};
use windows_sys::Win32::System::Threading::{
    OpenProcess, QueryFullProcessImageNameW, PROCESS_NAME_NATIVE, PROCESS_QUERY_LIMITED_INFORMATION,
};

use crate::events::ImageLookup;

/// Looks images up in the running system.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessImages;

impl ImageLookup for ProcessImages {
    fn image(&mut self, pid: u32) -> Option<String> {
        // The idle process and System have no image file.
        if pid == 0 || pid == 4 {
            return None;
        }
        // SAFETY: no handle is inherited; a failure returns null.
        let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid) };
        if process.is_null() {
            return None;
        }
        let mut buffer = vec![0u16; 32 * 1024];
        let mut length = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
        // SAFETY: `process` is open with the right the call needs; `buffer`
        // holds `length` writable units; `length` is writable.
        let ok = unsafe {
            QueryFullProcessImageNameW(
                process,
                PROCESS_NAME_NATIVE,
                buffer.as_mut_ptr(),
                &raw mut length,
            )
        };
        // SAFETY: opened above, closed once.
        unsafe { CloseHandle(process) };
        if ok == 0 {
            return None;
        }
        buffer.get(..length as usize).map(String::from_utf16_lossy)
    }
}
