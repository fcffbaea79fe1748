"""Errors raised by the procguard package."""

from __future__ import annotations

from typing import Optional

__all__ = [
    "ProcGuardError",
    "DriverError",
    "ProtocolError",
    "PolicyError",
    "ERROR_OPERATION_ABORTED",
    "ERROR_NOT_FOUND",
]

#: Win32 ``ERROR_OPERATION_ABORTED``: what ``STATUS_CANCELLED`` becomes.
ERROR_OPERATION_ABORTED = 995
#: Win32 ``ERROR_NOT_FOUND``: what ``STATUS_NOT_FOUND`` becomes.
ERROR_NOT_FOUND = 1168

_STATUS_CANCELLED = 0xC0000120 - (1 << 32)
_STATUS_NOT_FOUND = 0xC0000225 - (1 << 32)


class ProcGuardError(Exception):
    """Base class of every error this package raises."""


class DriverError(ProcGuardError):
    """A request to the driver failed.

    ``ntstatus`` is the NTSTATUS the driver completed the request with when the
    transport knows it (the emulator harness and in-memory fakes do); Windows
    reports the Win32 error ``GetLastError()`` gave instead, in ``winerror``.
    At least one of the two is set. ``str(error)`` is a readable message.
    """

    def __init__(
        self,
        message: str,
        *,
        ntstatus: Optional[int] = None,
        winerror: Optional[int] = None,
        ioctl: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        #: The NTSTATUS (signed 32-bit), if known.
        self.ntstatus = _signed32(ntstatus) if ntstatus is not None else None
        #: The Win32 error code, if known.
        self.winerror = winerror
        #: The IOCTL code of the failed request, if any.
        self.ioctl = ioctl

    @property
    def cancelled(self) -> bool:
        """The request was cancelled (``STATUS_CANCELLED`` / ``ERROR_OPERATION_ABORTED``):
        what pended get-requests end with at disconnect."""
        return self.ntstatus == _STATUS_CANCELLED or self.winerror == ERROR_OPERATION_ABORTED

    @property
    def not_found(self) -> bool:
        """The driver found no such request (``STATUS_NOT_FOUND`` / ``ERROR_NOT_FOUND``):
        a reply that came too late."""
        return self.ntstatus == _STATUS_NOT_FOUND or self.winerror == ERROR_NOT_FOUND


class ProtocolError(ProcGuardError, ValueError):
    """Bytes that are not a valid protocol structure (wrong length, unknown
    code or flag, reserved bits set, a count out of range)."""


class PolicyError(ProcGuardError):
    """A policy file could not be compiled or applied."""


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
