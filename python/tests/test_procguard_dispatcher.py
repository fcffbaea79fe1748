"""The handler's parameters and the dispatcher: request bytes in, reply out."""

from __future__ import annotations

import logging
import time

import pytest

from procguard import (
    PROCESS_SUSPEND_RESUME,
    PROCESS_TERMINATE,
    RESULT_HANDLER_RAISED,
    THREAD_SET_CONTEXT,
    Dispatcher,
    ProcessHandleOperationEventParams,
    ThreadHandleOperationEventParams,
)
from procguard.errors import ProtocolError
from procguard.protocol import AskReply
from fake_driver import FakeDriver, sample_request

# CBProcess's property names (CBFS Filter, on_process_handle_operation).
CBPROCESS_NAMES = (
    "duplication",
    "process_id",
    "originator_process_id",
    "originator_thread_id",
    "source_process_id",
    "target_process_id",
    "original_desired_access",
    "desired_access",
    "result_code",
)


def test_params_have_cbprocess_names_and_meanings():
    request = sample_request(duplication=True, source_process_id=800, target_process_id=900,
                             original_desired_access=0x1FFFFF, desired_access=0x1FF7FF)
    e = ProcessHandleOperationEventParams(request)
    for name in CBPROCESS_NAMES:
        assert hasattr(e, name), name
    assert e.duplication is True
    assert (e.process_id, e.originator_process_id, e.originator_thread_id) == (4242, 5150, 5154)
    assert (e.source_process_id, e.target_process_id) == (800, 900)
    assert e.original_desired_access == 0x1FFFFF
    assert e.desired_access == 0x1FF7FF, "starts as what the enforce rules left"
    assert e.result_code == 0
    # procguard's additions
    assert e.object_kind == "process" and e.thread_id == 0 and e.rule_id == 1
    assert (e.requester_process_id, e.requester_image_name) == (5150, "taskmgr.exe")
    assert (e.target_image_name, e.target_create_time, e.requester_create_time) == ("agent.exe", 2, 1)
    assert (e.ask_rights, e.fallback_access, e.timeout_ms) == (1, 0x1FFFFE, 250)
    assert e.timestamp == request.timestamp and e.time.year == 2024


def test_desired_access_setter_refuses_to_add_bits_and_names_them():
    e = ProcessHandleOperationEventParams(sample_request(desired_access=0x1FF7FE))
    e.desired_access &= ~PROCESS_TERMINATE
    with pytest.raises(ValueError) as refused:
        e.desired_access = 0x1FF7FE | PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME
    message = str(refused.value)
    assert "PROCESS_TERMINATE" in message and "PROCESS_SUSPEND_RESUME" in message
    assert "0x801" in message
    assert e.desired_access == 0x1FF7FE, "a refused value changes nothing"
    # Bits removed earlier may come back: only the request's own are allowed.
    e.desired_access = 0x1FF7FE
    thread = ThreadHandleOperationEventParams(sample_request(object="thread", desired_access=0))
    with pytest.raises(ValueError, match="THREAD_SET_CONTEXT"):
        thread.desired_access = THREAD_SET_CONTEXT
    with pytest.raises(TypeError):
        e.desired_access = "all"  # type: ignore[assignment]
    with pytest.raises(ValueError):
        e.desired_access = -1


def test_result_code_setter_takes_signed_and_unsigned_spellings():
    e = ProcessHandleOperationEventParams(sample_request())
    e.result_code = 0xC0000022
    assert e.result_code == -1073741790
    e.result_code = 5
    assert e.result_code == 5
    with pytest.raises(ValueError):
        e.result_code = 1 << 32


def test_the_reply_carries_the_handlers_access_and_result_code():
    def handler(e):
        e.desired_access &= ~PROCESS_TERMINATE
        e.result_code = 7

    request = sample_request(id=5, generation=9)
    decision = Dispatcher(handler).decide(request.to_bytes())
    assert decision.reply == AskReply(5, 9, 0x1FFFFE, 7)
    assert AskReply.from_bytes(decision.reply_bytes) == decision.reply
    assert decision.error is None and decision.elapsed >= 0


def test_thread_requests_go_to_the_thread_handler_with_thread_params():
    seen = []
    dispatcher = Dispatcher(on_process_handle_operation=lambda e: seen.append("process"),
                            on_thread_handle_operation=lambda e: seen.append(type(e).__name__))
    dispatcher.decide(sample_request(object="thread", thread_id=77))
    assert seen == ["ThreadHandleOperationEventParams"]


def test_no_handler_for_the_kind_answers_the_fallback():
    decision = Dispatcher(on_process_handle_operation=lambda e: None).decide(
        sample_request(object="thread", fallback_access=0x10))
    assert decision.unhandled and decision.reply.desired_access == 0x10


def test_a_handler_that_raises_gets_the_fallback_the_code_a_log_and_on_error(caplog):
    errors = []

    def handler(e):
        e.desired_access = 0
        raise RuntimeError("boom")

    dispatcher = Dispatcher(handler, on_error=lambda error, e: errors.append((error, e.process_id)))
    with caplog.at_level(logging.ERROR, logger="procguard"):
        decision = dispatcher.decide(sample_request(fallback_access=0x1FFFFE))
    assert decision.reply.desired_access == 0x1FFFFE, "the fallback, not the half-made answer"
    assert decision.reply.result_code == RESULT_HANDLER_RAISED == 0x20000001
    assert isinstance(decision.error, RuntimeError)
    assert [(str(error), pid) for error, pid in errors] == [("boom", 4242)]
    assert "handler raised" in caplog.text and "boom" in caplog.text
    assert dispatcher.errors == 1


def test_a_refused_desired_access_in_a_handler_is_a_handler_error():
    def handler(e):
        e.desired_access = 0xFFFFFFFF

    decision = Dispatcher(handler).decide(sample_request(desired_access=1, fallback_access=0))
    assert isinstance(decision.error, ValueError)
    assert decision.reply.result_code == RESULT_HANDLER_RAISED and decision.reply.desired_access == 0


def test_an_on_error_that_raises_does_not_stop_the_reply(caplog):
    def on_error(error, e):
        raise KeyError("worse")

    decision = Dispatcher(lambda e: 1 / 0, on_error=on_error).decide(sample_request())
    assert decision.reply.result_code == RESULT_HANDLER_RAISED
    assert "on_error raised" in caplog.text


def test_malformed_request_bytes_raise_protocol_error():
    with pytest.raises(ProtocolError):
        Dispatcher(lambda e: None).decide(b"\0" * 367)


def test_serve_sends_the_reply_and_reports_a_late_one(caplog):
    driver = FakeDriver(timeout_ms=30)
    driver._connect(b"\x01\0\0\0\0\0\0\0", 16)

    def slow(e):
        time.sleep(0.1)
        e.desired_access = 0

    dispatcher = Dispatcher(slow)
    import threading

    result = {}
    asker = threading.Thread(target=lambda: result.update(outcome=driver.ask()))
    asker.start()
    request = driver.ioctl(0x0022A01C, b"", 368)
    with caplog.at_level(logging.WARNING, logger="procguard"):
        decision = dispatcher.serve(request, driver)
    asker.join()
    assert result["outcome"].outcome == "timed-out"
    assert result["outcome"].access == 0x1FFFFE
    assert decision.late and decision.over_time and decision.elapsed >= 0.1
    assert driver.counters["late_replies"] == 1 and dispatcher.late_replies == 1
    assert "late reply" in caplog.text
