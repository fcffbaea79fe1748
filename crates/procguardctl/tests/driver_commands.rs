//! The commands that talk to the driver, run in-process against the fake
//! device (the driver's own dispatcher over a fake driver) and against
//! devices that fail or lie, through the same entry point as the binary.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use procguard_policy::toml::parse_policy;
use procguard_policy::{encode, ObjectKind, Operation, ProcessIdentity};
use procguard_protocol::ask::{
    AskCounters, AskOutcome, AskStatus, IOCTL_WAIT_EVENTS, STATUS_CANCELLED,
};
use procguard_protocol::audit_record::NO_RULE;
use procguard_protocol::dispatch::{STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER};
use procguard_protocol::ioctl::{
    ctl_code, EventsHeader, PolicyUpdates, DEVICE_TYPE, FILE_READ_ACCESS, IOCTL_GET_POLICY,
    IOCTL_GET_STATUS, IOCTL_READ_EVENTS, IOCTL_RESET_COUNTERS, IOCTL_SET_POLICY, METHOD_BUFFERED,
};
use procguard_protocol::{AuditMode, AuditObject, AuditRecord, PolicySource};
use procguardctl::device::{Device, DeviceError};
use procguardctl::fake_device::{FakeDevice, SimulatedRequest};

const EXAMPLE: &str = "examples/protect-agent.toml";
const AGENT: &str = r"\Device\HarddiskVolume3\Program Files\Contoso\Agent\contoso-agent.exe";
const UPDATER: &str = r"\Device\HarddiskVolume3\Program Files\Contoso\Agent\contoso-updater.exe";
const TASKMGR: &str = r"\Device\HarddiskVolume3\Windows\System32\Taskmgr.exe";
const NOTEPAD: &str = r"\Device\HarddiskVolume3\Windows\System32\notepad.exe";
/// 2026-03-14 15:09:26.535 UTC as a FILETIME.
const T0: i64 = 134_179_745_665_350_000;

fn example_policy() -> procguard_policy::Policy {
    parse_policy(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap()
}

/// A device the test keeps a handle on after `run` consumed its box.
struct Shared<D>(Rc<RefCell<D>>);

impl<D> Clone for Shared<D> {
    fn clone(&self) -> Self {
        Self(Rc::clone(&self.0))
    }
}

impl<D: Device> Device for Shared<D> {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        self.0.borrow_mut().ioctl(code, input, output)
    }

    fn cancel_on_ctrl_c(&mut self) {
        self.0.borrow_mut().cancel_on_ctrl_c();
    }

    fn interrupted(&self) -> bool {
        self.0.borrow().interrupted()
    }
}

/// Runs a command line against `device`; returns exit code, stdout, stderr.
fn run_with<D: Device + 'static>(device: &Shared<D>, args: &[&str]) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let device = device.clone();
    let code = procguardctl::run(
        std::iter::once("procguardctl").chain(args.iter().copied()),
        &mut out,
        &mut err,
        &mut || Ok(Box::new(device.clone()) as Box<dyn Device>),
    );
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn fake_with_example() -> Shared<FakeDevice> {
    Shared(Rc::new(RefCell::new(FakeDevice::with_policy(&encode(
        &example_policy(),
    )))))
}

fn requests_of(device: &Shared<FakeDevice>) -> Vec<u32> {
    device
        .0
        .borrow()
        .driver
        .state
        .borrow()
        .requests
        .iter()
        .map(|(code, _, _)| *code)
        .collect()
}

#[test]
fn apply_sends_the_compiled_blob_confirms_it_and_persists_only_when_asked() {
    let device = Shared(Rc::new(RefCell::new(FakeDevice::default())));
    let (code, out, err) = run_with(&device, &["apply", EXAMPLE]);
    assert_eq!((code, err.as_str()), (0, ""));
    let blob = encode(&example_policy());
    {
        let fake = device.0.borrow();
        let state = fake.driver.state.borrow();
        assert_eq!(state.blob, blob, "the driver runs the compiled blob");
        assert_eq!(state.persisted, None);
        assert_eq!(state.rule_counters.len(), 4);
    }
    assert_eq!(requests_of(&device), [IOCTL_SET_POLICY, IOCTL_GET_STATUS]);
    assert!(out.ends_with(
        "applied: policy id 0xba8cd4bc, 4 rules in force (not persisted: the driver loads its stored policy at the next start)\n"
    ), "{out}");
    assert!(out.starts_with("rule 0 \"agent-no-tamper\" (enforce, create and duplicate): "));

    let (code, out, _) = run_with(&device, &["apply", EXAMPLE, "--persist"]);
    assert_eq!(code, 0);
    assert!(out.ends_with(
        "applied: policy id 0xba8cd4bc, 4 rules in force, persisted (in force from boot)\n"
    ));
    assert_eq!(
        device.0.borrow().driver.state.borrow().persisted.as_deref(),
        Some(blob.as_slice())
    );
}

