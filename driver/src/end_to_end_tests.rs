//! Host scenarios of the whole driver: load with a registry policy, process
//! creation and exit, handle requests through the real callback, audit
//! records, policy swap and unload, against the kernel test doubles.
//!
//! The driver state is process-wide (the notify routine reaches it through a
//! global pointer), so these tests take turns.

use std::string::String;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

use procguard_protocol::dispatch::ControlTarget as _;
use procguard_protocol::{AuditMode, AuditObject, AuditRecord, PolicySource};

use crate::callbacks::object_callbacks::{process_pre_operation, thread_pre_operation};
use crate::callbacks::process_tracking::process_notify;
use crate::driver_entry::{driver_entry, evt_driver_unload};
use crate::driver_state::DriverState;
use crate::ffi::ntddk::{
    fake_process, fake_thread, reset_host, with_host, FakeValue, FAKE_PROCESS_TYPE,
    FAKE_THREAD_TYPE,
};
use crate::ffi::{
    _OB_PRE_OPERATION_INFORMATION__bindgen_ty_1, _PS_CREATE_NOTIFY_INFO__bindgen_ty_1,
    DRIVER_OBJECT, OB_OPERATION, OB_OPERATION_HANDLE_CREATE, OB_OPERATION_HANDLE_DUPLICATE,
    OB_PRE_CREATE_HANDLE_INFORMATION, OB_PRE_DUPLICATE_HANDLE_INFORMATION,
    OB_PRE_OPERATION_INFORMATION, OB_PRE_OPERATION_PARAMETERS, POBJECT_TYPE, PS_CREATE_NOTIFY_INFO,
    PVOID, REG_BINARY, STATUS_SUCCESS, UNICODE_STRING,
};

static TURN: Mutex<()> = Mutex::new(());

const AGENT: u32 = 1000;
const ATTACKER: u32 = 2000;
const EDITOR: u32 = 3000;

const PROCESS_TERMINATE: u32 = 0x0001;
const PROCESS_VM_READ: u32 = 0x0010;
const PROCESS_VM_WRITE: u32 = 0x0020;
const PROCESS_QUERY_LIMITED_INFORMATION: u32 = 0x1000;
const THREAD_SUSPEND_RESUME: u32 = 0x0002;
const THREAD_QUERY_LIMITED_INFORMATION: u32 = 0x0800;

const POLICY: &str = r#"
[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE", "PROCESS_VM_WRITE"]

[[rule]]
name = "agent-threads"
target = { name = "agent.exe" }
objects = "thread"
strip = ["THREAD_SUSPEND_RESUME"]

[[rule]]
name = "agent-reads-watched"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_VM_READ"]
mode = "audit"
"#;

fn blob(toml: &str) -> Vec<u8> {
    let policy = procguard_policy::toml::parse_policy(toml).expect("test policy parses");
    procguard_policy::encode(&policy)
}

fn image(name: &str) -> String {
    format!("\\Device\\HarddiskVolume3\\Program Files\\Test\\{name}")
}

/// A loaded driver over a fresh fake kernel; unloads on drop.
struct Loaded {
    _turn: MutexGuard<'static, ()>,
    loaded: bool,
    /// The boot policy record (drained at load).
    boot: Option<AuditRecord>,
}

impl Loaded {
    fn with(policy: Option<Vec<u8>>, processes: &[(u32, &str)]) -> (Self, i32) {
        Self::with_setup(policy, processes, |_| {})
    }

    fn with_setup(
        policy: Option<Vec<u8>>,
        processes: &[(u32, &str)],
        setup: impl FnOnce(&mut crate::ffi::ntddk::HostKernel),
    ) -> (Self, i32) {
        let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        reset_host();
        crate::callbacks::handle_decision::test_broker::reset();
        let _ = crate::driver_entry::unload_order::at_ask_shutdown();
        with_host(|host| {
            for &(pid, name) in processes {
                host.processes
                    .insert(pid, (i64::from(pid) * 7, image(name)));
            }
            let mut values = std::collections::BTreeMap::new();
            if let Some(policy) = policy {
                values.insert(
                    "Policy".into(),
                    FakeValue {
                        value_type: REG_BINARY,
                        data: policy,
                    },
                );
            }
            host.parameters = Some(values);
            setup(host);
        });
        let mut path: Vec<u16> =
            "\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet\\Services\\procguard"
                .encode_utf16()
                .collect();
        let registry_path = UNICODE_STRING {
            Length: (path.len() * 2) as u16,
            MaximumLength: (path.len() * 2) as u16,
            Buffer: path.as_mut_ptr(),
        };
        // SAFETY: a zeroed DRIVER_OBJECT is a valid value for the doubles.
        let mut driver: DRIVER_OBJECT = unsafe { core::mem::zeroed() };
        // SAFETY: valid object and path.
        let status = unsafe { driver_entry(&raw mut driver, &raw const registry_path) };
        let mut loaded = Self {
            _turn: turn,
            loaded: status == STATUS_SUCCESS,
            boot: None,
        };
        if loaded.loaded {
            // The start leaves exactly one record: the boot policy's.
            let boot = loaded.drain();
            assert_eq!(boot.len(), 1, "{boot:?}");
            assert_eq!(boot[0].object, AuditObject::Policy, "{boot:?}");
            assert_eq!(boot[0].policy_source(), Some(PolicySource::Boot));
            assert_eq!(
                loaded.state().status().policy_updates.source,
                Some(PolicySource::Boot)
            );
            loaded.boot = Some(boot[0]);
        }
        (loaded, status)
    }

    fn state(&self) -> &'static DriverState {
        DriverState::global().expect("loaded")
    }

    fn unload(&mut self) {
        if self.loaded {
            // SAFETY: once, after a successful load.
            unsafe { evt_driver_unload(core::ptr::null_mut()) };
            self.loaded = false;
        }
    }

    fn context(&self) -> PVOID {
        with_host(|host| {
            host.registrations
                .last()
                .map(|registration| registration.context)
        })
        .expect("registered") as PVOID
    }

    fn request(
        &self,
        operation: OB_OPERATION,
        object_type: usize,
        object: PVOID,
        mut parameters: OB_PRE_OPERATION_PARAMETERS,
    ) -> u32 {
        let mut info = OB_PRE_OPERATION_INFORMATION {
            Operation: operation,
            __bindgen_anon_1: _OB_PRE_OPERATION_INFORMATION__bindgen_ty_1 { Flags: 0 },
            Object: object,
            ObjectType: object_type as POBJECT_TYPE,
            CallContext: core::ptr::null_mut(),
            Parameters: &raw mut parameters,
        };
        // The object manager calls the callback registered for the type.
        let callback = if object_type == FAKE_THREAD_TYPE {
            thread_pre_operation
        } else {
            process_pre_operation
        };
        // SAFETY: as the object manager calls it.
        unsafe { callback(self.context(), &raw mut info) };
        // SAFETY: DesiredAccess is the first field of both members.
        unsafe { parameters.CreateHandleInformation.DesiredAccess }
    }

    fn open_process(&self, requester: u32, target: u32, access: u32) -> u32 {
        with_host(|host| host.current_process_id = requester);
        self.request(
            OB_OPERATION_HANDLE_CREATE,
            FAKE_PROCESS_TYPE,
            fake_process(target).cast(),
            create(access),
        )
    }

    fn open_thread(&self, requester: u32, owner: u32, access: u32) -> u32 {
        with_host(|host| host.current_process_id = requester);
        self.request(
            OB_OPERATION_HANDLE_CREATE,
            FAKE_THREAD_TYPE,
            fake_thread(owner).cast(),
            create(access),
        )
    }

    fn drain(&self) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        self.state().ring.drain(usize::MAX, |words| {
            records.push(AuditRecord::from_words(words).expect("valid record"))
        });
        records
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.unload();
    }
}

fn create(access: u32) -> OB_PRE_OPERATION_PARAMETERS {
    OB_PRE_OPERATION_PARAMETERS {
        CreateHandleInformation: OB_PRE_CREATE_HANDLE_INFORMATION {
            DesiredAccess: access,
            OriginalDesiredAccess: access,
        },
    }
}

fn duplicate(access: u32, source: u32, receiver: u32) -> OB_PRE_OPERATION_PARAMETERS {
    OB_PRE_OPERATION_PARAMETERS {
        DuplicateHandleInformation: OB_PRE_DUPLICATE_HANDLE_INFORMATION {
            DesiredAccess: access,
            OriginalDesiredAccess: access,
            SourceProcess: fake_process(source).cast(),
            TargetProcess: fake_process(receiver).cast(),
        },
    }
}

fn notify_create(pid: u32, name: &str, creation_time: i64) {
    with_host(|host| host.processes.insert(pid, (creation_time, image(name))));
    let mut info = PS_CREATE_NOTIFY_INFO {
        Size: core::mem::size_of::<PS_CREATE_NOTIFY_INFO>() as u64,
        __bindgen_anon_1: _PS_CREATE_NOTIFY_INFO__bindgen_ty_1 { Flags: 1 },
        ParentProcessId: core::ptr::null_mut(),
        CreatingThreadId: crate::ffi::CLIENT_ID {
            UniqueProcess: core::ptr::null_mut(),
            UniqueThread: core::ptr::null_mut(),
        },
        FileObject: core::ptr::null_mut(),
        ImageFileName: core::ptr::null(),
        CommandLine: core::ptr::null(),
        CreationStatus: 0,
    };
    // SAFETY: as the kernel calls it for a creation.
    unsafe { process_notify(fake_process(pid), pid as usize as _, &raw mut info) };
}

fn notify_exit(pid: u32) {
    // SAFETY: as the kernel calls it for an exit (the object still exists).
    unsafe { process_notify(fake_process(pid), pid as usize as _, core::ptr::null_mut()) };
    with_host(|host| host.processes.remove(&pid));
}

