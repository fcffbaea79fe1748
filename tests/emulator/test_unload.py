"""Unloading, and what the driver does when the pool runs dry while loading."""

from __future__ import annotations

import pytest

from kernel_harness import (
    OB_OPERATION_HANDLE_CREATE,
    STATUS_INSUFFICIENT_RESOURCES,
    STATUS_SUCCESS,
    WDFDRIVER_HANDLE,
    KernelHarness,
    policy_blob,
    reg_binary,
    reg_dword,
    reg_sz,
)

PROTECTED = 500


def test_unload_unregisters_once_with_the_returned_handle_and_frees_every_allocation(kernel):
    kernel.parameters = {"Policy": reg_binary(policy_blob([(PROTECTED, 1, 2), (PROTECTED + 8, 3, 4)]))}
    kernel.load()
    handle = kernel.registration.handle
    assert kernel.pool, "the loaded driver holds pool"

    kernel.unload()

    assert kernel.unregistrations == [handle], "ObUnRegisterCallbacks exactly once, with the handle"
    assert kernel.live_registrations == {}
    assert kernel.pool == {}, f"pool blocks leaked: {kernel.pool}"
    assert kernel.open_keys == {}
    assert "procguard: unloaded" in kernel.trace_text()


def test_unload_runs_evt_driver_unload_then_unbinds_from_kmdf(kernel):
    kernel.parameters = {"Policy": reg_binary(policy_blob([(PROTECTED, 1, 2)]))}
    kernel.load()
    kernel.events.clear()
    kernel.unload()
    # Unregister first (ObUnRegisterCallbacks waits for running callbacks),
    # then free what the callbacks read, then leave the framework.
    kinds = [event[0] for event in kernel.events]
    assert kinds[0] == "EvtDriverUnload"
    assert kinds[1] == "ObUnRegisterCallbacks"
    assert set(kinds[2:-1]) == {"ExFreePoolWithTag"}
    assert kinds[-1] == "WdfVersionUnbind"
    assert kernel.events[0][1] == WDFDRIVER_HANDLE
    assert len(kernel.wdf_unbinds) == 1
    registry_path, bind_info, globals_address = kernel.wdf_unbinds[0]
    assert globals_address == kernel.wdf_driver_globals
    assert kernel.in_image(registry_path) and kernel.in_image(bind_info)
    assert kernel.read(bind_info, 4) == (48).to_bytes(4, "little"), "the same WDF_BIND_INFO as at bind"


def test_unload_after_a_collision_retry_unregisters_the_registration_that_succeeded(kernel):
    kernel.occupied_altitudes = {"385201", "385201.1"}
    kernel.load()
    assert kernel.registration.altitude == "385201.2"
    handle = kernel.registration.handle
    kernel.unload()
    assert kernel.unregistrations == [handle]
    assert kernel.pool == {}


def test_callbacks_work_until_unload_and_unload_leaves_the_pool_empty(kernel):
    kernel.parameters = {"Policy": reg_binary(policy_blob([(PROTECTED, 1, 2)]))}
    kernel.load()
    target = kernel.new_process(PROTECTED)
    for requester in range(8, 200, 4):  # many calls: the callback must not allocate
        result = kernel.pre_operation(
            operation=OB_OPERATION_HANDLE_CREATE,
            object_kind="process",
            target=target,
            desired_access=0x3,
            current_pid=requester,
        )
        assert result.desired_access == 0x2
    allocations_while_loaded = kernel.allocation_count
    kernel.unload()
    assert kernel.allocation_count == allocations_while_loaded, "no allocation in the callback or at unload"
    assert kernel.pool == {}


def _load_with_failed_allocation(driver_path: str, number: int) -> KernelHarness:
    kernel = KernelHarness(driver_path)
    kernel.parameters = {
        "Altitude": reg_sz("385201"),
        "AltitudeRetries": reg_dword(3),
        "Policy": reg_binary(policy_blob([(PROTECTED, 1, 2)])),
    }
    kernel.fail_allocations = {number}
    return kernel


def _count_allocations_of_a_normal_load(driver_path: str) -> int:
    kernel = _load_with_failed_allocation(driver_path, -1)
    kernel.load()
    return kernel.allocation_count


def test_any_failed_pool_allocation_during_load_fails_or_degrades_cleanly(driver_path):
    # Out of pool while loading is a failed load or a default setting, never a
    # bugcheck: every allocation is made to fail in turn. (Regression test: an
    # infallible `settings.policy.clone()` in driver_entry.rs once aborted with
    # ud2 when its allocation failed.)
    total = _count_allocations_of_a_normal_load(driver_path)
    assert total > 0
    for number in range(total):
        kernel = _load_with_failed_allocation(driver_path, number)
        status = kernel.driver_entry()  # raises KernelFault on a fault/bugcheck
        if status == STATUS_SUCCESS:
            # A registry value could not be used: loaded with its default,
            # and said which value.
            assert "Parameters\\" in kernel.trace_text(), f"allocation {number}: {kernel.trace_text()}"
            kernel.unload()
        else:
            assert status == STATUS_INSUFFICIENT_RESOURCES, f"allocation {number}: {status:#x}"
            assert kernel.live_registrations == {}
        assert kernel.pool == {}, f"allocation {number} failed: leaked {kernel.pool}"


def test_pool_exhaustion_while_loading_is_reported_as_such(driver_path):
    # Every load that survives a failed allocation must blame the pool
    # (STATUS_INSUFFICIENT_RESOURCES), not the registry data.
    total = _count_allocations_of_a_normal_load(driver_path)
    misleading = {}
    for number in range(total):
        kernel = _load_with_failed_allocation(driver_path, number)
        if kernel.driver_entry() == STATUS_SUCCESS and "0xC000009A" not in kernel.trace_text():
            misleading[number] = kernel.trace_text()
    assert misleading == {}


def test_failed_state_allocation_fails_driver_entry_with_insufficient_resources(driver_path):
    # The driver state is the last allocation DriverEntry makes before
    # registering; without it nothing may be registered.
    total = _count_allocations_of_a_normal_load(driver_path)
    kernel = _load_with_failed_allocation(driver_path, total - 1)
    assert kernel.driver_entry() == STATUS_INSUFFICIENT_RESOURCES
    assert kernel.registrations == []
    assert kernel.pool == {}
    assert "no memory for the driver state" in kernel.trace_text()
    assert len(kernel.wdf_unbinds) == 1
