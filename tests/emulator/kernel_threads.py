"""Kernel events, waits and a second emulated thread, for the ask path.

Speakeasy 1.5.11 on unicorn 1.0.2 cannot nest emulation runs: a hook cannot
call driver code and get its result. But after an API hook returns,
Speakeasy only does the call-return (pop the return address, set RAX) if the
hook left PC and the stack as they were (``handle_import_func`` in
``speakeasy/windows/winemu.py``: ``if not self.run_complete and ret == oret
and pc == opc``); for a function it does not implement it always does it.
A hook that moves RIP/RSP therefore takes the CPU. That gives a
cooperative context switch:

* ``KeWaitForSingleObject`` on an event that is not signalled calls the
  test's ``wait_handler``. If it queued work for another thread (IOCTLs on a
  file handle, closing a handle, unloading the driver), the hook saves the
  waiting thread's whole register context and the harness' per-thread state
  (current process/thread, IRQL, critical regions, which stack the verifier
  scans), switches to a separate stack ("the handler thread"), and points
  RIP at the driver routine of the first piece of work, with a return address
  that lands on a harness sentinel (``harness!ThreadReturn``, a trap address).
* The sentinel checks what that routine left (the request completed or
  forwarded to a queue, IRQL back at PASSIVE, no lock or critical region
  taken by that thread left held), runs the Python follow-ups of the step
  (which may queue more work: a worker sending its reply after the
  get-request completed), then starts the next step the same way (a tail
  call: the routine is pushed as the sentinel's "return address").
* When no work is left, the sentinel restores the waiting thread exactly as
  it was and returns from ``KeWaitForSingleObject`` with STATUS_SUCCESS if the
  event is signalled now, else STATUS_TIMEOUT (the clock advanced by the
  timeout).

A wait inside switched work switches again (a stack of waiting threads,
each handler thread on a stack of its own; ``max_switch_depth``), which is
how many callbacks wait at once (the pool-full test holds 64). An unload in
switched work blocks in ObUnRegisterCallbacks while a callback is in
progress, as Windows' does: the waiting callback goes on, and the unload is
resumed in a run of its own after the callback returned.

Limits: the threads are cooperative, switched only at waits (and at
ObUnRegisterCallbacks): no preemption, so races between two callbacks in
the middle of a lock-free update are not explored here (the loom tests do
that); the switched work is driver code entered through its callbacks
(EvtIoDeviceControl, EvtFileCleanup, EvtIoCanceledOnQueue, DriverUnload, the
object callbacks), not arbitrary user code; kernel time is the harness'
clock, advanced by timeouts, not by instructions.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

import unicorn.x86_const as uc_x86
from speakeasy.winenv import arch as se_arch

STATUS_SUCCESS = 0
STATUS_TIMEOUT = 0x00000102
PASSIVE_LEVEL = 0
APC_LEVEL = 1
DISPATCH_LEVEL = 2
# KEVENT (wdm.h DISPATCHER_HEADER): Type at 0 (0 NotificationEvent,
# 1 SynchronizationEvent), SignalState (LONG) at 4; 24 bytes.
KEVENT_SIZE = 24
NOTIFICATION_EVENT = 0
SYNCHRONIZATION_EVENT = 1
EXECUTIVE = 0
KERNEL_MODE = 0
THREAD_STACK_SIZE = 0x10000

# Every register a thread owns: the general registers, flags and all XMM
# registers (XMM6-15 are callee-saved on x64 Windows; saving them all costs nothing).
_SAVED_REGISTERS = [
    getattr(uc_x86, f"UC_X86_REG_{name}")
    for name in (
        "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "RIP",
        "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15", "EFLAGS",
    )
] + [getattr(uc_x86, f"UC_X86_REG_XMM{index}") for index in range(16)]


@dataclass
class KernelEvent:
    address: int
    kind: int  # NOTIFICATION_EVENT / SYNCHRONIZATION_EVENT
    signaled: bool
    sets: int = 0


@dataclass
class WaitRecord:
    """One KeWaitForSingleObject the driver made."""

    event: int
    timeout_100ns: Optional[int]  # relative (positive), None = infinite
    irql: int
    pid: int
    tid: int
    status: Optional[int] = None
    switched: bool = False  # the handler thread ran during this wait
    signaled_before: bool = False


@dataclass
class ThreadStep:
    """One piece of work of the handler thread: a driver routine entered
    with ``args`` (x64), then ``after(result)`` in Python."""

    what: str
    routine: int
    args: list
    pid: int
    tid: int
    start: Callable[[], None] = None  # Python before entering (builds the request)
    finish: Callable[[], object] = None  # Python after returning (checks, result)
    after: Optional[Callable[[object], None]] = None
    result: object = None
    in_pre_operation: bool = False  # an object callback (no image-path lookups there)


@dataclass
class _Saved:
    registers: list
    irql: int
    critical_regions: int
    current_pid: int
    current_tid: int
    attached_pid: Optional[int]
    in_pre_operation: bool
    stack_top: int
    spin_locks: frozenset
    mutexes: frozenset
    module: object  # Speakeasy's current module: it resolves import traps through it


@dataclass
class _Switch:
    waiter: _Saved
    resume: Callable[[], int]  # the waiting call's return value, computed when it resumes
    steps: collections.deque = field(default_factory=collections.deque)
    current: Optional[ThreadStep] = None
    done: list = field(default_factory=list)
    stack_region: int = 0  # the handler thread's stack


@dataclass
class _Blocked:
    """A handler thread blocked until the run ends (DriverUnload in
    ObUnRegisterCallbacks, which waits for the callbacks in progress)."""

    thread: _Saved
    switch: _Switch
    return_value: int


KUSER_SHARED_DATA = 0xFFFFF78000000000
BOOT_INTERRUPT_TIME = 10_000_000  # the machine booted 1 s before the first system time
PERFORMANCE_FREQUENCY = 10_000_000


class KernelThreads:
    """Mixed into ``KernelHarness``."""

    # The clock: system time (100 ns since 1601) and interrupt time (since
    # boot) advance together, by 1 µs per KeQuerySystemTimePrecise and by a
    # whole timeout when a wait times out; KUSER_SHARED_DATA (what the
    # inline KeQueryInterruptTime/KeQuerySystemTime read) follows.
    @property
    def system_time(self) -> int:
        return self._system_time

    @system_time.setter
    def system_time(self, value: int) -> None:
        if getattr(self, "_first_system_time", None) is None:
            self._first_system_time = value
        self._system_time = value
        interrupt = self.interrupt_time
        for offset, time in ((0x08, interrupt), (0x14, value)):  # InterruptTime, SystemTime (KSYSTEM_TIME)
            low, high = time & 0xFFFFFFFF, (time >> 32) & 0xFFFFFFFF
            self.se.mem_write(KUSER_SHARED_DATA + offset, struct.pack("<III", low, high, high))

    @property
    def interrupt_time(self) -> int:
        return self._system_time - self._first_system_time + BOOT_INTERRUPT_TIME

    def _install_kernel_threads(self) -> None:
        self.kernel_events: dict[int, KernelEvent] = {}
        self.waits: list[WaitRecord] = []
        # wait_handler(harness, WaitRecord): called when the driver waits on
        # an event nobody set; queue work with `thread_ioctl`, `thread_close`,
        # `thread_call` (it runs on the handler thread before the wait ends).
        self.wait_handler: Optional[Callable[[object, WaitRecord], None]] = None
        self.all_apcs_disabled = False  # scripted: a guarded region
        # Waiting threads, innermost last: a wait inside switched work
        # switches again (another handler thread, on the next stack).
        self._switches: list[_Switch] = []
        self.max_switch_depth = 80
        self._in_wait_handler = False
        # API name -> callable(harness) that queues handler-thread steps: the
        # next call of that API switches to the handler thread after its hook
        # ran (the self-check of the mechanism on any hooked call).
        self.switch_after_call: dict[str, Callable[[object], None]] = {}
        self._pending_steps: collections.deque = collections.deque()
        self._free_stacks: list[int] = []  # handler thread stacks not in use
        self._blocked: list[_Blocked] = []
        self._resume_trampoline = self.emu.add_callback("harness", "ResumeThread")
        self.irql_limits.setdefault("ResumeThread", DISPATCH_LEVEL)
        self.se.add_api_hook(self._resume_thread_hook, "harness", "ResumeThread", argc=0)
        self.thread_stack_max_used = 0
        self.max_switch_depth_reached = 0
        self.switches = 0
        self._thread_return = self.emu.add_callback("harness", "ThreadReturn")
        self.irql_limits.setdefault("ThreadReturn", DISPATCH_LEVEL)
        self.se.add_api_hook(self._thread_return_hook, "harness", "ThreadReturn", argc=0)
        hook = self._hook
        hook("ntoskrnl", "KeInitializeEvent", 3, self._ke_initialize_event)
        hook("ntoskrnl", "KeSetEvent", 3, self._ke_set_event)
        hook("ntoskrnl", "KeClearEvent", 1, self._ke_clear_event)
        hook("ntoskrnl", "KeResetEvent", 1, self._ke_reset_event)
        hook("ntoskrnl", "KeReadStateEvent", 1, self._ke_read_state_event)
        hook("ntoskrnl", "KeWaitForSingleObject", 5, self._ke_wait_for_single_object)
        hook("ntoskrnl", "KeAreAllApcsDisabled", 0, self._ke_are_all_apcs_disabled)
        hook("ntoskrnl", "KeAreApcsDisabled", 0, self._ke_are_apcs_disabled)
        hook("ntoskrnl", "KeQueryInterruptTimePrecise", 1, self._ke_query_interrupt_time_precise)
        hook("ntoskrnl", "KeQueryPerformanceCounter", 1, self._ke_query_performance_counter)

    def _ke_query_interrupt_time_precise(self, argv, _original):
        self.system_time += 10
        if argv[0]:
            self._write_u64(argv[0], self.interrupt_time)
        return self.interrupt_time

    def _ke_query_performance_counter(self, argv, _original):
        self.system_time += 10
        if argv[0]:
            self._write_u64(argv[0], PERFORMANCE_FREQUENCY)
        return self.interrupt_time

    # ------------------------------------------------------------- events

    def _event(self, address: int, api: str) -> KernelEvent:
        event = self.kernel_events.get(address)
        if event is None:
            raise RuntimeError(f"{api}({address:#x}): not an initialised KEVENT")
        return event

    def _ke_initialize_event(self, argv, _original):
        address, kind, state = argv[0], argv[1] & 0xFFFFFFFF, argv[2] & 0xFF
        if kind not in (NOTIFICATION_EVENT, SYNCHRONIZATION_EVENT):
            raise RuntimeError(f"KeInitializeEvent({address:#x}): event type {kind}")
        if not self._non_paged(address, KEVENT_SIZE):
            self.irql_violation(f"KeInitializeEvent({address:#x}): a KEVENT waited on must be non-paged")
        self.write(address, struct.pack("<BBBBi", kind, 0, 6, 0, 1 if state else 0) + b"\0" * 16)
        self.kernel_events[address] = KernelEvent(address, kind, bool(state))
        return None

    def _ke_set_event(self, argv, _original):
        event = self._event(argv[0], "KeSetEvent")
        wait = argv[2] & 0xFF
        if wait:
            # Wait = TRUE requires the caller to wait right after, at
            # DISPATCH_LEVEL: the design forbids it.
            self.irql_violation(f"KeSetEvent({event.address:#x}, Wait=TRUE)")
        previous = 1 if event.signaled else 0
        event.signaled = True
        event.sets += 1
        self._write_u32(event.address + 4, 1)
        self.events.append(("KeSetEvent", event.address))
        return previous

    def _ke_clear_event(self, argv, _original):
        event = self._event(argv[0], "KeClearEvent")
        event.signaled = False
        self._write_u32(event.address + 4, 0)
        return None

    def _ke_reset_event(self, argv, _original):
        event = self._event(argv[0], "KeResetEvent")
        previous = 1 if event.signaled else 0
        event.signaled = False
        self._write_u32(event.address + 4, 0)
        return previous

    def _ke_read_state_event(self, argv, _original):
        return 1 if self._event(argv[0], "KeReadStateEvent").signaled else 0

    def _ke_are_all_apcs_disabled(self, _argv, _original):
        return 1 if (self.all_apcs_disabled or self.irql >= APC_LEVEL) else 0

    def _ke_are_apcs_disabled(self, _argv, _original):
        return 1 if (self.all_apcs_disabled or self.irql >= APC_LEVEL or self.critical_regions) else 0

    # -------------------------------------------------------------- waits

    def _ke_wait_for_single_object(self, argv, original):
        address, reason, mode, alertable, timeout = argv[0], argv[1] & 0xFFFFFFFF, argv[2] & 0xFF, argv[3] & 0xFF, argv[4]
        event = self._event(address, "KeWaitForSingleObject")
        interval = None
        if timeout:
            value = struct.unpack("<q", self.read(timeout, 8))[0]
            if value > 0:
                raise RuntimeError(f"KeWaitForSingleObject: absolute timeout {value} (the design uses relative ones)")
            interval = -value
        wait = WaitRecord(address, interval, self.irql, self.current_pid, self.current_tid, signaled_before=event.signaled)
        self.waits.append(wait)
        self.events.append(("KeWaitForSingleObject", address))
        if reason != EXECUTIVE or mode != KERNEL_MODE or alertable:
            raise RuntimeError(
                f"KeWaitForSingleObject(reason {reason}, mode {mode}, alertable {alertable}):"
                " the ask path waits Executive, KernelMode, not alertable"
            )
        if interval is None:
            # An infinite wait in a callback could hang the requester forever.
            self.irql_violation("KeWaitForSingleObject without a timeout")
        if self.irql > PASSIVE_LEVEL and interval != 0:
            self.irql_violation(f"KeWaitForSingleObject at IRQL {self.irql} (the ask path waits at PASSIVE only)")
        if self.spin_locks:
            self.irql_violation("KeWaitForSingleObject while holding a spin lock")
        if event.signaled or interval == 0 or self.wait_handler is None or len(self._switches) >= self.max_switch_depth:
            return self._finish_wait(wait)
        self._in_wait_handler = True
        try:
            self.wait_handler(self, wait)
        finally:
            self._in_wait_handler = False
        if not self._pending_steps:
            return self._finish_wait(wait)
        wait.switched = True
        self.begin_switch(lambda: self._finish_wait(wait), from_sentinel=original is None)
        return None

    def begin_switch(self, resume: Callable[[], int], *, from_sentinel: bool) -> None:
        """From inside an API hook: the calling (waiting) thread stops here,
        the handler thread runs the queued steps, then the waiting thread
        returns from that API call with ``resume()``. ``from_sentinel``: the
        API is one Speakeasy does not implement (``original is None``), after
        whose hook it pops a return address unconditionally."""
        assert self._pending_steps, "nothing queued for the handler thread"
        self.switches += 1
        switch = _Switch(waiter=self._save_thread(), resume=resume, steps=self._pending_steps)
        self._pending_steps = collections.deque()
        switch.stack_region = (
            self._free_stacks.pop() if self._free_stacks
            else self.se.mem_alloc(THREAD_STACK_SIZE + 0x1000, tag="harness.handler_thread_stack")
        )
        self._switches.append(switch)
        self.max_switch_depth_reached = max(self.max_switch_depth_reached, len(self._switches))
        self.write(self._thread_region(), b"\0" * (THREAD_STACK_SIZE + 0x1000))
        self._start_next_step(from_sentinel=from_sentinel)

    @property
    def _switch(self) -> Optional[_Switch]:
        return self._switches[-1] if self._switches else None

    def _thread_region(self) -> int:
        return self._switches[-1].stack_region

    @property
    def thread_stack_top(self) -> int:
        return self._thread_region() + THREAD_STACK_SIZE

    def _finish_wait(self, wait: WaitRecord) -> int:
        event = self.kernel_events[wait.event]
        if event.signaled:
            if event.kind == SYNCHRONIZATION_EVENT:
                event.signaled = False
                self._write_u32(event.address + 4, 0)
            wait.status = STATUS_SUCCESS
        else:
            # Nobody set it: the whole timeout passes.
            self.system_time += wait.timeout_100ns or 0
            wait.status = STATUS_TIMEOUT
        return wait.status

    # ------------------------------------------------ the handler thread

    @property
    def switched(self) -> bool:
        """True while harness code runs inside a switched wait (a wait
        handler or a step's follow-up): IOCTLs must be queued, not run."""
        return self._switch is not None or self._in_wait_handler

    def thread_step(self, step: ThreadStep) -> None:
        # From a wait handler: work for the thread about to be switched to;
        # from a step's follow-up: more work for the running handler thread.
        if self._in_wait_handler or self._switch is None:
            self._pending_steps.append(step)
        else:
            self._switch.steps.append(step)

    def thread_call(self, routine: int, args: list, what: str, *, pid: int, tid: int,
                    after: Optional[Callable[[object], None]] = None) -> ThreadStep:
        """From a wait handler: the handler thread (process ``pid``) calls
        ``routine(*args)`` at PASSIVE_LEVEL."""
        step = ThreadStep(what=what, routine=routine, args=list(args), pid=pid, tid=tid, after=after)
        self.thread_step(step)
        return step

    def thread_unload(self) -> None:
        """From a wait handler: the service is stopped while the driver
        waits: DriverUnload on a system thread. Its ObUnRegisterCallbacks
        waits (as Windows' does) until the callbacks in progress returned:
        the harness blocks that thread, lets the waiting callback finish,
        then resumes the unload after the run (``_resume_blocked_threads``)."""
        self.thread_step(ThreadStep(
            what="DriverUnload", routine=self.driver_unload_routine(), args=[self.driver_object],
            pid=4, tid=self._system_tid(),
        ))

    def _system_tid(self) -> int:
        return 0x44

    def callbacks_in_progress(self) -> bool:
        """An object callback is in progress on a waiting thread."""
        return any(switch.waiter.in_pre_operation for switch in self._switches)

    def block_until_run_ends(self, return_value: int = 0) -> int:
        """From an API hook on the running handler thread (an API Speakeasy
        does not implement): that thread stops here and is resumed with
        ``return_value`` after the run; the thread it switched from goes on
        now. Returns the value the hook must return (the waiter's)."""
        switch = self._switches.pop()
        self._blocked.append(_Blocked(thread=self._save_thread(), switch=switch, return_value=return_value))
        self._restore_thread(switch.waiter)
        return switch.resume()

    def _resume_blocked_threads(self) -> None:
        """Threads blocked until the run ended (an unload waiting for the
        object callbacks in progress) go on now, each in a run of its own."""
        while self._blocked:
            what = self._blocked[0].switch.current.what
            self._run(self._resume_trampoline, [], what)
            if what == "DriverUnload":
                self._check_unload_completed()

    def _resume_thread_hook(self, emu, api_name, _original, _argv):
        """harness!ResumeThread, the start of a resuming run: the run's own
        frame becomes the waiter the blocked thread returns to at its end."""
        try:
            blocked = self._blocked.pop(0)
            switch = blocked.switch
            switch.waiter = self._save_thread()
            switch.resume = lambda: STATUS_SUCCESS
            self._switches.append(switch)
            self._restore_thread(blocked.thread)
            return blocked.return_value
        except Exception:  # noqa: BLE001 - reported by assert_no_fault
            import traceback  # noqa: PLC0415

            self.hook_failures.append(f"{api_name}: {traceback.format_exc()}")
            self.emu.stop()
            return 0

    def _save_thread(self) -> _Saved:
        uc = self.emu.emu_eng.emu
        return _Saved(
            registers=[uc.reg_read(register) for register in _SAVED_REGISTERS],
            irql=self.irql,
            critical_regions=self.critical_regions,
            current_pid=self.current_pid,
            current_tid=self.current_tid,
            attached_pid=self.attached_pid,
            in_pre_operation=self.in_pre_operation,
            stack_top=self.stack_top,
            spin_locks=frozenset(self.spin_locks),
            mutexes=frozenset(m for m, held in self.mutexes.items() if held),
            module=self.emu.curr_mod,
        )

    def _restore_thread(self, saved: _Saved) -> None:
        uc = self.emu.emu_eng.emu
        for register, value in zip(_SAVED_REGISTERS, saved.registers):
            uc.reg_write(register, value)
        self.irql = saved.irql
        self.critical_regions = saved.critical_regions
        self.current_pid = saved.current_pid
        self.current_tid = saved.current_tid
        self.attached_pid = saved.attached_pid
        self.in_pre_operation = saved.in_pre_operation
        self.stack_top = saved.stack_top
        self.emu.curr_mod = saved.module

    def _start_next_step(self, *, from_sentinel: bool) -> None:
        """Enters the next step's routine on the handler thread's stack.
        ``from_sentinel``: the caller is a hook after which Speakeasy pops a
        return address (an unimplemented function): the routine is pushed as
        that "return address"."""
        switch = self._switch
        step = switch.steps.popleft()
        switch.current = step
        # The handler thread: a user thread of the handler process entering
        # the driver through the I/O manager at PASSIVE_LEVEL.
        self.irql = PASSIVE_LEVEL
        self.critical_regions = 0
        self.current_pid, self.current_tid = step.pid, step.tid
        self.attached_pid = None
        self.in_pre_operation = step.in_pre_operation
        self.stack_top = self.thread_stack_top
        if step.start is not None:
            step.start()
        emu = self.emu
        # Speakeasy finds the image's import traps through its "current
        # module", set when a run starts: the driver's, for driver code.
        module = emu.get_module_from_addr(step.routine)
        if module is not None:
            emu.curr_mod = module
        registers = (se_arch.AMD64_REG_RCX, se_arch.AMD64_REG_RDX, se_arch.AMD64_REG_R8, se_arch.AMD64_REG_R9)
        for register, value in zip(registers, step.args[:4]):
            emu.reg_write(register, value & 0xFFFFFFFFFFFFFFFF)
        stack_args = step.args[4:]
        slots = len(stack_args) + (len(stack_args) & 1)
        entry_rsp = self.thread_stack_top - 8 - 0x20 - 8 * slots
        self._write_u64(entry_rsp, self._thread_return)
        for index, value in enumerate(stack_args):
            self._write_u64(entry_rsp + 0x28 + 8 * index, value)
        if from_sentinel:
            self._write_u64(entry_rsp - 8, step.routine)
            emu.reg_write(se_arch.AMD64_REG_RSP, entry_rsp - 8)
        else:
            emu.reg_write(se_arch.AMD64_REG_RSP, entry_rsp)
            emu.reg_write(se_arch.AMD64_REG_RIP, step.routine)

    def _thread_stack_used(self) -> int:
        region = self._thread_region()
        raw = self.read(region, THREAD_STACK_SIZE)
        stripped = raw.lstrip(b"\0")
        return len(stripped) and self.thread_stack_top - (region + len(raw) - len(stripped))

    def _thread_return_hook(self, emu, api_name, _original, _argv):
        """The sentinel: a step's routine returned (see the module doc)."""
        try:
            return self._thread_returned()
        except Exception:  # noqa: BLE001 - reported by assert_no_fault
            import traceback  # noqa: PLC0415

            self.hook_failures.append(f"{api_name}: {traceback.format_exc()}")
            # Give the CPU back to the waiter so the run can end.
            if self._switches:
                self._restore_thread(self._switches.pop().waiter)
            return STATUS_TIMEOUT

    def _thread_returned(self):
        switch = self._switch
        if switch is None:
            raise RuntimeError("harness!ThreadReturn reached with no handler thread running")
        step = switch.current
        what = f"handler thread: {step.what}"
        used = self._thread_stack_used()
        self.thread_stack_max_used = max(self.thread_stack_max_used, used)
        if used > 0x6000:
            raise RuntimeError(f"{what}: used {used} bytes of the handler thread's stack")
        # The step's thread must return as it entered: PASSIVE, no critical
        # region, no lock it took still held.
        if self.irql != PASSIVE_LEVEL:
            self.irql_violation(f"{what} returned at IRQL {self.irql}, entered at PASSIVE_LEVEL", stack=False)
        if self.critical_regions:
            self.irql_violation(f"{what} returned with {self.critical_regions} critical region(s) open", stack=False)
        held = set(self.spin_locks) - switch.waiter.spin_locks
        held |= {m for m, is_held in self.mutexes.items() if is_held} - switch.waiter.mutexes
        if held:
            self.irql_violation(f"{what} returned holding {[hex(lock) for lock in held]}", stack=False)
        step.result = step.finish() if step.finish is not None else None
        switch.done.append(step)
        if step.after is not None:
            step.after(step.result)
        if switch.steps:
            self._start_next_step(from_sentinel=True)
            return None
        # Back to the waiting thread: exactly as it was; Speakeasy then pops
        # its return address and sets RAX.
        self.write(self._thread_region(), b"\0" * (THREAD_STACK_SIZE + 0x1000))
        self._free_stacks.append(self._switches.pop().stack_region)
        self._restore_thread(switch.waiter)
        return switch.resume()