#[test]
fn running_processes_are_classified_at_load_and_protected_ones_lose_the_policy_rights() {
    let (loaded, status) = Loaded::with(
        Some(blob(POLICY)),
        &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
    );
    assert_eq!(status, STATUS_SUCCESS);
    let all = PROCESS_TERMINATE | PROCESS_VM_WRITE | PROCESS_QUERY_LIMITED_INFORMATION;
    assert_eq!(
        loaded.open_process(ATTACKER, AGENT, all),
        PROCESS_QUERY_LIMITED_INFORMATION
    );
    assert_eq!(
        loaded.open_process(AGENT, ATTACKER, all),
        all,
        "unprotected target"
    );
    assert_eq!(
        loaded.open_process(AGENT, AGENT, all),
        all,
        "a process opening itself"
    );
    let counters = &loaded.state().counters;
    assert_eq!(
        counters.modified.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn thread_handles_follow_the_owning_process() {
    let (loaded, _) = Loaded::with(
        Some(blob(POLICY)),
        &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
    );
    let access = THREAD_SUSPEND_RESUME | THREAD_QUERY_LIMITED_INFORMATION;
    assert_eq!(
        loaded.open_thread(ATTACKER, AGENT, access),
        THREAD_QUERY_LIMITED_INFORMATION
    );
    assert_eq!(loaded.open_thread(AGENT, ATTACKER, access), access);
}

#[test]
fn stripped_and_audit_only_requests_leave_complete_audit_records() {
    let (loaded, _) = Loaded::with(
        Some(blob(POLICY)),
        &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
    );
    with_host(|host| host.current_thread_id = 2004);
    assert_eq!(
        loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ),
        PROCESS_VM_READ
    );
    assert_eq!(
        loaded.open_process(ATTACKER, AGENT, PROCESS_VM_READ),
        PROCESS_VM_READ,
        "audit mode strips nothing"
    );
    let records = loaded.drain();
    assert_eq!(records.len(), 2, "{records:?}");
    let enforced = records[0];
    // Sequence 0 is the boot policy record (drained by `Loaded::with`).
    assert_eq!(enforced.sequence, 1);
    assert_eq!(enforced.object, AuditObject::Process);
    assert!(!enforced.duplication);
    assert_eq!((enforced.process_id, enforced.thread_id), (AGENT, 0));
    assert_eq!(
        (
            enforced.originator_process_id,
            enforced.originator_thread_id
        ),
        (ATTACKER, 2004)
    );
    assert_eq!(
        (enforced.source_process_id, enforced.target_process_id),
        (0, 0)
    );
    assert_eq!(
        enforced.original_desired_access,
        PROCESS_TERMINATE | PROCESS_VM_READ
    );
    assert_eq!(enforced.desired_access, PROCESS_VM_READ);
    assert_eq!(enforced.mode, AuditMode::Enforce);
    assert_eq!(enforced.rule_id, 0, "agent-no-kill is rule 0");
    assert!(enforced.timestamp > 0);
    let audited = records[1];
    assert_eq!(audited.sequence, 2);
    assert_eq!(audited.mode, AuditMode::Audit);
    assert_eq!(audited.desired_access, PROCESS_VM_READ);
    assert_eq!(audited.rule_id, 2, "agent-reads-watched is rule 2");
}

#[test]
fn duplicates_are_judged_for_the_receiving_process_and_audited_with_all_three_processes() {
    let (loaded, _) = Loaded::with(
        Some(blob(POLICY)),
        &[
            (AGENT, "agent.exe"),
            (ATTACKER, "tool.exe"),
            (EDITOR, "editor.exe"),
        ],
    );
    // EDITOR duplicates a handle to AGENT out of AGENT into ATTACKER.
    with_host(|host| host.current_process_id = EDITOR);
    let access = loaded.request(
        OB_OPERATION_HANDLE_DUPLICATE,
        FAKE_PROCESS_TYPE,
        fake_process(AGENT).cast(),
        duplicate(PROCESS_TERMINATE, AGENT, ATTACKER),
    );
    assert_eq!(access, 0);
    let record = loaded.drain()[0];
    assert!(record.duplication);
    assert_eq!(record.originator_process_id, EDITOR);
    assert_eq!(
        (record.source_process_id, record.target_process_id),
        (AGENT, ATTACKER)
    );
    // Duplicated into AGENT itself: a process getting a handle to itself.
    let to_self = loaded.request(
        OB_OPERATION_HANDLE_DUPLICATE,
        FAKE_PROCESS_TYPE,
        fake_process(AGENT).cast(),
        duplicate(PROCESS_TERMINATE, ATTACKER, AGENT),
    );
    assert_eq!(to_self, PROCESS_TERMINATE);
}

#[test]
fn processes_started_after_load_are_protected_and_forgotten_at_exit_so_a_reused_pid_is_not() {
    let (loaded, _) = Loaded::with(Some(blob(POLICY)), &[(ATTACKER, "tool.exe")]);
    notify_create(4444, "agent.exe", 100);
    assert_eq!(loaded.open_process(ATTACKER, 4444, PROCESS_TERMINATE), 0);
    notify_exit(4444);
    notify_create(4444, "notepad.exe", 200);
    assert_eq!(
        loaded.open_process(ATTACKER, 4444, PROCESS_TERMINATE),
        PROCESS_TERMINATE,
        "pid reuse"
    );
    let generation = loaded.state().active.read().expect("published");
    assert_eq!(generation.table.len(), 2, "ATTACKER and the new 4444");
}

#[test]
fn a_stale_record_never_applies_to_a_later_process_with_the_same_pid() {
    let (loaded, _) = Loaded::with(
        Some(blob(POLICY)),
        &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
    );
    // AGENT's exit notification is lost and a new process reuses its id.
    with_host(|host| {
        host.processes
            .insert(AGENT, (999_999, image("notepad.exe")))
    });
    assert_eq!(
        loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
        PROCESS_TERMINATE
    );
    assert!(
        loaded
            .state()
            .counters
            .unclassified
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn a_corrupt_registry_policy_loads_with_no_rules_and_says_why() {
    let mut corrupt = blob(POLICY);
    corrupt[0] ^= 0xFF;
    let (loaded, status) = Loaded::with(
        Some(corrupt),
        &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
    );
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(
        loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
        PROCESS_TERMINATE
    );
    let trace = with_host(|host| host.trace.clone());
    assert!(
        trace
            .iter()
            .any(|line| line.contains("Parameters\\Policy:")
                && line.contains("starting with no rules")),
        "{trace:?}"
    );
}

#[test]
fn unload_unregisters_callbacks_then_the_notify_routine_and_leaves_nothing_referenced() {
    let (mut loaded, _) = Loaded::with(Some(blob(POLICY)), &[(AGENT, "agent.exe")]);
    loaded.unload();
    let (unregistered, notify) =
        with_host(|host| (host.unregistered.clone(), host.notify_registrations.clone()));
    assert_eq!(unregistered.len(), 1);
    assert_eq!(notify.iter().filter(|(_, remove)| !remove).count(), 1);
    assert_eq!(notify.iter().filter(|(_, remove)| *remove).count(), 1);
    assert!(DriverState::global().is_none());
    assert_eq!(
        with_host(|host| (host.process_references, host.mutex_held)),
        (0, false)
    );
}

#[test]
fn a_failed_notify_registration_fails_the_load_cleanly() {
    let (_loaded, status) =
        Loaded::with_setup(Some(blob(POLICY)), &[(AGENT, "agent.exe")], |host| {
            host.notify_result = crate::ffi::STATUS_ACCESS_DENIED;
        });
    assert_eq!(status, crate::ffi::STATUS_ACCESS_DENIED);
    assert!(DriverState::global().is_none());
    assert!(
        with_host(|host| host.registrations.is_empty()),
        "no callbacks registered after the failure"
    );
    assert_eq!(with_host(|host| host.process_references), 0);
}

#[test]
fn a_failed_callback_registration_removes_the_notify_routine_again() {
    let (_loaded, status) =
        Loaded::with_setup(Some(blob(POLICY)), &[(AGENT, "agent.exe")], |host| {
            host.register_results
                .push_back(crate::ffi::STATUS_ACCESS_DENIED);
        });
    assert_eq!(status, crate::ffi::STATUS_ACCESS_DENIED);
    assert!(DriverState::global().is_none());
    let notify = with_host(|host| host.notify_registrations.clone());
    assert_eq!(
        notify.iter().map(|(_, remove)| *remove).collect::<Vec<_>>(),
        [false, true]
    );
}

#[test]
fn an_unknown_process_gets_the_unknown_record_without_io_and_is_classified_at_the_next_notification(
) {
    let (loaded, _) = Loaded::with(Some(blob(POLICY)), &[(ATTACKER, "tool.exe")]);
    // A process the table does not know (its creation was never notified).
    with_host(|host| host.processes.insert(5000, (5, image("agent.exe"))));
    let lookups = with_host(|host| host.image_name_lookups);
    for irql in [crate::ffi::APC_LEVEL as u8, 0] {
        with_host(|host| host.irql = irql);
        assert_eq!(
            loaded.open_process(ATTACKER, 5000, PROCESS_TERMINATE),
            PROCESS_TERMINATE,
            "the unknown-process record at IRQL {irql}"
        );
    }
    assert_eq!(
        with_host(|host| host.image_name_lookups),
        lookups,
        "no image path is read inside a callback, at any IRQL"
    );
    let counters = &loaded.state().counters;
    assert_eq!(
        counters
            .unclassified
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // Any notification (here another process's creation) classifies it.
    notify_create(EDITOR, "editor.exe", 99);
    assert_eq!(loaded.open_process(ATTACKER, 5000, PROCESS_TERMINATE), 0);
    assert_eq!(
        counters
            .unclassified
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "tracked now"
    );
    assert!(loaded.state().pending.is_empty());
}

#[test]
fn an_unknown_process_that_exits_before_the_next_notification_is_not_tracked() {
    let (loaded, _) = Loaded::with(Some(blob(POLICY)), &[(ATTACKER, "tool.exe")]);
    with_host(|host| host.processes.insert(5000, (5, image("agent.exe"))));
    assert_eq!(
        loaded.open_process(ATTACKER, 5000, PROCESS_TERMINATE),
        PROCESS_TERMINATE
    );
    // Its exit notification comes first (the object may still be looked up).
    // SAFETY: as the kernel calls it for an exit.
    unsafe { process_notify(fake_process(5000), 5000usize as _, core::ptr::null_mut()) };
    let generation = loaded.state().active.read().expect("published");
    assert_eq!(
        generation.table.len(),
        1,
        "only ATTACKER: 5000 was not tracked"
    );
    assert!(loaded.state().pending.is_empty());
}

#[test]
fn the_requester_is_the_threads_own_process_even_while_attached_to_another() {
    const UPDATER: u32 = 4000;
    let policy = blob(
        r#"
[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
requester = { except = { name = "updater.exe" } }
objects = "process"
strip = ["PROCESS_TERMINATE"]
"#,
    );
    let (loaded, _) = Loaded::with(
        Some(policy),
        &[
            (AGENT, "agent.exe"),
            (ATTACKER, "tool.exe"),
            (UPDATER, "updater.exe"),
        ],
    );
    // A thread of the attacker attached to the updater's address space
    // (KeStackAttachProcess) is still the attacker's.
    with_host(|host| host.attached_process_id = Some(UPDATER));
    assert_eq!(loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE), 0);
    // And the updater's thread attached to the attacker is the updater's.
    with_host(|host| host.attached_process_id = Some(ATTACKER));
    assert_eq!(
        loaded.open_process(UPDATER, AGENT, PROCESS_TERMINATE),
        PROCESS_TERMINATE
    );
    assert_eq!(
        loaded
            .state()
            .counters
            .unclassified
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "id and object of one process: its record matches"
    );
}

#[test]
fn a_new_policy_applies_to_the_next_request_and_the_old_generation_is_freed() {
    let (loaded, _) = Loaded::with(
        Some(blob(POLICY)),
        &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
    );
    assert_eq!(loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE), 0);
    let replacement = blob("[[rule]]\nname = \"tool-no-kill\"\ntarget = { name = \"tool.exe\" }\nstrip = [\"PROCESS_TERMINATE\"]\n");
    let state = loaded.state();
    {
        let mut writer = state.writer();
        let policy = procguard_policy::CompiledPolicy::from_blob(&replacement).expect("valid");
        state
            .install_policy(&mut writer, policy, replacement)
            .expect("installed");
    }
    assert_eq!(
        loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
        PROCESS_TERMINATE,
        "old policy gone"
    );
    assert_eq!(
        loaded.open_process(AGENT, ATTACKER, PROCESS_TERMINATE),
        0,
        "new policy in force"
    );
}

mod control_plane {
    use super::*;
    use crate::control::control_device::evt_io_device_control;
    use crate::ffi::ntddk::{FakeRequest, FAKE_REQUEST};
    use procguard_protocol::dispatch::{
        STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER,
    };
    use procguard_protocol::ioctl::{
        EventsHeader, PolicyHeader, SetPolicyRequest, Status, IOCTL_GET_POLICY, IOCTL_GET_STATUS,
        IOCTL_READ_EVENTS, IOCTL_SET_POLICY,
    };

    /// Sends an IOCTL the way the I/O manager and WDF do for METHOD_BUFFERED:
    /// one system buffer, input copied in first, output read back after.
    fn ioctl(code: u32, input: &[u8], output_len: usize) -> (i32, Vec<u8>) {
        let mut system_buffer = vec![0u8; input.len().max(output_len)];
        system_buffer[..input.len()].copy_from_slice(input);
        with_host(|host| {
            host.request = Some(FakeRequest {
                system_buffer,
                input_length: input.len(),
                output_length: output_len,
                completion: None,
            })
        });
        // SAFETY: as the framework calls it for a presented request.
        unsafe {
            evt_io_device_control(
                core::ptr::null_mut(),
                FAKE_REQUEST as _,
                output_len,
                input.len(),
                code,
            );
        }
        let request = with_host(|host| host.request.take()).expect("request");
        let (status, information) = request.completion.expect("the request was completed");
        let information = usize::try_from(information).expect("small");
        assert!(
            information <= output_len,
            "reported more output than the buffer holds"
        );
        (status, request.system_buffer[..information].to_vec())
    }

    fn set_policy(blob: &[u8], flags: u32) -> i32 {
        let mut input = vec![0u8; SetPolicyRequest::HEADER + blob.len()];
        SetPolicyRequest { flags, blob }
            .write(&mut input)
            .expect("fits");
        ioctl(IOCTL_SET_POLICY, &input, 0).0
    }

    #[test]
    fn the_control_device_is_admin_only_buffered_and_passive() {
        let (_loaded, status) = Loaded::with(Some(blob(POLICY)), &[]);
        assert_eq!(status, STATUS_SUCCESS);
        let control = with_host(|host| host.control.clone());
        assert_eq!(control.sddl.as_deref(), Some("D:P(A;;GA;;;SY)(A;;GA;;;BA)"));
        assert_eq!(control.name.as_deref(), Some("\\Device\\ProcGuard"));
        assert_eq!(
            control.symbolic_link.as_deref(),
            Some("\\DosDevices\\ProcGuard")
        );
        assert_eq!(
            control.execution_level,
            Some(crate::ffi::_WDF_EXECUTION_LEVEL::WdfExecutionLevelPassive)
        );
        assert_eq!(
            control.queue_dispatch,
            Some(crate::ffi::_WDF_IO_QUEUE_DISPATCH_TYPE::WdfIoQueueDispatchSequential)
        );
        assert!(control.default_queue && control.finished && control.device_control.is_some());
    }

    #[test]
    fn the_control_device_cleans_up_handles_and_has_the_pended_ioctl_queues() {
        let (_loaded, status) = Loaded::with(Some(blob(POLICY)), &[]);
        assert_eq!(status, STATUS_SUCCESS);
        let (config, queues) =
            with_host(|host| (host.file_object_config, host.manual_queues.len()));
        let config = config.expect("a file-object configuration");
        assert!(
            config.EvtFileCleanup.is_some(),
            "handle close ends a handler"
        );
        assert_eq!(
            config.Size as usize,
            core::mem::size_of::<crate::ffi::WDF_FILEOBJECT_CONFIG>()
        );
        assert_eq!(queues, 2, "get-request and wait-events manual queues");
    }

    #[test]
    fn status_reports_the_registration_the_policy_and_the_processes() {
        let (_loaded, _) = Loaded::with(
            Some(blob(POLICY)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
        );
        let (status, bytes) = ioctl(IOCTL_GET_STATUS, &[], Status::SIZE);
        assert_eq!(status, STATUS_SUCCESS);
        let report = Status::from_bytes(&bytes).expect("a status");
        assert!(report.callbacks_registered && report.notify_registered);
        assert_eq!(report.rule_count, 3);
        assert_eq!(report.tracked_processes, 2);
        assert_eq!(
            report.policy_id,
            procguard_policy::policy_id(&blob(POLICY)).expect("id")
        );
        assert_eq!(
            String::from_utf16_lossy(&report.altitude[..usize::from(report.altitude_len)]),
            "385201"
        );
        assert_eq!(report.audit_capacity, 4096);
        assert_eq!(
            ioctl(IOCTL_GET_STATUS, &[], Status::SIZE - 1).0,
            STATUS_BUFFER_TOO_SMALL
        );
    }

    #[test]
    fn a_new_policy_is_enforced_at_once_and_persisted_exactly_when_asked() {
        let (loaded, _) = Loaded::with(
            Some(blob(POLICY)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
        );
        let replacement = super::blob("[[rule]]\nname = \"tool\"\ntarget = { name = \"tool.exe\" }\nstrip = [\"PROCESS_TERMINATE\"]\n");
        assert_eq!(set_policy(&replacement, 0), STATUS_SUCCESS);
        assert_eq!(loaded.open_process(AGENT, ATTACKER, PROCESS_TERMINATE), 0);
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
            PROCESS_TERMINATE
        );
        let stored = |host: &mut crate::ffi::ntddk::HostKernel| {
            host.parameters
                .as_ref()
                .and_then(|values| values.get("Policy"))
                .map(|value| value.data.clone())
        };
        assert_eq!(
            with_host(stored),
            Some(blob(POLICY)),
            "not persisted without the flag"
        );
        assert_eq!(
            set_policy(&replacement, SetPolicyRequest::PERSIST),
            STATUS_SUCCESS
        );
        assert_eq!(
            with_host(stored),
            Some(replacement.clone()),
            "the registry holds the exact blob"
        );
        let (status, bytes) = ioctl(IOCTL_GET_POLICY, &[], 8 + replacement.len());
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(
            PolicyHeader::parse(&bytes).expect("header").blob_len as usize,
            replacement.len()
        );
        assert_eq!(&bytes[8..], replacement.as_slice());
    }

    #[test]
    fn malformed_policies_and_buffers_are_refused_and_the_old_policy_stays() {
        let (loaded, _) = Loaded::with(
            Some(blob(POLICY)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
        );
        let good = blob(POLICY);
        let mut bad_checksum = good.clone();
        let last = bad_checksum.len() - 1;
        bad_checksum[last] ^= 0x55;
        let mut bad_version = good.clone();
        bad_version[4] = 99;
        for bad in [
            &good[..good.len() - 3],
            &bad_checksum[..],
            &bad_version[..],
            &b"PGPB"[..],
            &[][..],
        ] {
            assert_eq!(set_policy(bad, 0), STATUS_INVALID_PARAMETER);
        }
        assert_eq!(
            ioctl(IOCTL_SET_POLICY, &[1, 0, 0], 0).0,
            STATUS_INVALID_PARAMETER,
            "short header"
        );
        assert_eq!(ioctl(0x0022_7FFC, &[], 64).0, STATUS_INVALID_DEVICE_REQUEST);
        assert_eq!(
            set_policy(&good, 0x4),
            STATUS_INVALID_PARAMETER,
            "unknown flag"
        );
        // The registry write failing leaves the old policy in force too.
        with_host(|host| host.set_value_result = Some(crate::ffi::STATUS_ACCESS_DENIED));
        let other = super::blob("[[rule]]\nname = \"x\"\ntarget = { name = \"tool.exe\" }\nstrip = [\"PROCESS_TERMINATE\"]\n");
        assert_eq!(
            set_policy(&other, SetPolicyRequest::PERSIST),
            crate::ffi::STATUS_ACCESS_DENIED
        );
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
            0,
            "the original policy is still enforced"
        );
        assert_eq!(
            loaded.open_process(AGENT, ATTACKER, PROCESS_TERMINATE),
            PROCESS_TERMINATE
        );
    }

    #[test]
    fn events_drain_in_order_with_every_field_and_never_split_a_record() {
        let (loaded, _) = Loaded::with(
            Some(blob(POLICY)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
        );
        with_host(|host| host.current_thread_id = 77);
        for _ in 0..3 {
            loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE);
        }
        // Room for two records and a half: two come out, one stays.
        let (status, bytes) = ioctl(IOCTL_READ_EVENTS, &[], EventsHeader::SIZE + 2 * 64 + 32);
        assert_eq!(status, STATUS_SUCCESS);
        let (header, records) = EventsHeader::parse(&bytes).expect("whole response");
        assert_eq!(
            (header.records, header.remaining, header.dropped),
            (2, 1, 0)
        );
        let first = AuditRecord::from_bytes(&records[..64]).expect("record");
        assert_eq!(
            (
                first.sequence,
                first.process_id,
                first.originator_process_id
            ),
            // After the boot policy record (sequence 0).
            (1, AGENT, ATTACKER)
        );
        assert_eq!(
            (
                first.originator_thread_id,
                first.original_desired_access,
                first.desired_access
            ),
            (77, PROCESS_TERMINATE, 0)
        );
        assert_eq!(
            AuditRecord::from_bytes(&records[64..])
                .expect("record")
                .sequence,
            2
        );
        let (_, rest) = ioctl(IOCTL_READ_EVENTS, &[], 4096);
        let (header, records) = EventsHeader::parse(&rest).expect("whole response");
        assert_eq!((header.records, records.len()), (1, 64));
        assert_eq!(ioctl(IOCTL_READ_EVENTS, &[], 79).0, STATUS_BUFFER_TOO_SMALL);
    }

    #[test]
    fn unload_deletes_the_control_device_before_anything_else() {
        let (mut loaded, _) = Loaded::with(Some(blob(POLICY)), &[]);
        loaded.unload();
        assert_eq!(with_host(|host| host.control.deleted.len()), 1);
    }
}

/// Issue 11, defects 7 and 9: the process table's upkeep on the notify
/// routine's thread, and what a policy install's enumeration may track.
mod process_table_upkeep {
    use super::*;
    use crate::driver_state::INITIAL_PROCESS_CAPACITY;

    #[test]
    fn a_tombstoned_table_is_rebuilt_from_its_own_entries_without_enumerating() {
        let (loaded, _) = Loaded::with(
            Some(blob(POLICY)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
        );
        let state = loaded.state();
        let (queries, first_table) = (
            with_host(|host| host.system_information_queries),
            state.active.read().expect("published").table.capacity(),
        );
        let lookups = with_host(|host| host.image_name_lookups);
        // Short-lived processes leave tombstones until half the table is used.
        let mut created = 0u64;
        let mut rebuilt = false;
        for round in 0..(INITIAL_PROCESS_CAPACITY as u32 * 2) {
            let pid = 10_000 + round * 4;
            notify_create(pid, "short.exe", i64::from(round) + 500);
            created += 1;
            let tombstones = state.active.read().expect("published").table.tombstones();
            notify_exit(pid);
            if round > 0 && tombstones == 0 {
                rebuilt = true;
                break;
            }
        }
        assert!(rebuilt, "the tombstones never triggered a rebuild");
        let generation = state.active.read().expect("published");
        assert_eq!(generation.table.capacity(), first_table);
        assert_eq!(generation.table.len(), 2, "AGENT and ATTACKER carried over");
        drop(generation);
        assert_eq!(
            with_host(|host| host.system_information_queries),
            queries,
            "the creating thread enumerated the system's processes"
        );
        assert_eq!(
            with_host(|host| host.image_name_lookups) - lookups,
            created,
            "only the new processes were identified (no re-classification)"
        );
        // The records came over as they were: AGENT is still protected.
        assert_eq!(loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE), 0);
    }

    #[test]
    fn a_policy_install_does_not_track_a_process_whose_exit_already_ran() {
        let (loaded, _) = Loaded::with(Some(blob(POLICY)), &[(ATTACKER, "tool.exe")]);
        notify_create(AGENT, "agent.exe", 100);
        // AGENT exits; its object lives on (someone holds a reference), so
        // it is still listed and found by id, with its exit status set.
        with_host(|host| host.exited.insert(AGENT));
        // SAFETY: as the kernel calls it for an exit (the object still exists).
        unsafe {
            process_notify(
                fake_process(AGENT),
                AGENT as usize as _,
                core::ptr::null_mut(),
            )
        };
        let state = loaded.state();
        assert!(state
            .active
            .read()
            .expect("published")
            .requester_record(AGENT)
            .is_none());
        {
            let mut writer = state.writer();
            let policy = procguard_policy::CompiledPolicy::from_blob(&blob(POLICY)).expect("valid");
            state
                .install_policy(&mut writer, policy, blob(POLICY))
                .expect("installed");
        }
        let generation = state.active.read().expect("published");
        assert!(
            generation.requester_record(AGENT).is_none(),
            "the enumeration tracked a process whose exit notification had run"
        );
        assert!(generation.requester_record(ATTACKER).is_some());
    }
}

/// Issue 12: requests an ask rule applies to, from the callback to the
/// broker and back (the broker's side is `ask/`; here a scripted stand-in,
/// `handle_decision::test_broker`, answers as a handler or a fallback would,
/// and records exactly what the callback handed over).
mod ask_requests {
    use super::*;
    use crate::callbacks::handle_decision::test_broker::{self, Asked, Scripted};
    use crate::ffi::_OB_PRE_OPERATION_INFORMATION__bindgen_ty_1 as Flags;
    use procguard_protocol::ask::{AskObject, AskOutcome, ImageName};
    use std::sync::atomic::Ordering::Relaxed;

    const PROCESS_VM_OPERATION: u32 = 0x0008;
    const THREAD_GET_CONTEXT: u32 = 0x0008;
    const THREAD_SET_CONTEXT: u32 = 0x0010;

    /// Rule 0 enforces, rule 1 asks with the fail-closed fallback, rule 2
    /// (threads) asks with the fail-open one, rule 3 audits.
    const ASK_POLICY: &str = r#"
[settings]
ask_timeout_ms = 400

[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]

[[rule]]
name = "ask-memory"
target = { name = "agent.exe" }
objects = "process"
mode = "ask"
strip = ["PROCESS_VM_WRITE", "PROCESS_VM_OPERATION"]

[[rule]]
name = "ask-threads"
target = { name = "agent.exe" }
objects = "thread"
mode = "ask"
on_timeout = "allow"
strip = ["THREAD_SUSPEND_RESUME", "THREAD_SET_CONTEXT"]

[[rule]]
name = "agent-reads-watched"
target = { name = "agent.exe" }
objects = "process"
mode = "audit"
strip = ["PROCESS_VM_READ"]
"#;

    fn loaded() -> Loaded {
        let (loaded, status) = Loaded::with(
            Some(blob(ASK_POLICY)),
            &[
                (AGENT, "agent.exe"),
                (ATTACKER, "tool.exe"),
                (EDITOR, "editor.exe"),
            ],
        );
        assert_eq!(status, STATUS_SUCCESS);
        loaded
    }

    fn name(text: &str) -> ImageName {
        ImageName::from_units(&text.encode_utf16().collect::<Vec<_>>())
    }

    fn only_asked() -> Asked {
        let asked = test_broker::take();
        assert_eq!(asked.len(), 1, "{asked:?}");
        asked[0]
    }

    fn rule_stats(loaded: &Loaded, rule: usize) -> (u64, u64) {
        let generation = loaded.state().active.read().expect("published");
        let stats = &generation.rule_stats[rule];
        (stats.hits.load(Relaxed), stats.strips.load(Relaxed))
    }

    #[test]
    fn an_asked_open_hands_the_broker_every_field_and_grants_the_anded_answer() {
        let loaded = loaded();
        with_host(|host| host.current_thread_id = 2004);
        test_broker::script(&[Scripted::Reply {
            access: !PROCESS_VM_WRITE,
            result_code: 7,
            waited_us: 120,
        }]);
        let requested = PROCESS_TERMINATE
            | PROCESS_VM_WRITE
            | PROCESS_VM_OPERATION
            | PROCESS_QUERY_LIMITED_INFORMATION;
        let granted = loaded.open_process(ATTACKER, AGENT, requested);
        assert_eq!(
            granted,
            PROCESS_VM_OPERATION | PROCESS_QUERY_LIMITED_INFORMATION,
            "enforce strip, then the handler's answer ANDed in"
        );
        let asked = only_asked();
        let after_enforce = requested & !PROCESS_TERMINATE;
        assert_eq!(asked.access, after_enforce);
        assert_eq!(asked.timeout_ms, 400, "the policy's ask_timeout_ms");
        assert_eq!(
            (asked.plan.rights, asked.plan.rule, asked.plan.askable),
            (PROCESS_VM_WRITE | PROCESS_VM_OPERATION, Some(1), true)
        );
        let request = asked.request;
        let records = loaded.drain();
        assert_eq!(records.len(), 1, "one record for the request: {records:?}");
        let record = records[0];
        assert_eq!(
            request,
            procguard_protocol::ask::AskRequest {
                id: 0,
                generation: 0,
                timestamp: record.timestamp,
                object: AskObject::Process,
                duplication: false,
                rule_id: 1,
                process_id: AGENT,
                thread_id: 0,
                originator_process_id: ATTACKER,
                originator_thread_id: 2004,
                source_process_id: 0,
                target_process_id: 0,
                original_desired_access: requested,
                desired_access: after_enforce,
                ask_rights: PROCESS_VM_WRITE | PROCESS_VM_OPERATION,
                fallback_access: PROCESS_QUERY_LIMITED_INFORMATION,
                timeout_ms: 400,
                requester_pid: ATTACKER,
                requester_create_time: i64::from(ATTACKER) * 7,
                target_create_time: i64::from(AGENT) * 7,
                requester_image: name("tool.exe"),
                target_image: name("agent.exe"),
            }
        );
        assert!(request.timestamp > 0);
        assert_eq!(record.mode, AuditMode::Ask);
        assert_eq!(record.rule_id, 1, "the ask rule");
        assert_eq!(record.ask_outcome, Some(AskOutcome::Answered));
        assert_eq!((record.ask_wait_us, record.result_code), (120, 7));
        assert_eq!(
            (record.original_desired_access, record.desired_access),
            (requested, granted)
        );
        assert_eq!(
            (record.process_id, record.thread_id, record.object),
            (AGENT, 0, AuditObject::Process)
        );
        assert_eq!(
            (record.originator_process_id, record.originator_thread_id),
            (ATTACKER, 2004)
        );
        assert!(!record.duplication);
    }

    #[test]
    fn a_duplicated_thread_handle_is_asked_with_source_receiver_and_thread() {
        let loaded = loaded();
        // EDITOR duplicates a handle to one of AGENT's threads out of AGENT
        // into ATTACKER.
        with_host(|host| {
            host.current_process_id = EDITOR;
            host.current_thread_id = 3004;
        });
        test_broker::script(&[Scripted::Reply {
            access: !THREAD_SET_CONTEXT,
            result_code: 0,
            waited_us: 5,
        }]);
        let requested = THREAD_SUSPEND_RESUME | THREAD_SET_CONTEXT | THREAD_GET_CONTEXT;
        let granted = loaded.request(
            OB_OPERATION_HANDLE_DUPLICATE,
            FAKE_THREAD_TYPE,
            fake_thread(AGENT).cast(),
            duplicate(requested, AGENT, ATTACKER),
        );
        assert_eq!(granted, THREAD_SUSPEND_RESUME | THREAD_GET_CONTEXT);
        let request = only_asked().request;
        assert_eq!(request.object, AskObject::Thread);
        assert!(request.duplication);
        assert_eq!(request.rule_id, 2);
        assert_eq!(
            (request.process_id, request.thread_id),
            (AGENT, AGENT + 1),
            "the owning process and the thread (fake thread ids: owner + 1)"
        );
        assert_eq!(
            (request.originator_process_id, request.originator_thread_id),
            (EDITOR, 3004)
        );
        assert_eq!(
            (request.source_process_id, request.target_process_id),
            (AGENT, ATTACKER)
        );
        assert_eq!(
            request.requester_pid, ATTACKER,
            "the receiver gets the access"
        );
        assert_eq!(
            (request.requester_image, request.target_image),
            (name("tool.exe"), name("agent.exe"))
        );
        assert_eq!(
            (request.requester_create_time, request.target_create_time),
            (i64::from(ATTACKER) * 7, i64::from(AGENT) * 7)
        );
        assert_eq!(
            (request.ask_rights, request.fallback_access),
            (THREAD_SUSPEND_RESUME | THREAD_SET_CONTEXT, requested),
            "on_timeout = allow: the fallback keeps the asked rights"
        );
        let record = loaded.drain()[0];
        assert!(record.duplication);
        assert_eq!(record.object, AuditObject::Thread);
        assert_eq!(
            (
                record.thread_id,
                record.source_process_id,
                record.target_process_id,
                record.originator_process_id
            ),
            (AGENT + 1, AGENT, ATTACKER, EDITOR)
        );
        assert_eq!((record.mode, record.rule_id), (AuditMode::Ask, 2));
    }

    #[test]
    fn every_outcome_gets_one_ask_record_with_its_access_wait_and_result_code() {
        let loaded = loaded();
        let requested = PROCESS_VM_WRITE | PROCESS_QUERY_LIMITED_INFORMATION;
        let fallback = PROCESS_QUERY_LIMITED_INFORMATION;
        let cases = [
            (
                Scripted::Reply {
                    access: requested,
                    result_code: -5,
                    waited_us: 30,
                },
                AskOutcome::Answered,
                requested,
                -5,
                30,
            ),
            (
                Scripted::Fallback(AskOutcome::TimedOut, 400_000),
                AskOutcome::TimedOut,
                fallback,
                0,
                400_000,
            ),
            (
                Scripted::Fallback(AskOutcome::NoHandler, 0),
                AskOutcome::NoHandler,
                fallback,
                0,
                0,
            ),
            (
                Scripted::Fallback(AskOutcome::PoolFull, 0),
                AskOutcome::PoolFull,
                fallback,
                0,
                0,
            ),
            (
                Scripted::Fallback(AskOutcome::Unaskable, 0),
                AskOutcome::Unaskable,
                fallback,
                0,
                0,
            ),
            (
                Scripted::Fallback(AskOutcome::Cancelled, 77),
                AskOutcome::Cancelled,
                fallback,
                0,
                77,
            ),
        ];
        for (script, outcome, access, result_code, wait) in cases {
            test_broker::script(&[script]);
            assert_eq!(
                loaded.open_process(ATTACKER, AGENT, requested),
                access,
                "{outcome:?}"
            );
            let records = loaded.drain();
            assert_eq!(records.len(), 1, "{outcome:?}: {records:?}");
            let record = records[0];
            assert_eq!(record.mode, AuditMode::Ask, "{outcome:?}");
            assert_eq!(record.rule_id, 1, "{outcome:?}");
            assert_eq!(record.ask_outcome, Some(outcome));
            assert_eq!(
                (
                    record.desired_access,
                    record.result_code,
                    record.ask_wait_us
                ),
                (access, result_code, wait),
                "{outcome:?}"
            );
            assert_eq!(record.original_desired_access, requested);
        }
        assert_eq!(test_broker::take().len(), cases.len());
    }

    #[test]
    fn without_a_script_the_broker_decides_and_with_no_handler_the_fallback_applies_at_once() {
        let loaded = loaded();
        let requested = PROCESS_VM_WRITE | PROCESS_QUERY_LIMITED_INFORMATION;
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, requested),
            PROCESS_QUERY_LIMITED_INFORMATION,
            "on_timeout = strip"
        );
        let thread_rights = THREAD_SUSPEND_RESUME | THREAD_GET_CONTEXT;
        assert_eq!(
            loaded.open_thread(ATTACKER, AGENT, thread_rights),
            thread_rights,
            "on_timeout = allow"
        );
        let records = loaded.drain();
        assert_eq!(records.len(), 2);
        for record in records {
            assert_eq!(record.ask_outcome, Some(AskOutcome::NoHandler));
            assert_eq!(record.ask_wait_us, 0);
        }
    }

    #[test]
    fn a_handler_never_adds_a_bit_even_through_a_broker_that_tries() {
        let loaded = loaded();
        test_broker::script(&[Scripted::Raw(crate::ask::AskAnswer {
            outcome: AskOutcome::Answered,
            access: u32::MAX,
            result_code: 0,
            waited_us: 1,
        })]);
        let requested = PROCESS_TERMINATE | PROCESS_VM_WRITE;
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, requested),
            PROCESS_VM_WRITE,
            "the enforce strip stays, nothing beyond the request appears"
        );
        assert_eq!(loaded.drain()[0].desired_access, PROCESS_VM_WRITE);
    }

    #[test]
    fn the_handlers_own_requests_get_the_enforce_rules_only_and_no_ask_record() {
        let loaded = loaded();
        test_broker::set_handler_pid(Some(ATTACKER));
        // Only the ask rule applies: untouched, not asked, not audited, not counted.
        let asked_only = PROCESS_VM_WRITE | PROCESS_QUERY_LIMITED_INFORMATION;
        assert_eq!(loaded.open_process(ATTACKER, AGENT, asked_only), asked_only);
        assert!(loaded.drain().is_empty());
        assert_eq!(rule_stats(&loaded, 1), (0, 0));
        // The enforce rule still strips, with its own (enforce) record.
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, asked_only | PROCESS_TERMINATE),
            asked_only
        );
        let records = loaded.drain();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].mode, records[0].rule_id, records[0].ask_outcome),
            (AuditMode::Enforce, 0, None)
        );
        // An audit rule still reports.
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE | PROCESS_VM_READ),
            PROCESS_VM_WRITE | PROCESS_VM_READ
        );
        let records = loaded.drain();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].mode, records[0].rule_id), (AuditMode::Audit, 3));
        assert!(
            test_broker::take().is_empty(),
            "the handler was never asked about itself"
        );
        assert_eq!(rule_stats(&loaded, 1), (0, 0));
        // Another requester still is asked while that handler is connected.
        assert_eq!(
            loaded.open_process(EDITOR, AGENT, asked_only),
            PROCESS_QUERY_LIMITED_INFORMATION
        );
        assert_eq!(test_broker::take().len(), 1);
    }

    #[test]
    fn requests_outside_the_ask_rights_and_exempt_requests_are_not_asked() {
        let loaded = loaded();
        // Rights no ask rule is about: the common path (no ask, no record).
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_QUERY_LIMITED_INFORMATION),
            PROCESS_QUERY_LIMITED_INFORMATION
        );
        // Rights an enforce rule removed already: nothing left to ask about.
        assert_eq!(loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE), 0);
        // A process opening itself.
        assert_eq!(
            loaded.open_process(AGENT, AGENT, PROCESS_VM_WRITE),
            PROCESS_VM_WRITE
        );
        // An unprotected target.
        assert_eq!(
            loaded.open_process(AGENT, ATTACKER, PROCESS_VM_WRITE),
            PROCESS_VM_WRITE
        );
        assert!(test_broker::take().is_empty());
        let records = loaded.drain();
        assert_eq!(records.len(), 1, "only the enforce strip: {records:?}");
        assert_eq!(records[0].mode, AuditMode::Enforce);
    }

    #[test]
    fn kernel_handles_and_critical_requesters_reach_the_broker_as_unaskable_when_not_exempt() {
        const CSRSS: u32 = 600;
        let policy = format!(
            "[settings]\nexempt_kernel_handles = false\nexempt_critical_requesters = false\n{}",
            ASK_POLICY.replace("[settings]\nask_timeout_ms = 400\n", "")
        );
        let (loaded, _) = Loaded::with_setup(
            Some(blob(&policy)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
            |host| {
                host.processes.insert(
                    CSRSS,
                    (
                        1,
                        "\\Device\\HarddiskVolume3\\Windows\\System32\\csrss.exe".into(),
                    ),
                );
            },
        );
        assert_eq!(
            loaded.open_process(CSRSS, AGENT, PROCESS_VM_WRITE),
            0,
            "fallback"
        );
        let asked = only_asked();
        assert!(!asked.plan.askable, "a critical requester");
        assert_eq!(asked.timeout_ms, 250, "the default ask_timeout_ms");
        assert_eq!(asked.request.requester_image, name("csrss.exe"));
        with_host(|host| host.current_process_id = ATTACKER);
        let mut parameters = create(PROCESS_VM_WRITE);
        let mut info = OB_PRE_OPERATION_INFORMATION {
            Operation: OB_OPERATION_HANDLE_CREATE,
            __bindgen_anon_1: Flags { Flags: 1 },
            Object: fake_process(AGENT).cast(),
            ObjectType: FAKE_PROCESS_TYPE as POBJECT_TYPE,
            CallContext: core::ptr::null_mut(),
            Parameters: &raw mut parameters,
        };
        // SAFETY: as the object manager calls it for a kernel handle.
        unsafe { process_pre_operation(loaded.context(), &raw mut info) };
        // SAFETY: the create member is the live one.
        let granted = unsafe { parameters.CreateHandleInformation.DesiredAccess };
        assert_eq!(granted, 0);
        assert!(!only_asked().plan.askable, "a kernel handle");
        let outcomes: Vec<_> = loaded.drain().iter().map(|r| r.ask_outcome).collect();
        assert_eq!(outcomes.len(), 2);
    }

    #[test]
    fn names_come_only_from_a_table_entry_of_the_same_process() {
        let loaded = loaded();
        // A requester the table does not know (never notified): no name,
        // and no image path read in the callback; its creation key is its own.
        with_host(|host| host.processes.insert(5000, (55, image("stranger.exe"))));
        let lookups = with_host(|host| host.image_name_lookups);
        loaded.open_process(5000, AGENT, PROCESS_VM_WRITE);
        let request = only_asked().request;
        assert_eq!(request.requester_image, ImageName::EMPTY);
        assert_eq!(request.requester_create_time, 55);
        assert_eq!(request.target_image, name("agent.exe"));
        assert_eq!(with_host(|host| host.image_name_lookups), lookups);
        // A stale entry (ATTACKER's id reused without an exit notification):
        // its name is not the new process's.
        with_host(|host| {
            host.processes
                .insert(ATTACKER, (999_999, image("notepad.exe")))
        });
        loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE);
        let request = only_asked().request;
        assert_eq!(request.requester_image, ImageName::EMPTY);
        assert_eq!(request.requester_create_time, 999_999);
        // A long name is cut at 64 units and flagged.
        let long = format!("{}.exe", "a".repeat(70));
        notify_create(6000, &long, 66);
        loaded.open_process(6000, AGENT, PROCESS_VM_WRITE);
        let request = only_asked().request;
        assert_eq!(
            (
                request.requester_image.len,
                request.requester_image.truncated
            ),
            (64, true)
        );
        assert_eq!(request.requester_image, name(&long));
    }

    #[test]
    fn counters_and_rule_counters_count_asked_requests() {
        let loaded = loaded();
        let counters = &loaded.state().counters;
        let base = (
            counters.modified.load(Relaxed),
            counters.audited.load(Relaxed),
        );
        // Answered, keeping everything: audited, not modified; the ask rule hit.
        test_broker::script(&[Scripted::Reply {
            access: u32::MAX,
            result_code: 0,
            waited_us: 1,
        }]);
        loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE);
        assert_eq!(
            (
                counters.modified.load(Relaxed),
                counters.audited.load(Relaxed)
            ),
            (base.0, base.1 + 1)
        );
        assert_eq!(rule_stats(&loaded, 1), (1, 0));
        assert_eq!(rule_stats(&loaded, 0), (0, 0));
        // Timed out (fail closed): modified; the ask rule hit and stripped.
        test_broker::script(&[Scripted::Fallback(AskOutcome::TimedOut, 400_000)]);
        loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE);
        assert_eq!(counters.modified.load(Relaxed), base.0 + 1);
        assert_eq!(rule_stats(&loaded, 1), (2, 1));
        // With an enforce strip too: both rules count, one record, modified once.
        test_broker::script(&[Scripted::Reply {
            access: u32::MAX,
            result_code: 0,
            waited_us: 1,
        }]);
        loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE | PROCESS_TERMINATE);
        assert_eq!(rule_stats(&loaded, 0), (1, 1));
        assert_eq!(rule_stats(&loaded, 1), (3, 1));
        assert_eq!(
            (
                counters.modified.load(Relaxed),
                counters.audited.load(Relaxed)
            ),
            (base.0 + 2, base.1 + 3)
        );
        assert_eq!(loaded.drain().len(), 3);
    }

    #[test]
    fn every_ring_append_wakes_the_events_readers() {
        let loaded = loaded();
        test_broker::script(&[Scripted::Fallback(AskOutcome::NoHandler, 0)]);
        loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE); // enforce
        loaded.open_process(ATTACKER, AGENT, PROCESS_VM_READ); // audit
        loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE); // ask
        loaded.open_process(ATTACKER, EDITOR, PROCESS_TERMINATE); // nothing
        assert_eq!(loaded.drain().len(), 3);
        assert_eq!(test_broker::notifies(), 3);
    }
}

