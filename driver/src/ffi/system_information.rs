//! `ZwQuerySystemInformation`, which the driver uses to enumerate the
//! processes running when it starts. It is exported by `ntoskrnl.exe` but not
//! declared in the WDK headers, so `wdk-sys` has no binding for it: both
//! Windows builds declare it here (the WDK build links it from
//! `ntoskrnl.lib`, the cross build as a `raw-dylib` import).
#![allow(non_snake_case, non_camel_case_types, missing_docs)]

use super::{HANDLE, KPRIORITY, LARGE_INTEGER, ULONG, UNICODE_STRING};
#[cfg(target_os = "windows")]
use super::{NTSTATUS, PULONG, PVOID};

/// The head of `SYSTEM_PROCESS_INFORMATION` (what process enumeration
/// reads); entries are variable-length, chained by `NextEntryOffset`.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct _SYSTEM_PROCESS_INFORMATION {
    pub NextEntryOffset: ULONG,
    pub NumberOfThreads: ULONG,
    pub Reserved: [LARGE_INTEGER; 3usize],
    pub CreateTime: LARGE_INTEGER,
    pub UserTime: LARGE_INTEGER,
    pub KernelTime: LARGE_INTEGER,
    pub ImageName: UNICODE_STRING,
    pub BasePriority: KPRIORITY,
    pub UniqueProcessId: HANDLE,
    pub InheritedFromUniqueProcessId: HANDLE,
}
pub type SYSTEM_PROCESS_INFORMATION = _SYSTEM_PROCESS_INFORMATION;
/// `SystemProcessInformation` class of `ZwQuerySystemInformation`.
#[allow(non_upper_case_globals)]
pub const SystemProcessInformation: u32 = 5;

#[cfg(not(target_os = "windows"))]
pub use super::ntddk::ZwQuerySystemInformation;

#[cfg(target_os = "windows")]
#[cfg_attr(
    not(feature = "wdk"),
    link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
)]
extern "C" {
    pub fn ZwQuerySystemInformation(
        SystemInformationClass: ULONG,
        SystemInformation: PVOID,
        SystemInformationLength: ULONG,
        ReturnLength: PULONG,
    ) -> NTSTATUS;
}
