"""The harness' fault detection must be able to fail: otherwise every
"no fault" in the other tests would be vacuous."""

from __future__ import annotations

import struct

import pytest

from kernel_harness import OB_OPERATION_HANDLE_CREATE, KernelFault


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
    # Slot 265 (WdfRequestCompleteWithInformation) has no Speakeasy handler
    # and no harness hook: the harness' trap must name it rather than jump
    # to address 0.
    slot = kernel._read_u64(kernel.wdf_function_table + 265 * 8)
    assert slot != 0
    with pytest.raises(KernelFault, match="wdfldr.WdfRequestCompleteWithInformation"):
        kernel.call(slot, [kernel.wdf_driver_globals, 0, 0, 0], "WdfRequestCompleteWithInformation")


def test_a_hook_that_sees_kernel_misuse_fails_the_test(kernel):
    kernel.load()
    kernel.hook_failures.clear()
    # Unregister the driver's registration behind its back: its unload then
    # passes a handle the kernel no longer knows, which must not go unnoticed.
    kernel.live_registrations.clear()
    with pytest.raises(KernelFault, match="not a live registration"):
        kernel.unload()
    kernel.hook_failures.clear()  # expected here; keep the teardown check quiet
