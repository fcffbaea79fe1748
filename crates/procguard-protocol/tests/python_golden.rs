//! Golden files for the Python package (`python/tests/golden/`): sample
//! encodings made by this crate's own encoders, the protocol's constants,
//! and the policy engine's access-right names. The Python tests decode and
//! encode against them, so the package cannot drift from the Rust
//! definitions unnoticed.
//!
//! The test fails when a committed file differs from what the Rust code
//! produces now. After a deliberate protocol change, regenerate with
//! `PROCGUARD_UPDATE_GOLDEN=1 cargo test -p procguard-protocol --test python_golden`
//! and commit the files with the change (then make the Python tests pass).

use std::path::PathBuf;

use procguard_policy::rights::{
    MaskNames, RightKind, ALL_RIGHTS, DOCUMENTED_PROCESS_RIGHTS, DOCUMENTED_THREAD_RIGHTS,
    RIGHT_SETS,
};
use procguard_policy::ObjectKind;
use procguard_protocol::ask::{
    AskCounters, AskObject, AskOutcome, AskReply, AskRequest, AskStatus, ConnectRequest,
    ConnectResponse, EventsWaiting, ImageName, ASK_PROTOCOL_VERSION, IMAGE_NAME_UNITS,
    IOCTL_ASK_CONNECT, IOCTL_ASK_DISCONNECT, IOCTL_ASK_GET_REQUEST, IOCTL_ASK_REPLY,
    IOCTL_WAIT_EVENTS, STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE, STATUS_NOT_FOUND,
    STATUS_SHARING_VIOLATION,
};
use procguard_protocol::audit_record::{MAX_ASK_WAIT_US, NO_RULE};
use procguard_protocol::dispatch::{
    STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};
use procguard_protocol::ioctl::{
    Counters, EventsHeader, PolicyHeader, PolicyUpdates, RuleCountersResponse, SetPolicyRequest,
    Status, IOCTL_GET_POLICY, IOCTL_GET_RULE_COUNTERS, IOCTL_GET_STATUS, IOCTL_READ_EVENTS,
    IOCTL_RESET_COUNTERS, IOCTL_SET_POLICY, MAX_POLICY_BYTES, PROTOCOL_VERSION, USER_MODE_PATH,
};
use procguard_protocol::{AuditMode, AuditObject, AuditRecord, PolicySource, AUDIT_RECORD_BYTES};
use serde_json::{json, Value};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/tests/golden")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn units(text: &str) -> Vec<u16> {
    text.encode_utf16().collect()
}

/// Compares `value` with the committed file, or rewrites it when
/// `PROCGUARD_UPDATE_GOLDEN` is set.
fn check_golden(name: &str, value: &Value) {
    let path = golden_dir().join(name);
    let mut text = serde_json::to_string_pretty(value).expect("JSON");
    text.push('\n');
    if std::env::var_os("PROCGUARD_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("golden dir");
        std::fs::write(&path, &text).expect("write golden file");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} differs from what the Rust protocol produces now: regenerate it with \
         PROCGUARD_UPDATE_GOLDEN=1 cargo test -p procguard-protocol --test python_golden, \
         commit it, and make the Python package follow (python/tests)",
        path.display()
    );
}

fn image_json(name: &ImageName) -> Value {
    json!(String::from_utf16(name.as_units()).expect("sample names are valid UTF-16"))
}

fn request_json(request: &AskRequest) -> Value {
    json!({
        "id": request.id,
        "generation": request.generation,
        "timestamp": request.timestamp,
        "object": match request.object { AskObject::Process => "process", AskObject::Thread => "thread" },
        "duplication": request.duplication,
        "rule_id": request.rule_id,
        "process_id": request.process_id,
        "thread_id": request.thread_id,
        "originator_process_id": request.originator_process_id,
        "originator_thread_id": request.originator_thread_id,
        "source_process_id": request.source_process_id,
        "target_process_id": request.target_process_id,
        "original_desired_access": request.original_desired_access,
        "desired_access": request.desired_access,
        "ask_rights": request.ask_rights,
        "fallback_access": request.fallback_access,
        "timeout_ms": request.timeout_ms,
        "requester_pid": request.requester_pid,
        "requester_create_time": request.requester_create_time,
        "target_create_time": request.target_create_time,
        "requester_image": image_json(&request.requester_image),
        "requester_image_truncated": request.requester_image.truncated,
        "target_image": image_json(&request.target_image),
        "target_image_truncated": request.target_image.truncated,
        "hex": hex(&request.to_bytes()),
    })
}

