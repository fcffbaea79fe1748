//! Host test doubles of the kernel and framework functions the driver calls.
//!
//! `cargo test` builds the driver for Linux; these functions take the place of
//! `ntoskrnl.exe` and the KMDF function table with the same names and
//! signatures, record what the driver asked for, and answer what a test set
//! up. State is per test thread, so tests run in parallel without sharing a
//! fake kernel.
#![allow(non_snake_case, non_upper_case_globals, missing_docs)]
#![allow(clippy::missing_safety_doc)]

extern crate std;

use super::types::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::boxed::Box;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::string::String;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::vec::Vec;

/// Address of the fake `PsProcessType` variable's value (an object type pointer).
pub const FAKE_PROCESS_TYPE: usize = 0x7000_0010;
/// Address of the fake `PsThreadType` variable's value.
pub const FAKE_THREAD_TYPE: usize = 0x7000_0020;
const FAKE_PROCESS_BASE: usize = 0x1000_0000;
const FAKE_THREAD_BASE: usize = 0x2000_0000;

/// A fake `PEPROCESS` for process id `pid`.
#[must_use]
pub fn fake_process(pid: u32) -> PEPROCESS {
    (FAKE_PROCESS_BASE + pid as usize * 16) as PEPROCESS
}

/// A fake `PETHREAD` owned by process `pid`.
#[must_use]
pub fn fake_thread(owner_pid: u32) -> PETHREAD {
    (FAKE_THREAD_BASE + owner_pid as usize * 16) as PETHREAD
}

/// What one `ObRegisterCallbacks` call was given.
#[derive(Debug, Clone)]
pub struct RecordedRegistration {
    pub version: u16,
    pub altitude: String,
    pub context: usize,
    /// (address of the object type variable, operations, has pre, has post)
    pub operations: Vec<(usize, u32, bool, bool)>,
}

/// A registry value the fake `Parameters` key holds.
#[derive(Debug, Clone)]
pub struct FakeValue {
    pub value_type: u32,
    pub data: Vec<u8>,
}

/// The fake kernel of one test thread.
#[derive(Debug, Default)]
pub struct HostKernel {
    /// The process that owns the current thread.
    pub current_process_id: u32,
    /// The process whose address space the current thread is attached to
    /// (`KeStackAttachProcess`), when not its own.
    pub attached_process_id: Option<u32>,
    /// Statuses `ObRegisterCallbacks` returns, in order (then success).
    pub register_results: VecDeque<NTSTATUS>,
    pub registrations: Vec<RecordedRegistration>,
    pub unregistered: Vec<usize>,
    pub wdf_driver_create_result: NTSTATUS,
    pub wdf_driver_config: Option<WDF_DRIVER_CONFIG>,
    /// `None`: the service has no `Parameters` key.
    pub parameters: Option<BTreeMap<String, FakeValue>>,
    pub open_keys: i64,
    /// Live pool allocations: address -> (size, tag).
    pub pool: BTreeMap<usize, (usize, u32)>,
    pub fail_allocations: bool,
    /// Which allocation routine served each allocation, in order.
    pub pool_routine_calls: Vec<String>,
    /// Names the driver looked up with MmGetSystemRoutineAddress, in order.
    pub routine_lookups: Vec<String>,
    /// Routines MmGetSystemRoutineAddress does not find (an older Windows).
    pub missing_routines: Vec<String>,
    pub trace: Vec<String>,
    /// Running processes: pid -> (creation time, NT image path).
    pub processes: BTreeMap<u32, (i64, String)>,
    /// Processes that have exited (PsGetProcessExitStatus is not
    /// STATUS_PENDING) but are still listed and found by id.
    pub exited: std::collections::BTreeSet<u32>,
    /// References taken by PsLookupProcessByProcessId and not yet dropped.
    pub process_references: i64,
    pub current_thread_id: u32,
    pub system_time: i64,
    pub irql: u8,
    /// KeAcquireSpinLockRaiseToDpc calls (DISPATCH_LEVEL scopes entered).
    pub dispatch_scopes: u64,
    /// The writer lock (an ERESOURCE) is held: any resource is.
    pub mutex_held: bool,
    /// The resources held (by address), in the order acquired.
    pub held_resources: Vec<usize>,
    pub mutex_acquisitions: u64,
    /// Open critical regions (KeEnterCriticalRegion minus KeLeaveCriticalRegion).
    pub critical_regions: u32,
    /// ERESOURCEs initialised and not yet deleted.
    pub live_resources: i64,
    pub delays: u64,
    /// (routine address, remove) per PsSetCreateProcessNotifyRoutineEx call.
    pub notify_registrations: Vec<(usize, bool)>,
    pub notify_result: NTSTATUS,
    /// ZwQuerySystemInformation calls (enumerations of the process list).
    pub system_information_queries: u64,
    /// SeLocateProcessImageName calls.
    pub image_name_lookups: u64,
    /// Fails ZwQuerySystemInformation with this status when set.
    pub system_information_result: Option<NTSTATUS>,
    /// Control device: what the driver asked the framework for.
    pub control: ControlDeviceRecord,
    /// The request being dispatched (METHOD_BUFFERED: one system buffer).
    pub request: Option<FakeRequest>,
    /// Fails ZwSetValueKey with this status when set.
    pub set_value_result: Option<NTSTATUS>,
    /// `KeAreAllApcsDisabled` answers this (a guarded region).
    pub all_apcs_disabled: bool,
    /// `KeWaitForSingleObject` calls on this thread.
    pub waits: u64,
    /// Manual queues created (WdfIoQueueDispatchManual), in order.
    pub manual_queues: Vec<usize>,
    /// The file-object configuration WdfDeviceInitSetFileObjectConfig got.
    pub file_object_config: Option<WDF_FILEOBJECT_CONFIG>,
    /// The registry callback (CmRegisterCallbackEx), while registered.
    pub registry_callback: Option<RegistryCallbackRecord>,
    /// Fails CmRegisterCallbackEx with this status when set.
    pub registry_callback_result: Option<NTSTATUS>,
    /// Cookies CmUnRegisterCallback received.
    pub registry_unregistered: Vec<i64>,
    /// Key objects' full names (CmCallbackGetKeyObjectID).
    pub key_names: BTreeMap<usize, String>,
    /// Work items created (WdfWorkItemCreate), in order.
    pub work_items: Vec<WorkItemRecord>,
    /// WdfWorkItemEnqueue calls.
    pub work_item_enqueues: u64,
}

/// A registered registry callback.
#[derive(Debug, Clone)]
pub struct RegistryCallbackRecord {
    pub function: usize,
    pub context: usize,
    pub altitude: String,
    pub driver: usize,
    pub cookie: i64,
}

/// A WDF work item.
#[derive(Debug, Clone)]
pub struct WorkItemRecord {
    pub callback: usize,
    pub parent: usize,
    pub queued: bool,
    pub flushes: u32,
}

/// The first work item's handle.
pub const FAKE_WORK_ITEM: usize = 0x3017_0000;

/// What the driver did to create its control device.
#[derive(Debug, Default, Clone)]
pub struct ControlDeviceRecord {
    pub sddl: Option<String>,
    pub name: Option<String>,
    pub symbolic_link: Option<String>,
    pub execution_level: Option<i32>,
    pub queue_dispatch: Option<i32>,
    pub default_queue: bool,
    pub device_control: Option<usize>,
    pub finished: bool,
    pub deleted: Vec<usize>,
    pub init_freed: bool,
    /// Fails WdfDeviceCreate with this status when set.
    pub create_result: Option<NTSTATUS>,
}

