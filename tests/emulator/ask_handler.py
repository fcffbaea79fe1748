"""The user-mode side of the ask path, for the emulator: a handler process
that connects on its own handle, keeps worker get-requests pended in the
driver, and answers the requests they receive while the driver's callback
waits (kernel_threads.py runs the answers on a second thread inside that wait).

What answers is chosen per test (``behaviour``): the Python package's own
dispatcher (python/, when it is importable) or a plain reply, late, none,
a disconnect or a handle close in the middle of the wait.

The AskRequest / AskReply / ConnectRequest layouts are decoded here
independently, from crates/procguard-protocol/src/ask.rs's tables, so a
driver writing a field at the wrong offset fails the tests.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from kernel_harness import STATUS_PENDING, STATUS_SUCCESS, FakeRequest, FileHandle, KernelFault, image_path

REPO_ROOT = Path(__file__).resolve().parents[2]

# crates/procguard-protocol/src/ask.rs
IOCTL_ASK_CONNECT = 0x0022A018
IOCTL_ASK_GET_REQUEST = 0x0022A01C
IOCTL_ASK_REPLY = 0x0022A020
IOCTL_ASK_DISCONNECT = 0x0022A024
IOCTL_WAIT_EVENTS = 0x00226028
ASK_PROTOCOL_VERSION = 1
ASK_REQUEST_SIZE = 368
ASK_REPLY_SIZE = 16
CONNECT_RESPONSE_SIZE = 16
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_INVALID_DEVICE_STATE = 0xC0000184
STATUS_NOT_FOUND = 0xC0000225
STATUS_CANCELLED = 0xC0000120
STATUS_INVALID_PARAMETER = 0xC000000D
HANDLER_RAISED = 0x20000001  # the Python package's result_code for a handler that raised


@dataclass
class AskRequest:
    id: int
    generation: int
    timestamp: int
    object: str
    duplication: bool
    requester_name_cut: bool
    target_name_cut: bool
    rule_id: int
    process_id: int
    thread_id: int
    originator_process_id: int
    originator_thread_id: int
    source_process_id: int
    target_process_id: int
    original_desired_access: int
    desired_access: int
    ask_rights: int
    fallback_access: int
    timeout_ms: int
    requester_pid: int
    requester_create_time: int
    target_create_time: int
    requester_image: str
    target_image: str
    raw: bytes

    @classmethod
    def decode(cls, data: bytes) -> "AskRequest":
        assert len(data) == ASK_REQUEST_SIZE, f"AskRequest of {len(data)} bytes"
        words = struct.unpack_from("<19I", data, 0x10)
        (object_code, flags, rule_id, process_id, thread_id, originator_pid, originator_tid, source, target,
         original, desired, ask_rights, fallback, timeout_ms, requester_pid, reserved, *_rest) = words
        assert object_code in (1, 2), f"object {object_code}"
        assert flags & ~7 == 0, f"flags {flags:#x}"
        assert reserved == 0 and struct.unpack_from("<I", data, 100)[0] == 0 and data[360:] == bytes(8)
        requester_len, target_len = struct.unpack_from("<HH", data, 96)
        assert requester_len <= 64 and target_len <= 64
        for at, length in ((104, requester_len), (232, target_len)):
            assert data[at + 2 * length : at + 128] == bytes(128 - 2 * length), "name padding is zero"
        return cls(
            id=struct.unpack_from("<I", data, 0)[0],
            generation=struct.unpack_from("<I", data, 4)[0],
            timestamp=struct.unpack_from("<q", data, 8)[0],
            object={1: "process", 2: "thread"}[object_code],
            duplication=bool(flags & 1),
            requester_name_cut=bool(flags & 2),
            target_name_cut=bool(flags & 4),
            rule_id=rule_id,
            process_id=process_id,
            thread_id=thread_id,
            originator_process_id=originator_pid,
            originator_thread_id=originator_tid,
            source_process_id=source,
            target_process_id=target,
            original_desired_access=original,
            desired_access=desired,
            ask_rights=ask_rights,
            fallback_access=fallback,
            timeout_ms=timeout_ms,
            requester_pid=requester_pid,
            requester_create_time=struct.unpack_from("<q", data, 80)[0],
            target_create_time=struct.unpack_from("<q", data, 88)[0],
            requester_image=data[104 : 104 + 2 * requester_len].decode("utf-16-le"),
            target_image=data[232 : 232 + 2 * target_len].decode("utf-16-le"),
            raw=bytes(data),
        )


def reply_bytes(request_id: int, generation: int, access: int, result_code: int = 0) -> bytes:
    return struct.pack("<IIIi", request_id, generation, access & 0xFFFFFFFF, result_code)


def connect_bytes(version: int = ASK_PROTOCOL_VERSION, flags: int = 0) -> bytes:
    return struct.pack("<II", version, flags)


def import_package():
    """The Python package of this tree (python/procguard), imported from
    its source directory: the handler side of the tests is its own code."""
    source = str(REPO_ROOT / "python")
    if source not in sys.path:
        sys.path.insert(0, source)
    import procguard  # noqa: PLC0415

    return procguard


def package_decide(dispatcher, transport: "EmulatorTransport") -> Callable[[bytes], Optional[bytes]]:
    """A ``HandlerProcess.decide`` that runs the package's
    ``Dispatcher.serve``: it decides with the user's handler and sends the
    reply through ``transport`` (queued on the handler thread inside a
    wait). Returns None: the reply is already on its way."""

    def decide(data: bytes) -> None:
        transport.decisions.append(dispatcher.serve(data, transport))
        return None

    return decide


class HandlerProcess:
    """A handler process: its handle, its workers' pended get-requests and
    what it does when a request arrives (``behaviour``):

    * "answer": ``decide(request_bytes) -> reply_bytes`` (default: grant
      ``desired_access & ~remove``), reply through the real queue, re-pend
      a get-request (as a worker loop does);
    * "silent": receive, never answer (the callback times out);
    * "late": like silent, the reply is kept in ``late_replies`` to be sent
      after the callback returned;
    * "disconnect": IOCTL_ASK_DISCONNECT from the handler thread mid-wait;
    * "close": the handler closes its handle (or dies) mid-wait: EvtFileCleanup;
    * "unload": the driver is unloaded mid-wait (a system thread).
    """

    def __init__(self, kernel, pid: int, image: str = "handler.exe", *, tid: Optional[int] = None):
        self.kernel = kernel
        self.pid = pid
        if pid not in kernel.running:
            kernel.new_process(pid, image_path(image))
        self.handle: FileHandle = kernel.open_handle(pid=pid, tid=tid)
        self.behaviour = "answer"
        self.remove = 0
        self.decide: Optional[Callable[[bytes], bytes]] = None
        self.received: list[AskRequest] = []  # every request a worker got
        self.inbox: list[bytes] = []  # received, not yet handled
        self.replies: list = []  # IoctlResult of every reply sent
        self.late_replies: list[bytes] = []
        self.get_requests: list[FakeRequest] = []
        self.cancelled_get_requests: list[FakeRequest] = []
        self.waits_seen = 0
        kernel.on_request_completed = self._completed
        kernel.wait_handler = self._on_wait

    # ------------------------------------------------------------ set-up

    def connect(self, data: Optional[bytes] = None):
        return self.kernel.ioctl(IOCTL_ASK_CONNECT, connect_bytes() if data is None else data,
                                 CONNECT_RESPONSE_SIZE, file=self.handle)

    def pend_workers(self, count: int = 1) -> list[FakeRequest]:
        pended = []
        for _ in range(count):
            result = self.kernel.ioctl(IOCTL_ASK_GET_REQUEST, b"", ASK_REQUEST_SIZE, file=self.handle)
            if result.status != STATUS_PENDING:
                raise KernelFault(f"get-request not pended: {result.status:#010x}")
            self.get_requests.append(result.request)
            pended.append(result.request)
        return pended

    def start(self, workers: int = 1) -> "HandlerProcess":
        result = self.connect()
        if result.status != STATUS_SUCCESS:
            raise KernelFault(f"IOCTL_ASK_CONNECT failed: {result.status:#010x}")
        self.pend_workers(workers)
        return self

    # -------------------------------------------------------- the worker

    def _completed(self, request: FakeRequest) -> None:
        if request.code != IOCTL_ASK_GET_REQUEST or request.file is not self.handle:
            return
        if request.status == STATUS_SUCCESS:
            self.received.append(AskRequest.decode(request.output))
            self.inbox.append(request.output)
        elif request.status == STATUS_CANCELLED:
            self.cancelled_get_requests.append(request)

    def _default_decide(self, data: bytes) -> bytes:
        request = AskRequest.decode(data)
        return reply_bytes(request.id, request.generation, request.desired_access & ~self.remove)

    def _on_wait(self, kernel, wait) -> None:
        self.waits_seen += 1
        behaviour = self.behaviour
        if behaviour in ("answer", "silent", "late"):
            if self.inbox:
                self._handle_inbox()
            else:
                # No worker was pended: the request waits in the driver's
                # FIFO; a worker arriving now gets it at once.
                self._thread_get_request()
        elif behaviour == "disconnect":
            kernel.thread_ioctl(IOCTL_ASK_DISCONNECT, b"", 0, file=self.handle, after=self.replies.append)
        elif behaviour == "close":
            kernel.thread_close(self.handle)
        elif behaviour == "unload":
            kernel.thread_unload()
        elif callable(behaviour):
            behaviour(self, kernel, wait)
        else:
            raise AssertionError(f"unknown behaviour {behaviour!r}")

    def _thread_get_request(self) -> None:
        def after(result):
            self.get_requests.append(result.request)
            if self.inbox:
                self._handle_inbox()

        self.kernel.thread_ioctl(IOCTL_ASK_GET_REQUEST, b"", ASK_REQUEST_SIZE, file=self.handle, after=after)

    def _handle_inbox(self) -> None:
        inbox, self.inbox = self.inbox, []
        for data in inbox:
            if self.behaviour == "silent":
                continue
            if self.behaviour == "late":
                self.late_replies.append((self.decide or self._default_decide)(data))
                continue
            reply = (self.decide or self._default_decide)(data)
            if reply is not None:  # None: the package's dispatcher sent it
                self.send_reply(reply)
            # The worker goes back for the next request.
            self.kernel.thread_ioctl(IOCTL_ASK_GET_REQUEST, b"", ASK_REQUEST_SIZE, file=self.handle,
                                     after=lambda result: self.get_requests.append(result.request))

    def send_reply(self, reply: bytes):
        """Inside a wait: queued on the handler thread; outside: sent now."""
        if self.kernel.switched:
            return self.kernel.thread_ioctl(IOCTL_ASK_REPLY, reply, 0, file=self.handle, after=self.replies.append)
        result = self.kernel.ioctl(IOCTL_ASK_REPLY, reply, 0, file=self.handle)
        self.replies.append(result)
        return result


class EmulatorTransport:
    """The Python package's ``Transport`` over the harness: ``ioctl(code,
    data, output_length) -> bytes`` on the handler's handle. Inside a
    switched wait the IOCTL is queued on the handler thread (driver code
    cannot be run from a hook) and b"" returned: only replies and
    disconnects, whose output is empty, are sent from there; their status
    is in ``handler.replies`` afterwards. Outside, a failure raises the
    package's ``DriverError`` with the NTSTATUS, as its Windows transport
    would (with the Win32 error there)."""

    def __init__(self, handler: HandlerProcess):
        self.handler = handler
        self.sent: list[tuple[int, bytes]] = []
        self.decisions: list = []

    def ioctl(self, code: int, data: bytes, output_length: int) -> bytes:
        kernel = self.handler.kernel
        self.sent.append((code, bytes(data)))
        if kernel.switched:
            if output_length:
                raise KernelFault(f"IOCTL {code:#010x} with output inside a wait: not modelled")
            kernel.thread_ioctl(code, bytes(data), 0, file=self.handler.handle, after=self.handler.replies.append)
            return b""
        result = kernel.ioctl(code, bytes(data), output_length, file=self.handler.handle)
        if result.status >= 0x80000000 and result.status != 0x80000005:
            procguard = import_package()
            raise procguard.DriverError(f"IOCTL {code:#010x} failed with {result.status:#010x}",
                                        ntstatus=result.status, ioctl=code)
        return result.output


class ThreadedTransport:
    """The package's ``Transport`` for a real ``ProcGuard.start()``: its
    worker threads call ``ioctl`` from their own threads, but the emulator
    runs on the test's thread only. A worker's IOCTL becomes a message the
    test thread executes — in ``pump()`` between requests, or on the handler
    thread inside the driver's wait (kernel_threads.py) — and the worker
    blocks until its request completes (a get-request: when the driver
    hands it a request). Inside a wait the test thread waits, in real time
    and at most ``budget`` seconds, for the workers' replies: a handler
    slower than that is late (the callback times out, its reply gets
    STATUS_NOT_FOUND when it comes)."""

    def __init__(self, kernel, pid: int, *, budget: float = 5.0):
        import queue  # noqa: PLC0415
        import threading  # noqa: PLC0415

        self.kernel = kernel
        self.queue = queue
        if pid not in kernel.running:
            kernel.new_process(pid, image_path("handler.exe"))
        self.handle = kernel.open_handle(pid=pid)
        self.budget = budget
        self.messages: "queue.Queue" = queue.Queue()
        self.waiting: dict[int, "queue.Queue"] = {}  # pended request -> its worker's answer queue
        self.main = threading.get_ident()
        self.procguard = import_package()
        self.executed: list[int] = []
        kernel.on_request_completed = self._completed
        kernel.wait_handler = self._on_wait

    # -- worker side

    def ioctl(self, code: int, data: bytes, output_length: int) -> bytes:
        import threading  # noqa: PLC0415

        if threading.get_ident() == self.main:
            if self.kernel.switched:
                raise KernelFault("the test thread called the transport inside a wait")
            self.pump(0)  # what the workers asked first goes first
            result = self.kernel.ioctl(code, bytes(data), output_length, file=self.handle)
            return self._outcome(result.status, result.output, code, raise_=True)
        answer = self.queue.Queue(maxsize=1)
        self.messages.put((code, bytes(data), output_length, answer))
        outcome = answer.get()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _outcome(self, status: int, output: bytes, code: int, raise_: bool = False):
        if status >= 0x80000000 and status != 0x80000005:
            error = self.procguard.DriverError(f"IOCTL {code:#010x} failed with {status:#010x}",
                                               ntstatus=status, ioctl=code)
            if raise_:
                raise error
            return error
        return output

    # -- test-thread side

    def _deliver(self, answer, result) -> None:
        if result.status == STATUS_PENDING:
            self.waiting[result.request.handle] = answer
        else:
            answer.put(self._outcome(result.status, result.output, result.request.code))

    def _completed(self, request: FakeRequest) -> None:
        answer = self.waiting.pop(request.handle, None)
        if answer is not None:
            answer.put(self._outcome(request.status, request.output, request.code))

    def pump(self, seconds: float, *, until: Optional[Callable[[], bool]] = None) -> None:
        """Executes the workers' IOCTLs (outside a wait) for up to ``seconds``
        of real time, or until ``until()``."""
        import time  # noqa: PLC0415

        deadline = time.monotonic() + seconds
        while True:
            if until is not None and until():
                return
            remaining = deadline - time.monotonic()
            try:
                code, data, length, answer = self.messages.get(timeout=max(remaining, 0)) if remaining > 0 \
                    else self.messages.get_nowait()
            except self.queue.Empty:
                return
            self.executed.append(code)
            self._deliver(answer, self.kernel.ioctl(code, data, length, file=self.handle))

    def workers_pended(self) -> int:
        return len(self.waiting)

    def _on_wait(self, kernel, wait) -> None:
        import time  # noqa: PLC0415

        deadline = time.monotonic() + self.budget
        event = kernel.kernel_events[wait.event]

        def next_message(_result=None) -> None:
            # Inside the wait: the workers' IOCTLs run on the handler
            # thread, one after the other, until the waiting request's event
            # is set (its reply came) and the workers are pended again.
            answered = event.signaled
            timeout = 0.2 if answered else deadline - time.monotonic()
            if timeout <= 0:
                return
            try:
                code, data, length, answer = self.messages.get(timeout=timeout)
            except self.queue.Empty:
                return
            self.executed.append(code)

            def after(result):
                self._deliver(answer, result)
                next_message()

            kernel.thread_ioctl(code, data, length, file=self.handle, after=after)

        next_message()
