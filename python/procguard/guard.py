"""``ProcGuard``: the application's view of the driver, with CBProcess's
event API for handlers.

Worker threads each loop *get-request → dispatch → reply* on one device
handle: they pend ``IOCTL_ASK_GET_REQUEST``; the driver completes one when a
request matches an ``ask`` rule; the :class:`~procguard.dispatcher.Dispatcher`
calls the handler and sends ``IOCTL_ASK_REPLY``. ``stop()`` sends
``IOCTL_ASK_DISCONNECT``: the driver releases every waiting request with its
fallback and completes the pended get-requests with ``STATUS_CANCELLED``,
which ends the workers; then they are joined and the handle is closed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .dispatcher import Dispatcher, ErrorCallback, Handler, logger
from .errors import DriverError, PolicyError, ProtocolError
from .events import AuditEvent
from .protocol import (
    AUDIT_RECORD_BYTES,
    IOCTL_ASK_CONNECT,
    IOCTL_ASK_DISCONNECT,
    IOCTL_ASK_GET_REQUEST,
    IOCTL_GET_POLICY,
    IOCTL_GET_RULE_COUNTERS,
    IOCTL_GET_STATUS,
    IOCTL_READ_EVENTS,
    IOCTL_SET_POLICY,
    IOCTL_WAIT_EVENTS,
    MAX_POLICY_BYTES,
    AskCounters,
    AskRequest,
    ConnectRequest,
    ConnectResponse,
    Counters,
    EventsHeader,
    PolicyHeader,
    RuleCounters,
    Status,
    encode_set_policy,
    parse_events,
    policy_rule_names,
)
from .transport import Transport, WindowsTransport

__all__ = ["ProcGuard", "CountersReport", "RuleCount"]

#: Records asked for per ``IOCTL_READ_EVENTS`` (as procguardctl).
EVENTS_PER_READ = 256


@dataclass(frozen=True)
class RuleCount:
    """One rule's counters."""

    rule_id: int
    #: Its name in the policy in force (None if unknown).
    name: Optional[str]
    #: Requests it applied to.
    hits: int
    #: Requests it removed bits from.
    strips: int


@dataclass(frozen=True)
class CountersReport:
    """``ProcGuard.counters()``: request totals, ask totals and per-rule counts."""

    requests: Counters
    ask: AskCounters
    #: The policy the per-rule counters belong to.
    policy_id: int
    rules: Tuple[RuleCount, ...]

    def as_dict(self) -> Dict[str, Any]:
        """As JSON-ready dicts (``procguardctl status --json`` counter names)."""
        return {
            "Counters": self.requests.as_dict(),
            "AskCounters": self.ask.as_dict(),
            "PolicyId": f"{self.policy_id:#010x}",
            "Rules": [
                {"RuleId": r.rule_id, "Rule": r.name, "Hits": r.hits, "Strips": r.strips}
                for r in self.rules
            ],
        }


