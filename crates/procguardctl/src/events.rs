//! Audit records for people and for log pipelines: JSON lines whose field
//! names follow Sysmon's ProcessAccess event (event id 10) where they
//! overlap, and a fixed-width table.

use std::fmt::Write as _;

use procguard_protocol::audit_record::NO_RULE;
use procguard_protocol::{AuditMode, AuditObject, AuditRecord, PolicySource};

/// Rule names of the policy in force, by rule id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleNames(pub Vec<String>);

impl RuleNames {
    /// The rule's name; `None` for an id the policy does not have.
    #[must_use]
    pub fn get(&self, rule_id: u32) -> Option<&str> {
        self.0.get(rule_id as usize).map(String::as_str)
    }
}

/// A Windows `FILETIME` (100 ns units since 1601-01-01 UTC) as Sysmon writes
/// `UtcTime`: `YYYY-MM-DD HH:MM:SS.mmm`.
#[must_use]
pub fn utc_time(filetime: i64) -> String {
    const TICKS_PER_MILLISECOND: i64 = 10_000;
    const MILLISECONDS_PER_DAY: i64 = 86_400_000;
    let milliseconds = filetime.div_euclid(TICKS_PER_MILLISECOND);
    let days = milliseconds.div_euclid(MILLISECONDS_PER_DAY);
    let in_day = milliseconds.rem_euclid(MILLISECONDS_PER_DAY);
    let (year, month, day) = civil_from_days_since_1601(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// Gregorian date of a day count from 1601-01-01, the first day of a
/// 400-year cycle: whole cycles, then centuries, 4-year groups and years.
fn civil_from_days_since_1601(days: i64) -> (i64, u32, u32) {
    const DAYS_PER_400_YEARS: i64 = 146_097;
    const DAYS_PER_100_YEARS: i64 = 36_524;
    const DAYS_PER_4_YEARS: i64 = 1_461;
    let cycles = days.div_euclid(DAYS_PER_400_YEARS);
    let mut rest = days.rem_euclid(DAYS_PER_400_YEARS);
    // The fourth century of a cycle (and the fourth year of a group) is one
    // day longer: clamp so its last day stays in it.
    let centuries = (rest / DAYS_PER_100_YEARS).min(3);
    rest -= centuries * DAYS_PER_100_YEARS;
    let groups = rest / DAYS_PER_4_YEARS;
    rest -= groups * DAYS_PER_4_YEARS;
    let years = (rest / 365).min(3);
    rest -= years * 365;
    let year = 1601 + cycles * 400 + centuries * 100 + groups * 4 + years;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let lengths = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 1;
    for length in lengths {
        if rest < length {
            break;
        }
        rest -= length;
        month += 1;
    }
    // `rest` < 31 here, `month` <= 12.
    (year, month, u32::try_from(rest + 1).unwrap_or(1))
}

/// An access mask as Sysmon writes `GrantedAccess`: `0x1fffff`.
#[must_use]
pub fn access_hex(mask: u32) -> String {
    format!("{mask:#x}")
}

/// Appends `text` as a JSON string literal.
pub(crate) fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An NTSTATUS as `procguardctl` prints it (`0xC000000D`).
#[must_use]
pub fn status_hex(status: i32) -> String {
    format!("0x{:08X}", status.cast_unsigned())
}

/// A policy record (object `policy`) as a JSON object on one line:
/// `UtcTime`, `Object`, `Mode` (`policy-applied` or `policy-rejected`),
/// `PolicyId` (hex), `PolicySource` (`boot`, `control`, `registry`), `Rules`
/// (in force afterwards), `Status` (NTSTATUS hex, `0x00000000` when applied),
/// `SourceProcessId`/`SourceThreadId` (who sent it; 0 for the registry) and
/// `Sequence`.
fn policy_json_line(record: &AuditRecord) -> String {
    let source = record.policy_source().map_or("unknown", PolicySource::name);
    format!(
        "{{\"UtcTime\":\"{}\",\"Object\":\"policy\",\"Mode\":\"{}\",\"PolicyId\":\"0x{:08x}\",\"PolicySource\":\"{source}\",\"Rules\":{},\"Status\":\"{}\",\"SourceProcessId\":{},\"SourceThreadId\":{},\"Sequence\":{}}}",
        utc_time(record.timestamp),
        record.mode.name(),
        record.rule_id,
        record.desired_access,
        status_hex(record.result_code),
        record.originator_process_id,
        record.originator_thread_id,
        record.sequence,
    )
}

/// One record as a JSON object on one line (no trailing newline).
///
/// `Rule` is the rule's name in `names`, else its id as a string (`null` when
/// the record names no rule); `RuleId` is the number (or `null`).
/// `AskOutcome` is `null` unless an ask rule applied; `AskWaitMicroseconds`
/// and `ResultCode` (the handler's, a signed 32-bit number) are 0 then.
///
/// Policy records (object `policy`) have their own keys: see
/// `policy_json_line` (private).
#[must_use]
pub fn json_line(record: &AuditRecord, names: &RuleNames) -> String {
    if record.object == AuditObject::Policy {
        return policy_json_line(record);
    }
    let mut out = String::with_capacity(512);
    out.push('{');
    let mut first = true;
    let mut key = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        json_string(out, name);
        out.push(':');
    };
    key(&mut out, "UtcTime");
    json_string(&mut out, &utc_time(record.timestamp));
    for (name, value) in [
        ("SourceProcessId", record.originator_process_id),
        ("SourceThreadId", record.originator_thread_id),
        ("TargetProcessId", record.process_id),
        ("ThreadId", record.thread_id),
    ] {
        key(&mut out, name);
        let _ = write!(out, "{value}");
    }
    key(&mut out, "Object");
    json_string(&mut out, record.object.name());
    key(&mut out, "GrantedAccess");
    json_string(&mut out, &access_hex(record.desired_access));
    key(&mut out, "OriginalDesiredAccess");
    json_string(&mut out, &access_hex(record.original_desired_access));
    key(&mut out, "Rule");
    if record.rule_id == NO_RULE {
        out.push_str("null");
    } else {
        let id = record.rule_id.to_string();
        json_string(&mut out, names.get(record.rule_id).unwrap_or(&id));
    }
    key(&mut out, "RuleId");
    if record.rule_id == NO_RULE {
        out.push_str("null");
    } else {
        let _ = write!(out, "{}", record.rule_id);
    }
    key(&mut out, "Mode");
    json_string(&mut out, record.mode.name());
    key(&mut out, "AskOutcome");
    match record.ask_outcome {
        Some(outcome) => json_string(&mut out, outcome.name()),
        None => out.push_str("null"),
    }
    key(&mut out, "AskWaitMicroseconds");
    let _ = write!(out, "{}", record.ask_wait_us);
    key(&mut out, "ResultCode");
    let _ = write!(out, "{}", record.result_code);
    key(&mut out, "Duplication");
    out.push_str(if record.duplication { "true" } else { "false" });
    for (name, value) in [
        ("DuplicateSourceProcessId", record.source_process_id),
        ("DuplicateTargetProcessId", record.target_process_id),
    ] {
        key(&mut out, name);
        let _ = write!(out, "{value}");
    }
    key(&mut out, "Sequence");
    let _ = write!(out, "{}", record.sequence);
    out.push('}');
    out
}

/// Image paths of the processes a record names, looked up in user mode
/// when the record is read (Sysmon's `SourceImage`/`TargetImage`). The
/// driver's records carry process ids only; a process that has exited by
/// then (or whose id was reused) cannot be told apart, so a writer marks
/// what it could not resolve as `null`, never guesses.
pub trait ImageLookup {
    /// The NT image path (`\Device\HarddiskVolume3\...\x.exe`) of the
    /// running process `pid`; `None` when it cannot be read.
    fn image(&mut self, pid: u32) -> Option<String>;
}

/// [`json_line`] with `SourceImage` (the requester's image) and
/// `TargetImage` (the target's) added before the closing brace, each a
/// string or `null`. Policy records are returned unchanged. `procguardctl
/// learn` needs `SourceImage` to propose requester exemptions.
#[must_use]
pub fn json_line_with_images(
    record: &AuditRecord,
    names: &RuleNames,
    lookup: &mut dyn ImageLookup,
) -> String {
    let mut line = json_line(record, names);
    if record.object == AuditObject::Policy {
        return line;
    }
    line.pop();
    for (key, pid) in [
        ("SourceImage", record.originator_process_id),
        ("TargetImage", record.process_id),
    ] {
        let _ = write!(line, ",\"{key}\":");
        match lookup.image(pid) {
            Some(path) => json_string(&mut line, &path),
            None => line.push_str("null"),
        }
    }
    line.push('}');
    line
}

/// The table's heading line.
pub const TABLE_HEADER: &str = "SEQUENCE  UTC TIME                 MODE     OBJECT   OP    SOURCE PID:TID   TARGET PID  REQUESTED   GRANTED     RULE";

/// One record as a table row (no trailing newline).
#[must_use]
pub fn table_row(record: &AuditRecord, names: &RuleNames) -> String {
    if record.object == AuditObject::Policy {
        let source = record.policy_source().map_or("unknown", PolicySource::name);
        let what = if record.mode == AuditMode::PolicyApplied {
            format!("applied ({} rules)", record.desired_access)
        } else {
            format!(
                "REJECTED with {}; 0x{:08x} stays in force",
                status_hex(record.result_code),
                record.rule_id
            )
        };
        return format!(
            "{:<9} {:<24} policy 0x{:08x} from {source}: {what}",
            record.sequence,
            utc_time(record.timestamp),
            record.rule_id,
        );
    }
    let rule = if record.rule_id == NO_RULE {
        "-".to_owned()
    } else {
        names.get(record.rule_id).map_or_else(
            || format!("#{}", record.rule_id),
            |name| format!("{name} (#{})", record.rule_id),
        )
    };
    let op = if record.duplication { "dup" } else { "open" };
    let mut target = record.process_id.to_string();
    if record.object == AuditObject::Thread {
        let _ = write!(target, "/{}", record.thread_id);
    }
    let mut row = format!(
        "{:<9} {:<24} {:<8} {:<8} {:<5} {:<16} {:<11} {:<11} {:<11} {rule}",
        record.sequence,
        utc_time(record.timestamp),
        record.mode.name(),
        record.object.name(),
        op,
        format!(
            "{}:{}",
            record.originator_process_id, record.originator_thread_id
        ),
        target,
        access_hex(record.original_desired_access),
        access_hex(record.desired_access),
    );
    if record.duplication {
        let _ = write!(
            row,
            " (duplicated from {} into {})",
            record.source_process_id, record.target_process_id
        );
    }
    if let Some(outcome) = record.ask_outcome {
        let _ = write!(
            row,
            " (ask: {} after {} us",
            outcome.name(),
            record.ask_wait_us
        );
        if record.result_code != 0 {
            let _ = write!(row, ", result {:#010x}", record.result_code.cast_unsigned());
        }
        row.push(')');
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ns ticks from 1601-01-01 to 1970-01-01.
    const UNIX_EPOCH: i64 = 116_444_736_000_000_000;

    #[test]
    fn utc_time_matches_known_instants() {
        assert_eq!(utc_time(0), "1601-01-01 00:00:00.000");
        assert_eq!(utc_time(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        // 2024-02-29 12:34:56.789 UTC = Unix 1709210096.789
        assert_eq!(
            utc_time(UNIX_EPOCH + 17_092_100_967_890_000 + 9_999),
            "2024-02-29 12:34:56.789"
        );
        // Last day of a 400-year cycle, and the day after.
        // 2000-12-31 = Unix day 11322; 2001-01-01 = 11323.
        let day = 864_000_000_000;
        assert_eq!(
            utc_time(UNIX_EPOCH + 11_322 * day + day - 1),
            "2000-12-31 23:59:59.999"
        );
        assert_eq!(
            utc_time(UNIX_EPOCH + 11_323 * day),
            "2001-01-01 00:00:00.000"
        );
        // 2100 is not a leap year: 2100-02-28 is followed by 2100-03-01.
        // Unix day of 2100-03-01 = 47541.
        assert_eq!(
            utc_time(UNIX_EPOCH + 47_541 * day),
            "2100-03-01 00:00:00.000"
        );
        assert_eq!(
            utc_time(UNIX_EPOCH + 47_540 * day),
            "2100-02-28 00:00:00.000"
        );
        assert_eq!(utc_time(-1), "1600-12-31 23:59:59.999");
    }

    /// Steps a date forward by one day, naively.
    fn next_day((year, month, day): (i64, u32, u32)) -> (i64, u32, u32) {
        let leap = year % 400 == 0 || (year % 4 == 0 && year % 100 != 0);
        let length = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        match (day < length, month < 12) {
            (true, _) => (year, month, day + 1),
            (false, true) => (year, month + 1, 1),
            (false, false) => (year + 1, 1, 1),
        }
    }

    #[test]
    fn every_day_of_eight_centuries_follows_the_previous_one() {
        let mut expected = (1600, 12, 31);
        assert_eq!(civil_from_days_since_1601(-1), expected);
        for days in 0..(146_097 * 2) {
            expected = next_day(expected);
            assert_eq!(civil_from_days_since_1601(days), expected, "day {days}");
        }
        assert_eq!(expected, (2400, 12, 31));
    }

    struct Images;

    impl ImageLookup for Images {
        fn image(&mut self, pid: u32) -> Option<String> {
            (pid == 5150).then(|| "\\Device\\HarddiskVolume3\\Tools\\\"odd\".exe".to_owned())
        }
    }

    #[test]
    fn images_are_added_as_strings_or_null() {
        let record = AuditRecord {
            originator_process_id: 5150,
            process_id: 4242,
            ..AuditRecord::policy_event(0, PolicySource::Boot, Ok(()), 1, 1, (0, 0))
        };
        let names = RuleNames(Vec::new());
        assert_eq!(
            json_line_with_images(&record, &names, &mut Images),
            json_line(&record, &names),
            "policy records have no images"
        );
        let handle = AuditRecord {
            object: AuditObject::Process,
            mode: AuditMode::Audit,
            source_process_id: 0,
            ..record
        };
        let line = json_line_with_images(&handle, &names, &mut Images);
        let plain = json_line(&handle, &names);
        assert_eq!(line[..plain.len() - 1], plain[..plain.len() - 1]);
        assert!(
            line.ends_with(",\"SourceImage\":\"\\\\Device\\\\HarddiskVolume3\\\\Tools\\\\\\\"odd\\\".exe\",\"TargetImage\":null}"),
            "{line}"
        );
    }

    #[test]
    fn policy_records_have_their_own_json_keys_and_row() {
        let rejected = AuditRecord {
            sequence: 7,
            ..AuditRecord::policy_event(
                0,
                PolicySource::Registry,
                Err(-1_073_741_811),
                0xBA8C_D4BC,
                6,
                (0, 0),
            )
        };
        let names = RuleNames(Vec::new());
        assert_eq!(
            json_line(&rejected, &names),
            "{\"UtcTime\":\"1601-01-01 00:00:00.000\",\"Object\":\"policy\",\"Mode\":\"policy-rejected\",\"PolicyId\":\"0xba8cd4bc\",\"PolicySource\":\"registry\",\"Rules\":6,\"Status\":\"0xC000000D\",\"SourceProcessId\":0,\"SourceThreadId\":0,\"Sequence\":7}"
        );
        let row = table_row(&rejected, &names);
        assert!(
            row.contains("policy 0xba8cd4bc from registry: REJECTED with 0xC000000D"),
            "{row}"
        );
        let applied = AuditRecord::policy_event(0, PolicySource::Control, Ok(()), 1, 2, (9, 10));
        let line = json_line(&applied, &names);
        assert!(line.contains("\"Mode\":\"policy-applied\""), "{line}");
        assert!(
            line.contains("\"SourceProcessId\":9,\"SourceThreadId\":10"),
            "{line}"
        );
        assert!(table_row(&applied, &names).contains("applied (2 rules)"));
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
