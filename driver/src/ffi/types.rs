//! Kernel and KMDF types, constants and layouts for the builds without the WDK.
//!
//! Every name here is the name `wdk-sys` generates (bindgen output of the WDK
//! headers), with the same field names, field order and field types, so the
//! driver code compiles unchanged against `wdk_sys` in the Windows build.
//! Only what the driver uses is declared. Each struct's layout is checked
//! against the mingw-w64 DDK headers (`layout_check.rs`) and, for the WDF
//! structures mingw does not ship, against an independent record in the
//! emulator suite.
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    missing_docs
)]
#![allow(clippy::upper_case_acronyms)]

use core::ffi::c_void;

// ---------------------------------------------------------------- basic types

pub type NTSTATUS = i32;
pub type BOOLEAN = u8;
pub type UCHAR = u8;
pub type USHORT = u16;
pub type ULONG = u32;
pub type LONG = i32;
pub type ULONG64 = u64;
pub type SIZE_T = u64;
pub type WCHAR = u16;
pub type PWCH = *mut WCHAR;
pub type PWCHAR = *mut WCHAR;
pub type CHAR = i8;
pub type PCSTR = *const CHAR;
pub type PVOID = *mut c_void;
pub type HANDLE = *mut c_void;
pub type PHANDLE = *mut HANDLE;
pub type PULONG = *mut ULONG;
pub type ACCESS_MASK = ULONG;
pub type POOL_FLAGS = ULONG64;
pub type KEY_VALUE_INFORMATION_CLASS = i32;
pub type LONGLONG = i64;
pub type LONG_PTR = i64;
pub type KIRQL = UCHAR;
pub type KSPIN_LOCK = u64;
pub type PKSPIN_LOCK = *mut KSPIN_LOCK;
pub type KPROCESSOR_MODE = i8;
pub type KPRIORITY = LONG;

/// `LARGE_INTEGER`: the driver uses `QuadPart` only.
#[repr(C)]
#[derive(Copy, Clone)]
pub union _LARGE_INTEGER {
    pub QuadPart: LONGLONG,
}
pub type LARGE_INTEGER = _LARGE_INTEGER;
pub type PLARGE_INTEGER = *mut LARGE_INTEGER;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _UNICODE_STRING {
    pub Length: USHORT,
    pub MaximumLength: USHORT,
    pub Buffer: PWCH,
}
pub type UNICODE_STRING = _UNICODE_STRING;
pub type PUNICODE_STRING = *mut UNICODE_STRING;
pub type PCUNICODE_STRING = *const UNICODE_STRING;

impl Default for _UNICODE_STRING {
    fn default() -> Self {
        Self {
            Length: 0,
            MaximumLength: 0,
            Buffer: core::ptr::null_mut(),
        }
    }
}

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _OBJECT_ATTRIBUTES {
    pub Length: ULONG,
    pub RootDirectory: HANDLE,
    pub ObjectName: PUNICODE_STRING,
    pub Attributes: ULONG,
    pub SecurityDescriptor: PVOID,
    pub SecurityQualityOfService: PVOID,
}
pub type OBJECT_ATTRIBUTES = _OBJECT_ATTRIBUTES;
pub type POBJECT_ATTRIBUTES = *mut OBJECT_ATTRIBUTES;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _KEY_VALUE_PARTIAL_INFORMATION {
    pub TitleIndex: ULONG,
    pub Type: ULONG,
    pub DataLength: ULONG,
    pub Data: [UCHAR; 1usize],
}
pub type KEY_VALUE_PARTIAL_INFORMATION = _KEY_VALUE_PARTIAL_INFORMATION;

// Opaque kernel objects: the driver only passes pointers to them around.
#[repr(C)]
pub struct _OBJECT_TYPE {
    _opaque: [u8; 0],
}
pub type POBJECT_TYPE = *mut _OBJECT_TYPE;
#[repr(C)]
pub struct _KPROCESS {
    _opaque: [u8; 0],
}
pub type PEPROCESS = *mut _KPROCESS;
#[repr(C)]
pub struct _KTHREAD {
    _opaque: [u8; 0],
}
pub type PETHREAD = *mut _KTHREAD;
#[repr(C)]
pub struct _DEVICE_OBJECT {
    _opaque: [u8; 0],
}
pub type PDEVICE_OBJECT = *mut _DEVICE_OBJECT;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _CLIENT_ID {
    pub UniqueProcess: HANDLE,
    pub UniqueThread: HANDLE,
}
pub type CLIENT_ID = _CLIENT_ID;

/// `DISPATCHER_HEADER`: opaque here (the driver never reads it); size checked.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct _DISPATCHER_HEADER {
    pub __opaque: [u64; 3usize],
}
#[repr(C)]
#[derive(Copy, Clone)]
pub struct _KEVENT {
    pub Header: _DISPATCHER_HEADER,
}
pub type KEVENT = _KEVENT;
pub type PKEVENT = *mut KEVENT;
pub type PRKEVENT = *mut KEVENT;

