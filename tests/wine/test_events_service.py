"""The events service (package/procguard-events.exe), under Debian's wine64,
tried as a new user would: `procguardctl.exe service install` from the
package folder (with the hidden `--replay` source: a file of raw audit
records stands in for the driver, which Wine cannot load), Wine's `sc start`,
the records appear in the JSON-lines file and the Prometheus textfile, `sc
stop` stops it promptly, `service uninstall` removes the service and the
event source (and a second uninstall says so). The Event Log calls are seen
through Wine's debug channels: Wine's ReportEventW logs its arguments (event
type, event id, number of strings) and, on the `eventlog` channel, each
insertion string; the console mode is run with `WINEDEBUG=+eventlog` and
every event it reported is checked: id, type, strings in their order.

The replay file is written with the Python package's own encoder
(python/procguard, independent of the Rust one). The prefix and the Wine
environment are those of test_windows_programs.py.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from test_windows_programs import (
    PREFIX,
    REPO,
    WINE,
    WINESERVER,
    install_wine8_shims,
    packaged,
    run,
    wine_env,
)

import sys

sys.path.insert(0, str(REPO / "python"))
from procguard.protocol import AuditRecord  # noqa: E402

SERVICE = "procguard-events"
SOURCE_KEY = r"HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\procguard"
# 2022-06-18 04:26:40 UTC as a FILETIME.
T0 = 133_000_000_000_000_000
# messages.rs: the event ids and ReportEventW types (4 information,
# 2 warning, 1 error).
STARTED, STOPPED, STRIPPED, AUDITED, ASKED, APPLIED, REJECTED, DROPPED = 1, 2, 10, 11, 12, 20, 21, 30
INFORMATION, WARNING, ERROR = 4, 2, 1


def handle_record(sequence, mode, **fields):
    values = dict(
        sequence=sequence,
        timestamp=T0 + sequence * 10_000,
        object="process",
        duplication=False,
        process_id=4242,
        thread_id=0,
        originator_process_id=5150,
        originator_thread_id=5151,
        source_process_id=0,
        target_process_id=0,
        original_desired_access=0x1FFFFF,
        desired_access=0x1000,
        result_code=0,
        rule_id=0,
        mode=mode,
    )
    values.update(fields)
    return AuditRecord(**values)


def replay_records():
    """Stripped, audited, asked; then a gap of 3 (records dropped); then a
    policy rejected by the registry source."""
    return [
        handle_record(0, "enforce"),
        handle_record(1, "audit", desired_access=0x1FFFFF),
        handle_record(2, "ask", ask_outcome="timed-out", ask_wait_us=250_000),
        handle_record(
            6,
            "policy-rejected",
            object="policy",
            process_id=0,
            originator_process_id=0,
            originator_thread_id=0,
            original_desired_access=0,
            desired_access=6,
            source_process_id=3,
            rule_id=0xBA8CD4BC,
            result_code=-1073741811,
        ),
    ]


@pytest.fixture(scope="module")
def wine():
    """Runs a Windows program in the shared prefix: `wine(args, cwd,
    debug="-all")` -> (code, stdout, stderr)."""
    if not WINE.exists():
        pytest.fail(
            f"{WINE} is missing: install Debian's wine64 (apt-get install --no-install-recommends wine64)"
        )
    env = wine_env()
    PREFIX.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(WINESERVER), "--kill"], env=env, capture_output=True, timeout=60)
    if not (PREFIX / "system.reg").exists():
        code, out, err = run([str(WINE), "wineboot", "--init"], REPO, env)
        subprocess.run([str(WINESERVER), "--wait"], env=env, capture_output=True, timeout=120)
        assert code == 0 and (PREFIX / "system.reg").exists(), f"wineboot failed ({code}):\n{out}{err}"
    install_wine8_shims()
    subprocess.run([str(WINESERVER), "--persistent"], env=env, check=True, timeout=60)

    def wine_run(args, cwd, debug="-all"):
        return run([str(WINE), *map(str, args)], cwd, dict(env, WINEDEBUG=debug))

    try:
        # A service an interrupted run left behind goes first.
        wine_run(["sc", "stop", SERVICE], REPO)
        wine_run(["sc", "delete", SERVICE], REPO)
        yield wine_run
    finally:
        subprocess.run([str(WINESERVER), "--kill"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def replay(tmp_path):
    path = tmp_path / "replay.bin"
    path.write_bytes(b"".join(record.to_bytes() for record in replay_records()))
    return path


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} within {seconds} s")


def service_state(wine):
    code, out, _ = wine(["sc", "query", SERVICE], REPO)
    if code != 0:
        return None
    match = re.search(r"STATE\s*:\s*\d+\s+(\w+)", out)
    return match.group(1) if match else out


def metric(text, series):
    for line in text.splitlines():
        if not line.startswith("#") and line.rsplit(" ", 1)[0] == series:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_install_start_records_appear_stop_uninstall(wine, replay, tmp_path):
    ctl = packaged("procguardctl.exe")
    events_exe = packaged("procguard-events.exe")
    jsonl = tmp_path / "events.jsonl"
    prom = tmp_path / "procguard.prom"
    # Installed from the package folder: the service's program is the
    # procguard-events.exe beside procguardctl.exe.
    code, out, err = wine(
        [ctl, "service", "install", "--replay", replay, "--json", jsonl, "--textfile", prom],
        ctl.parent,
    )
    assert code == 0, out + err
    assert out.splitlines()[0] == f"installed service {SERVICE} (auto start)", out
    assert "registered event source procguard (Application log, messages from " in out
    assert err == "", err
    code, out, _ = wine(["reg", "query", SOURCE_KEY], REPO)
    assert code == 0, out
    message_file = re.search(r"EventMessageFile\s+REG_EXPAND_SZ\s+(.+)", out)
    assert message_file and message_file.group(1).strip().lower().endswith(r"\package\procguard-events.exe"), out
    assert re.search(r"TypesSupported\s+REG_DWORD\s+0x7\b", out), out
    assert events_exe.is_file()
    assert service_state(wine) == "STOPPED", "install does not start the service"
    try:
        code, out, err = wine(["sc", "start", SERVICE], REPO)
        assert code == 0, out + err
        lines = wait_for(
            lambda: jsonl.is_file() and len(jsonl.read_text().splitlines()) == 5 and jsonl.read_text().splitlines(),
            30,
            "the 4 records and the loss in the JSON file",
        )
        assert service_state(wine) == "RUNNING"
        records = [json.loads(line) for line in lines]
        assert [r.get("Sequence") for r in records] == [0, 1, 2, None, 6]
        assert [r.get("Mode") for r in records[:3]] == ["enforce", "audit", "ask"]
        assert records[0]["SourceProcessId"] == 5150 and records[0]["TargetProcessId"] == 4242
        assert records[0]["GrantedAccess"] == "0x1000" and records[0]["OriginalDesiredAccess"] == "0x1fffff"
        assert records[0]["SourceImage"] is None and records[0]["TargetImage"] is None
        assert records[2]["AskOutcome"] == "timed-out"
        assert records[3]["Event"] == "records-dropped" and records[3]["Count"] == 3, records[3]
        assert records[4]["Mode"] == "policy-rejected" and records[4]["PolicySource"] == "registry"
        text = wait_for(
            lambda: prom.is_file() and metric(prom.read_text(), 'procguard_events_records_written_total{sink="json"}') == 4 and prom.read_text(),
            30,
            "the textfile counting the 4 records",
        )
        assert metric(text, 'procguard_events_records_written_total{sink="eventlog"}') == 4, text
        assert metric(text, "procguard_events_records_read_total") == 4
        assert metric(text, "procguard_events_records_lost_total") == 3
        assert metric(text, "procguard_events_driver_reachable") == 1
        # The driver's own families are there too (the replay's stand-in).
        assert metric(text, "procguard_requests_audited_total") == 3, text
        assert not (tmp_path / "procguard.prom.tmp").exists()

        started = time.monotonic()
        code, out, err = wine(["sc", "stop", SERVICE], REPO)
        assert code == 0, out + err
        wait_for(lambda: service_state(wine) == "STOPPED", 15, "the service stopped")
        assert time.monotonic() - started < 10
        # Its last textfile: no driver open any more.
        assert metric(prom.read_text(), "procguard_events_driver_reachable") == 0
        assert len(jsonl.read_text().splitlines()) == 5, "nothing read twice"
    finally:
        code, out, err = wine([ctl, "service", "uninstall"], ctl.parent)
    assert code == 0, out + err
    assert out.splitlines() == [f"removed service {SERVICE}", "removed event source procguard"], out
    assert service_state(wine) is None, "the service is gone"
    code, out, _ = wine(["reg", "query", SOURCE_KEY], REPO)
    assert code != 0, out
    code, out, err = wine([ctl, "service", "uninstall"], ctl.parent)
    assert code == 0, out + err
    assert out.splitlines() == [f"service {SERVICE} is not installed", "event source procguard is not registered"]


def test_install_names_a_missing_program(wine, tmp_path):
    ctl = packaged("procguardctl.exe")
    code, out, err = wine([ctl, "service", "install", "--exe", tmp_path / "nowhere.exe"], ctl.parent)
    assert code == 1, out + err
    assert "nowhere.exe does not exist" in err, err
    assert service_state(wine) is None


# Wine's ReportEventW: a FIXME with its arguments (handle, type, category,
# event id, sid, number of strings, ...), then each string on the eventlog
# channel (trace/warn/err by the event type).
REPORT = re.compile(
    r"ReportEventW \([0-9A-Fa-f]+,0x([0-9a-f]{4}),0x[0-9a-f]{4},0x([0-9a-f]{8}),[0-9A-Fa-f]+,0x([0-9a-f]{4}),"
)
STRING = re.compile(r":eventlog:ReportEventW L\"(.*)\"$")


def reported_events(stderr):
    """[(type, id, [strings])] in the order they were reported."""
    events = []
    for line in stderr.splitlines():
        match = REPORT.search(line)
        if match:
            kind, ident, count = (int(group, 16) for group in match.groups())
            events.append((kind, ident, count, []))
            continue
        match = STRING.search(line)
        if match and events:
            events[-1][3].append(match.group(1).replace('\\"', '"').replace("\\\\", "\\"))
    for kind, ident, count, strings in events:
        assert len(strings) == count, (ident, count, strings)
    return [(kind, ident, strings) for kind, ident, _, strings in events]


def test_console_mode_reports_each_kind_with_its_id_type_and_strings(wine, replay, tmp_path):
    events_exe = packaged("procguard-events.exe")
    code, out, err = wine(
        [events_exe, "run", "--console", "--once", "--replay", replay],
        tmp_path,
        debug="+eventlog",
    )
    assert code == 0, err[-3000:]
    assert "RegisterEventSourceW ((null),L\"procguard\")" in err
    events = reported_events(err)
    assert [(kind, ident) for kind, ident, _ in events] == [
        (INFORMATION, STARTED),
        (WARNING, STRIPPED),
        (INFORMATION, AUDITED),
        (INFORMATION, ASKED),
        (WARNING, DROPPED),
        (ERROR, REJECTED),
        (INFORMATION, STOPPED),
    ], events
    started, stripped, audited, asked, dropped, rejected, stopped = (strings for _, _, strings in events)
    assert started[1] == "eventlog"
    # messages.rs HANDLE_FIELDS order: UtcTime, SourceProcessId,
    # SourceThreadId, SourceImage, TargetProcessId, TargetImage,
    # TargetThreadId, Object, Operation, GrantedAccess,
    # OriginalDesiredAccess, Rule, RuleId, Mode, AskOutcome,
    # AskWaitMicroseconds, DuplicateSourceProcessId,
    # DuplicateTargetProcessId, Sequence.
    assert stripped == [
        "2022-06-18 04:26:40.000", "5150", "5151", "-", "4242", "-", "0", "process", "open",
        "0x1000", "0x1fffff", "0", "0", "enforce", "-", "0", "0", "0", "0",
    ]
    assert audited[9] == "0x1fffff" and audited[13] == "audit" and audited[18] == "1"
    assert asked[13:16] == ["ask", "timed-out", "250000"]
    # UtcTime (now), Count, DriverDroppedTotal, Reason.
    assert dropped[1:3] == ["3", "0"], dropped
    assert "sequence" in dropped[3]
    # UtcTime, PolicyId, PolicySource, Rules, Status, SourceProcessId,
    # SourceThreadId, Sequence.
    assert rejected == ["2022-06-18 04:26:40.006", "0xba8cd4bc", "registry", "6", "0xC000000D", "0", "0", "6"]
    assert stopped == ["4", "3"]