/// A METHOD_BUFFERED request: input and output share one buffer.
#[derive(Debug, Default, Clone)]
pub struct FakeRequest {
    pub system_buffer: Vec<u8>,
    pub input_length: usize,
    pub output_length: usize,
    /// (status, information) once completed.
    pub completion: Option<(NTSTATUS, u64)>,
}

/// The file object of the thread-local request ([`FakeRequest`]).
pub const FAKE_FILE_OBJECT: usize = 0xF11E;

std::thread_local! {
    /// The fake kernel of the current test thread.
    pub static HOST: RefCell<HostKernel> = RefCell::new(HostKernel::default());
}

/// Runs `f` with this thread's fake kernel.
pub fn with_host<R>(f: impl FnOnce(&mut HostKernel) -> R) -> R {
    HOST.with(|host| f(&mut host.borrow_mut()))
}

/// Resets this thread's fake kernel.
pub fn reset_host() {
    with_host(|host| *host = HostKernel::default());
}

unsafe fn unicode_to_string(value: *const UNICODE_STRING) -> String {
    if value.is_null() {
        return String::new();
    }
    // SAFETY: test doubles are called by the driver with valid strings.
    let value = unsafe { &*value };
    if value.Buffer.is_null() {
        return String::new();
    }
    // SAFETY: Length bytes of Buffer are valid per UNICODE_STRING's contract.
    let units = unsafe { core::slice::from_raw_parts(value.Buffer, usize::from(value.Length) / 2) };
    String::from_utf16_lossy(units)
}

pub unsafe extern "C" fn ObRegisterCallbacks(
    CallbackRegistration: POB_CALLBACK_REGISTRATION,
    RegistrationHandle: *mut PVOID,
) -> NTSTATUS {
    // SAFETY: the driver passes a valid registration.
    let registration = unsafe { &*CallbackRegistration };
    let mut operations = Vec::new();
    for index in 0..usize::from(registration.OperationRegistrationCount) {
        // SAFETY: OperationRegistrationCount entries are valid.
        let pointer = unsafe { registration.OperationRegistration.add(index) };
        // SAFETY: as above: in bounds and initialised.
        let entry = unsafe { &*pointer };
        operations.push((
            entry.ObjectType as usize,
            entry.Operations,
            entry.PreOperation.is_some(),
            entry.PostOperation.is_some(),
        ));
    }
    let recorded = RecordedRegistration {
        version: registration.Version,
        // SAFETY: Altitude is a valid UNICODE_STRING.
        altitude: unsafe { unicode_to_string(&raw const registration.Altitude) },
        context: registration.RegistrationContext as usize,
        operations,
    };
    with_host(|host| {
        host.registrations.push(recorded);
        let status = host.register_results.pop_front().unwrap_or(STATUS_SUCCESS);
        if status >= 0 {
            // SAFETY: the driver passes a valid out pointer.
            unsafe { *RegistrationHandle = (0xC0B0_0000 + host.registrations.len()) as PVOID };
        }
        status
    })
}

pub unsafe extern "C" fn ObUnRegisterCallbacks(RegistrationHandle: PVOID) {
    with_host(|host| host.unregistered.push(RegistrationHandle as usize));
}

pub unsafe extern "C" fn ObGetFilterVersion() -> USHORT {
    0x0100
}

pub unsafe extern "C" fn PsGetCurrentProcessId() -> HANDLE {
    with_host(|host| host.current_process_id as usize as HANDLE)
}

pub unsafe extern "C" fn PsGetProcessId(Process: PEPROCESS) -> HANDLE {
    ((Process as usize).wrapping_sub(FAKE_PROCESS_BASE) / 16) as HANDLE
}

pub unsafe extern "C" fn PsGetThreadProcessId(Thread: PETHREAD) -> HANDLE {
    ((Thread as usize).wrapping_sub(FAKE_THREAD_BASE) / 16) as HANDLE
}

const POOL_ALIGN: usize = 16;

pub unsafe extern "C" fn ExAllocatePool2(
    Flags: POOL_FLAGS,
    NumberOfBytes: SIZE_T,
    Tag: ULONG,
) -> PVOID {
    assert_eq!(
        Flags, POOL_FLAG_NON_PAGED,
        "the driver only allocates non-paged pool"
    );
    with_host(|host| host.pool_routine_calls.push("ExAllocatePool2".into()));
    if with_host(|host| host.fail_allocations) || NumberOfBytes == 0 {
        return core::ptr::null_mut();
    }
    let size = usize::try_from(NumberOfBytes).expect("size fits");
    let layout = Layout::from_size_align(size, POOL_ALIGN).expect("layout");
    // SAFETY: non-zero size; the pool zero-initialises like ExAllocatePool2.
    let pointer = unsafe { System.alloc_zeroed(layout) };
    with_host(|host| host.pool.insert(pointer as usize, (size, Tag)));
    pointer.cast()
}

/// Like the kernel's: the block's contents are not initialised (filled with
/// 0xCC here, so a caller that relies on zeroes fails its test).
pub unsafe extern "C" fn ExAllocatePoolWithTag(
    PoolType: POOL_TYPE,
    NumberOfBytes: SIZE_T,
    Tag: ULONG,
) -> PVOID {
    assert_eq!(
        PoolType,
        _POOL_TYPE::NonPagedPoolNx,
        "the driver only allocates non-paged, no-execute pool"
    );
    with_host(|host| host.pool_routine_calls.push("ExAllocatePoolWithTag".into()));
    if with_host(|host| host.fail_allocations) || NumberOfBytes == 0 {
        return core::ptr::null_mut();
    }
    let size = usize::try_from(NumberOfBytes).expect("size fits");
    let layout = Layout::from_size_align(size, POOL_ALIGN).expect("layout");
    // SAFETY: non-zero size.
    let pointer = unsafe { System.alloc(layout) };
    // SAFETY: `size` bytes were just allocated.
    unsafe { core::ptr::write_bytes(pointer, 0xCC, size) };
    with_host(|host| host.pool.insert(pointer as usize, (size, Tag)));
    pointer.cast()
}

/// Finds `ExAllocatePool2` (the host double above) unless the test lists it
/// in `missing_routines`; nothing else.
pub unsafe extern "C" fn MmGetSystemRoutineAddress(SystemRoutineName: PUNICODE_STRING) -> PVOID {
    // SAFETY: the caller passes a valid UNICODE_STRING.
    let name = unsafe { &*SystemRoutineName };
    // SAFETY: `Length` bytes of UTF-16 at `Buffer`.
    let units = unsafe { core::slice::from_raw_parts(name.Buffer, usize::from(name.Length / 2)) };
    let name = String::from_utf16_lossy(units);
    assert_eq!(
        with_host(|host| host.irql),
        0,
        "MmGetSystemRoutineAddress above PASSIVE_LEVEL"
    );
    let missing = with_host(|host| {
        host.routine_lookups.push(name.clone());
        host.missing_routines.contains(&name)
    });
    match name.as_str() {
        "ExAllocatePool2" if !missing => ExAllocatePool2 as *const () as PVOID,
        _ => core::ptr::null_mut(),
    }
}

pub unsafe extern "C" fn ExFreePoolWithTag(P: PVOID, Tag: ULONG) {
    let (size, tag) =
        with_host(|host| host.pool.remove(&(P as usize))).expect("freeing a live pool block");
    assert_eq!(tag, Tag, "pool block freed with another tag");
    let layout = Layout::from_size_align(size, POOL_ALIGN).expect("layout");
    // SAFETY: allocated above with this layout.
    unsafe { System.dealloc(P.cast(), layout) };
}

