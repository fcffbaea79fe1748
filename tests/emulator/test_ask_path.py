"""Issue 12: the ask path of the real driver. A handler process connects
through the real IOCTL path, its workers' get-requests pend in the driver's
manual queue, a handle request matching an ask rule is handed to one of
them, and while the driver's callback waits on the slot's event the
harness runs the handler's side on a second thread (kernel_threads.py):
the answer goes back through IOCTL_ASK_REPLY and the real queue, and the
callback resumes with it. Every test runs under the IRQL verifier."""

from __future__ import annotations

import struct

import pytest

from ask_handler import (
    ASK_REQUEST_SIZE,
    CONNECT_RESPONSE_SIZE,
    IOCTL_ASK_CONNECT,
    IOCTL_ASK_DISCONNECT,
    IOCTL_ASK_GET_REQUEST,
    IOCTL_ASK_REPLY,
    IOCTL_WAIT_EVENTS,
    STATUS_CANCELLED,
    STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_PARAMETER,
    STATUS_NOT_FOUND,
    STATUS_SHARING_VIOLATION,
    AskRequest,
    HandlerProcess,
    connect_bytes,
    reply_bytes,
)
from kernel_harness import (
    IOCTL_GET_STATUS,
    OB_OPERATION_HANDLE_CREATE as CREATE,
    OB_OPERATION_HANDLE_DUPLICATE as DUPLICATE,
    STATUS_PENDING,
    STATUS_SIZE,
    STATUS_SUCCESS,
    image_path,
    reg_binary,
)
from kernel_threads import STATUS_TIMEOUT
from test_control_plane import decode_status

PROCESS_TERMINATE = 0x0001
PROCESS_VM_OPERATION = 0x0008
PROCESS_VM_READ = 0x0010
PROCESS_VM_WRITE = 0x0020
PROCESS_SUSPEND_RESUME = 0x0800
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_ALL_ACCESS = 0x1FFFFF
THREAD_TERMINATE = 0x0001
THREAD_SUSPEND_RESUME = 0x0002
THREAD_ALL_ACCESS = 0x1FFFFF

AGENT = 1000  # agent.exe: enforce strips VM_WRITE; asks about TERMINATE | SUSPEND_RESUME (fail closed)
KIOSK = 1100  # kiosk.exe: asks about TERMINATE, on timeout allow
ATTACKER = 2000  # tool.exe
EDITOR = 3000  # editor.exe
HANDLER = 5000  # handler.exe: the handler process
CSRSS = 400
SYSTEM = 4
SYSTEM32 = "\\Device\\HarddiskVolume3\\Windows\\System32"
LONG_NAME = "a" * 70 + ".exe"  # 74 units: cut at 64 and flagged
LONG = 6000

TIMEOUT_MS = 250
ENFORCE, ASK_AGENT, ASK_KIOSK, ASK_THREADS = 0, 1, 2, 3
ASK_RIGHTS = PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME

POLICY = """
[settings]
ask_timeout_ms = TIMEOUT_MS
EXTRA

[[rule]]
name = "agent-no-write"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_VM_WRITE"]

[[rule]]
name = "agent-ask"
target = { name = ["agent.exe", "LONG_NAME"] }
objects = "process"
strip = ["PROCESS_TERMINATE", "PROCESS_SUSPEND_RESUME"]
mode = "ask"
on_timeout = "strip"

[[rule]]
name = "kiosk-ask"
target = { name = "kiosk.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]
mode = "ask"
on_timeout = "allow"

[[rule]]
name = "agent-threads-ask"
target = { name = "agent.exe" }
objects = "thread"
strip = ["THREAD_TERMINATE"]
mode = "ask"
""".replace("TIMEOUT_MS", str(TIMEOUT_MS)).replace("LONG_NAME", LONG_NAME)

IMAGES = {
    AGENT: image_path("agent.exe"),
    KIOSK: image_path("kiosk.exe"),
    ATTACKER: image_path("tool.exe"),
    EDITOR: image_path("editor.exe"),
    CSRSS: SYSTEM32 + "\\csrss.exe",
    LONG: image_path(LONG_NAME),
}


def policy(extra: str = "") -> str:
    return POLICY.replace("EXTRA", extra)


def boot(kernel, compile_policy, extra: str = ""):
    kernel.parameters = {"Policy": reg_binary(compile_policy(policy(extra)))}
    for pid, path in IMAGES.items():
        kernel.new_process(pid, path)
    kernel.new_process(HANDLER, image_path("handler.exe"))
    kernel.thread = {pid: kernel.new_thread(pid) for pid in (AGENT, ATTACKER)}
    kernel.load()
    return kernel