/// `_EVENT_TYPE` (ntdef.h; bindgen: a module of constants).
pub mod _EVENT_TYPE {
    pub type Type = i32;
    pub const NotificationEvent: Type = 0;
    pub const SynchronizationEvent: Type = 1;
}
pub use self::_EVENT_TYPE::Type as EVENT_TYPE;

/// `_KWAIT_REASON` (wdm.h): only the first value, the one drivers pass.
pub mod _KWAIT_REASON {
    pub type Type = i32;
    pub const Executive: Type = 0;
}
pub use self::_KWAIT_REASON::Type as KWAIT_REASON;

/// `FAST_MUTEX`; `KGUARDED_MUTEX` is the same structure since Windows 8.
/// Initialised and used only through the kernel's functions.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct _FAST_MUTEX {
    pub Count: LONG,
    pub Owner: PVOID,
    pub Contention: ULONG,
    pub Event: KEVENT,
    pub OldIrql: ULONG,
}
pub type FAST_MUTEX = _FAST_MUTEX;
pub type KGUARDED_MUTEX = _FAST_MUTEX;
pub type PKGUARDED_MUTEX = *mut KGUARDED_MUTEX;

/// The `Flags` union of `PS_CREATE_NOTIFY_INFO` (bit 0: FileOpenNameAvailable).
#[repr(C)]
#[derive(Copy, Clone)]
pub union _PS_CREATE_NOTIFY_INFO__bindgen_ty_1 {
    pub Flags: ULONG,
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct _PS_CREATE_NOTIFY_INFO {
    pub Size: SIZE_T,
    pub __bindgen_anon_1: _PS_CREATE_NOTIFY_INFO__bindgen_ty_1,
    pub ParentProcessId: HANDLE,
    pub CreatingThreadId: CLIENT_ID,
    pub FileObject: PVOID,
    pub ImageFileName: PCUNICODE_STRING,
    pub CommandLine: PCUNICODE_STRING,
    pub CreationStatus: NTSTATUS,
}
pub type PS_CREATE_NOTIFY_INFO = _PS_CREATE_NOTIFY_INFO;
pub type PPS_CREATE_NOTIFY_INFO = *mut PS_CREATE_NOTIFY_INFO;
pub type PCREATE_PROCESS_NOTIFY_ROUTINE_EX = Option<
    unsafe extern "C" fn(Process: PEPROCESS, ProcessId: HANDLE, CreateInfo: PPS_CREATE_NOTIFY_INFO),
>;

pub type PDRIVER_UNLOAD = Option<unsafe extern "C" fn(DriverObject: *mut _DRIVER_OBJECT)>;

/// `DRIVER_OBJECT` (wdm.h). Fields the driver does not use keep their place
/// and size as plain pointers.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _DRIVER_OBJECT {
    pub Type: i16,
    pub Size: i16,
    pub DeviceObject: PDEVICE_OBJECT,
    pub Flags: ULONG,
    pub DriverStart: PVOID,
    pub DriverSize: ULONG,
    pub DriverSection: PVOID,
    pub DriverExtension: PVOID,
    pub DriverName: UNICODE_STRING,
    pub HardwareDatabase: PUNICODE_STRING,
    pub FastIoDispatch: PVOID,
    pub DriverInit: PVOID,
    pub DriverStartIo: PVOID,
    pub DriverUnload: PDRIVER_UNLOAD,
    pub MajorFunction: [PVOID; 28usize],
}
pub type DRIVER_OBJECT = _DRIVER_OBJECT;
pub type PDRIVER_OBJECT = *mut DRIVER_OBJECT;

// ----------------------------------------------------------- object callbacks

pub type OB_OPERATION = ULONG;
/// `_OB_PREOP_CALLBACK_STATUS` (a C enum: bindgen makes it a module of
/// constants, `OB_PREOP_SUCCESS` included, and the typedef an alias of `Type`).
pub mod _OB_PREOP_CALLBACK_STATUS {
    pub type Type = i32;
    pub const OB_PREOP_SUCCESS: Type = 0;
}
pub use self::_OB_PREOP_CALLBACK_STATUS::Type as OB_PREOP_CALLBACK_STATUS;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _OB_PRE_CREATE_HANDLE_INFORMATION {
    pub DesiredAccess: ACCESS_MASK,
    pub OriginalDesiredAccess: ACCESS_MASK,
}
pub type OB_PRE_CREATE_HANDLE_INFORMATION = _OB_PRE_CREATE_HANDLE_INFORMATION;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _OB_PRE_DUPLICATE_HANDLE_INFORMATION {
    pub DesiredAccess: ACCESS_MASK,
    pub OriginalDesiredAccess: ACCESS_MASK,
    pub SourceProcess: PVOID,
    pub TargetProcess: PVOID,
}
pub type OB_PRE_DUPLICATE_HANDLE_INFORMATION = _OB_PRE_DUPLICATE_HANDLE_INFORMATION;