const SERVICE_KEY: usize = 0x5E0;
const PARAMETERS_KEY: usize = 0x9A0;

pub unsafe extern "C" fn ZwOpenKey(
    KeyHandle: PHANDLE,
    _DesiredAccess: ACCESS_MASK,
    ObjectAttributes: POBJECT_ATTRIBUTES,
) -> NTSTATUS {
    // SAFETY: the driver passes valid attributes.
    let attributes = unsafe { &*ObjectAttributes };
    // SAFETY: ObjectName is a valid UNICODE_STRING.
    let name = unsafe { unicode_to_string(attributes.ObjectName) };
    let handle = if attributes.RootDirectory.is_null() {
        SERVICE_KEY
    } else if attributes.RootDirectory as usize == SERVICE_KEY
        && name.eq_ignore_ascii_case("Parameters")
        && with_host(|host| host.parameters.is_some())
    {
        PARAMETERS_KEY
    } else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    with_host(|host| host.open_keys += 1);
    // SAFETY: valid out pointer.
    unsafe { *KeyHandle = handle as HANDLE };
    STATUS_SUCCESS
}

pub unsafe extern "C" fn ZwQueryValueKey(
    KeyHandle: HANDLE,
    ValueName: PUNICODE_STRING,
    KeyValueInformationClass: KEY_VALUE_INFORMATION_CLASS,
    KeyValueInformation: PVOID,
    Length: ULONG,
    ResultLength: PULONG,
) -> NTSTATUS {
    assert_eq!(
        KeyValueInformationClass,
        _KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation
    );
    if KeyHandle as usize != PARAMETERS_KEY {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    }
    // SAFETY: valid UNICODE_STRING from the driver.
    let name = unsafe { unicode_to_string(ValueName) };
    let value = with_host(|host| {
        host.parameters.as_ref().and_then(|values| {
            values
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(&name))
                .map(|(_, v)| v.clone())
        })
    });
    let Some(value) = value else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    const HEADER: usize = 12;
    let needed = HEADER + value.data.len();
    // SAFETY: valid out pointer.
    unsafe { *ResultLength = u32::try_from(needed).expect("small") };
    let length = Length as usize;
    if length < HEADER {
        return STATUS_BUFFER_TOO_SMALL;
    }
    let out = KeyValueInformation.cast::<u8>();
    let header = [
        0u32,
        value.value_type,
        u32::try_from(value.data.len()).expect("small"),
    ];
    for (index, word) in header.iter().enumerate() {
        // SAFETY: `length >= HEADER`; the buffer is at least that long.
        let field = unsafe { out.add(index * 4) };
        // SAFETY: as above.
        unsafe { field.cast::<u32>().write_unaligned(*word) };
    }
    if length < needed {
        return STATUS_BUFFER_OVERFLOW;
    }
    // SAFETY: the buffer holds `needed` bytes.
    let data = unsafe { out.add(HEADER) };
    // SAFETY: as above; source and destination do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(value.data.as_ptr(), data, value.data.len()) };
    STATUS_SUCCESS
}

pub unsafe extern "C" fn ZwClose(Handle: HANDLE) -> NTSTATUS {
    assert!(
        matches!(Handle as usize, SERVICE_KEY | PARAMETERS_KEY),
        "closing an unknown handle"
    );
    with_host(|host| host.open_keys -= 1);
    STATUS_SUCCESS
}

/// `DbgPrintEx(ComponentId, Level, "%s", message)`: the only form the driver uses.
pub unsafe extern "C" fn DbgPrintEx(
    _ComponentId: ULONG,
    Level: ULONG,
    Format: PCSTR,
    Message: PCSTR,
) -> ULONG {
    // SAFETY: NUL-terminated strings from the driver.
    let format = unsafe { core::ffi::CStr::from_ptr(Format) };
    assert_eq!(
        format.to_bytes(),
        b"%s",
        "the driver prints preformatted text only"
    );
    // SAFETY: as above.
    let message = unsafe { core::ffi::CStr::from_ptr(Message) }
        .to_string_lossy()
        .into_owned();
    with_host(|host| host.trace.push(std::format!("[{Level}] {message}")));
    0
}

pub unsafe extern "C" fn KeBugCheckEx(code: ULONG, p1: u64, p2: u64, p3: u64, p4: u64) -> ! {
    panic!("KeBugCheckEx({code:#x}, {p1:#x}, {p2:#x}, {p3:#x}, {p4:#x})");
}

fn pid_of_process(process: PEPROCESS) -> u32 {
    u32::try_from((process as usize).wrapping_sub(FAKE_PROCESS_BASE) / 16).unwrap_or(u32::MAX)
}

pub unsafe extern "C" fn PsGetProcessExitStatus(Process: PEPROCESS) -> NTSTATUS {
    let pid = pid_of_process(Process);
    with_host(|host| {
        if host.exited.contains(&pid) {
            STATUS_SUCCESS
        } else {
            STATUS_PENDING
        }
    })
}

pub unsafe extern "C" fn PsSetCreateProcessNotifyRoutineEx(
    NotifyRoutine: PCREATE_PROCESS_NOTIFY_ROUTINE_EX,
    Remove: BOOLEAN,
) -> NTSTATUS {
    let address = NotifyRoutine.map_or(0, |routine| routine as usize);
    with_host(|host| {
        host.notify_registrations.push((address, Remove != 0));
        host.notify_result
    })
}

pub unsafe extern "C" fn PsLookupProcessByProcessId(
    ProcessId: HANDLE,
    Process: *mut PEPROCESS,
) -> NTSTATUS {
    let pid = u32::try_from(ProcessId as usize).unwrap_or(u32::MAX);
    with_host(|host| {
        if host.processes.contains_key(&pid) {
            host.process_references += 1;
            // SAFETY: valid out pointer from the driver.
            unsafe { *Process = fake_process(pid) };
            STATUS_SUCCESS
        } else {
            STATUS_INVALID_PARAMETER
        }
    })
}

pub unsafe extern "C" fn ObfDereferenceObject(Object: PVOID) -> LONG_PTR {
    with_host(|host| {
        host.process_references -= 1;
        assert!(
            host.process_references >= 0,
            "dereferenced {Object:?} more often than referenced"
        );
        0
    })
}

pub unsafe extern "C" fn SeLocateProcessImageName(
    Process: PEPROCESS,
    pImageFileName: *mut PUNICODE_STRING,
) -> NTSTATUS {
    let pid = pid_of_process(Process);
    with_host(|host| host.image_name_lookups += 1);
    let Some(image) = with_host(|host| host.processes.get(&pid).map(|(_, image)| image.clone()))
    else {
        return STATUS_INVALID_PARAMETER;
    };
    let units: Vec<u16> = image.encode_utf16().collect();
    let bytes = 16 + units.len() * 2;
    // SAFETY: a pool allocation like the kernel's (freed with ExFreePool).
    let block = unsafe {
        ExAllocatePool2(
            POOL_FLAG_NON_PAGED,
            bytes as u64,
            u32::from_le_bytes(*b"SeIm"),
        )
    };
    if block.is_null() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let string = block.cast::<UNICODE_STRING>();
    // SAFETY: `block` holds the header and the characters.
    let buffer = unsafe { block.cast::<u8>().add(16) }.cast::<u16>();
    // SAFETY: as above.
    unsafe { core::ptr::copy_nonoverlapping(units.as_ptr(), buffer, units.len()) };
    let length = u16::try_from(units.len() * 2).expect("short path");
    // SAFETY: as above.
    unsafe {
        string.write(UNICODE_STRING {
            Length: length,
            MaximumLength: length,
            Buffer: buffer,
        })
    };
    // SAFETY: valid out pointer.
    unsafe { *pImageFileName = string };
    STATUS_SUCCESS
}

