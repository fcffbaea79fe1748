"""The handler side of the ask protocol: one request's bytes in, one reply's
bytes out, by calling the application's handler.

This is the seam the emulator suite drives (``tests/emulator``), and what
:class:`~procguard.ProcGuard`'s worker threads run; keep it stable::

    dispatcher = Dispatcher(on_process_handle_operation=handler)
    decision = dispatcher.decide(request_bytes)      # pure: no I/O
    decision.reply_bytes                             # 16 bytes, AskReply
    decision = dispatcher.serve(request_bytes, transport)
    # = decide(), then transport.ioctl(IOCTL_ASK_REPLY, decision.reply_bytes, 0)

``decide(request: bytes | AskRequest) -> Decision`` and
``serve(request: bytes | AskRequest, transport: Transport) -> Decision`` are
synchronous and thread-safe. ``decide`` raises
:class:`~procguard.errors.ProtocolError` only for request bytes that are not
an ``AskRequest`` (no reply can be addressed then); everything the handler
does is contained:

* the handler gets a :class:`ProcessHandleOperationEventParams` or
  :class:`ThreadHandleOperationEventParams`; the reply carries its final
  ``desired_access`` and ``result_code``;
* a handler that raises: the reply is the request's ``fallback_access`` with
  ``result_code`` :data:`~procguard.protocol.RESULT_HANDLER_RAISED`
  (``0x20000001``); the exception is logged on ``logging.getLogger("procguard")``
  and passed to ``on_error(exception, params)`` when set;
* no handler for the request's object kind: the fallback, result code 0
  (as if no answer came: the ask rule's ``on_timeout`` decides);
* the handler's time is measured (``Decision.elapsed``, seconds, including a
  wait for the lock under ``serialize_events``); ``serve`` sends the reply
  anyway when the handler overran ``timeout_ms``: the driver refuses a late
  one with ``STATUS_NOT_FOUND`` (it counts it and applied the fallback
  already), which ``serve`` logs and reports as ``Decision.late``. Other reply
  failures are logged and reported in ``Decision.reply_error``; ``serve``
  never raises for them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from .errors import DriverError
from .params import (
    HandleOperationEventParams,
    ProcessHandleOperationEventParams,
    ThreadHandleOperationEventParams,
)
from .protocol import IOCTL_ASK_REPLY, RESULT_HANDLER_RAISED, AskReply, AskRequest
from .transport import Transport

__all__ = ["Dispatcher", "Decision", "Handler", "ErrorCallback", "logger"]

#: The package's logger.
logger = logging.getLogger("procguard")

#: A handler: called with the event parameters; its return value is ignored.
Handler = Callable[[HandleOperationEventParams], object]
#: Called with the exception a handler raised and the parameters it got.
ErrorCallback = Callable[[BaseException, HandleOperationEventParams], object]


@dataclass
class Decision:
    """What the dispatcher decided for one request."""

    #: The request.
    request: AskRequest
    #: The reply (``desired_access``, ``result_code``).
    reply: AskReply
    #: Its 16 bytes, for ``IOCTL_ASK_REPLY``.
    reply_bytes: bytes
    #: Seconds from the request's arrival to the reply being ready.
    elapsed: float
    #: The exception the handler raised, if it did.
    error: Optional[BaseException] = None
    #: No handler was set for the request's object kind (fallback sent).
    unhandled: bool = False
    #: ``serve``: the driver refused the reply as late (``STATUS_NOT_FOUND``).
    late: bool = False
    #: ``serve``: another failure sending the reply.
    reply_error: Optional[DriverError] = None

    @property
    def over_time(self) -> bool:
        """The handler took longer than the request's timeout."""
        return self.elapsed * 1000.0 > self.request.timeout_ms


class Dispatcher:
    """Turns ask requests into replies by calling the handlers (see the module
    documentation). Handlers and ``on_error`` may be replaced at any time."""

    def __init__(
        self,
        on_process_handle_operation: Optional[Handler] = None,
        on_thread_handle_operation: Optional[Handler] = None,
        *,
        on_error: Optional[ErrorCallback] = None,
        serialize_events: bool = False,
    ) -> None:
        self.on_process_handle_operation = on_process_handle_operation
        self.on_thread_handle_operation = on_thread_handle_operation
        self.on_error = on_error
        #: Call one handler at a time (CBProcess's ``SerializeEvents``).
        self.serialize_events = serialize_events
        self._serial = threading.Lock()
        self._stats_lock = threading.Lock()
        #: Requests decided, handler exceptions, late replies (for monitoring).
        self.decided = 0
        self.errors = 0
        self.late_replies = 0

    def decide(self, request: Union[bytes, AskRequest]) -> Decision:
        """Calls the handler for one request; returns the reply. Raises
        ``ProtocolError`` only if ``request`` bytes are not an ``AskRequest``."""
        started = time.perf_counter()
        if not isinstance(request, AskRequest):
            request = AskRequest.from_bytes(bytes(request))
        params: HandleOperationEventParams
        if request.object == "thread":
            params = ThreadHandleOperationEventParams(request)
            handler = self.on_thread_handle_operation
        else:
            params = ProcessHandleOperationEventParams(request)
            handler = self.on_process_handle_operation
        error: Optional[BaseException] = None
        if handler is None:
            access, result_code = request.fallback_access, 0
        else:
            try:
                if self.serialize_events:
                    with self._serial:
                        handler(params)
                else:
                    handler(params)
                access, result_code = params.desired_access, params.result_code
            except Exception as raised:  # noqa: BLE001 - any handler failure gets the fallback
                error = raised
                access, result_code = request.fallback_access, RESULT_HANDLER_RAISED
        elapsed = time.perf_counter() - started
        reply = AskReply(request.id, request.generation, access, result_code)
        decision = Decision(
            request, reply, reply.to_bytes(), elapsed, error=error, unhandled=handler is None
        )
        with self._stats_lock:
            self.decided += 1
            self.errors += error is not None
        if error is not None:
            logger.error(
                "handler raised for %s handle request %d/%d (process %d, rule %d): "
                "replied with the fallback access %#x, result code %#x",
                request.object,
                request.id,
                request.generation,
                request.process_id,
                request.rule_id,
                request.fallback_access,
                RESULT_HANDLER_RAISED,
                exc_info=error,
            )
            callback = self.on_error
            if callback is not None:
                try:
                    callback(error, params)
                except Exception:  # noqa: BLE001 - an on_error failure must not stop the reply
                    logger.exception("on_error raised")
        elif handler is None:
            logger.debug("no %s handler set: request %d answered with the fallback",
                         request.object, request.id)
        return decision

    def serve(self, request: Union[bytes, AskRequest], transport: Transport) -> Decision:
        """``decide``, then sends the reply with ``IOCTL_ASK_REPLY`` on
        ``transport``. Never raises for a failed reply: see ``Decision``."""
        decision = self.decide(request)
        try:
            transport.ioctl(IOCTL_ASK_REPLY, decision.reply_bytes, 0)
        except DriverError as failure:
            if failure.not_found:
                decision.late = True
                with self._stats_lock:
                    self.late_replies += 1
                logger.warning(
                    "late reply: the handler took %.1f ms for request %d/%d, the driver waited "
                    "%d ms and applied the fallback (access %#x)",
                    decision.elapsed * 1000.0,
                    decision.request.id,
                    decision.request.generation,
                    decision.request.timeout_ms,
                    decision.request.fallback_access,
                )
            else:
                decision.reply_error = failure
                logger.warning("reply to request %d/%d failed: %s",
                               decision.request.id, decision.request.generation, failure)
        return decision