/// Issue 12: the ask broker in status, counters and the driver's lifetime.
mod ask_lifetime {
    use super::*;
    use crate::driver_entry::unload_order::at_ask_shutdown;
    use procguard_protocol::ioctl::{
        RuleCountersResponse, Status, IOCTL_GET_RULE_COUNTERS, IOCTL_GET_STATUS,
        IOCTL_RESET_COUNTERS,
    };

    const ASK_POLICY: &str = r#"
[settings]
ask_timeout_ms = 1200

[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
strip = ["PROCESS_TERMINATE"]

[[rule]]
name = "ask-memory"
target = { name = "agent.exe" }
objects = "process"
mode = "ask"
strip = ["PROCESS_VM_WRITE"]
"#;

    fn ioctl(code: u32, output_len: usize) -> (i32, Vec<u8>) {
        use crate::control::control_device::evt_io_device_control;
        use crate::ffi::ntddk::{FakeRequest, FAKE_REQUEST};
        with_host(|host| {
            host.request = Some(FakeRequest {
                system_buffer: vec![0u8; output_len],
                input_length: 0,
                output_length: output_len,
                completion: None,
            })
        });
        // SAFETY: as the framework calls it for a presented request.
        unsafe {
            evt_io_device_control(
                core::ptr::null_mut(),
                FAKE_REQUEST as _,
                output_len,
                0,
                code,
            );
        }
        let request = with_host(|host| host.request.take()).expect("request");
        let (status, information) = request.completion.expect("completed");
        (
            status,
            request.system_buffer[..usize::try_from(information).expect("small")].to_vec(),
        )
    }

    fn rule_counters() -> Vec<(u64, u64)> {
        let (status, bytes) = ioctl(IOCTL_GET_RULE_COUNTERS, RuleCountersResponse::size(2));
        assert_eq!(status, STATUS_SUCCESS);
        let mut counters = Vec::new();
        RuleCountersResponse::parse(&bytes, |hits, strips| counters.push((hits, strips)))
            .expect("valid");
        counters
    }

    #[test]
    fn status_reports_the_ask_timeout_of_the_policy_in_force_and_the_broker_state() {
        let (loaded, _) = Loaded::with(Some(blob(ASK_POLICY)), &[(AGENT, "agent.exe")]);
        let (status, bytes) = ioctl(IOCTL_GET_STATUS, Status::SIZE);
        assert_eq!(status, STATUS_SUCCESS);
        let report = Status::from_bytes(&bytes).expect("a status");
        assert_eq!(report.ask.timeout_ms, 1200);
        let broker = loaded.state().ask.status();
        assert_eq!(report.ask.handler_pid, broker.handler_pid);
        assert_eq!(report.ask.slots, broker.slots);
        assert_eq!(report.ask.counters, broker.counters);
        drop(loaded);
        // The default when the policy does not say.
        let (_loaded, _) = Loaded::with(Some(blob(POLICY)), &[]);
        let report =
            Status::from_bytes(&ioctl(IOCTL_GET_STATUS, Status::SIZE).1).expect("a status");
        assert_eq!(report.ask.timeout_ms, 250);
    }

    #[test]
    fn rule_counters_count_ask_rules_and_reset_clears_them() {
        let (loaded, _) = Loaded::with(
            Some(blob(ASK_POLICY)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
        );
        // No handler: the fail-closed fallback strips VM_WRITE.
        assert_eq!(loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE), 0);
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_VM_WRITE | PROCESS_TERMINATE),
            0
        );
        assert_eq!(rule_counters(), [(1, 1), (2, 2)]);
        assert_eq!(ioctl(IOCTL_RESET_COUNTERS, 0).0, STATUS_SUCCESS);
        assert_eq!(rule_counters(), [(0, 0), (0, 0)]);
        let report =
            Status::from_bytes(&ioctl(IOCTL_GET_STATUS, Status::SIZE).1).expect("a status");
        assert_eq!(
            report.ask.counters,
            procguard_protocol::ask::AskCounters::default()
        );
        assert_eq!((report.counters.modified, report.counters.audited), (0, 0));
    }

    #[test]
    fn unload_shuts_the_broker_down_before_the_device_and_the_callbacks_go() {
        let (mut loaded, _) = Loaded::with(Some(blob(ASK_POLICY)), &[(AGENT, "agent.exe")]);
        assert_eq!(at_ask_shutdown(), None, "not before unload");
        loaded.unload();
        assert_eq!(
            at_ask_shutdown(),
            Some((0, 0)),
            "(callbacks unregistered, devices deleted) when the broker was shut down"
        );
        assert_eq!(with_host(|host| host.unregistered.len()), 1);
    }

    #[test]
    fn a_failed_control_device_shuts_the_broker_down_before_unregistering() {
        let (_loaded, status) =
            Loaded::with_setup(Some(blob(ASK_POLICY)), &[(AGENT, "agent.exe")], |host| {
                host.control.create_result = Some(crate::ffi::STATUS_ACCESS_DENIED);
            });
        assert_eq!(status, crate::ffi::STATUS_ACCESS_DENIED);
        assert_eq!(at_ask_shutdown(), Some((0, 0)));
        assert_eq!(with_host(|host| host.unregistered.len()), 1);
        assert!(DriverState::global().is_none());
    }
}

