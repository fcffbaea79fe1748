//! KMDF calls for the builds without the WDK.
//!
//! A KMDF driver does not import framework functions by name: `WdfVersionBind`
//! (called by the entry stub, `fx_entry.rs`) hands it a table of function
//! pointers, and every `WdfXxx` call is `WdfFunctions[WdfXxxTableIndex](globals, ...)`.
//! `wdk-sys` generates exactly that behind `call_unsafe_wdf_function_binding!`;
//! this module provides the same macro over the same table for the cross
//! build, and over host test doubles for `cargo test`.
//!
//! The indices are `WDFFUNCENUM` (`wdffuncenum.h`; the table only grows, so an
//! index is the same in every KMDF 1.x that has the function); the emulator
//! suite checks each one against an independent record of the table order.
//! The driver binds the floor's KMDF ([`KMDF_BIND_MINOR`], from
//! `windows-support.toml` through `build.rs`), so every index it calls must be
//! below that version's function count: checked at compile time below, in
//! the package step (`[[wdf_function]]` rows) and by the emulator.
#![allow(non_snake_case, non_upper_case_globals, missing_docs)]

#[cfg(target_os = "windows")]
use super::types::*;

/// One slot of the framework's function table (`wdk_sys::WDFFUNC`).
pub type WDFFUNC = Option<unsafe extern "C" fn()>;

include!(concat!(env!("OUT_DIR"), "/kmdf_bind.rs"));

/// `_WDFFUNCENUM`: indices into the KMDF function table.
pub mod _WDFFUNCENUM {
    pub type Type = i32;
    pub const WdfControlDeviceInitAllocateTableIndex: Type = 25;
    pub const WdfControlFinishInitializingTableIndex: Type = 27;
    pub const WdfDeviceInitFreeTableIndex: Type = 54;
    pub const WdfDeviceInitAssignNameTableIndex: Type = 67;
    pub const WdfDeviceInitSetFileObjectConfigTableIndex: Type = 71;
    pub const WdfDeviceCreateTableIndex: Type = 75;
    pub const WdfDeviceCreateSymbolicLinkTableIndex: Type = 80;
    pub const WdfDriverCreateTableIndex: Type = 116;
    pub const WdfIoQueueCreateTableIndex: Type = 152;
    pub const WdfIoQueueGetStateTableIndex: Type = 153;
    pub const WdfIoQueueRetrieveNextRequestTableIndex: Type = 158;
    pub const WdfIoQueueRetrieveRequestByFileObjectTableIndex: Type = 159;
    pub const WdfObjectDeleteTableIndex: Type = 208;
    pub const WdfRequestCompleteWithInformationTableIndex: Type = 265;
    pub const WdfRequestRetrieveInputBufferTableIndex: Type = 269;
    pub const WdfRequestRetrieveOutputBufferTableIndex: Type = 270;
    pub const WdfRequestGetFileObjectTableIndex: Type = 277;
    pub const WdfRequestForwardToIoQueueTableIndex: Type = 281;
    pub const WdfWorkItemCreateTableIndex: Type = 379;
    pub const WdfWorkItemEnqueueTableIndex: Type = 380;
    pub const WdfWorkItemFlushTableIndex: Type = 382;
    /// `WdfFunctionTableNumEntries` of the bound version (454 for 1.29): the
    /// `FuncCount` of the bind and the bound of every table read.
    pub const WdfFunctionTableNumEntries: Type = super::KMDF_BIND_FUNCTION_COUNT as Type;

