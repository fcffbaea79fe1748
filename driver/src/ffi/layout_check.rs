//! Checks every struct layout and constant the binding layer declares against
//! an independent source, so a wrong offset fails CI.
//!
//! - Kernel structures and constants: a C file of `_Static_assert`s over the
//!   mingw-w64 DDK headers, compiled with `x86_64-w64-mingw32-gcc` (an LLP64
//!   Windows target, like the driver's).
//! - KMDF structures and function-table indices (mingw ships no WDF headers):
//!   written to the JSON file named by `PROCGUARD_LAYOUT_JSON`, which the
//!   emulator suite compares with Speakeasy's independent definitions.

use core::mem::{align_of, offset_of, size_of};
use std::fmt::Write as _;
use std::string::String;
use std::vec::Vec;
use std::{format, vec};

use super::types::*;
use super::wdf::{_WDFFUNCENUM, WDF_BIND_INFO, WDF_VERSION};

struct StructLayout {
    c_name: &'static str,
    size: usize,
    align: usize,
    /// (C field name, offset)
    fields: Vec<(&'static str, usize)>,
}

/// `layout!(CNAME, RustType { field, c_name = rust_field, ... })`.
macro_rules! layout {
    ($c_name:literal, $ty:ty { $($c_field:ident $(= $rust_field:ident)?),* $(,)? }) => {
        StructLayout {
            c_name: $c_name,
            size: size_of::<$ty>(),
            align: align_of::<$ty>(),
            fields: vec![$((stringify!($c_field), layout!(@offset $ty, $c_field $(, $rust_field)?))),*],
        }
    };
    (@offset $ty:ty, $c_field:ident) => { offset_of!($ty, $c_field) };
    (@offset $ty:ty, $c_field:ident, $rust_field:ident) => { offset_of!($ty, $rust_field) };
}

fn kernel_layouts() -> Vec<StructLayout> {
    vec![
        layout!(
            "UNICODE_STRING",
            UNICODE_STRING {
                Length,
                MaximumLength,
                Buffer
            }
        ),
        layout!(
            "OBJECT_ATTRIBUTES",
            OBJECT_ATTRIBUTES {
                Length,
                RootDirectory,
                ObjectName,
                Attributes,
                SecurityDescriptor,
                SecurityQualityOfService
            }
        ),
        layout!(
            "KEY_VALUE_PARTIAL_INFORMATION",
            KEY_VALUE_PARTIAL_INFORMATION {
                TitleIndex,
                Type,
                DataLength,
                Data
            }
        ),
        layout!(
            "DRIVER_OBJECT",
            DRIVER_OBJECT {
                Type,
                Size,
                DeviceObject,
                Flags,
                DriverStart,
                DriverSize,
                DriverSection,
                DriverExtension,
                DriverName,
                HardwareDatabase,
                FastIoDispatch,
                DriverInit,
                DriverStartIo,
                DriverUnload,
                MajorFunction
            }
        ),
        layout!(
            "OB_PRE_CREATE_HANDLE_INFORMATION",
            OB_PRE_CREATE_HANDLE_INFORMATION {
                DesiredAccess,
                OriginalDesiredAccess
            }
        ),
        layout!(
            "OB_PRE_DUPLICATE_HANDLE_INFORMATION",
            OB_PRE_DUPLICATE_HANDLE_INFORMATION {
                DesiredAccess,
                OriginalDesiredAccess,
                SourceProcess,
                TargetProcess
            }
        ),
        layout!(
            "OB_PRE_OPERATION_PARAMETERS",
            OB_PRE_OPERATION_PARAMETERS {
                CreateHandleInformation,
                DuplicateHandleInformation
            }
        ),
        layout!("OB_PRE_OPERATION_INFORMATION", OB_PRE_OPERATION_INFORMATION {
            Operation, Flags = __bindgen_anon_1, Object, ObjectType, CallContext, Parameters
        }),
        layout!(
            "OB_OPERATION_REGISTRATION",
            OB_OPERATION_REGISTRATION {
                ObjectType,
                Operations,
                PreOperation,
                PostOperation
            }
        ),
        layout!(
            "ERESOURCE",
            ERESOURCE {
                SystemResourcesList,
                OwnerTable,
                ActiveCount,
                Flag,
                SharedWaiters,
                ExclusiveWaiters,
                OwnerEntry,
                ActiveEntries,
                ContentionCount,
                NumberOfSharedWaiters,
                NumberOfExclusiveWaiters,
                Reserved2,
                SpinLock
            }
        ),
        layout!("KEVENT", KEVENT { Header }),
        layout!("LARGE_INTEGER", LARGE_INTEGER { QuadPart }),
        layout!(
            "OB_CALLBACK_REGISTRATION",
            OB_CALLBACK_REGISTRATION {
                Version,
                OperationRegistrationCount,
                Altitude,
                RegistrationContext,
                OperationRegistration
            }
        ),
    ]
}

/// The head of the process list entry (the rest of the structure is not
/// read); checked field by field against mingw's `winternl.h`. Its size is
/// not compared: the driver's type stops after the fields it reads.
fn system_information_layouts() -> Vec<StructLayout> {
    use super::system_information::SYSTEM_PROCESS_INFORMATION;
    let mut layout = layout!(
        "SYSTEM_PROCESS_INFORMATION",
        SYSTEM_PROCESS_INFORMATION {
            NextEntryOffset,
            NumberOfThreads,
            CreateTime,
            UserTime,
            KernelTime,
            ImageName,
            BasePriority,
            UniqueProcessId,
            InheritedFromUniqueProcessId
        }
    );
    layout.size = 0;
    vec![layout]
}

fn wdf_layouts() -> Vec<StructLayout> {
    vec![
        layout!(
            "WDF_DRIVER_CONFIG",
            WDF_DRIVER_CONFIG {
                Size,
                EvtDriverDeviceAdd,
                EvtDriverUnload,
                DriverInitFlags,
                DriverPoolTag
            }
        ),
        layout!(
            "WDF_OBJECT_ATTRIBUTES",
            WDF_OBJECT_ATTRIBUTES {
                Size,
                EvtCleanupCallback,
                EvtDestroyCallback,
                ExecutionLevel,
                SynchronizationScope,
                ParentObject,
                ContextSizeOverride,
                ContextTypeInfo
            }
        ),
        layout!(
            "WDF_DRIVER_GLOBALS",
            WDF_DRIVER_GLOBALS {
                Driver,
                DriverFlags,
                DriverTag,
                DriverName,
                DisplaceDriverUnload
            }
        ),
        layout!(
            "WDF_VERSION",
            WDF_VERSION {
                Major,
                Minor,
                Build
            }
        ),
        layout!(
            "WDF_BIND_INFO",
            WDF_BIND_INFO {
                Size,
                Component,
                Version,
                FuncCount,
                FuncTable,
                Module
            }
        ),
        layout!(
            "WDF_IO_QUEUE_CONFIG",
            WDF_IO_QUEUE_CONFIG {
                Size,
                DispatchType,
                PowerManaged,
                AllowZeroLengthRequests,
                DefaultQueue,
                EvtIoDefault,
                EvtIoRead,
                EvtIoWrite,
                EvtIoDeviceControl,
                EvtIoInternalDeviceControl,
                EvtIoStop,
                EvtIoResume,
                EvtIoCanceledOnQueue,
                Settings,
                Driver
            }
        ),
        layout!(
            "WDF_FILEOBJECT_CONFIG",
            WDF_FILEOBJECT_CONFIG {
                Size,
                EvtDeviceFileCreate,
                EvtFileClose,
                EvtFileCleanup,
                AutoForwardCleanupClose,
                FileObjectClass
            }
        ),
    ]
}

/// Constants with the C expression that must equal them.
fn kernel_constants() -> Vec<(&'static str, i64)> {
    vec![
        ("STATUS_SUCCESS", STATUS_SUCCESS.into()),
        ("STATUS_UNSUCCESSFUL", STATUS_UNSUCCESSFUL.into()),
        ("STATUS_NOT_IMPLEMENTED", STATUS_NOT_IMPLEMENTED.into()),
        ("STATUS_INVALID_PARAMETER", STATUS_INVALID_PARAMETER.into()),
        ("STATUS_ACCESS_DENIED", STATUS_ACCESS_DENIED.into()),
        ("STATUS_BUFFER_TOO_SMALL", STATUS_BUFFER_TOO_SMALL.into()),
        (
            "STATUS_OBJECT_NAME_NOT_FOUND",
            STATUS_OBJECT_NAME_NOT_FOUND.into(),
        ),
        (
            "STATUS_INSUFFICIENT_RESOURCES",
            STATUS_INSUFFICIENT_RESOURCES.into(),
        ),
        ("STATUS_NAME_TOO_LONG", STATUS_NAME_TOO_LONG.into()),
        ("STATUS_TIMEOUT", STATUS_TIMEOUT.into()),
        ("STATUS_NO_MORE_ENTRIES", STATUS_NO_MORE_ENTRIES.into()),
        ("STATUS_CANCELLED", STATUS_CANCELLED.into()),
        ("STATUS_NOT_FOUND", STATUS_NOT_FOUND.into()),
        (
            "STATUS_INVALID_DEVICE_STATE",
            STATUS_INVALID_DEVICE_STATE.into(),
        ),
        ("STATUS_SHARING_VIOLATION", STATUS_SHARING_VIOLATION.into()),
        ("NotificationEvent", _EVENT_TYPE::NotificationEvent.into()),
        (
            "SynchronizationEvent",
            _EVENT_TYPE::SynchronizationEvent.into(),
        ),
        ("Executive", _KWAIT_REASON::Executive.into()),
        ("KernelMode", _MODE::KernelMode.into()),
        ("STATUS_BUFFER_OVERFLOW", STATUS_BUFFER_OVERFLOW.into()),
        (
            "STATUS_FLT_INSTANCE_ALTITUDE_COLLISION",
            STATUS_FLT_INSTANCE_ALTITUDE_COLLISION.into(),
        ),
        (
            "OB_FLT_REGISTRATION_VERSION",
            OB_FLT_REGISTRATION_VERSION.into(),
        ),
        (
            "OB_OPERATION_HANDLE_CREATE",
            OB_OPERATION_HANDLE_CREATE.into(),
        ),
        (
            "OB_OPERATION_HANDLE_DUPLICATE",
            OB_OPERATION_HANDLE_DUPLICATE.into(),
        ),
        (
            "OB_PREOP_SUCCESS",
            _OB_PREOP_CALLBACK_STATUS::OB_PREOP_SUCCESS.into(),
        ),
        ("OBJ_CASE_INSENSITIVE", OBJ_CASE_INSENSITIVE.into()),
        ("OBJ_KERNEL_HANDLE", OBJ_KERNEL_HANDLE.into()),
        ("KEY_READ", KEY_READ.into()),
        ("REG_SZ", REG_SZ.into()),
        ("REG_BINARY", REG_BINARY.into()),
        ("REG_DWORD", REG_DWORD.into()),
        (
            "KeyValuePartialInformation",
            _KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation.into(),
        ),
        (
            "DPFLTR_IHVDRIVER_ID",
            _DPFLTR_TYPE::DPFLTR_IHVDRIVER_ID.into(),
        ),
        ("DPFLTR_ERROR_LEVEL", DPFLTR_ERROR_LEVEL.into()),
        ("DPFLTR_INFO_LEVEL", DPFLTR_INFO_LEVEL.into()),
        (
            "POOL_FLAG_NON_PAGED",
            i64::try_from(POOL_FLAG_NON_PAGED).unwrap_or(-1),
        ),
    ]
}

/// Access rights: mingw keeps them in the user-mode `winnt.h` (the WDK has
/// them in `wdm.h`/`ntddk.h` too; same values).
fn access_right_constants() -> Vec<(&'static str, i64)> {
    vec![
        ("PROCESS_TERMINATE", PROCESS_TERMINATE.into()),
        ("PROCESS_CREATE_THREAD", PROCESS_CREATE_THREAD.into()),
        ("PROCESS_SET_SESSIONID", PROCESS_SET_SESSIONID.into()),
        ("PROCESS_VM_OPERATION", PROCESS_VM_OPERATION.into()),
        ("PROCESS_VM_READ", PROCESS_VM_READ.into()),
        ("PROCESS_VM_WRITE", PROCESS_VM_WRITE.into()),
        ("PROCESS_DUP_HANDLE", PROCESS_DUP_HANDLE.into()),
        ("PROCESS_CREATE_PROCESS", PROCESS_CREATE_PROCESS.into()),
        ("PROCESS_SET_QUOTA", PROCESS_SET_QUOTA.into()),
        ("PROCESS_SET_INFORMATION", PROCESS_SET_INFORMATION.into()),
        (
            "PROCESS_QUERY_INFORMATION",
            PROCESS_QUERY_INFORMATION.into(),
        ),
        ("PROCESS_SUSPEND_RESUME", PROCESS_SUSPEND_RESUME.into()),
        (
            "PROCESS_QUERY_LIMITED_INFORMATION",
            PROCESS_QUERY_LIMITED_INFORMATION.into(),
        ),
        ("THREAD_TERMINATE", THREAD_TERMINATE.into()),
        ("THREAD_SUSPEND_RESUME", THREAD_SUSPEND_RESUME.into()),
        ("THREAD_SET_CONTEXT", THREAD_SET_CONTEXT.into()),
        ("THREAD_SET_INFORMATION", THREAD_SET_INFORMATION.into()),
    ]
}

fn c_source(layouts: &[StructLayout], constants: &[(&str, i64)]) -> String {
    let mut c = String::from(
        "/* generated by driver/src/ffi/layout_check.rs */\n#include <ntifs.h>\n#include <ntddk.h>\n#include <stddef.h>\n",
    );
    // mingw's wdm.h declares POOL_FLAG_* only for newer NTDDI targets.
    c.push_str("#ifndef POOL_FLAG_NON_PAGED\n#define POOL_FLAG_NON_PAGED 0x40ULL\n#define PROCGUARD_POOL_FLAG_FROM_DOCS 1\n#endif\n");
    c.push_str("#ifndef STATUS_FLT_INSTANCE_ALTITUDE_COLLISION\n#include <ntstatus.h>\n#endif\n");
    for layout in layouts {
        let name = layout.c_name;
        if layout.size != 0 {
            let _ = writeln!(
                c,
                "_Static_assert(sizeof({name}) == {}, \"sizeof {name}\");",
                layout.size
            );
        }
        let _ = writeln!(
            c,
            "_Static_assert(_Alignof({name}) == {}, \"alignof {name}\");",
            layout.align
        );
        for (field, offset) in &layout.fields {
            let _ = writeln!(
                c,
                "_Static_assert(offsetof({name}, {field}) == {offset}, \"{name}.{field}\");"
            );
        }
    }
    for (name, value) in constants {
        let _ = writeln!(
            c,
            "_Static_assert((long long)({name}) == {value}LL, \"{name}\");"
        );
    }
    c
}

fn mingw_gcc() -> Option<&'static str> {
    let candidate = "x86_64-w64-mingw32-gcc";
    std::process::Command::new(candidate)
        .arg("--version")
        .output()
        .ok()
        .map(|_| candidate)
}