class ProcGuard:
    """The procguard driver, from user mode.

    ``transport``: how to reach the driver; by default :class:`WindowsTransport`
    opened on first use (and closed by :meth:`stop` / :meth:`close`). A
    transport passed in belongs to the caller and is never closed here.

    ``procguardctl``: the control tool :meth:`apply_policy` runs to compile a
    TOML policy. When not given: the ``PROCGUARDCTL`` environment variable,
    then ``procguardctl`` on ``PATH``, then ``procguardctl.exe`` in the
    current directory (the package folder ships one).

    Handlers: set :attr:`on_process_handle_operation` and/or
    :attr:`on_thread_handle_operation`, then :meth:`start`. Use as a context
    manager to stop and close on exit.
    """

    def __init__(
        self,
        transport: Optional[Transport] = None,
        *,
        procguardctl: Optional[str] = None,
        on_error: Optional[ErrorCallback] = None,
    ) -> None:
        self._transport = transport
        self._owns_transport = transport is None
        self._procguardctl = procguardctl
        self._dispatcher = Dispatcher(on_error=on_error)
        self._workers: List[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        #: The driver's answer to the connection (slots, timeout, handler pid),
        #: set by :meth:`start`.
        self.connection: Optional[ConnectResponse] = None

    # --- handlers -----------------------------------------------------------

    @property
    def on_process_handle_operation(self) -> Optional[Handler]:
        """Called for every process-handle request an ask rule sends, with a
        :class:`~procguard.params.ProcessHandleOperationEventParams`."""
        return self._dispatcher.on_process_handle_operation

    @on_process_handle_operation.setter
    def on_process_handle_operation(self, handler: Optional[Handler]) -> None:
        if handler is not None and not callable(handler):
            raise TypeError("on_process_handle_operation takes a callable")
        self._dispatcher.on_process_handle_operation = handler

    @property
    def on_thread_handle_operation(self) -> Optional[Handler]:
        """Called for every thread-handle request an ask rule sends, with a
        :class:`~procguard.params.ThreadHandleOperationEventParams`."""
        return self._dispatcher.on_thread_handle_operation

    @on_thread_handle_operation.setter
    def on_thread_handle_operation(self, handler: Optional[Handler]) -> None:
        if handler is not None and not callable(handler):
            raise TypeError("on_thread_handle_operation takes a callable")
        self._dispatcher.on_thread_handle_operation = handler

    @property
    def on_error(self) -> Optional[ErrorCallback]:
        """Called with ``(exception, params)`` when a handler raises."""
        return self._dispatcher.on_error

    @on_error.setter
    def on_error(self, callback: Optional[ErrorCallback]) -> None:
        self._dispatcher.on_error = callback

    @property
    def dispatcher(self) -> Dispatcher:
        """The dispatcher the workers run (its counters: ``decided``,
        ``errors``, ``late_replies``)."""
        return self._dispatcher

    @property
    def active(self) -> bool:
        """Workers are running."""
        return any(worker.is_alive() for worker in self._workers)

    # --- lifecycle -------------------------------------------------------------

    def _open(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = WindowsTransport()
                self._owns_transport = True
            return self._transport

    def start(self, workers: Optional[int] = None, serialize_events: bool = False) -> None:
        """Connects as the handler and starts ``workers`` threads (default
        4 × CPUs, as CBProcess). With ``serialize_events`` one handler call runs
        at a time. Raises ``DriverError`` (``STATUS_SHARING_VIOLATION``) when
        another handler is connected."""
        if self._workers:
            raise RuntimeError("already started: call stop() first")
        if self.on_process_handle_operation is None and self.on_thread_handle_operation is None:
            raise ValueError("set on_process_handle_operation or on_thread_handle_operation first")
        count = 4 * (os.cpu_count() or 1) if workers is None else workers
        if count < 1:
            raise ValueError(f"workers must be at least 1, not {count}")
        transport = self._open()
        response = transport.ioctl(
            IOCTL_ASK_CONNECT, ConnectRequest().to_bytes(), ConnectResponse.SIZE
        )
        self.connection = ConnectResponse.from_bytes(response)
        self._dispatcher.serialize_events = serialize_events
        self._stopping.clear()
        self._workers = [
            threading.Thread(
                target=self._work, args=(transport,), name=f"procguard-worker-{index}", daemon=True
            )
            for index in range(count)
        ]
        for worker in self._workers:
            worker.start()
        logger.info(
            "connected as the handler (process %d): %d workers, driver timeout %d ms, %d slots",
            self.connection.handler_pid,
            count,
            self.connection.timeout_ms,
            self.connection.slots,
        )

    def _work(self, transport: Transport) -> None:
        while not self._stopping.is_set():
            try:
                request = transport.ioctl(IOCTL_ASK_GET_REQUEST, b"", AskRequest.SIZE)
            except DriverError as failure:
                if failure.cancelled or self._stopping.is_set():
                    return
                logger.error("get request failed: %s; worker %s ends",
                             failure, threading.current_thread().name)
                return
            try:
                self._dispatcher.serve(request, transport)
            except ProtocolError as error:
                logger.error("the driver sent a malformed request (%s): not answered", error)

    def stop(self, timeout: Optional[float] = 10.0) -> None:
        """Disconnects (every waiting request gets its fallback, the workers'
        pended get-requests are cancelled), joins the workers (waiting up to
        ``timeout`` seconds for handlers still running), and closes the
        device handle if this object opened it. Safe to call twice."""
        workers, self._workers = self._workers, []
        if workers:
            self._stopping.set()
            transport = self._transport
            if transport is not None:
                try:
                    transport.ioctl(IOCTL_ASK_DISCONNECT, b"", 0)
                except DriverError as failure:
                    logger.warning("disconnect failed: %s", failure)
            for worker in workers:
                worker.join(timeout)
            stuck = [worker.name for worker in workers if worker.is_alive()]
            if stuck:
                logger.warning("workers still in a handler after %s s: %s", timeout, stuck)
            self.connection = None
        self.close()

    def close(self) -> None:
        """Closes the device handle if this object opened it (a later call
        opens a new one)."""
        with self._lock:
            transport = self._transport
            if transport is not None and self._owns_transport:
                self._transport = None
                transport.close()

    def __enter__(self) -> ProcGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- status, counters, events, policy ---------------------------------------

    def status(self) -> Status:
        """The driver's status (``procguardctl status``); ``.as_dict()`` gives
        the ``status --json`` object."""
        return Status.from_bytes(self._open().ioctl(IOCTL_GET_STATUS, b"", Status.SIZE))

    def policy(self) -> Tuple[int, bytes]:
        """The policy in force: ``(policy_id, blob)`` (empty blob: none)."""
        data = self._open().ioctl(IOCTL_GET_POLICY, b"", PolicyHeader.SIZE + MAX_POLICY_BYTES)
        header = PolicyHeader.from_bytes(data)
        blob = data[PolicyHeader.SIZE :]
        if len(blob) != header.blob_len:
            raise ProtocolError(
                f"get policy: the header announces {header.blob_len} bytes, {len(blob)} follow"
            )
        return header.policy_id, blob

    def rule_names(self) -> Tuple[int, List[str]]:
        """``(policy_id, names)`` of the policy in force; no names when its
        blob cannot be read."""
        policy_id, blob = self.policy()
        if not blob:
            return policy_id, []
        try:
            return policy_id, policy_rule_names(blob)
        except ProtocolError as error:
            logger.warning("the driver's policy blob does not decode (%s): rules shown by id", error)
            return policy_id, []

    def counters(self) -> CountersReport:
        """Request and ask totals (from the status) and per-rule hits and
        strips with the rules' names."""
        status = self.status()
        transport = self._open()
        size = RuleCounters.HEADER + (status.rule_count + 64) * RuleCounters.PER_RULE
        rules = RuleCounters.from_bytes(transport.ioctl(IOCTL_GET_RULE_COUNTERS, b"", size))
        names_id, names = self.rule_names()
        if names_id != rules.policy_id:
            names = []
        return CountersReport(
            requests=status.counters,
            ask=status.ask.counters,
            policy_id=rules.policy_id,
            rules=tuple(
                RuleCount(index, names[index] if index < len(names) else None, hits, strips)
                for index, (hits, strips) in enumerate(rules.rules)
            ),
        )

    def events(self, follow: bool = False) -> Iterator[AuditEvent]:
        """Drains the driver's audit records, oldest first, as
        :class:`~procguard.events.AuditEvent` objects (``.as_dict()``: the
        ``procguardctl events --json`` line). With ``follow`` it then waits for
        more (``IOCTL_WAIT_EVENTS``: a pended request, no polling) until the
        consumer stops iterating or the handle is closed. Reading consumes the
        records."""
        transport = self._open()
        policy_id, names = self.rule_names()
        while True:
            data = transport.ioctl(
                IOCTL_READ_EVENTS, b"", EventsHeader.SIZE + EVENTS_PER_READ * AUDIT_RECORD_BYTES
            )
            header, records = parse_events(data)
            for record in records:
                name = names[record.rule_id] if record.rule_id < len(names) else None
                yield AuditEvent.from_record(record, name)
            if header.remaining and records:
                continue
            if not follow:
                return
            try:
                transport.ioctl(IOCTL_WAIT_EVENTS, b"", 8)
            except DriverError as failure:
                if failure.cancelled:
                    return
                raise
            # A new policy renames the rules of the records that follow.
            if self.status().policy_id != policy_id:
                policy_id, names = self.rule_names()

    def _find_procguardctl(self) -> str:
        candidates = [self._procguardctl, os.environ.get("PROCGUARDCTL")]
        candidates.append(shutil.which("procguardctl"))
        local = Path.cwd() / "procguardctl.exe"
        candidates.append(str(local) if local.exists() else None)
        for candidate in candidates:
            if candidate:
                return candidate
        raise PolicyError(
            "a TOML policy needs procguardctl to compile it: pass procguardctl= to ProcGuard, set "
            "PROCGUARDCTL, put procguardctl on PATH, or apply a compiled blob "
            "(procguardctl compile policy.toml -o policy.bin)"
        )

    def compile_policy(self, path: Union[str, "os.PathLike[str]"]) -> bytes:
        """Compiles a TOML policy with ``procguardctl compile``; returns the blob."""
        tool = self._find_procguardctl()
        with tempfile.TemporaryDirectory(prefix="procguard-") as directory:
            output = Path(directory) / "policy.bin"
            run = subprocess.run(
                [tool, "compile", str(path), "-o", str(output)],
                capture_output=True,
                text=True,
                check=False,
            )
            if run.returncode != 0 or not output.exists():
                detail = (run.stderr or run.stdout).strip()
                raise PolicyError(f"procguardctl compile {path} failed ({run.returncode}): {detail}")
            return output.read_bytes()

    def apply_policy(
        self, path: Union[str, "os.PathLike[str]"], persist: bool = False
    ) -> int:
        """Makes a policy the driver's: a compiled blob (``PGPB`` magic) is sent
        as is; anything else is compiled as TOML by ``procguardctl compile``.
        ``persist`` also stores it in the registry (in force from boot).
        Returns the policy id, after checking the driver reports it."""
        data = Path(path).read_bytes()
        blob = data if data[:4] == b"PGPB" else self.compile_policy(path)
        if len(blob) < 16:
            raise PolicyError(f"{path}: not a policy blob")
        transport = self._open()
        try:
            transport.ioctl(IOCTL_SET_POLICY, encode_set_policy(blob, persist), 0)
        except DriverError as failure:
            raise PolicyError(
                f"the driver refused the policy ({failure}): it validates every blob and keeps "
                "the policy it had; is procguardctl older or newer than the driver?"
            ) from failure
        policy_id = int.from_bytes(blob[12:16], "little")
        active = self.status().policy_id
        if active != policy_id:
            raise PolicyError(
                f"the driver accepted the policy but reports policy id {active:#010x}, "
                f"not {policy_id:#010x}: another policy was applied meanwhile?"
            )
        return policy_id

