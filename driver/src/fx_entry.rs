//! The KMDF entry stub of the cross build: the job `WdfDriverEntry.lib`'s
//! `FxDriverEntry` does in the Windows build.
//!
//! The image's entry point binds to the framework (`WdfVersionBind` from
//! `WDFLDR.SYS`, which fills the function table `ffi::wdf` calls through),
//! runs [`driver_entry`], and arranges for `WdfVersionUnbind` after the
//! driver's unload. Both builds therefore run the same WDF code path.
#![allow(non_snake_case)]

use core::ptr::{self, addr_of, addr_of_mut};

use crate::driver_entry::driver_entry;
use crate::ffi::types::{
    NTSTATUS, PDRIVER_OBJECT, PDRIVER_UNLOAD, PUNICODE_STRING, PVOID, STATUS_INVALID_PARAMETER,
    STATUS_NAME_TOO_LONG, ULONG, UNICODE_STRING,
};
use crate::ffi::wdf::table::{WdfDriverGlobals, WdfFunctions_01029};
use crate::ffi::wdf::{_WDFFUNCENUM, KMDF_BIND_MAJOR, KMDF_BIND_MINOR, WDF_BIND_INFO, WDF_VERSION};
use crate::platform::trace;

#[link(name = "WDFLDR.SYS", kind = "raw-dylib", modifiers = "+verbatim")]
extern "C" {
    fn WdfVersionBind(
        DriverObject: PDRIVER_OBJECT,
        RegistryPath: PUNICODE_STRING,
        BindInfo: *mut WDF_BIND_INFO,
        ComponentGlobals: *mut PVOID,
    ) -> NTSTATUS;
    fn WdfVersionUnbind(
        RegistryPath: PUNICODE_STRING,
        BindInfo: *mut WDF_BIND_INFO,
        ComponentGlobals: PVOID,
    ) -> NTSTATUS;
}

/// `L"KmdfLibrary"`, NUL-terminated.
static mut COMPONENT: [u16; 12] = crate::platform::wide_string::utf16("KmdfLibrary");

/// The bind of the floor's framework, KMDF 1.29 (Windows 10 1903), in the
/// plain 48-byte form: `{1, 29, 0}` with 1.29's 454 functions, both from
/// `windows-support.toml` `[bind]` (through `build.rs`).
///
/// Why this form: the library's register-client path (open-source
/// `FxLibraryCommonRegisterClient`, fxlibrarycommon.cpp) refuses a
/// `FuncCount` above its own and accepts, below 1.31's count, only counts of
/// released versions — 454 is 1.29's — so one image binds 1903's 1.29, 2004's
/// 1.31 and Windows 11's 1.33. The 1.33 bind this replaced (458 functions) is
/// refused by 1903/1909 (458 > 454). The v2 "minimum version" bind info is
/// interpreted by `WDFLDR.SYS`'s closed `WdfBindClientHelper`, which no source
/// here shows; the WDK build uses it through `WdfDriverEntry.lib`.
static mut BIND_INFO: WDF_BIND_INFO = WDF_BIND_INFO {
    Size: core::mem::size_of::<WDF_BIND_INFO>() as ULONG,
    Component: addr_of_mut!(COMPONENT).cast(),
    Version: WDF_VERSION {
        Major: KMDF_BIND_MAJOR,
        Minor: KMDF_BIND_MINOR,
        Build: 0,
    },
    FuncCount: _WDFFUNCENUM::WdfFunctionTableNumEntries as ULONG,
    FuncTable: addr_of_mut!(WdfFunctions_01029),
    Module: ptr::null_mut(),
};

/// Service key paths are ~60 characters; 512 leaves room for any real one.
const REGISTRY_PATH_CAPACITY: usize = 512;
static mut REGISTRY_PATH_BUFFER: [u16; REGISTRY_PATH_CAPACITY] = [0; REGISTRY_PATH_CAPACITY];
static mut REGISTRY_PATH: UNICODE_STRING = UNICODE_STRING {
    Length: 0,
    MaximumLength: 0,
    Buffer: ptr::null_mut(),
};
/// The unload routine `WdfDriverCreate` installed, called before unbinding.
static mut DISPLACED_UNLOAD: PDRIVER_UNLOAD = None;

