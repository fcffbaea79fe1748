"""Unloading, and what the driver does when the pool runs dry while loading."""

from __future__ import annotations

import pytest

from kernel_harness import (
    OB_OPERATION_HANDLE_CREATE,
    STATUS_INSUFFICIENT_RESOURCES,
    STATUS_SUCCESS,
    WDFDRIVER_HANDLE,
    KernelFault,
    KernelHarness,
    audit_ring_capacity,
    AUDIT_CELL_BYTES,
    image_path,
    reg_binary,
    reg_dword,
    reg_sz,
)

PROTECTED = 500
OTHER = 600
LATE_PROCESS = 700  # started after load: its notification classifies what callbacks noted
POLICY = """
[[rule]]
name = "protected-no-kill"
target = { name = "protected.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]

[[rule]]
name = "protected-threads"
target = { path = ['\\Device\\HarddiskVolume*\\Program Files\\Test\\protected.exe'] }
objects = "thread"
strip = ["THREAD_SUSPEND_RESUME"]
"""


@pytest.fixture(scope="module")
def policy(compile_policy) -> bytes:
    return compile_policy(POLICY)


def machine(kernel, policy: bytes) -> None:
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(PROTECTED, image_path("protected.exe"))
    kernel.new_process(OTHER, image_path("tool.exe"))


def assert_no_trace_of_the_driver(kernel) -> None:
    """What a kernel must find after the driver is gone (unloaded or failed
    to load): nothing registered, no pool, no handle, no reference, no lock."""
    assert kernel.live_registrations == {}, "object callbacks still registered"
    assert kernel.notify_routines == [], "process notify routine still registered"
    assert kernel.pool == {}, f"pool blocks leaked: {kernel.pool}"
    assert kernel.image_name_blocks == {}, "SeLocateProcessImageName results not freed"
    assert kernel.open_keys == {}, f"registry handles leaked: {kernel.open_keys}"
    referenced = {p.pid: p.references for p in kernel.processes.values() if p.references}
    assert referenced == {}, f"process references still held: {referenced}"
    assert not any(kernel.mutexes.values()), "a guarded mutex is still held"
    assert not any(r.held for r in kernel.resources.values()), "the writer lock is still held"
    assert all(r.deleted for r in kernel.resources.values()), "unload deletes its ERESOURCEs"
    assert kernel.irql == 0, f"IRQL left at {kernel.irql}"
    assert kernel.devices == {} and kernel.device_inits == {}, "control device or its init left behind"


def test_unload_unregisters_once_with_the_returned_handle_and_frees_every_allocation(kernel, policy):
    machine(kernel, policy)
    kernel.load()
    handle = kernel.registration.handle
    (routine,) = kernel.notify_routines
    assert kernel.in_image(routine)
    assert kernel.pool, "the loaded driver holds pool"
    assert kernel.image_name_lookups >= 3, "System, protected.exe and tool.exe were identified"

    kernel.unload()

    assert kernel.unregistrations == [handle], "ObUnRegisterCallbacks exactly once, with the handle"
    assert [e for e in kernel.events if e[0] == "PsSetCreateProcessNotifyRoutineEx"] == [
        ("PsSetCreateProcessNotifyRoutineEx", 0),
        ("PsSetCreateProcessNotifyRoutineEx", 1),
    ], "the notify routine is added once and removed once"
    assert_no_trace_of_the_driver(kernel)
    assert "procguard: unloaded" in kernel.trace_text()


