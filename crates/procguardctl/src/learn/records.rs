//! Reading recorded events: the JSON lines `procguardctl events --json` and
//! the events service write (see [`crate::events::json_line`] and
//! [`crate::events::json_line_with_images`]).
//!
//! Only the fields `learn` needs are read, and each is checked: a line that
//! is not JSON, lacks a field or has one of the wrong type is an error that
//! names the line, never a silently skipped record. Policy records
//! (`"Object": "policy"`) are counted and skipped.

use procguard_policy::ObjectKind;
use serde_json::{Map, Value};

/// How the rule of a record treated the request when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordMode {
    /// The rights were removed.
    Enforce,
    /// Nothing was removed; the record says what would have been.
    Audit,
    /// An ask rule: the handler (or the fallback) decided.
    Ask,
}

impl RecordMode {
    /// The spelling in the events file.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
            Self::Ask => "ask",
        }
    }
}

/// The requester's image as the record gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedImage {
    /// No `SourceImage` key: written without image lookup (by
    /// `procguardctl events --json` on a build without it, or by hand).
    Absent,
    /// `"SourceImage": null`: the writer could not read the image (the
    /// process had exited, or its id was reused).
    Unknown,
    /// The NT image path.
    Path(String),
}

/// One handle record, reduced to what `learn` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleRecord {
    /// 1-based line in the events file.
    pub line: usize,
    /// `UtcTime`, when present.
    pub utc_time: Option<String>,
    /// `Rule`: the rule's name (or its id as text when the writer did not
    /// know the names); `None` when the record names no rule.
    pub rule: Option<String>,
    /// `Mode`.
    pub mode: RecordMode,
    /// `Object`.
    pub object: ObjectKind,
    /// `Duplication`.
    pub duplication: bool,
    /// `SourceProcessId`: the process that made the call.
    pub source_pid: u32,
    /// `TargetProcessId`: the process the handle is for.
    pub target_pid: u32,
    /// `DuplicateTargetProcessId` (duplicates only, else 0): the process that
    /// receives the handle, which is the requester the policy judges.
    pub receiver_pid: u32,
    /// `OriginalDesiredAccess`.
    pub original_access: u32,
    /// `GrantedAccess`.
    pub granted_access: u32,
    /// `SourceImage`.
    pub source_image: RecordedImage,
    /// `TargetImage`, when known.
    pub target_image: Option<String>,
}

impl HandleRecord {
    /// The process id of the requester the policy judged: the caller for a
    /// create, the receiving process for a duplicate.
    #[must_use]
    pub const fn requester_pid(&self) -> u32 {
        if self.duplication {
            self.receiver_pid
        } else {
            self.source_pid
        }
    }
}

/// What an events file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Handle records, in file order.
    pub handles: Vec<HandleRecord>,
    /// Policy records (skipped).
    pub policy_records: usize,
}

/// A line `learn` cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Reads every non-blank line of an events file.
///
/// # Errors
/// The first line that is not a record `learn` can read, with its number.
pub fn read_records(text: &str) -> Result<Recorded, RecordError> {
    let mut recorded = Recorded::default();
    // A byte order mark (PowerShell's UTF-8) is not part of the first record.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let error = |message: String| RecordError { line, message };
        let value: Value =
            serde_json::from_str(raw).map_err(|e| error(format!("not a JSON object: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(error("not a JSON object".to_owned()));
        };
        match parse_record(line, &fields).map_err(error)? {
            Some(record) => recorded.handles.push(record),
            None => recorded.policy_records += 1,
        }
    }
    Ok(recorded)
}

fn field<'v>(fields: &'v Map<String, Value>, name: &str) -> Result<&'v Value, String> {
    fields
        .get(name)
        .ok_or_else(|| format!("missing field {name:?}"))
}

fn string<'v>(fields: &'v Map<String, Value>, name: &str) -> Result<&'v str, String> {
    field(fields, name)?
        .as_str()
        .ok_or_else(|| format!("field {name:?} is not a string"))
}

fn pid(fields: &Map<String, Value>, name: &str) -> Result<u32, String> {
    field(fields, name)?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("field {name:?} is not a process id (a 32-bit unsigned number)"))
}

fn mask(fields: &Map<String, Value>, name: &str) -> Result<u32, String> {
    let text = string(fields, name)?;
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| {
            format!("field {name:?} is not an access mask in hex (\"0x1fffff\"): {text:?}")
        })
}

fn optional_string(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("field {name:?} is neither a string nor null")),
    }
}