@pytest.fixture
def driver(kernel, compile_policy):
    return boot(kernel, compile_policy)


@pytest.fixture
def handler(driver):
    return HandlerProcess(driver, HANDLER).start(workers=1)


def open_process(kernel, target, access, requester, **extra):
    return kernel.pre_operation(
        operation=CREATE, object_kind="process", target=kernel.eprocess(target),
        desired_access=access, current_pid=requester, **extra,
    ).desired_access


def status(kernel) -> dict:
    result = kernel.ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE)
    assert result.status == STATUS_SUCCESS
    return decode_status(result.output)


def ask_counters(kernel) -> dict:
    return status(kernel)["ask"]["counters"]


def counters(**nonzero) -> dict:
    names = ("asked", "answered", "timed_out", "no_handler", "pool_full", "unaskable", "cancelled", "late_replies")
    return {name: nonzero.get(name, 0) for name in names}


def ask_waits(kernel):
    return [wait for wait in kernel.waits]


# ------------------------------------------------------------- connection


def test_a_handler_connects_on_its_handle_and_the_status_shows_it(driver):
    handler = HandlerProcess(driver, HANDLER)
    result = handler.connect()
    assert (result.status, result.information) == (STATUS_SUCCESS, CONNECT_RESPONSE_SIZE)
    version, slots, timeout_ms, handler_pid = struct.unpack("<4I", result.output)
    assert (version, slots, timeout_ms, handler_pid) == (1, 64, TIMEOUT_MS, HANDLER)
    report = status(driver)
    assert report["flags"] & 4, "a handler is connected"
    assert report["ask"] | {"counters": None} == {
        "handler_pid": HANDLER, "counters": None, "timeout_ms": TIMEOUT_MS, "slots": 64,
        "in_flight": 0, "workers_waiting": 0,
    }
    handler.pend_workers(2)
    assert status(driver)["ask"]["workers_waiting"] == 2
    # One connection at a time.
    other = driver.open_handle(pid=EDITOR)
    second = driver.ioctl(IOCTL_ASK_CONNECT, connect_bytes(), CONNECT_RESPONSE_SIZE, file=other)
    assert second.status == STATUS_SHARING_VIOLATION
    # The other ask IOCTLs need the connected handle.
    for code, data, length in ((IOCTL_ASK_GET_REQUEST, b"", ASK_REQUEST_SIZE),
                               (IOCTL_ASK_REPLY, reply_bytes(0, 0, 0), 0), (IOCTL_ASK_DISCONNECT, b"", 0)):
        assert driver.ioctl(code, data, length, file=other).status == STATUS_INVALID_DEVICE_STATE, hex(code)


@pytest.mark.parametrize("data", [connect_bytes(version=2), connect_bytes(flags=1), connect_bytes()[:7],
                                  connect_bytes() + b"\0"], ids=["version", "flags", "short", "long"])
def test_a_malformed_connect_is_refused_and_connects_nobody(driver, data):
    handler = HandlerProcess(driver, HANDLER)
    assert handler.connect(data).status == STATUS_INVALID_PARAMETER
    assert status(driver)["ask"]["handler_pid"] == 0


# ---------------------------------------------------------------- answers


