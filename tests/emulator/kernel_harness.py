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
import subprocess
import time
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import speakeasy
import speakeasy.winenv.arch as se_arch
import speakeasy.winenv.defs.wdf as se_wdf
from speakeasy.windows.kernel import EP_DRIVER_ENTRY

from irql_verifier import IrqlVerifier
from kernel_threads import KernelThreads, ThreadStep

# --- NTSTATUS values (32-bit, as the driver sees them) ---------------------
STATUS_SUCCESS = 0x00000000
STATUS_PENDING = 0x00000103
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_INVALID_INFO_CLASS = 0xC0000003
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
STATUS_INVALID_CID = 0xC000000B
STATUS_PROCEDURE_NOT_FOUND = 0xC000007A
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
KEY_SET_VALUE = 0x0002
KEY_CREATE_SUB_KEY = 0x0004
KEY_WRITE = 0x20006  # STANDARD_RIGHTS_WRITE | KEY_SET_VALUE | KEY_CREATE_SUB_KEY
REG_CREATED_NEW_KEY = 1
REG_OPENED_EXISTING_KEY = 2
PARTIAL_INFO_HEADER = 12  # FIELD_OFFSET(KEY_VALUE_PARTIAL_INFORMATION, Data)

# --- Control device IOCTLs (crates/procguard-protocol/src/ioctl.rs) ---------
IOCTL_GET_STATUS = 0x00226000
IOCTL_SET_POLICY = 0x0022A004
IOCTL_GET_POLICY = 0x00226008
IOCTL_READ_EVENTS = 0x0022A00C
IOCTL_RESET_COUNTERS = 0x0022A010
IOCTL_GET_RULE_COUNTERS = 0x00226014
SET_POLICY_PERSIST = 1
STATUS_SIZE = 320
EVENTS_HEADER_SIZE = 16
POLICY_HEADER_SIZE = 8
AUDIT_RECORD_BYTES = 64

# --- Pool -----------------------------------------------------------------
POOL_FLAG_NON_PAGED = 0x40
POOL_TAG_PGRD = int.from_bytes(b"PGrd", "little")

# --- Layouts (x64, checked against the mingw DDK by the driver's own tests) -
DRIVER_OBJECT_DRIVER_UNLOAD = 0x68
WDF_DRIVER_GLOBALS_DISPLACE_DRIVER_UNLOAD = 48
WDF_DRIVER_GLOBALS_SIZE = 56
WDF_FUNCTION_COUNT_1_33 = 458
# The supported-Windows table (driver/windows-support.toml): the floor, the
# KMDF version each release ships, each version's function count, and the
# version the driver must bind. The emulated WDFLDR refuses any other bind.
SUPPORT_TABLE_PATH = Path(__file__).resolve().parents[2] / "driver" / "windows-support.toml"
SUPPORT_TABLE = tomllib.loads(SUPPORT_TABLE_PATH.read_text(encoding="utf-8"))


