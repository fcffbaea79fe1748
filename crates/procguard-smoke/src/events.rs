//! The audit records `procguardctl events --json` prints (one JSON object per
//! line, Sysmon's ProcessAccess field names), and the check that every
//! stripped open left one.

use procguard_policy::ObjectKind;
use serde_json::Value;

use crate::probe::parse_number;
use crate::report::Row;
use crate::rights::{self, implied_rights, strip_mask};

/// One audit record, the fields the smoke test looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// `Sequence`.
    pub sequence: u64,
    /// `SourceProcessId`: the process that asked.
    pub source_pid: u32,
    /// `TargetProcessId`: the process the handle is for (a thread's process).
    pub target_pid: u32,
    /// `ThreadId`: the thread of a thread handle, else 0.
    pub thread_id: u32,
    /// `Object`.
    pub object: ObjectKind,
    /// `OriginalDesiredAccess`.
    pub original: u32,
    /// `GrantedAccess`: what the driver left.
    pub granted: u32,
    /// `Rule`: the rule's name (`None` for `null`).
    pub rule: Option<String>,
    /// `Mode`: `enforce` or `audit`.
    pub mode: String,
    /// `Duplication`.
    pub duplication: bool,
}

fn field<'v>(object: &'v Value, name: &str) -> Result<&'v Value, String> {
    object.get(name).ok_or_else(|| format!("no {name}"))
}

fn u32_field(object: &Value, name: &str) -> Result<u32, String> {
    field(object, name)?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{name} is not a 32-bit number"))
}

fn mask_field(object: &Value, name: &str) -> Result<u32, String> {
    field(object, name)?
        .as_str()
        .filter(|text| text.starts_with("0x"))
        .and_then(parse_number)
        .ok_or_else(|| format!("{name} is not a \"0x...\" mask"))
}

fn str_field<'v>(object: &'v Value, name: &str) -> Result<&'v str, String> {
    field(object, name)?
        .as_str()
        .ok_or_else(|| format!("{name} is not a string"))
}

/// Parses one line of `procguardctl events --json`.
///
/// # Errors
/// Not a JSON object, or a field missing or of the wrong type.
pub fn parse_event(line: &str) -> Result<AuditEvent, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a JSON object".to_owned());
    }
    let object = match str_field(&value, "Object")? {
        "process" => ObjectKind::Process,
        "thread" => ObjectKind::Thread,
        other => return Err(format!("unknown Object {other:?}")),
    };
    let rule = match field(&value, "Rule")? {
        Value::Null => None,
        Value::String(name) => Some(name.clone()),
        _ => return Err("Rule is neither a string nor null".to_owned()),
    };
    Ok(AuditEvent {
        sequence: field(&value, "Sequence")?
            .as_u64()
            .ok_or("Sequence is not a number")?,
        source_pid: u32_field(&value, "SourceProcessId")?,
        target_pid: u32_field(&value, "TargetProcessId")?,
        thread_id: u32_field(&value, "ThreadId")?,
        object,
        original: mask_field(&value, "OriginalDesiredAccess")?,
        granted: mask_field(&value, "GrantedAccess")?,
        rule,
        mode: str_field(&value, "Mode")?.to_owned(),
        duplication: field(&value, "Duplication")?
            .as_bool()
            .ok_or("Duplication is not a boolean")?,
    })
}

/// Parses every line; returns the records and the problems (`line N: ...`)
/// of the lines that are not records. Blank lines are skipped.
#[must_use]
pub fn parse_events(text: &str) -> (Vec<AuditEvent>, Vec<String>) {
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_event(line) {
            Ok(event) => events.push(event),
            Err(problem) => problems.push(format!("line {}: {problem}", index + 1)),
        }
    }
    (events, problems)
}

/// A stripped open that must have left an audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRecord {
    /// How the report names it (`process PROCESS_TERMINATE`).
    pub label: String,
    /// Process or thread handle.
    pub object: ObjectKind,
    /// The target's PID.
    pub target_pid: u32,
    /// For a thread handle, the target's thread; else 0.
    pub thread_id: u32,
    /// The smoke test's PID.
    pub source_pid: u32,
    /// The access asked for.
    pub requested: u32,
}

