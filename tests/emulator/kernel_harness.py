"""An emulated Windows kernel for procguard.sys, built on Speakeasy 1.5.11.

Speakeasy loads the real, cross-built driver image and runs its x64 code, but
its kernel lacks (or gets wrong) most of what procguard calls. This module
supplies those pieces as API hooks, records every call the driver makes, and
lets a test script the kernel's answers. See README.md for the list of
Speakeasy defects worked around and why each hook exists.

Every way of running driver code goes through ``KernelHarness._run``, which
fails the test when the driver faulted, bugchecked, hit a missing function or
made a hook raise (Speakeasy itself reports none of these as exceptions).
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import struct
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import speakeasy
import speakeasy.winenv.arch as se_arch
import speakeasy.winenv.defs.wdf as se_wdf
from speakeasy.windows.kernel import EP_DRIVER_ENTRY

# --- NTSTATUS values (32-bit, as the driver sees them) ---------------------
STATUS_SUCCESS = 0x00000000
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
STATUS_INTERNAL_ERROR = 0xC00000E5
STATUS_FLT_INSTANCE_ALTITUDE_COLLISION = 0xC01C0011

# --- Object manager -------------------------------------------------------
OB_FLT_REGISTRATION_VERSION = 0x0100
OB_OPERATION_HANDLE_CREATE = 1
OB_OPERATION_HANDLE_DUPLICATE = 2
OB_PREOP_SUCCESS = 0

# --- Registry -------------------------------------------------------------
REG_SZ = 1
REG_BINARY = 3
REG_DWORD = 4
KEY_VALUE_PARTIAL_INFORMATION = 2
PARTIAL_INFO_HEADER = 12  # FIELD_OFFSET(KEY_VALUE_PARTIAL_INFORMATION, Data)

# --- Pool -----------------------------------------------------------------
POOL_FLAG_NON_PAGED = 0x40
POOL_TAG_PGRD = int.from_bytes(b"PGrd", "little")

# --- Layouts (x64, checked against the mingw DDK by the driver's own tests) -
DRIVER_OBJECT_DRIVER_UNLOAD = 0x68
WDF_DRIVER_GLOBALS_DISPLACE_DRIVER_UNLOAD = 48
WDF_DRIVER_GLOBALS_SIZE = 56
WDF_FUNCTION_COUNT_1_33 = 458
OB_PRE_OPERATION_INFORMATION_SIZE = 40
OB_PRE_OPERATION_PARAMETERS_SIZE = 24  # the duplicate member, the larger one
OB_OPERATION_REGISTRATION_SIZE = 32

SERVICE_NAME = "procguard"

# Fake kernel handles and object addresses live in ranges no real mapping
# uses, so a value read back from the driver identifies what it came from.
KERNEL_HANDLE_BASE = 0xFFFFFFFF80000000
REGISTRATION_HANDLE_BASE = 0xFFFFC0B000000000
WDFDRIVER_HANDLE = 0x00000000DD0D0001


class KernelFault(AssertionError):
    """The driver did something a real kernel would not survive."""


def _u16(data: bytes, offset: int) -> int:
    return struct.unpack_from("<H", data, offset)[0]


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def _u64(data: bytes, offset: int) -> int:
    return struct.unpack_from("<Q", data, offset)[0]


def reg_sz(text: str) -> tuple[int, bytes]:
    """A REG_SZ value as the registry stores it: UTF-16LE with its NUL."""
    return REG_SZ, (text + "\0").encode("utf-16-le")


def reg_dword(value: int) -> tuple[int, bytes]:
    return REG_DWORD, struct.pack("<I", value)


def reg_binary(data: bytes) -> tuple[int, bytes]:
    return REG_BINARY, bytes(data)


def policy_blob(
    rules: Iterable[tuple[int, int, int]],
    *,
    magic: bytes = b"PGPT",
    version: int = 1,
    count: Optional[int] = None,
) -> bytes:
    """Encodes the driver's `Policy` value (driver/src/pid_table.rs).

    The keyword arguments exist to build corrupt blobs on purpose; rules are
    written in the order given (sorting is the caller's job, so unsorted
    blobs can be made too).
    """
    rules = list(rules)
    blob = bytearray(magic)
    blob += struct.pack("<HH", version, len(rules) if count is None else count)
    for pid, process_strip, thread_strip in rules:
        blob += struct.pack("<III", pid, process_strip, thread_strip)
    return bytes(blob)


@dataclass
class OperationEntry:
    """One OB_OPERATION_REGISTRATION as the driver passed it."""

    object_type: int
    operations: int
    pre_operation: int
    post_operation: int


@dataclass
class RegistrationAttempt:
    """One ObRegisterCallbacks call: what the driver asked and what it got."""

    version: int
    count: int
    altitude: str
    altitude_length: int
    altitude_maximum_length: int
    context: int
    entries: list[OperationEntry]
    status: int
    handle: Optional[int]


@dataclass
class PoolBlock:
    address: int
    size: int
    tag: int
    flags: int


@dataclass
class DebugMessage:
    component: int
    level: int
    format: str
    text: str


@dataclass
class PreOperationResult:
    """What the pre-operation callback left in the kernel's structures."""

    status: int
    desired_access: int
    original_desired_access: int
    # The whole OB_PRE_OPERATION_INFORMATION after the call, to prove that
    # nothing but DesiredAccess was written.
    information: bytes
    parameters: bytes


