"""The driver on the oldest supported Windows (driver/windows-support.toml):
it binds only a framework the floor ships, calls no WDF function past that
framework's table, and allocates without ExAllocatePool2 where the kernel
lacks it (Windows 10 1903/1909)."""

from __future__ import annotations

import pytest

from kernel_harness import (
    KMDF_BIND_FUNCTION_COUNT,
    KMDF_BIND_VERSION,
    NON_PAGED_POOL_NX,
    PASSIVE_LEVEL,
    SUPPORT_TABLE,
    KernelFault,
    WdfBind,
    check_kmdf_bind,
    floor_kmdf_version,
    wdf_function_name,
)


def bind(version=(1, 29, 0), func_count=454, size=48, component="KmdfLibrary") -> WdfBind:
    return WdfBind(size=size, component=component, version=version, func_count=func_count, func_table_slot=0, module=0)


def test_the_table_binds_the_floor_framework():
    assert SUPPORT_TABLE["floor"]["windows"] == "10.0.18362"
    assert floor_kmdf_version() == KMDF_BIND_VERSION == (1, 29)
    assert KMDF_BIND_FUNCTION_COUNT == 454


def test_the_emulated_loader_accepts_the_floor_bind():
    check_kmdf_bind(bind())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        # What fx_entry.rs bound before issue 11: refused by 1903's framework.
        ({"version": (1, 33, 0), "func_count": 458}, "binds KMDF 1.33, which Windows 10 version 1903 does not ship"),
        ({"version": (1, 31, 0), "func_count": 458}, "binds KMDF 1.31, which Windows 10 version 1903 does not ship"),
        ({"func_count": 458}, "FuncCount 458, but KMDF 1.29 has 454 functions"),
        ({"version": (1, 27, 0), "func_count": 453}, "whose function count windows-support.toml does not list"),
        ({"size": 80}, "WDF_BIND_INFO.Size 80"),
        ({"component": "KmdfLibraryX"}, "component 'KmdfLibraryX'"),
    ],
)
def test_the_emulated_loader_refuses_binds_the_floor_cannot_serve(shape, message):
    with pytest.raises(KernelFault, match="WdfVersionBind refused") as refused:
        check_kmdf_bind(bind(**shape))
    assert message in str(refused.value)


def test_the_driver_binds_the_floor_framework_and_loads(kernel):
    kernel.load()
    (bound,) = kernel.wdf_binds
    assert (bound.version[0], bound.version[1]) == KMDF_BIND_VERSION
    assert bound.func_count == KMDF_BIND_FUNCTION_COUNT


def test_a_call_past_the_bound_table_fails_naming_the_function(kernel):
    kernel.load()
    index = KMDF_BIND_FUNCTION_COUNT  # the first slot 1.29 does not have
    name = wdf_function_name(index)
    assert name == "WdfCxDeviceInitAllocateContext"
    slot = kernel._read_u64(kernel.wdf_function_table + 8 * index)
    with pytest.raises(KernelFault, match=rf"{name} \(table index {index}\).*KMDF 1.29 has only 454 functions"):
        kernel.call(slot, [kernel.wdf_driver_globals], f"a call through slot {index}")
    kernel.hook_failures.clear()


def test_allocations_use_ex_allocate_pool2_found_at_passive_level_before_the_first(kernel):
    kernel.load()
    assert kernel.routine_lookups == [("ExAllocatePool2", PASSIVE_LEVEL)], "looked up once, at PASSIVE_LEVEL"
    kinds = [kind for kind, _ in kernel.events if kind in {"MmGetSystemRoutineAddress", "ExAllocatePool2", "ExAllocatePoolWithTag"}]
    assert kinds[0] == "MmGetSystemRoutineAddress", f"the lookup precedes every allocation: {kinds[:5]}"
    assert "ExAllocatePool2" in kinds and "ExAllocatePoolWithTag" not in kinds
    kernel.unload()
    assert kernel.pool == {}


def test_without_ex_allocate_pool2_allocations_fall_back_zeroed_and_the_driver_works(kernel, compile_policy):
    """Windows 10 1903/1909: no ExAllocatePool2 export."""
    kernel.ex_allocate_pool2_exported = False
    kernel.load()
    assert kernel.routine_lookups == [("ExAllocatePool2", PASSIVE_LEVEL)]
    kinds = [kind for kind, _ in kernel.events if kind in {"ExAllocatePool2", "ExAllocatePoolWithTag"}]
    assert kinds and set(kinds) == {"ExAllocatePoolWithTag"}
    assert all(block.flags == NON_PAGED_POOL_NX for block in kernel.pool.values())
    assert kernel.fallback_blocks, "the driver allocated at load"
    assert kernel.unzeroed_fallback_blocks() == {}, "ExAllocatePool2 zeroes its blocks: the fallback must too"
    kernel.unload()
    assert kernel.pool == {}