pub unsafe extern "C" fn ExFreePool(P: PVOID) {
    let tag = with_host(|host| host.pool.get(&(P as usize)).map(|&(_, tag)| tag))
        .expect("freeing a live pool block");
    // SAFETY: a live block with its own tag.
    unsafe { ExFreePoolWithTag(P, tag) };
}

pub unsafe extern "C" fn PsGetProcessCreateTimeQuadPart(Process: PEPROCESS) -> LONGLONG {
    let pid = pid_of_process(Process);
    with_host(|host| host.processes.get(&pid).map_or(0, |&(time, _)| time))
}

pub unsafe extern "C" fn IoThreadToProcess(Thread: PETHREAD) -> PEPROCESS {
    fake_process(
        u32::try_from((Thread as usize).wrapping_sub(FAKE_THREAD_BASE) / 16).unwrap_or(u32::MAX),
    )
}

/// The current (attached) process: not the thread's owner while attached.
pub unsafe extern "C" fn IoGetCurrentProcess() -> PEPROCESS {
    fake_process(with_host(|host| {
        host.attached_process_id.unwrap_or(host.current_process_id)
    }))
}

/// The current thread: owned by `current_process_id`, attached or not.
pub unsafe extern "C" fn PsGetCurrentThread() -> PETHREAD {
    fake_thread(with_host(|host| host.current_process_id))
}

pub unsafe extern "C" fn PsGetCurrentThreadId() -> HANDLE {
    with_host(|host| host.current_thread_id as usize as HANDLE)
}

/// Fake thread ids: the owning process id + 1.
pub unsafe extern "C" fn PsGetThreadId(Thread: PETHREAD) -> HANDLE {
    ((Thread as usize).wrapping_sub(FAKE_THREAD_BASE) / 16 + 1) as HANDLE
}

pub unsafe extern "C" fn KeQuerySystemTimePrecise(CurrentTime: PLARGE_INTEGER) {
    let now = with_host(|host| {
        host.system_time += 1;
        host.system_time
    });
    // SAFETY: valid out pointer.
    unsafe { CurrentTime.write(LARGE_INTEGER { QuadPart: now }) };
}

pub unsafe extern "C" fn KeEnterCriticalRegion() {
    with_host(|host| host.critical_regions += 1);
}

pub unsafe extern "C" fn KeLeaveCriticalRegion() {
    with_host(|host| {
        assert!(host.critical_regions > 0, "critical region left twice");
        host.critical_regions -= 1;
    });
}

pub unsafe extern "C" fn ExInitializeResourceLite(_Resource: PERESOURCE) -> NTSTATUS {
    with_host(|host| host.live_resources += 1);
    STATUS_SUCCESS
}

pub unsafe extern "C" fn ExDeleteResourceLite(Resource: PERESOURCE) -> NTSTATUS {
    with_host(|host| {
        assert!(
            !host.held_resources.contains(&(Resource as usize)),
            "resource deleted while held"
        );
        host.live_resources -= 1;
    });
    STATUS_SUCCESS
}

pub unsafe extern "C" fn ExAcquireResourceExclusiveLite(
    Resource: PERESOURCE,
    Wait: BOOLEAN,
) -> BOOLEAN {
    with_host(|host| {
        assert!(
            !host.held_resources.contains(&(Resource as usize)),
            "writer lock acquired recursively"
        );
        assert!(Wait != 0, "the writers always wait");
        assert!(
            host.irql <= APC_LEVEL as u8,
            "resource acquired above APC_LEVEL"
        );
        assert!(
            host.critical_regions > 0 || host.irql == APC_LEVEL as u8,
            "resource acquired with normal kernel APCs enabled"
        );
        host.held_resources.push(Resource as usize);
        host.mutex_held = true;
        host.mutex_acquisitions += 1;
    });
    1
}

pub unsafe extern "C" fn ExReleaseResourceLite(Resource: PERESOURCE) {
    with_host(|host| {
        let held = host
            .held_resources
            .iter()
            .position(|&held| held == Resource as usize)
            .expect("resource released while not held");
        host.held_resources.remove(held);
        host.mutex_held = !host.held_resources.is_empty();
    });
}

/// A real spin lock (threaded host tests contend on it) that also raises
/// this thread's fake IRQL.
pub unsafe extern "C" fn KeAcquireSpinLockRaiseToDpc(SpinLock: PKSPIN_LOCK) -> KIRQL {
    // SAFETY: a KSPIN_LOCK is an aligned u64 that lives while it is used.
    let word = unsafe { &*SpinLock.cast::<AtomicU64>() };
    while word
        .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
    with_host(|host| {
        let old = host.irql;
        assert!(old <= DISPATCH_LEVEL as u8);
        host.irql = DISPATCH_LEVEL as u8;
        host.dispatch_scopes += 1;
        old
    })
}

pub unsafe extern "C" fn KeReleaseSpinLock(SpinLock: PKSPIN_LOCK, NewIrql: KIRQL) {
    // SAFETY: as in KeAcquireSpinLockRaiseToDpc.
    let word = unsafe { &*SpinLock.cast::<AtomicU64>() };
    assert_eq!(
        word.swap(0, Ordering::Release),
        1,
        "spin lock released while not held"
    );
    with_host(|host| host.irql = NewIrql);
}

// ---- Kernel events: real ones, so a waiter and a replier on two threads
// meet as on Windows. Word 0 of the KEVENT is the signal state, word 1 the
// event type; one condition variable wakes every waiter to re-check.

static EVENT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
static EVENT_SIGNAL: std::sync::Condvar = std::sync::Condvar::new();

fn event_words(event: PRKEVENT) -> (&'static AtomicU64, &'static AtomicU64) {
    let base = event.cast::<AtomicU64>();
    // SAFETY: a KEVENT is three aligned u64 words the caller keeps alive
    // while it uses the event.
    let signal = unsafe { &*base };
    // SAFETY: as above: word 1 of the same KEVENT.
    let kind = unsafe { base.add(1) };
    // SAFETY: as above.
    (signal, unsafe { &*kind })
}

pub unsafe extern "C" fn KeInitializeEvent(Event: PRKEVENT, Type: EVENT_TYPE, State: BOOLEAN) {
    let (signal, kind) = event_words(Event);
    kind.store(Type as u64, Ordering::SeqCst);
    signal.store(u64::from(State != 0), Ordering::SeqCst);
}

pub unsafe extern "C" fn KeClearEvent(Event: PRKEVENT) {
    assert!(with_host(|host| host.irql) <= DISPATCH_LEVEL as u8);
    let _guard = EVENT_LOCK.lock().expect("event lock");
    event_words(Event).0.store(0, Ordering::SeqCst);
}

pub unsafe extern "C" fn KeSetEvent(Event: PRKEVENT, _Increment: KPRIORITY, Wait: BOOLEAN) -> LONG {
    assert!(with_host(|host| host.irql) <= DISPATCH_LEVEL as u8);
    assert_eq!(Wait, 0, "the driver never sets an event with Wait = TRUE");
    let _guard = EVENT_LOCK.lock().expect("event lock");
    let previous = event_words(Event).0.swap(1, Ordering::SeqCst);
    EVENT_SIGNAL.notify_all();
    previous as LONG
}

