//! The driver's counters as Prometheus text (exposition format 0.0.4), for
//! windows_exporter's textfile collector: `procguardctl metrics` prints it,
//! the `procguard-events` service keeps it in a `.prom` file.
//!
//! Every family has `# HELP` and `# TYPE`; names are `procguard_*`, counters
//! end in `_total`. Label values are escaped as the format says (`\\`, `\"`,
//! `\n`). The per-rule families are labelled with the rule's id, name and
//! mode; when the counters belong to another policy than the one read back
//! (a policy changed in between), the rules are labelled with their ids only.

use std::fmt::Write as _;

use procguard_policy::model::{Mode, OnTimeout};
use procguard_policy::{decode, Policy};
use procguard_protocol::ioctl::Status;

use crate::device::{self, Device, RequestError};

/// One rule's counters with what labels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMetrics {
    /// The rule's id (its index in the policy).
    pub id: u32,
    /// Its name; `None` when the policy could not be read back.
    pub name: Option<String>,
    /// `enforce`, `audit`, `ask-strip` or `ask-allow`; `None` as for `name`.
    pub mode: Option<&'static str>,
    /// Requests the rule matched.
    pub hits: u64,
    /// Requests whose access it reduced (or would have, in audit mode).
    pub strips: u64,
}

/// What the metrics are made of: one status and the rules' counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `IOCTL_GET_STATUS`.
    pub status: Status,
    /// The policy the rule counters belong to.
    pub rules_policy_id: u32,
    /// Per rule.
    pub rules: Vec<RuleMetrics>,
}

/// The label of a rule's mode.
#[must_use]
pub const fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
        Mode::Ask {
            on_timeout: OnTimeout::Strip,
        } => "ask-strip",
        Mode::Ask {
            on_timeout: OnTimeout::Allow,
        } => "ask-allow",
    }
}

/// Reads a snapshot from the driver: status, rule counters and (for the
/// rules' names and modes) the policy in force.
///
/// # Errors
/// [`RequestError`] when the driver refuses or answers malformed data.
pub fn snapshot(device: &mut dyn Device) -> Result<MetricsSnapshot, RequestError> {
    let status = device::get_status(device)?;
    let (rules_policy_id, counters) =
        device::get_rule_counters(device, status.rule_count as usize)?;
    let (policy_id, blob) = device::get_policy(device)?;
    let policy: Option<Policy> = if policy_id == rules_policy_id && !blob.is_empty() {
        decode(&blob).ok()
    } else {
        None
    };
    let rules = counters
        .iter()
        .enumerate()
        .map(|(index, &(hits, strips))| {
            let rule = policy.as_ref().and_then(|policy| policy.rules.get(index));
            RuleMetrics {
                id: u32::try_from(index).unwrap_or(u32::MAX),
                name: rule.map(|rule| rule.name.to_string()),
                mode: rule.map(|rule| mode_label(rule.mode)),
                hits,
                strips,
            }
        })
        .collect();
    Ok(MetricsSnapshot {
        status,
        rules_policy_id,
        rules,
    })
}

