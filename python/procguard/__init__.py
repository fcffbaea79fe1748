"""procguard: decide process- and thread-handle requests in Python.

The procguard driver strips access rights from process and thread handles by
policy. Where a rule says ``mode = "ask"``, it asks a user-mode handler
synchronously, with a timeout and a fallback; this package is that handler's
side, with the event API of CBFS Filter's ``CBProcess``::

    from procguard import ProcGuard, PROCESS_TERMINATE

    def on_process_handle_operation(e):
        if e.process_id == 4242:
            e.desired_access &= ~PROCESS_TERMINATE

    guard = ProcGuard()
    guard.on_process_handle_operation = on_process_handle_operation
    guard.start()

Modules: :mod:`procguard.guard` (``ProcGuard``), :mod:`procguard.params` (the
handler's parameter objects), :mod:`procguard.dispatcher` (request bytes →
reply bytes), :mod:`procguard.transport` (``Transport``, ``WindowsTransport``),
:mod:`procguard.protocol` (the wire format), :mod:`procguard.events` (audit
events), :mod:`procguard.rights` (access-right names), :mod:`procguard.errors`.
"""

from __future__ import annotations

from .dispatcher import Decision, Dispatcher
from .errors import DriverError, PolicyError, ProcGuardError, ProtocolError
from .events import AuditEvent
from .guard import CountersReport, ProcGuard, RuleCount
from .params import (
    HandleOperationEventParams,
    ProcessHandleOperationEventParams,
    ThreadHandleOperationEventParams,
)
from .protocol import RESULT_HANDLER_RAISED, Status
from .rights import (  # the access-right constants
    PROCESS_TERMINATE,
    PROCESS_CREATE_THREAD,
    PROCESS_SET_SESSIONID,
    PROCESS_VM_OPERATION,
    PROCESS_VM_READ,
    PROCESS_VM_WRITE,
    PROCESS_DUP_HANDLE,
    PROCESS_CREATE_PROCESS,
    PROCESS_SET_QUOTA,
    PROCESS_SET_INFORMATION,
    PROCESS_QUERY_INFORMATION,
    PROCESS_SUSPEND_RESUME,
    PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SET_LIMITED_INFORMATION,
    THREAD_TERMINATE,
    THREAD_SUSPEND_RESUME,
    THREAD_ALERT,
    THREAD_GET_CONTEXT,
    THREAD_SET_CONTEXT,
    THREAD_SET_INFORMATION,
    THREAD_QUERY_INFORMATION,
    THREAD_SET_THREAD_TOKEN,
    THREAD_IMPERSONATE,
    THREAD_DIRECT_IMPERSONATION,
    THREAD_SET_LIMITED_INFORMATION,
    THREAD_QUERY_LIMITED_INFORMATION,
    THREAD_RESUME,
    DELETE,
    READ_CONTROL,
    WRITE_DAC,
    WRITE_OWNER,
    SYNCHRONIZE,
    ACCESS_SYSTEM_SECURITY,
    STANDARD_RIGHTS,
    PROCESS_ALL_ACCESS,
    THREAD_ALL_ACCESS,
)
from .rights import ALL_RIGHTS, mask_names
from .transport import Transport, WindowsTransport

__version__ = "0.1.0"

__all__ = [
    "ProcGuard",
    "ProcessHandleOperationEventParams",
    "ThreadHandleOperationEventParams",
    "HandleOperationEventParams",
    "Dispatcher",
    "Decision",
    "Transport",
    "WindowsTransport",
    "AuditEvent",
    "Status",
    "CountersReport",
    "RuleCount",
    "DriverError",
    "PolicyError",
    "ProtocolError",
    "ProcGuardError",
    "RESULT_HANDLER_RAISED",
    "ALL_RIGHTS",
    "mask_names",
    "PROCESS_TERMINATE",
    "PROCESS_CREATE_THREAD",
    "PROCESS_SET_SESSIONID",
    "PROCESS_VM_OPERATION",
    "PROCESS_VM_READ",
    "PROCESS_VM_WRITE",
    "PROCESS_DUP_HANDLE",
    "PROCESS_CREATE_PROCESS",
    "PROCESS_SET_QUOTA",
    "PROCESS_SET_INFORMATION",
    "PROCESS_QUERY_INFORMATION",
    "PROCESS_SUSPEND_RESUME",
    "PROCESS_QUERY_LIMITED_INFORMATION",
    "PROCESS_SET_LIMITED_INFORMATION",
    "THREAD_TERMINATE",
    "THREAD_SUSPEND_RESUME",
    "THREAD_ALERT",
    "THREAD_GET_CONTEXT",
    "THREAD_SET_CONTEXT",
    "THREAD_SET_INFORMATION",
    "THREAD_QUERY_INFORMATION",
    "THREAD_SET_THREAD_TOKEN",
    "THREAD_IMPERSONATE",
    "THREAD_DIRECT_IMPERSONATION",
    "THREAD_SET_LIMITED_INFORMATION",
    "THREAD_QUERY_LIMITED_INFORMATION",
    "THREAD_RESUME",
    "DELETE",
    "READ_CONTROL",
    "WRITE_DAC",
    "WRITE_OWNER",
    "SYNCHRONIZE",
    "ACCESS_SYSTEM_SECURITY",
    "STANDARD_RIGHTS",
    "PROCESS_ALL_ACCESS",
    "THREAD_ALL_ACCESS",
]