/// Waits on a KEVENT for at most the relative `Timeout` (100 ns units,
/// negative); a synchronization event is reset by the satisfied wait.
pub unsafe extern "C" fn KeWaitForSingleObject(
    Object: PVOID,
    WaitReason: KWAIT_REASON,
    WaitMode: KPROCESSOR_MODE,
    Alertable: BOOLEAN,
    Timeout: PLARGE_INTEGER,
) -> NTSTATUS {
    assert_eq!(WaitReason, _KWAIT_REASON::Executive);
    assert_eq!(i32::from(WaitMode), _MODE::KernelMode);
    assert_eq!(Alertable, 0, "the driver's waits are not alertable");
    assert!(
        !Timeout.is_null(),
        "the driver never waits without a timeout"
    );
    // SAFETY: a valid LARGE_INTEGER from the driver.
    let timeout = unsafe { *Timeout };
    // SAFETY: QuadPart covers the whole union.
    let relative = unsafe { timeout.QuadPart };
    assert!(relative < 0, "a relative timeout");
    with_host(|host| {
        assert!(host.irql <= APC_LEVEL as u8, "a timed wait above APC_LEVEL");
        host.waits += 1;
    });
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_nanos(relative.unsigned_abs() * 100);
    let (signal, kind) = event_words(Object.cast());
    let mut guard = EVENT_LOCK.lock().expect("event lock");
    loop {
        if signal.load(Ordering::SeqCst) != 0 {
            if kind.load(Ordering::SeqCst) == _EVENT_TYPE::SynchronizationEvent as u64 {
                signal.store(0, Ordering::SeqCst);
            }
            return STATUS_SUCCESS;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return STATUS_TIMEOUT;
        }
        guard = EVENT_SIGNAL
            .wait_timeout(guard, deadline - now)
            .expect("event lock")
            .0;
    }
}

pub unsafe extern "C" fn KeAreAllApcsDisabled() -> BOOLEAN {
    with_host(|host| u8::from(host.all_apcs_disabled || host.irql >= APC_LEVEL as u8))
}

pub unsafe extern "C" fn KeGetCurrentIrql() -> KIRQL {
    with_host(|host| host.irql)
}

pub unsafe extern "C" fn KeDelayExecutionThread(
    _WaitMode: KPROCESSOR_MODE,
    _Alertable: BOOLEAN,
    _Interval: PLARGE_INTEGER,
) -> NTSTATUS {
    with_host(|host| host.delays += 1);
    std::thread::yield_now();
    STATUS_SUCCESS
}

/// `ZwQuerySystemInformation(SystemProcessInformation)` over the fake
/// process list, with the kernel's size protocol.
pub unsafe extern "C" fn ZwQuerySystemInformation(
    SystemInformationClass: ULONG,
    SystemInformation: PVOID,
    SystemInformationLength: ULONG,
    ReturnLength: PULONG,
) -> NTSTATUS {
    use super::system_information::{SystemProcessInformation, SYSTEM_PROCESS_INFORMATION};
    assert_eq!(SystemInformationClass, SystemProcessInformation);
    with_host(|host| host.system_information_queries += 1);
    if let Some(status) = with_host(|host| host.system_information_result) {
        return status;
    }
    let pids: Vec<u32> = with_host(|host| host.processes.keys().copied().collect());
    let entry = core::mem::size_of::<SYSTEM_PROCESS_INFORMATION>().next_multiple_of(8);
    let needed = entry * pids.len().max(1);
    if !ReturnLength.is_null() {
        // SAFETY: valid out pointer.
        unsafe { *ReturnLength = u32::try_from(needed).expect("small") };
    }
    if (SystemInformationLength as usize) < needed {
        return STATUS_INFO_LENGTH_MISMATCH;
    }
    for (index, pid) in pids.iter().enumerate() {
        // SAFETY: all-zero bytes are a valid SYSTEM_PROCESS_INFORMATION.
        let mut info: SYSTEM_PROCESS_INFORMATION = unsafe { core::mem::zeroed() };
        info.NextEntryOffset = if index + 1 == pids.len() {
            0
        } else {
            u32::try_from(entry).expect("small")
        };
        info.UniqueProcessId = *pid as usize as HANDLE;
        // SAFETY: the buffer holds `needed` bytes.
        let at = unsafe { SystemInformation.cast::<u8>().add(index * entry) };
        // SAFETY: as above.
        unsafe {
            at.cast::<SYSTEM_PROCESS_INFORMATION>()
                .write_unaligned(info)
        };
    }
    STATUS_SUCCESS
}

pub unsafe extern "C" fn ZwCreateKey(
    KeyHandle: PHANDLE,
    _DesiredAccess: ACCESS_MASK,
    ObjectAttributes: POBJECT_ATTRIBUTES,
    _TitleIndex: ULONG,
    _Class: PUNICODE_STRING,
    _CreateOptions: ULONG,
    _Disposition: PULONG,
) -> NTSTATUS {
    // SAFETY: the driver passes valid attributes.
    let attributes = unsafe { &*ObjectAttributes };
    // SAFETY: ObjectName is a valid UNICODE_STRING.
    let name = unsafe { unicode_to_string(attributes.ObjectName) };
    if attributes.RootDirectory as usize != SERVICE_KEY || !name.eq_ignore_ascii_case("Parameters")
    {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    }
    with_host(|host| {
        host.parameters.get_or_insert_with(BTreeMap::new);
        host.open_keys += 1;
    });
    // SAFETY: valid out pointer.
    unsafe { *KeyHandle = PARAMETERS_KEY as HANDLE };
    STATUS_SUCCESS
}

pub unsafe extern "C" fn ZwSetValueKey(
    KeyHandle: HANDLE,
    ValueName: PUNICODE_STRING,
    _TitleIndex: ULONG,
    Type: ULONG,
    Data: PVOID,
    DataSize: ULONG,
) -> NTSTATUS {
    assert_eq!(
        KeyHandle as usize, PARAMETERS_KEY,
        "values are written to the Parameters key"
    );
    if let Some(status) = with_host(|host| host.set_value_result) {
        return status;
    }
    // SAFETY: valid string from the driver.
    let name = unsafe { unicode_to_string(ValueName) };
    // SAFETY: DataSize bytes at Data.
    let data =
        unsafe { core::slice::from_raw_parts(Data.cast::<u8>(), DataSize as usize) }.to_vec();
    with_host(|host| {
        host.parameters.get_or_insert_with(BTreeMap::new).insert(
            name,
            FakeValue {
                value_type: Type,
                data,
            },
        )
    });
    STATUS_SUCCESS
}

const FAKE_DEVICE_INIT: usize = 0xD1D1;
/// The control device's handle.
pub const FAKE_DEVICE: usize = 0xDE71;
const FAKE_QUEUE: usize = 0x0E0E;
/// The fake request handle tests pass to EvtIoDeviceControl.
pub const FAKE_REQUEST: usize = 0x7E07;

pub unsafe fn WdfControlDeviceInitAllocate(
    _Driver: WDFDRIVER,
    SDDLString: PCUNICODE_STRING,
) -> PWDFDEVICE_INIT {
    // SAFETY: a valid string from the driver.
    let sddl = unsafe { unicode_to_string(SDDLString) };
    with_host(|host| host.control.sddl = Some(sddl));
    FAKE_DEVICE_INIT as PWDFDEVICE_INIT
}

