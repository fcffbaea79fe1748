"""WindowsTransport's use of kernel32, with kernel32 replaced by a recording
fake (the real one needs Windows): the open flags, immediate and pended
IOCTLs, errors in words, cancellation, close."""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Dict, List, Tuple

import pytest

from procguard import DriverError, ProcGuard
from procguard.protocol import IOCTL_ASK_GET_REQUEST, IOCTL_GET_STATUS, Status
from procguard import transport as transport_module

HANDLE = 0x100
EVENT = 0x200


class FakeKernel32:
    """Answers like kernel32 for one device handle."""

    def __init__(self) -> None:
        self.last_error = 0
        self.calls: List[Tuple[str, Any]] = []
        self.open_error = 0
        # code -> ("now", bytes) | ("pending", bytes) | ("pending-error", winerror) | ("error", winerror)
        self.behaviour: Dict[int, Tuple[str, Any]] = {}
        self.pending: Dict[int, Tuple[Any, Any, Any]] = {}
        self.waits = 0

    # -- helpers the module reads through ctypes
    def get_last_error(self) -> int:
        return self.last_error

    def WinDLL(self, name: str, use_last_error: bool = False) -> "_Library":
        assert name == "kernel32" and use_last_error
        return _Library(self)

    # -- kernel32
    def CreateFileW(self, path, access, share, security, disposition, flags, template):
        self.calls.append(("CreateFileW", (path, access, share, disposition, flags)))
        if self.open_error:
            self.last_error = self.open_error
            return ctypes.c_void_p(-1).value
        return HANDLE

    def CreateEventW(self, *args):
        return EVENT

    def DeviceIoControl(self, handle, code, in_buffer, in_length, out_buffer, out_length,
                        returned, overlapped):
        assert handle == HANDLE
        sent = bytes(in_buffer.raw[:in_length]) if in_buffer is not None else b""
        self.calls.append(("DeviceIoControl", (code, sent, out_length)))
        kind, value = self.behaviour[code]
        if kind == "now":
            ctypes.memmove(out_buffer, value, len(value))
            returned._obj.value = len(value)
            return 1
        if kind == "error":
            self.last_error = value
            return 0
        self.pending[EVENT] = (kind, value, out_buffer)
        self.last_error = 997  # ERROR_IO_PENDING
        return 0

    def WaitForSingleObject(self, event, milliseconds):
        self.waits += 1
        return 0 if self.waits % 3 == 0 else 258  # WAIT_TIMEOUT twice, then signalled

    def GetOverlappedResult(self, handle, overlapped, returned, wait):
        kind, value, out_buffer = self.pending.pop(EVENT)
        if kind == "pending-error":
            self.last_error = value
            return 0
        ctypes.memmove(out_buffer, value, len(value))
        returned._obj.value = len(value)
        return 1

    def CancelIoEx(self, handle, overlapped):
        self.calls.append(("CancelIoEx", handle))
        return 1

    def CloseHandle(self, handle):
        self.calls.append(("CloseHandle", handle))
        return 1


class _Function:
    """A function object that takes ctypes' restype/argtypes like a real one."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.restype = None
        self.argtypes = None

    def __call__(self, *args: Any) -> Any:
        assert self.argtypes is not None and len(args) == len(self.argtypes), "declared"
        return self.function(*args)


class _Library:
    def __init__(self, fake: FakeKernel32) -> None:
        self._fake = fake
        self._functions: Dict[str, _Function] = {}

    def __getattr__(self, name: str) -> _Function:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._functions.setdefault(name, _Function(getattr(self._fake, name)))


@pytest.fixture
def kernel32(monkeypatch):
    fake = FakeKernel32()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "WinDLL", fake.WinDLL, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", fake.get_last_error, raising=False)
    monkeypatch.setattr(ctypes, "FormatError", lambda code: f"message {code}", raising=False)
    return fake


def test_the_device_is_opened_for_read_and_write_and_overlapped(kernel32):
    transport_module.WindowsTransport()
    name, (path, access, share, disposition, flags) = kernel32.calls[0]
    assert name == "CreateFileW" and path == "\\\\.\\ProcGuard"
    assert access == 0x80000000 | 0x40000000, "GENERIC_READ | GENERIC_WRITE"
    assert flags == 0x40000000, "FILE_FLAG_OVERLAPPED: pended get-requests must not block replies"
    assert disposition == 3 and share == 3


@pytest.mark.parametrize("error, words", [(2, "not running or not installed"),
                                          (5, "run as Administrator"),
                                          (1234, "message 1234")])
def test_open_failures_say_what_to_do(kernel32, error, words):
    kernel32.open_error = error
    with pytest.raises(DriverError) as failed:
        transport_module.WindowsTransport()
    assert words in str(failed.value) and failed.value.winerror == error


def test_an_immediate_ioctl_returns_what_the_driver_wrote(kernel32):
    status = Status(policy_id=7).to_bytes()
    kernel32.behaviour[IOCTL_GET_STATUS] = ("now", status)
    assert ProcGuard(transport_module.WindowsTransport()).status().policy_id == 7
    assert ("DeviceIoControl", (IOCTL_GET_STATUS, b"", Status.SIZE)) in kernel32.calls


def test_a_pended_ioctl_is_waited_for_in_slices(kernel32):
    kernel32.behaviour[IOCTL_ASK_GET_REQUEST] = ("pending", b"\x01" * 368)
    data = transport_module.WindowsTransport().ioctl(IOCTL_ASK_GET_REQUEST, b"", 368)
    assert data == b"\x01" * 368 and kernel32.waits == 3
    assert ("CloseHandle", EVENT) in kernel32.calls


def test_cancellation_and_lateness_are_recognised(kernel32):
    kernel32.behaviour[IOCTL_ASK_GET_REQUEST] = ("pending-error", 995)
    with pytest.raises(DriverError) as cancelled:
        transport_module.WindowsTransport().ioctl(IOCTL_ASK_GET_REQUEST, b"", 368)
    assert cancelled.value.cancelled and "ask: get request" in str(cancelled.value)
    kernel32.behaviour[IOCTL_GET_STATUS] = ("error", 1168)
    with pytest.raises(DriverError) as late:
        transport_module.WindowsTransport().ioctl(IOCTL_GET_STATUS, b"", 320)
    assert late.value.not_found and "message 1168" in str(late.value)


def test_close_cancels_pending_requests_and_closes_the_handle(kernel32):
    transport = transport_module.WindowsTransport()
    transport.close()
    assert kernel32.calls[-2:] == [("CancelIoEx", HANDLE), ("CloseHandle", HANDLE)]
    transport.close()
    assert kernel32.calls.count(("CloseHandle", HANDLE)) == 1
    with pytest.raises(DriverError, match="closed"):
        transport.ioctl(IOCTL_GET_STATUS, b"", 320)