fn compile(source: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("procguard-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!(
        "check-{:x}.c",
        source.len() ^ source.as_ptr() as usize
    ));
    std::fs::write(&file, source).expect("write C source");
    let gcc = mingw_gcc().expect(
        "x86_64-w64-mingw32-gcc is required for the layout check (Debian: gcc-mingw-w64-x86-64, mingw-w64-x86-64-dev; \
         `cargo xtask test` installs them)",
    );
    let output = std::process::Command::new(gcc)
        .args([
            "-fsyntax-only",
            "-std=c11",
            "-I/usr/share/mingw-w64/include/ddk",
        ])
        .arg(&file)
        .output()
        .expect("run mingw gcc");
    let _ = std::fs::remove_file(&file);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn kernel_layouts_and_constants_match_the_mingw_ddk_headers() {
    let (ok, errors) = compile(&c_source(&kernel_layouts(), &kernel_constants()));
    assert!(
        ok,
        "binding layer disagrees with the DDK headers:\n{errors}"
    );
    let rights = c_source(&[], &access_right_constants()).replace(
        "#include <ntifs.h>\n#include <ntddk.h>\n",
        "#include <windows.h>\n",
    );
    let (ok, errors) = compile(&rights);
    assert!(ok, "access rights disagree with winnt.h:\n{errors}");
    let process_list = c_source(
        &system_information_layouts(),
        &[("SystemProcessInformation", 5)],
    )
    .replace(
        "#include <ntifs.h>\n#include <ntddk.h>\n",
        "#include <windows.h>\n#include <winternl.h>\n",
    );
    let (ok, errors) = compile(&process_list);
    assert!(
        ok,
        "SYSTEM_PROCESS_INFORMATION disagrees with winternl.h:\n{errors}"
    );
}