/// The image entry point (`/ENTRY:FxDriverEntry`).
///
/// # Safety
/// Called once by the I/O manager with a valid driver object and registry path.
#[no_mangle]
pub unsafe extern "system" fn FxDriverEntry(
    driver: PDRIVER_OBJECT,
    registry_path: PUNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: the I/O manager passes a valid registry path (checked for null).
    let Some(path) = (unsafe { registry_path.as_ref() }) else {
        return STATUS_INVALID_PARAMETER;
    };
    let units = usize::from(path.Length / 2);
    if driver.is_null() || path.Buffer.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    if units >= REGISTRY_PATH_CAPACITY {
        return STATUS_NAME_TOO_LONG;
    }
    // SAFETY: entry runs once, single-threaded, before anything reads these
    // statics; `units` is below the buffer's capacity and the source holds
    // `Length` bytes.
    unsafe {
        ptr::copy_nonoverlapping(
            path.Buffer,
            addr_of_mut!(REGISTRY_PATH_BUFFER).cast::<u16>(),
            units,
        )
    };
    let own_path = UNICODE_STRING {
        Length: path.Length & !1,
        MaximumLength: (REGISTRY_PATH_CAPACITY * 2) as u16,
        Buffer: addr_of_mut!(REGISTRY_PATH_BUFFER).cast(),
    };
    // SAFETY: as above, single-threaded initialisation.
    unsafe { addr_of_mut!(REGISTRY_PATH).write(own_path) };

    // SAFETY: all four pointers are valid statics or the caller's driver object.
    let status = unsafe {
        WdfVersionBind(
            driver,
            addr_of_mut!(REGISTRY_PATH),
            addr_of_mut!(BIND_INFO),
            addr_of_mut!(WdfDriverGlobals).cast(),
        )
    };
    if status < 0 {
        trace::error(format_args!(
            "WdfVersionBind failed with {}",
            trace::Status(status)
        ));
        return status;
    }

    // SAFETY: bound; driver object and path from the I/O manager.
    let status = unsafe { driver_entry(driver, registry_path) };
    if status < 0 {
        unbind();
        return status;
    }

    // SAFETY: bind succeeded, so the globals pointer is valid.
    let globals = unsafe { addr_of!(WdfDriverGlobals).read() };
    // SAFETY: `globals` is the framework's driver globals block (non-null after bind).
    let displace = !globals.is_null() && unsafe { (*globals).DisplaceDriverUnload } != 0;
    if displace {
        // SAFETY: the driver object is ours during entry; single-threaded.
        unsafe {
            DISPLACED_UNLOAD = (*driver).DriverUnload;
        }
        // SAFETY: as above.
        unsafe { (*driver).DriverUnload = Some(fx_stub_driver_unload) };
    }
    status
}

fn unbind() {
    // SAFETY: called once, after a successful bind, with the same statics.
    let status = unsafe {
        WdfVersionUnbind(
            addr_of_mut!(REGISTRY_PATH),
            addr_of_mut!(BIND_INFO),
            addr_of!(WdfDriverGlobals).read().cast(),
        )
    };
    if status < 0 {
        trace::error(format_args!(
            "WdfVersionUnbind failed with {}",
            trace::Status(status)
        ));
    }
}

/// Unload: the framework's own unload (which calls `EvtDriverUnload`), then unbind.
unsafe extern "C" fn fx_stub_driver_unload(driver: PDRIVER_OBJECT) {
    // SAFETY: written once during entry, read once here at unload.
    let displaced = unsafe { addr_of!(DISPLACED_UNLOAD).read() };
    if let Some(unload) = displaced {
        // SAFETY: the framework's unload routine, called as the I/O manager would.
        unsafe { unload(driver) };
    }
    unbind();
}
