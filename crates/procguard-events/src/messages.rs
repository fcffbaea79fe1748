//! What the service writes to the Windows Event Log: one event id per kind,
//! its level, and its fields as insertion strings in a fixed order (the
//! message table, `messages.mc`, numbers them `%1`, `%2`, ... in the same
//! order, and Get-WinEvent shows them as `Properties[0]`, `[1]`, ...).
//!
//! The table is documented in the crate's README; a test checks that every
//! id here has a message in `messages.mc` whose inserts match the field
//! names, so the two cannot drift apart.

use procguard_protocol::audit_record::NO_RULE;
use procguard_protocol::{AuditMode, AuditObject, AuditRecord, PolicySource};
use procguardctl::events::{access_hex, status_hex, utc_time, RuleNames};

use crate::drain::Event;

/// The event source (under the Application log).
pub const SOURCE: &str = "procguard";

/// An event's level (`wType` of `ReportEventW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `EVENTLOG_INFORMATION_TYPE` (4).
    Information,
    /// `EVENTLOG_WARNING_TYPE` (2).
    Warning,
    /// `EVENTLOG_ERROR_TYPE` (1).
    Error,
}

impl Level {
    /// The `wType` value.
    #[must_use]
    pub const fn event_type(self) -> u16 {
        match self {
            Self::Information => 4,
            Self::Warning => 2,
            Self::Error => 1,
        }
    }

    /// The level's name, as the README's table gives it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Information => "Information",
            Self::Warning => "Warning",
            Self::Error => "Error",
        }
    }
}

/// The kinds of event, each with its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The service started.
    ServiceStarted,
    /// The service stopped.
    ServiceStopped,
    /// The driver cannot be reached (the service keeps retrying).
    DriverUnreachable,
    /// Rights were stripped (an enforce rule).
    Stripped,
    /// An audit-only rule would have stripped rights.
    Audited,
    /// An ask rule applied: the handler's answer or the fallback.
    AskOutcome,
    /// A new policy is in force.
    PolicyApplied,
    /// A policy was refused; the one in force stays.
    PolicyRejected,
    /// Records were lost before the service could read them.
    RecordsDropped,
}

/// Field names of a handle record's insertion strings, in order.
pub const HANDLE_FIELDS: [&str; 19] = [
    "UtcTime",
    "SourceProcessId",
    "SourceThreadId",
    "SourceImage",
    "TargetProcessId",
    "TargetImage",
    "TargetThreadId",
    "Object",
    "Operation",
    "GrantedAccess",
    "OriginalDesiredAccess",
    "Rule",
    "RuleId",
    "Mode",
    "AskOutcome",
    "AskWaitMicroseconds",
    "DuplicateSourceProcessId",
    "DuplicateTargetProcessId",
    "Sequence",
];

/// Field names of a policy record's insertion strings, in order.
pub const POLICY_FIELDS: [&str; 8] = [
    "UtcTime",
    "PolicyId",
    "PolicySource",
    "Rules",
    "Status",
    "SourceProcessId",
    "SourceThreadId",
    "Sequence",
];

/// Field names of a "records dropped" event, in order.
pub const DROPPED_FIELDS: [&str; 4] = ["UtcTime", "Count", "DriverDroppedTotal", "Reason"];

/// Fields of "service started".
pub const STARTED_FIELDS: [&str; 2] = ["Version", "Sinks"];
/// Fields of "service stopped".
pub const STOPPED_FIELDS: [&str; 2] = ["RecordsRead", "RecordsLost"];
/// Fields of "driver unreachable".
pub const UNREACHABLE_FIELDS: [&str; 1] = ["Error"];

impl Kind {
    /// Every kind, in id order.
    pub const ALL: [Self; 9] = [
        Self::ServiceStarted,
        Self::ServiceStopped,
        Self::DriverUnreachable,
        Self::Stripped,
        Self::Audited,
        Self::AskOutcome,
        Self::PolicyApplied,
        Self::PolicyRejected,
        Self::RecordsDropped,
    ];