    /// Every index the driver calls exists in the bound version's table.
    const _: () = {
        let used = [
            WdfControlDeviceInitAllocateTableIndex,
            WdfControlFinishInitializingTableIndex,
            WdfDeviceInitFreeTableIndex,
            WdfDeviceInitAssignNameTableIndex,
            WdfDeviceCreateTableIndex,
            WdfDeviceCreateSymbolicLinkTableIndex,
            WdfDriverCreateTableIndex,
            WdfIoQueueCreateTableIndex,
            WdfObjectDeleteTableIndex,
            WdfRequestCompleteWithInformationTableIndex,
            WdfRequestRetrieveInputBufferTableIndex,
            WdfRequestRetrieveOutputBufferTableIndex,
            WdfDeviceInitSetFileObjectConfigTableIndex,
            WdfIoQueueGetStateTableIndex,
            WdfIoQueueRetrieveNextRequestTableIndex,
            WdfIoQueueRetrieveRequestByFileObjectTableIndex,
            WdfRequestGetFileObjectTableIndex,
            WdfRequestForwardToIoQueueTableIndex,
            WdfWorkItemCreateTableIndex,
            WdfWorkItemEnqueueTableIndex,
            WdfWorkItemFlushTableIndex,
        ];
        let mut i = 0;
        while i < used.len() {
            assert!(used[i] >= 0 && used[i] < WdfFunctionTableNumEntries);
            i += 1;
        }
    };
}

/// The table and the globals the loader hands out at bind time.
#[cfg(target_os = "windows")]
pub mod table {
    use super::{_WDFFUNCENUM, WDFFUNC};
    use crate::ffi::types::PWDF_DRIVER_GLOBALS;

    /// Pointer to the framework's function table, written by `WdfVersionBind`
    /// through `WDF_BIND_INFO.FuncTable` (the WDK names it the same way, after
    /// the bound version: 1.29).
    pub static mut WdfFunctions_01029: *const WDFFUNC = core::ptr::null();
    /// The driver's framework globals, the first argument of every call.
    pub static mut WdfDriverGlobals: PWDF_DRIVER_GLOBALS = core::ptr::null_mut();

    /// The table slot for `index`, or `None` when the table is not bound or
    /// the slot is empty.
    ///
    /// # Safety
    /// Called only after `WdfVersionBind` succeeded (or before, when the table
    /// pointer is still null) and before `WdfVersionUnbind`; the loader
    /// guarantees `WdfFunctionTableNumEntries` valid slots for our bind.
    pub unsafe fn function(index: _WDFFUNCENUM::Type) -> WDFFUNC {
        // SAFETY: the table pointer is written once, during bind, before any
        // framework call; reading a pointer-sized static is a plain load.
        let table = unsafe { core::ptr::addr_of!(WdfFunctions_01029).read() };
        let Ok(slot) = usize::try_from(index) else {
            return None;
        };
        if table.is_null() || slot >= _WDFFUNCENUM::WdfFunctionTableNumEntries as usize {
            return None;
        }
        // SAFETY: `slot` is below the entry count the loader filled for this
        // bind, so the read stays inside the table.
        unsafe { table.add(slot).read() }
    }

    /// The driver globals handed out by `WdfVersionBind`.
    pub fn globals() -> PWDF_DRIVER_GLOBALS {
        // SAFETY: written once during bind before any framework call.
        unsafe { core::ptr::addr_of!(WdfDriverGlobals).read() }
    }
}

/// The loader's bind structures (`fxldr.h`); used by the cross build's entry stub.
/// `WDF_VERSION` (fxldr.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_VERSION {
    pub Major: super::types::ULONG,
    pub Minor: super::types::ULONG,
    pub Build: super::types::ULONG,
}

/// `WDF_BIND_INFO` (fxldr.h), 48 bytes on x64.
#[repr(C)]
#[derive(Debug)]
pub struct WDF_BIND_INFO {
    pub Size: super::types::ULONG,
    pub Component: super::types::PWCHAR,
    pub Version: WDF_VERSION,
    pub FuncCount: super::types::ULONG,
    /// Where the loader writes the function table pointer.
    pub FuncTable: *mut *const WDFFUNC,
    pub Module: super::types::PVOID,
}

const _: () = assert!(core::mem::size_of::<WDF_BIND_INFO>() == 48);
const _: () = assert!(core::mem::offset_of!(WDF_BIND_INFO, FuncTable) == 32);