def test_unload_unregisters_callbacks_then_the_notify_routine_then_frees(kernel, policy):
    machine(kernel, policy)
    kernel.load()
    kernel.events.clear()
    kernel.unload()
    # Callbacks first (ObUnRegisterCallbacks waits for running callbacks),
    # then the notify routine (which also reaches the state), then free what
    # both read, then leave the framework.
    kinds = [event[0] for event in kernel.events]
    assert kinds[0] == "EvtDriverUnload"
    # The control device goes first (no more IOCTLs).
    delete_device = kinds.index("WdfObjectDelete")
    unregister = kinds.index("ObUnRegisterCallbacks")
    remove_notify = kernel.events.index(("PsSetCreateProcessNotifyRoutineEx", 1))
    # Before all that (issue 13): the registry callback, then its work item
    # (PITFALLS item 10); the watch's context is freed right after.
    registry_unregister = kinds.index("CmUnRegisterCallback")
    flush = kinds.index("WdfWorkItemFlush")
    assert registry_unregister < flush < delete_device, kinds
    frees = [index for index, kind in enumerate(kinds) if kind == "ExFreePoolWithTag" and index > delete_device]
    assert frees, "unload frees the state"
    assert delete_device < unregister < remove_notify < min(frees), kinds
    assert kernel.devices == {}
    assert kinds[-1] == "WdfVersionUnbind"
    assert set(kinds[1:-1]) <= {
        "ObUnRegisterCallbacks", "PsSetCreateProcessNotifyRoutineEx", "ExFreePoolWithTag",
        "KeEnterCriticalRegion", "ExAcquireResourceExclusiveLite", "ExReleaseResourceLite",
        "KeLeaveCriticalRegion", "ExDeleteResourceLite", "WdfObjectDelete",
        "CmUnRegisterCallback", "WdfWorkItemFlush",
    }, kinds
    assert kernel.events[0][1] == WDFDRIVER_HANDLE
    assert len(kernel.wdf_unbinds) == 1
    registry_path, bind_info, globals_address = kernel.wdf_unbinds[0]
    assert globals_address == kernel.wdf_driver_globals
    assert kernel.in_image(registry_path) and kernel.in_image(bind_info)
    assert kernel.read(bind_info, 4) == (48).to_bytes(4, "little"), "the same WDF_BIND_INFO as at bind"


def test_unload_after_processes_came_and_went_leaves_nothing_behind(kernel, policy):
    machine(kernel, policy)
    kernel.load()
    for index in range(20):
        kernel.notify_create(2000 + 4 * index, image_path("protected.exe" if index % 2 else "x.exe"))
    for index in range(0, 20, 3):
        kernel.notify_exit(2000 + 4 * index)
    kernel.unload()
    assert_no_trace_of_the_driver(kernel)


def test_unload_after_a_collision_retry_unregisters_the_registration_that_succeeded(kernel):
    kernel.occupied_altitudes = {"385201", "385201.1"}
    kernel.load()
    assert kernel.registration.altitude == "385201.2"
    handle = kernel.registration.handle
    kernel.unload()
    assert kernel.unregistrations == [handle]
    assert kernel.pool == {}


def test_callbacks_work_until_unload_and_unload_leaves_the_pool_empty(kernel, policy):
    machine(kernel, policy)
    kernel.load()
    target = kernel.eprocess(PROTECTED)
    for requester in range(8, 200, 4):  # many calls: none may allocate
        kernel.new_process(requester + 10_000, image_path("tool.exe"))
    allocations_before = kernel.allocation_count
    for requester in range(8, 200, 4):
        result = kernel.pre_operation(
            operation=OB_OPERATION_HANDLE_CREATE,
            object_kind="process",
            target=target,
            desired_access=0x3,
            current_pid=OTHER,
        )
        assert result.desired_access == 0x2
    assert kernel.allocation_count == allocations_before, "no allocation in the callback"
    kernel.unload()
    assert kernel.allocation_count == allocations_before, "no allocation at unload"
    assert kernel.pool == {}


def _load_with_failed_allocation(driver_path: str, policy: bytes, number: int) -> KernelHarness:
    kernel = KernelHarness(driver_path)
    kernel.parameters = {
        "Altitude": reg_sz("385201"),
        "AltitudeRetries": reg_dword(3),
        "Policy": reg_binary(policy),
        "AuditRecords": reg_dword(16),
    }
    kernel.new_process(PROTECTED, image_path("protected.exe"))
    kernel.new_process(OTHER, image_path("tool.exe"))
    kernel.fail_allocations = {number}
    return kernel


def _normal_load(driver_path: str, policy: bytes) -> KernelHarness:
    kernel = _load_with_failed_allocation(driver_path, policy, -1)
    kernel.load()
    return kernel


def _stripped(kernel) -> bool:
    """Whether PROTECTED loses TERMINATE at once or, if the load could not
    enumerate it, from the next process notification on (a callback meets it
    unknown, reads no image path and notes it; the notification classifies
    it)."""

    def terminate_stripped() -> bool:
        result = kernel.pre_operation(
            operation=OB_OPERATION_HANDLE_CREATE,
            object_kind="process",
            target=kernel.eprocess(PROTECTED),
            desired_access=1,
            current_pid=OTHER,
        )
        return result.desired_access == 0

    if terminate_stripped():
        return True
    if not kernel.notify_routines:
        return False
    kernel.notify_create(LATE_PROCESS)
    return terminate_stripped()