#[test]
fn the_layout_check_fails_on_a_wrong_offset() {
    // The check must be able to fail: a deliberately wrong layout is caught.
    let mut layouts = kernel_layouts();
    let pre = layouts
        .iter_mut()
        .find(|layout| layout.c_name == "OB_PRE_OPERATION_INFORMATION")
        .expect("present");
    for field in &mut pre.fields {
        if field.0 == "Parameters" {
            field.1 += 8;
        }
    }
    let (ok, errors) = compile(&c_source(&layouts, &[("OB_OPERATION_HANDLE_DUPLICATE", 1)]));
    assert!(!ok, "a wrong offset compiled");
    assert!(
        errors.contains("OB_PRE_OPERATION_INFORMATION.Parameters"),
        "{errors}"
    );
    assert!(errors.contains("OB_OPERATION_HANDLE_DUPLICATE"), "{errors}");
}

fn json_layouts(layouts: &[StructLayout]) -> String {
    let entries: Vec<String> = layouts
        .iter()
        .map(|layout| {
            let fields: Vec<String> = layout
                .fields
                .iter()
                .map(|(name, offset)| format!("\"{name}\": {offset}"))
                .collect();
            format!(
                "\"{}\": {{\"size\": {}, \"align\": {}, \"fields\": {{{}}}}}",
                layout.c_name,
                layout.size,
                layout.align,
                fields.join(", ")
            )
        })
        .collect();
    entries.join(",\n    ")
}