def _kmdf_key(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def _windows_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def floor_kmdf_version(table: dict = SUPPORT_TABLE) -> tuple[int, int]:
    """The KMDF version the floor ships: that of the newest listed release
    not newer than the floor."""
    floor = _windows_key(table["floor"]["windows"])
    shipped = [row for row in table["kmdf"] if _windows_key(row["windows"]) <= floor]
    newest = max(shipped, key=lambda row: _windows_key(row["windows"]))
    return _kmdf_key(newest["version"])


KMDF_FUNCTION_COUNTS = {_kmdf_key(version): count for version, count in SUPPORT_TABLE["kmdf_function_count"].items()}
KMDF_BIND_VERSION = _kmdf_key(SUPPORT_TABLE["bind"]["kmdf"])
KMDF_BIND_FUNCTION_COUNT = KMDF_FUNCTION_COUNTS[KMDF_BIND_VERSION]
WDF_BIND_INFO_SIZE = 48
# Names of the slots past Speakeasy's 422-slot table, up to 1.33's 458
# (WDFFUNCENUM in Windows-Driver-Frameworks publicinc/wdf/kmdf/1.33/wdffuncenum.h):
# 454 and later exist only from KMDF 1.31 on.
# Slots Speakeasy's table leaves unnamed (``unknownN`` fillers) that the
# driver calls (same WDFFUNCENUM source).
WDF_FUNCTION_NAMES_UNNAMED_BY_SPEAKEASY = {
    379: "WdfWorkItemCreate",
    380: "WdfWorkItemEnqueue",
    381: "WdfWorkItemGetParentObject",
    382: "WdfWorkItemFlush",
}
WDF_FUNCTION_NAMES_PAST_SPEAKEASY = {
    453: "WdfPdoInitRemovePowerDependencyOnParent",
    454: "WdfCxDeviceInitAllocateContext",
    455: "WdfCxDeviceInitGetTypedContextWorker",
    456: "WdfCxDeviceInitSetPowerPolicyEventCallbacks",
    457: "WdfDeviceSetDeviceInterfaceStateEx",
}
# POOL_TYPE NonPagedPoolNx (wdm.h): the fallback allocation's pool type.
NON_PAGED_POOL_NX = 512
# WDF_IO_QUEUE_CONFIG (x64, KMDF 1.33; TOOLCHAIN.md). Speakeasy's definition
# puts the EvtIo* callbacks 16 bytes off: never read the config with it.
WDF_IO_QUEUE_CONFIG_SIZE = 96
WDF_IO_QUEUE_CONFIG_OFFSETS = {
    "Size": 0, "DispatchType": 4, "PowerManaged": 8, "AllowZeroLengthRequests": 12,
    "DefaultQueue": 13, "EvtIoDefault": 16, "EvtIoRead": 24, "EvtIoWrite": 32,
    "EvtIoDeviceControl": 40, "EvtIoInternalDeviceControl": 48, "EvtIoStop": 56,
    "EvtIoResume": 64, "EvtIoCanceledOnQueue": 72, "Settings": 80, "Driver": 88,
}
WDF_OBJECT_ATTRIBUTES_SIZE = 56
WdfIoQueueDispatchSequential = 1
WdfExecutionLevelPassive = 2
WdfFalse = 0
OB_PRE_OPERATION_INFORMATION_SIZE = 40
OB_PRE_OPERATION_PARAMETERS_SIZE = 24  # the duplicate member, the larger one
OB_OPERATION_REGISTRATION_SIZE = 32
PS_CREATE_NOTIFY_INFO_SIZE = 72
RUN_TIMEOUT_SECONDS = 120
KERNEL_STACK_SIZE = 0x6000  # x64 kernel thread stack (ntddk.h KERNEL_STACK_SIZE)
STACK_REGION_SIZE = 0x40000  # what the harness maps, to see overflows
# SYSTEM_PROCESS_INFORMATION (x64): fixed part 0x100 bytes, then one
# SYSTEM_THREAD_INFORMATION (0x50) per thread, then (here) the image name.
SYSTEM_PROCESS_INFORMATION_SIZE = 0x100
SYSTEM_THREAD_INFORMATION_SIZE = 0x50
SYSTEM_PROCESS_INFORMATION_CLASS = 5
PASSIVE_LEVEL = 0
APC_LEVEL = 1
DISPATCH_LEVEL = 2

SERVICE_NAME = "procguard"

# Fake kernel handles and object addresses live in ranges no real mapping
# uses, so a value read back from the driver identifies what it came from.
KERNEL_HANDLE_BASE = 0xFFFFFFFF80000000
REGISTRATION_HANDLE_BASE = 0xFFFFC0B000000000
WDFDRIVER_HANDLE = 0x00000000DD0D0001
WDFWORKITEM_HANDLE_BASE = 0x00000000DD0F0000
# REG_NOTIFY_CLASS (wdm.h) values the harness delivers.
REG_NT_PRE_SET_VALUE_KEY = 1
REG_NT_PRE_DELETE_VALUE_KEY = 2
REG_NT_POST_SET_VALUE_KEY = 16
REG_NT_POST_DELETE_VALUE_KEY = 17
# x64 sizes (wdm.h): REG_SET_VALUE_KEY_INFORMATION, REG_DELETE_VALUE_KEY_INFORMATION,
# REG_POST_OPERATION_INFORMATION.
REG_SET_VALUE_KEY_INFORMATION_SIZE = 64
REG_DELETE_VALUE_KEY_INFORMATION_SIZE = 40
REG_POST_OPERATION_INFORMATION_SIZE = 56
# WDF_WORKITEM_CONFIG (wdfworkitem.h, x64): Size, EvtWorkItemFunc at 8,
# AutomaticSerialization at 16.
WDF_WORKITEM_CONFIG_SIZE = 24
WDFQUEUE_HANDLE = 0x00000000DD0E0001  # the driver asks for no queue handle; the framework still has one
WDFREQUEST_HANDLE_BASE = 0x00000000DD0F0000
WDFFILEOBJECT_HANDLE_BASE = 0x00000000DD110000
MANUAL_QUEUE_HANDLE_BASE = 0x00000000DD0E1000
WdfIoQueueDispatchManual = 3
STATUS_CANCELLED = 0xC0000120
STATUS_NO_MORE_ENTRIES = 0x8000001A
STATUS_NOT_FOUND = 0xC0000225
# WDF_FILEOBJECT_CONFIG (x64): Size, EvtDeviceFileCreate, EvtFileClose,
# EvtFileCleanup, AutoForwardCleanupClose, FileObjectClass: 40 bytes.
WDF_FILEOBJECT_CONFIG_SIZE = 40
# Creation times (100 ns since 1601) handed to fake processes, increasing.
FIRST_CREATE_TIME = 133_500_000_000_000_000
# KeQuerySystemTimePrecise starts here and advances 1 µs per call.
FIRST_SYSTEM_TIME = 133_600_000_000_000_000
DEFAULT_CURRENT_TID = 0x1F04


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


def image_path(name: str, directory: str = "\\Device\\HarddiskVolume3\\Program Files\\Test") -> str:
    """An NT image path as SeLocateProcessImageName returns it."""
    return f"{directory}\\{name}"


def cargo_build_binary(package: str, repo_root: Path) -> tuple[Optional[str], subprocess.CompletedProcess]:
    """`cargo build --package PACKAGE` (host, debug): the path of the binary
    of that name it built (None if none), and the build's result."""
    build = subprocess.run(
        ["cargo", "build", "--quiet", "--package", package, "--message-format=json"],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    executable = None
    for line in build.stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("reason") == "compiler-artifact" and message.get("executable") and (
            message.get("target", {}).get("name") == package
        ):
            executable = message["executable"]
    return executable, build


class PolicyCompileError(AssertionError):
    """`cargo xtask compile-policy` rejected a test policy."""


class PolicyCompiler:
    """`cargo xtask compile-policy` with a cache keyed by the TOML text, so
    each distinct policy is compiled once per session. The xtask binary is
    built once and then run directly (saves cargo's start-up per policy)."""

    def __init__(self, directory: Path, repo_root: Path):
        self.directory = Path(directory)
        self.repo_root = Path(repo_root)
        self.cache: dict[str, bytes] = {}
        self.command: list[str] | None = None

    def _xtask(self) -> list[str]:
        if self.command is None:
            executable, build = cargo_build_binary("xtask", self.repo_root)
            self.command = [executable] if build.returncode == 0 and executable else [
                "cargo", "xtask"
            ]
        return self.command

    def __call__(self, toml_text: str) -> bytes:
        if toml_text not in self.cache:
            number = len(self.cache)
            source = self.directory / f"policy{number}.toml"
            output = self.directory / f"policy{number}.bin"
            source.write_text(toml_text)
            result = subprocess.run(
                [*self._xtask(), "compile-policy", str(source), str(output)],
                cwd=self.repo_root,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise PolicyCompileError(f"compile-policy failed:\n{result.stderr}\n--- policy ---\n{toml_text}")
            self.cache[toml_text] = output.read_bytes()
        return self.cache[toml_text]


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
    # ExAllocatePoolWithTag(NonPagedPoolNx) blocks: non-paged without the
    # ExAllocatePool2 flag.
    non_paged: bool = False


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


@dataclass
class FakeRequest:
    """A WDFREQUEST the framework presents to EvtIoDeviceControl: an
    IRP_MJ_DEVICE_CONTROL with a METHOD_BUFFERED system buffer of
    max(input, output) bytes (input copied in first, output read back from
    the same buffer)."""

    handle: int
    code: int
    system_buffer: int  # 0 when both lengths are 0, as the I/O manager does
    input_length: int
    output_length: int
    # (status, information) of every WdfRequestCompleteWithInformation.
    completions: list = None
    # (which, MinimumRequiredSize, status) of every WdfRequestRetrieve*Buffer.
    retrievals: list = None
    # The file handle it was sent on (FileHandle).
    file: object = None
    # The manual queue holding it (forwarded, not yet retrieved), or None.
    queue: Optional[int] = None
    # What the caller gets back once completed (see IoctlResult.output).
    output: bytes = b""
    cancelled: bool = False
    forwarded: bool = False  # ever forwarded to a manual queue
    taken_from: Optional[int] = None  # the manual queue the driver retrieved it from

    @property
    def pending(self) -> bool:
        return not self.completions

    @property
    def status(self) -> Optional[int]:
        return self.completions[0][0] if self.completions else None


@dataclass
class IoctlResult:
    """What DeviceIoControl would return to the caller."""

    status: int
    information: int
    # The bytes the I/O manager copies back: `information` bytes of the
    # system buffer unless the status is an error (NT_ERROR: nothing).
    output: bytes
    request: FakeRequest


@dataclass
class FileHandle:
    """An open handle to the control device: one FILE_OBJECT (and its
    WDFFILEOBJECT), opened by process ``pid``."""

    number: int
    file_object: int  # the WDFFILEOBJECT handle the driver sees
    pid: int
    tid: int
    closed: bool = False


@dataclass
class ManualQueue:
    handle: int
    config: dict
    requests: "collections.deque[int]"


@dataclass
class RegistryWrite:
    key: str
    name: str
    value_type: int
    data: bytes


@dataclass
class FakeProcess:
    """A process of the emulated machine: a fake EPROCESS block (real
    emulated memory, so the driver can hold its address) and what the kernel
    answers about it."""

    pid: int
    address: int
    create_time: int
    image_path: str  # NT path; "" for processes without one (System)
    # Status SeLocateProcessImageName returns for it (success by default).
    image_name_status: int = STATUS_SUCCESS
    running: bool = True  # in the process list, found by PsLookupProcessByProcessId
    references: int = 0  # references the driver holds (PsLookup... minus ObfDereference...)
    # PsGetProcessExitStatus: STATUS_PENDING until the process exits.
    exit_status: int = STATUS_PENDING


@dataclass
class FakeThread:
    address: int
    tid: int
    process: FakeProcess


@dataclass
class AuditRecord:
    """One audit record, decoded from the eight words documented in
    crates/procguard-protocol/src/audit_record.rs."""

    sequence: int
    timestamp: int
    process_id: int
    thread_id: int
    originator_process_id: int
    originator_thread_id: int
    source_process_id: int
    target_process_id: int
    original_desired_access: int
    desired_access: int
    result_code: int
    rule_id: int
    object: str  # "process" | "thread" | "policy"
    duplication: bool
    mode: str  # "enforce" | "audit" | "ask" | "policy-applied" | "policy-rejected"
    reserved: int
    ask_outcome: Optional[str] = None  # ASK_OUTCOMES names; None: not asked
    ask_wait_us: int = 0

    @classmethod
    def from_words(cls, words: list[int]) -> "AuditRecord":
        def low(word: int) -> int:
            return word & 0xFFFFFFFF

        def high(word: int) -> int:
            return word >> 32

        flags = words[7]
        object_code, mode_code = flags & 0xFF, (flags >> 16) & 0xFF
        return cls(
            sequence=words[0],
            timestamp=words[1],
            process_id=low(words[2]),
            thread_id=high(words[2]),
            originator_process_id=low(words[3]),
            originator_thread_id=high(words[3]),
            source_process_id=low(words[4]),
            target_process_id=high(words[4]),
            original_desired_access=low(words[5]),
            desired_access=high(words[5]),
            result_code=low(words[6]),
            rule_id=high(words[6]),
            object={1: "process", 2: "thread", 3: "policy"}.get(object_code, f"invalid({object_code})"),
            duplication=bool(flags & 0x100),
            mode={1: "enforce", 2: "audit", 3: "ask", 4: "policy-applied", 5: "policy-rejected"}.get(
                mode_code, f"invalid({mode_code})"
            ),
            # Bits 9-15 and 24-31 must be zero (32-63: the ask outcome and wait).
            reserved=flags & 0xFF00FE00,
            ask_outcome=ASK_OUTCOMES.get((flags >> 32) & 0xFF, f"invalid({(flags >> 32) & 0xFF})"),
            ask_wait_us=flags >> 40,
        )


    @property
    def policy_source(self) -> Optional[str]:
        """A policy record's source (PolicySource: the source_process_id field)."""
        if self.object != "policy":
            return None
        return POLICY_SOURCES.get(self.source_process_id, f"invalid({self.source_process_id})")

    @property
    def policy_id(self) -> int:
        """A policy record's policy id (the rule_id field)."""
        return self.rule_id

    @property
    def rules(self) -> int:
        """A policy record's rule count (the desired_access field)."""
        return self.desired_access


# PolicySource codes (crates/procguard-protocol/src/audit_record.rs).
POLICY_SOURCES = {1: "boot", 2: "control", 3: "registry"}

# AskOutcome codes (crates/procguard-protocol/src/ask.rs); 0: not asked.
ASK_OUTCOMES = {0: None, 1: "answered", 2: "timed-out", 3: "no-handler", 4: "pool-full", 5: "unaskable", 6: "cancelled"}


NO_RULE = 0xFFFFFFFF
AUDIT_RECORD_WORDS = 8
# A ring cell (driver/src/state/audit_ring.rs `Cell`): an AtomicU64 sequence and
# the eight record words, 72 bytes: the size of the ring's pool block is
# capacity x 72 (test_unload finds that allocation by it). The records
# themselves are read with IOCTL_READ_EVENTS (`KernelHarness.drain_audit_records`).
AUDIT_CELL_BYTES = 8 + 8 * AUDIT_RECORD_WORDS


def audit_ring_capacity(audit_records: int) -> int:
    """Cells the driver allocates for an `AuditRecords` setting: clamped to
    2..=2^20, rounded up to a power of two (AuditRing::with_capacity)."""
    records = min(max(audit_records, 2), 1 << 20)
    return 1 << (records - 1).bit_length()


@dataclass
class Measurement:
    result: object
    instructions: int
    api_calls: list[str]
    allocations: int
    mutex_acquisitions: int
    address_counts: "collections.Counter[int]"
    switched_instructions: int = 0


class KernelHarness(IrqlVerifier, KernelThreads):
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
        # The process the current thread is attached to (KeStackAttachProcess),
        # when not its own: IoGetCurrentProcess answers it, the thread stays
        # current_pid's.
        self.attached_pid: Optional[int] = None
        # Set while a pre-operation callback runs: no image path may be read
        # there (SeLocateProcessImageName may do file-system I/O).
        self.in_pre_operation = False
        self.fail_allocations: set[int] = set()  # 0-based pool allocation numbers (either routine)
        # MmGetSystemRoutineAddress finds ExAllocatePool2 (Windows 10 2004+)
        # unless this is False (Windows 10 1903/1909): the driver must then
        # allocate with ExAllocatePoolWithTag(NonPagedPoolNx) and zero the block.
        self.ex_allocate_pool2_exported = True
        # (name, IRQL) per MmGetSystemRoutineAddress call.
        self.routine_lookups: list[tuple[str, int]] = []
        # Fallback blocks: address -> set of offsets the driver wrote a zero to.
        self.fallback_blocks: dict[int, int] = {}
        self.fallback_zeroed: dict[int, set[int]] = {}
        self._zero_write_hooked: set[int] = set()  # arena chunks with a write hook
        # ZwOpenKey of the Parameters key fails with this status when set.
        self.parameters_open_status: Optional[int] = None

        # Records.
        self.hook_failures: list[str] = []
        # (API, argument) of the calls whose order matters, in call order.
        self.events: list[tuple[str, int]] = []
        self.bugchecks: list[tuple[int, ...]] = []
        self.bugcheck_stack: list[int] = []
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

        # Processes, threads and process tracking.
        self.irql = PASSIVE_LEVEL
        self.current_tid = DEFAULT_CURRENT_TID
        self.processes: dict[int, FakeProcess] = {}  # EPROCESS address -> process
        self.running: dict[int, FakeProcess] = {}  # pid -> the live process with that id
        self.threads: dict[int, FakeThread] = {}  # ETHREAD address -> thread
        self.notify_routines: list[int] = []  # registered process notify routines
        self.notify_register_result: Optional[int] = None  # scripted failure
        self.process_list_queries: list[tuple[int, int, int]] = []  # (class, length, status)
        self.process_list_results: collections.deque[int] = collections.deque()  # scripted failures
        self.image_name_blocks: dict[int, int] = {}  # SeLocateProcessImageName results not yet freed -> pid
        self.image_name_lookups = 0
        self.delays: list[int] = []  # KeDelayExecutionThread intervals
        self.system_time = FIRST_SYSTEM_TIME
        self._next_create_time = FIRST_CREATE_TIME
        self._next_tid = 0x2000
        self.device_inits: dict[int, dict] = {}
        self.devices: dict[int, dict] = {}  # live control devices
        # IOCTL requests: live (presented, not completed) and every one sent.
        self.requests: dict[int, FakeRequest] = {}
        self.sent_requests: list[FakeRequest] = []
        self._next_request = WDFREQUEST_HANDLE_BASE
        # Handles to the control device (FILE_OBJECTs), the manual queues and
        # the file-object callbacks the driver configured.
        self.file_handles: dict[int, FileHandle] = {}  # WDFFILEOBJECT -> handle
        self._next_file = WDFFILEOBJECT_HANDLE_BASE
        self.default_handle: Optional[FileHandle] = None
        self.manual_queues: dict[int, ManualQueue] = {}
        self.file_object_config: Optional[dict] = None
        self.cancelable: dict[int, int] = {}  # request -> EvtRequestCancel
        self.completions_under_spin_lock = 0
        # on_request_completed(request): called when any request completes
        # (a pended get-request completed by a callback, for the handler side).
        self.on_request_completed: Optional[Callable[[FakeRequest], None]] = None
        # Speakeasy 1.5.11's se.call misplaces the 5th+ argument (issue 298);
        # the harness corrects it unless a test shows the defect.
        self.correct_stack_arguments = True
        # Registry writes (persisting a policy): scripted failures, records.
        self.open_for_write_status: Optional[int] = None  # ZwOpenKey with write access fails
        self.create_key_status: Optional[int] = None  # ZwCreateKey fails
        self.set_value_status: Optional[int] = None  # ZwSetValueKey fails
        self.key_access: dict[int, int] = {}  # open key handle -> granted access
        self.key_creates: list[tuple[str, int, int]] = []  # (path, access, status)
        self.registry_writes: list[RegistryWrite] = []  # successful ZwSetValueKey calls
        self.set_value_attempts = 0
        # The registry callback (CmRegisterCallbackEx) and WDF work items.
        self.registry_callbacks: dict[int, dict] = {}  # cookie -> registration
        self.registry_callback_status: Optional[int] = None  # CmRegisterCallbackEx fails
        self.registry_unregistered: list[int] = []
        self.registry_notifications_pending: list[tuple] = []  # delivered after the current run
        self.key_objects: dict[int, str] = {}  # key object address -> full name
        self.work_items: dict[int, dict] = {}  # handle -> {callback, parent, queued, ...}
        self.work_item_enqueues = 0
        self.work_item_runs = 0
        # Policy records drained by drain_audit_records (which returns the
        # handle records only unless asked).
        self.policy_records: list[AuditRecord] = []
        # Every kernel/WDF function the driver called, by name, in order.
        self.api_calls: list[str] = []

        self._next_handle = KERNEL_HANDLE_BASE
        self._next_registration = REGISTRATION_HANDLE_BASE
        self._arenas: dict[str, list[int]] = {}  # name -> [next free, end]
        self._scratch = self.se.mem_alloc(0x1000, tag="harness.scratch")

        self._hooked: set[tuple[str, str]] = set()
        self._install_object_types()
        self._install_hooks()
        # Driver Verifier's IRQL rules (irql_verifier.py): its own hooks for
        # locks and IRQL, then a checking hook for every other import.
        self._install_irql_verifier()
        self._install_kernel_threads()
        self._install_pass_through_hooks()
        self._install_stack_argument_fix()
        self._install_kernel_stack()
        # Every machine runs Idle (pid 0: listed, but not a process object
        # PsLookupProcessByProcessId hands out) and System (pid 4, no image
        # path), the current process unless a test says otherwise.
        self.new_process(0, "")
        self.new_process(4, "")

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
        # Speakeasy stops a run silently at its timeout (no run error): the
        # harness treats reaching it as a fault (see `_after_run`).
        config["timeout"] = RUN_TIMEOUT_SECONDS
        # Speakeasy ends a run after 10,000 API calls (a run error): a load
        # that enumerates 1,000 processes makes ~10 kernel calls for each.
        config["max_api_count"] = 1_000_000
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

    def _install_stack_argument_fix(self) -> None:
        """Puts the 5th and later arguments of ``se.call`` where the x64
        calling convention has them.

        Speakeasy 1.5.11's ``set_func_args`` writes stack arguments *below*
        the 32-byte home space, right above the return address (upstream
        issue 298): the callee finds its 5th argument in RCX's home slot and
        reads whatever lies at [RSP+0x28] instead (0 on the zeroed stack), so
        EvtIoDeviceControl's IoControlCode would arrive as 0. The corrected
        frame: return address at [RSP], home space [RSP+8, RSP+0x28), argument
        5+i at [RSP+0x28+8i], RSP+8 16-byte aligned as at any call. Calls with
        at most 4 arguments keep Speakeasy's own code.
        """
        emu = self.emu
        original = emu.set_func_args
        registers = (se_arch.AMD64_REG_RCX, se_arch.AMD64_REG_RDX, se_arch.AMD64_REG_R8, se_arch.AMD64_REG_R9)

        def set_func_args(stack_addr, ret_addr, *args, home_space=True):
            if len(args) <= 4 or not self.correct_stack_arguments:
                return original(stack_addr, ret_addr, *args, home_space=home_space)
            for register, value in zip(registers, args[:4]):
                emu.reg_write(register, value)
            stack_args = args[4:]
            slots = len(stack_args) + (len(stack_args) & 1)  # keep 16-byte alignment
            rsp = stack_addr - 8 - 0x20 - 8 * slots
            emu.mem_write(rsp, ret_addr.to_bytes(8, "little"))
            for index, value in enumerate(stack_args):
                emu.mem_write(rsp + 0x28 + 8 * index, (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))
            emu.reg_write(se_arch.AMD64_REG_RSP, rsp)
            return None

        emu.set_func_args = set_func_args

    def _install_kernel_stack(self) -> None:
        """Gives every run a kernel-sized stack, with its use measured.

        Speakeasy sizes the stack from the PE header's SizeOfStackCommit
        (4 KiB for this image), which a kernel ignores: x64 kernel threads
        have KERNEL_STACK_SIZE = 24 KiB. The harness maps a larger region,
        zeroes it before each run and afterwards finds the deepest byte
        written (the high-water mark): deeper than 24 KiB is a stack overflow
        (a bugcheck on Windows) and fails the run.
        """
        self.stack_region = self.se.mem_alloc(STACK_REGION_SIZE, tag="harness.kernel_stack")
        self.stack_top = self.stack_region + STACK_REGION_SIZE - 0x100
        self.emu.stack_base = self.stack_top
        self.max_stack_used = 0
        self.last_stack_used = 0

    def _stack_used(self) -> int:
        raw = self.read(self.stack_region, STACK_REGION_SIZE)
        stripped = raw.lstrip(b"\0")
        # Bytes from the deepest written byte to the stack top.
        return max(0, self.stack_top - (self.stack_region + len(raw) - len(stripped)))

    def _hook(self, module: str, name: str, argc: int, handler: Callable) -> None:
        """Registers ``handler(argv, original)`` for ``module!name``.

        unicorn 1.0.2 swallows Python exceptions raised inside hooks (the run
        just ends with an unexplained fetch error), so they are caught here and
        reported by ``assert_no_fault``.
        """

        def callback(emu, api_name, original, argv):
            self.api_calls.append(name)
            try:
                self._verify_call(name, list(argv))
                value = handler(list(argv), original)
                switch = self.switch_after_call.pop(name, None) if self.switch_after_call else None
                if switch is not None and self._switch is None:
                    # kernel_threads.py: the handler thread runs now, then
                    # this call returns `value`.
                    self._in_wait_handler = True
                    try:
                        switch(self)
                    finally:
                        self._in_wait_handler = False
                    if self._pending_steps:
                        self.begin_switch(lambda: value, from_sentinel=original is None)
                        return None
                return value
            except Exception:  # noqa: BLE001 - reported, not hidden
                self.hook_failures.append(f"{api_name}: {traceback.format_exc()}")
                return STATUS_INTERNAL_ERROR

        # argc is only used for APIs Speakeasy does not implement; for those
        # it does implement, its own argc decides what argv holds.
        self.se.add_api_hook(callback, module, name, argc=argc)
        self._hooked.add((module.lower(), name))

    def _install_hooks(self) -> None:
        hook = self._hook
        hook("ntoskrnl", "ObRegisterCallbacks", 2, self._ob_register_callbacks)
        hook("ntoskrnl", "ObUnRegisterCallbacks", 1, self._ob_unregister_callbacks)
        hook("ntoskrnl", "PsGetCurrentProcessId", 0, self._ps_get_current_process_id)
        hook("ntoskrnl", "PsGetProcessId", 1, self._ps_get_process_id)
        hook("ntoskrnl", "PsGetThreadProcessId", 1, self._ps_get_thread_process_id)
        # Not imported (Windows 10 2004+ only): reached through the address
        # MmGetSystemRoutineAddress returns.
        hook("ntoskrnl", "ExAllocatePool2", 3, self._ex_allocate_pool2)
        hook("ntoskrnl", "ExAllocatePoolWithTag", 3, self._ex_allocate_pool_with_tag)
        hook("ntoskrnl", "MmGetSystemRoutineAddress", 1, self._mm_get_system_routine_address)
        hook("ntoskrnl", "ExFreePoolWithTag", 2, self._ex_free_pool_with_tag)
        hook("ntoskrnl", "ZwOpenKey", 3, self._zw_open_key)
        hook("ntoskrnl", "ZwQueryValueKey", 6, self._zw_query_value_key)
        hook("ntoskrnl", "ZwClose", 1, self._zw_close)
        hook("ntoskrnl", "DbgPrintEx", 4, self._dbg_print_ex)
        hook("ntoskrnl", "KeBugCheckEx", 5, self._ke_bug_check_ex)
        # Process tracking (issue 4).
        hook("ntoskrnl", "PsSetCreateProcessNotifyRoutineEx", 2, self._ps_set_create_process_notify_routine_ex)
        hook("ntoskrnl", "ZwQuerySystemInformation", 4, self._zw_query_system_information)
        hook("ntoskrnl", "PsLookupProcessByProcessId", 2, self._ps_lookup_process_by_process_id)
        hook("ntoskrnl", "ObfDereferenceObject", 1, self._obf_dereference_object)
        hook("ntoskrnl", "PsGetProcessExitStatus", 1, self._ps_get_process_exit_status)
        hook("ntoskrnl", "PsGetProcessCreateTimeQuadPart", 1, self._ps_get_process_create_time_quad_part)
        hook("ntoskrnl", "SeLocateProcessImageName", 2, self._se_locate_process_image_name)
        hook("ntoskrnl", "ExFreePool", 1, self._ex_free_pool)
        hook("ntoskrnl", "IoThreadToProcess", 1, self._io_thread_to_process)
        hook("ntoskrnl", "IoGetCurrentProcess", 0, self._io_get_current_process)
        hook("ntoskrnl", "PsGetCurrentThreadId", 0, self._ps_get_current_thread_id)
        hook("ntoskrnl", "PsGetCurrentThread", 0, self._ps_get_current_thread)
        hook("ntoskrnl", "PsGetThreadId", 1, self._ps_get_thread_id)
        # Synchronisation and time.
        hook("ntoskrnl", "KeDelayExecutionThread", 3, self._ke_delay_execution_thread)
        hook("ntoskrnl", "KeQuerySystemTimePrecise", 1, self._ke_query_system_time_precise)
        hook("wdfldr", "WdfVersionBind", 4, self._wdf_version_bind)
        hook("wdfldr", "WdfVersionUnbind", 3, self._wdf_version_unbind)
        hook("wdfldr", "WdfDriverCreate", 6, self._wdf_driver_create)
        hook("wdfldr", "FxFrameworkDriverUnload", 1, self._fx_framework_driver_unload)
        # The control device (created last by DriverEntry since issue 5): enough
        # framework to create it, present IOCTLs to its queue and delete it.
        hook("wdfldr", "WdfControlDeviceInitAllocate", 3, self._wdf_control_device_init_allocate)
        hook("wdfldr", "WdfDeviceInitAssignName", 3, self._wdf_device_init_assign_name)
        hook("wdfldr", "WdfDeviceInitFree", 2, self._wdf_device_init_free)
        hook("wdfldr", "WdfDeviceCreate", 4, self._wdf_device_create)
        hook("wdfldr", "WdfDeviceCreateSymbolicLink", 3, self._wdf_device_create_symbolic_link)
        hook("wdfldr", "WdfIoQueueCreate", 5, self._wdf_io_queue_create)
        hook("wdfldr", "WdfControlFinishInitializing", 2, self._wdf_control_finish_initializing)
        hook("wdfldr", "WdfObjectDelete", 2, self._wdf_object_delete)
        # IOCTL requests presented to the control device's queue (issue 5).
        hook("wdfldr", "WdfRequestRetrieveInputBuffer", 5, self._wdf_request_retrieve_input_buffer)
        hook("wdfldr", "WdfRequestRetrieveOutputBuffer", 5, self._wdf_request_retrieve_output_buffer)
        hook("wdfldr", "WdfRequestCompleteWithInformation", 4, self._wdf_request_complete_with_information)
        # The ask path (issue 12): file objects, manual queues, pended requests.
        hook("wdfldr", "WdfRequestComplete", 3, self._wdf_request_complete)
        hook("wdfldr", "WdfRequestSetInformation", 3, self._wdf_request_set_information)
        hook("wdfldr", "WdfDeviceInitSetFileObjectConfig", 4, self._wdf_device_init_set_file_object_config)
        hook("wdfldr", "WdfRequestGetFileObject", 2, self._wdf_request_get_file_object)
        hook("wdfldr", "WdfRequestForwardToIoQueue", 3, self._wdf_request_forward_to_io_queue)
        hook("wdfldr", "WdfIoQueueRetrieveNextRequest", 3, self._wdf_io_queue_retrieve_next_request)
        hook("wdfldr", "WdfIoQueueRetrieveRequestByFileObject", 4, self._wdf_io_queue_retrieve_request_by_file_object)
        hook("wdfldr", "WdfIoQueueGetState", 4, self._wdf_io_queue_get_state)
        hook("wdfldr", "WdfRequestMarkCancelable", 3, self._wdf_request_mark_cancelable)
        hook("wdfldr", "WdfRequestUnmarkCancelable", 2, self._wdf_request_unmark_cancelable)
        # Persisting a policy (IOCTL_SET_POLICY with PERSIST).
        hook("ntoskrnl", "ZwCreateKey", 7, self._zw_create_key)
        hook("ntoskrnl", "ZwSetValueKey", 6, self._zw_set_value_key)
        # Parameters\Policy applied live (issue 13): the registry callback and
        # the work item it enqueues.
        hook("ntoskrnl", "CmRegisterCallbackEx", 6, self._cm_register_callback_ex)
        hook("ntoskrnl", "CmUnRegisterCallback", 1, self._cm_unregister_callback)
        hook("ntoskrnl", "CmCallbackGetKeyObjectID", 4, self._cm_callback_get_key_object_id)
        hook("wdfldr", "WdfWorkItemCreate", 4, self._wdf_work_item_create)
        hook("wdfldr", "WdfWorkItemEnqueue", 2, self._wdf_work_item_enqueue)
        hook("wdfldr", "WdfWorkItemFlush", 2, self._wdf_work_item_flush)

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
        if self.irql_violations:
            problems.append("Driver Verifier (IRQL rules):\n" + self.irql_report())
        if self.bugchecks:
            problems.append(f"KeBugCheckEx called: {[tuple(map(hex, b)) for b in self.bugchecks]}")
            problems.append("image addresses on its stack:\n" + symbolize(self.sys_path, self.bugcheck_stack[:24]))
        if problems:
            raise KernelFault(f"{what}: " + "\n".join(problems))

    def _after_run(self, run, what: str, started: float, irql_before: int) -> None:
        """Checks common to every run of driver code: no fault, not cut off
        by Speakeasy's timeout, stack within a kernel stack, and the thread
        back where it was (IRQL restored, no guarded mutex still held)."""
        elapsed = time.monotonic() - started
        if elapsed >= RUN_TIMEOUT_SECONDS * 0.95:
            raise KernelFault(f"{what}: stopped by the {RUN_TIMEOUT_SECONDS} s emulation timeout ({elapsed:.0f} s)")
        self._check_stack(what)
        self._verifier_after_run(what, irql_before)
        self.assert_no_fault(run, what)

    def _check_stack(self, what: str) -> None:
        used = self.last_stack_used = self._stack_used()
        self.max_stack_used = max(self.max_stack_used, used)
        if used > KERNEL_STACK_SIZE:
            raise KernelFault(f"{what}: used {used} bytes of stack, more than a {KERNEL_STACK_SIZE}-byte kernel stack")

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
        """Calls driver code (x64; the 5th and later arguments are placed by
        ``_install_stack_argument_fix``) and returns RAX."""
        runs_before = len(self.emu.runs)
        self.write(self.stack_region, b"\0" * STACK_REGION_SIZE)
        irql_before = self.irql
        started = time.monotonic()
        self.se.call(address, args)
        assert len(self.emu.runs) == runs_before + 1, f"{what}: no run was recorded"
        run = self.emu.runs[-1]
        self._after_run(run, what, started, irql_before)
        return (run.ret_val or 0) & 0xFFFFFFFFFFFFFFFF

    @property
    def driver_object(self) -> int:
        return self.emu.drivers[-1].address

    def driver_entry(self) -> int:
        """Runs the image entry point (FxDriverEntry) like the I/O manager; returns its NTSTATUS."""
        assert self.driver_entry_status is None, "DriverEntry runs once per harness"
        self.write(self.stack_region, b"\0" * STACK_REGION_SIZE)
        # run_module starts at the current RSP (only `call` resets it).
        self.emu.reset_stack(self.emu.stack_base)
        started = time.monotonic()
        self.se.run_module(self.module)
        entries = [run for run in self.emu.runs if run.type == EP_DRIVER_ENTRY]
        assert len(entries) == 1, "Speakeasy did not run the entry point"
        self._after_run(entries[0], "DriverEntry", started, PASSIVE_LEVEL)
        self.driver_entry_status = (entries[0].ret_val or 0) & 0xFFFFFFFF
        return self.driver_entry_status

    def load(self) -> None:
        """DriverEntry, which must succeed. The boot policy record (issue 13:
        one policy record at start) is drained into ``policy_records``, so
        the ring holds only what a test causes (its sequence number, 0, is
        used: the test's first record is sequence 1)."""
        status = self.driver_entry()
        if status != STATUS_SUCCESS:
            raise KernelFault(f"DriverEntry failed with {status:#010x}; trace: {self.trace_text()}")
        records = self._drain_all_records(64)
        if [r.object for r in records] != ["policy"] or records[0].policy_source != "boot":
            raise KernelFault(f"DriverEntry left {records}, expected one boot policy record")
        self.policy_records.extend(records)

    def driver_unload_routine(self) -> int:
        return self._read_u64(self.driver_object + DRIVER_OBJECT_DRIVER_UNLOAD)

    def unload(self) -> None:
        """Calls DRIVER_OBJECT.DriverUnload as the I/O manager would
        (Speakeasy's run_module never does)."""
        routine = self.driver_unload_routine()
        assert routine, "the driver has no DriverUnload routine"
        self._run(routine, [self.driver_object], "DriverUnload")
        self._check_unload_completed()

    def _check_unload_completed(self) -> None:
        # Every pended request is completed by the end of unload (the driver
        # cannot leave an IRP behind: the I/O manager would wait forever).
        held = [hex(r.handle) for r in self.sent_requests if r.pending]
        if held:
            raise KernelFault(f"DriverUnload left pended requests {held} uncompleted")

    # ------------------------------------------------------- the control device

    @property
    def control_device(self) -> dict:
        """The record of the one live control device (name, SDDL, links,
        attributes, queue config)."""
        assert len(self.devices) == 1, f"live control devices: {self.devices}"
        return next(iter(self.devices.values()))

    def open_handle(self, pid: Optional[int] = None, tid: Optional[int] = None) -> FileHandle:
        """CreateFile of the control device by process ``pid`` (default: the
        current one at each call): a new FILE_OBJECT and its WDFFILEOBJECT.
        The driver configures no EvtDeviceFileCreate (a test would fail
        here if it did: not modelled)."""
        config = self.file_object_config or {}
        if config.get("EvtDeviceFileCreate"):
            raise KernelFault("EvtDeviceFileCreate is configured: the harness does not model it")
        self._next_file += 0x10
        if pid is not None:
            self.eprocess(pid)
        handle = FileHandle(
            number=len(self.file_handles) + 1,
            file_object=self._next_file,
            pid=pid,
            tid=tid if tid is not None else (self._next_tid + 4 if pid is not None else None),
        )
        if pid is not None and tid is None:
            self._next_tid += 4
        self.file_handles[handle.file_object] = handle
        return handle

    def _handle_for(self, file: Optional[FileHandle]) -> FileHandle:
        if file is None:
            if self.default_handle is None:
                self.default_handle = self.open_handle()
            file = self.default_handle
        if file.closed:
            raise KernelFault(f"IOCTL on closed handle {file.number}")
        return file

    def _prepare_request(self, code: int, input: bytes, output_length: int, file: Optional[FileHandle]) -> FakeRequest:
        device = self.control_device
        if not device["finished"]:
            raise KernelFault("IOCTL to a control device that never finished initializing")
        routine = device["queue"]
        assert routine and self.in_image(routine), f"EvtIoDeviceControl {routine!r} is not in the image"
        size = max(len(input), output_length)
        buffer = self._arena_alloc("SystemBuffer", size) if size else 0
        if size:
            self.write(buffer, bytes(input) + b"\xA5" * (size - len(input)))
        self._next_request += 0x10
        request = FakeRequest(
            handle=self._next_request,
            code=code,
            system_buffer=buffer,
            input_length=len(input),
            output_length=output_length,
            completions=[],
            retrievals=[],
            file=self._handle_for(file),
        )
        self.requests[request.handle] = request
        self.sent_requests.append(request)
        return request

    def _ioctl_step(self, request: FakeRequest, after=None) -> ThreadStep:
        """Presenting ``request`` to the default queue's EvtIoDeviceControl
        (Queue, Request, OutputBufferLength, InputBufferLength,
        IoControlCode) at PASSIVE_LEVEL, in the thread of the handle's
        process."""
        code = request.code
        # IoControlCode is a ULONG: the upper half of its stack slot is left
        # as garbage, as a compiled caller may (the driver must not read it).
        code_slot = (0x5A5A5A5A << 32) | code
        file = request.file
        return ThreadStep(
            what=f"EvtIoDeviceControl({code:#010x})",
            routine=self.control_device["queue"],
            args=[WDFQUEUE_HANDLE, request.handle, request.output_length, request.input_length, code_slot],
            pid=file.pid if file.pid is not None else self.current_pid,
            tid=file.tid if file.tid is not None else self.current_tid,
            finish=lambda: self._request_result(request),
            after=after,
        )

    def _request_result(self, request: FakeRequest) -> "IoctlResult":
        """After EvtIoDeviceControl returned: completed exactly once, or
        pended in a manual queue (or kept by the driver after retrieving
        it from one); completing it later is checked by the completion hook."""
        code = request.code
        if len(request.completions) > 1:
            raise KernelFault(f"EvtIoDeviceControl({code:#010x}) completed the request {len(request.completions)} times")
        if not request.completions:
            if request.handle not in self.requests or not request.forwarded:
                self.requests.pop(request.handle, None)
                raise KernelFault(f"EvtIoDeviceControl({code:#010x}) completed the request 0 times")
            return IoctlResult(status=STATUS_PENDING, information=0, output=b"", request=request)
        status, information = request.completions[0]
        return IoctlResult(status=status, information=information, output=request.output, request=request)

    def _run_step(self, step: ThreadStep) -> object:
        """Runs a handler-thread step directly (no wait to switch from)."""
        saved = (self.current_pid, self.current_tid, self.attached_pid)
        self.current_pid, self.current_tid, self.attached_pid = step.pid, step.tid, None
        try:
            if step.start is not None:
                step.start()
            assert self.irql == PASSIVE_LEVEL
            self._run(step.routine, step.args, step.what)
            step.result = step.finish() if step.finish is not None else None
        finally:
            self.current_pid, self.current_tid, self.attached_pid = saved
        if step.after is not None:
            step.after(step.result)
        return step.result

    def ioctl(
        self, code: int, input: bytes = b"", output_length: int = 0, *, file: Optional[FileHandle] = None
    ) -> IoctlResult:
        """Sends an IRP_MJ_DEVICE_CONTROL through the control device's queue,
        as the I/O manager and KMDF do for METHOD_BUFFERED: one system buffer
        of max(input, output) bytes with the input copied in (the rest filled
        with 0xA5, as uninitialised pool would be), a fresh WDFREQUEST, then
        the driver's EvtIoDeviceControl(Queue, Request, OutputBufferLength,
        InputBufferLength, IoControlCode) at PASSIVE_LEVEL (the device asked
        for WdfExecutionLevelPassive), on handle ``file`` (default: one
        handle of the current process). The request must be completed
        exactly once, or forwarded to a manual queue: then the result's
        status is STATUS_PENDING and ``result.request`` shows the completion
        when it comes. What the caller gets back is `information` bytes of
        the system buffer, or nothing for an error status.

        Inside a switched wait (a wait handler, see kernel_threads.py) use
        ``thread_ioctl``: driver code cannot be run from there."""
        if self.switched:
            raise KernelFault("ioctl() inside a switched wait: use thread_ioctl()")
        request = self._prepare_request(code, input, output_length, file)
        result = self._run_step(self._ioctl_step(request))
        self._deliver_registry_notifications()
        return result

    def thread_ioctl(
        self, code: int, input: bytes = b"", output_length: int = 0, *, file: Optional[FileHandle] = None,
        after: Optional[Callable[["IoctlResult"], None]] = None,
    ) -> FakeRequest:
        """From a wait handler (or a step's ``after``): queues an IOCTL for
        the handler thread; ``after(result)`` runs when it returned."""
        request = self._prepare_request(code, input, output_length, file)
        self.thread_step(self._ioctl_step(request, after))
        return request

    def _close_steps(self, file: FileHandle) -> list:
        """CloseHandle: IRP_MJ_CLEANUP (EvtFileCleanup), then the framework
        cancels the handle's requests still in the driver's manual queues
        (EvtIoCanceledOnQueue, or completed with STATUS_CANCELLED), then
        IRP_MJ_CLOSE (EvtFileClose)."""
        if file.closed:
            raise KernelFault(f"handle {file.number} closed twice")
        config = self.file_object_config or {}
        pid = file.pid if file.pid is not None else self.current_pid
        tid = file.tid if file.tid is not None else self.current_tid
        steps = []

        def mark_closed():
            file.closed = True

        def cancel_queued(_result=None):
            for queue in self.manual_queues.values():
                for handle in list(queue.requests):
                    request = self.requests.get(handle)
                    if request is not None and request.file is file:
                        self.cancel_request(request, in_thread=self._switch is not None)

        cleanup = config.get("EvtFileCleanup")
        if cleanup:
            steps.append(ThreadStep(what="EvtFileCleanup", routine=cleanup, args=[file.file_object], pid=pid, tid=tid,
                                    start=mark_closed, after=cancel_queued))
        else:
            steps.append(None)
        close = config.get("EvtFileClose")
        if close:
            steps.append(ThreadStep(what="EvtFileClose", routine=close, args=[file.file_object], pid=pid, tid=tid))
        return steps, mark_closed, cancel_queued

    def close(self, file: FileHandle) -> None:
        """Closes a handle (the last one to its FILE_OBJECT)."""
        if self.switched:
            raise KernelFault("close() inside a switched wait: use thread_close()")
        steps, mark_closed, cancel_queued = self._close_steps(file)
        if steps[0] is None:
            mark_closed()
            cancel_queued()
            steps = steps[1:]
        for step in steps:
            self._run_step(step)

    def thread_close(self, file: FileHandle) -> None:
        """From a wait handler: the handler process closes ``file`` (or dies)."""
        steps, mark_closed, cancel_queued = self._close_steps(file)
        if steps[0] is None:
            mark_closed()
            cancel_queued()
            steps = steps[1:]
        for step in steps:
            self.thread_step(step)

    def cancel_request(self, request: FakeRequest, *, in_thread: bool = False) -> None:
        """CancelIoEx on a pended request: one in a manual queue is removed
        and given to the queue's EvtIoCanceledOnQueue, or completed with
        STATUS_CANCELLED; one the driver holds is cancelled only if it
        marked it cancelable (EvtRequestCancel)."""
        request.cancelled = True
        if request.handle not in self.requests:
            return
        if request.queue is not None:
            queue = self.manual_queues[request.queue]
            queue.requests.remove(request.handle)
            request.queue = None
            routine = queue.config.get("EvtIoCanceledOnQueue")
            if routine:
                step = ThreadStep(what="EvtIoCanceledOnQueue", routine=routine, args=[queue.handle, request.handle],
                                  pid=self.current_pid, tid=self.current_tid,
                                  finish=lambda: self._request_result(request))
                if in_thread or self.switched:
                    self.thread_step(step)
                else:
                    self._run_step(step)
            else:
                self._complete(request, STATUS_CANCELLED, 0)
            return
        routine = self.cancelable.pop(request.handle, None)
        if routine:
            step = ThreadStep(what="EvtRequestCancel", routine=routine, args=[request.handle],
                              pid=self.current_pid, tid=self.current_tid)
            if in_thread or self.switched:
                self.thread_step(step)
            else:
                self._run_step(step)

    def pended(self, code: Optional[int] = None) -> list[FakeRequest]:
        """Requests sent and not completed (optionally of one code), oldest first."""
        return [r for r in self.sent_requests if r.pending and (code is None or r.code == code)]

    def drain_audit_records(self, batch: int = 64, *, policy: bool = False) -> list[AuditRecord]:
        """Every audit record waiting in the driver's ring, oldest first,
        read with IOCTL_READ_EVENTS (``batch`` records per request) until
        none remain. Each response is checked against its header. Policy
        records (object 3) are kept in ``policy_records`` and left out
        unless ``policy``."""
        records = self._drain_all_records(batch)
        self.policy_records.extend(r for r in records if r.object == "policy")
        if policy:
            return records
        return [r for r in records if r.object != "policy"]

    def drain_policy_records(self) -> list[AuditRecord]:
        """The policy records drained so far and now, oldest first (then forgotten)."""
        self.drain_audit_records()
        records, self.policy_records = self.policy_records, []
        return records

    def _drain_all_records(self, batch: int) -> list[AuditRecord]:
        records: list[AuditRecord] = []
        while True:
            result = self.ioctl(IOCTL_READ_EVENTS, b"", EVENTS_HEADER_SIZE + batch * AUDIT_RECORD_BYTES)
            if result.status != STATUS_SUCCESS:
                raise KernelFault(f"IOCTL_READ_EVENTS failed with {result.status:#010x}")
            count, remaining, _dropped = struct.unpack_from("<IIQ", result.output, 0)
            if result.information != EVENTS_HEADER_SIZE + count * AUDIT_RECORD_BYTES:
                raise KernelFault(f"IOCTL_READ_EVENTS: {count} records in {result.information} bytes")
            for index in range(count):
                words = struct.unpack_from("<8Q", result.output, EVENTS_HEADER_SIZE + index * AUDIT_RECORD_BYTES)
                records.append(AuditRecord.from_words(list(words)))
            if remaining == 0:
                return records
            if count == 0:
                raise KernelFault(f"IOCTL_READ_EVENTS returned nothing with {remaining} remaining")

    # ----------------------------------------------------------- fake objects

    def _arena_alloc(self, arena: str, size: int, chunk: int = 16 << 20) -> int:
        """Bump allocation (16-byte aligned) from large emulated regions.

        One Speakeasy mapping per fake object or pool block would mean
        thousands of unicorn mappings for a 1,000-process machine; carving
        them from a few big regions keeps that cheap. Memory is never reused,
        so a stale pointer never aliases a newer block.
        """
        size = (max(size, 1) + 15) & ~15
        if size > chunk // 4:
            return self.se.mem_alloc(size, tag=f"harness.{arena}.large")
        state = self._arenas.get(arena)
        if state is None or state[0] + size > state[1]:
            base = self.se.mem_alloc(chunk, tag=f"harness.{arena}")
            state = self._arenas[arena] = [base, base + chunk]
        address = state[0]
        state[0] += size
        return address

    def new_process(
        self,
        pid: int,
        image: Optional[str] = None,
        *,
        create_time: Optional[int] = None,
        running: bool = True,
    ) -> int:
        """A fake EPROCESS with id ``pid``, image path ``image`` (default:
        ``\\Device\\HarddiskVolume3\\Program Files\\Test\\pid<N>.exe``) and a
        creation time later than every earlier process's. ``running``: it is
        the live process with that id (in the process list, found by
        PsLookupProcessByProcessId), replacing any earlier one. Returns its
        address."""
        if image is None:
            image = image_path(f"pid{pid}.exe")
        if create_time is None:
            self._next_create_time += 10_000
            create_time = self._next_create_time
        address = self._arena_alloc("EPROCESS", 0x100)
        process = FakeProcess(pid=pid, address=address, create_time=create_time, image_path=image, running=running)
        self.processes[address] = process
        if running:
            previous = self.running.get(pid)
            if previous is not None:
                previous.running = False
            self.running[pid] = process
        return address

    def eprocess(self, pid: int) -> int:
        """The EPROCESS of the running process ``pid`` (created with the
        default image if there is none)."""
        if pid not in self.running:
            self.new_process(pid)
        return self.running[pid].address

    def new_thread(self, owner_pid: int, tid: Optional[int] = None) -> int:
        """A fake ETHREAD of the running process ``owner_pid``."""
        if tid is None:
            self._next_tid += 4
            tid = self._next_tid
        address = self._arena_alloc("ETHREAD", 0x100)
        self.threads[address] = FakeThread(address, tid, self.processes[self.eprocess(owner_pid)])
        return address

    def exit_process(self, pid: int) -> FakeProcess:
        """Process ``pid`` exits: it leaves the process list (its object lives on)."""
        process = self.running.pop(pid)
        process.running = False
        process.exit_status = STATUS_SUCCESS
        return process

    # ------------------------------------------------ process notifications

    def notify_create(self, pid: int, image: Optional[str] = None, *, parent_pid: int = 4) -> int:
        """A new process starts: the kernel creates it and calls every
        registered notify routine with a PS_CREATE_NOTIFY_INFO, at PASSIVE
        level, in the creating thread. Returns the new EPROCESS."""
        assert self.notify_routines, "no process notify routine is registered"
        address = self.new_process(pid, image)
        process = self.processes[address]
        # The notify routine's ImageFileName is the Win32-ish form; the
        # driver must use SeLocateProcessImageName's NT path instead, so give
        # it something different on purpose.
        file_name = self.unicode_string("\\??\\C:\\NotTheNtPath\\" + process.image_path.rsplit("\\", 1)[-1])
        command_line = self.unicode_string(f'"{process.image_path}"')
        info = self._arena_alloc("PS_CREATE_NOTIFY_INFO", PS_CREATE_NOTIFY_INFO_SIZE)
        self.write(
            info,
            struct.pack(
                "<QIIQQQQQQiI",
                PS_CREATE_NOTIFY_INFO_SIZE,  # Size
                1, 0,  # Flags: FileOpenNameAvailable
                parent_pid,  # ParentProcessId
                parent_pid, self.current_tid,  # CreatingThreadId (CLIENT_ID)
                0,  # FileObject
                file_name,  # ImageFileName
                command_line,  # CommandLine
                0, 0,  # CreationStatus, padding
            ),
        )
        for routine in list(self.notify_routines):
            self._run(routine, [address, pid, info], "process notify routine (create)")
        return address

    def notify_exit(self, pid: int, *, stays_listed: bool = False) -> None:
        """Process ``pid`` exits: its exit status is set, notify routines are
        called with no create information, then it leaves the process list.
        ``stays_listed``: it does not leave yet — an exited process whose
        object someone still references is still listed by
        ZwQuerySystemInformation and found by PsLookupProcessByProcessId."""
        assert self.notify_routines, "no process notify routine is registered"
        process = self.running[pid]
        process.exit_status = STATUS_SUCCESS
        for routine in list(self.notify_routines):
            self._run(routine, [process.address, pid, 0], "process notify routine (exit)")
        if not stays_listed:
            self.exit_process(pid)

    # ------------------------------------------------------------ measuring

    def measure(self, action: Callable[[], object]) -> "Measurement":
        """Runs ``action`` counting the x86 instructions executed inside the
        driver image (kernel API bodies run in Python: each counts only as
        the driver's `call`) and the kernel functions it called. Instructions
        run on a handler thread during a switched wait (kernel_threads.py)
        are counted apart (``switched_instructions``): they are the other
        side of the wait, not the measured call's."""
        counts: collections.Counter[int] = collections.Counter()
        switched = collections.Counter()

        def on_code(_emu, address, _size, _ctx):
            if self._switches:
                switched[address] += 1
            else:
                counts[address] += 1

        calls_before = len(self.api_calls)
        allocations_before = self.allocation_count
        mutexes_before = self.mutex_acquisitions
        hook = self.se.add_code_hook(on_code, begin=self.image_base, end=self.image_end - 1)
        try:
            result = action()
        finally:
            hook.disable()
        return Measurement(
            result=result,
            instructions=sum(counts.values()),
            api_calls=self.api_calls[calls_before:],
            allocations=self.allocation_count - allocations_before,
            mutex_acquisitions=self.mutex_acquisitions - mutexes_before,
            address_counts=counts,
            switched_instructions=sum(switched.values()),
        )

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
        irql: int = PASSIVE_LEVEL,
    ) -> PreOperationResult:
        """Calls the registered pre-operation callback the way the object
        manager does, with a freshly built OB_PRE_OPERATION_INFORMATION.

        ``object_kind`` picks the registration entry whose callback is called;
        ObjectType is that kind's OBJECT_TYPE unless ``object_type`` overrides it.
        """
        if current_pid is not None:
            self.current_pid = current_pid
        step = self._pre_operation_step(
            operation=operation, object_kind=object_kind, target=target, desired_access=desired_access,
            original_desired_access=original_desired_access, kernel_handle=kernel_handle,
            source_process=source_process, target_process=target_process, flags=flags,
            object_type=object_type, info=self._scratch, pid=self.current_pid, tid=self.current_tid,
        )
        # Callbacks run at PASSIVE or APC level.
        assert irql in (PASSIVE_LEVEL, APC_LEVEL)
        saved_irql, self.irql = self.irql, irql
        self.in_pre_operation = True
        try:
            status = self._run(step.routine, step.args, "pre-operation callback")
        finally:
            self.irql = saved_irql
            self.in_pre_operation = False
        step.result = step.finish()
        step.result.status = status & 0xFFFFFFFF
        self._resume_blocked_threads()
        return step.result

    def thread_pre_operation(self, *, pid: int, tid: Optional[int] = None, after=None, **request) -> ThreadStep:
        """From a wait handler: another thread (of process ``pid``) makes a
        handle request while the first one waits; ``after(result)`` gets its
        PreOperationResult."""
        info = self._arena_alloc("OB_PRE_OPERATION_INFORMATION", 0x200)
        step = self._pre_operation_step(info=info, pid=pid, tid=tid if tid is not None else self._next_tid + 4,
                                        **request)
        self._next_tid += 4
        step.in_pre_operation = True
        step.after = after
        self.thread_step(step)
        return step

    def _pre_operation_step(
        self, *, operation, object_kind, target, desired_access, original_desired_access=None,
        kernel_handle=False, source_process=0, target_process=0, flags=None, object_type=None,
        info: int, pid: int, tid: int,
    ) -> ThreadStep:
        registration = self.registration
        if object_type is None:
            object_type = {"process": self.process_object_type, "thread": self.thread_object_type}[object_kind]
        entry_variable = {"process": self.ps_process_type_variable, "thread": self.ps_thread_type_variable}[object_kind]
        entry = next(e for e in registration.entries if e.object_type == entry_variable)
        if original_desired_access is None:
            original_desired_access = desired_access
        if flags is None:
            flags = 1 if kernel_handle else 0
        parameters = info + 0x100
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

        def finish() -> PreOperationResult:
            after_info = self.read(info, OB_PRE_OPERATION_INFORMATION_SIZE)
            after_parameters = self.read(parameters, OB_PRE_OPERATION_PARAMETERS_SIZE)
            return PreOperationResult(
                status=(self.emu.reg_read(se_arch.AMD64_REG_RAX) if self.switched else 0) & 0xFFFFFFFF,
                desired_access=_u32(after_parameters, 0),
                original_desired_access=_u32(after_parameters, 4),
                information=after_info,
                parameters=after_parameters,
            )

        return ThreadStep(
            what=f"pre-operation callback ({object_kind})", routine=entry.pre_operation,
            args=[registration.context, info], pid=pid, tid=tid, finish=finish,
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
        if self.callbacks_in_progress():
            # Windows' ObUnRegisterCallbacks waits until the callbacks in
            # progress returned (kernel_threads.py: block_until_run_ends).
            self.events.append(("ObUnRegisterCallbacks waits for callbacks", handle))
            return self.block_until_run_ends(0)
        return None

    def _ps_get_current_process_id(self, _argv, _original):
        self.current_pid_calls += 1
        if self.current_pid_script:
            return self.current_pid_script.popleft()
        return self.current_pid

    def _ps_get_process_id(self, argv, _original):
        return self._process_object(argv[0], "PsGetProcessId").pid

    def _ps_get_thread_process_id(self, argv, _original):
        return self._thread_object(argv[0], "PsGetThreadProcessId").process.pid

    def _process_object(self, address: int, api: str) -> FakeProcess:
        if address not in self.processes:
            raise KernelFault(f"{api}({address:#x}): not an EPROCESS")
        return self.processes[address]

    def _thread_object(self, address: int, api: str) -> FakeThread:
        if address not in self.threads:
            raise KernelFault(f"{api}({address:#x}): not an ETHREAD")
        return self.threads[address]

    def _ex_allocate_pool2(self, argv, _original):
        flags, size, tag = argv[0], argv[1], argv[2] & 0xFFFFFFFF
        number = self.allocation_count
        self.allocation_count += 1
        self.events.append(("ExAllocatePool2", size))
        if self.irql > DISPATCH_LEVEL:
            raise KernelFault(f"ExAllocatePool2 at IRQL {self.irql}")
        if number in self.fail_allocations or size == 0:
            return 0
        # Fresh arena memory is zero, as ExAllocatePool2 promises (no
        # POOL_FLAG_UNINITIALIZED); it is never handed out twice.
        address = self._arena_alloc("pool", size)
        self.pool[address] = PoolBlock(address, size, tag, flags)
        return address

    def _mm_get_system_routine_address(self, argv, _original):
        name = self._read_unicode_string(argv[0])
        self.routine_lookups.append((name, self.irql))
        self.events.append(("MmGetSystemRoutineAddress", 0))
        if self.irql != PASSIVE_LEVEL:
            raise KernelFault(f"MmGetSystemRoutineAddress({name!r}) at IRQL {self.irql} (PASSIVE_LEVEL only)")
        if name == "ExAllocatePool2" and self.ex_allocate_pool2_exported:
            return self.emu.add_callback("ntoskrnl", "ExAllocatePool2")
        return 0

    def _ex_allocate_pool_with_tag(self, argv, _original):
        pool_type, size, tag = argv[0] & 0xFFFFFFFF, argv[1], argv[2] & 0xFFFFFFFF
        number = self.allocation_count
        self.allocation_count += 1
        self.events.append(("ExAllocatePoolWithTag", size))
        if self.irql > DISPATCH_LEVEL:
            raise KernelFault(f"ExAllocatePoolWithTag at IRQL {self.irql}")
        if pool_type != NON_PAGED_POOL_NX:
            raise KernelFault(f"ExAllocatePoolWithTag(PoolType {pool_type}): the driver must use NonPagedPoolNx")
        if number in self.fail_allocations or size == 0:
            return 0
        address = self._arena_alloc("pool", size)
        # The kernel does not initialise these blocks: garbage, so a driver
        # that forgets to zero them is seen (the write hook records zeroing).
        self.write(address, b"\xCC" * size)
        self.pool[address] = PoolBlock(address, size, tag, pool_type, non_paged=True)
        self.fallback_blocks[address] = size
        self.fallback_zeroed[address] = set()
        # Watch writes to the arena chunk holding the block (one hook per chunk).
        state = self._arenas.get("pool")
        if state is not None and state[1] - (16 << 20) <= address < state[1]:
            begin, end = state[1] - (16 << 20), state[1] - 1
        else:
            begin, end = address, address + size - 1
        if begin not in self._zero_write_hooked:
            self._zero_write_hooked.add(begin)
            self.se.add_mem_write_hook(self._record_zero_writes, begin=begin, end=end)
        return address

    def _record_zero_writes(self, _emu, _access, address, size, value, _ctx):
        """Records, per fallback block, which bytes the driver wrote a zero to
        (a write hook is installed only once a fallback block exists)."""
        if value != 0:
            return True
        for block, block_size in self.fallback_blocks.items():
            if block <= address < block + block_size:
                self.fallback_zeroed[block].update(range(address - block, min(address - block + size, block_size)))
        return True

    def unzeroed_fallback_blocks(self) -> dict[int, int]:
        """Fallback blocks (address -> size) not every byte of which the driver
        zeroed: ExAllocatePool2 returns zeroed memory, so the fallback must too."""
        return {
            address: size
            for address, size in self.fallback_blocks.items()
            if len(self.fallback_zeroed[address]) != size
        }

    def _ex_free_pool_with_tag(self, argv, _original):
        address, tag = argv[0], argv[1] & 0xFFFFFFFF
        self.frees.append((address, tag))
        self.events.append(("ExFreePoolWithTag", address))
        block = self.pool.pop(address, None)
        if block is None:
            raise KernelFault(f"ExFreePoolWithTag({address:#x}): not a live pool block (double free?)")
        if block.tag != tag:
            raise KernelFault(f"ExFreePoolWithTag({address:#x}) with tag {tag:#x}, allocated with {block.tag:#x}")
        # Poison: a use after free reads 0xDD... rather than plausible data.
        self.write(address, b"\xDD" * block.size)
        return None

    def _ex_free_pool(self, argv, _original):
        # The driver frees only SeLocateProcessImageName's results this way.
        address = argv[0]
        self.events.append(("ExFreePool", address))
        if address not in self.image_name_blocks:
            raise KernelFault(f"ExFreePool({address:#x}): not a block the kernel handed out (double free?)")
        del self.image_name_blocks[address]
        return None

    # ----------------------------------------------------- process tracking

    def _ps_set_create_process_notify_routine_ex(self, argv, _original):
        routine, remove = argv[0], argv[1] & 0xFF
        self.events.append(("PsSetCreateProcessNotifyRoutineEx", remove))
        if remove:
            if routine not in self.notify_routines:
                return STATUS_PROCEDURE_NOT_FOUND
            self.notify_routines.remove(routine)
            return STATUS_SUCCESS
        if not self.in_image(routine):
            raise KernelFault(f"notify routine {routine:#x} is outside the image")
        if self.notify_register_result is not None:
            return self.notify_register_result
        if routine in self.notify_routines:
            return STATUS_INVALID_PARAMETER
        self.notify_routines.append(routine)
        return STATUS_SUCCESS

    def _zw_query_system_information(self, argv, _original):
        info_class, buffer, length, return_length = argv[0] & 0xFFFFFFFF, argv[1], argv[2] & 0xFFFFFFFF, argv[3]
        if info_class != SYSTEM_PROCESS_INFORMATION_CLASS:
            status = STATUS_INVALID_INFO_CLASS
        elif self.process_list_results:
            status = self.process_list_results.popleft()
        else:
            status = None
        if status is not None:
            self.process_list_queries.append((info_class, length, status))
            return status
        data = self.process_list(buffer)
        if return_length:
            self._write_u32(return_length, len(data))
        status = STATUS_INFO_LENGTH_MISMATCH if len(data) > length else STATUS_SUCCESS
        self.process_list_queries.append((info_class, length, status))
        self.events.append(("ZwQuerySystemInformation", status))
        if status == STATUS_SUCCESS:
            self.write(buffer, data)
        return status

    def process_list(self, buffer: int) -> bytes:
        """The SystemProcessInformation answer for a buffer at ``buffer``:
        one entry per running process, chained by NextEntryOffset (0 ends
        it), each with one thread record and its image file name (a
        UNICODE_STRING pointing into the buffer, as Windows does)."""
        entries = []
        processes = list(self.running.values())
        offset = 0
        for index, process in enumerate(processes):
            name = process.image_path.rsplit("\\", 1)[-1].encode("utf-16-le")
            name_at = SYSTEM_PROCESS_INFORMATION_SIZE + SYSTEM_THREAD_INFORMATION_SIZE
            size = (name_at + len(name) + 2 + 7) & ~7
            entry = bytearray(size)
            last = index == len(processes) - 1
            struct.pack_into("<II", entry, 0, 0 if last else size, 1)  # NextEntryOffset, NumberOfThreads
            struct.pack_into("<Q", entry, 32, process.create_time)  # CreateTime
            if name:
                struct.pack_into("<HHIQ", entry, 56, len(name), len(name) + 2, 0, buffer + offset + name_at)
                entry[name_at : name_at + len(name)] = name
            struct.pack_into("<iIQQ", entry, 72, 8, 0, process.pid, 0)  # BasePriority, UniqueProcessId, Inherited...
            entries.append(bytes(entry))
            offset += size
        return b"".join(entries)

    def _ps_lookup_process_by_process_id(self, argv, _original):
        pid, process_out = argv[0], argv[1]
        process = self.running.get(pid)
        if process is None or pid == 0:
            return STATUS_INVALID_CID
        process.references += 1
        self._write_u64(process_out, process.address)
        return STATUS_SUCCESS

    def _ps_get_process_exit_status(self, argv, _original):
        return self._process_object(argv[0], "PsGetProcessExitStatus").exit_status

    def _obf_dereference_object(self, argv, _original):
        process = self._process_object(argv[0], "ObfDereferenceObject")
        if process.references <= 0:
            raise KernelFault(f"ObfDereferenceObject({argv[0]:#x}): the driver holds no reference to pid {process.pid}")
        process.references -= 1
        return process.references + 1  # the object's count, with the kernel's own reference

    def _ps_get_process_create_time_quad_part(self, argv, _original):
        return self._process_object(argv[0], "PsGetProcessCreateTimeQuadPart").create_time

    def _se_locate_process_image_name(self, argv, _original):
        process = self._process_object(argv[0], "SeLocateProcessImageName")
        name_out = argv[1]
        self.image_name_lookups += 1
        if self.in_pre_operation:
            raise KernelFault(
                "SeLocateProcessImageName inside a pre-operation callback (it may do file-system I/O "
                "on a thread that holds file-system locks)"
            )
        if process.image_name_status != STATUS_SUCCESS:
            return process.image_name_status
        # One paged-pool block: the UNICODE_STRING followed by its buffer
        # (System's is an empty string), freed by the caller with ExFreePool.
        data = process.image_path.encode("utf-16-le")
        block = self._arena_alloc("SeLocateProcessImageName", 16 + len(data) + 2)
        self.write(block, struct.pack("<HHIQ", len(data), len(data) + 2, 0, block + 16) + data + b"\0\0")
        self.image_name_blocks[block] = process.pid
        self._write_u64(name_out, block)
        return STATUS_SUCCESS

    def _io_thread_to_process(self, argv, _original):
        return self._thread_object(argv[0], "IoThreadToProcess").process.address

    def _io_get_current_process(self, _argv, _original):
        # The attached process, if the thread is attached to another one.
        return self.eprocess(self.current_pid if self.attached_pid is None else self.attached_pid)

    def _ps_get_current_thread(self, _argv, _original):
        """The current thread: an ETHREAD of current_pid with tid current_tid
        (made on first use), whatever process it is attached to."""
        owner = self.eprocess(self.current_pid)
        for address, thread in self.threads.items():
            if thread.tid == self.current_tid and thread.process.address == owner:
                return address
        return self.new_thread(self.current_pid, self.current_tid)

    def _ps_get_current_thread_id(self, _argv, _original):
        return self.current_tid

    def _ps_get_thread_id(self, argv, _original):
        return self._thread_object(argv[0], "PsGetThreadId").tid

    # ------------------------------------------------- synchronisation, time

    def _ke_delay_execution_thread(self, argv, _original):
        interval = argv[2]
        value = struct.unpack("<q", self.read(interval, 8))[0]
        self.delays.append(value)
        return STATUS_SUCCESS

    def _ke_query_system_time_precise(self, argv, _original):
        self.system_time += 10
        self._write_u64(argv[0], self.system_time)
        return None


    def _service_path(self) -> str:
        return self.emu.drivers[-1].get_reg_path()

    def _zw_open_key(self, argv, _original):
        # Speakeasy's registry cannot hold the values the tests need (its
        # ZwQueryValueKey crashes on REG_DWORD), so the whole service key is
        # faked here: the service key always exists, Parameters when the test
        # gives it.
        handle_out, access, attributes = argv[:3]
        access &= 0xFFFFFFFF
        path = self._key_path(attributes)
        if path is None:
            return STATUS_INVALID_HANDLE
        if access & (KEY_SET_VALUE | KEY_CREATE_SUB_KEY) and self.open_for_write_status is not None:
            return self.open_for_write_status
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
        self.key_access[handle] = access
        self._write_u64(handle_out, handle)
        return STATUS_SUCCESS

    def _key_path(self, attributes: int) -> Optional[str]:
        """The full path an OBJECT_ATTRIBUTES names (None: unknown root handle)."""
        raw = self.read(attributes, 48)
        root = _u64(raw, 8)
        name = self._read_unicode_string(_u64(raw, 16))
        self.key_opens.append((name, root))
        if root:
            if root not in self.open_keys:
                return None
            return self.open_keys[root] + "\\" + name
        return name

    def _zw_create_key(self, argv, _original):
        # Only Parameters under the service key is the driver's to create.
        handle_out, access, attributes, _title, _class, _options, disposition = argv[:7]
        access &= 0xFFFFFFFF
        root = _u64(self.read(attributes, 16), 8)
        path = self._key_path(attributes)
        if path is None:
            return STATUS_INVALID_HANDLE
        service = self._service_path().lower()
        if path.lower() != service + "\\parameters":
            raise KernelFault(f"ZwCreateKey({path}): the driver creates no key but its Parameters")
        status = self.create_key_status
        exists = self.parameters is not None
        if status is None and not exists and root and not self.key_access.get(root, 0) & KEY_CREATE_SUB_KEY:
            status = STATUS_ACCESS_DENIED  # creating a subkey needs KEY_CREATE_SUB_KEY on the parent
        self.key_creates.append((path, access, status or STATUS_SUCCESS))
        if status is not None:
            return status
        if not exists:
            self.parameters = {}
        handle = self._new_handle()
        self.open_keys[handle] = path
        self.key_access[handle] = access
        self._write_u64(handle_out, handle)
        if disposition:
            self._write_u32(disposition, REG_OPENED_EXISTING_KEY if exists else REG_CREATED_NEW_KEY)
        return STATUS_SUCCESS

    def _zw_set_value_key(self, argv, _original):
        handle, name_address, _title, value_type, data, size = argv[:6]
        value_type &= 0xFFFFFFFF
        size &= 0xFFFFFFFF
        self.set_value_attempts += 1
        self.events.append(("ZwSetValueKey", size))
        if handle not in self.open_keys:
            raise KernelFault(f"ZwSetValueKey({handle:#x}): not an open key handle")
        path = self.open_keys[handle]
        if not path.lower().endswith("\\parameters"):
            raise KernelFault(f"ZwSetValueKey on {path}: the driver writes only its Parameters key")
        if not self.key_access.get(handle, 0) & KEY_SET_VALUE:
            return STATUS_ACCESS_DENIED
        if self.set_value_status is not None:
            return self.set_value_status
        name = self._read_unicode_string(name_address)
        value = self.read(data, size) if size else b""
        self.registry_writes.append(RegistryWrite(path, name, value_type, value))
        self.parameters[name] = (value_type, value)
        # Windows calls the registry callbacks inside ZwSetValueKey; a hook
        # cannot call back into emulated code, so the notification is
        # delivered when the driver code that wrote returns (the callback
        # only enqueues a work item, which runs later anyway).
        self.registry_notifications_pending.append((name, value_type, value, False))
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
        self.key_access.pop(handle, None)
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
        # Return addresses into the image still on the stack: where it came from.
        rsp = self.emu.reg_read(se_arch.AMD64_REG_RSP)
        depth = max(0, min(0x2000, self.stack_region + STACK_REGION_SIZE - rsp))
        raw = self.read(rsp, depth)
        self.bugcheck_stack = [
            word for word in struct.unpack(f"<{depth // 8}Q", raw[: depth // 8 * 8]) if self.in_image(word)
        ]
        # A bugcheck never returns: stop here, the run is reported as faulted.
        self.emu.curr_run.error = {"type": "bugcheck", "code": hex(argv[0])}
        self.emu.stop()
        return None

    # ---------------------------------------------------------------- WDF

    def _wdf_version_bind(self, argv, original):
        driver_object, registry_path, bind_info, globals_out = argv[:4]
        raw = self.read(bind_info, WDF_BIND_INFO_SIZE)
        bind = WdfBind(
            size=_u32(raw, 0),
            component=self._read_wide_c_string(_u64(raw, 8)),
            version=struct.unpack_from("<III", raw, 16),
            func_count=_u32(raw, 28),
            func_table_slot=_u64(raw, 32),
            module=_u64(raw, 40),
        )
        self.wdf_binds.append(bind)
        check_kmdf_bind(bind)
        status = original(argv)
        if status != STATUS_SUCCESS:
            return status
        # The table of the bound version: Speakeasy's entry where it has one
        # (its table has 422 slots, most NULL), else a trap that reports the
        # function by name when called. Slots past the bound version's count
        # (up to 1.33's 458) trap too: the real loader hands out only `count`
        # entries, so a call through one is a wild jump on Windows.
        count = bind.func_count
        table_slot = bind.func_table_slot
        speakeasy_table = self._read_u64(table_slot)
        names = speakeasy_wdf_function_names()
        existing = self.read(speakeasy_table, 8 * len(names))
        slots = []
        major, minor, _build = bind.version
        for index in range(max(count, WDF_FUNCTION_COUNT_1_33)):
            name = wdf_function_name(index)
            if index >= count:
                trap = f"BeyondKmdf{major}_{minor}_{name}"
                self._hook("wdfldr", trap, 1, self._beyond_bound_table(name, index, count, bind.version))
                slots.append(self.emu.add_callback("wdfldr", trap))
                continue
            pointer = _u64(existing, index * 8) if index < len(names) else 0
            if not pointer:
                pointer = self.emu.add_callback("wdfldr", name)
            slots.append(pointer)
        table = self.se.mem_alloc(8 * len(slots), tag=f"harness.WdfFunctions_{major:02}0{minor:02}")
        self.write(table, struct.pack(f"<{len(slots)}Q", *slots))
        self._write_u64(table_slot, table)
        self.wdf_function_table = table
        # Speakeasy's globals block is 0x100 zero bytes: big enough for
        # WDF_DRIVER_GLOBALS (56), whose DisplaceDriverUnload WdfDriverCreate sets.
        self.wdf_driver_globals = self._read_u64(globals_out)
        return STATUS_SUCCESS

    @staticmethod
    def _beyond_bound_table(name: str, index: int, count: int, version: tuple[int, int, int]):
        def handler(_argv, _original):
            raise KernelFault(
                f"{name} (table index {index}) called through the function table, but the bound "
                f"KMDF {version[0]}.{version[1]} has only {count} functions: on Windows this "
                "reads past the loader's table"
            )

        return handler

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

    def _wdf_control_device_init_allocate(self, argv, _original):
        _globals, driver, sddl = argv[:3]
        if driver != WDFDRIVER_HANDLE:
            raise KernelFault(f"WdfControlDeviceInitAllocate({driver:#x}): not the WDFDRIVER")
        init = self._arena_alloc("WDFDEVICE_INIT", 0x40)
        self.device_inits[init] = {"sddl": self._read_unicode_string(sddl), "name": None}
        self.events.append(("WdfControlDeviceInitAllocate", init))
        return init

    def _wdf_device_init_assign_name(self, argv, _original):
        init, name = argv[1], argv[2]
        if init not in self.device_inits:
            raise KernelFault(f"WdfDeviceInitAssignName({init:#x}): not a live WDFDEVICE_INIT")
        self.device_inits[init]["name"] = self._read_unicode_string(name)
        return STATUS_SUCCESS

    def _wdf_device_init_free(self, argv, _original):
        init = argv[1]
        if self.device_inits.pop(init, None) is None:
            raise KernelFault(f"WdfDeviceInitFree({init:#x}): not a live WDFDEVICE_INIT")
        self.events.append(("WdfDeviceInitFree", init))
        return None

    def _wdf_device_create(self, argv, _original):
        init_slot, attributes, device_out = argv[1], argv[2], argv[3]
        init = self._read_u64(init_slot)
        if init not in self.device_inits:
            raise KernelFault(f"WdfDeviceCreate: {init:#x} is not a live WDFDEVICE_INIT")
        raw = self.read(attributes, WDF_OBJECT_ATTRIBUTES_SIZE) if attributes else None
        device = self._arena_alloc("WDFDEVICE", 0x40)
        self.devices[device] = dict(
            self.device_inits.pop(init),
            attributes=None if raw is None else {
                "Size": _u32(raw, 0),
                "ExecutionLevel": _u32(raw, 24),
                "SynchronizationScope": _u32(raw, 28),
                "ParentObject": _u64(raw, 32),
            },
            links=[],
            queue=None,
            queue_config=None,
            queues=0,
            finished=False,
        )
        self._write_u64(init_slot, 0)  # the framework owns the init now
        self._write_u64(device_out, device)
        self.events.append(("WdfDeviceCreate", device))
        return STATUS_SUCCESS

    def _wdf_device_create_symbolic_link(self, argv, _original):
        device, name = argv[1], argv[2]
        if device not in self.devices:
            raise KernelFault(f"WdfDeviceCreateSymbolicLink({device:#x}): not a device")
        self.devices[device]["links"].append(self._read_unicode_string(name))
        return STATUS_SUCCESS

    def _wdf_io_queue_create(self, argv, _original):
        device, config, attributes, queue_out = argv[1], argv[2], argv[3], argv[4]
        if device not in self.devices:
            raise KernelFault(f"WdfIoQueueCreate({device:#x}): not a device")
        # Read with the KMDF 1.33 layout (TOOLCHAIN.md): Speakeasy's definition
        # has EvtIoDeviceControl 16 bytes off.
        raw = self.read(config, WDF_IO_QUEUE_CONFIG_SIZE)
        fields = {}
        for name, offset in WDF_IO_QUEUE_CONFIG_OFFSETS.items():
            if name in ("AllowZeroLengthRequests", "DefaultQueue"):
                fields[name] = raw[offset]  # BOOLEAN
            elif name.startswith("Evt") or name in ("Driver",):
                fields[name] = _u64(raw, offset)
            elif name == "Settings":
                fields[name] = raw[offset : offset + 8]
            else:
                fields[name] = _u32(raw, offset)
        fields["attributes"] = attributes
        fields["queue_out"] = queue_out
        record = self.devices[device]
        record["queues"] += 1
        if fields["DefaultQueue"]:
            record["queue_config"] = fields
            record["queue"] = fields["EvtIoDeviceControl"]
            handle = WDFQUEUE_HANDLE
        elif fields["DispatchType"] == WdfIoQueueDispatchManual:
            # A manual queue (the ask path's pended requests): the driver
            # forwards requests to it and retrieves them itself.
            handle = MANUAL_QUEUE_HANDLE_BASE + 0x10 * len(self.manual_queues)
            self.manual_queues[handle] = ManualQueue(handle, fields, collections.deque())
            record.setdefault("manual_queues", []).append(handle)
            if not queue_out:
                raise KernelFault("WdfIoQueueCreate of a manual queue without a handle: it could never be used")
        else:
            raise KernelFault(f"WdfIoQueueCreate: a non-default queue of dispatch type {fields['DispatchType']} (not modelled)")
        if queue_out:
            self._write_u64(queue_out, handle)
        return STATUS_SUCCESS

    def _wdf_control_finish_initializing(self, argv, _original):
        device = argv[1]
        if device not in self.devices:
            raise KernelFault(f"WdfControlFinishInitializing({device:#x}): not a device")
        self.devices[device]["finished"] = True
        self.devices[device]["queue_before_finish"] = self.devices[device]["queues"] > 0
        return None

    def _wdf_object_delete(self, argv, _original):
        handle = argv[1]
        self.events.append(("WdfObjectDelete", handle))
        device = self.devices.pop(handle, None)
        if device is None:
            raise KernelFault(f"WdfObjectDelete({handle:#x}): not a live framework object")
        for item_handle, item in self.work_items.items():
            if item["parent"] == handle and not item["deleted"]:
                if item["queued"]:
                    raise KernelFault(f"control device deleted with work item {item_handle:#x} still queued (flush first)")
                item["deleted"] = True
        # Deleting the device deletes its queues: requests still in a manual
        # queue are cancelled (EvtIoCanceledOnQueue cannot run from inside
        # this call here: the harness completes them as KMDF does without one).
        for queue_handle in device.get("manual_queues", []):
            queue = self.manual_queues[queue_handle]
            if queue.requests and queue.config.get("EvtIoCanceledOnQueue"):
                raise KernelFault("device deleted with requests in a queue that has EvtIoCanceledOnQueue (not modelled)")
            while queue.requests:
                request = self.requests[queue.requests.popleft()]
                request.queue = None
                self._complete(request, STATUS_CANCELLED, 0)
        return None

    def _live_request(self, handle: int, api: str) -> FakeRequest:
        request = self.requests.get(handle)
        if request is None:
            completed = any(r.handle == handle for r in self.sent_requests)
            raise KernelFault(
                f"{api}({handle:#x}): " + ("the request is already completed" if completed else "not a request")
            )
        return request

    def _retrieve_buffer(self, argv, which: str) -> int:
        # (Request, MinimumRequiredSize, *Buffer, *Length). Framework semantics:
        # a zero-length buffer or one under MinimumRequiredSize ->
        # STATUS_BUFFER_TOO_SMALL and nothing written; METHOD_BUFFERED input
        # and output are both the one system buffer.
        handle, minimum, buffer_out, length_out = argv[1], argv[2], argv[3], argv[4]
        api = f"WdfRequestRetrieve{which.title()}Buffer"
        request = self._live_request(handle, api)
        if self.irql > DISPATCH_LEVEL:
            raise KernelFault(f"{api} at IRQL {self.irql}")
        if not buffer_out:
            raise KernelFault(f"{api}: Buffer is required")
        length = request.input_length if which == "input" else request.output_length
        status = STATUS_BUFFER_TOO_SMALL if length == 0 or length < minimum else STATUS_SUCCESS
        request.retrievals.append((which, minimum, status))
        if status == STATUS_SUCCESS:
            self._write_u64(buffer_out, request.system_buffer)
            if length_out:
                self._write_u64(length_out, length)
        return status

    def _wdf_request_retrieve_input_buffer(self, argv, _original):
        return self._retrieve_buffer(argv, "input")

    def _wdf_request_retrieve_output_buffer(self, argv, _original):
        return self._retrieve_buffer(argv, "output")

    def _wdf_request_complete_with_information(self, argv, _original):
        handle, status, information = argv[1], argv[2] & 0xFFFFFFFF, argv[3]
        request = self._live_request(handle, "WdfRequestCompleteWithInformation")
        self._complete(request, status, information)
        return None

    def _wdf_request_complete(self, argv, _original):
        handle, status = argv[1], argv[2] & 0xFFFFFFFF
        request = self._live_request(handle, "WdfRequestComplete")
        self._complete(request, status, getattr(request, "information", 0))
        return None

    def _wdf_request_set_information(self, argv, _original):
        request = self._live_request(argv[1], "WdfRequestSetInformation")
        request.information = argv[2]
        return None

    def _complete(self, request: FakeRequest, status: int, information: int) -> None:
        if request.queue is not None:
            raise KernelFault(
                f"request {request.handle:#x} completed while in manual queue {request.queue:#x}"
                " (the framework owns it: retrieve it first)"
            )
        if information > request.output_length:
            raise KernelFault(
                f"IOCTL {request.code:#010x}: Information {information} exceeds the output buffer ({request.output_length})"
            )
        if self.spin_locks:
            # The design: take it out under the lock, complete after release.
            self.completions_under_spin_lock += 1
        request.completions.append((status, information))
        error = status >= 0xC0000000
        request.output = self.read(request.system_buffer, information) if information and not error else b""
        self.cancelable.pop(request.handle, None)
        # Completed: the framework hands the IRP back; the handle is dead.
        del self.requests[request.handle]
        self.events.append(("WdfRequestCompleteWithInformation", request.handle))
        if self.on_request_completed is not None:
            self.on_request_completed(request)

    def _wdf_device_init_set_file_object_config(self, argv, _original):
        init, config, attributes = argv[1], argv[2], argv[3]
        if init not in self.device_inits:
            raise KernelFault(f"WdfDeviceInitSetFileObjectConfig({init:#x}): not a live WDFDEVICE_INIT")
        raw = self.read(config, WDF_FILEOBJECT_CONFIG_SIZE)
        self.file_object_config = {
            "Size": _u32(raw, 0),
            "EvtDeviceFileCreate": _u64(raw, 8),
            "EvtFileClose": _u64(raw, 16),
            "EvtFileCleanup": _u64(raw, 24),
            "AutoForwardCleanupClose": _u32(raw, 32),
            "FileObjectClass": _u32(raw, 36),
            "attributes": attributes,
        }
        if self.file_object_config["Size"] != WDF_FILEOBJECT_CONFIG_SIZE:
            raise KernelFault(f"WDF_FILEOBJECT_CONFIG.Size {self.file_object_config['Size']}, expected {WDF_FILEOBJECT_CONFIG_SIZE}")
        for name in ("EvtDeviceFileCreate", "EvtFileClose", "EvtFileCleanup"):
            routine = self.file_object_config[name]
            if routine and not self.in_image(routine):
                raise KernelFault(f"{name} {routine:#x} is outside the image")
        return None

    def _wdf_request_get_file_object(self, argv, _original):
        request = self._live_request(argv[1], "WdfRequestGetFileObject")
        return request.file.file_object

    def _wdf_request_forward_to_io_queue(self, argv, _original):
        handle, queue_handle = argv[1], argv[2]
        request = self._live_request(handle, "WdfRequestForwardToIoQueue")
        queue = self.manual_queues.get(queue_handle)
        if queue is None:
            raise KernelFault(f"WdfRequestForwardToIoQueue({handle:#x}, {queue_handle:#x}): not a manual queue of the driver")
        if request.queue is not None:
            raise KernelFault(f"WdfRequestForwardToIoQueue({handle:#x}): already in queue {request.queue:#x}")
        if request.cancelled:
            # Forwarding a cancelled request: the framework cancels it now.
            self._complete(request, STATUS_CANCELLED, 0)
            return STATUS_SUCCESS
        request.queue = queue_handle
        request.forwarded = True
        queue.requests.append(handle)
        self.events.append(("WdfRequestForwardToIoQueue", handle))
        return STATUS_SUCCESS

    def _wdf_io_queue_retrieve_next_request(self, argv, _original):
        queue_handle, request_out = argv[1], argv[2]
        queue = self.manual_queues.get(queue_handle)
        if queue is None:
            raise KernelFault(f"WdfIoQueueRetrieveNextRequest({queue_handle:#x}): not a manual queue")
        if not queue.requests:
            return STATUS_NO_MORE_ENTRIES
        handle = queue.requests.popleft()
        self.requests[handle].queue = None
        self.requests[handle].taken_from = queue_handle
        self._write_u64(request_out, handle)
        self.events.append(("WdfIoQueueRetrieveNextRequest", handle))
        return STATUS_SUCCESS

    def _wdf_io_queue_retrieve_request_by_file_object(self, argv, _original):
        queue_handle, file_object, request_out = argv[1], argv[2], argv[3]
        queue = self.manual_queues.get(queue_handle)
        if queue is None:
            raise KernelFault(f"WdfIoQueueRetrieveRequestByFileObject({queue_handle:#x}): not a manual queue")
        for handle in queue.requests:
            if self.requests[handle].file.file_object == file_object:
                queue.requests.remove(handle)
                self.requests[handle].queue = None
                self.requests[handle].taken_from = queue_handle
                self._write_u64(request_out, handle)
                return STATUS_SUCCESS
        return STATUS_NO_MORE_ENTRIES

    def _wdf_io_queue_get_state(self, argv, _original):
        # (Globals, Queue, QueueRequests*, DriverRequests*): the queue's
        # status bits and how many requests it holds / the driver took from it.
        queue_handle, queue_out, driver_out = argv[1], argv[2], argv[3]
        queue = self.manual_queues.get(queue_handle)
        if queue is None:
            raise KernelFault(f"WdfIoQueueGetState({queue_handle:#x}): not a manual queue")
        held = len(queue.requests)
        taken = sum(1 for r in self.requests.values() if r.taken_from == queue_handle)
        if queue_out:
            self._write_u32(queue_out, held)
        if driver_out:
            self._write_u32(driver_out, taken)
        # WdfIoQueueAcceptRequests | WdfIoQueueDispatchRequests, + NoRequests / DriverNoRequests.
        return 0x1 | 0x2 | (0x4 if not held else 0) | (0x8 if not taken else 0)

    def _wdf_request_mark_cancelable(self, argv, _original):
        request = self._live_request(argv[1], "WdfRequestMarkCancelable")
        if request.queue is not None:
            raise KernelFault("WdfRequestMarkCancelable on a request still in a queue")
        self.cancelable[request.handle] = argv[2]
        return None

    def _wdf_request_unmark_cancelable(self, argv, _original):
        request = self._live_request(argv[1], "WdfRequestUnmarkCancelable")
        if self.cancelable.pop(request.handle, None) is None:
            raise KernelFault("WdfRequestUnmarkCancelable on a request not marked cancelable")
        return STATUS_SUCCESS

    # ----------------------------------------- the registry callback (issue 13)

    def _cm_register_callback_ex(self, argv, _original):
        function, altitude, driver, context, cookie_out, reserved = argv[:6]
        if reserved:
            raise KernelFault("CmRegisterCallbackEx: Reserved must be NULL")
        if not function or not cookie_out:
            raise KernelFault("CmRegisterCallbackEx without a function or a cookie")
        name = self._read_unicode_string(altitude) if altitude else None
        self.events.append(("CmRegisterCallbackEx", name))
        if self.registry_callback_status is not None:
            return self.registry_callback_status
        if any(r["altitude"] == name for r in self.registry_callbacks.values()):
            return STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
        cookie = 0x1C00C1E0000 + len(self.registry_unregistered) + len(self.registry_callbacks)
        self.registry_callbacks[cookie] = {
            "function": function, "altitude": name, "driver": driver, "context": context,
        }
        self._write_u64(cookie_out, cookie)
        return STATUS_SUCCESS

    def _cm_unregister_callback(self, argv, _original):
        cookie = argv[0]  # LARGE_INTEGER by value: in RCX
        self.events.append(("CmUnRegisterCallback", cookie))
        if cookie not in self.registry_callbacks:
            return STATUS_INVALID_PARAMETER
        del self.registry_callbacks[cookie]
        self.registry_unregistered.append(cookie)
        return STATUS_SUCCESS

    def _cm_callback_get_key_object_id(self, argv, _original):
        cookie_address, key_object, id_out, name_out = argv[:4]
        cookie = self._read_u64(cookie_address) if cookie_address else None
        if cookie not in self.registry_callbacks or key_object not in self.key_objects:
            return STATUS_INVALID_PARAMETER
        if id_out:
            self._write_u64(id_out, key_object)
        if name_out:
            # The system's name: the caller must not write or free it.
            self._write_u64(name_out, self.unicode_string(self.key_objects[key_object]))
        return STATUS_SUCCESS

    def _wdf_work_item_create(self, argv, _original):
        config, attributes, item_out = argv[1], argv[2], argv[3]
        raw = self.read(config, WDF_WORKITEM_CONFIG_SIZE)
        if _u32(raw, 0) != WDF_WORKITEM_CONFIG_SIZE:
            raise KernelFault(f"WdfWorkItemCreate: WDF_WORKITEM_CONFIG.Size {_u32(raw, 0)}")
        callback = _u64(raw, 8)
        if not callback or not self.in_image(callback):
            raise KernelFault(f"WdfWorkItemCreate: EvtWorkItemFunc {callback:#x} is not driver code")
        if not attributes:
            raise KernelFault("WdfWorkItemCreate without attributes: a work item needs a parent")
        attrs = self.read(attributes, WDF_OBJECT_ATTRIBUTES_SIZE)
        if _u32(attrs, 0) != WDF_OBJECT_ATTRIBUTES_SIZE:
            raise KernelFault(f"WdfWorkItemCreate: WDF_OBJECT_ATTRIBUTES.Size {_u32(attrs, 0)}")
        parent = _u64(attrs, 32)
        if parent not in self.devices:
            raise KernelFault(f"WdfWorkItemCreate: parent {parent:#x} is not a live device")
        if _u32(attrs, 24) == 0 or _u32(attrs, 28) == 0:
            raise KernelFault("WdfWorkItemCreate: attributes with an invalid execution level or synchronization scope")
        handle = WDFWORKITEM_HANDLE_BASE + 0x10 * len(self.work_items)
        self.work_items[handle] = {
            "callback": callback, "parent": parent, "queued": False, "deleted": False,
            "serialized": raw[16], "flushes": 0,
        }
        self._write_u64(item_out, handle)
        self.events.append(("WdfWorkItemCreate", handle))
        return STATUS_SUCCESS

    def _live_work_item(self, handle: int, api: str) -> dict:
        item = self.work_items.get(handle)
        if item is None or item["deleted"]:
            raise KernelFault(f"{api}({handle:#x}): not a live work item")
        return item

    def _wdf_work_item_enqueue(self, argv, _original):
        item = self._live_work_item(argv[1], "WdfWorkItemEnqueue")
        self.work_item_enqueues += 1
        # An item already queued is not queued again (WdfWorkItemEnqueue).
        item["queued"] = True
        return None

    def _wdf_work_item_flush(self, argv, _original):
        handle = argv[1]
        item = self._live_work_item(handle, "WdfWorkItemFlush")
        item["flushes"] += 1
        self.events.append(("WdfWorkItemFlush", handle))
        if not item["queued"]:
            return None
        # Queued: the flush runs it and returns after. A hook cannot call
        # driver code, so (as for FxFrameworkDriverUnload) "return" into the
        # callback with the handle in RCX; it returns to the flush's caller.
        item["queued"] = False
        self.work_item_runs += 1
        emu = self.emu
        rsp = emu.reg_read(se_arch.AMD64_REG_RSP) - 8
        self._write_u64(rsp, item["callback"])
        emu.reg_write(se_arch.AMD64_REG_RSP, rsp)
        emu.reg_write(se_arch.AMD64_REG_RCX, handle)
        return None

    def queued_work_items(self) -> list[int]:
        return [h for h, item in self.work_items.items() if item["queued"] and not item["deleted"]]

    def run_work_items(self) -> int:
        """Runs every queued work item as a system worker thread would
        (PASSIVE_LEVEL, under the IRQL verifier); returns how many ran."""
        ran = 0
        while True:
            queued = self.queued_work_items()
            if not queued:
                return ran
            handle = queued[0]
            item = self.work_items[handle]
            item["queued"] = False
            assert self.irql == 0, "work items run at PASSIVE_LEVEL"
            self._run(item["callback"], [handle], f"EvtWorkItem({handle:#x})")
            self.work_item_runs += 1
            ran += 1
            self._deliver_registry_notifications()

    def parameters_key_name(self) -> str:
        """The Parameters key's full name as a registry callback sees it
        (ControlSet001 where the driver's registry path says CurrentControlSet)."""
        service = self._service_path()
        lower = service.lower()
        marker = "\\currentcontrolset\\"
        if marker in lower:
            index = lower.index(marker)
            service = service[:index] + "\\ControlSet001\\" + service[index + len(marker):]
        return service + "\\Parameters"

    def key_object(self, name: str) -> int:
        """A registry key object (for the callback's Object fields) named ``name``."""
        for address, known in self.key_objects.items():
            if known == name:
                return address
        address = self._arena_alloc("harness.KEY_OBJECT", 0x40)
        self.key_objects[address] = name
        return address

    def registry_set_value(
        self, name: str, value: Optional[tuple[int, bytes]], *, key: Optional[str] = None, status: int = STATUS_SUCCESS
    ) -> None:
        """Another thread sets (``value``) or deletes (None) ``name`` under
        ``key`` (default: the driver's Parameters key): the registry (when
        ``status`` succeeds) changes, and every registered registry callback
        is called as Windows calls it, at PASSIVE_LEVEL: the pre-notification,
        then the post-notification with REG_POST_OPERATION_INFORMATION."""
        parameters_key = self.parameters_key_name()
        key = key or parameters_key
        if status == STATUS_SUCCESS and key == parameters_key:
            if value is None:
                if self.parameters is not None:
                    self.parameters.pop(name, None)
            else:
                if self.parameters is None:
                    self.parameters = {}
                self.parameters[name] = value
        self._notify_registry(key, name, value, value is None, status)

    def _deliver_registry_notifications(self) -> None:
        pending, self.registry_notifications_pending = self.registry_notifications_pending, []
        for name, value_type, data, delete in pending:
            self._notify_registry(self.parameters_key_name(), name, (value_type, data), delete, STATUS_SUCCESS)

    def _notify_registry(self, key: str, name: str, value: Optional[tuple[int, bytes]], delete: bool, status: int) -> None:
        key_object = self.key_object(key)
        name_string = self.unicode_string(name)
        if delete:
            pre = self.se.mem_alloc(REG_DELETE_VALUE_KEY_INFORMATION_SIZE, tag="harness.REG_DELETE_VALUE_KEY_INFORMATION")
            self.write(pre, struct.pack("<QQQQQ", key_object, name_string, 0, 0, 0))
            pre_class, post_class = REG_NT_PRE_DELETE_VALUE_KEY, REG_NT_POST_DELETE_VALUE_KEY
        else:
            value_type, data = value
            buffer = self.se.mem_alloc(max(len(data), 1), tag="harness.registry value")
            self.write(buffer, data)
            pre = self.se.mem_alloc(REG_SET_VALUE_KEY_INFORMATION_SIZE, tag="harness.REG_SET_VALUE_KEY_INFORMATION")
            self.write(pre, struct.pack("<QQIIQIIQQQ", key_object, name_string, 0, value_type, buffer, len(data), 0, 0, 0, 0))
            pre_class, post_class = REG_NT_PRE_SET_VALUE_KEY, REG_NT_POST_SET_VALUE_KEY
        post = self.se.mem_alloc(REG_POST_OPERATION_INFORMATION_SIZE, tag="harness.REG_POST_OPERATION_INFORMATION")
        self.write(post, struct.pack("<QIIQIIQQQ", key_object, status & 0xFFFFFFFF, 0, pre, status & 0xFFFFFFFF, 0, 0, 0, 0))
        for registration in list(self.registry_callbacks.values()):
            for notify_class, argument in ((pre_class, pre), (post_class, post)):
                result = self._run(
                    registration["function"], [registration["context"], notify_class, argument],
                    f"RegistryCallback({notify_class})",
                ) & 0xFFFFFFFF
                if result != STATUS_SUCCESS:
                    raise KernelFault(f"the registry callback returned {result:#010x} for class {notify_class}")

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


def symbolize(image: str, addresses: list[int]) -> str:
    """Function and line of each address (llvm-symbolizer-16 reads the PDB
    next to the image); plain addresses when the tool is missing."""
    if not addresses:
        return "  (none)"
    try:
        result = subprocess.run(
            ["llvm-symbolizer-16", f"--obj={image}", "--inlining",
             *[hex(a) for a in addresses]],
            capture_output=True, text=True, timeout=30,
        )
        blocks = result.stdout.strip().split("\n\n")
    except (OSError, subprocess.SubprocessError):
        blocks = [""] * len(addresses)
    return "\n".join(
        f"  {address:#x} " + " <- ".join(block.split("\n")[::2][:1] + [f"({line})" for line in block.split("\n")[1::2][:1]])
        for address, block in zip(addresses, blocks)
    )


_WDF_NAMES: Optional[list[Optional[str]]] = None


def wdf_function_name(index: int) -> str:
    """The KMDF function at table slot ``index``."""
    names = speakeasy_wdf_function_names()
    if index < len(names) and names[index]:
        return names[index]
    if index in WDF_FUNCTION_NAMES_UNNAMED_BY_SPEAKEASY:
        return WDF_FUNCTION_NAMES_UNNAMED_BY_SPEAKEASY[index]
    return WDF_FUNCTION_NAMES_PAST_SPEAKEASY.get(index, f"WdfFunctionIndex{index}")


def check_kmdf_bind(bind: "WdfBind", table: dict = SUPPORT_TABLE) -> None:
    """What the floor's WDFLDR would accept (driver/windows-support.toml):
    the plain 48-byte bind info for "KmdfLibrary", a KMDF version the floor
    ships, with exactly that version's function count, and the version the
    table says the driver binds. Raises KernelFault otherwise."""
    problems = []
    major, minor, _build = bind.version
    version = (major, minor)
    floor = floor_kmdf_version(table)
    counts = {_kmdf_key(v): c for v, c in table["kmdf_function_count"].items()}
    floor_name = table["floor"]["name"]
    if bind.size != WDF_BIND_INFO_SIZE:
        problems.append(f"WDF_BIND_INFO.Size {bind.size}, expected {WDF_BIND_INFO_SIZE}")
    if bind.component != "KmdfLibrary":
        problems.append(f"component {bind.component!r}, expected 'KmdfLibrary'")
    if version > floor:
        problems.append(f"binds KMDF {major}.{minor}, which {floor_name} does not ship (it has KMDF {floor[0]}.{floor[1]})")
    if version not in counts:
        problems.append(f"binds KMDF {major}.{minor}, whose function count windows-support.toml does not list")
    elif bind.func_count != counts[version]:
        problems.append(f"FuncCount {bind.func_count}, but KMDF {major}.{minor} has {counts[version]} functions")
    if version != _kmdf_key(table["bind"]["kmdf"]):
        problems.append(f"binds KMDF {major}.{minor}, windows-support.toml [bind] says {table['bind']['kmdf']}")
    if problems:
        raise KernelFault("WdfVersionBind refused: " + "; ".join(problems))


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