def _process_list_copy(kernel) -> int:
    """Number of the allocation running_process_ids makes right after a
    successful ZwQuerySystemInformation (the byte copy of the list)."""
    number = -1
    after_list = False
    for kind, value in kernel.events:
        if kind == "ExAllocatePool2":
            number += 1
            if after_list:
                return number
        elif kind == "ZwQuerySystemInformation" and value == STATUS_SUCCESS:
            after_list = True
    raise AssertionError("no allocation after the process list was read")


def _load_failing(driver_path: str, policy: bytes, number: int):
    """DriverEntry with allocation ``number`` failing; returns the harness
    and the outcome, after unloading a driver that loaded."""
    kernel = _load_with_failed_allocation(driver_path, policy, number)
    status = kernel.driver_entry()  # raises KernelFault on a fault/bugcheck
    if status == STATUS_SUCCESS:
        outcome = "loaded, " + ("policy in force" if _stripped(kernel) else "unprotected")
        trace = kernel.trace_text()
        kernel.unload()
    else:
        assert status == STATUS_INSUFFICIENT_RESOURCES, f"allocation {number}: {status:#x}"
        outcome, trace = "failed", kernel.trace_text()
    assert_no_trace_of_the_driver(kernel)
    return outcome, trace


@pytest.fixture(scope="module")
def failed_allocation_loads(driver_path, policy):
    """Every allocation of a normal load made to fail in turn (registry
    values, driver state, audit ring, policy compilation, process list,
    image paths, process table, control device): allocation number ->
    (outcome, trace). Computed once for the tests below (~30 loads)."""
    normal = _normal_load(driver_path, policy)
    loads = {}
    for number in range(normal.allocation_count):
        try:
            loads[number] = _load_failing(driver_path, policy, number)
        except (KernelFault, AssertionError) as error:
            loads[number] = ("fault", str(error))
    return loads


def test_any_failed_pool_allocation_during_load_fails_or_degrades_cleanly(failed_allocation_loads):
    # Out of pool while loading is a failed load (STATUS_INSUFFICIENT_RESOURCES)
    # or a degraded setting, never a bugcheck, a fault or a leak.
    assert len(failed_allocation_loads) > 10
    faults = {number: trace for number, (outcome, trace) in failed_allocation_loads.items() if outcome == "fault"}
    assert faults == {}
    outcomes = {outcome for outcome, _trace in failed_allocation_loads.values()}
    assert {"failed", "loaded, policy in force"} <= outcomes


def test_a_failed_process_list_copy_does_not_bugcheck(driver_path, policy):
    number = _process_list_copy(_normal_load(driver_path, policy))
    outcome, _trace = _load_failing(driver_path, policy, number)
    assert outcome in ("loaded, policy in force", "failed")


def test_pool_exhaustion_while_loading_is_reported_as_such(failed_allocation_loads):
    # Every load that survives a failed allocation with less than it was
    # configured for (no rules, no enumeration, a process unprotected) must
    # say so and blame the pool, not the registry data, in its trace.
    misleading = {}
    for number, (outcome, trace) in failed_allocation_loads.items():
        degraded = outcome == "loaded, unprotected" or "failed" in trace or "Parameters\\" in trace
        blames_memory = any(text in trace for text in ("0xC000009A", "out of memory", "no memory"))
        if outcome.startswith("loaded") and degraded and not blames_memory:
            misleading[number] = (outcome, trace)
    assert misleading == {}


def test_failed_state_allocation_fails_driver_entry_with_insufficient_resources(driver_path, policy):
    # The audit ring (AuditRecords = 16 cells of 72 bytes) is the driver
    # state's first allocation; without it nothing may be registered.
    normal = _normal_load(driver_path, policy)
    sizes = [size for kind, size in normal.events if kind == "ExAllocatePool2"]
    ring = sizes.index(audit_ring_capacity(16) * AUDIT_CELL_BYTES)
    kernel = _load_with_failed_allocation(driver_path, policy, ring)
    assert kernel.driver_entry() == STATUS_INSUFFICIENT_RESOURCES
    assert kernel.registrations == []
    assert "no memory for the driver state" in kernel.trace_text()
    assert len(kernel.wdf_unbinds) == 1
    assert_no_trace_of_the_driver(kernel)