#[repr(C)]
#[derive(Copy, Clone)]
pub union _OB_PRE_OPERATION_PARAMETERS {
    pub CreateHandleInformation: OB_PRE_CREATE_HANDLE_INFORMATION,
    pub DuplicateHandleInformation: OB_PRE_DUPLICATE_HANDLE_INFORMATION,
}
pub type OB_PRE_OPERATION_PARAMETERS = _OB_PRE_OPERATION_PARAMETERS;
pub type POB_PRE_OPERATION_PARAMETERS = *mut OB_PRE_OPERATION_PARAMETERS;

/// The anonymous `union { ULONG Flags; struct { ULONG KernelHandle:1; ULONG Reserved:31; }; }`.
/// bindgen names it like this and exposes the bit field through accessor
/// methods; the driver reads `Flags` (bit 0 is `KernelHandle`), which both
/// builds have.
#[repr(C)]
#[derive(Copy, Clone)]
pub union _OB_PRE_OPERATION_INFORMATION__bindgen_ty_1 {
    pub Flags: ULONG,
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct _OB_PRE_OPERATION_INFORMATION {
    pub Operation: OB_OPERATION,
    pub __bindgen_anon_1: _OB_PRE_OPERATION_INFORMATION__bindgen_ty_1,
    pub Object: PVOID,
    pub ObjectType: POBJECT_TYPE,
    pub CallContext: PVOID,
    pub Parameters: POB_PRE_OPERATION_PARAMETERS,
}
pub type OB_PRE_OPERATION_INFORMATION = _OB_PRE_OPERATION_INFORMATION;
pub type POB_PRE_OPERATION_INFORMATION = *mut OB_PRE_OPERATION_INFORMATION;

#[repr(C)]
pub struct _OB_POST_OPERATION_INFORMATION {
    _opaque: [u8; 0],
}
pub type POB_POST_OPERATION_INFORMATION = *mut _OB_POST_OPERATION_INFORMATION;

pub type POB_PRE_OPERATION_CALLBACK = Option<
    unsafe extern "C" fn(
        RegistrationContext: PVOID,
        OperationInformation: POB_PRE_OPERATION_INFORMATION,
    ) -> OB_PREOP_CALLBACK_STATUS,
>;
pub type POB_POST_OPERATION_CALLBACK = Option<
    unsafe extern "C" fn(
        RegistrationContext: PVOID,
        OperationInformation: POB_POST_OPERATION_INFORMATION,
    ),
>;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _OB_OPERATION_REGISTRATION {
    pub ObjectType: *mut POBJECT_TYPE,
    pub Operations: OB_OPERATION,
    pub PreOperation: POB_PRE_OPERATION_CALLBACK,
    pub PostOperation: POB_POST_OPERATION_CALLBACK,
}
pub type OB_OPERATION_REGISTRATION = _OB_OPERATION_REGISTRATION;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _OB_CALLBACK_REGISTRATION {
    pub Version: USHORT,
    pub OperationRegistrationCount: USHORT,
    pub Altitude: UNICODE_STRING,
    pub RegistrationContext: PVOID,
    pub OperationRegistration: *mut OB_OPERATION_REGISTRATION,
}
pub type OB_CALLBACK_REGISTRATION = _OB_CALLBACK_REGISTRATION;
pub type POB_CALLBACK_REGISTRATION = *mut OB_CALLBACK_REGISTRATION;

// ------------------------------------------------------------------------ WDF

#[repr(C)]
pub struct WDFDRIVER__ {
    _opaque: [u8; 0],
}
pub type WDFDRIVER = *mut WDFDRIVER__;
#[repr(C)]
pub struct WDFDEVICE_INIT {
    _opaque: [u8; 0],
}
pub type PWDFDEVICE_INIT = *mut WDFDEVICE_INIT;
pub type WDFOBJECT = PVOID;
#[repr(C)]
pub struct WDFDEVICE__ {
    _opaque: [u8; 0],
}
pub type WDFDEVICE = *mut WDFDEVICE__;
#[repr(C)]
pub struct WDFQUEUE__ {
    _opaque: [u8; 0],
}
pub type WDFQUEUE = *mut WDFQUEUE__;
#[repr(C)]
pub struct WDFREQUEST__ {
    _opaque: [u8; 0],
}
pub type WDFREQUEST = *mut WDFREQUEST__;
#[repr(C)]
pub struct WDFFILEOBJECT__ {
    _opaque: [u8; 0],
}
pub type WDFFILEOBJECT = *mut WDFFILEOBJECT__;
#[repr(C)]
pub struct WDFWORKITEM__ {
    _opaque: [u8; 0],
}
pub type WDFWORKITEM = *mut WDFWORKITEM__;
/// `EVT_WDF_WORKITEM`: runs at PASSIVE_LEVEL in a system thread.
pub type PFN_WDF_WORKITEM = Option<unsafe extern "C" fn(WorkItem: WDFWORKITEM)>;
/// `WDF_WORKITEM_CONFIG` (wdfworkitem.h), 24 bytes on x64.
#[repr(C)]
#[derive(Debug, Copy, Clone, Default)]
pub struct _WDF_WORKITEM_CONFIG {
    pub Size: ULONG,
    pub EvtWorkItemFunc: PFN_WDF_WORKITEM,
    pub AutomaticSerialization: BOOLEAN,
}
pub type WDF_WORKITEM_CONFIG = _WDF_WORKITEM_CONFIG;
pub type PWDF_WORKITEM_CONFIG = *mut WDF_WORKITEM_CONFIG;

/// `EX_CALLBACK_FUNCTION` (wdm.h): a registry callback.
pub type PEX_CALLBACK_FUNCTION = Option<
    unsafe extern "C" fn(CallbackContext: PVOID, Argument1: PVOID, Argument2: PVOID) -> NTSTATUS,
>;
/// `REG_POST_OPERATION_INFORMATION` (wdm.h): a post-notification's Argument2.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _REG_POST_OPERATION_INFORMATION {
    pub Object: PVOID,
    pub Status: NTSTATUS,
    pub PreInformation: PVOID,
    pub ReturnStatus: NTSTATUS,
    pub CallContext: PVOID,
    pub ObjectContext: PVOID,
    pub Reserved: PVOID,
}
pub type REG_POST_OPERATION_INFORMATION = _REG_POST_OPERATION_INFORMATION;
pub type PREG_POST_OPERATION_INFORMATION = *mut REG_POST_OPERATION_INFORMATION;
/// `REG_SET_VALUE_KEY_INFORMATION` (wdm.h).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _REG_SET_VALUE_KEY_INFORMATION {
    pub Object: PVOID,
    pub ValueName: PUNICODE_STRING,
    pub TitleIndex: ULONG,
    pub Type: ULONG,
    pub Data: PVOID,
    pub DataSize: ULONG,
    pub CallContext: PVOID,
    pub ObjectContext: PVOID,
    pub Reserved: PVOID,
}
pub type REG_SET_VALUE_KEY_INFORMATION = _REG_SET_VALUE_KEY_INFORMATION;
pub type PREG_SET_VALUE_KEY_INFORMATION = *mut REG_SET_VALUE_KEY_INFORMATION;
/// `REG_DELETE_VALUE_KEY_INFORMATION` (wdm.h).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _REG_DELETE_VALUE_KEY_INFORMATION {
    pub Object: PVOID,
    pub ValueName: PUNICODE_STRING,
    pub CallContext: PVOID,
    pub ObjectContext: PVOID,
    pub Reserved: PVOID,
}
pub type REG_DELETE_VALUE_KEY_INFORMATION = _REG_DELETE_VALUE_KEY_INFORMATION;
pub type PREG_DELETE_VALUE_KEY_INFORMATION = *mut REG_DELETE_VALUE_KEY_INFORMATION;
// x64 sizes (wdm.h, wdfworkitem.h), as the emulator harness builds them.
const _: () = assert!(core::mem::size_of::<WDF_WORKITEM_CONFIG>() == 24);
const _: () = assert!(core::mem::size_of::<REG_SET_VALUE_KEY_INFORMATION>() == 64);
const _: () = assert!(core::mem::size_of::<REG_DELETE_VALUE_KEY_INFORMATION>() == 40);
const _: () = assert!(core::mem::size_of::<REG_POST_OPERATION_INFORMATION>() == 56);
const _: () = assert!(core::mem::offset_of!(REG_POST_OPERATION_INFORMATION, PreInformation) == 16);
const _: () = assert!(core::mem::offset_of!(REG_SET_VALUE_KEY_INFORMATION, DataSize) == 32);
pub type ULONG_PTR = u64;