@dataclass
class WdfBind:
    size: int
    component: str
    version: tuple[int, int, int]
    func_count: int
    func_table_slot: int
    module: int


class KernelHarness:
    """One emulated machine with procguard.sys loaded but not yet started.

    Set ``parameters`` (None = no Parameters key), ``register_results``,
    ``occupied_altitudes`` and ``current_pid`` before ``driver_entry()``;
    then call ``pre_operation`` and ``unload``.
    """

    def __init__(self, sys_path: str):
        self.sys_path = sys_path
        self.se = speakeasy.Speakeasy(config=self._config())
        self.module = self.se.load_module(sys_path)
        self.image_base = self.module.base
        self.image_end = self.module.base + self.module.image_size

        # Scriptable kernel state.
        self.parameters: Optional[dict[str, tuple[int, bytes]]] = {}
        self.register_results: collections.deque[int] = collections.deque()
        self.occupied_altitudes: set[str] = set()
        self.current_pid = 4
        self.current_pid_script: collections.deque[int] = collections.deque()
        self.fail_allocations: set[int] = set()  # 0-based ExAllocatePool2 call numbers
        # ZwOpenKey of the Parameters key fails with this status when set.
        self.parameters_open_status: Optional[int] = None

        # Records.
        self.hook_failures: list[str] = []
        # (API, argument) of the calls whose order matters, in call order.
        self.events: list[tuple[str, int]] = []
        self.bugchecks: list[tuple[int, ...]] = []
        self.registrations: list[RegistrationAttempt] = []
        self.live_registrations: dict[int, RegistrationAttempt] = {}
        self.unregistrations: list[int] = []
        self.pool: dict[int, PoolBlock] = {}
        self.allocation_count = 0
        self.frees: list[tuple[int, int]] = []
        self.open_keys: dict[int, str] = {}
        self.key_opens: list[tuple[str, int]] = []  # (path, root handle)
        self.value_queries: list[tuple[str, int, int]] = []  # (name, class, length)
        self.debug_messages: list[DebugMessage] = []
        self.current_pid_calls = 0
        self.wdf_binds: list[WdfBind] = []
        self.wdf_unbinds: list[tuple[int, int, int]] = []
        self.wdf_driver_creates: list[dict] = []
        self.evt_driver_unload: Optional[int] = None
        self.driver_entry_status: Optional[int] = None

        self._next_handle = KERNEL_HANDLE_BASE
        self._next_registration = REGISTRATION_HANDLE_BASE
        self._processes: dict[int, int] = {}  # EPROCESS address -> pid
        self._threads: dict[int, int] = {}  # ETHREAD address -> owning pid
        self._scratch = self.se.mem_alloc(0x1000, tag="harness.scratch")

        self._install_object_types()
        self._install_hooks()

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _config() -> dict:
        path = os.path.join(os.path.dirname(speakeasy.__file__), "configs", "default.json")
        with open(path) as handle:
            config = json.load(handle)
        # String scanning of all memory at the end of every run costs far more
        # than the driver code itself and is useless here.
        config["analysis"]["strings"] = False
        config["analysis"]["memory_tracing"] = False
        config["timeout"] = 10
        return config

    @property
    def emu(self):
        """Speakeasy's internal kernel emulator (the object hooks receive)."""
        return self.se.emu

    def _install_object_types(self) -> None:
        """Gives the image real PsProcessType / PsThreadType variables.

        Speakeasy has no handler for these data exports, so their import slots
        point at its function-call trap area. A kernel's slot holds the address
        of the variable, and the variable holds the OBJECT_TYPE pointer: make
        both levels real and distinct so one dereference too many or too few
        in the driver is visible.
        """
        self.process_object_type = self.se.mem_alloc(0x100, tag="harness.OBJECT_TYPE.Process")
        self.thread_object_type = self.se.mem_alloc(0x100, tag="harness.OBJECT_TYPE.Thread")
        variables = self.se.mem_alloc(0x10, tag="harness.PsXxxType")
        self.ps_process_type_variable = variables
        self.ps_thread_type_variable = variables + 8
        self._write_u64(self.ps_process_type_variable, self.process_object_type)
        self._write_u64(self.ps_thread_type_variable, self.thread_object_type)
        targets = {
            "PsProcessType": self.ps_process_type_variable,
            "PsThreadType": self.ps_thread_type_variable,
        }
        patched = set()
        for slot, (module_name, name) in self.module.imports.items():
            if module_name.lower() == "ntoskrnl" and name in targets:
                self._write_u64(slot, targets[name])
                patched.add(name)
        if patched != set(targets):
            raise KernelFault(f"image does not import {set(targets) - patched} from ntoskrnl")

    def _hook(self, module: str, name: str, argc: int, handler: Callable) -> None:
        """Registers ``handler(argv, original)`` for ``module!name``.

        unicorn 1.0.2 swallows Python exceptions raised inside hooks (the run
        just ends with an unexplained fetch error), so they are caught here and
        reported by ``assert_no_fault``.
        """

        def callback(emu, api_name, original, argv):
            try:
                return handler(list(argv), original)
            except Exception:  # noqa: BLE001 - reported, not hidden
                self.hook_failures.append(f"{api_name}: {traceback.format_exc()}")
                return STATUS_INTERNAL_ERROR

        # argc is only used for APIs Speakeasy does not implement; for those
        # it does implement, its own argc decides what argv holds.
        self.se.add_api_hook(callback, module, name, argc=argc)

    def _install_hooks(self) -> None:
        hook = self._hook
        hook("ntoskrnl", "ObRegisterCallbacks", 2, self._ob_register_callbacks)
        hook("ntoskrnl", "ObUnRegisterCallbacks", 1, self._ob_unregister_callbacks)
        hook("ntoskrnl", "PsGetCurrentProcessId", 0, self._ps_get_current_process_id)
        hook("ntoskrnl", "PsGetProcessId", 1, self._ps_get_process_id)
        hook("ntoskrnl", "PsGetThreadProcessId", 1, self._ps_get_thread_process_id)
        hook("ntoskrnl", "ExAllocatePool2", 3, self._ex_allocate_pool2)
        hook("ntoskrnl", "ExFreePoolWithTag", 2, self._ex_free_pool_with_tag)
        hook("ntoskrnl", "ZwOpenKey", 3, self._zw_open_key)
        hook("ntoskrnl", "ZwQueryValueKey", 6, self._zw_query_value_key)
        hook("ntoskrnl", "ZwClose", 1, self._zw_close)
        hook("ntoskrnl", "DbgPrintEx", 4, self._dbg_print_ex)
        hook("ntoskrnl", "KeBugCheckEx", 5, self._ke_bug_check_ex)
        hook("wdfldr", "WdfVersionBind", 4, self._wdf_version_bind)
        hook("wdfldr", "WdfVersionUnbind", 3, self._wdf_version_unbind)
        hook("wdfldr", "WdfDriverCreate", 6, self._wdf_driver_create)
        hook("wdfldr", "FxFrameworkDriverUnload", 1, self._fx_framework_driver_unload)

    # ------------------------------------------------------------ memory I/O

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.se.mem_read(address, size))

    def write(self, address: int, data: bytes) -> None:
        self.se.mem_write(address, bytes(data))

    def _read_u32(self, address: int) -> int:
        return _u32(self.read(address, 4), 0)

    def _read_u64(self, address: int) -> int:
        return _u64(self.read(address, 8), 0)

    def _write_u32(self, address: int, value: int) -> None:
        self.write(address, struct.pack("<I", value & 0xFFFFFFFF))

    def _write_u64(self, address: int, value: int) -> None:
        self.write(address, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def _read_unicode_string(self, address: int) -> str:
        """Reads a UNICODE_STRING by its Length (not up to a NUL)."""
        raw = self.read(address, 16)
        length, buffer = _u16(raw, 0), _u64(raw, 8)
        if length == 0:
            return ""
        return self.read(buffer, length).decode("utf-16-le")

    def _read_c_string(self, address: int, limit: int = 4096) -> str:
        data = bytearray()
        while len(data) < limit:
            chunk = self.read(address + len(data), 64)
            end = chunk.find(b"\0")
            if end >= 0:
                data += chunk[:end]
                break
            data += chunk
        return data.decode("latin-1")

    def _read_wide_c_string(self, address: int, limit: int = 512) -> str:
        units = bytearray()
        while len(units) < limit * 2:
            unit = self.read(address + len(units), 2)
            if unit == b"\0\0":
                break
            units += unit
        return units.decode("utf-16-le")

    def in_image(self, address: int) -> bool:
        return self.image_base <= address < self.image_end

    # ------------------------------------------------------ running the driver

    def assert_no_fault(self, run, what: str) -> None:
        """Fails the test if the last run of driver code went wrong in any way."""
        problems = []
        if run.error:
            error = dict(run.error)
            error.pop("regs", None)
            error.pop("stack", None)
            problems.append(f"emulation error: {error}")
        if self.hook_failures:
            problems.append("harness hook raised:\n" + "\n".join(self.hook_failures))
        if self.bugchecks:
            problems.append(f"KeBugCheckEx called: {[tuple(map(hex, b)) for b in self.bugchecks]}")
        if problems:
            raise KernelFault(f"{what}: " + "\n".join(problems))

    def call(self, address: int, args: list[int], what: str) -> int:
        """Calls any driver code directly; see ``_run``."""
        return self._run(address, args, what)

    def unicode_string(self, text: str) -> int:
        """A UNICODE_STRING (and its buffer) in emulated memory."""
        data = text.encode("utf-16-le")
        buffer = self.se.mem_alloc(len(data) + 2, tag="harness.UNICODE_STRING.Buffer")
        self.write(buffer, data + b"\0\0")
        string = self.se.mem_alloc(16, tag="harness.UNICODE_STRING")
        self.write(string, struct.pack("<HHIQ", len(data), len(data) + 2, 0, buffer))
        return string

    def _run(self, address: int, args: list[int], what: str) -> int:
        """Calls driver code (x64, at most 4 arguments: Speakeasy 1.5.11 puts
        the 5th and later in the wrong stack slots) and returns RAX."""
        assert len(args) <= 4, "se.call misplaces stack arguments (speakeasy issue 298)"
        runs_before = len(self.emu.runs)
        self.se.call(address, args)
        assert len(self.emu.runs) == runs_before + 1, f"{what}: no run was recorded"
        run = self.emu.runs[-1]
        self.assert_no_fault(run, what)
        return (run.ret_val or 0) & 0xFFFFFFFFFFFFFFFF

    @property
    def driver_object(self) -> int:
        return self.emu.drivers[-1].address

    def driver_entry(self) -> int:
        """Runs the image entry point (FxDriverEntry) like the I/O manager; returns its NTSTATUS."""
        assert self.driver_entry_status is None, "DriverEntry runs once per harness"
        self.se.run_module(self.module)
        entries = [run for run in self.emu.runs if run.type == EP_DRIVER_ENTRY]
        assert len(entries) == 1, "Speakeasy did not run the entry point"
        self.assert_no_fault(entries[0], "DriverEntry")
        self.driver_entry_status = (entries[0].ret_val or 0) & 0xFFFFFFFF
        return self.driver_entry_status

    def load(self) -> None:
        """DriverEntry, which must succeed."""
        status = self.driver_entry()
        if status != STATUS_SUCCESS:
            raise KernelFault(f"DriverEntry failed with {status:#010x}; trace: {self.trace_text()}")

    def driver_unload_routine(self) -> int:
        return self._read_u64(self.driver_object + DRIVER_OBJECT_DRIVER_UNLOAD)

    def unload(self) -> None:
        """Calls DRIVER_OBJECT.DriverUnload as the I/O manager would
        (Speakeasy's run_module never does)."""
        routine = self.driver_unload_routine()
        assert routine, "the driver has no DriverUnload routine"
        self._run(routine, [self.driver_object], "DriverUnload")

    # ----------------------------------------------------------- fake objects

    def new_process(self, pid: int) -> int:
        """A fake EPROCESS whose PsGetProcessId is ``pid``."""
        address = self.se.mem_alloc(0x100, tag=f"harness.EPROCESS.{pid}")
        self._processes[address] = pid
        return address

    def new_thread(self, owner_pid: int) -> int:
        """A fake ETHREAD of process ``owner_pid``."""
        address = self.se.mem_alloc(0x100, tag=f"harness.ETHREAD.{owner_pid}")
        self._threads[address] = owner_pid
        return address

    # ------------------------------------------------------- the pre-op callback

    @property
    def registration(self) -> RegistrationAttempt:
        """The registration the driver holds (exactly one)."""
        assert len(self.live_registrations) == 1, f"live registrations: {self.live_registrations}"
        return next(iter(self.live_registrations.values()))

    def pre_operation(
        self,
        *,
        operation: int,
        object_kind: str,
        target: int,
        desired_access: int,
        original_desired_access: Optional[int] = None,
        kernel_handle: bool = False,
        source_process: int = 0,
        target_process: int = 0,
        current_pid: Optional[int] = None,
        flags: Optional[int] = None,
        object_type: Optional[int] = None,
    ) -> PreOperationResult:
        """Calls the registered pre-operation callback the way the object
        manager does, with a freshly built OB_PRE_OPERATION_INFORMATION.

        ``object_kind`` picks the registration entry whose callback is called;
        ObjectType is that kind's OBJECT_TYPE unless ``object_type`` overrides it.
        """
        registration = self.registration
        if object_type is None:
            object_type = {"process": self.process_object_type, "thread": self.thread_object_type}[object_kind]
        entry_variable = {"process": self.ps_process_type_variable, "thread": self.ps_thread_type_variable}[object_kind]
        entry = next(e for e in registration.entries if e.object_type == entry_variable)
        if current_pid is not None:
            self.current_pid = current_pid
        if original_desired_access is None:
            original_desired_access = desired_access
        if flags is None:
            flags = 1 if kernel_handle else 0

        info = self._scratch
        parameters = self._scratch + 0x100
        self.write(
            parameters,
            struct.pack("<IIQQ", desired_access, original_desired_access, source_process, target_process)
            if operation == OB_OPERATION_HANDLE_DUPLICATE
            else struct.pack("<II", desired_access, original_desired_access) + b"\xCC" * 16,
        )
        # CallContext gets a marker value: the driver must not touch it.
        self.write(
            info,
            struct.pack("<IIQQQQ", operation, flags, target, object_type, 0x5A5A5A5A5A5A5A5A, parameters),
        )
        status = self._run(entry.pre_operation, [registration.context, info], "pre-operation callback")
        after_info = self.read(info, OB_PRE_OPERATION_INFORMATION_SIZE)
        after_parameters = self.read(parameters, OB_PRE_OPERATION_PARAMETERS_SIZE)
        return PreOperationResult(
            status=status & 0xFFFFFFFF,
            desired_access=_u32(after_parameters, 0),
            original_desired_access=_u32(after_parameters, 4),
            information=after_info,
            parameters=after_parameters,
        )

    # ------------------------------------------------------------- reporting

    def trace_text(self) -> str:
        return "".join(message.text for message in self.debug_messages)

    def messages_containing(self, text: str) -> list[str]:
        return [message.text for message in self.debug_messages if text in message.text]

    # ===================================================== kernel API hooks
    # Each takes (argv, original) and returns the value for RAX (None: leave it).

    def _new_handle(self) -> int:
        self._next_handle += 4
        return self._next_handle

    def _ob_register_callbacks(self, argv, _original):
        # Speakeasy's version returns success without writing a handle.
        registration, handle_out = argv[:2]
        raw = self.read(registration, 40)
        version, count = _u16(raw, 0), _u16(raw, 2)
        altitude = self._read_unicode_string(registration + 8)
        entries_address = _u64(raw, 32)
        entries = []
        for index in range(min(count, 16)):
            entry = self.read(entries_address + index * OB_OPERATION_REGISTRATION_SIZE, OB_OPERATION_REGISTRATION_SIZE)
            entries.append(OperationEntry(_u64(entry, 0), _u32(entry, 8), _u64(entry, 16), _u64(entry, 24)))
        held = {attempt.altitude for attempt in self.live_registrations.values()} | self.occupied_altitudes
        if self.register_results:
            status = self.register_results.popleft()
        elif altitude in held:
            status = STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
        else:
            status = STATUS_SUCCESS
        handle = None
        if status == STATUS_SUCCESS:
            self._next_registration += 0x10
            handle = self._next_registration
            self._write_u64(handle_out, handle)
        attempt = RegistrationAttempt(
            version=version,
            count=count,
            altitude=altitude,
            altitude_length=_u16(raw, 8),
            altitude_maximum_length=_u16(raw, 10),
            context=_u64(raw, 24),
            entries=entries,
            status=status,
            handle=handle,
        )
        self.registrations.append(attempt)
        if handle is not None:
            self.live_registrations[handle] = attempt
        return status

    def _ob_unregister_callbacks(self, argv, _original):
        handle = argv[0]
        self.unregistrations.append(handle)
        self.events.append(("ObUnRegisterCallbacks", handle))
        if handle not in self.live_registrations:
            # A real kernel bugchecks on an unknown registration handle.
            raise KernelFault(f"ObUnRegisterCallbacks({handle:#x}): not a live registration")
        del self.live_registrations[handle]
        return None

    def _ps_get_current_process_id(self, _argv, _original):
        self.current_pid_calls += 1
        if self.current_pid_script:
            return self.current_pid_script.popleft()
        return self.current_pid

    def _ps_get_process_id(self, argv, _original):
        process = argv[0]
        if process not in self._processes:
            raise KernelFault(f"PsGetProcessId({process:#x}): not an EPROCESS")
        return self._processes[process]

    def _ps_get_thread_process_id(self, argv, _original):
        thread = argv[0]
        if thread not in self._threads:
            raise KernelFault(f"PsGetThreadProcessId({thread:#x}): not an ETHREAD")
        return self._threads[thread]

    def _ex_allocate_pool2(self, argv, _original):
        flags, size, tag = argv[0], argv[1], argv[2] & 0xFFFFFFFF
        number = self.allocation_count
        self.allocation_count += 1
        if number in self.fail_allocations or size == 0:
            return 0
        address = self.se.mem_alloc(size, tag=f"harness.pool.{tag:08x}")
        # ExAllocatePool2 zeroes the block (unless POOL_FLAG_UNINITIALIZED).
        self.write(address, b"\0" * size)
        self.pool[address] = PoolBlock(address, size, tag, flags)
        return address

    def _ex_free_pool_with_tag(self, argv, _original):
        address, tag = argv[0], argv[1] & 0xFFFFFFFF
        self.frees.append((address, tag))
        self.events.append(("ExFreePoolWithTag", address))
        block = self.pool.pop(address, None)
        if block is None:
            raise KernelFault(f"ExFreePoolWithTag({address:#x}): not a live pool block (double free?)")
        if block.tag != tag:
            raise KernelFault(f"ExFreePoolWithTag({address:#x}) with tag {tag:#x}, allocated with {block.tag:#x}")
        return None

    def _service_path(self) -> str:
        return self.emu.drivers[-1].get_reg_path()

    def _zw_open_key(self, argv, _original):
        # Speakeasy's registry cannot hold the values the tests need (its
        # ZwQueryValueKey crashes on REG_DWORD), so the whole service key is
        # faked here: the service key always exists, Parameters when the test
        # gives it.
        handle_out, _access, attributes = argv[:3]
        raw = self.read(attributes, 48)
        root = _u64(raw, 8)
        name = self._read_unicode_string(_u64(raw, 16))
        self.key_opens.append((name, root))
        if root:
            if root not in self.open_keys:
                return STATUS_INVALID_HANDLE
            path = self.open_keys[root] + "\\" + name
        else:
            path = name
        service = self._service_path().lower()
        if path.lower() == service + "\\parameters" and self.parameters_open_status is not None:
            return self.parameters_open_status
        exists = path.lower() == service or (
            path.lower() == service + "\\parameters" and self.parameters is not None
        )
        if not exists:
            return STATUS_OBJECT_NAME_NOT_FOUND
        handle = self._new_handle()
        self.open_keys[handle] = path
        self._write_u64(handle_out, handle)
        return STATUS_SUCCESS

    def _zw_query_value_key(self, argv, _original):
        handle, name_address, info_class, buffer, length, result_length = argv[:6]
        length &= 0xFFFFFFFF
        name = self._read_unicode_string(name_address)
        self.value_queries.append((name, info_class, length))
        if handle not in self.open_keys:
            return STATUS_INVALID_HANDLE
        if info_class != KEY_VALUE_PARTIAL_INFORMATION:
            return STATUS_INVALID_PARAMETER
        if not self.open_keys[handle].lower().endswith("\\parameters"):
            return STATUS_OBJECT_NAME_NOT_FOUND
        values = {key.lower(): value for key, value in (self.parameters or {}).items()}
        if name.lower() not in values:
            return STATUS_OBJECT_NAME_NOT_FOUND
        value_type, data = values[name.lower()]
        needed = PARTIAL_INFO_HEADER + len(data)
        self._write_u32(result_length, needed)
        header = struct.pack("<III", 0, value_type, len(data))
        # As Windows does: too small for the header -> BUFFER_TOO_SMALL and
        # nothing written; header fits but not the data -> BUFFER_OVERFLOW
        # with the header (whose DataLength is the full length).
        if length < PARTIAL_INFO_HEADER:
            return STATUS_BUFFER_TOO_SMALL
        if length < needed:
            self.write(buffer, header)
            return STATUS_BUFFER_OVERFLOW
        self.write(buffer, header + data)
        return STATUS_SUCCESS

    def _zw_close(self, argv, _original):
        handle = argv[0]
        if handle not in self.open_keys:
            raise KernelFault(f"ZwClose({handle:#x}): not an open handle")
        del self.open_keys[handle]
        return STATUS_SUCCESS

    def _dbg_print_ex(self, argv, _original):
        # Varargs: Speakeasy hands over the four register arguments, which is
        # all a "%s" + one string call uses.
        component, level, format_address, argument = argv[:4]
        fmt = self._read_c_string(format_address)
        text = self._read_c_string(argument) if fmt == "%s" else fmt
        self.debug_messages.append(DebugMessage(component, level & 0xFFFFFFFF, fmt, text))
        return STATUS_SUCCESS

    def _ke_bug_check_ex(self, argv, _original):
        self.bugchecks.append(tuple(argv[:5]))
        # A bugcheck never returns: stop here, the run is reported as faulted.
        self.emu.curr_run.error = {"type": "bugcheck", "code": hex(argv[0])}
        self.emu.stop()
        return None

    # ---------------------------------------------------------------- WDF

    def _wdf_version_bind(self, argv, original):
        driver_object, registry_path, bind_info, globals_out = argv[:4]
        raw = self.read(bind_info, 48)
        self.wdf_binds.append(
            WdfBind(
                size=_u32(raw, 0),
                component=self._read_wide_c_string(_u64(raw, 8)),
                version=struct.unpack_from("<III", raw, 16),
                func_count=_u32(raw, 28),
                func_table_slot=_u64(raw, 32),
                module=_u64(raw, 40),
            )
        )
        status = original(argv)
        if status != STATUS_SUCCESS:
            return status
        # Speakeasy's table has 422 slots, most of them NULL; KMDF 1.33 has
        # 458. Build a full table: Speakeasy's entry where it has one, else a
        # trap that reports the function by name when called.
        table_slot = _u64(raw, 32)
        speakeasy_table = self._read_u64(table_slot)
        names = speakeasy_wdf_function_names()
        count = WDF_FUNCTION_COUNT_1_33
        existing = self.read(speakeasy_table, 8 * len(names))
        slots = []
        for index in range(count):
            pointer = _u64(existing, index * 8) if index < len(names) else 0
            if not pointer:
                name = names[index] if index < len(names) and names[index] else f"WdfFunctionIndex{index}"
                pointer = self.emu.add_callback("wdfldr", name)
            slots.append(pointer)
        table = self.se.mem_alloc(8 * count, tag="harness.WdfFunctions_01033")
        self.write(table, struct.pack(f"<{count}Q", *slots))
        self._write_u64(table_slot, table)
        self.wdf_function_table = table
        # Speakeasy's globals block is 0x100 zero bytes: big enough for
        # WDF_DRIVER_GLOBALS (56), whose DisplaceDriverUnload WdfDriverCreate sets.
        self.wdf_driver_globals = self._read_u64(globals_out)
        return STATUS_SUCCESS

    def _wdf_version_unbind(self, argv, _original):
        self.wdf_unbinds.append(tuple(argv[:3]))
        self.events.append(("WdfVersionUnbind", argv[2]))
        return STATUS_SUCCESS

    def _wdf_driver_create(self, argv, original):
        globals_address, driver_object, registry_path, attributes, config, driver_out = argv[:6]
        raw = self.read(config, 32) if config else b"\0" * 32
        record = {
            "globals": globals_address,
            "driver_object": driver_object,
            "registry_path": self._read_unicode_string(registry_path),
            "attributes": attributes,
            "config_size": _u32(raw, 0),
            "evt_driver_device_add": _u64(raw, 8),
            "evt_driver_unload": _u64(raw, 16),
            "driver_init_flags": _u32(raw, 24),
            "driver_pool_tag": _u32(raw, 28),
            "driver_out": driver_out,
        }
        self.wdf_driver_creates.append(record)
        original(argv)  # Speakeasy's bookkeeping (it records the driver)
        # What Speakeasy omits and KMDF does: hand out the WDFDRIVER, and for a
        # driver with EvtDriverUnload take over DriverUnload (the entry stub
        # then displaces it, see fx_entry.rs).
        if driver_out:
            self._write_u64(driver_out, WDFDRIVER_HANDLE)
        if record["evt_driver_unload"]:
            self.evt_driver_unload = record["evt_driver_unload"]
            self.write(globals_address + WDF_DRIVER_GLOBALS_DISPLACE_DRIVER_UNLOAD, b"\x01")
            framework_unload = self.emu.add_callback("wdfldr", "FxFrameworkDriverUnload")
            self._write_u64(driver_object + DRIVER_OBJECT_DRIVER_UNLOAD, framework_unload)
        return STATUS_SUCCESS

    def _fx_framework_driver_unload(self, argv, _original):
        """The framework's DriverUnload: calls EvtDriverUnload(WDFDRIVER).

        A hook cannot call back into emulated code, so this is a tail call:
        push EvtDriverUnload as a fake return address (Speakeasy "returns"
        into it) with the WDFDRIVER in RCX; it then returns straight to our
        caller, whose return address sits just above.
        """
        self.events.append(("EvtDriverUnload", WDFDRIVER_HANDLE))
        emu = self.emu
        rsp = emu.reg_read(se_arch.AMD64_REG_RSP) - 8
        self._write_u64(rsp, self.evt_driver_unload)
        emu.reg_write(se_arch.AMD64_REG_RSP, rsp)
        emu.reg_write(se_arch.AMD64_REG_RCX, WDFDRIVER_HANDLE)
        return None


_WDF_NAMES: Optional[list[Optional[str]]] = None


def speakeasy_wdf_function_names() -> list[Optional[str]]:
    """Slot index -> function name in Speakeasy's WDFFUNCTIONS (None for its
    unnamed `unknownN` filler slots), read from the ctypes layout it builds."""
    global _WDF_NAMES
    if _WDF_NAMES is None:
        table = se_wdf.WDFFUNCTIONS(8)
        ctype = type(table.__struct__)
        names: list[Optional[str]] = [None] * (ctypes.sizeof(ctype) // 8)
        for field_name, _field_type in ctype._fields_:
            descriptor = getattr(ctype, field_name)
            first = descriptor.offset // 8
            if field_name.startswith("pfn"):
                assert descriptor.size == 8, field_name
                names[first] = field_name[3:]
        _WDF_NAMES = names
    return _WDF_NAMES
