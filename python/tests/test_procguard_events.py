"""Audit events as procguardctl prints them (golden/events_json.json, written
by crates/procguardctl/tests/python_events_golden.rs from `json_line`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from procguard.events import AuditEvent, filetime_to_datetime, utc_time
from procguard.protocol import AuditRecord



def test_event_dicts_are_procguardctls_json_lines(events_golden):
    names = events_golden["rule_names"]
    assert len(events_golden["records"]) >= 10
    for sample in events_golden["records"]:
        record = AuditRecord.from_bytes(bytes.fromhex(sample["hex"]))
        name = names[record.rule_id] if record.rule_id < len(names) else None
        ours = AuditEvent.from_record(record, name).as_dict()
        theirs = json.loads(sample["line"])
        assert set(ours) == set(theirs), sample["line"]
        for key, value in theirs.items():
            assert ours[key] == value, key


def test_policy_records_are_events_with_their_own_names(events_golden):
    policies = [
        AuditEvent.from_record(AuditRecord.from_bytes(bytes.fromhex(sample["hex"])))
        for sample in events_golden["records"]
        if json.loads(sample["line"])["Object"] == "policy"
    ]
    assert {event.policy_source for event in policies} == {"boot", "control", "registry"}
    assert {event.mode for event in policies} == {"policy-applied", "policy-rejected"}
    rejected = next(event for event in policies if event.mode == "policy-rejected")
    assert rejected.as_dict()["Status"] == "0xC000000D"
    assert rejected.as_dict()["PolicyId"] == "0xba8cd4bc"


def test_ask_fields_of_events():
    record = AuditRecord(7, 0, "process", False, 1, 0, 2, 3, 0, 0, 0x1FFFFF, 0x1FFFFE,
                         0x20000001, 4, "ask", "timed-out", 250_000)
    event = AuditEvent.from_record(record, "ask-agent")
    values = event.as_dict()
    assert values["AskOutcome"] == "timed-out"
    assert values["AskWaitMicroseconds"] == 250_000
    assert values["ResultCode"] == 0x20000001
    assert values["Mode"] == "ask" and values["Rule"] == "ask-agent"
    assert event.rule_name == "ask-agent" and event.sequence == 7


def test_utc_time_matches_procguardctl_at_the_edges():
    unix = 116_444_736_000_000_000
    day = 864_000_000_000
    assert utc_time(0) == "1601-01-01 00:00:00.000"
    assert utc_time(unix) == "1970-01-01 00:00:00.000"
    assert utc_time(unix + 11_322 * day + day - 1) == "2000-12-31 23:59:59.999"
    assert utc_time(unix + 47_541 * day) == "2100-03-01 00:00:00.000"
    assert utc_time(-1) == "1600-12-31 23:59:59.999"
    assert filetime_to_datetime(unix) == datetime(1970, 1, 1, tzinfo=timezone.utc)
