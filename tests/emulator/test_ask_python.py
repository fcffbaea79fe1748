"""Issue 12, "Done when": the seed's example end to end in the emulator.
The handler side is the Python package's own code (python/procguard: its
``Dispatcher`` calls the handler with CBProcess's parameter object and
sends the reply through a ``Transport``, here the harness' one, which runs
IOCTL_ASK_REPLY through the real driver's queue on the handler thread while
the driver's callback waits). ``ProcGuard``'s status, counters and events
read the same driver through the same transport."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time

import pytest

from ask_handler import REPO_ROOT, EmulatorTransport, HandlerProcess, ThreadedTransport, import_package, package_decide
from test_ask_path import (
    AGENT,
    ASK_AGENT,
    ATTACKER,
    HANDLER,
    KIOSK,
    PROCESS_SUSPEND_RESUME,
    PROCESS_TERMINATE,
    PROCESS_VM_READ,
    PROCESS_VM_WRITE,
    THREAD_SUSPEND_RESUME,
    THREAD_TERMINATE,
    boot,
    open_process,
)

procguard = import_package()


@pytest.fixture
def driver(kernel, compile_policy):
    return boot(kernel, compile_policy)


def serve_with(driver, **handlers):
    """A connected handler process whose workers run the package's dispatcher."""
    handler = HandlerProcess(driver, HANDLER)
    transport = EmulatorTransport(handler)
    dispatcher = procguard.Dispatcher(**handlers)
    handler.decide = package_decide(dispatcher, transport)
    handler.start(workers=1)
    return handler, transport, dispatcher


def seed_handler(protected_pid: int):
    """The seed's example as shipped: python/examples/protect_pid.py's own
    handler, the example loaded as `python protect_pid.py PID` would load it
    (its service loop is under a main guard)."""
    example = REPO_ROOT / "python" / "examples" / "protect_pid.py"
    spec = importlib.util.spec_from_file_location("protect_pid_example", example)
    module = importlib.util.module_from_spec(spec)
    saved = sys.argv
    sys.argv = [str(example), str(protected_pid)]
    try:
        spec.loader.exec_module(module)
    finally:
        sys.argv = saved
    assert module.PROTECTED_PID == protected_pid
    return module.on_process_handle_operation