/// The KMDF indices the driver calls through, by function name.
fn wdf_indices() -> Vec<(&'static str, i32)> {
    use _WDFFUNCENUM as E;
    vec![
        (
            "WdfControlDeviceInitAllocate",
            E::WdfControlDeviceInitAllocateTableIndex,
        ),
        (
            "WdfControlFinishInitializing",
            E::WdfControlFinishInitializingTableIndex,
        ),
        ("WdfDeviceInitFree", E::WdfDeviceInitFreeTableIndex),
        (
            "WdfDeviceInitAssignName",
            E::WdfDeviceInitAssignNameTableIndex,
        ),
        ("WdfDeviceCreate", E::WdfDeviceCreateTableIndex),
        (
            "WdfDeviceCreateSymbolicLink",
            E::WdfDeviceCreateSymbolicLinkTableIndex,
        ),
        ("WdfDriverCreate", E::WdfDriverCreateTableIndex),
        ("WdfIoQueueCreate", E::WdfIoQueueCreateTableIndex),
        ("WdfObjectDelete", E::WdfObjectDeleteTableIndex),
        (
            "WdfRequestCompleteWithInformation",
            E::WdfRequestCompleteWithInformationTableIndex,
        ),
        (
            "WdfRequestRetrieveInputBuffer",
            E::WdfRequestRetrieveInputBufferTableIndex,
        ),
        (
            "WdfRequestRetrieveOutputBuffer",
            E::WdfRequestRetrieveOutputBufferTableIndex,
        ),
        (
            "WdfDeviceInitSetFileObjectConfig",
            E::WdfDeviceInitSetFileObjectConfigTableIndex,
        ),
        ("WdfIoQueueGetState", E::WdfIoQueueGetStateTableIndex),
        (
            "WdfIoQueueRetrieveNextRequest",
            E::WdfIoQueueRetrieveNextRequestTableIndex,
        ),
        (
            "WdfIoQueueRetrieveRequestByFileObject",
            E::WdfIoQueueRetrieveRequestByFileObjectTableIndex,
        ),
        (
            "WdfRequestGetFileObject",
            E::WdfRequestGetFileObjectTableIndex,
        ),
        (
            "WdfRequestForwardToIoQueue",
            E::WdfRequestForwardToIoQueueTableIndex,
        ),
    ]
}

