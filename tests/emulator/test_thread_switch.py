"""The harness' second thread (kernel_threads.py) must be trustworthy before
the ask tests rely on it: a wait switches to the handler thread, which runs
real driver code (an IOCTL through the real queue), and the waiting thread
resumes exactly where it was, every register intact, with the wait's status
decided by whether the event was set. The checks on the handler thread
(IRQL, locks) and on the wait itself must be able to fail.

These run on any driver build: the waits are made by a few assembled
instructions (as in test_irql_verifier.py), the switched work is the real
driver's IOCTL_GET_STATUS and its pre-operation callback."""

from __future__ import annotations

import struct

import pytest

from kernel_harness import (
    IOCTL_GET_STATUS,
    OB_OPERATION_HANDLE_CREATE,
    PASSIVE_LEVEL,
    POOL_FLAG_NON_PAGED,
    POOL_TAG_PGRD,
    STATUS_SIZE,
    STATUS_SUCCESS,
    KernelFault,
    PoolBlock,
    reg_binary,
)
from kernel_threads import STATUS_TIMEOUT

HANDLER_PID = 0x2A0
HANDLER_TID = 0x2A4
# Callee-saved registers (x64 Windows) and their mov-imm64 / mov-to-rax encodings.
CALLEE_SAVED = {
    "rbx": (b"\x48\xBB", b"\x48\x89\xD8"),
    "rbp": (b"\x48\xBD", b"\x48\x89\xE8"),
    "rsi": (b"\x48\xBE", b"\x48\x89\xF0"),
    "rdi": (b"\x48\xBF", b"\x48\x89\xF8"),
    "r12": (b"\x49\xBC", b"\x4C\x89\xE0"),
    "r13": (b"\x49\xBD", b"\x4C\x89\xE8"),
    "r14": (b"\x49\xBE", b"\x4C\x89\xF0"),
    "r15": (b"\x49\xBF", b"\x4C\x89\xF8"),
}
MARKERS = {name: 0x1111_0000_0000_0000 * (index + 1) + index for index, name in enumerate(CALLEE_SAVED)}
ARG_REGISTERS = (b"\x48\xB9", b"\x48\xBA", b"\x49\xB8", b"\x49\xB9")  # mov rcx/rdx/r8/r9, imm64