/// Policy updates from every source: counted in `Status.policy_updates`
/// and recorded in the audit ring (`control/policy_apply.rs`), and the
/// registry work item's re-read (`policy_apply::apply_from_registry`).
mod policy_updates {
    use super::*;
    use crate::control::policy_apply::{apply_from_registry, Applied};
    use crate::ffi::{
        REG_SZ, STATUS_INVALID_BUFFER_SIZE, STATUS_INVALID_PARAMETER, STATUS_OBJECT_TYPE_MISMATCH,
    };
    use procguard_protocol::ioctl::PolicyUpdates;

    const TOOL_POLICY: &str = "[[rule]]\nname = \"tool\"\ntarget = { name = \"tool.exe\" }\nstrip = [\"PROCESS_TERMINATE\"]\n";

    fn loaded() -> Loaded {
        let (loaded, status) = Loaded::with(
            Some(blob(POLICY)),
            &[(AGENT, "agent.exe"), (ATTACKER, "tool.exe")],
        );
        assert_eq!(status, STATUS_SUCCESS);
        loaded
    }

    /// The id status and records give the empty policy (no rules).
    fn empty_id() -> u32 {
        procguard_policy::CompiledPolicy::empty().policy_id()
    }

    fn updates(loaded: &Loaded) -> PolicyUpdates {
        loaded.state().status().policy_updates
    }