fn sample_requests() -> Vec<AskRequest> {
    let process_create = AskRequest {
        id: 0,
        generation: 1,
        timestamp: 133_497_000_000_000_000,
        object: AskObject::Process,
        duplication: false,
        rule_id: 1,
        process_id: 4242,
        thread_id: 0,
        originator_process_id: 5150,
        originator_thread_id: 5154,
        source_process_id: 0,
        target_process_id: 0,
        original_desired_access: 0x1F_FFFF,
        desired_access: 0x1F_F7FF,
        ask_rights: 0x0001,
        fallback_access: 0x1F_F7FE,
        timeout_ms: 250,
        requester_pid: 5150,
        requester_create_time: 133_496_999_000_000_000,
        target_create_time: 133_496_000_000_000_000,
        requester_image: ImageName::from_units(&units("taskmgr.exe")),
        target_image: ImageName::from_units(&units("contoso-agent.exe")),
    };
    let thread_duplicate = AskRequest {
        id: 63,
        generation: 0xFFFF_FFFF,
        timestamp: -1,
        object: AskObject::Thread,
        duplication: true,
        rule_id: 62,
        process_id: 4242,
        thread_id: 4246,
        originator_process_id: 700,
        originator_thread_id: 704,
        source_process_id: 800,
        target_process_id: 900,
        original_desired_access: 0x0010_0012,
        desired_access: 0x0010_0012,
        ask_rights: 0x0000_0012,
        fallback_access: 0x0010_0012,
        timeout_ms: 5000,
        requester_pid: 900,
        requester_create_time: 0,
        target_create_time: i64::MAX,
        // Non-ASCII, a surrogate pair, and a name cut at 64 units.
        requester_image: ImageName::from_units(&units("Überwachung-\u{1F600}.exe")),
        target_image: ImageName::from_units(&[u16::from(b'x'); IMAGE_NAME_UNITS + 6]),
    };
    let empty_names = AskRequest {
        id: 7,
        generation: 2,
        timestamp: 0,
        requester_image: ImageName::EMPTY,
        target_image: ImageName::EMPTY,
        ..process_create
    };
    vec![process_create, thread_duplicate, empty_names]
}

