"""An in-memory stand-in for procguard.sys's ask path and control plane, as a
``Transport``: the tests' kernel side.

It behaves as ask-design.md says the driver does: one connection at a time;
get-requests pend until a request is queued and complete with
``STATUS_CANCELLED`` at disconnect; :meth:`FakeDriver.ask` plays the object
callback (takes a slot, waits for the reply with the timeout, falls back on
timeout / no handler / disconnect); a reply is ANDed into the request's
access; a reply for no waiting request gets ``STATUS_NOT_FOUND`` and counts
as late; a malformed one gets ``STATUS_INVALID_PARAMETER``.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, replace
from typing import Deque, Dict, List, Optional

from procguard.errors import DriverError
from procguard.protocol import (
    IOCTL_ASK_CONNECT,
    IOCTL_ASK_DISCONNECT,
    IOCTL_ASK_GET_REQUEST,
    IOCTL_ASK_REPLY,
    IOCTL_GET_POLICY,
    IOCTL_GET_RULE_COUNTERS,
    IOCTL_GET_STATUS,
    IOCTL_READ_EVENTS,
    IOCTL_SET_POLICY,
    IOCTL_WAIT_EVENTS,
    STATUS_CANCELLED,
    STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_PARAMETER,
    STATUS_NOT_FOUND,
    STATUS_SHARING_VIOLATION,
    AskCounters,
    AskReply,
    AskRequest,
    AskStatus,
    AuditRecord,
    ConnectRequest,
    ConnectResponse,
    EventsHeader,
    EventsWaiting,
    PolicyHeader,
    RuleCounters,
    Status,
)


def sample_request(**fields: object) -> AskRequest:
    """A process-create request for pid 4242 by pid 5150, asking about
    PROCESS_TERMINATE; ``fields`` override."""
    base = AskRequest(
        id=0,
        generation=0,
        timestamp=133_497_000_000_000_000,
        object="process",
        duplication=False,
        rule_id=1,
        process_id=4242,
        thread_id=0,
        originator_process_id=5150,
        originator_thread_id=5154,
        source_process_id=0,
        target_process_id=0,
        original_desired_access=0x1FFFFF,
        desired_access=0x1FFFFF,
        ask_rights=0x0001,
        fallback_access=0x1FFFFE,
        timeout_ms=250,
        requester_pid=5150,
        requester_create_time=1,
        target_create_time=2,
        requester_image="taskmgr.exe",
        target_image="agent.exe",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


@dataclass
class _Slot:
    request: AskRequest
    event: threading.Event
    reply: Optional[AskReply] = None
    cancelled: bool = False


@dataclass
class Outcome:
    """What the fake callback decided."""

    access: int
    outcome: str
    result_code: int = 0


class FakeDriver:
    """The fake driver. ``ioctl``/``close`` make it a ``Transport``."""

    def __init__(self, timeout_ms: int = 250, slots: int = 64, handler_pid: int = 3130) -> None:
        self.timeout_ms = timeout_ms
        self.slots = slots
        self.handler_pid = handler_pid
        self._cond = threading.Condition()
        self.connected = False
        self._queue: Deque[int] = collections.deque()
        self._waiting: Dict[int, _Slot] = {}
        self._generation = 0
        self.workers_waiting = 0
        self.counters = collections.Counter()  # type: collections.Counter[str]
        self.replies: List[AskReply] = []
        self.calls: List[int] = []
        self.records: List[AuditRecord] = []
        self.dropped = 0
        self.blob = b""
        self.policy_id = 0
        self.rule_counts: List[tuple] = []
        self.closed = False
        self.persisted = False

    # --- the kernel side -----------------------------------------------------

    def ask(self, request: Optional[AskRequest] = None, timeout_ms: Optional[int] = None) -> Outcome:
        """The object callback: waits for the handler's answer (or falls back)."""
        request = request or sample_request()
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        with self._cond:
            self.counters["asked"] += 1
            if not self.connected:
                self.counters["no_handler"] += 1
                return Outcome(request.fallback_access, "no-handler")
            if len(self._waiting) >= self.slots:
                self.counters["pool_full"] += 1
                return Outcome(request.fallback_access, "pool-full")
            slot_id = next(i for i in range(self.slots) if i not in self._waiting)
            self._generation += 1
            request = replace(request, id=slot_id, generation=self._generation, timeout_ms=timeout)
            slot = _Slot(request, threading.Event())
            self._waiting[slot_id] = slot
            self._queue.append(slot_id)
            self._cond.notify_all()
        answered = slot.event.wait(timeout / 1000.0)
        with self._cond:
            if self._waiting.get(slot_id) is slot:
                del self._waiting[slot_id]
            try:
                self._queue.remove(slot_id)
            except ValueError:
                pass
            if slot.cancelled:
                self.counters["cancelled"] += 1
                return Outcome(request.fallback_access, "cancelled")
            if not answered or slot.reply is None:
                self.counters["timed_out"] += 1
                return Outcome(request.fallback_access, "timed-out")
            self.counters["answered"] += 1
            return Outcome(
                request.desired_access & slot.reply.desired_access,
                "answered",
                slot.reply.result_code,
            )

    # --- Transport --------------------------------------------------------------

    def ioctl(self, code: int, data: bytes, output_length: int) -> bytes:
        self.calls.append(code)
        if self.closed:
            raise DriverError("closed", ntstatus=STATUS_INVALID_DEVICE_STATE, ioctl=code)
        handler = {
            IOCTL_ASK_CONNECT: self._connect,
            IOCTL_ASK_GET_REQUEST: self._get_request,
            IOCTL_ASK_REPLY: self._reply,
            IOCTL_ASK_DISCONNECT: self._disconnect,
            IOCTL_GET_STATUS: self._status,
            IOCTL_READ_EVENTS: self._read_events,
            IOCTL_WAIT_EVENTS: self._wait_events,
            IOCTL_GET_POLICY: self._get_policy,
            IOCTL_SET_POLICY: self._set_policy,
            IOCTL_GET_RULE_COUNTERS: self._rule_counters,
        }.get(code)
        if handler is None:
            raise DriverError("unknown IOCTL", ntstatus=STATUS_INVALID_DEVICE_REQUEST, ioctl=code)
        out = handler(bytes(data), output_length)
        assert len(out) <= output_length, "the driver never writes past the buffer"
        return out

    def close(self) -> None:
        """File cleanup: disconnects and cancels whatever pends."""
        with self._cond:
            self.closed = True
            self._drop_connection()

    @staticmethod
    def _fail(status: int, text: str) -> DriverError:
        return DriverError(text, ntstatus=status)

    def _connect(self, data: bytes, _out: int) -> bytes:
        ConnectRequest.from_bytes(data)
        with self._cond:
            if self.connected:
                raise self._fail(STATUS_SHARING_VIOLATION, "another handler is connected")
            self.connected = True
        return ConnectResponse(1, self.slots, self.timeout_ms, self.handler_pid).to_bytes()

    def _get_request(self, _data: bytes, output_length: int) -> bytes:
        if output_length < AskRequest.SIZE:
            raise self._fail(STATUS_INVALID_PARAMETER, "output too small")
        with self._cond:
            if not self.connected:
                raise self._fail(STATUS_INVALID_DEVICE_STATE, "not connected")
            self.workers_waiting += 1
            try:
                while self.connected and not self._queue:
                    self._cond.wait()
                if not self.connected:
                    raise self._fail(STATUS_CANCELLED, "cancelled")
                slot_id = self._queue.popleft()
                return self._waiting[slot_id].request.to_bytes()
            finally:
                self.workers_waiting -= 1

    def _reply(self, data: bytes, _out: int) -> bytes:
        if len(data) != AskReply.SIZE:
            raise self._fail(STATUS_INVALID_PARAMETER, "malformed reply")
        reply = AskReply.from_bytes(data)
        with self._cond:
            if not self.connected:
                raise self._fail(STATUS_INVALID_DEVICE_STATE, "not connected")
            self.replies.append(reply)
            slot = self._waiting.get(reply.id)
            if slot is None or slot.request.generation != reply.generation or slot.reply:
                self.counters["late_replies"] += 1
                raise self._fail(STATUS_NOT_FOUND, "no such request waits")
            slot.reply = reply
            slot.event.set()
        return b""

    def _drop_connection(self) -> None:
        self.connected = False
        for slot in self._waiting.values():
            slot.cancelled = True
            slot.event.set()
        self._waiting.clear()
        self._queue.clear()
        self._cond.notify_all()

    def _disconnect(self, _data: bytes, _out: int) -> bytes:
        with self._cond:
            if not self.connected:
                raise self._fail(STATUS_INVALID_DEVICE_STATE, "not connected")
            self._drop_connection()
        return b""

    def _status(self, _data: bytes, _out: int) -> bytes:
        with self._cond:
            c = self.counters
            return Status(
                driver_version=0x00010000,
                callbacks_registered=True,
                notify_registered=True,
                policy_id=self.policy_id,
                rule_count=len(self.rule_counts),
                altitude="385201",
                ask=AskStatus(
                    handler_pid=self.handler_pid if self.connected else 0,
                    timeout_ms=self.timeout_ms,
                    slots=self.slots,
                    in_flight=len(self._waiting),
                    workers_waiting=self.workers_waiting,
                    counters=AskCounters(
                        **{name: c[name] for name in AskCounters.__dataclass_fields__}
                    ),
                ),
            ).to_bytes()

    def add_records(self, *records: AuditRecord) -> None:
        """Appends audit records (wakes a pended wait-events)."""
        with self._cond:
            self.records.extend(records)
            self._cond.notify_all()

    def _read_events(self, _data: bytes, output_length: int) -> bytes:
        room = (output_length - EventsHeader.SIZE) // 64
        with self._cond:
            taken, self.records = self.records[:room], self.records[room:]
            header = EventsHeader(len(taken), len(self.records), self.dropped)
        return header.to_bytes() + b"".join(record.to_bytes() for record in taken)

    def _wait_events(self, _data: bytes, _out: int) -> bytes:
        with self._cond:
            while not self.records and not self.closed:
                self._cond.wait()
            if self.closed:
                raise self._fail(STATUS_CANCELLED, "cancelled")
            return EventsWaiting(len(self.records)).to_bytes()

    def _get_policy(self, _data: bytes, output_length: int) -> bytes:
        out = PolicyHeader(len(self.blob), self.policy_id).to_bytes() + self.blob
        return out[:output_length]

    def _set_policy(self, data: bytes, _out: int) -> bytes:
        flags = int.from_bytes(data[0:4], "little")
        length = int.from_bytes(data[4:8], "little")
        blob = data[8:]
        if len(blob) != length or blob[:4] != b"PGPB":
            raise self._fail(STATUS_INVALID_PARAMETER, "bad policy")
        self.blob = blob
        self.policy_id = int.from_bytes(blob[12:16], "little")
        self.persisted = bool(flags & 1)
        return b""

    def _rule_counters(self, _data: bytes, output_length: int) -> bytes:
        out = RuleCounters(self.policy_id, tuple(self.rule_counts)).to_bytes()
        if len(out) > output_length:
            raise self._fail(-1073741789, "buffer too small")
        return out