impl ExpectedRecord {
    /// Whether `event` is this open's record: same processes, thread and
    /// object, a new handle, enforced by the smoke rule, asked for the
    /// requested access (plus only rights Windows implies along with it),
    /// granted the request minus the policy's strip mask.
    #[must_use]
    pub fn matches(&self, event: &AuditEvent, rule_name: &str) -> bool {
        self.is_same_open(event)
            && event.mode == "enforce"
            && event.rule.as_deref() == Some(rule_name)
            && event.granted == event.original & !strip_mask(self.object)
    }

    /// Same processes, thread, object and request, whatever the outcome.
    fn is_same_open(&self, event: &AuditEvent) -> bool {
        event.object == self.object
            && event.source_pid == self.source_pid
            && event.target_pid == self.target_pid
            && event.thread_id == self.thread_id
            && !event.duplication
            && event.original & self.requested == self.requested
            && event.original & !self.requested & !implied_rights(self.object) == 0
    }

    fn expected_text(&self) -> String {
        format!(
            "{:#x} -> {:#x}",
            self.requested,
            self.requested & !strip_mask(self.object)
        )
    }
}

fn describe(event: &AuditEvent) -> String {
    format!(
        "#{}: {:#x} -> {:#x}, {} by {}",
        event.sequence,
        event.original,
        event.granted,
        event.mode,
        event.rule.as_deref().unwrap_or("no rule")
    )
}

/// One row per expected record: PASS when a record [matches](ExpectedRecord::matches)
/// it. A failing row shows the nearest record (same open, other outcome) if any.
#[must_use]
pub fn check_records(
    events: &[AuditEvent],
    expected: &[ExpectedRecord],
    rule_name: &str,
) -> Vec<Row> {
    expected
        .iter()
        .map(|want| {
            let check = format!("audit record: {}", want.label);
            let found = events.iter().find(|e| want.matches(e, rule_name));
            let (observed, pass) = match found {
                Some(event) => (format!("record #{}", event.sequence), true),
                None => match events.iter().find(|e| want.is_same_open(e)) {
                    Some(near) => (format!("only {}", describe(near)), false),
                    None => ("missing".to_owned(), false),
                },
            };
            Row::new(check, want.expected_text(), observed, pass)
        })
        .collect()
}