fn protocol_golden() -> Value {
    let requests = sample_requests();
    let good = requests[0].to_bytes();
    let malformed = |what: &str, bytes: Vec<u8>| {
        assert!(AskRequest::parse(&bytes).is_err(), "{what} must be refused");
        json!({ "what": what, "hex": hex(&bytes) })
    };
    let mut bad_object = good.to_vec();
    bad_object[16] = 3;
    let mut bad_flags = good.to_vec();
    bad_flags[20] = 8;
    let mut reserved = good.to_vec();
    reserved[76] = 1;
    let mut reserved_tail = good.to_vec();
    reserved_tail[367] = 1;
    let mut long_name = good.to_vec();
    long_name[96] = 65;
    let malformed_requests = vec![
        malformed("one byte short", good[..AskRequest::SIZE - 1].to_vec()),
        malformed("one byte long", [&good[..], &[0]].concat()),
        malformed("object code 3", bad_object),
        malformed("unknown flag bit 3", bad_flags),
        malformed("reserved word at 76", reserved),
        malformed("reserved tail", reserved_tail),
        malformed("requester name of 65 units", long_name),
    ];

    let replies: Vec<Value> = [
        AskReply {
            id: 0,
            generation: 1,
            desired_access: 0x1F_F7FE,
            result_code: 0,
        },
        AskReply {
            id: 63,
            generation: 0xFFFF_FFFF,
            desired_access: 0x0010_0002,
            result_code: 0x2000_0001,
        },
        AskReply {
            id: 5,
            generation: 9,
            desired_access: 0xFFFF_FFFF,
            result_code: -1_073_741_790,
        },
    ]
    .iter()
    .map(|reply| {
        json!({
            "id": reply.id, "generation": reply.generation,
            "desired_access": reply.desired_access, "result_code": reply.result_code,
            "hex": hex(&reply.to_bytes()),
        })
    })
    .collect();

    let connect_request = ConnectRequest {
        version: ASK_PROTOCOL_VERSION,
        flags: 0,
    };
    let connect_response = ConnectResponse {
        version: ASK_PROTOCOL_VERSION,
        slots: 64,
        timeout_ms: 250,
        handler_pid: 3130,
    };

    let mut altitude = [0u16; 40];
    let altitude_text = units("385201.5");
    altitude[..altitude_text.len()].copy_from_slice(&altitude_text);
    let status = Status {
        protocol_version: PROTOCOL_VERSION,
        driver_version: 0x0001_0203,
        callbacks_registered: true,
        notify_registered: false,
        policy_id: 0xDEAD_BEEF,
        rule_count: 4,
        tracked_processes: 123,
        last_error: -1_073_741_790,
        audit_capacity: 4096,
        counters: Counters {
            seen: 1,
            modified: 2,
            audited: 3,
            skipped_kernel: 4,
            skipped_self: 5,
            exempt: 6,
            unclassified: 7,
            events_dropped: 8,
            events_pending: 9,
        },
        altitude,
        altitude_len: u16::try_from(altitude_text.len()).expect("short"),
        ask: AskStatus {
            handler_pid: 3130,
            timeout_ms: 250,
            slots: 64,
            in_flight: 3,
            workers_waiting: 8,
            counters: AskCounters::from_array([100, 90, 4, 3, 2, 1, 0, 5]),
        },
        policy_updates: PolicyUpdates {
            applied: 3,
            rejected: 1,
            last_rejected_status: -1_073_741_811,
            source: Some(PolicySource::Registry),
        },
    };
    let status_json = |status: &Status| {
        let c = &status.counters;
        let a = &status.ask;
        let k = &a.counters;
        json!({
            "protocol_version": status.protocol_version,
            "driver_version": status.driver_version,
            "callbacks_registered": status.callbacks_registered,
            "notify_registered": status.notify_registered,
            "policy_id": status.policy_id,
            "rule_count": status.rule_count,
            "tracked_processes": status.tracked_processes,
            "last_error": status.last_error,
            "audit_capacity": status.audit_capacity,
            "altitude": String::from_utf16(&status.altitude[..usize::from(status.altitude_len)]).expect("ascii"),
            "counters": {
                "seen": c.seen, "modified": c.modified, "audited": c.audited,
                "skipped_kernel": c.skipped_kernel, "skipped_self": c.skipped_self,
                "exempt": c.exempt, "unclassified": c.unclassified,
                "events_dropped": c.events_dropped, "events_pending": c.events_pending,
            },
            "ask": {
                "handler_pid": a.handler_pid, "timeout_ms": a.timeout_ms, "slots": a.slots,
                "in_flight": a.in_flight, "workers_waiting": a.workers_waiting,
                "counters": {
                    "asked": k.asked, "answered": k.answered, "timed_out": k.timed_out,
                    "no_handler": k.no_handler, "pool_full": k.pool_full,
                    "unaskable": k.unaskable, "cancelled": k.cancelled,
                    "late_replies": k.late_replies,
                },
            },
            "policy_updates": {
                "applied": status.policy_updates.applied,
                "rejected": status.policy_updates.rejected,
                "last_rejected_status": status.policy_updates.last_rejected_status,
                "source": status.policy_updates.source.map(PolicySource::name),
            },
            "hex": hex(&status.to_bytes()),
        })
    };

    let records = sample_records();
    let record_values: Vec<Value> = records.iter().map(record_json).collect();
    let batch = EventsHeader {
        records: 2,
        remaining: 5,
        dropped: 11,
    };
    let mut events_response = batch.to_bytes().to_vec();
    events_response.extend_from_slice(&records[0].to_bytes());
    events_response.extend_from_slice(&records[5].to_bytes());
    assert!(EventsHeader::parse(&events_response).is_ok());

    let mut rule_counters = Vec::new();
    rule_counters.extend_from_slice(&3u32.to_le_bytes());
    rule_counters.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    let rule_values = [(10u64, 1u64), (0, 0), (u64::MAX, 7)];
    for (hits, strips) in rule_values {
        rule_counters.extend_from_slice(&hits.to_le_bytes());
        rule_counters.extend_from_slice(&strips.to_le_bytes());
    }
    let mut parsed_rules = Vec::new();
    let policy_id = RuleCountersResponse::parse(&rule_counters, |hits, strips| {
        parsed_rules.push(json!([hits, strips]));
    })
    .expect("valid counters");

    let blob = [0x50u8, 0x47, 0x50, 0x42, 9, 8, 7];
    let mut set_policy = vec![0u8; SetPolicyRequest::HEADER + blob.len()];
    let length = SetPolicyRequest {
        flags: SetPolicyRequest::PERSIST,
        blob: &blob,
    }
    .write(&mut set_policy)
    .expect("fits");
    set_policy.truncate(length);

    json!({
        "constants": {
            "USER_MODE_PATH": USER_MODE_PATH,
            "PROTOCOL_VERSION": PROTOCOL_VERSION,
            "ASK_PROTOCOL_VERSION": ASK_PROTOCOL_VERSION,
            "MAX_POLICY_BYTES": MAX_POLICY_BYTES,
            "AUDIT_RECORD_BYTES": AUDIT_RECORD_BYTES,
            "NO_RULE": NO_RULE,
            "MAX_ASK_WAIT_US": MAX_ASK_WAIT_US,
            "IMAGE_NAME_UNITS": IMAGE_NAME_UNITS,
            "ASK_REQUEST_SIZE": AskRequest::SIZE,
            "ASK_REPLY_SIZE": AskReply::SIZE,
            "CONNECT_REQUEST_SIZE": ConnectRequest::SIZE,
            "CONNECT_RESPONSE_SIZE": ConnectResponse::SIZE,
            "STATUS_SIZE": Status::SIZE,
            "EVENTS_HEADER_SIZE": EventsHeader::SIZE,
            "EVENTS_WAITING_SIZE": EventsWaiting::SIZE,
            "POLICY_HEADER_SIZE": PolicyHeader::SIZE,
            "SET_POLICY_HEADER_SIZE": SetPolicyRequest::HEADER,
            "SET_POLICY_PERSIST": SetPolicyRequest::PERSIST,
            "RULE_COUNTERS_HEADER": RuleCountersResponse::HEADER,
            "RULE_COUNTERS_PER_RULE": RuleCountersResponse::PER_RULE,
        },
        "ioctls": {
            "IOCTL_GET_STATUS": IOCTL_GET_STATUS,
            "IOCTL_SET_POLICY": IOCTL_SET_POLICY,
            "IOCTL_GET_POLICY": IOCTL_GET_POLICY,
            "IOCTL_READ_EVENTS": IOCTL_READ_EVENTS,
            "IOCTL_RESET_COUNTERS": IOCTL_RESET_COUNTERS,
            "IOCTL_GET_RULE_COUNTERS": IOCTL_GET_RULE_COUNTERS,
            "IOCTL_ASK_CONNECT": IOCTL_ASK_CONNECT,
            "IOCTL_ASK_GET_REQUEST": IOCTL_ASK_GET_REQUEST,
            "IOCTL_ASK_REPLY": IOCTL_ASK_REPLY,
            "IOCTL_ASK_DISCONNECT": IOCTL_ASK_DISCONNECT,
            "IOCTL_WAIT_EVENTS": IOCTL_WAIT_EVENTS,
        },
        "statuses": {
            "STATUS_SUCCESS": STATUS_SUCCESS,
            "STATUS_BUFFER_OVERFLOW": STATUS_BUFFER_OVERFLOW,
            "STATUS_INVALID_PARAMETER": STATUS_INVALID_PARAMETER,
            "STATUS_INVALID_DEVICE_REQUEST": STATUS_INVALID_DEVICE_REQUEST,
            "STATUS_BUFFER_TOO_SMALL": STATUS_BUFFER_TOO_SMALL,
            "STATUS_SHARING_VIOLATION": STATUS_SHARING_VIOLATION,
            "STATUS_INVALID_DEVICE_STATE": STATUS_INVALID_DEVICE_STATE,
            "STATUS_NOT_FOUND": STATUS_NOT_FOUND,
            "STATUS_CANCELLED": STATUS_CANCELLED,
        },
        "ask_outcomes": AskOutcome::ALL.iter().map(|outcome| json!({
            "code": outcome.code(), "name": outcome.name(),
        })).collect::<Vec<_>>(),
        "ask_requests": requests.iter().map(request_json).collect::<Vec<_>>(),
        "malformed_ask_requests": malformed_requests,
        "ask_replies": replies,
        "connect_request": {
            "version": connect_request.version, "flags": connect_request.flags,
            "hex": hex(&connect_request.to_bytes()),
        },
        "connect_response": {
            "version": connect_response.version, "slots": connect_response.slots,
            "timeout_ms": connect_response.timeout_ms, "handler_pid": connect_response.handler_pid,
            "hex": hex(&connect_response.to_bytes()),
        },
        "statuses_encoded": [status_json(&status), status_json(&Status::default())],
        "audit_records": record_values,
        "events_response": {
            "records": batch.records, "remaining": batch.remaining, "dropped": batch.dropped,
            "sequences": [records[0].sequence, records[5].sequence],
            "hex": hex(&events_response),
        },
        "events_waiting": {
            "pending": 17, "hex": hex(&EventsWaiting { pending: 17 }.to_bytes()),
        },
        "rule_counters": {
            "policy_id": policy_id, "rules": parsed_rules, "hex": hex(&rule_counters),
        },
        "set_policy": {
            "flags": SetPolicyRequest::PERSIST, "blob": hex(&blob), "hex": hex(&set_policy),
        },
        "policy_header": {
            "blob_len": 300, "policy_id": 0x1234_5678,
            "hex": hex(&PolicyHeader { blob_len: 300, policy_id: 0x1234_5678 }.to_bytes()),
        },
    })
}

