"""How requests reach the driver.

:class:`Transport` is the one seam: ``ioctl(code, data, output_length)``
sends one IOCTL and returns the bytes the driver wrote, or raises
:class:`~procguard.errors.DriverError`. Several threads call it at once (the
handler's workers pend get-requests while others reply), so an
implementation must allow concurrent calls.

:class:`WindowsTransport` is the real one: ``ctypes`` calls of
``CreateFileW`` on ``\\\\.\\ProcGuard`` (``GENERIC_READ | GENERIC_WRITE``,
``FILE_FLAG_OVERLAPPED``) and ``DeviceIoControl``. The handle is overlapped
because a synchronous handle serializes requests per file object: a pended
get-request would block every reply sent on the same handle. The module
imports anywhere; only opening the device needs Windows.

The emulator suite's transport (``tests/emulator``) and the in-memory fake of
the package's tests implement the same protocol.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import Any, Optional, Protocol

from .errors import ERROR_OPERATION_ABORTED, DriverError
from .protocol import IOCTL_NAMES, USER_MODE_PATH


__all__ = ["Transport", "WindowsTransport"]


class Transport(Protocol):
    """A channel to the driver's control device."""

    def ioctl(self, code: int, data: bytes, output_length: int) -> bytes:
        """Sends IOCTL ``code`` with input ``data`` and an output buffer of
        ``output_length`` bytes; returns the bytes the driver wrote. Blocks
        while the driver pends the request. Raises ``DriverError`` when the
        driver fails it (``ntstatus`` and/or ``winerror`` set)."""
        ...

    def close(self) -> None:
        """Closes the channel; pending requests are cancelled."""
        ...


GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
OPEN_EXISTING = 3
FILE_FLAG_OVERLAPPED = 0x40000000
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_IO_PENDING = 997
WAIT_OBJECT_0 = 0
# The wait for a pended IOCTL is sliced so Ctrl+C reaches the Python thread.
_WAIT_SLICE_MS = 200

_HINTS = {
    ERROR_FILE_NOT_FOUND: "the procguard driver is not running or not installed "
    f"({USER_MODE_PATH} does not exist): install procguard.inf and run `sc start procguard`",
    ERROR_ACCESS_DENIED: f"access to {USER_MODE_PATH} denied: run as Administrator "
    "(the device admits only SYSTEM and Administrators)",
}


def _last_error() -> int:
    # ctypes.get_last_error exists on Windows only.
    get: Any = getattr(ctypes, "get_last_error")
    return int(get())


def _win32_message(code: int) -> str:
    format_error = getattr(ctypes, "FormatError", None)
    text = format_error(code).strip() if format_error else ""
    return text or f"Windows error {code}"


class _Overlapped(ctypes.Structure):
    _fields_ = [
        ("Internal", ctypes.c_size_t),
        ("InternalHigh", ctypes.c_size_t),
        ("Offset", ctypes.c_uint32),
        ("OffsetHigh", ctypes.c_uint32),
        ("hEvent", ctypes.c_void_p),
    ]