def test_the_seed_example_removes_exactly_process_terminate_from_handles_to_the_chosen_pid(driver):
    handler, transport, dispatcher = serve_with(driver, on_process_handle_operation=seed_handler(AGENT))
    desired = PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME | PROCESS_VM_READ
    # The chosen pid: exactly PROCESS_TERMINATE goes.
    assert open_process(driver, AGENT, desired, ATTACKER) == PROCESS_SUSPEND_RESUME | PROCESS_VM_READ
    # Another process the policy asks about: the handler leaves it alone.
    assert open_process(driver, KIOSK, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == (
        PROCESS_TERMINATE | PROCESS_VM_READ)
    assert dispatcher.decided == 2 and dispatcher.errors == 0
    assert [decision.late for decision in transport.decisions] == [False, False]
    assert [reply.status for reply in handler.replies] == [0, 0]
    assert all(wait.switched and wait.status == 0 for wait in driver.waits)
    # The package reads the same driver: events with the ask outcome, counters.
    guard = procguard.ProcGuard(transport=transport)
    events = [event.as_dict() for event in guard.events()]
    assert [(e["Mode"], e["AskOutcome"], e["TargetProcessId"], e["GrantedAccess"]) for e in events] == [
        ("ask", "answered", AGENT, hex(PROCESS_SUSPEND_RESUME | PROCESS_VM_READ)),
        ("ask", "answered", KIOSK, hex(PROCESS_TERMINATE | PROCESS_VM_READ)),
    ]
    assert events[0]["Rule"] == "agent-ask" and events[0]["RuleId"] == ASK_AGENT
    status = guard.status()
    assert status.ask.handler_pid == HANDLER
    assert (status.ask.counters.asked, status.ask.counters.answered) == (2, 2)


def test_the_handler_sees_cbprocess_fields_and_cannot_add_bits(driver):
    seen = []

    def on_process_handle_operation(e):
        seen.append((e.duplication, e.process_id, e.originator_process_id, e.original_desired_access,
                     e.desired_access))
        with pytest.raises(Exception):
            e.desired_access = e.desired_access | PROCESS_VM_WRITE  # adding a bit is refused
        e.desired_access &= ~PROCESS_TERMINATE
        e.result_code = 0x1234

    handler, _transport, _dispatcher = serve_with(driver, on_process_handle_operation=on_process_handle_operation)
    desired = PROCESS_TERMINATE | PROCESS_VM_WRITE | PROCESS_VM_READ
    assert open_process(driver, AGENT, desired, ATTACKER) == PROCESS_VM_READ
    assert seen == [(False, AGENT, ATTACKER, desired, desired & ~PROCESS_VM_WRITE)]
    (record,) = driver.drain_audit_records()
    assert (record.ask_outcome, record.result_code) == ("answered", 0x1234)


def test_a_thread_handler_decides_thread_handles(driver):
    def on_thread_handle_operation(e):
        e.desired_access &= ~THREAD_TERMINATE

    serve_with(driver, on_thread_handle_operation=on_thread_handle_operation)
    result = driver.pre_operation(operation=1, object_kind="thread", target=driver.thread[AGENT],
                                  desired_access=THREAD_TERMINATE | THREAD_SUSPEND_RESUME, current_pid=ATTACKER)
    assert result.desired_access == THREAD_SUSPEND_RESUME


def test_a_handler_that_raises_gets_the_fallback_its_result_code_and_on_error(driver, caplog):
    errors = []

    def on_process_handle_operation(e):
        raise RuntimeError("handler bug")

    serve_with(driver, on_process_handle_operation=on_process_handle_operation,
               on_error=lambda error, params: errors.append(str(error)))
    with caplog.at_level(logging.ERROR, logger="procguard"):
        assert open_process(driver, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    assert errors == ["handler bug"]
    assert any("handler raised" in message for message in caplog.messages)
    (record,) = driver.drain_audit_records()
    assert (record.ask_outcome, record.result_code) == ("answered", procguard.RESULT_HANDLER_RAISED)
    # The service goes on: the next request is answered too (with its
    # fallback again: on_timeout allow for kiosk.exe keeps TERMINATE).
    assert open_process(driver, KIOSK, PROCESS_TERMINATE, ATTACKER) == PROCESS_TERMINATE
    assert [r.ask_outcome for r in driver.drain_audit_records()] == ["answered"]


def test_a_handler_slower_than_the_timeout_gets_the_fallback_and_its_late_reply_is_counted(driver, caplog):
    """The handler's answer comes after the driver stopped waiting (its
    worker was busy past the timeout): the request got the fallback, the
    package's serve() sees STATUS_NOT_FOUND, logs it and reports it late."""
    handler, transport, dispatcher = serve_with(driver, on_process_handle_operation=seed_handler(AGENT))
    handler.behaviour = "late"
    handler.decide = lambda data: data  # keep the request: it is served after the callback returned
    assert open_process(driver, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    (request_bytes,) = handler.late_replies
    with caplog.at_level(logging.WARNING, logger="procguard"):
        decision = dispatcher.serve(request_bytes, transport)
    assert decision.late and dispatcher.late_replies == 1
    assert any("late reply" in message for message in caplog.messages)
    counters = procguard.ProcGuard(transport=transport).counters()
    assert (counters.ask.timed_out, counters.ask.late_replies) == (1, 1)


# ------------------------------------------- ProcGuard with its worker threads


def started_guard(driver, workers: int, budget: float = 5.0, **handlers):
    transport = ThreadedTransport(driver, HANDLER, budget=budget)
    guard = procguard.ProcGuard(transport=transport)
    for name, handler in handlers.items():
        setattr(guard, name, handler)
    guard.start(workers=workers)
    transport.pump(10, until=lambda: transport.workers_pended() == workers)
    assert transport.workers_pended() == workers, "every worker's get-request pended in the driver"
    return guard, transport


def test_procguard_started_with_worker_threads_decides_requests_end_to_end(driver):
    """ProcGuard.start() as an application calls it: real worker threads
    pend get-requests, the driver hands each request to one, the package's
    dispatcher calls the handler and replies, stop() disconnects."""
    guard, transport = started_guard(driver, 2, on_process_handle_operation=seed_handler(AGENT))
    try:
        assert guard.connection.handler_pid == HANDLER and guard.connection.slots == 64
        assert open_process(driver, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
        assert open_process(driver, KIOSK, PROCESS_TERMINATE, ATTACKER) == PROCESS_TERMINATE
        assert open_process(driver, AGENT, PROCESS_SUSPEND_RESUME | PROCESS_TERMINATE, ATTACKER) == (
            PROCESS_SUSPEND_RESUME)
        assert all(wait.switched and wait.status == 0 for wait in driver.waits) and len(driver.waits) == 3
    finally:
        guard.stop()
    assert not any(worker.is_alive() for worker in guard._workers), "stop() ended the workers"
    status = guard.status()
    assert status.ask.handler_pid == 0
    assert (status.ask.counters.asked, status.ask.counters.answered) == (3, 3)
    assert driver.pended() == []


def test_procguard_with_a_handler_slower_than_the_wait_falls_back_and_counts_the_late_reply(driver, caplog):
    def slow(e):
        time.sleep(0.6)
        e.desired_access &= ~PROCESS_TERMINATE

    guard, transport = started_guard(driver, 1, budget=0.2, on_process_handle_operation=slow)
    try:
        with caplog.at_level(logging.WARNING, logger="procguard"):
            assert open_process(driver, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
            # The reply comes after the driver's wait ended: STATUS_NOT_FOUND.
            transport.pump(5, until=lambda: transport.workers_pended() == 1)
        assert any("late reply" in message for message in caplog.messages)
        counters = guard.counters()
        assert (counters.ask.timed_out, counters.ask.late_replies) == (1, 1)
    finally:
        guard.stop()