fn sample_records() -> Vec<AuditRecord> {
    let base = AuditRecord {
        sequence: 41,
        timestamp: 133_497_000_000_000_000,
        object: AuditObject::Process,
        duplication: false,
        process_id: 4242,
        thread_id: 0,
        originator_process_id: 5150,
        originator_thread_id: 5154,
        source_process_id: 0,
        target_process_id: 0,
        original_desired_access: 0x1F_FFFF,
        desired_access: 0x1F_FFFE,
        result_code: 0,
        rule_id: 0,
        mode: AuditMode::Enforce,
        ask_outcome: None,
        ask_wait_us: 0,
    };
    let mut records = vec![
        base,
        AuditRecord {
            sequence: 42,
            mode: AuditMode::Audit,
            object: AuditObject::Thread,
            thread_id: 4246,
            duplication: true,
            source_process_id: 800,
            target_process_id: 900,
            desired_access: 0x1F_FFFF,
            rule_id: NO_RULE,
            ..base
        },
    ];
    for (index, outcome) in AskOutcome::ALL.iter().enumerate() {
        let index = u32::try_from(index).expect("six");
        records.push(AuditRecord {
            sequence: 43 + u64::from(index),
            mode: AuditMode::Ask,
            ask_outcome: Some(*outcome),
            rule_id: 2,
            ask_wait_us: if *outcome == AskOutcome::TimedOut {
                u32::MAX
            } else {
                137 * index
            },
            result_code: if *outcome == AskOutcome::Answered {
                0x2000_0001
            } else {
                0
            },
            ..base
        });
    }
    records.push(AuditRecord {
        sequence: 49,
        ..AuditRecord::policy_event(
            base.timestamp,
            PolicySource::Registry,
            Ok(()),
            0xBA8C_D4BC,
            6,
            (0, 0),
        )
    });
    records.push(AuditRecord {
        sequence: 50,
        ..AuditRecord::policy_event(
            base.timestamp,
            PolicySource::Control,
            Err(-1_073_741_811),
            0xBA8C_D4BC,
            6,
            (5150, 5154),
        )
    });
    records
}