    fn set_registry(value_type: u32, data: Vec<u8>) {
        with_host(|host| {
            host.parameters
                .get_or_insert_with(Default::default)
                .insert("Policy".into(), FakeValue { value_type, data });
        });
    }

    fn only(records: &[AuditRecord]) -> AuditRecord {
        assert_eq!(records.len(), 1, "{records:?}");
        records[0]
    }

    #[test]
    fn the_boot_policy_is_counted_and_recorded() {
        let (loaded, _) = Loaded::with(Some(blob(POLICY)), &[]);
        let status = loaded.state().status();
        assert_eq!(
            status.policy_updates,
            PolicyUpdates {
                applied: 1,
                rejected: 0,
                last_rejected_status: 0,
                source: Some(PolicySource::Boot),
            }
        );
        assert_eq!(status.rule_count, 3);
        let record = loaded.boot.expect("boot record");
        assert_eq!(record.mode, AuditMode::PolicyApplied);
        assert_eq!(
            (record.rule_id, record.desired_access),
            (status.policy_id, 3)
        );
        assert_eq!(
            (record.originator_process_id, record.originator_thread_id),
            (0, 0)
        );
        assert!(record.timestamp > 0);
    }

    #[test]
    fn a_refused_boot_policy_is_counted_and_recorded_with_its_status() {
        let mut corrupt = blob(POLICY);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x55;
        for (value_type, data, expected) in [
            (REG_BINARY, corrupt, STATUS_INVALID_PARAMETER),
            (REG_SZ, blob(POLICY), STATUS_OBJECT_TYPE_MISMATCH),
        ] {
            let (loaded, status) = Loaded::with_setup(None, &[], |host| {
                host.parameters
                    .get_or_insert_with(Default::default)
                    .insert("Policy".into(), FakeValue { value_type, data });
            });
            assert_eq!(status, STATUS_SUCCESS, "the driver loads with no rules");
            let status = loaded.state().status();
            assert_eq!(
                status.policy_updates,
                PolicyUpdates {
                    applied: 0,
                    rejected: 1,
                    last_rejected_status: expected,
                    source: Some(PolicySource::Boot),
                }
            );
            assert_eq!((status.policy_id, status.rule_count), (empty_id(), 0));
            let record = loaded.boot.expect("boot record");
            assert_eq!(record.mode, AuditMode::PolicyRejected);
            assert_eq!(record.result_code, expected);
            assert_eq!((record.rule_id, record.desired_access), (empty_id(), 0));
        }
    }