pub type PFN_WDF_IO_QUEUE_IO_DEFAULT =
    Option<unsafe extern "C" fn(Queue: WDFQUEUE, Request: WDFREQUEST)>;
// The WDF headers declare these lengths `size_t` (not `SIZE_T`): bindgen
// makes `size_t` Rust's `usize`, `SIZE_T` (ULONG_PTR) a `u64`.
pub type PFN_WDF_IO_QUEUE_IO_READ =
    Option<unsafe extern "C" fn(Queue: WDFQUEUE, Request: WDFREQUEST, Length: usize)>;
pub type PFN_WDF_IO_QUEUE_IO_WRITE =
    Option<unsafe extern "C" fn(Queue: WDFQUEUE, Request: WDFREQUEST, Length: usize)>;
pub type PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL = Option<
    unsafe extern "C" fn(
        Queue: WDFQUEUE,
        Request: WDFREQUEST,
        OutputBufferLength: usize,
        InputBufferLength: usize,
        IoControlCode: ULONG,
    ),
>;
pub type PFN_WDF_IO_QUEUE_IO_INTERNAL_DEVICE_CONTROL = PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL;
pub type PFN_WDF_IO_QUEUE_IO_STOP =
    Option<unsafe extern "C" fn(Queue: WDFQUEUE, Request: WDFREQUEST, ActionFlags: ULONG)>;
pub type PFN_WDF_IO_QUEUE_IO_RESUME =
    Option<unsafe extern "C" fn(Queue: WDFQUEUE, Request: WDFREQUEST)>;
pub type PFN_WDF_IO_QUEUE_IO_CANCELED_ON_QUEUE =
    Option<unsafe extern "C" fn(Queue: WDFQUEUE, Request: WDFREQUEST)>;

