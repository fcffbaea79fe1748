//! Golden file for the Python package's event dicts
//! (`python/tests/golden/events_json.json`): audit records and the JSON line
//! `procguardctl events --json` prints for each. The Python tests check that
//! `AuditEvent.as_dict()` equals every line, so the two stay one format.
//!
//! Fails when the committed file differs from what procguardctl prints now;
//! regenerate with
//! `PROCGUARD_UPDATE_GOLDEN=1 cargo test -p procguardctl --test python_events_golden`.

use std::path::PathBuf;

use procguard_protocol::ask::AskOutcome;
use procguard_protocol::audit_record::NO_RULE;
use procguard_protocol::{AuditMode, AuditObject, AuditRecord, PolicySource};
use procguardctl::events::{json_line, RuleNames};
use serde_json::{json, Value};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn records() -> Vec<AuditRecord> {
    let base = AuditRecord {
        sequence: 1,
        timestamp: 133_497_123_456_789_012,
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
            sequence: 2,
            timestamp: 0,
            object: AuditObject::Thread,
            thread_id: 77,
            duplication: true,
            source_process_id: 800,
            target_process_id: 900,
            mode: AuditMode::Audit,
            rule_id: 1,
            ..base
        },
        AuditRecord {
            sequence: 3,
            rule_id: NO_RULE,
            ..base
        },
        // A rule id the names do not cover: shown as its number.
        AuditRecord {
            sequence: 4,
            rule_id: 9,
            timestamp: -1,
            ..base
        },
    ];
    for (index, outcome) in AskOutcome::ALL.iter().enumerate() {
        let index = u64::try_from(index).expect("six");
        records.push(AuditRecord {
            sequence: 10 + index,
            mode: AuditMode::Ask,
            ask_outcome: Some(*outcome),
            ask_wait_us: u32::try_from(index * 1000).expect("small"),
            result_code: if index == 0 { 0x2000_0001 } else { -5 },
            rule_id: 2,
            ..base
        });
    }
    for (sequence, source, result, by) in [
        (20, PolicySource::Boot, Ok(()), (0, 0)),
        (21, PolicySource::Control, Ok(()), (5150, 5154)),
        (22, PolicySource::Registry, Err(-1_073_741_811), (0, 0)),
    ] {
        records.push(AuditRecord {
            sequence,
            ..AuditRecord::policy_event(base.timestamp, source, result, 0xBA8C_D4BC, 6, by)
        });
    }
    records
}

#[test]
fn python_events_golden_file_is_current() {
    let names = RuleNames(vec![
        "keep-agent-alive".to_owned(),
        "watch \"quoted\" \\ ünïcode".to_owned(),
        "ask-agent".to_owned(),
    ]);
    let lines: Vec<Value> = records()
        .iter()
        .map(|record| {
            json!({
                "hex": hex(&record.to_bytes()),
                "line": json_line(record, &names),
            })
        })
        .collect();
    let value = json!({ "rule_names": names.0, "records": lines });
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../python/tests/golden/events_json.json");
    let mut text = serde_json::to_string_pretty(&value).expect("JSON");
    text.push('\n');
    if std::env::var_os("PROCGUARD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden file");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} differs from what procguardctl prints now: regenerate it with \
         PROCGUARD_UPDATE_GOLDEN=1 cargo test -p procguardctl --test python_events_golden, \
         commit it, and make python/procguard/events.py follow",
        path.display()
    );
}
