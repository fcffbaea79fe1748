//! Imports from `ntoskrnl.exe` for the cross build, declared as `wdk-sys`
//! declares them (`wdk_sys::ntddk`). `raw-dylib` makes rustc emit the import
//! descriptors itself, so no import library is needed. The data exports
//! (`PsProcessType`, `PsThreadType`) are not here: wdk-sys has them at the
//! root, see `kernel_variables.rs`.
#![allow(non_snake_case, missing_docs, clippy::upper_case_acronyms)]

use super::types::*;

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "C" {
    pub fn ObRegisterCallbacks(
        CallbackRegistration: POB_CALLBACK_REGISTRATION,
        RegistrationHandle: *mut PVOID,
    ) -> NTSTATUS;
    pub fn ObUnRegisterCallbacks(RegistrationHandle: PVOID);
    pub fn ObGetFilterVersion() -> USHORT;
    pub fn PsGetCurrentProcessId() -> HANDLE;
    pub fn PsGetProcessId(Process: PEPROCESS) -> HANDLE;
    pub fn PsGetThreadProcessId(Thread: PETHREAD) -> HANDLE;
    // Not ExAllocatePool2 (Windows 10 2004+): pool.rs resolves it at run time.
    pub fn ExAllocatePoolWithTag(PoolType: POOL_TYPE, NumberOfBytes: SIZE_T, Tag: ULONG) -> PVOID;
    pub fn MmGetSystemRoutineAddress(SystemRoutineName: PUNICODE_STRING) -> PVOID;
    pub fn ExFreePoolWithTag(P: PVOID, Tag: ULONG);
    pub fn ZwOpenKey(
        KeyHandle: PHANDLE,
        DesiredAccess: ACCESS_MASK,
        ObjectAttributes: POBJECT_ATTRIBUTES,
    ) -> NTSTATUS;
    pub fn ZwQueryValueKey(
        KeyHandle: HANDLE,
        ValueName: PUNICODE_STRING,
        KeyValueInformationClass: KEY_VALUE_INFORMATION_CLASS,
        KeyValueInformation: PVOID,
        Length: ULONG,
        ResultLength: PULONG,
    ) -> NTSTATUS;
    pub fn ZwClose(Handle: HANDLE) -> NTSTATUS;
    pub fn ZwCreateKey(
        KeyHandle: PHANDLE,
        DesiredAccess: ACCESS_MASK,
        ObjectAttributes: POBJECT_ATTRIBUTES,
        TitleIndex: ULONG,
        Class: PUNICODE_STRING,
        CreateOptions: ULONG,
        Disposition: PULONG,
    ) -> NTSTATUS;
    pub fn ZwSetValueKey(
        KeyHandle: HANDLE,
        ValueName: PUNICODE_STRING,
        TitleIndex: ULONG,
        Type: ULONG,
        Data: PVOID,
        DataSize: ULONG,
    ) -> NTSTATUS;
    pub fn CmRegisterCallbackEx(
        Function: PEX_CALLBACK_FUNCTION,
        Altitude: PCUNICODE_STRING,
        Driver: PVOID,
        Context: PVOID,
        Cookie: PLARGE_INTEGER,
        Reserved: PVOID,
    ) -> NTSTATUS;
    pub fn CmUnRegisterCallback(Cookie: LARGE_INTEGER) -> NTSTATUS;
    pub fn CmCallbackGetKeyObjectID(
        Cookie: PLARGE_INTEGER,
        Object: PVOID,
        ObjectID: *mut ULONG_PTR,
        ObjectName: *mut PCUNICODE_STRING,
    ) -> NTSTATUS;
    pub fn DbgPrintEx(ComponentId: ULONG, Level: ULONG, Format: PCSTR, ...) -> ULONG;
    pub fn KeBugCheckEx(
        BugCheckCode: ULONG,
        BugCheckParameter1: u64,
        BugCheckParameter2: u64,
        BugCheckParameter3: u64,
        BugCheckParameter4: u64,
    ) -> !;

    pub fn PsSetCreateProcessNotifyRoutineEx(
        NotifyRoutine: PCREATE_PROCESS_NOTIFY_ROUTINE_EX,
        Remove: BOOLEAN,
    ) -> NTSTATUS;
    pub fn PsLookupProcessByProcessId(ProcessId: HANDLE, Process: *mut PEPROCESS) -> NTSTATUS;
    pub fn SeLocateProcessImageName(
        Process: PEPROCESS,
        pImageFileName: *mut PUNICODE_STRING,
    ) -> NTSTATUS;
    pub fn PsGetProcessCreateTimeQuadPart(Process: PEPROCESS) -> LONGLONG;
    pub fn PsGetProcessExitStatus(Process: PEPROCESS) -> NTSTATUS;
    pub fn IoThreadToProcess(Thread: PETHREAD) -> PEPROCESS;
    pub fn IoGetCurrentProcess() -> PEPROCESS;
    pub fn PsGetCurrentThreadId() -> HANDLE;
    pub fn PsGetCurrentThread() -> PETHREAD;
    pub fn PsGetThreadId(Thread: PETHREAD) -> HANDLE;
    pub fn ObfDereferenceObject(Object: PVOID) -> LONG_PTR;
    pub fn ExFreePool(P: PVOID);
    pub fn KeQuerySystemTimePrecise(CurrentTime: PLARGE_INTEGER);
    pub fn KeEnterCriticalRegion();
    pub fn KeLeaveCriticalRegion();
    pub fn ExInitializeResourceLite(Resource: PERESOURCE) -> NTSTATUS;
    pub fn ExDeleteResourceLite(Resource: PERESOURCE) -> NTSTATUS;
    pub fn ExAcquireResourceExclusiveLite(Resource: PERESOURCE, Wait: BOOLEAN) -> BOOLEAN;
    pub fn ExReleaseResourceLite(Resource: PERESOURCE);
    pub fn KeAcquireSpinLockRaiseToDpc(SpinLock: PKSPIN_LOCK) -> KIRQL;
    pub fn KeReleaseSpinLock(SpinLock: PKSPIN_LOCK, NewIrql: KIRQL);
    pub fn KeGetCurrentIrql() -> KIRQL;
    pub fn KeInitializeEvent(Event: PRKEVENT, Type: EVENT_TYPE, State: BOOLEAN);
    pub fn KeClearEvent(Event: PRKEVENT);
    pub fn KeSetEvent(Event: PRKEVENT, Increment: KPRIORITY, Wait: BOOLEAN) -> LONG;
    pub fn KeWaitForSingleObject(
        Object: PVOID,
        WaitReason: KWAIT_REASON,
        WaitMode: KPROCESSOR_MODE,
        Alertable: BOOLEAN,
        Timeout: PLARGE_INTEGER,
    ) -> NTSTATUS;
    pub fn KeAreAllApcsDisabled() -> BOOLEAN;
    pub fn KeDelayExecutionThread(
        WaitMode: KPROCESSOR_MODE,
        Alertable: BOOLEAN,
        Interval: PLARGE_INTEGER,
    ) -> NTSTATUS;
}
