"""The driver's wire protocol: IOCTL codes, NTSTATUS values, and every request
and response structure with its byte encoding.

The one definition is the Rust crate ``procguard-protocol``
(``crates/procguard-protocol/src/{ask.rs,ioctl.rs,audit_record.rs}``); this
module follows its layouts field by field, and the package's tests decode and
encode the sample bytes that crate writes (``python/tests/golden/``). All
integers are little-endian; decoding checks lengths, codes, flags and reserved
bytes and raises :class:`~procguard.errors.ProtocolError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

from .errors import ProtocolError

__all__ = [
    "USER_MODE_PATH",
    "PROTOCOL_VERSION",
    "ASK_PROTOCOL_VERSION",
    "MAX_POLICY_BYTES",
    "AUDIT_RECORD_BYTES",
    "NO_RULE",
    "MAX_ASK_WAIT_US",
    "IMAGE_NAME_UNITS",
    "ctl_code",
    "IOCTL_GET_STATUS",
    "IOCTL_SET_POLICY",
    "IOCTL_GET_POLICY",
    "IOCTL_READ_EVENTS",
    "IOCTL_RESET_COUNTERS",
    "IOCTL_GET_RULE_COUNTERS",
    "IOCTL_ASK_CONNECT",
    "IOCTL_ASK_GET_REQUEST",
    "IOCTL_ASK_REPLY",
    "IOCTL_ASK_DISCONNECT",
    "IOCTL_WAIT_EVENTS",
    "IOCTL_NAMES",
    "STATUS_SUCCESS",
    "STATUS_BUFFER_OVERFLOW",
    "STATUS_INVALID_PARAMETER",
    "STATUS_INVALID_DEVICE_REQUEST",
    "STATUS_BUFFER_TOO_SMALL",
    "STATUS_SHARING_VIOLATION",
    "STATUS_INVALID_DEVICE_STATE",
    "STATUS_NOT_FOUND",
    "STATUS_CANCELLED",
    "RESULT_HANDLER_RAISED",
    "ASK_OUTCOMES",
    "ConnectRequest",
    "ConnectResponse",
    "AskRequest",
    "AskReply",
    "EventsWaiting",
    "Counters",
    "AskCounters",
    "AskStatus",
    "Status",
    "EventsHeader",
    "AuditRecord",
    "PolicyHeader",
    "RuleCounters",
    "encode_set_policy",
    "parse_events",
    "policy_rule_names",
]

#: What user mode opens.
USER_MODE_PATH = "\\\\.\\ProcGuard"
#: Version of the control protocol (``Status.protocol_version``).
PROTOCOL_VERSION = 2
#: Version of the ask protocol a handler speaks.
ASK_PROTOCOL_VERSION = 1
#: Largest policy blob the driver accepts.
MAX_POLICY_BYTES = 1024 * 1024
#: Bytes of one audit record.
AUDIT_RECORD_BYTES = 64
#: ``rule_id`` when no rule is named.
NO_RULE = 0xFFFFFFFF
#: Largest ask wait an audit record holds, in microseconds (24 bits).
MAX_ASK_WAIT_US = (1 << 24) - 1
#: UTF-16 units of an image name in an :class:`AskRequest`.
IMAGE_NAME_UNITS = 64

_DEVICE_TYPE = 0x22  # FILE_DEVICE_UNKNOWN
_METHOD_BUFFERED = 0
_FILE_READ_ACCESS = 1
_FILE_WRITE_ACCESS = 2


def ctl_code(device_type: int, function: int, method: int, access: int) -> int:
    """``CTL_CODE(DeviceType, Function, Method, Access)``."""
    return (device_type << 16) | (access << 14) | (function << 2) | method


IOCTL_GET_STATUS = ctl_code(_DEVICE_TYPE, 0x800, _METHOD_BUFFERED, _FILE_READ_ACCESS)
IOCTL_SET_POLICY = ctl_code(_DEVICE_TYPE, 0x801, _METHOD_BUFFERED, _FILE_WRITE_ACCESS)
IOCTL_GET_POLICY = ctl_code(_DEVICE_TYPE, 0x802, _METHOD_BUFFERED, _FILE_READ_ACCESS)
IOCTL_READ_EVENTS = ctl_code(_DEVICE_TYPE, 0x803, _METHOD_BUFFERED, _FILE_WRITE_ACCESS)
IOCTL_RESET_COUNTERS = ctl_code(_DEVICE_TYPE, 0x804, _METHOD_BUFFERED, _FILE_WRITE_ACCESS)
IOCTL_GET_RULE_COUNTERS = ctl_code(_DEVICE_TYPE, 0x805, _METHOD_BUFFERED, _FILE_READ_ACCESS)
IOCTL_ASK_CONNECT = ctl_code(_DEVICE_TYPE, 0x806, _METHOD_BUFFERED, _FILE_WRITE_ACCESS)
IOCTL_ASK_GET_REQUEST = ctl_code(_DEVICE_TYPE, 0x807, _METHOD_BUFFERED, _FILE_WRITE_ACCESS)
IOCTL_ASK_REPLY = ctl_code(_DEVICE_TYPE, 0x808, _METHOD_BUFFERED, _FILE_WRITE_ACCESS)
IOCTL_ASK_DISCONNECT = ctl_code(_DEVICE_TYPE, 0x809, _METHOD_BUFFERED, _FILE_WRITE_ACCESS)
IOCTL_WAIT_EVENTS = ctl_code(_DEVICE_TYPE, 0x80A, _METHOD_BUFFERED, _FILE_READ_ACCESS)

#: Each IOCTL's name, for messages.
IOCTL_NAMES = {
    IOCTL_GET_STATUS: "get status",
    IOCTL_SET_POLICY: "set policy",
    IOCTL_GET_POLICY: "get policy",
    IOCTL_READ_EVENTS: "read events",
    IOCTL_RESET_COUNTERS: "reset counters",
    IOCTL_GET_RULE_COUNTERS: "get rule counters",
    IOCTL_ASK_CONNECT: "ask: connect",
    IOCTL_ASK_GET_REQUEST: "ask: get request",
    IOCTL_ASK_REPLY: "ask: reply",
    IOCTL_ASK_DISCONNECT: "ask: disconnect",
    IOCTL_WAIT_EVENTS: "wait for events",
}


def _ntstatus(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


STATUS_SUCCESS = 0
STATUS_BUFFER_OVERFLOW = _ntstatus(0x80000005)
STATUS_INVALID_PARAMETER = _ntstatus(0xC000000D)
STATUS_INVALID_DEVICE_REQUEST = _ntstatus(0xC0000010)
STATUS_BUFFER_TOO_SMALL = _ntstatus(0xC0000023)
STATUS_SHARING_VIOLATION = _ntstatus(0xC0000043)
STATUS_INVALID_DEVICE_STATE = _ntstatus(0xC0000184)
STATUS_NOT_FOUND = _ntstatus(0xC0000225)
STATUS_CANCELLED = _ntstatus(0xC0000120)

#: ``result_code`` of a reply sent because the handler raised: an
#: NTSTATUS-style code with the customer bit (``0x20000000``) set, severity
#: success, facility 0, code 1. The driver stores it in the audit record.
RESULT_HANDLER_RAISED = 0x20000001

#: Ask outcomes by wire code (audit records), with the names
#: ``procguardctl events`` uses.
ASK_OUTCOMES = {
    1: "answered",
    2: "timed-out",
    3: "no-handler",
    4: "pool-full",
    5: "unaskable",
    6: "cancelled",
}


def _exact(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise ProtocolError(f"{what}: {len(data)} bytes, {size} expected")


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ProtocolError(f"{what} = {value} does not fit 32 bits unsigned")
    return value


def _i32(value: int, what: str) -> int:
    """A result code as a signed 32-bit value; unsigned spellings
    (``0xC0000022``) are accepted and wrapped."""
    if -(1 << 31) <= value <= 0xFFFFFFFF:
        value &= 0xFFFFFFFF
        return value - (1 << 32) if value & 0x80000000 else value
    raise ProtocolError(f"{what} = {value} does not fit 32 bits")


# --- connect -------------------------------------------------------------


@dataclass(frozen=True)
class ConnectRequest:
    """``IOCTL_ASK_CONNECT`` input, 8 bytes: ``version``, ``flags`` (0)."""

    version: int = ASK_PROTOCOL_VERSION
    flags: int = 0

    SIZE = 8

    def to_bytes(self) -> bytes:
        """Encodes."""
        return struct.pack("<II", self.version, self.flags)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConnectRequest:
        """Decodes: exact length, known version, no flags."""
        _exact(data, cls.SIZE, "connect request")
        version, flags = struct.unpack("<II", data)
        if flags != 0:
            raise ProtocolError(f"connect request: unknown flags {flags:#x}")
        if version != ASK_PROTOCOL_VERSION:
            raise ProtocolError(f"connect request: unknown ask protocol version {version}")
        return cls(version, flags)


@dataclass(frozen=True)
class ConnectResponse:
    """``IOCTL_ASK_CONNECT`` output, 16 bytes."""

    #: The driver's ask protocol version.
    version: int
    #: Requests that can wait for an answer at once (the slot pool).
    slots: int
    #: The ask timeout of the policy in force, milliseconds.
    timeout_ms: int
    #: The process the driver now treats as the handler (never asked about).
    handler_pid: int

    SIZE = 16

    def to_bytes(self) -> bytes:
        """Encodes."""
        return struct.pack("<IIII", self.version, self.slots, self.timeout_ms, self.handler_pid)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConnectResponse:
        """Decodes."""
        _exact(data, cls.SIZE, "connect response")
        return cls(*struct.unpack("<IIII", data))


# --- the request and the reply --------------------------------------------

_REQUEST_HEAD = struct.Struct("<IIqII" + "I" * 14 + "qqHHI")
assert _REQUEST_HEAD.size == 104


def _encode_name(name: str, what: str) -> Tuple[bytes, int]:
    encoded = name.encode("utf-16-le")
    units = len(encoded) // 2
    if units > IMAGE_NAME_UNITS:
        raise ProtocolError(f"{what}: {units} UTF-16 units, at most {IMAGE_NAME_UNITS}")
    return encoded.ljust(IMAGE_NAME_UNITS * 2, b"\0"), units


def _decode_name(raw: bytes, units: int) -> str:
    # A name cut at 64 units may end inside a surrogate pair: keep what decodes.
    return raw[: units * 2].decode("utf-16-le", errors="replace")


@dataclass(frozen=True)
class AskRequest:
    """``IOCTL_ASK_GET_REQUEST`` output: one request to decide, 368 bytes.

    Field names and meanings are CBFS Filter's ``CBProcess`` handle-operation
    event's where they exist; see ``ask.rs`` for the layout table.
    """

    #: Slot of the request; echoed in the reply.
    id: int
    #: Generation of the slot; echoed in the reply.
    generation: int
    #: When the request was made: system time, 100 ns since 1601-01-01 UTC.
    timestamp: int
    #: ``"process"`` or ``"thread"``.
    object: str
    #: ``DuplicateHandle`` (True) or a new handle.
    duplication: bool
    #: The ask rule (its index in the policy).
    rule_id: int
    #: The process the handle is for (a thread's owning process).
    process_id: int
    #: For thread handles, the thread; 0 otherwise.
    thread_id: int
    #: The process making the request.
    originator_process_id: int
    #: The thread making the request.
    originator_thread_id: int
    #: Duplication: the process the handle is duplicated from; 0 otherwise.
    source_process_id: int
    #: Duplication: the process that receives the handle; 0 otherwise.
    target_process_id: int
    #: The access as requested.
    original_desired_access: int
    #: The access after the enforce rules (what the handler may reduce).
    desired_access: int
    #: The bits of ``desired_access`` the ask rules are about.
    ask_rights: int
    #: What the request gets if no answer comes in time.
    fallback_access: int
    #: How long the driver waits for the answer, milliseconds.
    timeout_ms: int
    #: The process that gets the handle (create: the originator;
    #: duplication: ``target_process_id``).
    requester_pid: int
    #: Creation key of the requester (its create time, 100 ns system time).
    requester_create_time: int
    #: Creation key of ``process_id``.
    target_create_time: int
    #: Image file name of the requester (empty when unknown).
    requester_image: str = ""
    #: The requester's name was longer than 64 UTF-16 units and was cut.
    requester_image_truncated: bool = False
    #: Image file name of the target.
    target_image: str = ""
    #: The target's name was cut.
    target_image_truncated: bool = False

    SIZE = 368

    def to_bytes(self) -> bytes:
        """Encodes (what the driver writes; the tests and fakes use it)."""
        if self.object not in ("process", "thread"):
            raise ProtocolError(f"object must be 'process' or 'thread', not {self.object!r}")
        requester, requester_units = _encode_name(self.requester_image, "requester_image")
        target, target_units = _encode_name(self.target_image, "target_image")
        flags = (
            int(bool(self.duplication))
            | int(bool(self.requester_image_truncated)) << 1
            | int(bool(self.target_image_truncated)) << 2
        )
        head = _REQUEST_HEAD.pack(
            _u32(self.id, "id"),
            _u32(self.generation, "generation"),
            self.timestamp,
            1 if self.object == "process" else 2,
            flags,
            *(
                _u32(getattr(self, name), name)
                for name in (
                    "rule_id",
                    "process_id",
                    "thread_id",
                    "originator_process_id",
                    "originator_thread_id",
                    "source_process_id",
                    "target_process_id",
                    "original_desired_access",
                    "desired_access",
                    "ask_rights",
                    "fallback_access",
                    "timeout_ms",
                    "requester_pid",
                )
            ),
            0,
            self.requester_create_time,
            self.target_create_time,
            requester_units,
            target_units,
            0,
        )
        return head + requester + target + bytes(8)

    @classmethod
    def from_bytes(cls, data: bytes) -> AskRequest:
        """Decodes: exact length, known object code and flags, name lengths in
        range, reserved bytes zero (as ``AskRequest::parse``)."""
        _exact(data, cls.SIZE, "ask request")
        values = _REQUEST_HEAD.unpack_from(data)
        (ident, generation, timestamp, object_code, flags) = values[:5]
        u32s = values[5:18]
        reserved76 = values[18]
        requester_time, target_time, requester_units, target_units, reserved100 = values[19:]
        if object_code not in (1, 2):
            raise ProtocolError(f"ask request: unknown object code {object_code}")
        if flags & ~7:
            raise ProtocolError(f"ask request: unknown flags {flags:#x}")
        if reserved76 or reserved100 or any(data[360:368]):
            raise ProtocolError("ask request: reserved bytes set")
        for units in (requester_units, target_units):
            if units > IMAGE_NAME_UNITS:
                raise ProtocolError(f"ask request: image name of {units} units, at most 64")
        (
            rule_id, process_id, thread_id, originator_pid, originator_tid, source_pid,
            target_pid, original_access, desired_access, ask_rights, fallback_access,
            timeout_ms, requester_pid,
        ) = u32s
        return cls(
            id=ident,
            generation=generation,
            timestamp=timestamp,
            object="process" if object_code == 1 else "thread",
            duplication=bool(flags & 1),
            rule_id=rule_id,
            process_id=process_id,
            thread_id=thread_id,
            originator_process_id=originator_pid,
            originator_thread_id=originator_tid,
            source_process_id=source_pid,
            target_process_id=target_pid,
            original_desired_access=original_access,
            desired_access=desired_access,
            ask_rights=ask_rights,
            fallback_access=fallback_access,
            timeout_ms=timeout_ms,
            requester_pid=requester_pid,
            requester_create_time=requester_time,
            target_create_time=target_time,
            requester_image=_decode_name(data[104:232], requester_units),
            requester_image_truncated=bool(flags & 2),
            target_image=_decode_name(data[232:360], target_units),
            target_image_truncated=bool(flags & 4),
        )


@dataclass(frozen=True)
class AskReply:
    """``IOCTL_ASK_REPLY`` input, 16 bytes: the request's ``id`` and
    ``generation``, the access to grant (ANDed in by the driver: bits are never
    added) and the handler's ``result_code``."""

    id: int
    generation: int
    desired_access: int
    result_code: int = 0

    SIZE = 16

    def to_bytes(self) -> bytes:
        """Encodes."""
        return struct.pack(
            "<IIIi",
            _u32(self.id, "id"),
            _u32(self.generation, "generation"),
            _u32(self.desired_access, "desired_access"),
            _i32(self.result_code, "result_code"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AskReply:
        """Decodes: exactly 16 bytes."""
        _exact(data, cls.SIZE, "ask reply")
        return cls(*struct.unpack("<IIIi", data))


@dataclass(frozen=True)
class EventsWaiting:
    """``IOCTL_WAIT_EVENTS`` output, 8 bytes: audit records waiting."""

    pending: int

    SIZE = 8

    def to_bytes(self) -> bytes:
        """Encodes."""
        return struct.pack("<Q", self.pending)

    @classmethod
    def from_bytes(cls, data: bytes) -> EventsWaiting:
        """Decodes."""
        _exact(data, cls.SIZE, "events waiting")
        return cls(*struct.unpack("<Q", data))


# --- status -----------------------------------------------------------------

_COUNTER_NAMES = (
    "seen",
    "modified",
    "audited",
    "skipped_kernel",
    "skipped_self",
    "exempt",
    "unclassified",
    "events_dropped",
    "events_pending",
)
_ASK_COUNTER_NAMES = (
    "asked",
    "answered",
    "timed_out",
    "no_handler",
    "pool_full",
    "unaskable",
    "cancelled",
    "late_replies",
)


def _json_counters(counters: Any) -> Dict[str, Any]:
    """A counters dataclass under procguardctl's JSON names: each field in
    CamelCase (``skipped_kernel`` -> ``"SkippedKernel"``), in field order."""
    return {
        "".join(part.capitalize() for part in f.name.split("_")): getattr(counters, f.name)
        for f in fields(counters)
    }


@dataclass(frozen=True)
class Counters:
    """Request totals since load (or the last reset)."""

    seen: int = 0
    modified: int = 0
    audited: int = 0
    skipped_kernel: int = 0
    skipped_self: int = 0
    exempt: int = 0
    unclassified: int = 0
    events_dropped: int = 0
    events_pending: int = 0

    def as_dict(self) -> Dict[str, Any]:
        """The names ``procguardctl status --json`` uses (``"Seen"``, ...)."""
        return _json_counters(self)


@dataclass(frozen=True)
class AskCounters:
    """Ask totals since load (or the last reset)."""

    asked: int = 0
    answered: int = 0
    timed_out: int = 0
    no_handler: int = 0
    pool_full: int = 0
    unaskable: int = 0
    cancelled: int = 0
    late_replies: int = 0

    def as_dict(self) -> Dict[str, Any]:
        """The names of ``procguardctl status --json``'s ``Ask.Counters``."""
        return _json_counters(self)


@dataclass(frozen=True)
class AskStatus:
    """The ask part of :class:`Status`."""

    #: Process id of the connected handler (0: none).
    handler_pid: int = 0
    #: The ask timeout of the policy in force, milliseconds.
    timeout_ms: int = 0
    #: Size of the slot pool.
    slots: int = 0
    #: Requests waiting for an answer now.
    in_flight: int = 0
    #: Get-request IOCTLs pended now (idle handler workers).
    workers_waiting: int = 0
    counters: AskCounters = field(default_factory=AskCounters)

    @property
    def handler_connected(self) -> bool:
        """A handler is connected."""
        return self.handler_pid != 0

    def as_dict(self) -> Dict[str, Any]:
        """The ``"Ask"`` object of ``procguardctl status --json``."""
        return {
            "HandlerConnected": self.handler_connected,
            "HandlerProcessId": self.handler_pid,
            "TimeoutMs": self.timeout_ms,
            "Slots": self.slots,
            "InFlight": self.in_flight,
            "WorkersWaiting": self.workers_waiting,
            "Counters": self.counters.as_dict(),
        }


@dataclass(frozen=True)
class PolicyUpdates:
    """Policies applied and refused since the driver loaded (every source:
    boot, ``IOCTL_SET_POLICY``, a live registry change)."""

    applied: int = 0
    rejected: int = 0
    #: NTSTATUS of the last refusal (0: none).
    last_rejected_status: int = 0
    #: Where the policy in force came from: ``"boot"``, ``"control"``,
    #: ``"registry"``, or None before any.
    source: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        """The ``"PolicyUpdates"`` object of ``procguardctl status --json``."""
        return {
            "Applied": self.applied,
            "Rejected": self.rejected,
            "LastRejectedStatus": f"0x{self.last_rejected_status & 0xFFFFFFFF:08X}",
            "Source": self.source,
        }


@dataclass(frozen=True)
class Status:
    """``IOCTL_GET_STATUS`` output, 320 bytes."""

    protocol_version: int = PROTOCOL_VERSION
    #: ``major << 16 | minor << 8 | patch``.
    driver_version: int = 0
    callbacks_registered: bool = False
    notify_registered: bool = False
    #: Id (CRC-32) of the policy in force.
    policy_id: int = 0
    rule_count: int = 0
    tracked_processes: int = 0
    #: Last failure NTSTATUS the driver saw (0: none).
    last_error: int = 0
    #: Audit ring size, in records.
    audit_capacity: int = 0
    counters: Counters = field(default_factory=Counters)
    #: The altitude in use ("" when not registered).
    altitude: str = ""
    ask: AskStatus = field(default_factory=AskStatus)
    policy_updates: PolicyUpdates = field(default_factory=lambda: PolicyUpdates())

    SIZE = 320

    @property
    def driver_version_text(self) -> str:
        """``major.minor.patch``."""
        v = self.driver_version
        return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"

    def to_bytes(self) -> bytes:
        """Encodes (what the driver writes; the tests and fakes use it)."""
        out = bytearray(self.SIZE)
        flags = (
            int(self.callbacks_registered)
            | int(self.notify_registered) << 1
            | int(self.ask.handler_pid != 0) << 2
        )
        struct.pack_into(
            "<IIIIIIiI",
            out,
            0,
            self.protocol_version,
            self.driver_version,
            flags,
            self.policy_id,
            self.rule_count,
            self.tracked_processes,
            _i32(self.last_error, "last_error"),
            self.audit_capacity,
        )
        struct.pack_into("<9Q", out, 32, *(getattr(self.counters, n) for n in _COUNTER_NAMES))
        altitude = self.altitude.encode("utf-16-le")
        if len(altitude) > 80:
            raise ProtocolError("status: altitude longer than 40 UTF-16 units")
        struct.pack_into("<H", out, 104, len(altitude) // 2)
        out[106 : 106 + len(altitude)] = altitude
        ask = self.ask
        struct.pack_into("<I", out, 188, ask.handler_pid)
        struct.pack_into("<8Q", out, 192, *(getattr(ask.counters, n) for n in _ASK_COUNTER_NAMES))
        struct.pack_into(
            "<IIII", out, 256, ask.timeout_ms, ask.slots, ask.in_flight, ask.workers_waiting
        )
        updates = self.policy_updates
        source = {v: k for k, v in POLICY_SOURCES.items()}.get(updates.source or "", 0)
        struct.pack_into(
            "<IIiB",
            out,
            272,
            updates.applied,
            updates.rejected,
            _i32(updates.last_rejected_status, "last_rejected_status"),
            source,
        )
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Status:
        """Decodes: exactly 320 bytes, altitude length at most 40."""
        _exact(data, cls.SIZE, "status")
        (version, driver, flags, policy_id, rules, tracked, last_error, capacity) = (
            struct.unpack_from("<IIIIIIiI", data, 0)
        )
        counters = Counters(*struct.unpack_from("<9Q", data, 32))
        (altitude_len,) = struct.unpack_from("<H", data, 104)
        if altitude_len > 40:
            raise ProtocolError(f"status: altitude length {altitude_len}, at most 40")
        altitude = data[106 : 106 + altitude_len * 2].decode("utf-16-le", errors="replace")
        (handler_pid,) = struct.unpack_from("<I", data, 188)
        ask_counters = AskCounters(*struct.unpack_from("<8Q", data, 192))
        timeout_ms, slots, in_flight, waiting = struct.unpack_from("<IIII", data, 256)
        applied, rejected, last_rejected, source = struct.unpack_from("<IIiB", data, 272)
        return cls(
            protocol_version=version,
            driver_version=driver,
            callbacks_registered=bool(flags & 1),
            notify_registered=bool(flags & 2),
            policy_id=policy_id,
            rule_count=rules,
            tracked_processes=tracked,
            last_error=last_error,
            audit_capacity=capacity,
            counters=counters,
            altitude=altitude,
            ask=AskStatus(handler_pid, timeout_ms, slots, in_flight, waiting, ask_counters),
            policy_updates=PolicyUpdates(
                applied, rejected, last_rejected, POLICY_SOURCES.get(source)
            ),
        )

    def as_dict(self) -> Dict[str, Any]:
        """The object ``procguardctl status --json`` prints (``LastError`` is
        the NTSTATUS number here, or None)."""
        return {
            "ProtocolVersion": self.protocol_version,
            "DriverVersion": self.driver_version_text,
            "CallbacksRegistered": self.callbacks_registered,
            "ProcessNotifyRegistered": self.notify_registered,
            "Altitude": self.altitude,
            "PolicyId": f"{self.policy_id:#010x}",
            "RuleCount": self.rule_count,
            "TrackedProcesses": self.tracked_processes,
            "LastError": self.last_error or None,
            "AuditCapacity": self.audit_capacity,
            "Counters": self.counters.as_dict(),
            "Ask": self.ask.as_dict(),
            "PolicyUpdates": self.policy_updates.as_dict(),
        }


# --- audit records ------------------------------------------------------------

_MODES = {1: "enforce", 2: "audit", 3: "ask", 4: "policy-applied", 5: "policy-rejected"}
_OBJECTS = {1: "process", 2: "thread", 3: "policy"}
#: A policy record's ``source_process_id``: where the policy came from.
POLICY_SOURCES = {1: "boot", 2: "control", 3: "registry"}


@dataclass(frozen=True)
class AuditRecord:
    """One audit record: 64 bytes, eight little-endian 64-bit words
    (``audit_record.rs``)."""

    #: Position in the ring: consecutive; a gap means records were dropped.
    sequence: int
    #: When the request was decided (system time, 100 ns since 1601, UTC).
    timestamp: int
    #: ``"process"`` or ``"thread"``.
    object: str
    duplication: bool
    process_id: int
    thread_id: int
    originator_process_id: int
    originator_thread_id: int
    source_process_id: int
    target_process_id: int
    original_desired_access: int
    #: The access granted.
    desired_access: int
    #: For an asked request, the handler's ``result_code``; else 0.
    result_code: int
    #: The rule responsible, or :data:`NO_RULE`.
    rule_id: int
    #: ``"enforce"``, ``"audit"`` or ``"ask"``.
    mode: str
    #: For an asked request, the outcome's name (``"answered"``, ...); else None.
    ask_outcome: Optional[str] = None
    #: For an asked request, the callback's wait in microseconds; else 0.
    ask_wait_us: int = 0

    SIZE = AUDIT_RECORD_BYTES

    def to_bytes(self) -> bytes:
        """Encodes (what the driver writes; the tests and fakes use it)."""
        object_code = {v: k for k, v in _OBJECTS.items()}.get(self.object)
        mode_code = {v: k for k, v in _MODES.items()}.get(self.mode)
        if object_code is None or mode_code is None:
            raise ProtocolError(f"audit record: object {self.object!r} / mode {self.mode!r}")
        outcome = 0
        if self.ask_outcome is not None:
            codes = {v: k for k, v in ASK_OUTCOMES.items()}
            if self.ask_outcome not in codes:
                raise ProtocolError(f"audit record: unknown ask outcome {self.ask_outcome!r}")
            outcome = codes[self.ask_outcome]
        flags = (
            object_code
            | int(self.duplication) << 8
            | mode_code << 16
            | outcome << 32
            | min(self.ask_wait_us, MAX_ASK_WAIT_US) << 40
        )
        return struct.pack(
            "<QqIIIIIIIIiIQ",
            self.sequence,
            self.timestamp,
            self.process_id,
            self.thread_id,
            self.originator_process_id,
            self.originator_thread_id,
            self.source_process_id,
            self.target_process_id,
            self.original_desired_access,
            self.desired_access,
            _i32(self.result_code, "result_code"),
            self.rule_id,
            flags,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditRecord:
        """Decodes one record: exact length, known codes, reserved bits zero."""
        _exact(data, AUDIT_RECORD_BYTES, "audit record")
        values = struct.unpack("<QqIIIIIIIIiIQ", data)
        flags = values[-1]
        if flags & ~0xFFFFFFFF00FF01FF:
            raise ProtocolError("audit record: reserved bits set")
        object_code = flags & 0xFF
        mode_code = (flags >> 16) & 0xFF
        outcome_code = (flags >> 32) & 0xFF
        if object_code not in _OBJECTS:
            raise ProtocolError(f"audit record: unknown object code {object_code}")
        if mode_code not in _MODES:
            raise ProtocolError(f"audit record: unknown mode code {mode_code}")
        if outcome_code and outcome_code not in ASK_OUTCOMES:
            raise ProtocolError(f"audit record: unknown ask outcome code {outcome_code}")
        return cls(
            sequence=values[0],
            timestamp=values[1],
            object=_OBJECTS[object_code],
            duplication=bool(flags & 0x100),
            process_id=values[2],
            thread_id=values[3],
            originator_process_id=values[4],
            originator_thread_id=values[5],
            source_process_id=values[6],
            target_process_id=values[7],
            original_desired_access=values[8],
            desired_access=values[9],
            result_code=values[10],
            rule_id=values[11],
            mode=_MODES[mode_code],
            ask_outcome=ASK_OUTCOMES.get(outcome_code),
            ask_wait_us=flags >> 40,
        )


@dataclass(frozen=True)
class EventsHeader:
    """``IOCTL_READ_EVENTS`` output header, 16 bytes."""

    #: Records in this response.
    records: int
    #: Records still waiting in the ring.
    remaining: int
    #: Records dropped since load (ring full).
    dropped: int

    SIZE = 16

    def to_bytes(self) -> bytes:
        """Encodes."""
        return struct.pack("<IIQ", self.records, self.remaining, self.dropped)


def parse_events(data: bytes) -> Tuple[EventsHeader, List[AuditRecord]]:
    """Decodes a whole ``IOCTL_READ_EVENTS`` response: the header, then
    exactly ``records`` whole records."""
    if len(data) < EventsHeader.SIZE:
        raise ProtocolError(f"events: {len(data)} bytes, at least 16 expected")
    header = EventsHeader(*struct.unpack_from("<IIQ", data))
    expected = EventsHeader.SIZE + header.records * AUDIT_RECORD_BYTES
    if len(data) != expected:
        raise ProtocolError(
            f"events: {len(data)} bytes for {header.records} records, {expected} expected"
        )
    records = [
        AuditRecord.from_bytes(data[at : at + AUDIT_RECORD_BYTES])
        for at in range(EventsHeader.SIZE, expected, AUDIT_RECORD_BYTES)
    ]
    return header, records


# --- policy and counters --------------------------------------------------------


def encode_set_policy(blob: bytes, persist: bool = False) -> bytes:
    """``IOCTL_SET_POLICY`` input: flags (1 = persist), length, the blob."""
    if len(blob) > MAX_POLICY_BYTES:
        raise ProtocolError(f"policy blob of {len(blob)} bytes, at most {MAX_POLICY_BYTES}")
    return struct.pack("<II", 1 if persist else 0, len(blob)) + bytes(blob)


@dataclass(frozen=True)
class PolicyHeader:
    """``IOCTL_GET_POLICY`` output header, 8 bytes (the blob follows)."""

    blob_len: int
    policy_id: int

    SIZE = 8

    def to_bytes(self) -> bytes:
        """Encodes."""
        return struct.pack("<II", self.blob_len, self.policy_id)

    @classmethod
    def from_bytes(cls, data: bytes) -> PolicyHeader:
        """Decodes the header of a response (at least 8 bytes)."""
        if len(data) < cls.SIZE:
            raise ProtocolError(f"policy header: {len(data)} bytes, 8 expected")
        return cls(*struct.unpack_from("<II", data))


@dataclass(frozen=True)
class RuleCounters:
    """``IOCTL_GET_RULE_COUNTERS`` output: the policy the counters belong to
    and ``(hits, strips)`` per rule, in rule order."""

    policy_id: int
    rules: Tuple[Tuple[int, int], ...]

    HEADER = 8
    PER_RULE = 16

    def to_bytes(self) -> bytes:
        """Encodes."""
        out = struct.pack("<II", len(self.rules), self.policy_id)
        return out + b"".join(struct.pack("<QQ", h, s) for h, s in self.rules)

    @classmethod
    def from_bytes(cls, data: bytes) -> RuleCounters:
        """Decodes: the length must match the rule count."""
        if len(data) < cls.HEADER:
            raise ProtocolError(f"rule counters: {len(data)} bytes, at least 8 expected")
        count, policy_id = struct.unpack_from("<II", data)
        expected = cls.HEADER + count * cls.PER_RULE
        if len(data) != expected:
            raise ProtocolError(
                f"rule counters: {len(data)} bytes for {count} rules, {expected} expected"
            )
        rules = tuple(
            struct.unpack_from("<QQ", data, cls.HEADER + index * cls.PER_RULE)
            for index in range(count)
        )
        return cls(policy_id, rules)


def policy_rule_names(blob: bytes) -> List[str]:
    """The rule names of a compiled policy blob, in rule order (rule ids are
    indexes into it), read as FORMAT.md lays the blob out (header, string
    directory, rules). Only what naming needs is checked; the driver validates
    blobs fully."""
    if len(blob) < 40 or blob[:4] != b"PGPB":
        raise ProtocolError("not a procguard policy blob (magic PGPB)")
    header_size = struct.unpack_from("<H", blob, 6)[0]
    string_count, rule_count, data_len = struct.unpack_from("<III", blob, 20)
    directory_end = header_size + 8 * string_count
    data_end = directory_end + data_len
    if data_end > len(blob):
        raise ProtocolError("policy blob: string data past the end")
    strings = []
    for index in range(string_count):
        offset, length = struct.unpack_from("<II", blob, header_size + 8 * index)
        if offset + length > data_len:
            raise ProtocolError("policy blob: string out of bounds")
        raw = blob[directory_end + offset : directory_end + offset + length]
        strings.append(raw.decode("utf-8", errors="replace"))
    at = (data_end + 3) // 4 * 4
    names = []
    try:
        for _ in range(rule_count):
            name_index, _objects, _operations, _mode, requester_kind = struct.unpack_from(
                "<IBBBB", blob, at
            )
            at += 16
            for _selector in range(2 if requester_kind in (1, 2) else 1):
                name_count, path_count, pid_count = struct.unpack_from("<III", blob, at)
                at += 12 + 4 * (name_count + path_count + pid_count)
            names.append(strings[name_index])
    except (struct.error, IndexError) as error:
        raise ProtocolError(f"policy blob: malformed rule ({error})") from None
    return names