def test_an_answer_removes_the_bits_the_handler_removes_through_the_real_reply_path(driver, handler):
    handler.remove = PROCESS_TERMINATE
    desired = PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME | PROCESS_VM_WRITE | PROCESS_VM_READ
    granted = open_process(driver, AGENT, desired, ATTACKER)
    assert granted == PROCESS_SUSPEND_RESUME | PROCESS_VM_READ, "enforce strips VM_WRITE, the handler TERMINATE"
    (request,) = handler.received
    agent, tool = driver.running[AGENT], driver.running[ATTACKER]
    assert (request.object, request.duplication, request.rule_id) == ("process", False, ASK_AGENT)
    assert (request.process_id, request.thread_id) == (AGENT, 0)
    assert (request.originator_process_id, request.originator_thread_id) == (ATTACKER, driver.current_tid)
    assert (request.source_process_id, request.target_process_id, request.requester_pid) == (0, 0, ATTACKER)
    assert request.original_desired_access == desired
    assert request.desired_access == desired & ~PROCESS_VM_WRITE, "the handler sees what the enforce rules left"
    assert request.ask_rights == ASK_RIGHTS
    assert request.fallback_access == desired & ~PROCESS_VM_WRITE & ~ASK_RIGHTS
    assert request.timeout_ms == TIMEOUT_MS
    assert (request.requester_create_time, request.target_create_time) == (tool.create_time, agent.create_time)
    assert (request.requester_image, request.target_image) == ("tool.exe", "agent.exe")
    assert not request.requester_name_cut and not request.target_name_cut
    assert request.timestamp >= driver.system_time - 10_000_000
    (wait,) = driver.waits
    assert (wait.switched, wait.status, wait.timeout_100ns) == (True, STATUS_SUCCESS, TIMEOUT_MS * 10_000)
    assert [reply.status for reply in handler.replies] == [STATUS_SUCCESS]
    (record,) = driver.drain_audit_records()
    assert (record.mode, record.rule_id, record.ask_outcome) == ("ask", ASK_AGENT, "answered")
    assert (record.original_desired_access, record.desired_access) == (desired, granted)
    assert record.result_code == 0 and record.reserved == 0
    assert ask_counters(driver) == counters(asked=1, answered=1)
    assert status(driver)["ask"]["in_flight"] == 0
    assert status(driver)["ask"]["workers_waiting"] == 1, "the worker went back for the next request"


def test_an_answer_never_adds_a_bit_even_when_the_reply_asks_for_everything(driver, handler):
    handler.decide = lambda data: reply_bytes(*struct.unpack_from("<II", data, 0), 0xFFFFFFFF, 7)
    granted = open_process(driver, AGENT, PROCESS_TERMINATE | PROCESS_VM_WRITE, ATTACKER)
    assert granted == PROCESS_TERMINATE, "VM_WRITE stays stripped by the enforce rule"
    (record,) = driver.drain_audit_records()
    assert (record.ask_outcome, record.result_code, record.desired_access) == ("answered", 7, PROCESS_TERMINATE)


def test_each_answer_goes_to_its_own_request_across_several_requests(driver, handler):
    answers = iter([PROCESS_TERMINATE, 0, PROCESS_SUSPEND_RESUME])

    def decide(data):
        request = AskRequest.decode(data)
        return reply_bytes(request.id, request.generation, request.desired_access & ~next(answers))

    handler.decide = decide
    results = [open_process(driver, AGENT, ASK_RIGHTS, ATTACKER) for _ in range(3)]
    assert results == [PROCESS_SUSPEND_RESUME, ASK_RIGHTS, PROCESS_TERMINATE]
    generations = [(r.id, r.generation) for r in handler.received]
    assert len(set(generations)) == 3, f"each request has its own id/generation: {generations}"
    assert ask_counters(driver) == counters(asked=3, answered=3)


def test_a_request_waits_in_the_fifo_until_a_worker_arrives(driver):
    handler = HandlerProcess(driver, HANDLER)
    assert handler.connect().status == STATUS_SUCCESS  # connected, no worker pended
    handler.remove = PROCESS_TERMINATE
    assert open_process(driver, AGENT, ASK_RIGHTS, ATTACKER) == PROCESS_SUSPEND_RESUME
    (wait,) = driver.waits
    assert wait.switched and wait.status == STATUS_SUCCESS
    assert len(handler.received) == 1, "the worker's get-request completed at once with the waiting request"


def test_thread_handles_and_duplicates_are_asked_with_their_own_fields(driver, handler):
    handler.remove = THREAD_TERMINATE
    thread = driver.thread[AGENT]
    result = driver.pre_operation(operation=CREATE, object_kind="thread", target=thread,
                                  desired_access=THREAD_TERMINATE | THREAD_SUSPEND_RESUME, current_pid=ATTACKER)
    assert result.desired_access == THREAD_SUSPEND_RESUME
    request = handler.received[-1]
    assert (request.object, request.process_id, request.thread_id) == ("thread", AGENT, driver.threads[thread].tid)
    assert (request.rule_id, request.ask_rights) == (ASK_THREADS, THREAD_TERMINATE)
    # EDITOR duplicates a handle to AGENT out of AGENT into ATTACKER.
    handler.remove = PROCESS_SUSPEND_RESUME
    result = driver.pre_operation(
        operation=DUPLICATE, object_kind="process", target=driver.eprocess(AGENT), desired_access=ASK_RIGHTS,
        source_process=driver.eprocess(AGENT), target_process=driver.eprocess(ATTACKER), current_pid=EDITOR,
    )
    assert result.desired_access == PROCESS_TERMINATE
    request = handler.received[-1]
    assert request.duplication
    assert (request.originator_process_id, request.source_process_id, request.target_process_id) == (
        EDITOR, AGENT, ATTACKER)
    assert request.requester_pid == ATTACKER and request.requester_image == "tool.exe"
    records = driver.drain_audit_records()
    assert [(r.object, r.duplication, r.ask_outcome) for r in records] == [
        ("thread", False, "answered"), ("process", True, "answered")]