/// A row that passes when no record says `source_pid` asked for a handle to
/// `target_pid` with one of the rights the smoke policy keeps only (for the
/// exempt probe: any right; `kept_only` false).
#[must_use]
pub fn check_no_records(
    events: &[AuditEvent],
    check: &str,
    source_pid: u32,
    target_pid: u32,
    kept_only: bool,
) -> Row {
    let unexpected: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.source_pid == source_pid && e.target_pid == target_pid)
        .filter(|e| !kept_only || e.original & strip_mask(e.object) == 0)
        .collect();
    let observed = match unexpected.first() {
        None => "none".to_owned(),
        Some(first) => format!(
            "{} (first {} {})",
            unexpected.len(),
            rights::object_word(first.object),
            describe(first)
        ),
    };
    Row::new(check, "none", observed, unexpected.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RULE_NAME;
    use crate::rights::{PROCESS_ALL_ACCESS, RIGHTS};

    const SMOKE: u32 = 5000;
    const TARGET: u32 = 7000;
    const TID: u32 = 7004;

    fn line(object: &str, source: u32, thread: u32, original: u32, granted: u32) -> String {
        format!(
            r#"{{"UtcTime":"2026-03-14 15:09:26.535","SourceProcessId":{source},"SourceThreadId":5004,"TargetProcessId":{TARGET},"ThreadId":{thread},"Object":"{object}","GrantedAccess":"{granted:#x}","OriginalDesiredAccess":"{original:#x}","Rule":"procguard-smoke","RuleId":0,"Mode":"enforce","Duplication":false,"DuplicateSourceProcessId":0,"DuplicateTargetProcessId":0,"Sequence":{original}}}"#
        )
    }

    fn expected() -> Vec<ExpectedRecord> {
        let mut records: Vec<ExpectedRecord> = RIGHTS
            .iter()
            .filter(|r| r.stripped)
            .map(|r| ExpectedRecord {
                label: format!("{} {}", rights::object_word(r.object), r.name),
                object: r.object,
                target_pid: TARGET,
                thread_id: if r.object == ObjectKind::Thread {
                    TID
                } else {
                    0
                },
                source_pid: SMOKE,
                requested: r.mask,
            })
            .collect();
        records.push(ExpectedRecord {
            label: "process PROCESS_ALL_ACCESS".to_owned(),
            object: ObjectKind::Process,
            target_pid: TARGET,
            thread_id: 0,
            source_pid: SMOKE,
            requested: PROCESS_ALL_ACCESS,
        });
        records
    }

    /// The records a protecting driver writes for `expected()`.
    fn good_lines() -> Vec<String> {
        expected()
            .iter()
            .map(|e| {
                let object = rights::object_word(e.object);
                line(
                    object,
                    SMOKE,
                    e.thread_id,
                    e.requested,
                    e.requested & !strip_mask(e.object),
                )
            })
            .collect()
    }

    #[test]
    fn a_record_for_every_stripped_open_passes() {
        let (events, problems) = parse_events(&good_lines().join("\n"));
        assert!(problems.is_empty(), "{problems:?}");
        let rows = check_records(&events, &expected(), RULE_NAME);
        assert!(rows.iter().all(|r| r.pass), "{rows:#?}");
        assert_eq!(rows[0].check, "audit record: process PROCESS_TERMINATE");
        assert_eq!(rows[0].expected, "0x1 -> 0x0");
        assert_eq!(rows[0].observed, "record #1");
        assert_eq!(rows.last().unwrap().expected, "0x1fffff -> 0x1ff594");
    }

    #[test]
    fn a_missing_record_fails() {
        let mut lines = good_lines();
        lines.remove(0);
        let (events, _) = parse_events(&lines.join("\n"));
        let rows = check_records(&events, &expected(), RULE_NAME);
        assert!(!rows[0].pass);
        assert_eq!(rows[0].observed, "missing");
        assert!(rows[1..].iter().all(|r| r.pass));
    }

    #[test]
    fn a_record_that_kept_the_right_or_names_another_rule_fails() {
        let kept = line("process", SMOKE, 0, 0x1, 0x1);
        let audit = line("process", SMOKE, 0, 0x800, 0x800).replace("enforce", "audit");
        let other_rule =
            line("process", SMOKE, 0, 0x2, 0).replace("\"procguard-smoke\"", "\"other\"");
        let (events, _) = parse_events(&[kept, audit, other_rule].join("\n"));
        let rows = check_records(&events, &expected()[..3], RULE_NAME);
        assert_eq!(
            rows[0].observed,
            "only #1: 0x1 -> 0x1, enforce by procguard-smoke"
        );
        assert_eq!(
            rows[1].observed,
            "only #2048: 0x800 -> 0x800, audit by procguard-smoke"
        );
        assert_eq!(rows[2].observed, "only #2: 0x2 -> 0x0, enforce by other");
        assert!(rows.iter().all(|r| !r.pass));
    }

    #[test]
    fn records_of_other_processes_threads_or_duplications_do_not_count() {
        let cases = [
            line("process", SMOKE + 1, 0, 0x1, 0),
            line("process", SMOKE, 0, 0x1, 0).replace(
                &format!("\"TargetProcessId\":{TARGET}"),
                "\"TargetProcessId\":1",
            ),
            line("thread", SMOKE, TID + 4, 0x1, 0),
            line("process", SMOKE, 0, 0x1, 0)
                .replace("\"Duplication\":false", "\"Duplication\":true"),
            line("thread", SMOKE, 0, 0x1, 0),
        ];
        let wanted = [&expected()[0], &expected()[7]];
        for case in cases {
            let (events, problems) = parse_events(&case);
            assert!(problems.is_empty());
            for want in wanted {
                let rows = check_records(&events, std::slice::from_ref(want), RULE_NAME);
                assert!(!rows[0].pass, "{case} matched {}", want.label);
            }
        }
    }

    #[test]
    fn implied_rights_in_the_original_request_are_accepted_others_are_not() {
        let set_information = expected()
            .into_iter()
            .find(|e| e.label == "thread THREAD_SET_INFORMATION")
            .unwrap();
        // THREAD_SET_INFORMATION | THREAD_SET_LIMITED_INFORMATION, both stripped.
        let (events, _) = parse_events(&line("thread", SMOKE, TID, 0x420, 0));
        assert!(set_information.matches(&events[0], RULE_NAME));
        // The PROCESS_ALL_ACCESS record is not PROCESS_TERMINATE's.
        let (events, _) = parse_events(&line("process", SMOKE, 0, 0x1F_FFFF, 0x1F_F594));
        assert!(!expected()[0].matches(&events[0], RULE_NAME));
        assert!(expected().last().unwrap().matches(&events[0], RULE_NAME));
    }

    #[test]
    fn procguardctls_own_json_lines_parse() {
        let text = "{\"UtcTime\":\"2026-03-14 15:09:26.535\",\"SourceProcessId\":4321,\"SourceThreadId\":4322,\
            \"TargetProcessId\":2000,\"ThreadId\":2004,\"Object\":\"thread\",\"GrantedAccess\":\"0x0\",\
            \"OriginalDesiredAccess\":\"0x10\",\"Rule\":null,\"RuleId\":null,\"Mode\":\"audit\",\
            \"Duplication\":true,\"DuplicateSourceProcessId\":1,\"DuplicateTargetProcessId\":4321,\"Sequence\":9}\n\n";
        let (events, problems) = parse_events(text);
        assert!(problems.is_empty());
        assert_eq!(
            events,
            [AuditEvent {
                sequence: 9,
                source_pid: 4321,
                target_pid: 2000,
                thread_id: 2004,
                object: ObjectKind::Thread,
                original: 0x10,
                granted: 0,
                rule: None,
                mode: "audit".to_owned(),
                duplication: true,
            }]
        );
    }

    #[test]
    fn lines_that_are_not_records_are_reported_with_their_number() {
        let good = line("process", SMOKE, 0, 0x1, 0);
        let text = [
            good.clone(),
            "dropped".to_owned(),
            "[1]".to_owned(),
            good.replace("\"0x0\"", "\"0\""),
            good.replace("\"process\"", "\"file\""),
            good.replace(",\"Sequence\":1", ""),
            good.replace("\"Rule\":\"procguard-smoke\"", "\"Rule\":3"),
            good.replace(
                &format!("\"SourceProcessId\":{SMOKE}"),
                "\"SourceProcessId\":4294967296",
            ),
        ]
        .join("\n");
        let (events, problems) = parse_events(&text);
        assert_eq!(events.len(), 1);
        let expected = [
            "line 2: not JSON",
            "line 3: not a JSON object",
            "line 4: GrantedAccess is not a \"0x...\" mask",
            "line 5: unknown Object \"file\"",
            "line 6: no Sequence",
            "line 7: Rule is neither a string nor null",
            "line 8: SourceProcessId is not a 32-bit number",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:?}");
        for (problem, start) in problems.iter().zip(expected) {
            assert!(problem.starts_with(start), "{problem:?} vs {start:?}");
        }
    }

    #[test]
    fn no_records_check_fails_on_any_record_of_the_exempt_or_kept_rights() {
        let (events, _) = parse_events(&good_lines().join("\n"));
        assert!(check_no_records(&events, "exempt", 6000, TARGET, false).pass);
        assert!(check_no_records(&events, "kept rights", SMOKE, TARGET, true).pass);
        assert!(!check_no_records(&events, "all", SMOKE, TARGET, false).pass);
        let (events, _) = parse_events(&line("thread", SMOKE, TID, 0x8, 0x8));
        let row = check_no_records(&events, "kept rights", SMOKE, TARGET, true);
        assert!(!row.pass);
        assert_eq!(
            row.observed,
            "1 (first thread #8: 0x8 -> 0x8, enforce by procguard-smoke)"
        );
    }
}