pub unsafe fn WdfDeviceInitAssignName(
    _DeviceInit: PWDFDEVICE_INIT,
    DeviceName: PCUNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: a valid string from the driver.
    let name = unsafe { unicode_to_string(DeviceName) };
    with_host(|host| host.control.name = Some(name));
    STATUS_SUCCESS
}

pub unsafe fn WdfDeviceInitFree(DeviceInit: PWDFDEVICE_INIT) {
    assert_eq!(DeviceInit as usize, FAKE_DEVICE_INIT);
    with_host(|host| host.control.init_freed = true);
}

pub unsafe fn WdfDeviceCreate(
    DeviceInit: *mut PWDFDEVICE_INIT,
    DeviceAttributes: PWDF_OBJECT_ATTRIBUTES,
    Device: *mut WDFDEVICE,
) -> NTSTATUS {
    // SAFETY: valid attributes when non-null.
    let level = unsafe { DeviceAttributes.as_ref() }.map(|attributes| attributes.ExecutionLevel);
    if let Some(status) = with_host(|host| {
        host.control.execution_level = level;
        host.control.create_result
    }) {
        return status;
    }
    // SAFETY: valid out pointers; the framework takes ownership of the init.
    unsafe {
        *DeviceInit = core::ptr::null_mut();
    }
    // SAFETY: as above.
    unsafe { *Device = FAKE_DEVICE as WDFDEVICE };
    STATUS_SUCCESS
}

pub unsafe fn WdfDeviceCreateSymbolicLink(
    _Device: WDFDEVICE,
    SymbolicLinkName: PCUNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: a valid string from the driver.
    let name = unsafe { unicode_to_string(SymbolicLinkName) };
    with_host(|host| host.control.symbolic_link = Some(name));
    STATUS_SUCCESS
}

pub unsafe fn WdfIoQueueCreate(
    Device: WDFDEVICE,
    Config: PWDF_IO_QUEUE_CONFIG,
    _QueueAttributes: PWDF_OBJECT_ATTRIBUTES,
    Queue: *mut WDFQUEUE,
) -> NTSTATUS {
    assert_eq!(Device as usize, FAKE_DEVICE);
    // SAFETY: a valid config from the driver.
    let config = unsafe { *Config };
    if config.DispatchType == _WDF_IO_QUEUE_DISPATCH_TYPE::WdfIoQueueDispatchManual {
        assert_eq!(
            config.PowerManaged,
            _WDF_TRI_STATE::WdfFalse,
            "a control device's queue"
        );
        assert_eq!(
            config.DefaultQueue, 0,
            "a manual queue is not the default queue"
        );
        assert!(
            !Queue.is_null(),
            "the driver keeps its manual queues' handles"
        );
        let queue = NEXT_HANDLE.fetch_add(0x10, Ordering::Relaxed);
        shared().queues.insert(queue, VecDeque::new());
        with_host(|host| host.manual_queues.push(queue));
        // SAFETY: valid out pointer.
        unsafe { *Queue = queue as WDFQUEUE };
        return STATUS_SUCCESS;
    }
    with_host(|host| {
        host.control.queue_dispatch = Some(config.DispatchType);
        host.control.default_queue = config.DefaultQueue != 0;
        host.control.device_control = config.EvtIoDeviceControl.map(|routine| routine as usize);
    });
    if !Queue.is_null() {
        // SAFETY: valid out pointer.
        unsafe { *Queue = FAKE_QUEUE as WDFQUEUE };
    }
    STATUS_SUCCESS
}

pub unsafe fn WdfControlFinishInitializing(_Device: WDFDEVICE) {
    with_host(|host| host.control.finished = true);
}

pub unsafe fn WdfObjectDelete(Object: WDFOBJECT) {
    with_host(|host| host.control.deleted.push(Object as usize));
}

fn retrieve(
    Request: WDFREQUEST,
    MinimumRequiredSize: usize,
    Buffer: *mut PVOID,
    Length: *mut usize,
    input: bool,
) -> NTSTATUS {
    if let Some(request) = shared().requests.get_mut(&(Request as usize)) {
        let length = if input {
            request.input_length
        } else {
            request.output_length
        };
        if length == 0 || length < MinimumRequiredSize {
            return STATUS_BUFFER_TOO_SMALL;
        }
        assert!(
            request.completion.is_none(),
            "buffer of a completed request"
        );
        // SAFETY: valid out pointers; the buffer lives in the registry until
        // the test takes the request out.
        unsafe { *Buffer = request.system_buffer.as_mut_ptr().cast() };
        // SAFETY: as above.
        unsafe { *Length = length };
        return STATUS_SUCCESS;
    }
    with_host(|host| {
        let Some(request) = host.request.as_mut() else {
            return STATUS_INVALID_PARAMETER;
        };
        let length = if input {
            request.input_length
        } else {
            request.output_length
        };
        // The framework refuses a zero-length buffer, and one under the minimum.
        if length == 0 || length < MinimumRequiredSize {
            return STATUS_BUFFER_TOO_SMALL;
        }
        // SAFETY: valid out pointers from the driver; the buffer outlives the request.
        unsafe {
            *Buffer = request.system_buffer.as_mut_ptr().cast();
        }
        // SAFETY: as above.
        unsafe { *Length = length };
        STATUS_SUCCESS
    })
}

pub unsafe fn WdfRequestRetrieveInputBuffer(
    _Request: WDFREQUEST,
    MinimumRequiredSize: usize,
    Buffer: *mut PVOID,
    Length: *mut usize,
) -> NTSTATUS {
    retrieve(_Request, MinimumRequiredSize, Buffer, Length, true)
}

pub unsafe fn WdfRequestRetrieveOutputBuffer(
    _Request: WDFREQUEST,
    MinimumRequiredSize: usize,
    Buffer: *mut PVOID,
    Length: *mut usize,
) -> NTSTATUS {
    retrieve(_Request, MinimumRequiredSize, Buffer, Length, false)
}

pub unsafe fn WdfRequestCompleteWithInformation(
    _Request: WDFREQUEST,
    Status: NTSTATUS,
    Information: ULONG_PTR,
) {
    if let Some(request) = shared().requests.get_mut(&(_Request as usize)) {
        assert!(request.completion.is_none(), "request completed twice");
        assert!(
            request.queue.is_none(),
            "request completed while in a queue"
        );
        request.completion = Some((Status, Information));
        return;
    }
    with_host(|host| {
        let request = host
            .request
            .as_mut()
            .expect("a request is being dispatched");
        assert!(request.completion.is_none(), "request completed twice");
        request.completion = Some((Status, Information));
    });
}

// ---- Requests that outlive one dispatch (pended in manual queues), shared
// by every thread so a test's "handler" thread can complete what another
// thread queued. Handles are unique across tests.

static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(0x10_0000);

/// A request of the shared registry.
#[derive(Debug, Default, Clone)]
pub struct SharedRequest {
    pub system_buffer: Vec<u8>,
    pub input_length: usize,
    pub output_length: usize,
    pub file_object: usize,
    /// The manual queue holding it, while queued.
    pub queue: Option<usize>,
    pub completion: Option<(NTSTATUS, u64)>,
}

/// Requests and manual queues of the shared registry.
#[derive(Debug, Default)]
pub struct SharedWdf {
    pub requests: BTreeMap<usize, SharedRequest>,
    pub queues: BTreeMap<usize, VecDeque<usize>>,
}