def test_a_long_image_name_is_cut_at_64_units_and_flagged(driver, handler):
    open_process(driver, LONG, PROCESS_TERMINATE, ATTACKER)
    (request,) = handler.received
    assert request.target_image == LONG_NAME[:64] and request.target_name_cut


# --------------------------------------------------------------- fallbacks


def test_a_timeout_strips_the_ask_set_when_on_timeout_is_strip(driver, handler):
    handler.behaviour = "silent"
    desired = ASK_RIGHTS | PROCESS_VM_READ
    before = driver.system_time
    assert open_process(driver, AGENT, desired, ATTACKER) == PROCESS_VM_READ
    (wait,) = driver.waits
    assert wait.status == STATUS_TIMEOUT, "the handler received the request and never answered"
    assert len(handler.received) == 1
    assert driver.system_time - before >= TIMEOUT_MS * 10_000
    (record,) = driver.drain_audit_records()
    assert (record.ask_outcome, record.desired_access, record.rule_id) == ("timed-out", PROCESS_VM_READ, ASK_AGENT)
    assert TIMEOUT_MS * 1000 <= record.ask_wait_us <= TIMEOUT_MS * 1000 + 10_000
    assert ask_counters(driver) == counters(asked=1, timed_out=1)


def test_a_timeout_leaves_the_request_when_on_timeout_is_allow(driver, handler):
    handler.behaviour = "silent"
    assert open_process(driver, KIOSK, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == (
        PROCESS_TERMINATE | PROCESS_VM_READ)
    (record,) = driver.drain_audit_records()
    assert (record.ask_outcome, record.rule_id) == ("timed-out", ASK_KIOSK)
    assert ask_counters(driver) == counters(asked=1, timed_out=1)


def test_a_late_reply_is_not_found_counted_and_changes_nothing(driver, handler):
    handler.behaviour = "late"
    assert open_process(driver, AGENT, ASK_RIGHTS, ATTACKER) == 0, "fallback: strip"
    (late,) = handler.late_replies
    result = handler.send_reply(late)
    assert result.status == STATUS_NOT_FOUND
    assert ask_counters(driver) == counters(asked=1, timed_out=1, late_replies=1)
    (record,) = driver.drain_audit_records()
    assert record.ask_outcome == "timed-out"


def test_with_no_handler_the_fallback_applies_at_once_without_waiting(driver):
    assert open_process(driver, AGENT, ASK_RIGHTS | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    assert open_process(driver, KIOSK, PROCESS_TERMINATE, ATTACKER) == PROCESS_TERMINATE
    assert driver.waits == []
    records = driver.drain_audit_records()
    assert [(r.ask_outcome, r.ask_wait_us) for r in records] == [("no-handler", 0), ("no-handler", 0)]
    assert ask_counters(driver) == counters(asked=2, no_handler=2)


@pytest.mark.parametrize("data", [b"\0" * 15, b"\0" * 17, b""], ids=["short", "long", "empty"])
def test_a_malformed_reply_is_invalid_and_counts_nothing(driver, handler, data):
    assert handler.send_reply(data).status == STATUS_INVALID_PARAMETER
    assert ask_counters(driver) == counters()


def test_replies_for_unknown_slots_or_generations_are_not_found_and_counted_late(driver, handler):
    handler.remove = PROCESS_TERMINATE
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)
    (request,) = handler.received
    for reply in (reply_bytes(request.id, request.generation, 0),  # answered already
                  reply_bytes(request.id, request.generation + 1, 0),
                  reply_bytes(9999, 0, 0), reply_bytes(63, request.generation, 0)):
        assert handler.send_reply(reply).status == STATUS_NOT_FOUND
    assert ask_counters(driver) == counters(asked=1, answered=1, late_replies=4)


def test_the_handler_process_is_never_asked_and_gets_the_enforce_rules_only(driver, handler):
    desired = ASK_RIGHTS | PROCESS_VM_WRITE
    assert open_process(driver, AGENT, desired, HANDLER) == ASK_RIGHTS, "no ask, no fallback"
    assert driver.waits == [] and handler.received == []
    records = driver.drain_audit_records()
    assert [(r.mode, r.ask_outcome) for r in records] == [("enforce", None)]
    assert ask_counters(driver)["asked"] == 0


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_kernel_handles_and_critical_requesters_are_never_asked(driver, handler, kind):
    target = driver.eprocess(AGENT) if kind == "process" else driver.thread[AGENT]
    result = driver.pre_operation(operation=CREATE, object_kind=kind, target=target,
                                  desired_access=PROCESS_ALL_ACCESS, kernel_handle=True, current_pid=ATTACKER)
    assert result.desired_access == PROCESS_ALL_ACCESS, "exempt by default: untouched"
    for requester in (CSRSS, SYSTEM):
        result = driver.pre_operation(operation=CREATE, object_kind=kind, target=target,
                                      desired_access=PROCESS_ALL_ACCESS, current_pid=requester)
        assert result.desired_access == PROCESS_ALL_ACCESS
    assert driver.waits == [] and handler.received == [] and driver.drain_audit_records() == []


def test_with_their_exemptions_off_kernel_handles_and_critical_requesters_get_the_fallback_unasked(
        kernel, compile_policy):
    driver = boot(kernel, compile_policy, "exempt_kernel_handles = false\nexempt_critical_requesters = false")
    handler = HandlerProcess(driver, HANDLER).start()
    kernel_handle = driver.pre_operation(operation=CREATE, object_kind="process", target=driver.eprocess(AGENT),
                                         desired_access=ASK_RIGHTS | PROCESS_VM_READ, kernel_handle=True,
                                         current_pid=ATTACKER)
    assert kernel_handle.desired_access == PROCESS_VM_READ
    assert open_process(driver, AGENT, ASK_RIGHTS | PROCESS_VM_READ, CSRSS) == PROCESS_VM_READ
    assert open_process(driver, KIOSK, PROCESS_TERMINATE, SYSTEM) == PROCESS_TERMINATE, "allow on timeout"
    assert driver.waits == [] and handler.received == []
    records = driver.drain_audit_records()
    assert [r.ask_outcome for r in records] == ["unaskable"] * 3
    assert ask_counters(driver) == counters(asked=3, unaskable=3)


def test_at_apc_level_the_request_is_unaskable(driver, handler):
    assert open_process(driver, AGENT, ASK_RIGHTS, ATTACKER, irql=1) == 0
    assert driver.waits == [] and handler.received == []
    assert [r.ask_outcome for r in driver.drain_audit_records()] == ["unaskable"]


def test_with_all_apcs_disabled_the_request_is_unaskable(driver, handler):
    driver.all_apcs_disabled = True
    assert open_process(driver, KIOSK, PROCESS_TERMINATE, ATTACKER) == PROCESS_TERMINATE
    assert driver.waits == [] and handler.received == []
    assert [r.ask_outcome for r in driver.drain_audit_records()] == ["unaskable"]


# --------------------------------------------------- disconnect and unload


@pytest.mark.parametrize("how", ["disconnect", "close"])
def test_a_disconnect_while_waiting_releases_the_waiter_with_its_fallback(driver, handler, how):
    handler.pend_workers(2)  # three workers pended; one gets the request
    handler.behaviour = how
    assert open_process(driver, AGENT, ASK_RIGHTS | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    (wait,) = driver.waits
    assert (wait.switched, wait.status) == (True, STATUS_SUCCESS), "released at once by the event, not timed out"
    (record,) = driver.drain_audit_records()
    assert record.ask_outcome == "cancelled"
    assert len(handler.cancelled_get_requests) == 2, "the idle workers' get-requests are cancelled"
    assert driver.pended() == []
    report = status(driver)
    assert report["ask"]["handler_pid"] == 0 and not report["flags"] & 4
    assert report["ask"]["counters"] == counters(asked=1, cancelled=1)
    # Nobody is connected now: no_handler, and a new handler can connect.
    assert open_process(driver, KIOSK, PROCESS_TERMINATE, ATTACKER) == PROCESS_TERMINATE
    assert ask_counters(driver)["no_handler"] == 1
    again = HandlerProcess(driver, HANDLER + 4)
    assert again.connect().status == STATUS_SUCCESS


def test_closing_the_idle_handlers_handle_cancels_its_workers_and_disconnects(driver, handler):
    driver.close(handler.handle)
    assert [r.status for r in handler.get_requests] == [STATUS_CANCELLED]
    assert status(driver)["ask"]["handler_pid"] == 0
    assert open_process(driver, AGENT, ASK_RIGHTS, ATTACKER) == 0
    assert ask_counters(driver) == counters(asked=1, no_handler=1)


def test_a_cancelled_get_request_leaves_the_queue(driver, handler):
    (request,) = handler.get_requests
    driver.cancel_request(request)
    assert request.status == STATUS_CANCELLED
    assert status(driver)["ask"]["workers_waiting"] == 0


def test_unload_while_waiting_releases_the_waiter_and_completes_every_request(driver, handler):
    handler.pend_workers(1)
    handler.behaviour = "unload"
    assert open_process(driver, AGENT, ASK_RIGHTS | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    (wait,) = driver.waits
    assert (wait.switched, wait.status) == (True, STATUS_SUCCESS)
    assert ("ObUnRegisterCallbacks waits for callbacks", driver.unregistrations[0]) in driver.events
    assert driver.live_registrations == {} and driver.devices == {}
    assert driver.pended() == [], "every pended get-request completed"
    assert [r.status for r in handler.get_requests if r.status != STATUS_SUCCESS] == [STATUS_CANCELLED]
    assert driver.pool == {}, "everything freed once the unload finished"


# ------------------------------------------------------------- pool full


def test_the_65th_simultaneous_request_finds_the_pool_full_and_gets_the_fallback_at_once(driver, handler):
    """64 callbacks wait at once: each wait switches to another requester's
    thread, which makes the next request (kernel_threads.py nests the
    waits); the 65th finds every slot taken. Nobody answers, so all 64 time
    out, innermost first."""
    results = []

    def next_request(_handler, kernel, wait):
        if len(results) < 64:
            kernel.thread_pre_operation(
                pid=ATTACKER, operation=CREATE, object_kind="process", target=kernel.eprocess(AGENT),
                desired_access=ASK_RIGHTS, after=lambda result: results.append(result.desired_access))
            results.append(None)  # placeholder: one more in flight

    handler.behaviour = next_request
    open_process(driver, AGENT, ASK_RIGHTS, ATTACKER)
    assert driver.max_switch_depth_reached == 64
    records = driver.drain_audit_records()
    outcomes = [r.ask_outcome for r in records]
    assert outcomes.count("pool-full") == 1 and outcomes.count("timed-out") == 64, outcomes
    assert outcomes[0] == "pool-full", "the 65th request is decided first, at once"
    assert ask_counters(driver) == counters(asked=65, timed_out=64, pool_full=1)
    assert status(driver)["ask"]["in_flight"] == 0


# ---------------------------------------------------------- events wait


def test_wait_events_completes_at_once_when_records_wait(driver):
    open_process(driver, AGENT, PROCESS_VM_WRITE, ATTACKER)  # enforce: one record
    result = driver.ioctl(IOCTL_WAIT_EVENTS, b"", 8)
    assert (result.status, result.output) == (STATUS_SUCCESS, struct.pack("<Q", 1))


def test_wait_events_pends_until_the_next_audit_record(driver):
    reader = driver.open_handle(pid=EDITOR)
    result = driver.ioctl(IOCTL_WAIT_EVENTS, b"", 8, file=reader)
    assert result.status == STATUS_PENDING
    assert open_process(driver, EDITOR, PROCESS_TERMINATE, ATTACKER) == PROCESS_TERMINATE  # no record
    assert result.request.pending
    open_process(driver, AGENT, PROCESS_VM_WRITE, ATTACKER)
    assert result.request.status == STATUS_SUCCESS
    assert result.request.output == struct.pack("<Q", 1)


def test_a_pended_events_wait_is_cancelled_by_close_and_by_unload(driver):
    reader = driver.open_handle(pid=EDITOR)
    first = driver.ioctl(IOCTL_WAIT_EVENTS, b"", 8, file=reader)
    driver.close(reader)
    assert first.request.status == STATUS_CANCELLED
    second = driver.ioctl(IOCTL_WAIT_EVENTS, b"", 8, file=driver.open_handle(pid=EDITOR))
    assert second.status == STATUS_PENDING
    driver.unload()
    assert second.request.status == STATUS_CANCELLED


# ------------------------------------------------------------- counters


def test_reset_counters_zeroes_the_ask_counters(driver, handler):
    handler.behaviour = "silent"
    open_process(driver, AGENT, ASK_RIGHTS, ATTACKER)
    assert ask_counters(driver)["timed_out"] == 1
    assert driver.ioctl(0x0022A010).status == STATUS_SUCCESS  # IOCTL_RESET_COUNTERS
    assert ask_counters(driver) == counters()