fn record_json(record: &AuditRecord) -> Value {
    json!({
        "sequence": record.sequence,
        "timestamp": record.timestamp,
        "object": record.object.name(),
        "duplication": record.duplication,
        "process_id": record.process_id,
        "thread_id": record.thread_id,
        "originator_process_id": record.originator_process_id,
        "originator_thread_id": record.originator_thread_id,
        "source_process_id": record.source_process_id,
        "target_process_id": record.target_process_id,
        "original_desired_access": record.original_desired_access,
        "desired_access": record.desired_access,
        "result_code": record.result_code,
        "rule_id": record.rule_id,
        "mode": record.mode.name(),
        "ask_outcome": record.ask_outcome.map(AskOutcome::name),
        "ask_wait_us": AuditRecord::from_bytes(&record.to_bytes()).expect("valid").ask_wait_us,
        "hex": hex(&record.to_bytes()),
    })
}

const SAMPLE_POLICY: &str = r#"
[settings]
exempt_self = true

[[rule]]
name = "keep-agent-alive"
target = { name = ["contoso-agent.exe"] }
requester = "any"
objects = "process"
operations = "both"
strip = ["PROCESS_TERMINATE"]
mode = "enforce"

[[rule]]
name = "watch-ünïcode"
target = { path = ['\Device\HarddiskVolume*\Tools\**'] }
requester = { except = { name = ["updater.exe"] } }
objects = "both"
operations = "create"
strip = ["no-inject"]
mode = "audit"
"#;