static SHARED: std::sync::Mutex<SharedWdf> = std::sync::Mutex::new(SharedWdf {
    requests: BTreeMap::new(),
    queues: BTreeMap::new(),
});

/// The shared registry (a test that panicked while holding it does not
/// poison the others).
pub fn shared() -> std::sync::MutexGuard<'static, SharedWdf> {
    SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A new METHOD_BUFFERED request on `file_object` with `input` and room for
/// `output_length` bytes of output.
pub fn new_request(file_object: usize, input: &[u8], output_length: usize) -> WDFREQUEST {
    let handle = NEXT_HANDLE.fetch_add(0x10, Ordering::Relaxed);
    let mut system_buffer = input.to_vec();
    system_buffer.resize(input.len().max(output_length), 0);
    shared().requests.insert(
        handle,
        SharedRequest {
            system_buffer,
            input_length: input.len(),
            output_length,
            file_object,
            queue: None,
            completion: None,
        },
    );
    handle as WDFREQUEST
}

/// `(status, information, output bytes)` once `request` is completed.
pub fn completion_of(request: WDFREQUEST) -> Option<(NTSTATUS, u64, Vec<u8>)> {
    let registry = shared();
    let request = registry.requests.get(&(request as usize))?;
    let (status, information) = request.completion?;
    let length = usize::try_from(information)
        .unwrap_or(0)
        .min(request.output_length);
    Some((
        status,
        information,
        request.system_buffer[..length].to_vec(),
    ))
}

/// Cancels a queued request as the framework does (CancelIoEx): out of its
/// queue, completed with STATUS_CANCELLED. False if it was not queued.
pub fn cancel_queued(request: WDFREQUEST) -> bool {
    let mut registry = shared();
    let handle = request as usize;
    let Some(queue) = registry.requests.get(&handle).and_then(|r| r.queue) else {
        return false;
    };
    if let Some(entries) = registry.queues.get_mut(&queue) {
        entries.retain(|&entry| entry != handle);
    }
    let entry = registry.requests.get_mut(&handle).expect("registered");
    entry.queue = None;
    entry.completion = Some((STATUS_CANCELLED, 0));
    true
}

/// Requests waiting in manual queue `queue`.
pub fn queued_in(queue: usize) -> usize {
    shared().queues.get(&queue).map_or(0, VecDeque::len)
}

fn queue_dequeue(queue: usize, file_object: Option<usize>) -> Option<usize> {
    let mut registry = shared();
    let registry = &mut *registry;
    let entries = registry.queues.get_mut(&queue).expect("a manual queue");
    let position = entries.iter().position(|handle| {
        file_object.is_none_or(|wanted| registry.requests[handle].file_object == wanted)
    })?;
    let handle = entries.remove(position)?;
    registry
        .requests
        .get_mut(&handle)
        .expect("registered")
        .queue = None;
    Some(handle)
}

pub unsafe fn WdfIoQueueRetrieveNextRequest(
    Queue: WDFQUEUE,
    OutRequest: *mut WDFREQUEST,
) -> NTSTATUS {
    assert!(with_host(|host| host.irql) <= DISPATCH_LEVEL as u8);
    let Some(handle) = queue_dequeue(Queue as usize, None) else {
        return STATUS_NO_MORE_ENTRIES;
    };
    // SAFETY: valid out pointer.
    unsafe { *OutRequest = handle as WDFREQUEST };
    STATUS_SUCCESS
}

pub unsafe fn WdfIoQueueRetrieveRequestByFileObject(
    Queue: WDFQUEUE,
    FileObject: WDFFILEOBJECT,
    OutRequest: *mut WDFREQUEST,
) -> NTSTATUS {
    assert!(with_host(|host| host.irql) <= DISPATCH_LEVEL as u8);
    let Some(handle) = queue_dequeue(Queue as usize, Some(FileObject as usize)) else {
        return STATUS_NO_MORE_ENTRIES;
    };
    // SAFETY: valid out pointer.
    unsafe { *OutRequest = handle as WDFREQUEST };
    STATUS_SUCCESS
}

pub unsafe fn WdfIoQueueGetState(
    Queue: WDFQUEUE,
    QueueRequests: PULONG,
    DriverRequests: PULONG,
) -> WDF_IO_QUEUE_STATE {
    let queued = u32::try_from(queued_in(Queue as usize)).expect("small");
    if !QueueRequests.is_null() {
        // SAFETY: valid out pointer when non-null.
        unsafe { *QueueRequests = queued };
    }
    if !DriverRequests.is_null() {
        // SAFETY: as above.
        unsafe { *DriverRequests = 0 };
    }
    _WDF_IO_QUEUE_STATE::WdfIoQueueAcceptRequests
}

pub unsafe fn WdfRequestForwardToIoQueue(
    Request: WDFREQUEST,
    DestinationQueue: WDFQUEUE,
) -> NTSTATUS {
    assert!(with_host(|host| host.irql) <= DISPATCH_LEVEL as u8);
    let mut registry = shared();
    let handle = Request as usize;
    let queue = DestinationQueue as usize;
    let request = registry
        .requests
        .get_mut(&handle)
        .expect("only registered requests are forwarded");
    assert!(request.queue.is_none() && request.completion.is_none());
    request.queue = Some(queue);
    registry
        .queues
        .get_mut(&queue)
        .expect("a manual queue")
        .push_back(handle);
    STATUS_SUCCESS
}

pub unsafe fn WdfRequestGetFileObject(Request: WDFREQUEST) -> WDFFILEOBJECT {
    if let Some(request) = shared().requests.get(&(Request as usize)) {
        return request.file_object as WDFFILEOBJECT;
    }
    FAKE_FILE_OBJECT as WDFFILEOBJECT
}

pub unsafe fn WdfDeviceInitSetFileObjectConfig(
    _DeviceInit: PWDFDEVICE_INIT,
    FileObjectConfig: PWDF_FILEOBJECT_CONFIG,
    _FileObjectAttributes: PWDF_OBJECT_ATTRIBUTES,
) {
    // SAFETY: a valid config from the driver.
    let config = unsafe { *FileObjectConfig };
    with_host(|host| host.file_object_config = Some(config));
}

/// Host double of `WdfDriverCreate`: records the configuration.
pub unsafe fn WdfDriverCreate(
    _DriverObject: PDRIVER_OBJECT,
    _RegistryPath: PCUNICODE_STRING,
    _DriverAttributes: PWDF_OBJECT_ATTRIBUTES,
    DriverConfig: PWDF_DRIVER_CONFIG,
    Driver: *mut WDFDRIVER,
) -> NTSTATUS {
    // SAFETY: valid config from the driver.
    let config = unsafe { *DriverConfig };
    with_host(|host| {
        host.wdf_driver_config = Some(config);
        if host.wdf_driver_create_result >= 0 && !Driver.is_null() {
            // SAFETY: valid out pointer when non-null.
            unsafe { *Driver = 0xD0D0 as WDFDRIVER };
        }
        host.wdf_driver_create_result
    })
}

