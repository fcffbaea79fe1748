//! Golden file of the Prometheus text `procguardctl metrics` prints and the
//! `procguard-events` service keeps for windows_exporter's textfile
//! collector: `tests/fleet/golden/metrics.prom`, rendered from a snapshot in
//! which every counter has its own value and rule names hold quotes,
//! backslashes, a line break and letters outside ASCII, and beside it
//! `metrics.snapshot.json`, the snapshot's values. `tests/fleet/` parses
//! the text with a real Prometheus parser and checks it against those
//! values.
//!
//! Fails when the committed files differ from what procguardctl renders
//! now; regenerate with
//! `PROCGUARD_UPDATE_GOLDEN=1 cargo test -p procguardctl --test metrics_golden`.

use std::path::PathBuf;

use procguard_protocol::ioctl::Status;
use procguard_protocol::PolicySource;
use procguardctl::metrics::{render, MetricsSnapshot, RuleMetrics};
use serde_json::{json, Value};

const POLICY_ID: u32 = 0xBA8C_D4BC;

/// Every number distinct, so a value in the wrong family shows.
fn snapshot() -> MetricsSnapshot {
    let mut status = Status {
        protocol_version: 7,
        driver_version: 0x0001_0203,
        callbacks_registered: true,
        policy_id: POLICY_ID,
        rule_count: 4,
        tracked_processes: 211,
        ..Status::default()
    };
    let altitude: Vec<u16> = "385201.1".encode_utf16().collect();
    status.altitude[..altitude.len()].copy_from_slice(&altitude);
    status.altitude_len = u16::try_from(altitude.len()).expect("short");
    let c = &mut status.counters;
    (c.seen, c.modified, c.audited, c.skipped_kernel) = (1001, 1002, 1003, 1004);
    (c.skipped_self, c.exempt, c.unclassified) = (1005, 1006, 1007);
    (c.events_dropped, c.events_pending) = (1008, 1009);
    status.ask.handler_pid = 4321;
    status.ask.in_flight = 3;
    let k = &mut status.ask.counters;
    (k.asked, k.answered, k.timed_out, k.no_handler) = (2001, 2002, 2003, 2004);
    (k.pool_full, k.unaskable, k.cancelled, k.late_replies) = (2005, 2006, 2007, 2008);
    status.policy_updates.applied = 31;
    status.policy_updates.rejected = 32;
    status.policy_updates.source = Some(PolicySource::Registry);
    let rules = [
        ("agent-no-tamper", "enforce"),
        ("keep \"agent\" alive\\", "audit"),
        ("two\nlines \\n", "ask-strip"),
        ("Agënt ☂ = {x}", "ask-allow"),
    ]
    .iter()
    .enumerate()
    .map(|(index, (name, mode))| {
        let id = u32::try_from(index).expect("small");
        RuleMetrics {
            id,
            name: Some((*name).to_owned()),
            mode: Some(mode),
            hits: 3001 + u64::from(id),
            strips: 4001 + u64::from(id),
        }
    })
    .collect();
    MetricsSnapshot {
        status,
        rules_policy_id: POLICY_ID,
        rules,
    }
}

/// The snapshot's values, named as in `Status`, for the Python test.
fn snapshot_json(snapshot: &MetricsSnapshot) -> Value {
    let s = &snapshot.status;
    let c = &s.counters;
    let k = &s.ask.counters;
    json!({
        "driver_version": "1.2.3",
        "protocol_version": s.protocol_version,
        "altitude": "385201.1",
        "callbacks_registered": s.callbacks_registered,
        "policy_id": format!("{:#010x}", s.policy_id),
        "policy_source": "registry",
        "rule_count": s.rule_count,
        "tracked_processes": s.tracked_processes,
        "policy_updates": {"applied": s.policy_updates.applied, "rejected": s.policy_updates.rejected},
        "counters": {
            "seen": c.seen, "modified": c.modified, "audited": c.audited,
            "skipped_kernel": c.skipped_kernel, "skipped_self": c.skipped_self,
            "exempt": c.exempt, "unclassified": c.unclassified,
            "events_dropped": c.events_dropped, "events_pending": c.events_pending,
        },
        "ask": {
            "handler_connected": s.ask.handler_pid != 0,
            "in_flight": s.ask.in_flight,
            "asked": k.asked, "answered": k.answered, "timed_out": k.timed_out,
            "no_handler": k.no_handler, "pool_full": k.pool_full, "unaskable": k.unaskable,
            "cancelled": k.cancelled, "late_replies": k.late_replies,
        },
        "rules_policy_id": format!("{:#010x}", snapshot.rules_policy_id),
        "rules": snapshot.rules.iter().map(|rule| json!({
            "id": rule.id, "name": rule.name, "mode": rule.mode,
            "hits": rule.hits, "strips": rule.strips,
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn metrics_golden_files_are_current() {
    let snapshot = snapshot();
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fleet/golden");
    let mut values = serde_json::to_string_pretty(&snapshot_json(&snapshot)).expect("JSON");
    values.push('\n');
    let files = [
        (golden.join("metrics.prom"), render(&snapshot)),
        (golden.join("metrics.snapshot.json"), values),
    ];
    if std::env::var_os("PROCGUARD_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&golden).expect("golden folder");
        for (path, text) in &files {
            std::fs::write(path, text).expect("write golden file");
        }
        return;
    }
    for (path, text) in &files {
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            &committed == text,
            "{} differs from what procguardctl renders now: regenerate it with \
             PROCGUARD_UPDATE_GOLDEN=1 cargo test -p procguardctl --test metrics_golden, \
             review and commit it (tests/fleet checks it with a Prometheus parser)",
            path.display()
        );
    }
}