fn rights_golden() -> Value {
    let kind = |kind: RightKind| match kind {
        RightKind::Process => "process",
        RightKind::Thread => "thread",
        RightKind::Standard => "standard",
    };
    let masks = [
        (ObjectKind::Process, 0u32),
        (ObjectKind::Process, 0x1F_FFFF),
        (ObjectKind::Process, 0x0801),
        (ObjectKind::Thread, 0x0012),
        (ObjectKind::Thread, 0x0110_8000),
        (ObjectKind::Process, 0x8000_4000),
    ];
    let policy = procguard_policy::toml::parse_policy(SAMPLE_POLICY).expect("sample policy");
    let blob = procguard_policy::encode(&policy);
    json!({
        "rights": ALL_RIGHTS.iter().map(|right| json!({
            "name": right.name, "kind": kind(right.kind), "mask": right.mask,
        })).collect::<Vec<_>>(),
        "sets": RIGHT_SETS.iter().map(|set| json!({
            "name": set.name, "process": set.process, "thread": set.thread,
        })).collect::<Vec<_>>(),
        "documented_process": DOCUMENTED_PROCESS_RIGHTS,
        "documented_thread": DOCUMENTED_THREAD_RIGHTS,
        "mask_names": masks.iter().map(|(object, mask)| json!({
            "object": match object { ObjectKind::Process => "process", ObjectKind::Thread => "thread" },
            "mask": mask,
            "text": MaskNames(*object, *mask).to_string(),
        })).collect::<Vec<_>>(),
        "policy_blob": {
            "hex": hex(&blob),
            "policy_id": procguard_policy::policy_id(&blob),
            "rule_names": policy.rules.iter().map(|rule| rule.name.to_string()).collect::<Vec<_>>(),
        },
    })
}

#[test]
fn python_protocol_golden_file_is_current() {
    check_golden("protocol.json", &protocol_golden());
}

#[test]
fn python_rights_golden_file_is_current() {
    check_golden("rights.json", &rights_golden());
}
