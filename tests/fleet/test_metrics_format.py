"""The Prometheus text procguard writes (`procguardctl metrics`, the
`procguard-events` service's `.prom` file for windows_exporter's textfile
collector), read by a real parser.

`golden/metrics.prom` is rendered by procguardctl's `metrics::render` from a
snapshot in which every counter has its own value and rule names hold
quotes, backslashes, a line break and letters outside ASCII;
`golden/metrics.snapshot.json` holds that snapshot's values
(crates/procguardctl/tests/metrics_golden.rs writes both and fails when they
are stale). Here prometheus-client's `text_string_to_metric_families` (the
Prometheus text format 0.0.4 parser of the official Python client) parses
the file, and every family's type and help, every sample's name, labels
(after unescaping) and value are compared with the snapshot; plus the rules
windows_exporter's textfile collector and the format set: UTF-8 without a
byte order mark, LF line ends, a final newline, no timestamps, each family
declared once with HELP and TYPE before its samples, counters named
`*_total`.
"""

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

GOLDEN = Path(__file__).resolve().parent / "golden"
TEXT = (GOLDEN / "metrics.prom").read_bytes()
SNAPSHOT = json.loads((GOLDEN / "metrics.snapshot.json").read_text(encoding="utf-8"))


def expected_samples(s):
    """(sample name, labels) -> value, and family -> type, from the snapshot:
    the mapping procguard documents (README, `procguardctl metrics`)."""
    c, ask = s["counters"], s["ask"]
    samples = {
        ("procguard_driver_info", (("altitude", s["altitude"]), ("protocol", str(s["protocol_version"])),
                                   ("version", s["driver_version"]))): 1,
        ("procguard_callbacks_registered", ()): int(s["callbacks_registered"]),
        ("procguard_policy_info", (("policy_id", s["policy_id"]), ("source", s["policy_source"]))): 1,
        ("procguard_policy_rules", ()): s["rule_count"],
        ("procguard_policy_updates_total", (("result", "applied"),)): s["policy_updates"]["applied"],
        ("procguard_policy_updates_total", (("result", "rejected"),)): s["policy_updates"]["rejected"],
        ("procguard_tracked_processes", ()): s["tracked_processes"],
        ("procguard_requests_seen_total", ()): c["seen"],
        ("procguard_requests_reduced_total", ()): c["modified"],
        ("procguard_requests_audited_total", ()): c["audited"],
        ("procguard_requests_kernel_skipped_total", ()): c["skipped_kernel"],
        ("procguard_requests_self_skipped_total", ()): c["skipped_self"],
        ("procguard_requests_exempt_total", ()): c["exempt"],
        ("procguard_requests_unclassified_total", ()): c["unclassified"],
        ("procguard_records_dropped_total", ()): c["events_dropped"],
        ("procguard_records_pending", ()): c["events_pending"],
        ("procguard_ask_handler_connected", ()): int(ask["handler_connected"]),
        ("procguard_ask_in_flight", ()): ask["in_flight"],
        ("procguard_ask_asked_total", ()): ask["asked"],
        ("procguard_ask_late_replies_total", ()): ask["late_replies"],
    }
    for outcome in ("answered", "timed_out", "no_handler", "pool_full", "unaskable", "cancelled"):
        samples[("procguard_ask_outcomes_total", (("outcome", outcome),))] = ask[outcome]
    for rule in s["rules"]:
        labels = tuple(sorted({
            "policy_id": s["rules_policy_id"], "rule_id": str(rule["id"]),
            "rule": rule["name"], "mode": rule["mode"],
        }.items()))
        samples[("procguard_rule_hits_total", labels)] = rule["hits"]
        samples[("procguard_rule_strips_total", labels)] = rule["strips"]
    return samples


GAUGES = {
    "procguard_driver_info", "procguard_callbacks_registered", "procguard_policy_info",
    "procguard_policy_rules", "procguard_tracked_processes", "procguard_records_pending",
    "procguard_ask_handler_connected", "procguard_ask_in_flight",
}


@pytest.fixture(scope="module")
def families():
    return list(text_string_to_metric_families(TEXT.decode("utf-8")))


def test_the_file_is_what_the_textfile_collector_reads():
    assert not TEXT.startswith(b"\xef\xbb\xbf"), "a byte order mark"
    text = TEXT.decode("utf-8")
    assert "\r" not in text and text.endswith("\n") and "\n\n" not in text
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) procguard_[a-z_]+ \S", line), line
        else:
            # name{labels} value, and no timestamp after the value.
            assert re.fullmatch(r'procguard_[a-z_]+(\{.*\})? \d+', line), line


def test_every_family_is_declared_once_with_help_and_type_before_its_samples():
    declared, seen_samples = [], set()
    helps, types = {}, {}
    for line in TEXT.decode("utf-8").splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert name not in helps, f"{name}: a second HELP"
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name not in types, f"{name}: a second TYPE"
            assert name in helps, f"{name}: TYPE before HELP"
            types[name] = kind
            declared.append(name)
        else:
            name = re.match(r"[a-z_]+", line).group(0)
            assert declared and declared[-1] == name, f"{line}: not right after its family's TYPE"
            seen_samples.add(name)
    assert set(types) == seen_samples, "a family without samples"
    for name, kind in types.items():
        assert kind in ("counter", "gauge"), name
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"


def test_the_parser_reads_every_family_type_and_help(families):
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a family twice"
    expected = expected_samples(SNAPSHOT)
    sample_names = {name for name, _ in expected}
    # The client names a counter family without `_total`; its samples keep it.
    for family in families:
        kind = "gauge" if family.name in GAUGES else "counter"
        assert family.type == kind, family.name
        full = family.name + ("_total" if kind == "counter" else "")
        assert full in sample_names, family.name
        assert family.documentation and family.documentation.endswith("."), family.name
        raw = re.search(rf"^# HELP {full} (.*)$", TEXT.decode("utf-8"), re.MULTILINE).group(1)
        assert family.documentation == raw.replace("\\n", "\n").replace("\\\\", "\\")
        for sample in family.samples:
            assert sample.timestamp is None
            assert sample.name == full
    assert {f.name + ("_total" if f.type == "counter" else "") for f in families} == sample_names


def test_every_sample_has_the_snapshot_s_labels_and_value(families):
    expected = expected_samples(SNAPSHOT)
    parsed = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families for sample in family.samples
    }
    assert len(parsed) == sum(len(family.samples) for family in families), "a sample twice"
    assert parsed == expected
    # The rule names came through the escaping intact.
    names = {sample.labels["rule"] for family in families for sample in family.samples if "rule" in sample.labels}
    assert names == {rule["name"] for rule in SNAPSHOT["rules"]}
    assert any("\n" in name for name in names) and any('"' in name and "\\" in name for name in names)


def test_every_value_is_distinct_so_a_swapped_family_shows():
    values = list(expected_samples(SNAPSHOT).values())
    big = [value for value in values if value > 4]
    assert len(big) == len(set(big)) and len(big) >= 28


@pytest.mark.parametrize("broken, why", [
    ('procguard_rule_hits_total{rule="a"b"} 1\n', "an unescaped quote"),
    ("procguard_policy_rules four\n", "a value that is not a number"),
    ('procguard_rule_hits_total{rule="a} 1\n', "an unterminated label value"),
])
def test_the_parser_refuses_what_the_escaping_prevents(broken, why):
    """The parser is strict enough for the checks above to mean something."""
    with pytest.raises(ValueError):
        list(text_string_to_metric_families("# TYPE x counter\n" + broken))