/// `Settings` union of `WDF_IO_QUEUE_CONFIG` (KMDF 1.33: the parallel
/// dispatch settings).
#[repr(C)]
#[derive(Copy, Clone)]
pub union _WDF_IO_QUEUE_CONFIG__bindgen_ty_1 {
    pub Parallel: _WDF_IO_QUEUE_CONFIG__bindgen_ty_1__bindgen_ty_1,
}
#[repr(C)]
#[derive(Debug, Copy, Clone, Default)]
pub struct _WDF_IO_QUEUE_CONFIG__bindgen_ty_1__bindgen_ty_1 {
    pub NumberOfPresentedRequests: ULONG,
}
impl Default for _WDF_IO_QUEUE_CONFIG__bindgen_ty_1 {
    fn default() -> Self {
        Self {
            Parallel: _WDF_IO_QUEUE_CONFIG__bindgen_ty_1__bindgen_ty_1::default(),
        }
    }
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct _WDF_IO_QUEUE_CONFIG {
    pub Size: ULONG,
    pub DispatchType: i32,
    pub PowerManaged: i32,
    pub AllowZeroLengthRequests: BOOLEAN,
    pub DefaultQueue: BOOLEAN,
    pub EvtIoDefault: PFN_WDF_IO_QUEUE_IO_DEFAULT,
    pub EvtIoRead: PFN_WDF_IO_QUEUE_IO_READ,
    pub EvtIoWrite: PFN_WDF_IO_QUEUE_IO_WRITE,
    pub EvtIoDeviceControl: PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL,
    pub EvtIoInternalDeviceControl: PFN_WDF_IO_QUEUE_IO_INTERNAL_DEVICE_CONTROL,
    pub EvtIoStop: PFN_WDF_IO_QUEUE_IO_STOP,
    pub EvtIoResume: PFN_WDF_IO_QUEUE_IO_RESUME,
    pub EvtIoCanceledOnQueue: PFN_WDF_IO_QUEUE_IO_CANCELED_ON_QUEUE,
    pub Settings: _WDF_IO_QUEUE_CONFIG__bindgen_ty_1,
    pub Driver: WDFDRIVER,
}
pub type WDF_IO_QUEUE_CONFIG = _WDF_IO_QUEUE_CONFIG;

/// All zero, as bindgen's `Default` for WDK structures.
impl Default for _WDF_IO_QUEUE_CONFIG {
    fn default() -> Self {
        Self {
            Size: 0,
            DispatchType: 0,
            PowerManaged: 0,
            AllowZeroLengthRequests: 0,
            DefaultQueue: 0,
            EvtIoDefault: None,
            EvtIoRead: None,
            EvtIoWrite: None,
            EvtIoDeviceControl: None,
            EvtIoInternalDeviceControl: None,
            EvtIoStop: None,
            EvtIoResume: None,
            EvtIoCanceledOnQueue: None,
            Settings: _WDF_IO_QUEUE_CONFIG__bindgen_ty_1::default(),
            Driver: core::ptr::null_mut(),
        }
    }
}
pub type PWDF_IO_QUEUE_CONFIG = *mut WDF_IO_QUEUE_CONFIG;

/// `_WDF_IO_QUEUE_DISPATCH_TYPE`.
pub mod _WDF_IO_QUEUE_DISPATCH_TYPE {
    pub type Type = i32;
    pub const WdfIoQueueDispatchSequential: Type = 1;
    pub const WdfIoQueueDispatchManual: Type = 3;
}
pub use self::_WDF_IO_QUEUE_DISPATCH_TYPE::Type as WDF_IO_QUEUE_DISPATCH_TYPE;

/// `_WDF_IO_QUEUE_STATE` (wdfio.h): a set of flags `WdfIoQueueGetState` returns.
pub mod _WDF_IO_QUEUE_STATE {
    pub type Type = i32;
    pub const WdfIoQueueAcceptRequests: Type = 1;
}
pub use self::_WDF_IO_QUEUE_STATE::Type as WDF_IO_QUEUE_STATE;

/// `_WDF_FILEOBJECT_CLASS` (wdfdevice.h).
pub mod _WDF_FILEOBJECT_CLASS {
    pub type Type = i32;
    pub const WdfFileObjectInvalid: Type = 0;
    pub const WdfFileObjectNotRequired: Type = 1;
    pub const WdfFileObjectWdfCanUseFsContext: Type = 2;
}
pub use self::_WDF_FILEOBJECT_CLASS::Type as WDF_FILEOBJECT_CLASS;

pub type PFN_WDF_DEVICE_FILE_CREATE =
    Option<unsafe extern "C" fn(Device: WDFDEVICE, Request: WDFREQUEST, FileObject: WDFFILEOBJECT)>;
pub type PFN_WDF_FILE_CLOSE = Option<unsafe extern "C" fn(FileObject: WDFFILEOBJECT)>;
pub type PFN_WDF_FILE_CLEANUP = Option<unsafe extern "C" fn(FileObject: WDFFILEOBJECT)>;

/// `WDF_FILEOBJECT_CONFIG` (wdfdevice.h), 40 bytes on x64.
#[repr(C)]
#[derive(Debug, Copy, Clone, Default)]
pub struct _WDF_FILEOBJECT_CONFIG {
    pub Size: ULONG,
    pub EvtDeviceFileCreate: PFN_WDF_DEVICE_FILE_CREATE,
    pub EvtFileClose: PFN_WDF_FILE_CLOSE,
    pub EvtFileCleanup: PFN_WDF_FILE_CLEANUP,
    pub AutoForwardCleanupClose: WDF_TRI_STATE,
    pub FileObjectClass: WDF_FILEOBJECT_CLASS,
}
pub type WDF_FILEOBJECT_CONFIG = _WDF_FILEOBJECT_CONFIG;
pub type PWDF_FILEOBJECT_CONFIG = *mut WDF_FILEOBJECT_CONFIG;
/// `_WDF_TRI_STATE`.
pub mod _WDF_TRI_STATE {
    pub type Type = i32;
    pub const WdfFalse: Type = 0;
    pub const WdfTrue: Type = 1;
    pub const WdfUseDefault: Type = 2;
}
pub use self::_WDF_TRI_STATE::Type as WDF_TRI_STATE;
/// `_WDF_EXECUTION_LEVEL`.
pub mod _WDF_EXECUTION_LEVEL {
    pub type Type = i32;
    pub const WdfExecutionLevelInheritFromParent: Type = 1;
    pub const WdfExecutionLevelPassive: Type = 2;
}
/// `_WDF_SYNCHRONIZATION_SCOPE`.
pub mod _WDF_SYNCHRONIZATION_SCOPE {
    pub type Type = i32;
    pub const WdfSynchronizationScopeInheritFromParent: Type = 1;
    pub const WdfSynchronizationScopeNone: Type = 4;
}

pub type PFN_WDF_DRIVER_DEVICE_ADD =
    Option<unsafe extern "C" fn(Driver: WDFDRIVER, DeviceInit: PWDFDEVICE_INIT) -> NTSTATUS>;
pub type PFN_WDF_DRIVER_UNLOAD = Option<unsafe extern "C" fn(Driver: WDFDRIVER)>;
pub type PFN_WDF_OBJECT_CONTEXT_CLEANUP = Option<unsafe extern "C" fn(Object: WDFOBJECT)>;
pub type PFN_WDF_OBJECT_CONTEXT_DESTROY = Option<unsafe extern "C" fn(Object: WDFOBJECT)>;

/// `WDF_OBJECT_CONTEXT_TYPE_INFO` (procguard declares no context type).
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _WDF_OBJECT_CONTEXT_TYPE_INFO {
    pub Size: ULONG,
    pub ContextName: PCSTR,
    pub ContextSize: usize,
    pub UniqueType: PCWDF_OBJECT_CONTEXT_TYPE_INFO,
    pub EvtDriverGetUniqueContextType: PFN_GET_UNIQUE_CONTEXT_TYPE,
}
pub type PCWDF_OBJECT_CONTEXT_TYPE_INFO = *const _WDF_OBJECT_CONTEXT_TYPE_INFO;
pub type PFN_GET_UNIQUE_CONTEXT_TYPE =
    Option<unsafe extern "C" fn() -> PCWDF_OBJECT_CONTEXT_TYPE_INFO>;

#[repr(C)]
#[derive(Debug, Copy, Clone, Default)]
pub struct _WDF_DRIVER_CONFIG {
    pub Size: ULONG,
    pub EvtDriverDeviceAdd: PFN_WDF_DRIVER_DEVICE_ADD,
    pub EvtDriverUnload: PFN_WDF_DRIVER_UNLOAD,
    pub DriverInitFlags: ULONG,
    pub DriverPoolTag: ULONG,
}
pub type WDF_DRIVER_CONFIG = _WDF_DRIVER_CONFIG;
pub type PWDF_DRIVER_CONFIG = *mut WDF_DRIVER_CONFIG;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _WDF_OBJECT_ATTRIBUTES {
    pub Size: ULONG,
    pub EvtCleanupCallback: PFN_WDF_OBJECT_CONTEXT_CLEANUP,
    pub EvtDestroyCallback: PFN_WDF_OBJECT_CONTEXT_DESTROY,
    pub ExecutionLevel: i32,
    pub SynchronizationScope: i32,
    pub ParentObject: WDFOBJECT,
    pub ContextSizeOverride: usize,
    pub ContextTypeInfo: PCWDF_OBJECT_CONTEXT_TYPE_INFO,
}
pub type WDF_OBJECT_ATTRIBUTES = _WDF_OBJECT_ATTRIBUTES;

/// All zero, as bindgen's `Default` for WDK structures.
impl Default for _WDF_OBJECT_ATTRIBUTES {
    fn default() -> Self {
        Self {
            Size: 0,
            EvtCleanupCallback: None,
            EvtDestroyCallback: None,
            ExecutionLevel: 0,
            SynchronizationScope: 0,
            ParentObject: core::ptr::null_mut(),
            ContextSizeOverride: 0,
            ContextTypeInfo: core::ptr::null(),
        }
    }
}
pub type PWDF_OBJECT_ATTRIBUTES = *mut WDF_OBJECT_ATTRIBUTES;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct _WDF_DRIVER_GLOBALS {
    pub Driver: WDFDRIVER,
    pub DriverFlags: ULONG,
    pub DriverTag: ULONG,
    pub DriverName: [CHAR; 32usize],
    pub DisplaceDriverUnload: BOOLEAN,
}
pub type WDF_DRIVER_GLOBALS = _WDF_DRIVER_GLOBALS;
pub type PWDF_DRIVER_GLOBALS = *mut WDF_DRIVER_GLOBALS;

/// `_WDF_DRIVER_INIT_FLAGS` (bindgen turns C enums into modules of consts).
pub mod _WDF_DRIVER_INIT_FLAGS {
    pub type Type = i32;
    pub const WdfDriverInitNonPnpDriver: Type = 1;
    pub const WdfDriverInitNoDispatchOverride: Type = 2;
    pub const WdfVerifyOn: Type = 4;
    pub const WdfVerifierOn: Type = 8;
}

/// `_KEY_VALUE_INFORMATION_CLASS` values.
pub mod _KEY_VALUE_INFORMATION_CLASS {
    pub type Type = i32;
    pub const KeyValueBasicInformation: Type = 0;
    pub const KeyValueFullInformation: Type = 1;
    pub const KeyValuePartialInformation: Type = 2;
}

pub const WDF_NO_OBJECT_ATTRIBUTES: PWDF_OBJECT_ATTRIBUTES = core::ptr::null_mut();
pub const WDF_NO_HANDLE: PVOID = core::ptr::null_mut();

// ------------------------------------------------------------------ constants

pub const STATUS_SUCCESS: NTSTATUS = 0;
/// What `PsGetProcessExitStatus` returns while the process has not exited.
pub const STATUS_PENDING: NTSTATUS = 0x0000_0103;
/// `KeWaitForSingleObject`: the timeout expired.
pub const STATUS_TIMEOUT: NTSTATUS = 0x0000_0102;
/// `WdfIoQueueRetrieveNextRequest`: the queue is empty.
pub const STATUS_NO_MORE_ENTRIES: NTSTATUS = 0x8000_001A_u32 as i32;
pub const STATUS_CANCELLED: NTSTATUS = 0xC000_0120_u32 as i32;
pub const STATUS_NOT_FOUND: NTSTATUS = 0xC000_0225_u32 as i32;
pub const STATUS_INVALID_DEVICE_STATE: NTSTATUS = 0xC000_0184_u32 as i32;
pub const STATUS_SHARING_VIOLATION: NTSTATUS = 0xC000_0043_u32 as i32;
pub const STATUS_UNSUCCESSFUL: NTSTATUS = 0xC000_0001_u32 as i32;
pub const STATUS_NOT_IMPLEMENTED: NTSTATUS = 0xC000_0002_u32 as i32;
pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;
pub const STATUS_ACCESS_DENIED: NTSTATUS = 0xC000_0022_u32 as i32;
pub const STATUS_BUFFER_TOO_SMALL: NTSTATUS = 0xC000_0023_u32 as i32;
pub const STATUS_OBJECT_NAME_NOT_FOUND: NTSTATUS = 0xC000_0034_u32 as i32;
pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = 0xC000_009A_u32 as i32;
/// A registry value of the wrong type (`Parameters\\Policy` not `REG_BINARY`).
pub const STATUS_OBJECT_TYPE_MISMATCH: NTSTATUS = 0xC000_0024_u32 as i32;
/// A registry value of an unusable size (larger than the driver reads).
pub const STATUS_INVALID_BUFFER_SIZE: NTSTATUS = 0xC000_0206_u32 as i32;
pub const STATUS_NAME_TOO_LONG: NTSTATUS = 0xC000_0106_u32 as i32;
pub const STATUS_BUFFER_OVERFLOW: NTSTATUS = 0x8000_0005_u32 as i32;
pub const STATUS_INFO_LENGTH_MISMATCH: NTSTATUS = 0xC000_0004_u32 as i32;
pub const STATUS_INVALID_PARAMETER_2: NTSTATUS = 0xC000_00F0_u32 as i32;
pub const STATUS_FLT_INSTANCE_ALTITUDE_COLLISION: NTSTATUS = 0xC01C_0011_u32 as i32;

pub const OB_FLT_REGISTRATION_VERSION: u32 = 0x0100;
pub const OB_OPERATION_HANDLE_CREATE: u32 = 1;
pub const OB_OPERATION_HANDLE_DUPLICATE: u32 = 2;

pub const POOL_FLAG_NON_PAGED: POOL_FLAGS = 0x0000_0000_0000_0040;

/// `POOL_TYPE` (wdm.h), a C enum: a module of constants as wdk-sys emits it.
pub mod _POOL_TYPE {
    /// The enum's integer type.
    pub type Type = i32;
    /// Non-paged, no-execute pool (Windows 8 and later).
    pub const NonPagedPoolNx: Type = 512;
}
/// `POOL_TYPE` (wdm.h).
pub type POOL_TYPE = _POOL_TYPE::Type;

pub const OBJ_CASE_INSENSITIVE: u32 = 0x0000_0040;
pub const OBJ_KERNEL_HANDLE: u32 = 0x0000_0200;
pub const KEY_READ: u32 = 0x0002_0019;
pub const REG_SZ: u32 = 1;
pub const REG_BINARY: u32 = 3;
pub const REG_DWORD: u32 = 4;
pub const KEY_WRITE: u32 = 0x0002_0006;
pub const REG_OPTION_NON_VOLATILE: u32 = 0;
pub const STATUS_INVALID_DEVICE_REQUEST: NTSTATUS = 0xC000_0010_u32 as i32;

/// `_DPFLTR_TYPE` component ids for `DbgPrintEx`.
pub mod _DPFLTR_TYPE {
    pub type Type = i32;
    pub const DPFLTR_IHVDRIVER_ID: Type = 77;
}
pub const PASSIVE_LEVEL: u32 = 0;
pub const APC_LEVEL: u32 = 1;
pub const DISPATCH_LEVEL: u32 = 2;
/// `_MODE` (bindgen: a module of constants).
pub mod _MODE {
    pub type Type = i32;
    pub const KernelMode: Type = 0;
    pub const UserMode: Type = 1;
}

pub const DPFLTR_ERROR_LEVEL: u32 = 0;
pub const DPFLTR_INFO_LEVEL: u32 = 3;

// Process-specific access rights (winnt.h).
pub const PROCESS_TERMINATE: u32 = 0x0001;
pub const PROCESS_CREATE_THREAD: u32 = 0x0002;
pub const PROCESS_SET_SESSIONID: u32 = 0x0004;
pub const PROCESS_VM_OPERATION: u32 = 0x0008;
pub const PROCESS_VM_READ: u32 = 0x0010;
pub const PROCESS_VM_WRITE: u32 = 0x0020;
pub const PROCESS_DUP_HANDLE: u32 = 0x0040;
pub const PROCESS_CREATE_PROCESS: u32 = 0x0080;
pub const PROCESS_SET_QUOTA: u32 = 0x0100;
pub const PROCESS_SET_INFORMATION: u32 = 0x0200;
pub const PROCESS_QUERY_INFORMATION: u32 = 0x0400;
pub const PROCESS_SUSPEND_RESUME: u32 = 0x0800;
pub const PROCESS_QUERY_LIMITED_INFORMATION: u32 = 0x1000;
pub const THREAD_TERMINATE: u32 = 0x0001;
pub const THREAD_SUSPEND_RESUME: u32 = 0x0002;
pub const THREAD_SET_CONTEXT: u32 = 0x0010;
pub const THREAD_SET_INFORMATION: u32 = 0x0020;

// ---- Executive resources (the writer lock, kernel_sync.rs) ----------------

/// `LIST_ENTRY`.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct _LIST_ENTRY {
    pub Flink: *mut _LIST_ENTRY,
    pub Blink: *mut _LIST_ENTRY,
}
pub type LIST_ENTRY = _LIST_ENTRY;