#[test]
fn apply_of_an_invalid_policy_never_reaches_the_driver() {
    let device = Shared(Rc::new(RefCell::new(FakeDevice::default())));
    let (code, out, err) = run_with(&device, &["apply", "tests/policies/bad-values.toml"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.ends_with("error: tests/policies/bad-values.toml: 7 errors\n"),
        "{err}"
    );
    assert_eq!(requests_of(&device), Vec::<u32>::new());
}

/// Fails every request with one error.
struct Failing(DeviceError);

impl Device for Failing {
    fn ioctl(&mut self, _: u32, _: &[u8], _: &mut [u8]) -> Result<usize, DeviceError> {
        Err(self.0.clone())
    }
}

#[test]
fn a_policy_the_driver_refuses_is_reported_as_refused() {
    let device = Shared(Rc::new(RefCell::new(Failing(DeviceError::Driver(
        STATUS_INVALID_PARAMETER,
    )))));
    let (code, out, err) = run_with(&device, &["apply", EXAMPLE]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "error: the driver refused the policy (STATUS_INVALID_PARAMETER): it validates every blob and keeps \
         the policy it had; is procguardctl older or newer than the driver?\n"
    );
}

#[test]
fn driver_failures_are_reported_with_their_status_name_and_request() {
    for (error, expected) in [
        (
            DeviceError::Driver(STATUS_INVALID_DEVICE_REQUEST),
            "error: get status: the driver failed the request: STATUS_INVALID_DEVICE_REQUEST (0xc0000010)\n",
        ),
        (
            DeviceError::Driver(0xC000_0001_u32.cast_signed()),
            "error: get status: the driver failed the request: NTSTATUS 0xc0000001\n",
        ),
        (
            DeviceError::Win32 {
                code: 31,
                message: "A device attached to the system is not functioning.".into(),
            },
            "error: get status: Windows error 31: A device attached to the system is not functioning.\n",
        ),
        (
            DeviceError::AccessDenied,
            "error: access to \\\\.\\ProcGuard denied: run procguardctl as Administrator (the device admits \
             only SYSTEM and Administrators)\n",
        ),
    ] {
        let device = Shared(Rc::new(RefCell::new(Failing(error))));
        let (code, out, err) = run_with(&device, &["status"]);
        assert_eq!((code, out.as_str(), err.as_str()), (1, "", expected));
    }
}

#[test]
fn an_unreachable_driver_is_explained_and_windows_only_exits_3() {
    for (error, expected_code, expected) in [
        (
            DeviceError::NotInstalled,
            1,
            "error: procguard is not installed: \\\\.\\ProcGuard does not exist and there is no procguard \
             service (install procguard.inf, then run `sc start procguard`)\n",
        ),
        (
            DeviceError::NotRunning {
                state: "stopped".into(),
            },
            1,
            "error: the procguard driver is not running (service state: stopped): start it with `sc start \
             procguard`\n",
        ),
        (
            DeviceError::AccessDenied,
            1,
            "error: access to \\\\.\\ProcGuard denied: run procguardctl as Administrator (the device admits \
             only SYSTEM and Administrators)\n",
        ),
        (
            DeviceError::Unsupported,
            3,
            "error: this command talks to the driver: Windows only (check, compile and explain work \
             anywhere)\n",
        ),
    ] {
        for args in [&["status"][..], &["events", "--json"], &["policy", "show"]] {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = procguardctl::run(
                std::iter::once("procguardctl").chain(args.iter().copied()),
                &mut out,
                &mut err,
                &mut || Err(error.clone()),
            );
            assert_eq!(code, expected_code, "{args:?} {error:?}");
            assert_eq!(String::from_utf8(err).unwrap(), expected, "{args:?}");
            assert!(out.is_empty());
        }
    }
}

#[test]
fn status_is_readable_and_its_json_has_every_field() {
    let device = fake_with_example();
    let (code, out, err) = run_with(&device, &["status"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "procguard driver 0.1.0 (protocol 2)
  object callbacks        registered (altitude 385201)
  process notify          registered
  policy                  0xba8cd4bc, 4 rules
  policy updates          0 applied, 0 rejected
  tracked processes       87
  audit ring              4096 records
  last error              none
  ask handler             not connected (asked requests get their fallback)
  ask slots               0 in flight of 64, timeout 250 ms
  requests seen           0
  access reduced          0
  audited                 0
  kernel handles passed   0
  self-opens passed       0
  exempted                0
  unclassified lookups    0
  audit records pending   0
  audit records dropped   0
  asked                   0
  ask answered            0
  ask timed out           0
  ask without handler     0
  ask pool full           0
  ask unaskable           0
  ask cancelled           0
  ask late replies        0
"
    );
    {
        let fake = device.0.borrow();
        let mut state = fake.driver.state.borrow_mut();
        state.status.last_error = STATUS_INVALID_PARAMETER;
        state.status.counters.seen = 12;
        state.status.counters.skipped_self = 3;
        state.status.ask = connected_handler();
        state.status.policy_updates = PolicyUpdates {
            applied: 4,
            rejected: 2,
            last_rejected_status: STATUS_INVALID_PARAMETER,
            source: Some(PolicySource::Registry),
        };
    }
    let (code, out, _) = run_with(&device, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "  policy updates          4 applied, 2 rejected (last: STATUS_INVALID_PARAMETER (0xc000000d)); in force from registry\n"
        ),
        "{out}"
    );
    let (code, out, _) = run_with(&device, &["status", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "ProtocolVersion": 2,
            "DriverVersion": "0.1.0",
            "CallbacksRegistered": true,
            "ProcessNotifyRegistered": true,
            "Altitude": "385201",
            "PolicyId": "0xba8cd4bc",
            "RuleCount": 4,
            "TrackedProcesses": 87,
            "LastError": "STATUS_INVALID_PARAMETER (0xc000000d)",
            "AuditCapacity": 4096,
            "Counters": {
                "Seen": 12, "Modified": 0, "Audited": 0, "SkippedKernel": 0, "SkippedSelf": 3,
                "Exempt": 0, "Unclassified": 0, "EventsDropped": 0, "EventsPending": 0
            },
            "Ask": {
                "HandlerConnected": true, "HandlerProcessId": 4242, "TimeoutMs": 300,
                "Slots": 64, "InFlight": 2, "WorkersWaiting": 6,
                "Counters": {
                    "Asked": 11, "Answered": 12, "TimedOut": 13, "NoHandler": 14,
                    "PoolFull": 15, "Unaskable": 16, "Cancelled": 17, "LateReplies": 18
                }
            },
            "PolicyUpdates": {
                "Applied": 4, "Rejected": 2, "LastRejectedStatus": "0xC000000D",
                "Source": "registry"
            }
        })
    );
}