/// Writes the WDF manifest when `PROCGUARD_LAYOUT_JSON` names a file
/// (`cargo xtask test` sets it; the emulator suite reads it).
#[test]
fn wdf_layouts_and_indices_are_written_for_the_emulator_suite() {
    let indices: Vec<String> = wdf_indices()
        .iter()
        .map(|(name, index)| format!("\"{name}\": {index}"))
        .collect();
    let json = format!(
        "{{\n  \"function_count\": {},\n  \"indices\": {{{}}},\n  \"layouts\": {{\n    {}\n  }}\n}}\n",
        _WDFFUNCENUM::WdfFunctionTableNumEntries,
        indices.join(", "),
        json_layouts(&wdf_layouts())
    );
    // Facts recorded in TOOLCHAIN.md from the KMDF 1.33 headers, as a first line of defence.
    assert_eq!(size_of::<WDF_DRIVER_CONFIG>(), 32);
    assert_eq!(size_of::<WDF_OBJECT_ATTRIBUTES>(), 56);
    assert_eq!(offset_of!(WDF_DRIVER_GLOBALS, DisplaceDriverUnload), 48);
    assert_eq!(size_of::<WDF_BIND_INFO>(), 48);
    assert_eq!(size_of::<WDF_FILEOBJECT_CONFIG>(), 40);
    assert_eq!(offset_of!(WDF_FILEOBJECT_CONFIG, FileObjectClass), 36);
    if let Some(path) = std::env::var_os("PROCGUARD_LAYOUT_JSON") {
        std::fs::write(path, json).expect("write layout manifest");
    }
}