/// The union of `OWNER_ENTRY` (bit fields or a table size).
#[repr(C)]
#[derive(Copy, Clone)]
pub union _OWNER_ENTRY__bindgen_ty_1 {
    pub TableSize: ULONG,
}

/// `OWNER_ENTRY`.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct _OWNER_ENTRY {
    pub OwnerThread: ULONG_PTR,
    pub __bindgen_anon_1: _OWNER_ENTRY__bindgen_ty_1,
}
pub type OWNER_ENTRY = _OWNER_ENTRY;

/// The union of `ERESOURCE` (creator address or back-trace index).
#[repr(C)]
#[derive(Copy, Clone)]
pub union _ERESOURCE__bindgen_ty_1 {
    pub Address: PVOID,
    pub CreatorBackTraceIndex: ULONG_PTR,
}

/// `ERESOURCE` (x64). Non-paged storage; initialised, acquired, released
/// and deleted only through the kernel's functions.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct _ERESOURCE {
    pub SystemResourcesList: LIST_ENTRY,
    pub OwnerTable: *mut OWNER_ENTRY,
    pub ActiveCount: i16,
    pub Flag: USHORT,
    pub SharedWaiters: PVOID,
    pub ExclusiveWaiters: PVOID,
    pub OwnerEntry: OWNER_ENTRY,
    pub ActiveEntries: ULONG,
    pub ContentionCount: ULONG,
    pub NumberOfSharedWaiters: ULONG,
    pub NumberOfExclusiveWaiters: ULONG,
    pub Reserved2: PVOID,
    pub __bindgen_anon_1: _ERESOURCE__bindgen_ty_1,
    pub SpinLock: KSPIN_LOCK,
}
pub type ERESOURCE = _ERESOURCE;
pub type PERESOURCE = *mut ERESOURCE;