    #[test]
    fn control_updates_are_recorded_with_the_sender_and_refusals_keep_the_old_policy() {
        let loaded = loaded();
        let in_force = loaded.state().status().policy_id;
        with_host(|host| {
            host.current_process_id = EDITOR;
            host.current_thread_id = 321;
        });
        let replacement = blob(TOOL_POLICY);
        assert_eq!(loaded.state().set_policy(&replacement, false), Ok(()));
        let record = only(&loaded.drain());
        assert_eq!(record.object, AuditObject::Policy);
        assert_eq!(record.mode, AuditMode::PolicyApplied);
        assert_eq!(record.policy_source(), Some(PolicySource::Control));
        assert_eq!(
            (record.originator_process_id, record.originator_thread_id),
            (EDITOR, 321)
        );
        let new_id = loaded.state().status().policy_id;
        assert_ne!(new_id, in_force);
        assert_eq!(record.rule_id, new_id, "the policy id");
        assert_eq!(record.desired_access, 1, "one rule");

        assert_eq!(
            loaded.state().set_policy(b"PGPB", false),
            Err(STATUS_INVALID_PARAMETER)
        );
        let record = only(&loaded.drain());
        assert_eq!(record.mode, AuditMode::PolicyRejected);
        assert_eq!(record.result_code, STATUS_INVALID_PARAMETER);
        assert_eq!(record.rule_id, new_id, "the policy still in force");
        assert_eq!(
            updates(&loaded),
            PolicyUpdates {
                applied: 2,
                rejected: 1,
                last_rejected_status: STATUS_INVALID_PARAMETER,
                source: Some(PolicySource::Control),
            }
        );
        // The same blob again through the control plane is applied again.
        assert_eq!(loaded.state().set_policy(&replacement, false), Ok(()));
        assert_eq!(only(&loaded.drain()).mode, AuditMode::PolicyApplied);
        assert_eq!(updates(&loaded).applied, 3);
    }