    /// The event id (10 for stripped, as Sysmon's ProcessAccess).
    #[must_use]
    pub const fn id(self) -> u32 {
        match self {
            Self::ServiceStarted => 1,
            Self::ServiceStopped => 2,
            Self::DriverUnreachable => 3,
            Self::Stripped => 10,
            Self::Audited => 11,
            Self::AskOutcome => 12,
            Self::PolicyApplied => 20,
            Self::PolicyRejected => 21,
            Self::RecordsDropped => 30,
        }
    }

    /// Its level.
    #[must_use]
    pub const fn level(self) -> Level {
        match self {
            Self::ServiceStarted
            | Self::ServiceStopped
            | Self::Audited
            | Self::AskOutcome
            | Self::PolicyApplied => Level::Information,
            Self::Stripped | Self::DriverUnreachable | Self::RecordsDropped => Level::Warning,
            Self::PolicyRejected => Level::Error,
        }
    }

    /// The symbolic name in `messages.mc`.
    #[must_use]
    pub const fn symbol(self) -> &'static str {
        match self {
            Self::ServiceStarted => "MSG_SERVICE_STARTED",
            Self::ServiceStopped => "MSG_SERVICE_STOPPED",
            Self::DriverUnreachable => "MSG_DRIVER_UNREACHABLE",
            Self::Stripped => "MSG_ACCESS_STRIPPED",
            Self::Audited => "MSG_ACCESS_AUDITED",
            Self::AskOutcome => "MSG_ASK_OUTCOME",
            Self::PolicyApplied => "MSG_POLICY_APPLIED",
            Self::PolicyRejected => "MSG_POLICY_REJECTED",
            Self::RecordsDropped => "MSG_RECORDS_DROPPED",
        }
    }

    /// Its insertion strings' names, in order.
    #[must_use]
    pub const fn fields(self) -> &'static [&'static str] {
        match self {
            Self::ServiceStarted => &STARTED_FIELDS,
            Self::ServiceStopped => &STOPPED_FIELDS,
            Self::DriverUnreachable => &UNREACHABLE_FIELDS,
            Self::Stripped | Self::Audited | Self::AskOutcome => &HANDLE_FIELDS,
            Self::PolicyApplied | Self::PolicyRejected => &POLICY_FIELDS,
            Self::RecordsDropped => &DROPPED_FIELDS,
        }
    }

    /// The kind of an audit record.
    #[must_use]
    pub const fn of_record(record: &AuditRecord) -> Self {
        match record.mode {
            AuditMode::Enforce => Self::Stripped,
            AuditMode::Audit => Self::Audited,
            AuditMode::Ask => Self::AskOutcome,
            AuditMode::PolicyApplied => Self::PolicyApplied,
            AuditMode::PolicyRejected => Self::PolicyRejected,
        }
    }
}

/// One event for the log: its kind and its insertion strings (in the order
/// of [`Kind::fields`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Which event.
    pub kind: Kind,
    /// `%1`, `%2`, ...
    pub strings: Vec<String>,
}

/// A record's event. `images` are the requester's and the target's image
/// paths (`-` when unknown).
#[must_use]
pub fn record_event(
    record: &AuditRecord,
    names: &RuleNames,
    images: (Option<&str>, Option<&str>),
) -> LogEvent {
    let kind = Kind::of_record(record);
    let strings = if record.object == AuditObject::Policy {
        vec![
            utc_time(record.timestamp),
            format!("0x{:08x}", record.rule_id),
            record
                .policy_source()
                .map_or("unknown", PolicySource::name)
                .to_owned(),
            record.desired_access.to_string(),
            status_hex(record.result_code),
            record.originator_process_id.to_string(),
            record.originator_thread_id.to_string(),
            record.sequence.to_string(),
        ]
    } else {
        let (rule, rule_id) = if record.rule_id == NO_RULE {
            ("-".to_owned(), "-".to_owned())
        } else {
            let id = record.rule_id.to_string();
            (
                names
                    .get(record.rule_id)
                    .map_or_else(|| id.clone(), str::to_owned),
                id,
            )
        };
        vec![
            utc_time(record.timestamp),
            record.originator_process_id.to_string(),
            record.originator_thread_id.to_string(),
            images.0.unwrap_or("-").to_owned(),
            record.process_id.to_string(),
            images.1.unwrap_or("-").to_owned(),
            record.thread_id.to_string(),
            record.object.name().to_owned(),
            if record.duplication {
                "duplicate"
            } else {
                "open"
            }
            .to_owned(),
            access_hex(record.desired_access),
            access_hex(record.original_desired_access),
            rule,
            rule_id,
            record.mode.name().to_owned(),
            record
                .ask_outcome
                .map_or("-", |outcome| outcome.name())
                .to_owned(),
            record.ask_wait_us.to_string(),
            record.source_process_id.to_string(),
            record.target_process_id.to_string(),
            record.sequence.to_string(),
        ]
    };
    LogEvent { kind, strings }
}