/// What a call returns when its table slot is empty (a framework that lacks
/// the function): never a jump to address 0.
pub trait MissingWdfFunction {
    /// The value returned instead of calling.
    fn missing() -> Self;
}
#[cfg(target_os = "windows")]
impl MissingWdfFunction for NTSTATUS {
    fn missing() -> Self {
        STATUS_NOT_IMPLEMENTED
    }
}
impl MissingWdfFunction for () {
    fn missing() -> Self {}
}
#[cfg(target_os = "windows")]
impl MissingWdfFunction for WDFFILEOBJECT {
    fn missing() -> Self {
        core::ptr::null_mut()
    }
}
// WDF_IO_QUEUE_STATE is an i32 like NTSTATUS: a missing WdfIoQueueGetState
// returns STATUS_NOT_IMPLEMENTED as its state; callers read only the counts,
// which they initialise.
#[cfg(target_os = "windows")]
impl MissingWdfFunction for PWDFDEVICE_INIT {
    fn missing() -> Self {
        core::ptr::null_mut()
    }
}

/// Declares typed wrappers over table slots (cross build) or re-exports the
/// host test doubles of the same names.
macro_rules! wdf_functions {
    ($( $name:ident = $index:ident ( $($param:ident : $ty:ty),* ) -> $ret:ty ; )*) => {
        $(
            #[cfg(target_os = "windows")]
            #[doc = concat!("`", stringify!($name), "` through the framework's function table.")]
            ///
            /// # Safety
            /// The caller upholds the function's documented contract for its arguments.
            pub unsafe fn $name($($param: $ty),*) -> $ret {
                type Pfn = unsafe extern "C" fn(PWDF_DRIVER_GLOBALS $(, $ty)*) -> $ret;
                // SAFETY: called between bind and unbind (the entry stub's job).
                let Some(slot) = (unsafe { table::function(_WDFFUNCENUM::$index) }) else {
                    return <$ret as MissingWdfFunction>::missing();
                };
                // SAFETY: the slot at this index holds this function (WDFFUNCENUM
                // order, checked by the emulator suite); the prototype is the
                // KMDF one (unchanged since the function was added).
                let function: Pfn = unsafe { core::mem::transmute::<unsafe extern "C" fn(), Pfn>(slot) };
                // SAFETY: forwarded contract of the caller, globals from bind.
                unsafe { function(table::globals() $(, $param)*) }
            }
            #[cfg(not(target_os = "windows"))]
            pub use crate::ffi::ntddk::$name;
        )*
    };
}

