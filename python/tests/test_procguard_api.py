"""ProcGuard's control-plane calls against the in-memory driver: status,
counters, events (drain and follow), apply_policy; the Windows transport's
behaviour off Windows."""

from __future__ import annotations

import os
import stat
import sys
import threading
import time

import pytest

import procguard
from procguard import PolicyError, ProcGuard
from procguard.protocol import AuditRecord
from procguard.transport import WindowsTransport
from fake_driver import FakeDriver


def record(sequence, rule_id=0, **fields):
    values = dict(sequence=sequence, timestamp=133_497_000_000_000_000, object="process",
                  duplication=False, process_id=4242, thread_id=0, originator_process_id=5150,
                  originator_thread_id=5154, source_process_id=0, target_process_id=0,
                  original_desired_access=0x1FFFFF, desired_access=0x1FFFFE, result_code=0,
                  rule_id=rule_id, mode="enforce")
    values.update(fields)
    return AuditRecord(**values)


@pytest.fixture
def blob(rights_golden):
    return bytes.fromhex(rights_golden["policy_blob"]["hex"])


def test_status_and_counters(blob):
    driver = FakeDriver()
    driver.blob, driver.policy_id = blob, int.from_bytes(blob[12:16], "little")
    driver.rule_counts = [(5, 1), (3, 0)]
    driver.counters["asked"] = 4
    guard = ProcGuard(driver)
    status = guard.status()
    assert status.ask.counters.asked == 4 and status.rule_count == 2
    assert status.as_dict()["Ask"]["HandlerConnected"] is False
    report = guard.counters()
    assert [(r.rule_id, r.name, r.hits, r.strips) for r in report.rules] == [
        (0, "keep-agent-alive", 5, 1), (1, "watch-ünïcode", 3, 0)]
    assert report.as_dict()["AskCounters"]["Asked"] == 4


def test_events_drain_with_rule_names_and_stop_when_empty(blob):
    driver = FakeDriver()
    driver.blob, driver.policy_id = blob, int.from_bytes(blob[12:16], "little")
    driver.add_records(*(record(n, rule_id=n % 3) for n in range(300)))
    events = list(ProcGuard(driver).events())
    assert [e.sequence for e in events] == list(range(300)), "more than one read"
    assert events[0].rule_name == "keep-agent-alive" and events[2].rule_name is None
    assert events[2].as_dict()["Rule"] == "2"


def test_events_follow_waits_for_records_without_polling():
    driver = FakeDriver()
    guard = ProcGuard(driver)
    stream = guard.events(follow=True)
    received = []

    def consume():
        for event in stream:
            received.append(event.sequence)
            if len(received) == 2:
                return

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.05)
    reads_before = driver.calls.count(procguard.protocol.IOCTL_READ_EVENTS)
    time.sleep(0.2)
    assert driver.calls.count(procguard.protocol.IOCTL_READ_EVENTS) == reads_before, "no polling"
    driver.add_records(record(1))
    time.sleep(0.05)
    driver.add_records(record(2))
    consumer.join(5)
    assert received == [1, 2]


def test_events_follow_ends_when_the_wait_is_cancelled():
    driver = FakeDriver()
    stream = ProcGuard(driver).events(follow=True)
    closer = threading.Timer(0.1, driver.close)
    closer.start()
    assert list(stream) == []


def test_apply_policy_sends_a_blob_as_is(tmp_path, blob):
    driver = FakeDriver()
    path = tmp_path / "policy.bin"
    path.write_bytes(blob)
    policy_id = ProcGuard(driver).apply_policy(path, persist=True)
    assert driver.blob == blob and driver.persisted
    assert policy_id == int.from_bytes(blob[12:16], "little")


def _fake_procguardctl(tmp_path, blob):
    """A stand-in procguardctl: `compile SRC -o OUT` writes the blob."""
    script = tmp_path / "procguardctl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "args = sys.argv[1:]\n"
        "if 'bad' in open(args[1]).read():\n"
        "    sys.stderr.write('error: line 1: bad policy\\n'); sys.exit(2)\n"
        f"open(args[3], 'wb').write(bytes.fromhex('{blob.hex()}'))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_apply_policy_compiles_toml_with_procguardctl(tmp_path, blob, monkeypatch):
    tool = _fake_procguardctl(tmp_path, blob)
    policy = tmp_path / "ask.toml"
    policy.write_text("[settings]\n")
    driver = FakeDriver()
    assert ProcGuard(driver, procguardctl=str(tool)).apply_policy(policy)
    assert driver.blob == blob and not driver.persisted
    # Found through PROCGUARDCTL too.
    monkeypatch.setenv("PROCGUARDCTL", str(tool))
    assert ProcGuard(FakeDriver()).apply_policy(policy)
    policy.write_text("bad\n")
    with pytest.raises(PolicyError, match="bad policy"):
        ProcGuard(FakeDriver()).apply_policy(policy)


def test_apply_policy_without_procguardctl_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv("PROCGUARDCTL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "p.toml"
    policy.write_text("[settings]\n")
    with pytest.raises(PolicyError, match="PROCGUARDCTL"):
        ProcGuard(FakeDriver()).apply_policy(policy)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows behaviour")
def test_the_windows_transport_imports_anywhere_and_only_opening_fails():
    with pytest.raises(procguard.DriverError, match="only be opened on Windows"):
        WindowsTransport()
    guard = ProcGuard()
    with pytest.raises(procguard.DriverError):
        guard.status()
    guard.stop()


def test_driver_errors_know_cancellation_and_lateness_from_either_code():
    from procguard.errors import DriverError

    assert DriverError("x", ntstatus=0xC0000120).cancelled
    assert DriverError("x", winerror=995).cancelled
    assert DriverError("x", ntstatus=-1073741275).not_found
    assert DriverError("x", winerror=1168).not_found
    assert not DriverError("x", winerror=5).cancelled