/// One record; `None` for a policy record.
fn parse_record(line: usize, fields: &Map<String, Value>) -> Result<Option<HandleRecord>, String> {
    let object = match string(fields, "Object")? {
        "policy" => return Ok(None),
        "process" => ObjectKind::Process,
        "thread" => ObjectKind::Thread,
        other => {
            return Err(format!(
                "field \"Object\" is {other:?} (valid: \"process\", \"thread\", \"policy\")"
            ))
        }
    };
    let mode = match string(fields, "Mode")? {
        "enforce" => RecordMode::Enforce,
        "audit" => RecordMode::Audit,
        "ask" => RecordMode::Ask,
        other => {
            return Err(format!(
                "field \"Mode\" is {other:?} (valid for handle records: \"enforce\", \"audit\", \"ask\")"
            ))
        }
    };
    let rule = match field(fields, "Rule")? {
        Value::Null => None,
        Value::String(name) => Some(name.clone()),
        _ => return Err("field \"Rule\" is neither a string nor null".to_owned()),
    };
    let duplication = field(fields, "Duplication")?
        .as_bool()
        .ok_or_else(|| "field \"Duplication\" is not true or false".to_owned())?;
    let receiver_pid = if duplication {
        pid(fields, "DuplicateTargetProcessId")?
    } else {
        0
    };
    let source_image = match fields.get("SourceImage") {
        None => RecordedImage::Absent,
        Some(Value::Null) => RecordedImage::Unknown,
        Some(Value::String(path)) => RecordedImage::Path(path.clone()),
        Some(_) => return Err("field \"SourceImage\" is neither a string nor null".to_owned()),
    };
    Ok(Some(HandleRecord {
        line,
        utc_time: optional_string(fields, "UtcTime")?,
        rule,
        mode,
        object,
        duplication,
        source_pid: pid(fields, "SourceProcessId")?,
        target_pid: pid(fields, "TargetProcessId")?,
        receiver_pid,
        original_access: mask(fields, "OriginalDesiredAccess")?,
        granted_access: mask(fields, "GrantedAccess")?,
        source_image,
        target_image: optional_string(fields, "TargetImage")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{json_line, json_line_with_images, ImageLookup, RuleNames};
    use procguard_protocol::{AuditMode, AuditObject, AuditRecord, PolicySource};

    struct Images;

    impl ImageLookup for Images {
        fn image(&mut self, pid: u32) -> Option<String> {
            (pid == 700).then(|| r"\Device\HarddiskVolume3\Tools\it's.exe".to_owned())
        }
    }

    fn handle(duplication: bool) -> AuditRecord {
        AuditRecord {
            object: AuditObject::Thread,
            mode: AuditMode::Audit,
            rule_id: 1,
            originator_process_id: 700,
            process_id: 800,
            duplication,
            source_process_id: if duplication { 900 } else { 0 },
            target_process_id: if duplication { 700 } else { 0 },
            original_desired_access: 0x1f_ffff,
            desired_access: 0x1f_ffff,
            ..AuditRecord::policy_event(0, PolicySource::Boot, Ok(()), 1, 1, (0, 0))
        }
    }

    #[test]
    fn what_the_writers_write_is_read_back() {
        let names = RuleNames(vec!["a".to_owned(), "b".to_owned()]);
        let policy = AuditRecord::policy_event(0, PolicySource::Registry, Ok(()), 7, 2, (0, 0));
        let text = [
            json_line(&policy, &names),
            json_line_with_images(&handle(false), &names, &mut Images),
            String::new(),
            json_line_with_images(&handle(true), &names, &mut Images),
            json_line(&handle(false), &names),
        ]
        .join("\n");
        let recorded = read_records(&text).expect("readable");
        assert_eq!(recorded.policy_records, 1);
        let [open, duplicate, plain] = &recorded.handles[..] else {
            panic!("three handle records: {recorded:?}")
        };
        assert_eq!(open.line, 2);
        assert_eq!(open.rule.as_deref(), Some("b"));
        assert_eq!(open.mode, RecordMode::Audit);
        assert_eq!(open.object, ObjectKind::Thread);
        assert_eq!((open.source_pid, open.target_pid), (700, 800));
        assert_eq!(open.requester_pid(), 700);
        assert_eq!(open.original_access, 0x1f_ffff);
        assert_eq!(
            open.source_image,
            RecordedImage::Path(r"\Device\HarddiskVolume3\Tools\it's.exe".to_owned())
        );
        assert_eq!(open.target_image, None);
        assert_eq!(open.utc_time.as_deref(), Some("1601-01-01 00:00:00.000"));
        assert_eq!(duplicate.line, 4);
        assert!(duplicate.duplication);
        assert_eq!(duplicate.requester_pid(), 700);
        assert_eq!(plain.source_image, RecordedImage::Absent);
    }

    #[test]
    fn bad_lines_are_errors_with_their_number() {
        let good = json_line(&handle(false), &RuleNames::default());
        let cases = [
            ("{not json", "not a JSON object"),
            ("[1, 2]", "not a JSON object"),
            (
                &good.replace("\"Mode\"", "\"Mood\""),
                "missing field \"Mode\"",
            ),
            (
                &good.replace("\"audit\"", "\"loud\""),
                "field \"Mode\" is \"loud\"",
            ),
            (
                &good.replace("\"0x1fffff\"", "\"lots\""),
                "not an access mask in hex",
            ),
            (
                &good.replace("\"SourceProcessId\":700", "\"SourceProcessId\":-1"),
                "not a process id",
            ),
        ];
        for (bad, expected) in cases {
            let text = format!("{good}\n\n{bad}\n{good}\n");
            let error = read_records(&text).expect_err(bad);
            assert_eq!(error.line, 3, "{bad}");
            assert!(error.message.contains(expected), "{bad}: {error}");
        }
    }
}
