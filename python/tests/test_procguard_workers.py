"""ProcGuard's workers against the in-memory driver: get-request → dispatch →
reply loops, serialize_events, stop while workers wait, failures contained."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from procguard import PROCESS_TERMINATE, RESULT_HANDLER_RAISED, DriverError, ProcGuard
from procguard.protocol import IOCTL_ASK_DISCONNECT, STATUS_SHARING_VIOLATION
from fake_driver import FakeDriver, sample_request


def wait_until(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def protect(pid):
    def handler(e):
        if e.process_id == pid:
            e.desired_access &= ~PROCESS_TERMINATE
    return handler


def test_the_seeds_example_removes_terminate_from_handles_to_the_chosen_pid():
    driver = FakeDriver()
    with ProcGuard(driver) as guard:
        guard.on_process_handle_operation = protect(4242)
        guard.start(workers=2)
        assert guard.connection.handler_pid == 3130
        protected = driver.ask(sample_request(process_id=4242))
        other = driver.ask(sample_request(process_id=4243))
    assert (protected.outcome, protected.access) == ("answered", 0x1FFFFE)
    assert (other.outcome, other.access) == ("answered", 0x1FFFFF)
    assert not guard.active


def test_default_workers_are_four_per_cpu(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    driver = FakeDriver()
    guard = ProcGuard(driver)
    guard.on_process_handle_operation = lambda e: None
    guard.start()
    try:
        wait_until(lambda: driver.workers_waiting == 12)
        assert len(guard._workers) == 12
    finally:
        guard.stop()


def test_start_needs_a_handler_and_refuses_a_second_handler():
    driver = FakeDriver()
    guard = ProcGuard(driver)
    with pytest.raises(ValueError):
        guard.start()
    guard.on_process_handle_operation = lambda e: None
    guard.start(workers=1)
    try:
        with pytest.raises(RuntimeError):
            guard.start()
        rival = ProcGuard(driver)
        rival.on_process_handle_operation = lambda e: None
        with pytest.raises(DriverError) as refused:
            rival.start(workers=1)
        assert refused.value.ntstatus == STATUS_SHARING_VIOLATION
    finally:
        guard.stop()
    with pytest.raises(TypeError):
        guard.on_thread_handle_operation = 5  # type: ignore[assignment]


def test_a_handler_that_raises_gets_the_fallback_and_the_service_keeps_running():
    driver = FakeDriver()
    errors = []
    calls = []

    def handler(e):
        calls.append(e.process_id)
        if e.process_id == 1:
            raise RuntimeError("handler bug")
        e.desired_access &= ~PROCESS_TERMINATE

    with ProcGuard(driver, on_error=lambda error, e: errors.append(str(error))) as guard:
        guard.on_process_handle_operation = handler
        guard.start(workers=1)
        failed = driver.ask(sample_request(process_id=1, fallback_access=0x1FFFFE))
        after = driver.ask(sample_request(process_id=2))
    assert (failed.outcome, failed.access, failed.result_code) == (
        "answered", 0x1FFFFE, RESULT_HANDLER_RAISED)
    assert (after.outcome, after.access) == ("answered", 0x1FFFFE)
    assert errors == ["handler bug"] and calls == [1, 2]


def test_a_slow_handler_times_out_to_the_fallback_its_late_reply_is_counted_and_nothing_hangs():
    driver = FakeDriver(timeout_ms=50)
    release = threading.Event()

    def handler(e):
        if e.process_id == 1:
            release.wait(2)
        e.desired_access = 0

    with ProcGuard(driver) as guard:
        guard.on_process_handle_operation = handler
        guard.start(workers=2)
        started = time.monotonic()
        slow = driver.ask(sample_request(process_id=1, fallback_access=0x1000))
        assert time.monotonic() - started < 1.0, "the wait is bounded by the timeout"
        # The other worker still answers meanwhile.
        fast = driver.ask(sample_request(process_id=2))
        release.set()
        wait_until(lambda: guard.dispatcher.late_replies == 1)
    assert (slow.outcome, slow.access) == ("timed-out", 0x1000)
    assert (fast.outcome, fast.access) == ("answered", 0)
    assert driver.counters["late_replies"] == 1


def _max_concurrency(serialize):
    driver = FakeDriver(timeout_ms=2000)
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def handler(e):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1

    with ProcGuard(driver) as guard:
        guard.on_process_handle_operation = handler
        guard.start(workers=4, serialize_events=serialize)
        wait_until(lambda: driver.workers_waiting == 4)
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda _: driver.ask(), range(4)))
    assert all(o.outcome == "answered" for o in outcomes)
    return state["max"]


def test_serialize_events_runs_one_handler_at_a_time():
    assert _max_concurrency(serialize=True) == 1
    assert _max_concurrency(serialize=False) > 1


def test_stop_while_workers_wait_disconnects_cancels_and_joins_quickly():
    driver = FakeDriver()
    guard = ProcGuard(driver)
    guard.on_thread_handle_operation = lambda e: None
    guard.start(workers=3)
    wait_until(lambda: driver.workers_waiting == 3)
    started = time.monotonic()
    guard.stop()
    assert time.monotonic() - started < 2.0
    assert not guard.active and driver.workers_waiting == 0
    assert IOCTL_ASK_DISCONNECT in driver.calls
    assert not driver.connected and not driver.closed, "a transport passed in stays open"
    assert driver.ask().outcome == "no-handler"
    guard.stop()  # twice is fine


def test_stop_releases_a_request_waiting_for_a_busy_handler_with_its_fallback():
    driver = FakeDriver(timeout_ms=5000)
    entered = threading.Event()
    release = threading.Event()

    def handler(e):
        entered.set()
        release.wait(5)

    guard = ProcGuard(driver)
    guard.on_process_handle_operation = handler
    guard.start(workers=1)
    result = {}
    asker = threading.Thread(target=lambda: result.update(o=driver.ask(sample_request(fallback_access=7))))
    asker.start()
    assert entered.wait(2)
    stopper = threading.Thread(target=guard.stop)
    stopper.start()
    asker.join(2)
    assert result["o"].outcome == "cancelled" and result["o"].access == 7
    release.set()
    stopper.join(5)
    assert not stopper.is_alive() and not guard.active


def test_handlers_can_be_replaced_while_running():
    driver = FakeDriver()
    with ProcGuard(driver) as guard:
        guard.on_process_handle_operation = lambda e: None
        guard.start(workers=1)
        assert driver.ask().access == 0x1FFFFF
        guard.on_process_handle_operation = protect(4242)
        assert driver.ask().access == 0x1FFFFE
