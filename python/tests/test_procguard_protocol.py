"""The wire format against the bytes the Rust protocol crate produces
(golden/protocol.json, written by crates/procguard-protocol/tests/python_golden.rs)."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from procguard import protocol
from procguard.errors import ProtocolError
from procguard.protocol import (
    AskReply,
    AskRequest,
    AuditRecord,
    ConnectRequest,
    ConnectResponse,
    EventsWaiting,
    PolicyHeader,
    RuleCounters,
    Status,
    encode_set_policy,
    parse_events,
)


def unhex(text: str) -> bytes:
    return bytes.fromhex(text)


def test_constants_ioctl_codes_and_statuses_are_the_rust_ones(protocol_golden):
    constants = protocol_golden["constants"]
    sizes = {
        "ASK_REQUEST_SIZE": AskRequest.SIZE,
        "ASK_REPLY_SIZE": AskReply.SIZE,
        "CONNECT_REQUEST_SIZE": ConnectRequest.SIZE,
        "CONNECT_RESPONSE_SIZE": ConnectResponse.SIZE,
        "STATUS_SIZE": Status.SIZE,
        "EVENTS_HEADER_SIZE": protocol.EventsHeader.SIZE,
        "EVENTS_WAITING_SIZE": EventsWaiting.SIZE,
        "POLICY_HEADER_SIZE": PolicyHeader.SIZE,
        "SET_POLICY_HEADER_SIZE": 8,
        "SET_POLICY_PERSIST": 1,
        "RULE_COUNTERS_HEADER": RuleCounters.HEADER,
        "RULE_COUNTERS_PER_RULE": RuleCounters.PER_RULE,
    }
    for name, value in constants.items():
        actual = sizes[name] if name in sizes else getattr(protocol, name)
        assert actual == value, name
    for name, code in protocol_golden["ioctls"].items():
        assert getattr(protocol, name) == code, name
    assert set(protocol.IOCTL_NAMES) == set(protocol_golden["ioctls"].values())
    for name, status in protocol_golden["statuses"].items():
        assert getattr(protocol, name) == status, name
    assert protocol.ASK_OUTCOMES == {o["code"]: o["name"] for o in protocol_golden["ask_outcomes"]}


def test_ask_requests_decode_and_encode_as_in_rust(protocol_golden):
    for sample in protocol_golden["ask_requests"]:
        data = unhex(sample["hex"])
        request = AskRequest.from_bytes(data)
        expected = {k: v for k, v in sample.items() if k != "hex"}
        assert asdict(request) == expected
        assert request.to_bytes() == data
        assert AskRequest(**expected).to_bytes() == data


def test_malformed_ask_requests_are_refused_like_rust_refuses_them(protocol_golden):
    cases = protocol_golden["malformed_ask_requests"]
    assert len(cases) >= 7
    for case in cases:
        with pytest.raises(ProtocolError):
            AskRequest.from_bytes(unhex(case["hex"]))


def test_replies_and_connects_encode_as_in_rust(protocol_golden):
    for sample in protocol_golden["ask_replies"]:
        data = unhex(sample["hex"])
        reply = AskReply(sample["id"], sample["generation"], sample["desired_access"],
                         sample["result_code"])
        assert reply.to_bytes() == data
        assert AskReply.from_bytes(data) == reply
    # The unsigned spelling of a result code encodes the same.
    assert AskReply(1, 2, 3, 0xC0000022).to_bytes() == AskReply(1, 2, 3, -1073741790).to_bytes()
    with pytest.raises(ProtocolError):
        AskReply.from_bytes(bytes(15))
    connect = protocol_golden["connect_request"]
    assert ConnectRequest().to_bytes() == unhex(connect["hex"])
    assert ConnectRequest.from_bytes(unhex(connect["hex"])) == ConnectRequest()
    with pytest.raises(ProtocolError):
        ConnectRequest.from_bytes(ConnectRequest(version=2).to_bytes())
    with pytest.raises(ProtocolError):
        ConnectRequest.from_bytes(ConnectRequest(flags=1).to_bytes())
    response = protocol_golden["connect_response"]
    decoded = ConnectResponse.from_bytes(unhex(response["hex"]))
    assert asdict(decoded) == {k: v for k, v in response.items() if k != "hex"}
    assert decoded.to_bytes() == unhex(response["hex"])


def _flatten(status: Status) -> dict:
    out = asdict(status)
    return out


def test_status_decodes_and_encodes_as_in_rust(protocol_golden):
    for sample in protocol_golden["statuses_encoded"]:
        data = unhex(sample["hex"])
        status = Status.from_bytes(data)
        expected = {k: v for k, v in sample.items() if k != "hex"}
        assert _flatten(status) == expected
        assert status.to_bytes() == data
    with pytest.raises(ProtocolError):
        Status.from_bytes(bytes(319))
    bad_altitude = bytearray(unhex(protocol_golden["statuses_encoded"][0]["hex"]))
    bad_altitude[104] = 41
    with pytest.raises(ProtocolError):
        Status.from_bytes(bytes(bad_altitude))


def test_status_dict_uses_procguardctl_status_json_names(protocol_golden):
    status = Status.from_bytes(unhex(protocol_golden["statuses_encoded"][0]["hex"]))
    ask = status.as_dict()["Ask"]
    assert ask == {
        "HandlerConnected": True,
        "HandlerProcessId": 3130,
        "TimeoutMs": 250,
        "Slots": 64,
        "InFlight": 3,
        "WorkersWaiting": 8,
        "Counters": {
            "Asked": 100, "Answered": 90, "TimedOut": 4, "NoHandler": 3,
            "PoolFull": 2, "Unaskable": 1, "Cancelled": 0, "LateReplies": 5,
        },
    }
    whole = status.as_dict()
    assert whole["PolicyUpdates"] == {
        "Applied": 3, "Rejected": 1, "LastRejectedStatus": "0xC000000D", "Source": "registry",
    }
    assert whole["PolicyId"] == "0xdeadbeef"
    assert whole["DriverVersion"] == "1.2.3"
    assert whole["Altitude"] == "385201.5"
    assert list(whole["Counters"]) == [
        "Seen", "Modified", "Audited", "SkippedKernel", "SkippedSelf", "Exempt",
        "Unclassified", "EventsDropped", "EventsPending",
    ]


def test_audit_records_of_every_mode_and_ask_outcome_decode_as_in_rust(protocol_golden):
    outcomes = set()
    modes = set()
    for sample in protocol_golden["audit_records"]:
        data = unhex(sample["hex"])
        record = AuditRecord.from_bytes(data)
        expected = {k: v for k, v in sample.items() if k != "hex"}
        assert asdict(record) == expected
        assert record.to_bytes() == data
        outcomes.add(record.ask_outcome)
        modes.add(record.mode)
    assert outcomes == {None, *protocol.ASK_OUTCOMES.values()}
    assert modes == {"enforce", "audit", "ask", "policy-applied", "policy-rejected"}


def test_malformed_audit_records_are_refused():
    good = bytearray(unhex_record())
    for index, value in ((56, 9), (58, 0), (60, 9), (57, 0x10)):
        bad = bytearray(good)
        bad[index] = value
        with pytest.raises(ProtocolError):
            AuditRecord.from_bytes(bytes(bad))
    with pytest.raises(ProtocolError):
        AuditRecord.from_bytes(bytes(good[:63]))


def unhex_record() -> bytes:
    return AuditRecord(1, 2, "process", False, 3, 0, 4, 5, 0, 0, 6, 6, 0, 0, "enforce").to_bytes()


def test_events_response_waiting_and_counters_decode_as_in_rust(protocol_golden):
    sample = protocol_golden["events_response"]
    data = unhex(sample["hex"])
    header, records = parse_events(data)
    assert (header.records, header.remaining, header.dropped) == (
        sample["records"], sample["remaining"], sample["dropped"])
    assert [r.sequence for r in records] == sample["sequences"]
    with pytest.raises(ProtocolError):
        parse_events(data[:-1])
    lying = bytearray(data)
    lying[0] = 3
    with pytest.raises(ProtocolError):
        parse_events(bytes(lying))

    waiting = protocol_golden["events_waiting"]
    assert EventsWaiting.from_bytes(unhex(waiting["hex"])).pending == waiting["pending"]
    assert EventsWaiting(waiting["pending"]).to_bytes() == unhex(waiting["hex"])

    counters = protocol_golden["rule_counters"]
    decoded = RuleCounters.from_bytes(unhex(counters["hex"]))
    assert decoded.policy_id == counters["policy_id"]
    assert [list(rule) for rule in decoded.rules] == counters["rules"]
    assert decoded.to_bytes() == unhex(counters["hex"])
    with pytest.raises(ProtocolError):
        RuleCounters.from_bytes(unhex(counters["hex"])[:-1])


def test_policy_requests_encode_as_in_rust(protocol_golden):
    sample = protocol_golden["set_policy"]
    assert encode_set_policy(unhex(sample["blob"]), persist=True) == unhex(sample["hex"])
    header = protocol_golden["policy_header"]
    decoded = PolicyHeader.from_bytes(unhex(header["hex"]))
    assert (decoded.blob_len, decoded.policy_id) == (header["blob_len"], header["policy_id"])
    assert decoded.to_bytes() == unhex(header["hex"])
    with pytest.raises(ProtocolError):
        encode_set_policy(bytes(protocol.MAX_POLICY_BYTES + 1))


def test_rule_names_are_read_from_a_blob_the_engine_compiled(rights_golden):
    blob = unhex(rights_golden["policy_blob"]["hex"])
    assert protocol.policy_rule_names(blob) == rights_golden["policy_blob"]["rule_names"]
    assert int.from_bytes(blob[12:16], "little") == rights_golden["policy_blob"]["policy_id"]
    with pytest.raises(ProtocolError):
        protocol.policy_rule_names(blob[:60])
    with pytest.raises(ProtocolError):
        protocol.policy_rule_names(b"XXXX" + blob[4:])


def test_every_request_field_is_in_the_golden_samples(protocol_golden):
    names = {f.name for f in fields(AskRequest)}
    assert names == set(protocol_golden["ask_requests"][0]) - {"hex"}