/// `CmRegisterCallbackEx`: records the callback (one at a time).
///
/// # Safety
/// Valid altitude and cookie pointers.
pub unsafe extern "C" fn CmRegisterCallbackEx(
    Function: PEX_CALLBACK_FUNCTION,
    Altitude: PCUNICODE_STRING,
    Driver: PVOID,
    Context: PVOID,
    Cookie: PLARGE_INTEGER,
    Reserved: PVOID,
) -> NTSTATUS {
    assert!(Reserved.is_null(), "Reserved must be NULL");
    if let Some(status) = with_host(|host| host.registry_callback_result) {
        return status;
    }
    // SAFETY: valid string from the driver.
    let altitude = unsafe { unicode_to_string(Altitude) };
    let function = Function.expect("a callback") as usize;
    with_host(|host| {
        assert!(host.registry_callback.is_none(), "one registry callback");
        host.registry_callback = Some(RegistryCallbackRecord {
            function,
            context: Context as usize,
            altitude,
            driver: Driver as usize,
            cookie: 0x00C0_FFEE,
        });
    });
    // SAFETY: a writable LARGE_INTEGER.
    unsafe {
        Cookie.write(LARGE_INTEGER {
            QuadPart: 0x00C0_FFEE,
        })
    };
    STATUS_SUCCESS
}

/// `CmUnRegisterCallback`.
///
/// # Safety
/// None beyond the kernel's.
pub unsafe extern "C" fn CmUnRegisterCallback(Cookie: LARGE_INTEGER) -> NTSTATUS {
    // SAFETY: every LARGE_INTEGER has a QuadPart.
    let cookie = unsafe { Cookie.QuadPart };
    with_host(|host| {
        let registered = host.registry_callback.take().expect("registered");
        assert_eq!(registered.cookie, cookie, "the cookie of the registration");
        host.registry_unregistered.push(cookie);
    });
    STATUS_SUCCESS
}

/// `CmCallbackGetKeyObjectID`: the name from `key_names` (the system owns it).
///
/// # Safety
/// Valid out pointers.
pub unsafe extern "C" fn CmCallbackGetKeyObjectID(
    Cookie: PLARGE_INTEGER,
    Object: PVOID,
    ObjectID: *mut ULONG_PTR,
    ObjectName: *mut PCUNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: the driver's cookie.
    let cookie = unsafe { Cookie.read() };
    // SAFETY: every LARGE_INTEGER has a QuadPart.
    assert_eq!(unsafe { cookie.QuadPart }, 0x00C0_FFEE, "our cookie");
    let Some(name) = with_host(|host| host.key_names.get(&(Object as usize)).cloned()) else {
        return STATUS_NOT_FOUND;
    };
    // Leaked: the system's name outlives the callback (a test's few bytes).
    let units: &'static mut [u16] =
        Box::leak(name.encode_utf16().collect::<Vec<_>>().into_boxed_slice());
    let string: &'static UNICODE_STRING = Box::leak(Box::new(UNICODE_STRING {
        Length: (units.len() * 2) as u16,
        MaximumLength: (units.len() * 2) as u16,
        Buffer: units.as_mut_ptr(),
    }));
    if !ObjectID.is_null() {
        // SAFETY: writable when given.
        unsafe { *ObjectID = Object as ULONG_PTR };
    }
    if !ObjectName.is_null() {
        // SAFETY: writable when given.
        unsafe { *ObjectName = string };
    }
    STATUS_SUCCESS
}

/// `WdfWorkItemCreate`.
///
/// # Safety
/// Valid config, attributes and out pointer.
pub unsafe fn WdfWorkItemCreate(
    Config: PWDF_WORKITEM_CONFIG,
    Attributes: PWDF_OBJECT_ATTRIBUTES,
    WorkItem: *mut WDFWORKITEM,
) -> NTSTATUS {
    // SAFETY: a valid pointer from the driver.
    let config = unsafe { Config.read() };
    // SAFETY: a valid pointer from the driver.
    let attributes = unsafe { Attributes.read() };
    assert_eq!(
        config.Size as usize,
        core::mem::size_of::<WDF_WORKITEM_CONFIG>()
    );
    assert_eq!(
        attributes.Size as usize,
        core::mem::size_of::<WDF_OBJECT_ATTRIBUTES>()
    );
    assert!(
        !attributes.ParentObject.is_null(),
        "a work item needs a parent"
    );
    let handle = with_host(|host| {
        host.work_items.push(WorkItemRecord {
            callback: config.EvtWorkItemFunc.expect("a callback") as usize,
            parent: attributes.ParentObject as usize,
            queued: false,
            flushes: 0,
        });
        FAKE_WORK_ITEM + host.work_items.len() - 1
    });
    // SAFETY: writable out pointer.
    unsafe { *WorkItem = handle as WDFWORKITEM };
    STATUS_SUCCESS
}

/// `WdfWorkItemEnqueue`: queued once until it runs.
///
/// # Safety
/// A work item handle.
pub unsafe fn WdfWorkItemEnqueue(WorkItem: WDFWORKITEM) {
    with_host(|host| {
        host.work_item_enqueues += 1;
        let index = WorkItem as usize - FAKE_WORK_ITEM;
        host.work_items[index].queued = true;
    });
}

/// Runs every queued work item (as the system's worker thread would).
pub fn run_work_items() -> usize {
    let mut ran = 0;
    loop {
        let next = with_host(|host| {
            host.work_items
                .iter_mut()
                .enumerate()
                .find(|(_, item)| item.queued)
                .map(|(index, item)| {
                    item.queued = false;
                    (index, item.callback)
                })
        });
        let Some((index, callback)) = next else {
            return ran;
        };
        // SAFETY: the driver's EvtWorkItem, with its handle.
        let callback: unsafe extern "C" fn(WDFWORKITEM) = unsafe { core::mem::transmute(callback) };
        // SAFETY: as the framework calls it.
        unsafe { callback((FAKE_WORK_ITEM + index) as WDFWORKITEM) };
        ran += 1;
    }
}

/// `WdfWorkItemFlush`: runs the item if queued, then returns.
///
/// # Safety
/// A work item handle.
pub unsafe fn WdfWorkItemFlush(WorkItem: WDFWORKITEM) {
    let index = WorkItem as usize - FAKE_WORK_ITEM;
    with_host(|host| host.work_items[index].flushes += 1);
    run_work_items();
}

/// The heap of host tests: the system allocator, counting the allocations
/// each test thread makes and failing them on request, so a test can show
/// that code meant to allocate fallibly (and exactly once) does.
#[cfg(test)]
pub mod test_heap {
    use super::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    std::thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
        static FAILING: Cell<bool> = const { Cell::new(false) };
    }

    /// Counts and, when asked, fails this thread's allocations.
    pub struct CountingHeap;

    fn admit() -> bool {
        let failing = FAILING.try_with(Cell::get).unwrap_or(false);
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        !failing
    }

    // SAFETY: forwards to the system allocator, or returns null (a failure
    // every caller of `alloc`/`realloc` must handle).
    unsafe impl GlobalAlloc for CountingHeap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if !admit() {
                return core::ptr::null_mut();
            }
            // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
            // SAFETY: allocated by `alloc`/`realloc` above with this layout.
            unsafe { System.dealloc(pointer, layout) };
        }

        unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !admit() {
                return core::ptr::null_mut();
            }
            // SAFETY: as GlobalAlloc::realloc requires, from our caller.
            unsafe { System.realloc(pointer, layout, new_size) }
        }
    }

    #[global_allocator]
    static HEAP: CountingHeap = CountingHeap;

    /// Runs `body`, returning its result and the heap allocations (and
    /// reallocations) this thread made meanwhile; every one fails if `fail`.
    pub fn with_heap<R>(fail: bool, body: impl FnOnce() -> R) -> (R, u64) {
        let before = ALLOCATIONS.with(Cell::get);
        FAILING.with(|failing| failing.set(fail));
        let result = body();
        FAILING.with(|failing| failing.set(false));
        (result, ALLOCATIONS.with(Cell::get) - before)
    }
}