wdf_functions! {
    WdfDriverCreate = WdfDriverCreateTableIndex(
        DriverObject: PDRIVER_OBJECT,
        RegistryPath: PCUNICODE_STRING,
        DriverAttributes: PWDF_OBJECT_ATTRIBUTES,
        DriverConfig: PWDF_DRIVER_CONFIG,
        Driver: *mut WDFDRIVER
    ) -> NTSTATUS;
    WdfControlDeviceInitAllocate = WdfControlDeviceInitAllocateTableIndex(
        Driver: WDFDRIVER,
        SDDLString: PCUNICODE_STRING
    ) -> PWDFDEVICE_INIT;
    WdfDeviceInitAssignName = WdfDeviceInitAssignNameTableIndex(
        DeviceInit: PWDFDEVICE_INIT,
        DeviceName: PCUNICODE_STRING
    ) -> NTSTATUS;
    WdfDeviceInitFree = WdfDeviceInitFreeTableIndex(DeviceInit: PWDFDEVICE_INIT) -> ();
    WdfDeviceCreate = WdfDeviceCreateTableIndex(
        DeviceInit: *mut PWDFDEVICE_INIT,
        DeviceAttributes: PWDF_OBJECT_ATTRIBUTES,
        Device: *mut WDFDEVICE
    ) -> NTSTATUS;
    WdfDeviceCreateSymbolicLink = WdfDeviceCreateSymbolicLinkTableIndex(
        Device: WDFDEVICE,
        SymbolicLinkName: PCUNICODE_STRING
    ) -> NTSTATUS;
    WdfIoQueueCreate = WdfIoQueueCreateTableIndex(
        Device: WDFDEVICE,
        Config: PWDF_IO_QUEUE_CONFIG,
        QueueAttributes: PWDF_OBJECT_ATTRIBUTES,
        Queue: *mut WDFQUEUE
    ) -> NTSTATUS;
    WdfControlFinishInitializing = WdfControlFinishInitializingTableIndex(Device: WDFDEVICE) -> ();
    WdfObjectDelete = WdfObjectDeleteTableIndex(Object: WDFOBJECT) -> ();
    WdfRequestRetrieveInputBuffer = WdfRequestRetrieveInputBufferTableIndex(
        Request: WDFREQUEST,
        MinimumRequiredSize: usize,
        Buffer: *mut PVOID,
        Length: *mut usize
    ) -> NTSTATUS;
    WdfRequestRetrieveOutputBuffer = WdfRequestRetrieveOutputBufferTableIndex(
        Request: WDFREQUEST,
        MinimumRequiredSize: usize,
        Buffer: *mut PVOID,
        Length: *mut usize
    ) -> NTSTATUS;
    WdfDeviceInitSetFileObjectConfig = WdfDeviceInitSetFileObjectConfigTableIndex(
        DeviceInit: PWDFDEVICE_INIT,
        FileObjectConfig: PWDF_FILEOBJECT_CONFIG,
        FileObjectAttributes: PWDF_OBJECT_ATTRIBUTES
    ) -> ();
    WdfIoQueueGetState = WdfIoQueueGetStateTableIndex(
        Queue: WDFQUEUE,
        QueueRequests: PULONG,
        DriverRequests: PULONG
    ) -> WDF_IO_QUEUE_STATE;
    WdfIoQueueRetrieveNextRequest = WdfIoQueueRetrieveNextRequestTableIndex(
        Queue: WDFQUEUE,
        OutRequest: *mut WDFREQUEST
    ) -> NTSTATUS;
    WdfIoQueueRetrieveRequestByFileObject = WdfIoQueueRetrieveRequestByFileObjectTableIndex(
        Queue: WDFQUEUE,
        FileObject: WDFFILEOBJECT,
        OutRequest: *mut WDFREQUEST
    ) -> NTSTATUS;
    WdfRequestGetFileObject = WdfRequestGetFileObjectTableIndex(Request: WDFREQUEST) -> WDFFILEOBJECT;
    WdfRequestForwardToIoQueue = WdfRequestForwardToIoQueueTableIndex(
        Request: WDFREQUEST,
        DestinationQueue: WDFQUEUE
    ) -> NTSTATUS;
    WdfWorkItemCreate = WdfWorkItemCreateTableIndex(
        Config: PWDF_WORKITEM_CONFIG,
        Attributes: PWDF_OBJECT_ATTRIBUTES,
        WorkItem: *mut WDFWORKITEM
    ) -> NTSTATUS;
    WdfWorkItemEnqueue = WdfWorkItemEnqueueTableIndex(WorkItem: WDFWORKITEM) -> ();
    WdfWorkItemFlush = WdfWorkItemFlushTableIndex(WorkItem: WDFWORKITEM) -> ();
    WdfRequestCompleteWithInformation = WdfRequestCompleteWithInformationTableIndex(
        Request: WDFREQUEST,
        Status: NTSTATUS,
        Information: ULONG_PTR
    ) -> ();
}

/// Same syntax as `wdk_sys::call_unsafe_wdf_function_binding!`:
/// `call_unsafe_wdf_function_binding!(WdfDriverCreate, arg1, arg2, ...)`.
macro_rules! call_unsafe_wdf_function_binding {
    ($name:ident $(, $arg:expr)* $(,)?) => {
        $crate::ffi::wdf::$name($($arg),*)
    };
}
pub(crate) use call_unsafe_wdf_function_binding;