class WindowsTransport:
    """``\\\\.\\ProcGuard`` through ``kernel32`` (Windows only).

    Opening fails with :class:`DriverError` (a readable message and the Win32
    error) when the driver is missing, access is denied, or this is not
    Windows.
    """

    def __init__(self, path: str = USER_MODE_PATH) -> None:
        self._lock = threading.Lock()
        self._handle: Optional[int] = None
        if sys.platform != "win32":
            raise DriverError(
                f"{path} can only be opened on Windows (this is {sys.platform}); "
                "pass another transport to ProcGuard to run elsewhere"
            )
        win_dll: Any = getattr(ctypes, "WinDLL")
        self._kernel32: Any = win_dll("kernel32", use_last_error=True)
        self._declare()
        handle = self._kernel32.CreateFileW(
            path,
            GENERIC_READ | GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            None,
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            None,
        )
        if handle is None or handle == ctypes.c_void_p(-1).value:
            code = _last_error()
            raise DriverError(
                f"cannot open {path}: {_HINTS.get(code, _win32_message(code))} (error {code})",
                winerror=code,
            )
        self._handle = handle

    def _declare(self) -> None:
        k = self._kernel32
        handle, dword, bool_ = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
        k.CreateFileW.restype = handle
        k.CreateFileW.argtypes = [
            ctypes.c_wchar_p, dword, dword, ctypes.c_void_p, dword, dword, handle,
        ]
        k.DeviceIoControl.restype = bool_
        k.DeviceIoControl.argtypes = [
            handle, dword, ctypes.c_void_p, dword, ctypes.c_void_p, dword,
            ctypes.POINTER(dword), ctypes.POINTER(_Overlapped),
        ]
        k.GetOverlappedResult.restype = bool_
        k.GetOverlappedResult.argtypes = [
            handle, ctypes.POINTER(_Overlapped), ctypes.POINTER(dword), bool_,
        ]
        k.CreateEventW.restype = handle
        k.CreateEventW.argtypes = [ctypes.c_void_p, bool_, bool_, ctypes.c_wchar_p]
        k.WaitForSingleObject.restype = dword
        k.WaitForSingleObject.argtypes = [handle, dword]
        k.CancelIoEx.restype = bool_
        k.CancelIoEx.argtypes = [handle, ctypes.POINTER(_Overlapped)]
        k.CloseHandle.restype = bool_
        k.CloseHandle.argtypes = [handle]

    def _fail(self, code: int, winerror: int) -> DriverError:
        name = IOCTL_NAMES.get(code, f"IOCTL {code:#x}")
        if winerror == ERROR_OPERATION_ABORTED:
            text = "cancelled (the handle was closed or the handler disconnected)"
        else:
            text = _win32_message(winerror)
        return DriverError(f"{name}: {text} (error {winerror})", winerror=winerror, ioctl=code)

    def ioctl(self, code: int, data: bytes, output_length: int) -> bytes:
        """Sends one IOCTL on the overlapped handle and waits for it."""
        handle = self._handle
        if handle is None:
            raise DriverError("the device handle is closed", winerror=6, ioctl=code)
        k = self._kernel32
        in_buffer = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        out_buffer = ctypes.create_string_buffer(max(output_length, 1))
        returned = ctypes.c_uint32(0)
        overlapped = _Overlapped()
        event = k.CreateEventW(None, True, False, None)
        if not event:
            raise self._fail(code, _last_error())
        overlapped.hEvent = event
        try:
            ok = k.DeviceIoControl(
                handle, code, in_buffer if data else None, len(data),
                out_buffer if output_length else None, output_length,
                ctypes.byref(returned), ctypes.byref(overlapped),
            )
            if not ok:
                error = _last_error()
                if error != ERROR_IO_PENDING:
                    raise self._fail(code, error)
                try:
                    while k.WaitForSingleObject(event, _WAIT_SLICE_MS) != WAIT_OBJECT_0:
                        pass
                except BaseException:
                    # Interrupted (Ctrl+C): cancel, and let the I/O finish
                    # before its buffers are freed.
                    k.CancelIoEx(handle, ctypes.byref(overlapped))
                    k.GetOverlappedResult(handle, ctypes.byref(overlapped), ctypes.byref(returned), True)
                    raise
                if not k.GetOverlappedResult(
                    handle, ctypes.byref(overlapped), ctypes.byref(returned), True
                ):
                    raise self._fail(code, _last_error())
        finally:
            k.CloseHandle(event)
        return out_buffer.raw[: returned.value]

    def close(self) -> None:
        """Cancels every pending request on the handle, then closes it."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            self._kernel32.CancelIoEx(handle, None)
            self._kernel32.CloseHandle(handle)

    def __enter__(self) -> WindowsTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
