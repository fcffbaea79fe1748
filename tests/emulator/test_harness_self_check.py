"""The harness' fault detection must be able to fail: otherwise every
"no fault" in the other tests would be vacuous."""

from __future__ import annotations

import struct

import pefile
import pytest

from kernel_harness import (
    IOCTL_GET_STATUS,
    OB_OPERATION_HANDLE_CREATE,
    STATUS_INVALID_DEVICE_REQUEST,
    STATUS_SIZE,
    STATUS_SUCCESS,
    FakeRequest,
    KernelFault,
    speakeasy_wdf_function_names,
)


def test_a_driver_fault_fails_the_test(kernel):
    kernel.load()
    # An OB_PRE_OPERATION_INFORMATION whose Parameters pointer is unmapped:
    # the callback faults reading DesiredAccess.
    target = kernel.new_process(500)
    info = kernel.se.mem_alloc(0x100, tag="selfcheck.info")
    kernel.write(
        info,
        struct.pack("<IIQQQQ", OB_OPERATION_HANDLE_CREATE, 0, target, kernel.process_object_type, 0, 0xDEAD0000),
    )
    with pytest.raises(KernelFault, match="emulation error"):
        kernel.call(kernel.registration.entries[0].pre_operation, [kernel.registration.context, info], "pre-op")


def test_a_missing_wdf_function_is_reported_by_name(kernel):
    kernel.load()
    # Slot 254 (WdfRequestGetStatus) has no Speakeasy handler and no harness
    # hook: the harness' trap must name it rather than jump to address 0.
    assert speakeasy_wdf_function_names()[254] == "WdfRequestGetStatus"
    slot = kernel._read_u64(kernel.wdf_function_table + 254 * 8)
    assert slot != 0
    with pytest.raises(KernelFault, match="wdfldr.WdfRequestGetStatus"):
        kernel.call(slot, [kernel.wdf_driver_globals, 0], "WdfRequestGetStatus")


def test_a_hook_that_sees_kernel_misuse_fails_the_test(kernel):
    kernel.load()
    kernel.hook_failures.clear()
    # Unregister the driver's registration behind its back: its unload then
    # passes a handle the kernel no longer knows, which must not go unnoticed.
    kernel.live_registrations.clear()
    with pytest.raises(KernelFault, match="not a live registration"):
        kernel.unload()
    kernel.hook_failures.clear()  # expected here; keep the teardown check quiet


def test_speakeasy_alone_delivers_ioctl_codes_as_zero(kernel):
    # Speakeasy 1.5.11's se.call puts the 5th argument in RCX's home slot
    # (upstream issue 298): EvtIoDeviceControl then reads IoControlCode from
    # an untouched stack slot, 0, and refuses every IOCTL as unknown. With the
    # harness' correction the same request succeeds: the fix is needed, and works.
    kernel.load()
    kernel.correct_stack_arguments = False
    assert kernel.ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE).status == STATUS_INVALID_DEVICE_REQUEST
    kernel.correct_stack_arguments = True
    assert kernel.ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE).status == STATUS_SUCCESS


def test_a_request_completed_twice_fails_the_test(kernel):
    kernel.load()
    request = FakeRequest(handle=0xDD0F9990, code=0, system_buffer=0, input_length=0, output_length=0,
                          completions=[], retrievals=[])
    kernel.requests[request.handle] = request
    kernel.sent_requests.append(request)
    complete = kernel._read_u64(kernel.wdf_function_table + 265 * 8)
    kernel.call(complete, [kernel.wdf_driver_globals, request.handle, 0, 0], "complete once")
    with pytest.raises(KernelFault, match="already completed"):
        kernel.call(complete, [kernel.wdf_driver_globals, request.handle, 0, 0], "complete twice")
    kernel.hook_failures.clear()  # expected here; keep the teardown check quiet


def test_a_request_never_completed_fails_the_test(kernel):
    kernel.load()
    # Present the request to a bare `ret` in the image instead of the
    # driver's EvtIoDeviceControl: it returns without completing.
    text = next(section for section in pefile.PE(kernel.sys_path, fast_load=True).sections
                if section.Name.rstrip(b"\0") == b".text")
    code = kernel.read(kernel.image_base + text.VirtualAddress, text.Misc_VirtualSize)
    kernel.control_device["queue"] = kernel.image_base + text.VirtualAddress + code.index(b"\xC3")
    with pytest.raises(KernelFault, match="completed the request 0 times"):
        kernel.ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE)
