"""The IRQL verifier (irql_verifier.py) must be able to fail: each of its
rules is broken once here, by a few instructions the test assembles and runs
as if they were driver code, and must fail the run with its message. The
driver itself runs under the verifier in every other test of the suite."""

from __future__ import annotations

import struct
from pathlib import Path
import tomllib

import pefile
import pytest

from irql_verifier import SUPPORT_TABLE
from kernel_harness import (
    APC_LEVEL,
    DISPATCH_LEVEL,
    PASSIVE_LEVEL,
    POOL_FLAG_NON_PAGED,
    POOL_TAG_PGRD,
    KernelFault,
    PoolBlock,
)


class Snippet:
    """x64 code that calls kernel functions by name, in order, through the
    emulator's trap addresses (so through the harness' hooks and the
    verifier), and stores each call's RAX."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.calls: list[tuple[str, list[int]]] = []
        self.results_at = kernel.se.mem_alloc(0x100, tag="selfcheck.results")

    def call(self, name: str, *args: int) -> "Snippet":
        assert len(args) <= 4
        self.calls.append((name, list(args)))
        return self

    def run(self, what: str = "self-check snippet") -> list[int]:
        kernel = self.kernel
        code = bytearray(b"\x48\x83\xEC\x28")  # sub rsp, 0x28
        registers = (b"\x48\xB9", b"\x48\xBA", b"\x49\xB8", b"\x49\xB9")  # mov rcx/rdx/r8/r9, imm64
        for index, (name, args) in enumerate(self.calls):
            for register, value in zip(registers, args):
                code += register + struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
            target = kernel.emu.add_callback("ntoskrnl", name)
            code += b"\x48\xB8" + struct.pack("<Q", target)  # mov rax, target
            code += b"\xFF\xD0"  # call rax
            code += b"\x48\xA3" + struct.pack("<Q", self.results_at + 8 * index)  # mov [results], rax
        code += b"\x48\x83\xC4\x28\xC3"  # add rsp, 0x28; ret
        address = kernel.se.mem_alloc(0x1000, tag="selfcheck.code")
        kernel.write(address, bytes(code))
        kernel.call(address, [], what)
        return list(struct.unpack(f"<{len(self.calls)}Q", kernel.read(self.results_at, 8 * len(self.calls))))


def non_paged_block(kernel, size: int = 0x200) -> int:
    address = kernel.se.mem_alloc(size, tag="selfcheck.pool")
    kernel.pool[address] = PoolBlock(address, size, POOL_TAG_PGRD, POOL_FLAG_NON_PAGED)
    return address


def held_guarded_mutex(kernel) -> tuple[int, Snippet]:
    """A guarded mutex in non-paged pool, initialised and acquired."""
    mutex = non_paged_block(kernel)
    return mutex, Snippet(kernel).call("KeInitializeGuardedMutex", mutex).call("KeAcquireGuardedMutex", mutex)


def held_eresource(kernel, in_critical_region: bool = True) -> tuple[int, Snippet]:
    """An ERESOURCE in non-paged pool, initialised and acquired exclusive,
    inside a critical region (as documented) unless told otherwise."""
    resource = non_paged_block(kernel)
    snippet = Snippet(kernel).call("ExInitializeResourceLite", resource)
    if in_critical_region:
        snippet.call("KeEnterCriticalRegion")
    return resource, snippet.call("ExAcquireResourceExclusiveLite", resource, 1)


def expect_violation(kernel, snippet: Snippet, pattern: str, what: str = "self-check snippet") -> None:
    with pytest.raises(KernelFault, match=pattern):
        snippet.run(what)
    assert not kernel.irql_violations, "reported violations are not reported twice"


def test_a_passive_only_call_under_a_guarded_mutex_fails(kernel):
    mutex, snippet = held_guarded_mutex(kernel)
    (
        snippet.call("KeGetCurrentIrql")
        .call("PsSetCreateProcessNotifyRoutineEx", 0x1234, 1)
        .call("KeReleaseGuardedMutex", mutex)
        .call("KeGetCurrentIrql")
    )
    expect_violation(kernel, snippet, r"PsSetCreateProcessNotifyRoutineEx called at IRQL 1, above its maximum 0")
    results = struct.unpack("<6Q", kernel.read(snippet.results_at, 48))
    # KeGetCurrentIrql reports the tracked IRQL: APC_LEVEL while held, then back.
    assert (results[2] & 0xFF, results[5] & 0xFF) == (APC_LEVEL, PASSIVE_LEVEL)


def test_the_same_call_at_passive_level_passes(kernel):
    # The control experiment: the rule is about the IRQL, not the function.
    Snippet(kernel).call("PsSetCreateProcessNotifyRoutineEx", 0x1234, 1).run()
    assert not kernel.irql_violations and not kernel.reported_irql_violations


def test_a_call_above_its_limit_under_a_spin_lock_fails_with_the_limit_from_the_table(kernel):
    lock = non_paged_block(kernel)
    snippet = (
        Snippet(kernel)
        .call("KeAcquireSpinLockRaiseToDpc", lock)
        .call("PsLookupProcessByProcessId", 0, lock + 0x100)
        .call("KeReleaseSpinLock", lock, PASSIVE_LEVEL)
    )
    limit = kernel.irql_limits["PsLookupProcessByProcessId"]
    assert limit < DISPATCH_LEVEL
    expect_violation(kernel, snippet, rf"PsLookupProcessByProcessId called at IRQL 2, above its maximum {limit}")


def test_a_function_without_a_row_in_the_table_fails(kernel):
    del kernel.irql_limits["PsLookupProcessByProcessId"]
    snippet = Snippet(kernel).call("PsLookupProcessByProcessId", 0, non_paged_block(kernel))
    expect_violation(kernel, snippet, r"PsLookupProcessByProcessId: no max_irql in driver/windows-support.toml")


def test_a_spin_lock_released_to_another_irql_fails(kernel):
    lock = non_paged_block(kernel)
    snippet = (
        Snippet(kernel)
        .call("KeAcquireSpinLockRaiseToDpc", lock)
        .call("KeReleaseSpinLock", lock, APC_LEVEL)
    )
    expect_violation(kernel, snippet, r"back to IRQL 1; its acquisition returned 0")


def test_returning_at_a_raised_irql_fails(kernel):
    lock = non_paged_block(kernel)
    snippet = Snippet(kernel).call("KeAcquireSpinLockRaiseToDpc", lock)
    expect_violation(kernel, snippet, r"returned at IRQL 2, entered at 0[\s\S]*holding spin lock")
    assert kernel.irql == PASSIVE_LEVEL, "the harness is back at the entry IRQL for the next run"


def test_returning_holding_a_guarded_mutex_fails(kernel):
    _, snippet = held_guarded_mutex(kernel)
    expect_violation(kernel, snippet, r"returned at IRQL 1, entered at 0[\s\S]*holding guarded mutex")


def test_a_guarded_mutex_released_at_another_irql_fails(kernel):
    mutex, snippet = held_guarded_mutex(kernel)
    lock = non_paged_block(kernel)
    (
        snippet.call("KeAcquireSpinLockRaiseToDpc", lock)
        .call("KeReleaseGuardedMutex", mutex)
        .call("KeReleaseSpinLock", lock, APC_LEVEL)
    )
    expect_violation(kernel, snippet, r"KeReleaseGuardedMutex\(0x[0-9a-f]+\) at IRQL 2")


def test_lowering_the_irql_above_the_current_one_fails(kernel):
    snippet = Snippet(kernel).call("KeRaiseIrqlToDpcLevel").call("KeLowerIrql", 0).call("KeLowerIrql", 2).call(
        "KeLowerIrql", 0
    )
    expect_violation(kernel, snippet, r"KeLowerIrql to 2 from the lower IRQL 0")


def test_a_critical_region_left_open_fails(kernel):
    snippet = Snippet(kernel).call("KeEnterCriticalRegion")
    expect_violation(kernel, snippet, r"returned with 1 critical region\(s\) open")


def test_leaving_a_critical_region_never_entered_fails(kernel):
    snippet = Snippet(kernel).call("KeLeaveCriticalRegion")
    expect_violation(kernel, snippet, r"KeLeaveCriticalRegion without a matching KeEnterCriticalRegion")


def test_an_eresource_acquired_outside_a_critical_region_fails(kernel):
    resource, snippet = held_eresource(kernel, in_critical_region=False)
    snippet.call("ExReleaseResourceLite", resource).call("ExDeleteResourceLite", resource)
    expect_violation(kernel, snippet, r"ExAcquireResourceExclusiveLite\(0x[0-9a-f]+\) with normal kernel APCs enabled")


def test_an_eresource_used_as_documented_passes_and_keeps_passive_level(kernel):
    resource, snippet = held_eresource(kernel)
    (
        snippet.call("KeGetCurrentIrql")
        .call("ZwQuerySystemInformation", 0xFFFF, 0, 0, 0)  # PASSIVE-only: legal here
        .call("ExReleaseResourceLite", resource)
        .call("KeLeaveCriticalRegion")
        .call("ExDeleteResourceLite", resource)
    )
    results = snippet.run()
    assert results[3] & 0xFF == PASSIVE_LEVEL
    assert not kernel.irql_violations and not kernel.reported_irql_violations


def test_leaving_the_critical_region_while_holding_an_eresource_fails(kernel):
    resource, snippet = held_eresource(kernel)
    snippet.call("KeLeaveCriticalRegion").call("ExReleaseResourceLite", resource).call("ExDeleteResourceLite", resource)
    expect_violation(kernel, snippet, r"KeLeaveCriticalRegion while holding ERESOURCE")


def test_returning_holding_an_eresource_fails(kernel):
    _, snippet = held_eresource(kernel)
    snippet.call("KeLeaveCriticalRegion")
    expect_violation(kernel, snippet, r"returned holding ERESOURCE")


def test_an_eresource_in_memory_that_is_not_non_paged_pool_fails(kernel):
    paged = kernel.se.mem_alloc(0x200, tag="selfcheck.paged")
    snippet = Snippet(kernel).call("ExInitializeResourceLite", paged).call("ExDeleteResourceLite", paged)
    expect_violation(kernel, snippet, r"storage is not non-paged memory")


def test_freeing_pool_that_holds_a_live_eresource_fails(kernel):
    block = non_paged_block(kernel)
    snippet = (
        Snippet(kernel)
        .call("ExInitializeResourceLite", block + 0x40)
        .call("ExFreePoolWithTag", block, POOL_TAG_PGRD)
    )
    expect_violation(kernel, snippet, r"ExFreePoolWithTag\(0x[0-9a-f]+\) frees the live ERESOURCE")


def test_an_unload_that_leaves_an_eresource_initialised_fails(kernel):
    resource = non_paged_block(kernel)
    snippet = Snippet(kernel).call("ExInitializeResourceLite", resource)
    expect_violation(kernel, snippet, r"unload left ERESOURCE", what="DriverUnload")


def test_the_object_callback_can_be_entered_at_apc_level_and_sees_it(kernel):
    kernel.load()
    target = kernel.new_process(500)
    kernel.pre_operation(operation=1, object_kind="process", target=target, desired_access=1, irql=APC_LEVEL)
    assert kernel.irql == PASSIVE_LEVEL


def test_every_code_import_of_the_image_has_a_max_irql_row():
    # The verifier's limits come from the one table; an import without a row
    # would be a violation at its first call, this names it without a call.
    table = tomllib.loads(SUPPORT_TABLE.read_text())
    rows = {row["name"]: row for row in table["import"]}
    import os

    # Not `from conftest import ...`: with tests/package in the same run,
    # "conftest" may be that directory's module.
    repo_root = Path(__file__).resolve().parents[2]
    image = os.environ.get("PROCGUARD_SYS", str(repo_root / "package" / "procguard.sys"))
    pe = pefile.PE(image)
    missing = []
    for entry in pe.DIRECTORY_ENTRY_IMPORT:
        for symbol in entry.imports:
            name = symbol.name.decode()
            if name not in rows or "max_irql" not in rows[name]:
                missing.append(f"{entry.dll.decode()}!{name}")
    assert not missing, f"imports without a max_irql row in {SUPPORT_TABLE}: {missing}"