/// A handler with six idle workers, two requests waiting for it, and a
/// distinct value in every counter.
fn connected_handler() -> AskStatus {
    AskStatus {
        handler_pid: 4242,
        timeout_ms: 300,
        slots: 64,
        in_flight: 2,
        workers_waiting: 6,
        counters: AskCounters::from_array([11, 12, 13, 14, 15, 16, 17, 18]),
    }
}

#[test]
fn status_shows_the_connected_handler_and_the_ask_counters() {
    let device = fake_with_example();
    device.0.borrow().driver.state.borrow_mut().status.ask = connected_handler();
    let (code, out, err) = run_with(&device, &["status"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains(
            "  ask handler             connected (pid 4242), 6 idle workers
  ask slots               2 in flight of 64, timeout 300 ms
"
        ),
        "{out}"
    );
    assert!(
        out.ends_with(
            "  asked                   11
  ask answered            12
  ask timed out           13
  ask without handler     14
  ask pool full           15
  ask unaskable           16
  ask cancelled           17
  ask late replies        18
"
        ),
        "{out}"
    );
}

#[test]
fn policy_show_prints_toml_that_parses_back_to_the_active_policy() {
    let device = fake_with_example();
    let (code, out, err) = run_with(&device, &["policy", "show"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.starts_with(
        "# Policy in force: id 0xba8cd4bc, 4 rules, 440 bytes (procguardctl policy show)\n[settings]\n"
    ), "{out}");
    assert_eq!(parse_policy(&out), Ok(example_policy()));

    let empty = Shared(Rc::new(RefCell::new(FakeDevice::default())));
    let (code, out, _) = run_with(&empty, &["policy", "show"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "# No policy in force: the driver runs with no rules.\n"
    );
}

#[test]
fn policy_show_asks_again_when_the_blob_is_larger_than_its_first_buffer() {
    // 200 rules with 400-character paths: a blob above the first 64 KiB buffer.
    let mut source = String::new();
    for index in 0..200 {
        source.push_str(&format!(
            "[[rule]]\nname = \"rule-{index}\"\ntarget = {{ path = ['\\Device\\HarddiskVolume*\\{}\\app{index}.exe'] }}\nstrip = [\"no-kill\"]\n",
            "x".repeat(400)
        ));
    }
    let policy = parse_policy(&source).unwrap();
    let blob = encode(&policy);
    assert!(blob.len() > 64 * 1024, "{}", blob.len());
    let device = Shared(Rc::new(RefCell::new(FakeDevice::with_policy(&blob))));
    let (code, out, err) = run_with(&device, &["policy", "show"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(parse_policy(&out), Ok(policy));
    let fake = device.0.borrow();
    let state = fake.driver.state.borrow();
    let sizes: Vec<usize> = state
        .requests
        .iter()
        .filter(|(code, _, _)| *code == IOCTL_GET_POLICY)
        .map(|(_, _, output)| *output)
        .collect();
    assert_eq!(sizes, [8 + 64 * 1024, 8 + blob.len()]);
}

/// Answers GET_POLICY with a header whose id is not the blob's.
struct WrongPolicyId(FakeDevice);

impl Device for WrongPolicyId {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        let returned = self.0.ioctl(code, input, output)?;
        if code == IOCTL_GET_POLICY {
            output[4] ^= 0xFF;
        }
        Ok(returned)
    }
}

#[test]
fn policy_show_rejects_a_header_that_does_not_match_the_blob() {
    let device = Shared(Rc::new(RefCell::new(WrongPolicyId(
        FakeDevice::with_policy(&encode(&example_policy())),
    ))));
    let (code, out, err) = run_with(&device, &["policy", "show"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "error: get policy: the header says policy id 0xba8cd443, the blob is 0xba8cd4bc\n"
    );
}

fn identity(pid: u32, image_path: &str) -> ProcessIdentity<'_> {
    ProcessIdentity { pid, image_path }
}

/// Four requests: three produce records (enforce, audit, thread duplicate),
/// one matches no rule.
fn simulate_traffic(device: &Shared<FakeDevice>) {
    let fake = device.0.borrow();
    let base = SimulatedRequest {
        target: identity(2000, AGENT),
        requester: identity(1000, TASKMGR),
        duplicate_source_pid: 0,
        requester_thread_id: 1004,
        thread_id: 0,
        object: ObjectKind::Process,
        operation: Operation::Create,
        desired_access: 0x1F_FFFF,
        timestamp: T0,
    };
    // Task Manager asks for everything: rules 0 and 1 strip.
    let rules = example_policy().rules;
    assert_eq!(
        fake.driver.simulate(&base),
        0x1F_FFFF & !(rules[0].strip_process | rules[1].strip_process)
    );
    // Notepad queries the agent: only the audit rule 3 would strip.
    assert_eq!(
        fake.driver.simulate(&SimulatedRequest {
            requester: identity(4444, NOTEPAD),
            requester_thread_id: 4448,
            desired_access: 0x0400,
            timestamp: T0 + 10_000,
            ..base
        }),
        0x0400
    );
    // Task Manager duplicates a handle to an updater thread into itself:
    // audit rule 2 would strip THREAD_TERMINATE.
    assert_eq!(
        fake.driver.simulate(&SimulatedRequest {
            target: identity(3000, UPDATER),
            duplicate_source_pid: 3000,
            thread_id: 3004,
            object: ObjectKind::Thread,
            operation: Operation::Duplicate,
            desired_access: 0x0001,
            timestamp: T0 + 20_000,
            ..base
        }),
        0x0001
    );
    // Notepad opens Task Manager: no rule, no record.
    assert_eq!(
        fake.driver.simulate(&SimulatedRequest {
            target: identity(1000, TASKMGR),
            requester: identity(4444, NOTEPAD),
            timestamp: T0 + 30_000,
            ..base
        }),
        0x1F_FFFF
    );
}

#[test]
fn events_are_drained_in_order_as_json_lines_with_every_field() {
    let device = fake_with_example();
    simulate_traffic(&device);
    {
        // A record naming no rule, and one naming a rule the policy lacks.
        let fake = device.0.borrow();
        for (sequence, rule_id) in [(3, NO_RULE), (4, 77)] {
            fake.driver.push_event(AuditRecord {
                sequence,
                timestamp: T0 + 40_000,
                object: AuditObject::Process,
                duplication: false,
                process_id: 2000,
                thread_id: 0,
                originator_process_id: 5000,
                originator_thread_id: 5004,
                source_process_id: 0,
                target_process_id: 0,
                original_desired_access: 0x0001,
                desired_access: 0,
                result_code: 0,
                rule_id,
                mode: AuditMode::Enforce,
                ask_outcome: None,
                ask_wait_us: 0,
            });
        }
    }
    let (code, out, err) = run_with(&device, &["events", "--json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let expected = [
        serde_json::json!({
            "UtcTime": "2026-03-14 15:09:26.535", "SourceProcessId": 1000, "SourceThreadId": 1004,
            "TargetProcessId": 2000, "ThreadId": 0, "Object": "process",
            "GrantedAccess": "0x1ff494", "OriginalDesiredAccess": "0x1fffff",
            "Rule": "agent-no-tamper", "RuleId": 0, "Mode": "enforce", "AskOutcome": null, "AskWaitMicroseconds": 0, "ResultCode": 0, "Duplication": false,
            "DuplicateSourceProcessId": 0, "DuplicateTargetProcessId": 0, "Sequence": 0
        }),
        serde_json::json!({
            "UtcTime": "2026-03-14 15:09:26.536", "SourceProcessId": 4444, "SourceThreadId": 4448,
            "TargetProcessId": 2000, "ThreadId": 0, "Object": "process",
            "GrantedAccess": "0x400", "OriginalDesiredAccess": "0x400",
            "Rule": "watch-agent-queries", "RuleId": 3, "Mode": "audit", "AskOutcome": null, "AskWaitMicroseconds": 0, "ResultCode": 0, "Duplication": false,
            "DuplicateSourceProcessId": 0, "DuplicateTargetProcessId": 0, "Sequence": 1
        }),
        serde_json::json!({
            "UtcTime": "2026-03-14 15:09:26.537", "SourceProcessId": 1000, "SourceThreadId": 1004,
            "TargetProcessId": 3000, "ThreadId": 3004, "Object": "thread",
            "GrantedAccess": "0x1", "OriginalDesiredAccess": "0x1",
            "Rule": "watch-updater-tamper", "RuleId": 2, "Mode": "audit", "AskOutcome": null, "AskWaitMicroseconds": 0, "ResultCode": 0, "Duplication": true,
            "DuplicateSourceProcessId": 3000, "DuplicateTargetProcessId": 1000, "Sequence": 2
        }),
        serde_json::json!({
            "UtcTime": "2026-03-14 15:09:26.539", "SourceProcessId": 5000, "SourceThreadId": 5004,
            "TargetProcessId": 2000, "ThreadId": 0, "Object": "process",
            "GrantedAccess": "0x0", "OriginalDesiredAccess": "0x1",
            "Rule": null, "RuleId": null, "Mode": "enforce", "AskOutcome": null, "AskWaitMicroseconds": 0, "ResultCode": 0, "Duplication": false,
            "DuplicateSourceProcessId": 0, "DuplicateTargetProcessId": 0, "Sequence": 3
        }),
        serde_json::json!({
            "UtcTime": "2026-03-14 15:09:26.539", "SourceProcessId": 5000, "SourceThreadId": 5004,
            "TargetProcessId": 2000, "ThreadId": 0, "Object": "process",
            "GrantedAccess": "0x0", "OriginalDesiredAccess": "0x1",
            "Rule": "77", "RuleId": 77, "Mode": "enforce", "AskOutcome": null, "AskWaitMicroseconds": 0, "ResultCode": 0, "Duplication": false,
            "DuplicateSourceProcessId": 0, "DuplicateTargetProcessId": 0, "Sequence": 4
        }),
    ];
    assert_eq!(lines, expected);
    assert!(
        out.starts_with("{\"UtcTime\":\"2026-03-14 15:09:26.535\",\"SourceProcessId\":1000,"),
        "Sysmon's field order: {out}"
    );
    assert!(
        device.0.borrow().driver.state.borrow().events.is_empty(),
        "drained"
    );
    // Nothing left: a second run prints nothing.
    let (code, out, _) = run_with(&device, &["events", "--json"]);
    assert_eq!((code, out.as_str()), (0, ""));
}

#[test]
fn events_without_json_are_a_table() {
    let device = fake_with_example();
    simulate_traffic(&device);
    let (code, out, err) = run_with(&device, &["events"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "SEQUENCE  UTC TIME                 MODE     OBJECT   OP    SOURCE PID:TID   TARGET PID  REQUESTED   GRANTED     RULE
0         2026-03-14 15:09:26.535  enforce  process  open  1000:1004        2000        0x1fffff    0x1ff494    agent-no-tamper (#0)
1         2026-03-14 15:09:26.536  audit    process  open  4444:4448        2000        0x400       0x400       watch-agent-queries (#3)
2         2026-03-14 15:09:26.537  audit    thread   dup   1000:1004        3000/3004   0x1         0x1         watch-updater-tamper (#2) (duplicated from 3000 into 1000)
"
    );
    let (code, out, err) = run_with(&device, &["events"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", "no audit records waiting\n")
    );
}

#[test]
fn events_max_takes_no_more_records_than_it_prints() {
    let device = fake_with_example();
    simulate_traffic(&device);
    let (code, out, _) = run_with(&device, &["events", "--json", "--max", "2"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2);
    let fake = device.0.borrow();
    let state = fake.driver.state.borrow();
    assert_eq!(state.events.len(), 1, "the third record stays queued");
    assert_eq!(state.events[0].sequence, 2);
    let reads: Vec<usize> = state
        .requests
        .iter()
        .filter(|(code, _, _)| *code == IOCTL_READ_EVENTS)
        .map(|(_, _, output)| *output)
        .collect();
    assert_eq!(reads, [EventsHeader::SIZE + 2 * 64]);
}

#[test]
fn events_drain_in_several_reads_when_more_are_waiting() {
    let device = fake_with_example();
    {
        let fake = device.0.borrow();
        for sequence in 0..600 {
            fake.driver.push_event(AuditRecord {
                sequence,
                timestamp: T0,
                object: AuditObject::Process,
                duplication: false,
                process_id: 2000,
                thread_id: 0,
                originator_process_id: 1000,
                originator_thread_id: 1004,
                source_process_id: 0,
                target_process_id: 0,
                original_desired_access: 1,
                desired_access: 0,
                result_code: 0,
                rule_id: 0,
                mode: AuditMode::Enforce,
                ask_outcome: None,
                ask_wait_us: 0,
            });
        }
    }
    let (code, out, _) = run_with(&device, &["events", "--json"]);
    assert_eq!(code, 0);
    let sequences: Vec<u64> = out
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["Sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, (0..600).collect::<Vec<_>>());
    let reads = requests_of(&device)
        .into_iter()
        .filter(|code| *code == IOCTL_READ_EVENTS)
        .count();
    assert_eq!(reads, 3, "256 + 256 + 88");
}

/// An enforce record of rule 0 (Task Manager opened the agent).
fn record(sequence: u64) -> AuditRecord {
    AuditRecord {
        sequence,
        timestamp: T0,
        object: AuditObject::Process,
        duplication: false,
        process_id: 2000,
        thread_id: 0,
        originator_process_id: 1000,
        originator_thread_id: 1004,
        source_process_id: 0,
        target_process_id: 0,
        original_desired_access: 1,
        desired_access: 0,
        result_code: 0,
        rule_id: 0,
        mode: AuditMode::Enforce,
        ask_outcome: None,
        ask_wait_us: 0,
    }
}

fn sequences(json_lines: &str) -> Vec<u64> {
    json_lines
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["Sequence"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// A device that fails the test after `left` more requests: a reader that
/// polls or spins instead of waiting runs out quickly (`--interval-ms 1`).
struct Budget {
    device: Shared<FakeDevice>,
    left: usize,
}

impl Device for Budget {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        assert!(self.left > 0, "busy loop: too many requests while waiting");
        self.left -= 1;
        self.device.ioctl(code, input, output)
    }

    fn cancel_on_ctrl_c(&mut self) {
        self.device.cancel_on_ctrl_c();
    }

    fn interrupted(&self) -> bool {
        self.device.interrupted()
    }
}

#[test]
fn events_follow_waits_on_the_driver_and_wakes_only_when_records_arrive() {
    let device = fake_with_example();
    {
        let fake = device.0.borrow();
        fake.driver.push_event(record(0));
        fake.driver.state.borrow_mut().arrivals =
            VecDeque::from([vec![record(1)], vec![record(2), record(3)], vec![record(4)]]);
    }
    let budget = Shared(Rc::new(RefCell::new(Budget {
        device: device.clone(),
        left: 100,
    })));
    let (code, out, err) = run_with(
        &budget,
        &["events", "--follow", "--json", "--interval-ms", "1"],
    );
    assert_eq!(
        (code, err.as_str()),
        (0, ""),
        "Ctrl-C ends --follow normally"
    );
    assert_eq!(sequences(&out), [0, 1, 2, 3, 4]);
    // One wait per arrival and one read per wake: no request is sent while
    // nothing arrives (the last wait is the one Ctrl-C cancelled).
    let wake = [IOCTL_WAIT_EVENTS, IOCTL_GET_STATUS, IOCTL_READ_EVENTS];
    let mut expected = vec![IOCTL_GET_POLICY, IOCTL_READ_EVENTS];
    for _ in 0..3 {
        expected.extend(wake);
    }
    expected.push(IOCTL_WAIT_EVENTS);
    assert_eq!(requests_of(&device), expected);
    let fake = device.0.borrow();
    let state = fake.driver.state.borrow();
    assert!(
        state.cancel_on_ctrl_c,
        "--follow hands Ctrl-C to the device"
    );
    assert!(state.interrupted);
}

#[test]
fn events_follow_with_max_stops_without_waiting_again() {
    let device = fake_with_example();
    device.0.borrow().driver.state.borrow_mut().arrivals =
        VecDeque::from([vec![record(0), record(1)], vec![record(2), record(3)]]);
    let (code, out, err) = run_with(&device, &["events", "--follow", "--json", "--max", "3"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(sequences(&out), [0, 1, 2]);
    assert_eq!(
        requests_of(&device),
        [
            IOCTL_GET_POLICY,
            IOCTL_READ_EVENTS,
            IOCTL_WAIT_EVENTS,
            IOCTL_GET_STATUS,
            IOCTL_READ_EVENTS,
            IOCTL_WAIT_EVENTS,
            IOCTL_GET_STATUS,
            IOCTL_READ_EVENTS,
        ]
    );
    assert_eq!(device.0.borrow().driver.state.borrow().events.len(), 1);
}

#[test]
fn events_without_follow_leave_ctrl_c_alone_and_never_wait() {
    let device = fake_with_example();
    device.0.borrow().driver.push_event(record(0));
    let (code, _, _) = run_with(&device, &["events", "--json"]);
    assert_eq!(code, 0);
    assert!(!requests_of(&device).contains(&IOCTL_WAIT_EVENTS));
    assert!(!device.0.borrow().driver.state.borrow().cancel_on_ctrl_c);
}

#[test]
fn events_follow_polls_a_driver_too_old_to_wait() {
    let device = fake_with_example();
    {
        let fake = device.0.borrow();
        let mut state = fake.driver.state.borrow_mut();
        state.wait_events_supported = false;
        state.arrivals = VecDeque::from([vec![record(0)], vec![record(1)]]);
    }
    let (code, out, err) = run_with(
        &device,
        &["events", "--follow", "--json", "--interval-ms", "1"],
    );
    assert_eq!(
        (code, err.as_str()),
        (
            0,
            "note: the driver does not know IOCTL_WAIT_EVENTS (it is older than procguardctl): \
             polling every 1 ms\n"
        )
    );
    assert_eq!(sequences(&out), [0, 1]);
    // Asked once, then only polls.
    assert_eq!(
        requests_of(&device),
        [
            IOCTL_GET_POLICY,
            IOCTL_READ_EVENTS,
            IOCTL_WAIT_EVENTS,
            IOCTL_GET_STATUS,
            IOCTL_READ_EVENTS,
            IOCTL_GET_STATUS,
            IOCTL_READ_EVENTS,
            IOCTL_GET_STATUS,
            IOCTL_READ_EVENTS,
            IOCTL_GET_STATUS,
            IOCTL_READ_EVENTS,
        ]
    );
}

/// The fake, whose waits end the way `wait` says.
struct WaitsEndingWith {
    device: FakeDevice,
    wait: fn(&mut [u8]) -> Result<usize, DeviceError>,
}

impl Device for WaitsEndingWith {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        if code == IOCTL_WAIT_EVENTS {
            return (self.wait)(output);
        }
        self.device.ioctl(code, input, output)
    }
}

#[test]
fn a_wait_the_driver_cancels_without_ctrl_c_is_an_error() {
    let device = Shared(Rc::new(RefCell::new(WaitsEndingWith {
        device: FakeDevice::with_policy(&encode(&example_policy())),
        wait: |_| Err(DeviceError::Driver(STATUS_CANCELLED)),
    })));
    device.0.borrow().device.driver.push_event(record(0));
    let (code, out, err) = run_with(&device, &["events", "--follow", "--json"]);
    assert_eq!(sequences(&out), [0], "what was read is printed first");
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "error: wait for events: the driver cancelled the wait (is it stopping?)\n"
        )
    );
}

#[test]
fn a_wait_that_ends_with_nothing_waiting_is_rejected_rather_than_spun_on() {
    let device = Shared(Rc::new(RefCell::new(WaitsEndingWith {
        device: FakeDevice::with_policy(&encode(&example_policy())),
        wait: |output| {
            output[..8].fill(0);
            Ok(8)
        },
    })));
    let (code, _, err) = run_with(&device, &["events", "--follow"]);
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "error: wait for events: the driver's response is malformed: the wait ended with no \
             record waiting\n"
        )
    );
}

/// Three asked requests: answered with a result code, timed out, no handler.
fn push_ask_records(fake: &FakeDevice) {
    for (sequence, outcome, wait, result_code, granted) in [
        (0_u64, AskOutcome::Answered, 312, 0x2000_0001, 0x1F_FFFE),
        (1, AskOutcome::TimedOut, 250_046, 0, 0x1F_F494),
        (2, AskOutcome::NoHandler, 0, -1_073_741_790, 0x1F_FFFF),
    ] {
        fake.driver.push_event(AuditRecord {
            mode: AuditMode::Ask,
            original_desired_access: 0x1F_FFFF,
            desired_access: granted,
            ask_outcome: Some(outcome),
            ask_wait_us: wait,
            result_code,
            timestamp: T0 + 10_000 * sequence.cast_signed(),
            ..record(sequence)
        });
    }
}

#[test]
fn events_show_the_ask_outcome_the_wait_and_the_handlers_result_code() {
    let device = fake_with_example();
    push_ask_records(&device.0.borrow());
    let (code, out, err) = run_with(&device, &["events", "--json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let fields = |line: &serde_json::Value| {
        (
            line["Mode"].clone(),
            line["AskOutcome"].clone(),
            line["AskWaitMicroseconds"].clone(),
            line["ResultCode"].clone(),
            line["GrantedAccess"].clone(),
        )
    };
    assert_eq!(
        lines.iter().map(fields).collect::<Vec<_>>(),
        [
            ("ask", "answered", 312, 0x2000_0001, "0x1ffffe"),
            ("ask", "timed-out", 250_046, 0, "0x1ff494"),
            ("ask", "no-handler", 0, -1_073_741_790, "0x1fffff"),
        ]
        .map(|(mode, outcome, wait, result, granted)| {
            (
                serde_json::json!(mode),
                serde_json::json!(outcome),
                serde_json::json!(wait),
                serde_json::json!(result),
                serde_json::json!(granted),
            )
        })
    );
    assert!(
        out.contains("\"Mode\":\"ask\",\"AskOutcome\":\"answered\",\"AskWaitMicroseconds\":312,\"ResultCode\":536870913,"),
        "{out}"
    );

    push_ask_records(&device.0.borrow());
    let (code, out, err) = run_with(&device, &["events"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "SEQUENCE  UTC TIME                 MODE     OBJECT   OP    SOURCE PID:TID   TARGET PID  REQUESTED   GRANTED     RULE
0         2026-03-14 15:09:26.535  ask      process  open  1000:1004        2000        0x1fffff    0x1ffffe    agent-no-tamper (#0) (ask: answered after 312 us, result 0x20000001)
1         2026-03-14 15:09:26.536  ask      process  open  1000:1004        2000        0x1fffff    0x1ff494    agent-no-tamper (#0) (ask: timed-out after 250046 us)
2         2026-03-14 15:09:26.537  ask      process  open  1000:1004        2000        0x1fffff    0x1fffff    agent-no-tamper (#0) (ask: no-handler after 0 us, result 0xc0000022)
"
    );
}

#[test]
fn records_dropped_by_a_full_ring_are_reported() {
    let device = fake_with_example();
    device.0.borrow().driver.state.borrow_mut().capacity = 2;
    simulate_traffic(&device);
    let (code, out, err) = run_with(&device, &["events", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2);
    assert_eq!(
        err,
        "note: the driver has dropped 1 audit record since it started (ring full)\n"
    );
}

/// Claims one record more than its answer holds.
struct Overclaiming(FakeDevice);

impl Device for Overclaiming {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        let returned = self.0.ioctl(code, input, output)?;
        if code == IOCTL_READ_EVENTS {
            let records = u32::from_le_bytes(output[0..4].try_into().unwrap());
            output[0..4].copy_from_slice(&(records + 1).to_le_bytes());
        }
        Ok(returned)
    }
}

#[test]
fn an_events_answer_claiming_more_records_than_it_holds_is_rejected() {
    let device = fake_with_example();
    simulate_traffic(&device);
    let fake = Rc::try_unwrap(device.0).ok().unwrap().into_inner();
    let lying = Shared(Rc::new(RefCell::new(Overclaiming(fake))));
    let (code, out, err) = run_with(&lying, &["events", "--json"]);
    assert_eq!(
        (code, out.as_str()),
        (1, ""),
        "nothing printed from a bad answer"
    );
    assert_eq!(
        err,
        "error: read events: the driver's response is malformed: buffer of 208 bytes, 272 needed\n"
    );
}

/// Returns more bytes than the buffer it was given.
struct Overflowing;

impl Device for Overflowing {
    fn ioctl(&mut self, _: u32, _: &[u8], output: &mut [u8]) -> Result<usize, DeviceError> {
        Ok(output.len() + 1)
    }
}

#[test]
fn an_answer_longer_than_its_buffer_is_rejected() {
    let device = Shared(Rc::new(RefCell::new(Overflowing)));
    let (code, _, err) = run_with(&device, &["status"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: get status: the driver's response is malformed: 321 bytes returned into a buffer of 320\n"
    );
}

#[test]
fn counters_name_each_rule_and_reset_clears_them() {
    let device = fake_with_example();
    simulate_traffic(&device);
    let (code, out, err) = run_with(&device, &["counters", "--reset"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "requests
  requests seen           4
  access reduced          1
  audited                 3
  kernel handles passed   0
  self-opens passed       0
  exempted                0
  unclassified lookups    0
  audit records pending   3
  audit records dropped   0
  asked                   0
  ask answered            0
  ask timed out           0
  ask without handler     0
  ask pool full           0
  ask unaskable           0
  ask cancelled           0
  ask late replies        0
rules of policy 0xba8cd4bc
  RULE  MODE     HITS        STRIPS      NAME
  0     enforce  1           1           agent-no-tamper
  1     enforce  0           0           agent-no-debug
  2     audit    1           0           watch-updater-tamper
  3     audit    1           0           watch-agent-queries
counters reset
"
    );
    assert_eq!(requests_of(&device).last(), Some(&IOCTL_RESET_COUNTERS));
    let fake = device.0.borrow();
    let state = fake.driver.state.borrow();
    assert_eq!(state.rule_counters, [(0, 0); 4]);
    assert_eq!(state.status.counters.seen, 0);
    assert_eq!(state.events.len(), 3, "a reset keeps the queued records");
}

#[test]
fn the_fake_device_refuses_what_the_driver_refuses() {
    let mut device = FakeDevice::with_policy(&encode(&example_policy()));
    let unknown = ctl_code(DEVICE_TYPE, 0x9FF, METHOD_BUFFERED, FILE_READ_ACCESS);
    assert_eq!(
        device.ioctl(unknown, &[], &mut [0; 64]),
        Err(DeviceError::Driver(STATUS_INVALID_DEVICE_REQUEST))
    );
    assert_eq!(
        device.ioctl(IOCTL_GET_STATUS, &[0], &mut [0; 256]),
        Err(DeviceError::Driver(STATUS_INVALID_PARAMETER))
    );
    assert_eq!(
        device.ioctl(IOCTL_GET_STATUS, &[], &mut [0; 255]),
        Err(DeviceError::BufferTooSmall)
    );
    // A blob that is not a valid policy leaves the old one in force.
    let mut input = vec![0u8; 8 + 12];
    input[4..8].copy_from_slice(&12u32.to_le_bytes());
    input[8..].copy_from_slice(b"PGPBgarbage!");
    assert_eq!(
        device.ioctl(IOCTL_SET_POLICY, &input, &mut []),
        Err(DeviceError::Driver(STATUS_INVALID_PARAMETER))
    );
    assert_eq!(device.driver.state.borrow().blob, encode(&example_policy()));
    // A short GET_POLICY buffer gets the header and STATUS_BUFFER_OVERFLOW.
    let mut small = [0u8; 16];
    assert_eq!(
        device.ioctl(IOCTL_GET_POLICY, &[], &mut small),
        Err(DeviceError::MoreData { returned: 8 })
    );
    assert_eq!(u32::from_le_bytes(small[0..4].try_into().unwrap()), 440);
    // The wait takes no input and needs room for its 8-byte answer.
    device.driver.push_event(record(0));
    assert_eq!(
        device.ioctl(IOCTL_WAIT_EVENTS, &[0], &mut [0; 8]),
        Err(DeviceError::Driver(STATUS_INVALID_PARAMETER))
    );
    assert_eq!(
        device.ioctl(IOCTL_WAIT_EVENTS, &[], &mut [0; 7]),
        Err(DeviceError::BufferTooSmall)
    );
    let mut waiting = [0u8; 8];
    assert_eq!(device.ioctl(IOCTL_WAIT_EVENTS, &[], &mut waiting), Ok(8));
    assert_eq!(u64::from_le_bytes(waiting), 1);
}

#[test]
fn metrics_are_prometheus_text_with_the_rules_names_and_modes() {
    let device = fake_with_example();
    {
        let fake = device.0.borrow();
        let mut state = fake.driver.state.borrow_mut();
        state.rule_counters = vec![(9, 8), (7, 6), (5, 4), (3, 2)];
        state.status.counters.seen = 41;
    }
    let (code, out, err) = run_with(&device, &["metrics"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let policy = example_policy();
    assert!(out.contains("procguard_requests_seen_total 41\n"), "{out}");
    for (index, rule) in policy.rules.iter().enumerate() {
        let hits = 9 - 2 * index;
        let line = format!(
            "procguard_rule_hits_total{{policy_id=\"0xba8cd4bc\",rule_id=\"{index}\",rule=\"{}\",mode=\"{}\"}} {hits}\n",
            rule.name,
            procguardctl::metrics::mode_label(rule.mode)
        );
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }
}