/// A label value, escaped for the text format.
#[must_use]
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text, escaped for the text format (`\\` and `\n`; quotes
/// stay as they are).
#[must_use]
pub fn escape_help(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes a family's `# HELP` (escaped) and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family with one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn version_text(version: u32) -> String {
    format!(
        "{}.{}.{}",
        version >> 16,
        (version >> 8) & 0xFF,
        version & 0xFF
    )
}

/// The snapshot as Prometheus text (ends with a newline).
#[must_use]
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let status = &snapshot.status;
    let mut out = String::with_capacity(4096);
    let altitude_len = usize::from(status.altitude_len.min(40));
    let altitude = String::from_utf16_lossy(&status.altitude[..altitude_len]);
    family(
        &mut out,
        "procguard_driver_info",
        "gauge",
        "The procguard driver: version, control protocol and altitude (always 1).",
    );
    let _ = writeln!(
        out,
        "procguard_driver_info{{version=\"{}\",protocol=\"{}\",altitude=\"{}\"}} 1",
        version_text(status.driver_version),
        status.protocol_version,
        escape_label(&altitude)
    );
    single(
        &mut out,
        "procguard_callbacks_registered",
        "gauge",
        "1 when the object callbacks are registered (handles are being filtered).",
        u64::from(status.callbacks_registered),
    );
    let source = status
        .policy_updates
        .source
        .map_or("none", procguard_protocol::PolicySource::name);
    family(
        &mut out,
        "procguard_policy_info",
        "gauge",
        "The policy in force: its id (CRC-32) and where it came from (always 1).",
    );
    let _ = writeln!(
        out,
        "procguard_policy_info{{policy_id=\"{:#010x}\",source=\"{source}\"}} 1",
        status.policy_id
    );
    single(
        &mut out,
        "procguard_policy_rules",
        "gauge",
        "Rules in the policy in force.",
        u64::from(status.rule_count),
    );
    family(
        &mut out,
        "procguard_policy_updates_total",
        "counter",
        "Policies put in force (applied) or refused (rejected) since the driver loaded.",
    );
    let _ = writeln!(
        out,
        "procguard_policy_updates_total{{result=\"applied\"}} {}",
        status.policy_updates.applied
    );
    let _ = writeln!(
        out,
        "procguard_policy_updates_total{{result=\"rejected\"}} {}",
        status.policy_updates.rejected
    );
    single(
        &mut out,
        "procguard_tracked_processes",
        "gauge",
        "Processes in the driver's process table.",
        u64::from(status.tracked_processes),
    );
    let counters = &status.counters;
    for (name, help, value) in [
        (
            "procguard_requests_seen_total",
            "Handle requests the callbacks saw.",
            counters.seen,
        ),
        (
            "procguard_requests_reduced_total",
            "Handle requests whose access was reduced.",
            counters.modified,
        ),
        (
            "procguard_requests_audited_total",
            "Handle requests audited (stripped, or audit-only).",
            counters.audited,
        ),
        (
            "procguard_requests_kernel_skipped_total",
            "Kernel handles passed untouched.",
            counters.skipped_kernel,
        ),
        (
            "procguard_requests_self_skipped_total",
            "Self-opens passed untouched although a rule matched.",
            counters.skipped_self,
        ),
        (
            "procguard_requests_exempt_total",
            "Requests an exemption passed untouched although a rule matched.",
            counters.exempt,
        ),
        (
            "procguard_requests_unclassified_total",
            "Lookups that found no current process record.",
            counters.unclassified,
        ),
        (
            "procguard_records_dropped_total",
            "Audit records lost because the driver's ring was full.",
            counters.events_dropped,
        ),
    ] {
        single(&mut out, name, "counter", help, value);
    }
    single(
        &mut out,
        "procguard_records_pending",
        "gauge",
        "Audit records waiting in the driver's ring.",
        counters.events_pending,
    );
    let ask = &status.ask;
    single(
        &mut out,
        "procguard_ask_handler_connected",
        "gauge",
        "1 when a handler is connected for ask rules.",
        u64::from(ask.handler_pid != 0),
    );
    single(
        &mut out,
        "procguard_ask_in_flight",
        "gauge",
        "Asked requests waiting for the handler's answer.",
        u64::from(ask.in_flight),
    );
    single(
        &mut out,
        "procguard_ask_asked_total",
        "counter",
        "Requests an ask rule matched.",
        ask.counters.asked,
    );
    family(
        &mut out,
        "procguard_ask_outcomes_total",
        "counter",
        "What happened to asked requests: answered, timed_out, no_handler, pool_full, unaskable, cancelled.",
    );
    let k = &ask.counters;
    for (outcome, value) in [
        ("answered", k.answered),
        ("timed_out", k.timed_out),
        ("no_handler", k.no_handler),
        ("pool_full", k.pool_full),
        ("unaskable", k.unaskable),
        ("cancelled", k.cancelled),
    ] {
        let _ = writeln!(
            out,
            "procguard_ask_outcomes_total{{outcome=\"{outcome}\"}} {value}"
        );
    }
    single(
        &mut out,
        "procguard_ask_late_replies_total",
        "counter",
        "Handler replies that came after their request was released.",
        k.late_replies,
    );
    for (name, help, pick) in [
        (
            "procguard_rule_hits_total",
            "Requests each rule of the policy in force matched.",
            (|rule: &RuleMetrics| rule.hits) as fn(&RuleMetrics) -> u64,
        ),
        (
            "procguard_rule_strips_total",
            "Requests whose access each rule reduced (would have, in audit mode).",
            |rule: &RuleMetrics| rule.strips,
        ),
    ] {
        family(&mut out, name, "counter", help);
        for rule in &snapshot.rules {
            let _ = write!(
                out,
                "{name}{{policy_id=\"{:#010x}\",rule_id=\"{}\"",
                snapshot.rules_policy_id, rule.id
            );
            if let Some(rule_name) = &rule.name {
                let _ = write!(out, ",rule=\"{}\"", escape_label(rule_name));
            }
            if let Some(mode) = rule.mode {
                let _ = write!(out, ",mode=\"{mode}\"");
            }
            let _ = writeln!(out, "}} {}", pick(rule));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MetricsSnapshot {
        let mut status = Status {
            policy_id: 0xBA8C_D4BC,
            rule_count: 2,
            callbacks_registered: true,
            ..Status::default()
        };
        status.counters.seen = 10;
        status.counters.events_dropped = 3;
        status.ask.counters.timed_out = 4;
        status.policy_updates.rejected = 1;
        MetricsSnapshot {
            status,
            rules_policy_id: 0xBA8C_D4BC,
            rules: vec![
                RuleMetrics {
                    id: 0,
                    name: Some("keep \"agent\" alive\\".to_owned()),
                    mode: Some("enforce"),
                    hits: 7,
                    strips: 5,
                },
                RuleMetrics {
                    id: 1,
                    name: None,
                    mode: None,
                    hits: 1,
                    strips: 0,
                },
            ],
        }
    }

    #[test]
    fn every_sample_belongs_to_a_family_declared_before_it() {
        let text = render(&sample());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap_or("").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn values_and_labels_are_the_snapshot_s() {
        let text = render(&sample());
        for expected in [
            "procguard_requests_seen_total 10\n",
            "procguard_records_dropped_total 3\n",
            "procguard_ask_outcomes_total{outcome=\"timed_out\"} 4\n",
            "procguard_policy_updates_total{result=\"rejected\"} 1\n",
            "procguard_policy_info{policy_id=\"0xba8cd4bc\",source=\"none\"} 1\n",
            "procguard_rule_hits_total{policy_id=\"0xba8cd4bc\",rule_id=\"0\",rule=\"keep \\\"agent\\\" alive\\\\\",mode=\"enforce\"} 7\n",
            "procguard_rule_strips_total{policy_id=\"0xba8cd4bc\",rule_id=\"1\"} 0\n",
            "procguard_callbacks_registered 1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn label_escapes_are_the_formats() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("a\\b\"c\nd"), "a\\\\b\"c\\nd");
    }
}
