"""The parameter objects a handler receives: CBFS Filter's
``CBProcess.on_process_handle_operation`` / ``on_thread_handle_operation``
event parameters, with the same property names and meanings, plus what the
driver knows beyond them (so a handler needs no lookups)."""

from __future__ import annotations

from datetime import datetime
from typing import Union

from .events import filetime_to_datetime
from .protocol import AskRequest
from .rights import mask_names

__all__ = [
    "HandleOperationEventParams",
    "ProcessHandleOperationEventParams",
    "ThreadHandleOperationEventParams",
    "EventParams",
]


class HandleOperationEventParams:
    """A handle request to decide.

    CBProcess's properties: ``duplication``, ``process_id``,
    ``originator_process_id``, ``originator_thread_id``, ``source_process_id``
    and ``target_process_id`` (both valid only for duplication, else 0),
    ``original_desired_access`` (the access as requested), ``desired_access``
    (settable: starts as what the policy's enforce rules left of the request;
    bits may only be removed, never added) and ``result_code`` (settable:
    0 when the handler is called; a non-zero value is recorded in the audit
    record, the requester never sees it).

    procguard's additions: ``object_kind``, ``thread_id``, ``rule_id``,
    ``requester_process_id`` / ``requester_create_time`` /
    ``requester_image_name`` (the process that receives the handle),
    ``target_create_time`` / ``target_image_name`` (of ``process_id``),
    ``timestamp`` / ``time``, ``ask_rights`` (the bits the ask rule is about),
    ``fallback_access`` (what the request gets without an answer) and
    ``timeout_ms``; ``request`` is the decoded wire request.
    """

    __slots__ = ("_request", "_desired_access", "_result_code")

    def __init__(self, request: AskRequest) -> None:
        self._request = request
        self._desired_access = request.desired_access
        self._result_code = 0

    # --- CBProcess's properties -------------------------------------------

    @property
    def duplication(self) -> bool:
        """True when the handle is being duplicated, False when created."""
        return self._request.duplication

    @property
    def process_id(self) -> int:
        """The process the handle is for (for a thread handle: its owner)."""
        return self._request.process_id

    @property
    def originator_process_id(self) -> int:
        """The process that made the request."""
        return self._request.originator_process_id

    @property
    def originator_thread_id(self) -> int:
        """The thread that made the request."""
        return self._request.originator_thread_id

    @property
    def source_process_id(self) -> int:
        """Duplication: the process the handle is duplicated from; else 0."""
        return self._request.source_process_id

    @property
    def target_process_id(self) -> int:
        """Duplication: the process that receives the handle; else 0."""
        return self._request.target_process_id

    @property
    def original_desired_access(self) -> int:
        """The access as requested."""
        return self._request.original_desired_access

    @property
    def desired_access(self) -> int:
        """The access the handle will get. Starts as the request left by the
        policy's enforce rules; set it to remove bits. Adding a bit raises
        ``ValueError`` naming the bits."""
        return self._desired_access

    @desired_access.setter
    def desired_access(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"desired_access must be an int, not {type(value).__name__}")
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"desired_access must be a 32-bit access mask, not {value:#x}")
        added = value & ~self._request.desired_access
        if added:
            raise ValueError(
                f"desired_access may only remove rights: {value:#x} adds "
                f"{mask_names(added, self.object_kind)} ({added:#x}) to {self._request.desired_access:#x}"
            )
        self._desired_access = value

    @property
    def result_code(self) -> int:
        """The handler's status, recorded in the audit record (0: none)."""
        return self._result_code

    @result_code.setter
    def result_code(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"result_code must be an int, not {type(value).__name__}")
        if not -(1 << 31) <= value <= 0xFFFFFFFF:
            raise ValueError(f"result_code must fit 32 bits, not {value}")
        value &= 0xFFFFFFFF
        self._result_code = value - (1 << 32) if value & 0x80000000 else value

    # --- procguard's additions ----------------------------------------------

    @property
    def request(self) -> AskRequest:
        """The decoded wire request."""
        return self._request

    @property
    def object_kind(self) -> str:
        """``"process"`` or ``"thread"``."""
        return self._request.object

    @property
    def thread_id(self) -> int:
        """For thread handles, the thread; 0 for process handles."""
        return self._request.thread_id

    @property
    def rule_id(self) -> int:
        """The ask rule that sent the request (its index in the policy)."""
        return self._request.rule_id

    @property
    def requester_process_id(self) -> int:
        """The process that gets the handle (create: the originator;
        duplication: ``target_process_id``)."""
        return self._request.requester_pid

    @property
    def requester_create_time(self) -> int:
        """The requester's creation key (create time, FILETIME units)."""
        return self._request.requester_create_time

    @property
    def requester_image_name(self) -> str:
        """The requester's image file name (``"tool.exe"``; "" when unknown;
        cut at 64 UTF-16 units, see ``request.requester_image_truncated``)."""
        return self._request.requester_image

    @property
    def target_create_time(self) -> int:
        """Creation key of ``process_id``."""
        return self._request.target_create_time

    @property
    def target_image_name(self) -> str:
        """Image file name of ``process_id``."""
        return self._request.target_image

    @property
    def timestamp(self) -> int:
        """When the request was made (FILETIME: 100 ns since 1601, UTC)."""
        return self._request.timestamp

    @property
    def time(self) -> datetime:
        """``timestamp`` as an aware UTC datetime."""
        return filetime_to_datetime(self._request.timestamp)

    @property
    def ask_rights(self) -> int:
        """The bits of ``desired_access`` the ask rule is about."""
        return self._request.ask_rights

    @property
    def fallback_access(self) -> int:
        """What the request gets if no answer comes in time (also the answer
        sent when the handler raises)."""
        return self._request.fallback_access

    @property
    def timeout_ms(self) -> int:
        """How long the driver waits for the answer, milliseconds."""
        return self._request.timeout_ms

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(object_kind={self.object_kind!r}, duplication={self.duplication},"
            f" process_id={self.process_id}, thread_id={self.thread_id},"
            f" originator_process_id={self.originator_process_id},"
            f" requester={self.requester_image_name!r},"
            f" original_desired_access={self.original_desired_access:#x},"
            f" desired_access={self.desired_access:#x}, rule_id={self.rule_id})"
        )


class ProcessHandleOperationEventParams(HandleOperationEventParams):
    """Parameters of ``on_process_handle_operation`` (a process handle)."""

    __slots__ = ()


class ThreadHandleOperationEventParams(HandleOperationEventParams):
    """Parameters of ``on_thread_handle_operation`` (a thread handle:
    ``thread_id`` is the thread, ``process_id`` its owning process)."""

    __slots__ = ()


EventParams = Union[ProcessHandleOperationEventParams, ThreadHandleOperationEventParams]