    #[test]
    fn a_registry_change_is_applied_and_recorded() {
        let loaded = loaded();
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
            0,
            "the boot policy protects the agent"
        );
        loaded.drain();
        set_registry(REG_BINARY, blob(TOOL_POLICY));
        assert!(matches!(
            apply_from_registry(loaded.state()),
            Ok(Applied::InForce(_))
        ));
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
            PROCESS_TERMINATE,
            "the registry's policy decides"
        );
        assert_eq!(loaded.open_process(AGENT, ATTACKER, PROCESS_TERMINATE), 0);
        let records = loaded.drain();
        let record = records[0];
        assert_eq!(record.object, AuditObject::Policy);
        assert_eq!(record.mode, AuditMode::PolicyApplied);
        assert_eq!(record.policy_source(), Some(PolicySource::Registry));
        assert_eq!(
            (record.originator_process_id, record.originator_thread_id),
            (0, 0)
        );
        assert_eq!(record.rule_id, loaded.state().status().policy_id);
        assert_eq!(
            updates(&loaded),
            PolicyUpdates {
                applied: 2,
                rejected: 0,
                last_rejected_status: 0,
                source: Some(PolicySource::Registry),
            }
        );
        assert_eq!(with_host(|host| host.open_keys), 0, "every key closed");
    }

    #[test]
    fn an_unchanged_registry_blob_is_neither_applied_nor_counted_nor_recorded() {
        let loaded = loaded();
        // What `apply --persist` does: the IOCTL writes the value, whose
        // change the registry callback then reports.
        let replacement = blob(TOOL_POLICY);
        assert_eq!(loaded.state().set_policy(&replacement, true), Ok(()));
        loaded.drain();
        let before = updates(&loaded);
        assert_eq!(apply_from_registry(loaded.state()), Ok(Applied::Unchanged));
        assert_eq!(apply_from_registry(loaded.state()), Ok(Applied::Unchanged));
        assert!(loaded.drain().is_empty());
        assert_eq!(updates(&loaded), before);
        assert_eq!(before.applied, 2);
        assert_eq!(before.source, Some(PolicySource::Control));
    }

    #[test]
    fn unusable_registry_values_are_refused_and_the_old_policy_stays() {
        let loaded = loaded();
        let in_force = loaded.state().status().policy_id;
        let mut corrupt = blob(TOOL_POLICY);
        corrupt[4] = 99;
        let oversize = vec![0u8; crate::control::parameters::MAX_VALUE_BYTES + 1];
        for (count, (value_type, data, expected)) in [
            (REG_BINARY, corrupt, STATUS_INVALID_PARAMETER),
            (REG_SZ, blob(TOOL_POLICY), STATUS_OBJECT_TYPE_MISMATCH),
            (REG_BINARY, oversize, STATUS_INVALID_BUFFER_SIZE),
        ]
        .into_iter()
        .enumerate()
        {
            set_registry(value_type, data);
            assert_eq!(apply_from_registry(loaded.state()), Err(expected));
            let record = only(&loaded.drain());
            assert_eq!(record.mode, AuditMode::PolicyRejected);
            assert_eq!(record.policy_source(), Some(PolicySource::Registry));
            assert_eq!(record.result_code, expected);
            assert_eq!((record.rule_id, record.desired_access), (in_force, 3));
            let updates = updates(&loaded);
            assert_eq!(updates.rejected, count as u32 + 1);
            assert_eq!(updates.last_rejected_status, expected);
            assert_eq!(updates.applied, 1);
            assert_eq!(updates.source, Some(PolicySource::Boot));
            assert_eq!(
                loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
                0,
                "the boot policy still protects the agent"
            );
            loaded.drain();
        }
    }

    #[test]
    fn a_deleted_value_means_no_rules() {
        let loaded = loaded();
        with_host(|host| {
            host.parameters
                .as_mut()
                .expect("parameters")
                .remove("Policy")
        });
        assert!(matches!(
            apply_from_registry(loaded.state()),
            Ok(Applied::InForce(_))
        ));
        let record = only(&loaded.drain());
        assert_eq!(record.mode, AuditMode::PolicyApplied);
        assert_eq!((record.rule_id, record.desired_access), (empty_id(), 0));
        let status = loaded.state().status();
        assert_eq!((status.policy_id, status.rule_count), (empty_id(), 0));
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
            PROCESS_TERMINATE
        );
        // And the whole key gone: the same.
        with_host(|host| host.parameters = None);
        assert_eq!(apply_from_registry(loaded.state()), Ok(Applied::Unchanged));
    }

    const PARAMETERS_KEY_NAME: &str =
        "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\procguard\\Parameters";
    const PARAMETERS_OBJECT: usize = 0x7E60;
    const OTHER_OBJECT: usize = 0x7E70;

    /// Calls the registered registry callback as the configuration manager
    /// does after a set (or delete) of `value` on the key `object`.
    fn notify(delete: bool, status: i32, value: &str, object: usize) -> i32 {
        use crate::ffi::{
            REG_DELETE_VALUE_KEY_INFORMATION, REG_POST_OPERATION_INFORMATION,
            REG_SET_VALUE_KEY_INFORMATION,
        };
        let record = with_host(|host| host.registry_callback.clone()).expect("registered");
        let mut units: Vec<u16> = value.encode_utf16().collect();
        let mut name = UNICODE_STRING {
            Length: (units.len() * 2) as u16,
            MaximumLength: (units.len() * 2) as u16,
            Buffer: units.as_mut_ptr(),
        };
        let mut set = REG_SET_VALUE_KEY_INFORMATION {
            Object: object as PVOID,
            ValueName: &raw mut name,
            TitleIndex: 0,
            Type: REG_BINARY,
            Data: core::ptr::null_mut(),
            DataSize: 0,
            CallContext: core::ptr::null_mut(),
            ObjectContext: core::ptr::null_mut(),
            Reserved: core::ptr::null_mut(),
        };
        let mut removed = REG_DELETE_VALUE_KEY_INFORMATION {
            Object: object as PVOID,
            ValueName: &raw mut name,
            CallContext: core::ptr::null_mut(),
            ObjectContext: core::ptr::null_mut(),
            Reserved: core::ptr::null_mut(),
        };
        let pre: PVOID = if delete {
            (&raw mut removed).cast()
        } else {
            (&raw mut set).cast()
        };
        let mut post = REG_POST_OPERATION_INFORMATION {
            Object: object as PVOID,
            Status: status,
            PreInformation: pre,
            ReturnStatus: status,
            CallContext: core::ptr::null_mut(),
            ObjectContext: core::ptr::null_mut(),
            Reserved: core::ptr::null_mut(),
        };
        let class: usize = if delete { 17 } else { 16 };
        // SAFETY: the registered EX_CALLBACK_FUNCTION and its context.
        let callback: unsafe extern "C" fn(PVOID, PVOID, PVOID) -> i32 =
            unsafe { core::mem::transmute(record.function) };
        // SAFETY: as the configuration manager calls it.
        unsafe {
            callback(
                record.context as PVOID,
                class as PVOID,
                (&raw mut post).cast(),
            )
        }
    }

    fn queued() -> bool {
        with_host(|host| host.work_items.iter().any(|item| item.queued))
    }

    fn watched() -> Loaded {
        let loaded = loaded();
        with_host(|host| {
            host.key_names
                .insert(PARAMETERS_OBJECT, PARAMETERS_KEY_NAME.into());
            host.key_names.insert(
                OTHER_OBJECT,
                "\\REGISTRY\\MACHINE\\SYSTEM\\ControlSet001\\Services\\other\\Parameters".into(),
            );
        });
        loaded
    }

    #[test]
    fn the_registry_callback_is_registered_at_the_altitude_with_a_work_item_under_the_device() {
        let loaded = watched();
        let record = with_host(|host| host.registry_callback.clone()).expect("registered");
        let altitude = loaded.state().status().altitude_len;
        assert!(altitude > 0);
        let expected = with_host(|host| host.registrations.last().map(|r| r.altitude.clone()));
        assert_eq!(
            Some(record.altitude),
            expected,
            "the object callbacks' altitude"
        );
        assert_ne!(record.driver, 0, "DriverEntry's driver object");
        let items = with_host(|host| host.work_items.clone());
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].parent, crate::ffi::ntddk::FAKE_DEVICE);
        assert!(!items[0].queued);
    }

    #[test]
    fn a_policy_change_enqueues_the_work_item_which_applies_the_value() {
        let loaded = watched();
        set_registry(REG_BINARY, blob(TOOL_POLICY));
        assert_eq!(
            notify(false, 0, "Policy", PARAMETERS_OBJECT),
            STATUS_SUCCESS
        );
        assert!(queued());
        assert!(
            loaded.drain().is_empty(),
            "nothing applied in the writer's thread"
        );
        assert_eq!(crate::ffi::ntddk::run_work_items(), 1);
        let record = only(&loaded.drain());
        assert_eq!(record.policy_source(), Some(PolicySource::Registry));
        assert_eq!(record.mode, AuditMode::PolicyApplied);
        assert_eq!(
            loaded.open_process(ATTACKER, AGENT, PROCESS_TERMINATE),
            PROCESS_TERMINATE
        );
        // Case does not matter; a delete counts too.
        assert_eq!(notify(true, 0, "POLICY", PARAMETERS_OBJECT), STATUS_SUCCESS);
        assert!(queued());
    }

    #[test]
    fn a_storm_queues_one_work_item_and_the_last_value_wins() {
        let loaded = watched();
        for policy in [POLICY, TOOL_POLICY, POLICY, TOOL_POLICY] {
            set_registry(REG_BINARY, blob(policy));
            notify(false, 0, "Policy", PARAMETERS_OBJECT);
        }
        assert_eq!(with_host(|host| host.work_item_enqueues), 4);
        assert_eq!(crate::ffi::ntddk::run_work_items(), 1, "one run");
        let record = only(&loaded.drain());
        assert_eq!(record.rule_id, loaded.state().status().policy_id);
        assert_eq!(record.desired_access, 1, "the tool policy's one rule");
        assert_eq!(updates(&loaded).applied, 2);
    }

    #[test]
    fn unrelated_values_keys_and_failed_operations_enqueue_nothing() {
        let _loaded = watched();
        notify(false, 0, "Altitude", PARAMETERS_OBJECT);
        notify(false, 0, "Policy", OTHER_OBJECT);
        notify(false, 0xC000_0022_u32 as i32, "Policy", PARAMETERS_OBJECT);
        notify(true, 0, "Policy2", PARAMETERS_OBJECT);
        assert!(!queued());
        assert_eq!(with_host(|host| host.work_item_enqueues), 0);
        // A key whose name cannot be had: enqueued (never miss a change).
        notify(false, 0, "Policy", 0x7E80);
        assert!(queued());
    }

    #[test]
    fn unload_unregisters_the_callback_then_flushes_the_queued_work_item() {
        let mut loaded = watched();
        set_registry(REG_BINARY, blob(TOOL_POLICY));
        notify(false, 0, "Policy", PARAMETERS_OBJECT);
        assert!(queued());
        loaded.unload();
        let (unregistered, items, deleted) = with_host(|host| {
            (
                host.registry_unregistered.clone(),
                host.work_items.clone(),
                host.control.deleted.clone(),
            )
        });
        assert_eq!(unregistered, std::vec![0x00C0_FFEE]);
        assert!(with_host(|host| host.registry_callback.is_none()));
        assert_eq!(items[0].flushes, 1);
        assert!(!items[0].queued, "the flush ran it");
        assert!(
            !deleted.is_empty(),
            "the device (the work item's parent) went after"
        );
        assert!(DriverState::global().is_none());
    }

    #[test]
    fn a_failed_callback_registration_leaves_the_driver_loaded() {
        let (loaded, status) = Loaded::with_setup(Some(blob(POLICY)), &[], |host| {
            host.registry_callback_result =
                Some(crate::ffi::STATUS_FLT_INSTANCE_ALTITUDE_COLLISION);
        });
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(
            loaded.state().status().last_error,
            crate::ffi::STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
        );
        assert!(with_host(|host| host.registry_callback.is_none()));
    }
}