class Code:
    """A few x64 instructions assembled by hand: calls into the kernel's
    trap addresses (so through the harness' hooks and the verifier),
    register loads and stores to absolute addresses."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.code = bytearray(b"\x48\x83\xEC\x38")  # sub rsp, 0x38 (home space + a 5th argument, aligned)
        self.slots = kernel.se.mem_alloc(0x200, tag="threadcheck.slots")
        self.next_slot = 0

    def slot(self) -> int:
        address = self.slots + 8 * self.next_slot
        self.next_slot += 1
        return address

    def set(self, register: str, value: int) -> "Code":
        self.code += CALLEE_SAVED[register][0] + struct.pack("<Q", value)
        return self

    def store(self, register: str) -> int:
        """Stores a callee-saved register; returns the slot."""
        address = self.slot()
        self.code += CALLEE_SAVED[register][1] + b"\x48\xA3" + struct.pack("<Q", address)
        return address

    def call(self, name: str, *args: int) -> int:
        """Calls ntoskrnl!name; returns the slot RAX is stored in."""
        assert len(args) <= 5
        if len(args) == 5:
            self.code += b"\x48\xB8" + struct.pack("<Q", args[4])  # mov rax, imm64
            self.code += b"\x48\x89\x44\x24\x20"  # mov [rsp+0x20], rax
        for register, value in zip(ARG_REGISTERS, args[:4]):
            self.code += register + struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
        self.code += b"\x48\xB8" + struct.pack("<Q", self.kernel.emu.add_callback("ntoskrnl", name))
        self.code += b"\xFF\xD0"  # call rax
        address = self.slot()
        self.code += b"\x48\xA3" + struct.pack("<Q", address)  # mov [slot], rax
        return address

    def assemble(self) -> int:
        code = bytes(self.code) + b"\x48\x83\xC4\x38\xC3"  # add rsp, 0x38; ret
        address = self.kernel.se.mem_alloc(0x1000, tag="threadcheck.code")
        self.kernel.write(address, code)
        return address

    def value(self, slot: int) -> int:
        return struct.unpack("<Q", self.kernel.read(slot, 8))[0]


def non_paged(kernel, size: int = 0x100) -> int:
    address = kernel.se.mem_alloc(size, tag="threadcheck.pool")
    kernel.pool[address] = PoolBlock(address, size, POOL_TAG_PGRD, POOL_FLAG_NON_PAGED)
    return address


def relative_timeout(kernel, milliseconds: int) -> int:
    address = non_paged(kernel, 0x10)
    kernel.write(address, struct.pack("<q", -milliseconds * 10_000))
    return address


def waiter(kernel, event: int, timeout: int) -> tuple[Code, int, dict[str, int]]:
    """Code that loads markers into every callee-saved register, waits on
    ``event`` and stores the registers again: (code, status slot, register slots)."""
    code = Code(kernel)
    for register, value in MARKERS.items():
        code.set(register, value)
    code.call("KeInitializeEvent", event, 1, 0)
    status = code.call("KeWaitForSingleObject", event, 0, 0, 0, timeout)
    stored = {register: code.store(register) for register in CALLEE_SAVED}
    return code, status, stored


def setter(kernel, event: int, *, clobber: bool = True, raise_irql: bool = False) -> int:
    """A handler-thread routine that sets ``event`` (after clobbering every
    callee-saved register without restoring them: only the harness' context
    switch can give the waiter its registers back)."""
    code = Code(kernel)
    if clobber:
        for register in CALLEE_SAVED:
            code.set(register, 0xBAD0_BAD0_BAD0_BAD0)
    if raise_irql:
        code.call("KeAcquireSpinLockRaiseToDpc", non_paged(kernel, 0x10))
    code.call("KeSetEvent", event, 0, 0)
    return code.assemble()


# Documented maximum IRQLs of the functions the snippets call, for a driver
# build that does not import them yet (the table, driver/windows-support.toml,
# holds them once it does; these never override its rows).
SNIPPET_IRQL_LIMITS = {"KeInitializeEvent": 0, "KeSetEvent": 2, "KeWaitForSingleObject": 2}


@pytest.fixture
def loaded(kernel, compile_policy):
    for name, limit in SNIPPET_IRQL_LIMITS.items():
        kernel.irql_limits.setdefault(name, limit)
    kernel.parameters = {"Policy": reg_binary(compile_policy(POLICY))}
    kernel.new_process(HANDLER_PID)
    kernel.new_process(0x500)
    kernel.new_process(0x600)
    kernel.load()
    return kernel


POLICY = """
[[rule]]
name = "protect 0x500"
target = { pid = 0x500 }
objects = "process"
strip = ["PROCESS_TERMINATE"]
"""


def test_a_wait_runs_the_handler_thread_then_resumes_with_every_register_and_success(loaded):
    kernel = loaded
    event = non_paged(kernel)
    code, status, stored = waiter(kernel, event, relative_timeout(kernel, 250))
    routine = setter(kernel, event)
    handle = kernel.open_handle(pid=HANDLER_PID, tid=HANDLER_TID)
    seen = {}

    def on_wait(harness, wait):
        seen["wait"] = wait
        request = harness.thread_ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE, file=handle,
                                       after=lambda result: seen.setdefault("status", result))
        seen["request"] = request
        harness.thread_call(routine, [], "set the event", pid=HANDLER_PID, tid=HANDLER_TID)

    kernel.wait_handler = on_wait
    kernel.call(code.assemble(), [], "waiting thread")
    assert code.value(status) == STATUS_SUCCESS
    assert {register: code.value(slot) for register, slot in stored.items()} == MARKERS
    assert kernel.switches == 1 and seen["wait"].switched
    result = seen["status"]
    assert (result.status, result.information) == (STATUS_SUCCESS, STATUS_SIZE)
    assert struct.unpack_from("<I", result.output, 0)[0] == 2, "protocol version of the real driver's status"
    # The handler thread ran as the handler process, at PASSIVE, on its own stack.
    assert 0 < kernel.thread_stack_max_used < 0x6000
    assert kernel.irql == PASSIVE_LEVEL


def test_a_wait_nobody_ends_times_out_after_the_handler_thread_ran(loaded):
    kernel = loaded
    event = non_paged(kernel)
    code, status, stored = waiter(kernel, event, relative_timeout(kernel, 250))
    handle = kernel.open_handle(pid=HANDLER_PID, tid=HANDLER_TID)
    results = []
    kernel.wait_handler = lambda harness, wait: harness.thread_ioctl(
        IOCTL_GET_STATUS, b"", STATUS_SIZE, file=handle, after=results.append)
    before = kernel.system_time
    kernel.call(code.assemble(), [], "waiting thread")
    assert code.value(status) == STATUS_TIMEOUT
    assert kernel.system_time - before >= 250 * 10_000, "the whole timeout passed"
    assert {register: code.value(slot) for register, slot in stored.items()} == MARKERS
    assert [r.status for r in results] == [STATUS_SUCCESS]


def test_a_switch_inside_a_real_driver_callback_leaves_its_decision_unchanged(loaded):
    kernel = loaded
    handle = kernel.open_handle(pid=HANDLER_PID, tid=HANDLER_TID)

    def open_terminate():
        return kernel.pre_operation(operation=OB_OPERATION_HANDLE_CREATE, object_kind="process",
                                    target=kernel.eprocess(0x500), desired_access=0x1FFFFF,
                                    current_pid=0x600).desired_access

    plain = open_terminate()
    called = []
    results = []

    # The first kernel call the callback makes: the handler thread runs a
    # real IOCTL in the middle of the callback, then the callback goes on.
    def first_call(harness):
        called.append(harness.api_calls[-1])
        harness.thread_ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE, file=handle, after=results.append)

    calls_before = len(kernel.api_calls)
    kernel.pre_operation(operation=OB_OPERATION_HANDLE_CREATE, object_kind="process",
                         target=kernel.eprocess(0x500), desired_access=0, current_pid=0x600)
    names = [n for n in kernel.api_calls[calls_before:] if n]
    assert names, "the callback calls the kernel"
    kernel.switch_after_call[names[0]] = first_call
    switched = open_terminate()
    assert called == [names[0]] and kernel.switches == 1
    assert switched == plain == 0x1FFFFF & ~0x1
    assert [r.status for r in results] == [STATUS_SUCCESS]


def test_a_handler_thread_returning_at_dispatch_level_fails_the_run(loaded):
    kernel = loaded
    event = non_paged(kernel)
    code, _status, _stored = waiter(kernel, event, relative_timeout(kernel, 250))
    routine = setter(kernel, event, raise_irql=True)
    kernel.wait_handler = lambda harness, wait: harness.thread_call(
        routine, [], "set the event at DISPATCH", pid=HANDLER_PID, tid=HANDLER_TID)
    with pytest.raises(KernelFault, match=r"handler thread: set the event at DISPATCH returned at IRQL 2"):
        kernel.call(code.assemble(), [], "waiting thread")
    kernel.irql_violations.clear()
    kernel.hook_failures.clear()


def test_a_wait_above_passive_or_under_a_spin_lock_fails_the_run(loaded):
    kernel = loaded
    event = non_paged(kernel)
    code = Code(kernel)
    code.call("KeInitializeEvent", event, 1, 0)
    lock = non_paged(kernel, 0x10)
    code.call("KeAcquireSpinLockRaiseToDpc", lock)
    code.call("KeWaitForSingleObject", event, 0, 0, 0, relative_timeout(kernel, 10))
    code.call("KeReleaseSpinLock", lock, 0)
    with pytest.raises(KernelFault, match=r"KeWaitForSingleObject at IRQL 2 \(the ask path waits at PASSIVE only\)"):
        kernel.call(code.assemble(), [], "waiting under a spin lock")
    kernel.irql_violations.clear()


def test_a_wait_without_a_timeout_or_alertable_fails_the_run(loaded):
    kernel = loaded
    event = non_paged(kernel)
    code = Code(kernel)
    code.call("KeInitializeEvent", event, 1, 1)
    code.call("KeWaitForSingleObject", event, 0, 0, 0, 0)
    with pytest.raises(KernelFault, match="without a timeout"):
        kernel.call(code.assemble(), [], "infinite wait")
    kernel.irql_violations.clear()
    code = Code(kernel)
    code.call("KeWaitForSingleObject", event, 0, 0, 1, relative_timeout(kernel, 10))
    with pytest.raises(KernelFault, match="not alertable"):
        kernel.call(code.assemble(), [], "alertable wait")
    kernel.hook_failures.clear()


def test_without_the_context_restore_the_waiter_loses_its_registers(loaded, monkeypatch):
    """The register check above can fail: with the harness restoring only
    RSP and RIP, the setter's clobbered registers reach the waiter."""
    import kernel_threads

    kernel = loaded
    event = non_paged(kernel)
    code, status, stored = waiter(kernel, event, relative_timeout(kernel, 250))
    routine = setter(kernel, event)
    kernel.wait_handler = lambda harness, wait: harness.thread_call(
        routine, [], "set the event", pid=HANDLER_PID, tid=HANDLER_TID)
    import unicorn.x86_const as uc_x86

    only = [uc_x86.UC_X86_REG_RSP, uc_x86.UC_X86_REG_RIP]
    monkeypatch.setattr(kernel_threads, "_SAVED_REGISTERS", only)
    kernel.call(code.assemble(), [], "waiting thread")
    assert code.value(status) == STATUS_SUCCESS
    assert {register: code.value(slot) for register, slot in stored.items()} != MARKERS
    assert all(code.value(slot) == 0xBAD0_BAD0_BAD0_BAD0 for slot in stored.values())