/// The "records dropped" event.
#[must_use]
pub fn dropped_event(now: i64, count: u64, driver_total: u64, reason: &str) -> LogEvent {
    LogEvent {
        kind: Kind::RecordsDropped,
        strings: vec![
            utc_time(now),
            count.to_string(),
            driver_total.to_string(),
            reason.to_owned(),
        ],
    }
}

/// An event's log form.
#[must_use]
pub fn log_event(event: &Event<'_>) -> LogEvent {
    match event {
        Event::Started { sinks } => LogEvent {
            kind: Kind::ServiceStarted,
            strings: vec![env!("CARGO_PKG_VERSION").to_owned(), (*sinks).to_owned()],
        },
        Event::Stopped { read, lost } => LogEvent {
            kind: Kind::ServiceStopped,
            strings: vec![read.to_string(), lost.to_string()],
        },
        Event::Unreachable { error } => LogEvent {
            kind: Kind::DriverUnreachable,
            strings: vec![(*error).to_owned()],
        },
        Event::Dropped(loss) => {
            dropped_event(loss.noticed, loss.count, loss.driver_total, loss.reason)
        }
        Event::Record {
            record,
            names,
            images,
        } => record_event(record, names, *images),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procguard_protocol::ask::AskOutcome;

    /// `messages.mc`: (id, symbol, text) of every message.
    fn message_file() -> Vec<(u32, String, String)> {
        let text = include_str!("../messages.mc");
        let mut messages = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(id) = line.strip_prefix("MessageId=") else {
                continue;
            };
            let id: u32 = id.trim().parse().expect("a decimal MessageId");
            let mut symbol = String::new();
            for line in lines.by_ref() {
                if let Some(name) = line.strip_prefix("SymbolicName=") {
                    symbol = name.trim().to_owned();
                }
                if line.starts_with("Language=") {
                    break;
                }
            }
            let body: Vec<&str> = lines.by_ref().take_while(|line| *line != ".").collect();
            messages.push((id, symbol, body.join("\n")));
        }
        messages
    }

    #[test]
    fn every_kind_has_its_message_with_its_fields_in_order() {
        let messages = message_file();
        assert_eq!(messages.len(), Kind::ALL.len(), "{messages:?}");
        for kind in Kind::ALL {
            let (_, symbol, body) = messages
                .iter()
                .find(|(id, _, _)| *id == kind.id())
                .unwrap_or_else(|| panic!("no message {} in messages.mc", kind.id()));
            assert_eq!(symbol, kind.symbol());
            // Every field appears as "Name: %n", in order, and no other insert.
            let mut at = 0;
            for (index, field) in kind.fields().iter().enumerate() {
                let needle = format!("{field}: %{}", index + 1);
                let found = body[at..]
                    .find(&needle)
                    .unwrap_or_else(|| panic!("{needle} missing or out of order in {body}"));
                at += found + needle.len();
            }
            let inserts = body.matches('%').count() - body.matches("%n").count();
            assert_eq!(inserts, kind.fields().len(), "{body}");
        }
    }

    #[test]
    fn ids_are_distinct_and_levels_as_documented() {
        let mut ids: Vec<u32> = Kind::ALL.iter().map(|kind| kind.id()).collect();
        ids.dedup();
        assert_eq!(ids, [1, 2, 3, 10, 11, 12, 20, 21, 30]);
        assert_eq!(Kind::Stripped.level(), Level::Warning);
        assert_eq!(Kind::PolicyRejected.level().event_type(), 1);
        assert_eq!(Kind::Audited.level().event_type(), 4);
        assert_eq!(Kind::RecordsDropped.level().event_type(), 2);
    }

    #[test]
    fn handle_records_become_strings_in_field_order() {
        let record = AuditRecord {
            sequence: 41,
            timestamp: 0,
            object: AuditObject::Thread,
            duplication: true,
            process_id: 4242,
            thread_id: 77,
            originator_process_id: 5150,
            originator_thread_id: 5151,
            source_process_id: 600,
            target_process_id: 5150,
            original_desired_access: 0x1F_FFFF,
            desired_access: 0x1000,
            result_code: 0,
            rule_id: 1,
            mode: AuditMode::Ask,
            ask_outcome: Some(AskOutcome::TimedOut),
            ask_wait_us: 250_000,
        };
        let names = RuleNames(vec!["first".into(), "protect-agent".into()]);
        let event = record_event(&record, &names, (Some("\\Device\\X\\tool.exe"), None));
        assert_eq!(event.kind, Kind::AskOutcome);
        assert_eq!(event.kind.id(), 12);
        let fields: Vec<(&str, &str)> = HANDLE_FIELDS
            .iter()
            .copied()
            .zip(event.strings.iter().map(String::as_str))
            .collect();
        assert_eq!(
            fields,
            [
                ("UtcTime", "1601-01-01 00:00:00.000"),
                ("SourceProcessId", "5150"),
                ("SourceThreadId", "5151"),
                ("SourceImage", "\\Device\\X\\tool.exe"),
                ("TargetProcessId", "4242"),
                ("TargetImage", "-"),
                ("TargetThreadId", "77"),
                ("Object", "thread"),
                ("Operation", "duplicate"),
                ("GrantedAccess", "0x1000"),
                ("OriginalDesiredAccess", "0x1fffff"),
                ("Rule", "protect-agent"),
                ("RuleId", "1"),
                ("Mode", "ask"),
                ("AskOutcome", "timed-out"),
                ("AskWaitMicroseconds", "250000"),
                ("DuplicateSourceProcessId", "600"),
                ("DuplicateTargetProcessId", "5150"),
                ("Sequence", "41"),
            ]
        );
        let stripped = AuditRecord {
            mode: AuditMode::Enforce,
            rule_id: NO_RULE,
            ask_outcome: None,
            ..record
        };
        let event = record_event(&stripped, &names, (None, None));
        assert_eq!(event.kind.id(), 10);
        assert_eq!(event.strings[11], "-");
        assert_eq!(event.strings[14], "-");
        let audited = AuditRecord {
            mode: AuditMode::Audit,
            rule_id: 7,
            ..stripped
        };
        let event = record_event(&audited, &names, (None, None));
        assert_eq!(event.kind.id(), 11);
        assert_eq!(event.strings[11], "7", "unknown rule ids stay numbers");
    }

    #[test]
    fn policy_records_and_drops_become_strings_in_field_order() {
        let rejected = AuditRecord {
            sequence: 3,
            ..AuditRecord::policy_event(
                0,
                PolicySource::Registry,
                Err(-1_073_741_811),
                0xBA8C_D4BC,
                6,
                (0, 0),
            )
        };
        let event = record_event(&rejected, &RuleNames::default(), (None, None));
        assert_eq!(event.kind, Kind::PolicyRejected);
        assert_eq!(event.kind.id(), 21);
        assert_eq!(
            event.strings,
            [
                "1601-01-01 00:00:00.000",
                "0xba8cd4bc",
                "registry",
                "6",
                "0xC000000D",
                "0",
                "0",
                "3"
            ]
        );
        let applied = AuditRecord::policy_event(0, PolicySource::Control, Ok(()), 1, 2, (9, 10));
        let event = record_event(&applied, &RuleNames::default(), (None, None));
        assert_eq!(event.kind.id(), 20);
        assert_eq!(event.strings[5..7], ["9", "10"]);
        let dropped = dropped_event(0, 5, 12, "ring full");
        assert_eq!(dropped.kind.id(), 30);
        assert_eq!(dropped.strings[1..], ["5", "12", "ring full"]);
        assert_eq!(dropped.strings.len(), DROPPED_FIELDS.len());
    }
}
