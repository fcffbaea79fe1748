"""Windows access rights of process and thread handles, named as the policy
engine names them (``procguard_policy::rights`` in Rust).

The values are those of ``winnt.h``. Process-specific and thread-specific
rights share the low 16 bits (``PROCESS_TERMINATE`` and ``THREAD_TERMINATE``
are both ``0x0001``), so naming a mask needs the object kind:
:func:`mask_names`.

This list is checked against the Rust engine's list by the package's tests
(``python/tests/golden/rights.json``, written by the protocol crate's
``python_golden`` test): a right added or renamed on one side only fails them.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

__all__ = [
    "Right",
    "RightSet",
    "ALL_RIGHTS",
    "RIGHT_SETS",
    "DOCUMENTED_PROCESS_RIGHTS",
    "DOCUMENTED_THREAD_RIGHTS",
    "STANDARD_RIGHTS",
    "PROCESS_ALL_ACCESS",
    "THREAD_ALL_ACCESS",
    "mask_names",
    "right_by_name",
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
]


class Right(NamedTuple):
    """A named access right."""

    #: Name as in ``winnt.h``.
    name: str
    #: ``"process"``, ``"thread"`` or ``"standard"`` (valid for both).
    kind: str
    #: Bit value.
    mask: int


class RightSet(NamedTuple):
    """A named set of rights a policy can strip (``strip = ["no-kill"]``)."""

    name: str
    #: Its process rights.
    process: int
    #: Its thread rights.
    thread: int


PROCESS_TERMINATE = 0x0001
PROCESS_CREATE_THREAD = 0x0002
PROCESS_SET_SESSIONID = 0x0004
PROCESS_VM_OPERATION = 0x0008
PROCESS_VM_READ = 0x0010
PROCESS_VM_WRITE = 0x0020
PROCESS_DUP_HANDLE = 0x0040
PROCESS_CREATE_PROCESS = 0x0080
PROCESS_SET_QUOTA = 0x0100
PROCESS_SET_INFORMATION = 0x0200
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_SUSPEND_RESUME = 0x0800
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_SET_LIMITED_INFORMATION = 0x2000
THREAD_TERMINATE = 0x0001
THREAD_SUSPEND_RESUME = 0x0002
THREAD_ALERT = 0x0004
THREAD_GET_CONTEXT = 0x0008
THREAD_SET_CONTEXT = 0x0010
THREAD_SET_INFORMATION = 0x0020
THREAD_QUERY_INFORMATION = 0x0040
THREAD_SET_THREAD_TOKEN = 0x0080
THREAD_IMPERSONATE = 0x0100
THREAD_DIRECT_IMPERSONATION = 0x0200
THREAD_SET_LIMITED_INFORMATION = 0x0400
THREAD_QUERY_LIMITED_INFORMATION = 0x0800
THREAD_RESUME = 0x1000
DELETE = 0x00010000
READ_CONTROL = 0x00020000
WRITE_DAC = 0x00040000
WRITE_OWNER = 0x00080000
SYNCHRONIZE = 0x00100000
ACCESS_SYSTEM_SECURITY = 0x01000000

#: The standard rights (valid for every object kind).
STANDARD_RIGHTS = DELETE | READ_CONTROL | WRITE_DAC | WRITE_OWNER | SYNCHRONIZE
#: ``PROCESS_ALL_ACCESS`` (Vista and later): ``STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0xFFFF``.
PROCESS_ALL_ACCESS = 0x001FFFFF
#: ``THREAD_ALL_ACCESS`` (Vista and later), the same value.
THREAD_ALL_ACCESS = 0x001FFFFF

def _kind(name: str) -> str:
    if name.startswith("PROCESS_"):
        return "process"
    if name.startswith("THREAD_"):
        return "thread"
    return "standard"


#: Every right the engine knows, in ``winnt.h`` order (the engine's order).
ALL_RIGHTS: Tuple[Right, ...] = tuple(
    Right(name, _kind(name), globals()[name])
    for name in (
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
    )
)
#: The named sets a policy's ``strip`` list may use.
RIGHT_SETS: Tuple[RightSet, ...] = (
    RightSet(
        "no-kill",
        PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME,
        THREAD_TERMINATE | THREAD_SUSPEND_RESUME,
    ),
    RightSet(
        "no-inject",
        PROCESS_CREATE_THREAD
        | PROCESS_VM_OPERATION
        | PROCESS_VM_WRITE
        | PROCESS_DUP_HANDLE
        | PROCESS_SET_INFORMATION,
        THREAD_SET_CONTEXT | THREAD_SET_INFORMATION | THREAD_SET_LIMITED_INFORMATION,
    ),
    RightSet(
        "no-debug",
        PROCESS_VM_READ
        | PROCESS_VM_WRITE
        | PROCESS_VM_OPERATION
        | PROCESS_SUSPEND_RESUME
        | PROCESS_CREATE_THREAD,
        THREAD_GET_CONTEXT | THREAD_SET_CONTEXT | THREAD_SUSPEND_RESUME,
    ),
    RightSet(
        "no-tamper",
        PROCESS_TERMINATE
        | PROCESS_SUSPEND_RESUME
        | PROCESS_CREATE_THREAD
        | PROCESS_VM_OPERATION
        | PROCESS_VM_WRITE
        | PROCESS_DUP_HANDLE
        | PROCESS_SET_INFORMATION
        | PROCESS_SET_QUOTA
        | PROCESS_SET_LIMITED_INFORMATION
        | WRITE_DAC
        | WRITE_OWNER,
        THREAD_TERMINATE
        | THREAD_SUSPEND_RESUME
        | THREAD_SET_CONTEXT
        | THREAD_SET_INFORMATION
        | THREAD_SET_LIMITED_INFORMATION
        | THREAD_SET_THREAD_TOKEN
        | WRITE_DAC
        | WRITE_OWNER,
    ),
)

#: The process rights a driver may remove in a documented way
#: (``OB_PRE_CREATE_HANDLE_INFORMATION``), in that page's order.
DOCUMENTED_PROCESS_RIGHTS: Tuple[int, ...] = (
    PROCESS_CREATE_PROCESS,
    PROCESS_CREATE_THREAD,
    PROCESS_DUP_HANDLE,
    PROCESS_SET_QUOTA,
    PROCESS_SET_INFORMATION,
    PROCESS_SUSPEND_RESUME,
    PROCESS_TERMINATE,
    PROCESS_VM_OPERATION,
    PROCESS_VM_WRITE,
)

#: The thread rights the same page lists.
DOCUMENTED_THREAD_RIGHTS: Tuple[int, ...] = (
    THREAD_DIRECT_IMPERSONATION,
    THREAD_IMPERSONATE,
    THREAD_SET_CONTEXT,
    THREAD_SET_INFORMATION,
    THREAD_SET_LIMITED_INFORMATION,
    THREAD_SET_THREAD_TOKEN,
    THREAD_SUSPEND_RESUME,
    THREAD_TERMINATE,
)


def mask_names(mask: int, object_kind: str = "process") -> str:
    """A mask as the engine writes it: ``PROCESS_TERMINATE|SYNCHRONIZE``, the
    unnamed rest in hex, ``(none)`` for 0. ``object_kind`` is ``"process"`` or
    ``"thread"`` (it decides which of the shared low bits' names apply)."""
    if object_kind not in ("process", "thread"):
        raise ValueError(f"object_kind must be 'process' or 'thread', not {object_kind!r}")
    mask &= 0xFFFFFFFF
    if mask == 0:
        return "(none)"
    parts = []
    rest = mask
    for right in ALL_RIGHTS:
        if right.kind in (object_kind, "standard") and rest & right.mask:
            parts.append(right.name)
            rest &= ~right.mask
    if rest:
        parts.append(hex(rest))
    return "|".join(parts)


def right_by_name(name: str) -> Right:
    """The right named ``name`` (case-insensitive); ``KeyError`` if none is."""
    for right in ALL_RIGHTS:
        if right.name.lower() == name.lower():
            return right
    raise KeyError(name)
