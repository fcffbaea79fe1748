"""Issue 5: the control plane of the real driver, driven through its WDF queue.

Every IOCTL here goes the way the framework delivers it
(`KernelHarness.ioctl`): a METHOD_BUFFERED system buffer, a WDFREQUEST, the
EvtIoDeviceControl the driver put in its WDF_IO_QUEUE_CONFIG called with all
five arguments, WdfRequestRetrieve{Input,Output}Buffer and exactly one
WdfRequestCompleteWithInformation. Mirrors `mod control_plane` of
driver/src/end_to_end_tests.rs, whose scenarios run there against Rust
doubles of the kernel."""

from __future__ import annotations

import struct
import tomllib
import zlib
from pathlib import Path

import pytest

from kernel_harness import (
    AUDIT_RECORD_BYTES,
    EVENTS_HEADER_SIZE,
    IOCTL_GET_POLICY,
    IOCTL_GET_RULE_COUNTERS,
    IOCTL_GET_STATUS,
    IOCTL_READ_EVENTS,
    IOCTL_RESET_COUNTERS,
    IOCTL_SET_POLICY,
    KEY_WRITE,
    OB_OPERATION_HANDLE_CREATE as CREATE,
    POLICY_HEADER_SIZE,
    REG_BINARY,
    SET_POLICY_PERSIST,
    STATUS_ACCESS_DENIED,
    STATUS_BUFFER_OVERFLOW,
    STATUS_BUFFER_TOO_SMALL,
    STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER,
    STATUS_SIZE,
    STATUS_SUCCESS,
    WDF_IO_QUEUE_CONFIG_SIZE,
    WdfExecutionLevelPassive,
    WdfFalse,
    WdfIoQueueDispatchSequential,
    AuditRecord,
    KernelHarness,
    RegistryWrite,
    image_path,
    reg_binary,
    reg_dword,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

PROCESS_TERMINATE = 0x0001
PROCESS_VM_WRITE = 0x0020
PROCESS_VM_READ = 0x0010
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
THREAD_SUSPEND_RESUME = 0x0002

AGENT = 1000
ATTACKER = 2000
EDITOR = 3000
SYSTEM = 4

# The policy of end_to_end_tests.rs.
POLICY = r"""
[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE", "PROCESS_VM_WRITE"]

[[rule]]
name = "agent-threads"
target = { name = "agent.exe" }
objects = "thread"
strip = ["THREAD_SUSPEND_RESUME"]

[[rule]]
name = "agent-reads-watched"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_VM_READ"]
mode = "audit"
"""

# What a new policy replaces it with: protects tool.exe, no longer agent.exe.
REPLACEMENT = r"""
[[rule]]
name = "tool"
target = { name = "tool.exe" }
strip = ["PROCESS_TERMINATE"]
"""

IMAGES = {AGENT: image_path("agent.exe"), ATTACKER: image_path("tool.exe"), EDITOR: image_path("editor.exe")}


# ---------------------------------------------------------------- helpers


def policy_id(blob: bytes) -> int:
    """The policy id: the blob's checksum field (FORMAT.md)."""
    return struct.unpack_from("<I", blob, 12)[0]


def rechecksum(blob: bytearray | bytes) -> bytes:
    """Recomputes a blob's CRC-32 (computed with its own field zeroed), so a
    crafted defect is what the decoder meets, not a checksum mismatch."""
    blob = bytearray(blob)
    struct.pack_into("<I", blob, 12, 0)
    struct.pack_into("<I", blob, 12, zlib.crc32(bytes(blob)))
    return bytes(blob)


def set_policy_input(blob: bytes, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack("<II", flags, len(blob) if length is None else length) + blob


def driver_version() -> int:
    """major << 16 | minor << 8 | patch of the workspace version."""
    version = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    major, minor, patch = (int(part) for part in version.split("-")[0].split("."))
    return major << 16 | minor << 8 | patch


def decode_status(data: bytes) -> dict:
    assert len(data) == STATUS_SIZE
    words = struct.unpack_from("<8I", data, 0)
    counters = struct.unpack_from("<9Q", data, 32)
    altitude_len = struct.unpack_from("<H", data, 104)[0]
    assert altitude_len <= 40
    return {
        "protocol_version": words[0],
        "driver_version": words[1],
        "flags": words[2],
        "policy_id": words[3],
        "rule_count": words[4],
        "tracked_processes": words[5],
        "last_error": words[6],
        "audit_capacity": words[7],
        "counters": dict(zip(
            ("seen", "modified", "audited", "skipped_kernel", "skipped_self", "exempt",
             "unclassified", "events_dropped", "events_pending"),
            counters,
        )),
        "altitude": data[106 : 106 + 2 * altitude_len].decode("utf-16-le"),
        "altitude_padding": data[106 + 2 * altitude_len : 186],
        # Protocol version 2 (issue 12): the ask part at 188..272.
        "ask": decode_ask_status(data),
        # Issue 13: policy updates at 272..285.
        "policy_updates": decode_policy_updates(data),
        "reserved": data[186:188] + data[285:],
    }


POLICY_SOURCE_NAMES = {0: None, 1: "boot", 2: "control", 3: "registry"}


def decode_policy_updates(data: bytes) -> dict:
    """Status.policy_updates (crates/procguard-protocol/src/ioctl.rs, offsets 272..285)."""
    applied, rejected, last_rejected_status = struct.unpack_from("<IIi", data, 272)
    return {
        "applied": applied,
        "rejected": rejected,
        "last_rejected_status": last_rejected_status & 0xFFFFFFFF,
        "source": POLICY_SOURCE_NAMES.get(data[284], f"invalid({data[284]})"),
    }


ASK_COUNTER_NAMES = (
    "asked", "answered", "timed_out", "no_handler", "pool_full", "unaskable", "cancelled", "late_replies",
)


def decode_ask_status(data: bytes) -> dict:
    """The ask part of a protocol-2 status (crates/procguard-protocol/src/ioctl.rs)."""
    handler_pid = struct.unpack_from("<I", data, 188)[0]
    counters = struct.unpack_from("<8Q", data, 192)
    timeout_ms, slots, in_flight, workers_waiting = struct.unpack_from("<4I", data, 256)
    return {
        "handler_pid": handler_pid,
        "counters": dict(zip(ASK_COUNTER_NAMES, counters)),
        "timeout_ms": timeout_ms,
        "slots": slots,
        "in_flight": in_flight,
        "workers_waiting": workers_waiting,
    }


def status(kernel) -> dict:
    result = kernel.ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE)
    assert (result.status, result.information) == (STATUS_SUCCESS, STATUS_SIZE)
    return decode_status(result.output)


def set_policy(kernel, blob: bytes, flags: int = 0) -> int:
    result = kernel.ioctl(IOCTL_SET_POLICY, set_policy_input(blob, flags), 0)
    assert result.information == 0
    return result.status


def get_policy(kernel, output_length: int = 1 << 16):
    result = kernel.ioctl(IOCTL_GET_POLICY, b"", output_length)
    return result


def drain(kernel, output_length: int = EVENTS_HEADER_SIZE + 64 * AUDIT_RECORD_BYTES):
    """IOCTL_READ_EVENTS: (records, remaining, dropped, [AuditRecord])."""
    result = kernel.ioctl(IOCTL_READ_EVENTS, b"", output_length)
    assert result.status == STATUS_SUCCESS, hex(result.status)
    records, remaining, dropped = struct.unpack_from("<IIQ", result.output, 0)
    assert result.information == EVENTS_HEADER_SIZE + records * AUDIT_RECORD_BYTES, "whole records only"
    body = result.output[EVENTS_HEADER_SIZE:]
    decoded = [
        AuditRecord.from_words(list(struct.unpack_from("<8Q", body, index * AUDIT_RECORD_BYTES)))
        for index in range(records)
    ]
    return records, remaining, dropped, decoded


def rule_counters(kernel, rules: int):
    result = kernel.ioctl(IOCTL_GET_RULE_COUNTERS, b"", 8 + 16 * rules)
    assert (result.status, result.information) == (STATUS_SUCCESS, 8 + 16 * rules)
    count, identity = struct.unpack_from("<II", result.output, 0)
    assert count == rules
    return identity, [struct.unpack_from("<QQ", result.output, 8 + 16 * index) for index in range(rules)]


def open_process(kernel, target: int, access: int, requester: int, **extra) -> int:
    return kernel.pre_operation(
        operation=CREATE, object_kind="process", target=kernel.eprocess(target),
        desired_access=access, current_pid=requester, **extra,
    ).desired_access


def assert_original_policy_in_force(kernel, blob: bytes) -> None:
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, ATTACKER) == 0, "agent still protected"
    assert open_process(kernel, ATTACKER, PROCESS_TERMINATE, AGENT) == PROCESS_TERMINATE, "tool not protected"
    result = get_policy(kernel)
    assert result.status == STATUS_SUCCESS
    assert result.output == struct.pack("<II", len(blob), policy_id(blob)) + blob
    report = status(kernel)
    assert (report["policy_id"], report["rule_count"]) == (policy_id(blob), 3)


@pytest.fixture(scope="module")
def blob(compile_policy) -> bytes:
    return compile_policy(POLICY)


@pytest.fixture(scope="module")
def replacement(compile_policy) -> bytes:
    return compile_policy(REPLACEMENT)


@pytest.fixture
def driver(kernel, blob):
    kernel.parameters = {"Policy": reg_binary(blob)}
    for pid, path in IMAGES.items():
        kernel.new_process(pid, path)
    kernel.agent_thread = kernel.new_thread(AGENT)
    kernel.load()
    return kernel


# ------------------------------------------------------- the control device


def test_the_control_device_is_admin_only_named_linked_passive_with_one_sequential_default_queue(driver):
    device = driver.control_device
    assert device["sddl"] == "D:P(A;;GA;;;SY)(A;;GA;;;BA)"
    assert device["name"] == "\\Device\\ProcGuard"
    assert device["links"] == ["\\DosDevices\\ProcGuard"]
    assert device["attributes"]["Size"] == 56
    assert device["attributes"]["ExecutionLevel"] == WdfExecutionLevelPassive
    config = device["queue_config"]
    # One default queue; the ask path's manual queues (issue 12) come on top.
    assert device["queues"] == 1 + len(device.get("manual_queues", []))
    assert config["Size"] == WDF_IO_QUEUE_CONFIG_SIZE
    assert config["DispatchType"] == WdfIoQueueDispatchSequential
    assert config["PowerManaged"] == WdfFalse
    assert config["DefaultQueue"] == 1
    assert config["AllowZeroLengthRequests"] == 0
    assert driver.in_image(config["EvtIoDeviceControl"])
    others = ("EvtIoDefault", "EvtIoRead", "EvtIoWrite", "EvtIoInternalDeviceControl", "EvtIoStop",
              "EvtIoResume", "EvtIoCanceledOnQueue")
    assert {name: config[name] for name in others} == dict.fromkeys(others, 0)
    assert device["finished"], "WdfControlFinishInitializing was called"
    assert device["queue_before_finish"], "the queue exists before the device is opened for business"


def test_an_unknown_ioctl_code_is_an_invalid_device_request_and_a_known_one_is_not(driver, blob):
    # The fifth argument (IoControlCode) is on the stack: these prove it
    # arrives (Speakeasy alone would deliver 0, see test_harness_self_check).
    for code in (0x00227FFC, 0x00126000, 0x00226003, 0x0022600C, 0):
        result = driver.ioctl(code, b"", 512)
        assert (result.status, result.information) == (STATUS_INVALID_DEVICE_REQUEST, 0), hex(code)
    known = {
        IOCTL_GET_STATUS: (b"", STATUS_SIZE),
        IOCTL_SET_POLICY: (set_policy_input(blob), 0),
        IOCTL_GET_POLICY: (b"", 4096),
        IOCTL_READ_EVENTS: (b"", 4096),
        IOCTL_RESET_COUNTERS: (b"", 0),
        IOCTL_GET_RULE_COUNTERS: (b"", 4096),
    }
    for code, (data, output_length) in known.items():
        assert driver.ioctl(code, data, output_length).status == STATUS_SUCCESS, hex(code)


def test_the_request_buffers_are_retrieved_as_the_framework_hands_them_out(driver, blob):
    result = driver.ioctl(IOCTL_SET_POLICY, set_policy_input(blob), 0)
    assert result.status == STATUS_SUCCESS
    assert [kind for kind, _minimum, _status in result.request.retrievals] == ["input"]
    result = driver.ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE)
    assert [(kind, status) for kind, _minimum, status in result.request.retrievals] == [("output", STATUS_SUCCESS)]


# ------------------------------------------------------------------- status


def test_status_reports_version_altitude_registration_policy_processes_counters_and_capacity(driver, blob):
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)  # stripped, audited
    open_process(driver, AGENT, PROCESS_VM_READ, ATTACKER)  # audit-only rule
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER, kernel_handle=True)  # kernel handle
    open_process(driver, AGENT, PROCESS_TERMINATE, AGENT)  # self-open
    open_process(driver, AGENT, PROCESS_TERMINATE, SYSTEM)  # critical requester
    open_process(driver, EDITOR, PROCESS_TERMINATE, ATTACKER)  # unprotected target
    report = status(driver)
    assert report["protocol_version"] == 2
    assert report["driver_version"] == driver_version()
    assert report["flags"] == 3, "callbacks and process notify routine registered"
    assert report["policy_id"] == policy_id(blob) == zlib.crc32(blob[:12] + bytes(4) + blob[16:])
    assert report["rule_count"] == 3
    # Every running process but Idle (pid 0): System, agent, tool, editor.
    assert report["tracked_processes"] == len(driver.running) - 1 == 4
    assert report["last_error"] == 0
    assert report["audit_capacity"] == 4096
    assert report["altitude"] == "385201"
    assert report["altitude_padding"] == bytes(len(report["altitude_padding"]))
    assert report["reserved"] == bytes(2 + 35)
    assert report["ask"]["handler_pid"] == 0
    assert report["ask"]["counters"] == dict.fromkeys(ASK_COUNTER_NAMES, 0), "no ask rule: nothing asked"
    assert report["counters"] == {
        "seen": 6, "modified": 1, "audited": 2, "skipped_kernel": 1, "skipped_self": 1, "exempt": 1,
        "unclassified": 0, "events_dropped": 0, "events_pending": 2,
    }


def test_status_reports_the_altitude_actually_registered_after_a_collision(kernel, blob):
    kernel.parameters = {"Policy": reg_binary(blob)}
    kernel.occupied_altitudes = {"385201"}
    kernel.load()
    assert status(kernel)["altitude"] == kernel.registration.altitude == "385201.1"


# ------------------------------------------------------------- set policy


def test_a_new_policy_is_followed_by_the_callbacks_on_the_next_request(driver, replacement):
    assert open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER) == 0
    assert set_policy(driver, replacement) == STATUS_SUCCESS
    assert open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER) == PROCESS_TERMINATE, "agent no longer protected"
    assert open_process(driver, ATTACKER, PROCESS_TERMINATE, AGENT) == 0, "tool protected now"
    report = status(driver)
    assert (report["policy_id"], report["rule_count"]) == (policy_id(replacement), 1)
    assert report["tracked_processes"] == 4, "the running processes were classified again"
    # Without PERSIST the registry is not touched.
    assert driver.key_creates == [] and driver.set_value_attempts == 0
    assert driver.open_keys == {}


def test_set_policy_with_persist_writes_the_exact_blob_to_parameters_policy(driver, blob, replacement):
    assert set_policy(driver, replacement, SET_POLICY_PERSIST) == STATUS_SUCCESS
    service = driver.emu.drivers[-1].get_reg_path()
    assert driver.registry_writes == [RegistryWrite(service + "\\Parameters", "Policy", REG_BINARY, replacement)]
    assert [(path, access) for path, access, _status in driver.key_creates] == [(service + "\\Parameters", KEY_WRITE)]
    assert driver.open_keys == {}, "every key handle closed"
    assert open_process(driver, ATTACKER, PROCESS_TERMINATE, AGENT) == 0, "in force now"
    # ... and from the next boot: a fresh machine with this registry loads it.
    reboot = KernelHarness(driver.sys_path)
    reboot.parameters = dict(driver.parameters)
    for pid, path in IMAGES.items():
        reboot.new_process(pid, path)
    reboot.load()
    assert status(reboot)["policy_id"] == policy_id(replacement)
    assert open_process(reboot, ATTACKER, PROCESS_TERMINATE, AGENT) == 0


def test_set_policy_with_persist_creates_a_missing_parameters_key(kernel, replacement):
    kernel.parameters = None
    kernel.load()
    assert set_policy(kernel, replacement, SET_POLICY_PERSIST) == STATUS_SUCCESS
    assert kernel.parameters == {"Policy": (REG_BINARY, replacement)}
    assert kernel.open_keys == {}


@pytest.mark.parametrize("failure", ["open service key", "create Parameters", "set value"])
def test_a_failing_registry_write_leaves_the_old_policy_in_force(driver, blob, replacement, failure):
    if failure == "open service key":
        driver.open_for_write_status = STATUS_ACCESS_DENIED
    elif failure == "create Parameters":
        driver.create_key_status = STATUS_ACCESS_DENIED
    else:
        driver.set_value_status = STATUS_ACCESS_DENIED
    assert set_policy(driver, replacement, SET_POLICY_PERSIST) == STATUS_ACCESS_DENIED
    assert driver.registry_writes == []
    assert driver.parameters == {"Policy": (REG_BINARY, blob)}
    assert driver.open_keys == {}, "keys closed on the failure path too"
    assert_original_policy_in_force(driver, blob)
    assert status(driver)["last_error"] == STATUS_ACCESS_DENIED


# ------------------------------------------------------------- get policy


def test_get_policy_returns_the_active_blob_and_its_id(driver, blob, replacement):
    exact = get_policy(driver, POLICY_HEADER_SIZE + len(blob))
    assert (exact.status, exact.information) == (STATUS_SUCCESS, POLICY_HEADER_SIZE + len(blob))
    assert exact.output == struct.pack("<II", len(blob), policy_id(blob)) + blob
    assert set_policy(driver, replacement) == STATUS_SUCCESS
    larger = get_policy(driver, 4096)
    assert larger.output == struct.pack("<II", len(replacement), policy_id(replacement)) + replacement


def test_get_policy_without_a_policy_in_force_returns_an_empty_blob(kernel):
    kernel.parameters = {}
    kernel.load()
    result = get_policy(kernel, 64)
    assert (result.status, result.information) == (STATUS_SUCCESS, POLICY_HEADER_SIZE)
    blob_len, identity = struct.unpack("<II", result.output)
    report = status(kernel)
    assert (blob_len, report["rule_count"]) == (0, 0)
    assert identity == report["policy_id"], "the id status reports for the empty policy"


@pytest.mark.parametrize("missing", [1, 100])
def test_get_policy_with_a_small_buffer_returns_the_header_with_buffer_overflow(driver, blob, missing):
    result = get_policy(driver, POLICY_HEADER_SIZE + len(blob) - missing)
    assert (result.status, result.information) == (STATUS_BUFFER_OVERFLOW, POLICY_HEADER_SIZE)
    # A warning status: the I/O manager copies the header back.
    assert result.output == struct.pack("<II", len(blob), policy_id(blob))


def test_get_policy_below_the_header_size_is_buffer_too_small(driver):
    for length in (0, 1, POLICY_HEADER_SIZE - 1):
        result = get_policy(driver, length)
        assert (result.status, result.information) == (STATUS_BUFFER_TOO_SMALL, 0), length


# ------------------------------------------------ malformed set-policy inputs


def _string_entries(blob: bytes) -> tuple[int, int]:
    string_count, rule_count, string_data_len = struct.unpack_from("<III", blob, 20)
    return string_count, string_data_len


def _malformed(blob: bytes) -> dict[str, bytes]:
    """Every set-policy input below must be refused with STATUS_INVALID_PARAMETER."""
    string_count, string_data_len = _string_entries(blob)
    assert string_count >= 2
    first_offset, first_length = struct.unpack_from("<II", blob, 40)
    second_offset, second_length = struct.unpack_from("<II", blob, 48)
    cases = {}
    cases["truncated blob"] = set_policy_input(blob[:-3])
    bad = bytearray(blob)
    bad[12] ^= 0x55
    cases["bad checksum"] = set_policy_input(bytes(bad))
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    cases["flipped byte"] = set_policy_input(bytes(flipped))
    bad = bytearray(blob)
    bad[0:4] = b"PGPX"
    cases["bad magic"] = set_policy_input(rechecksum(bad))
    bad = bytearray(blob)
    struct.pack_into("<H", bad, 4, 3)  # the format is version 2 since issue 12
    cases["wrong version"] = set_policy_input(rechecksum(bad))
    # The request header claims more blob than the buffer holds.
    cases["blob length beyond the buffer"] = set_policy_input(blob, length=len(blob) + 4096)
    cases["blob length 4 GiB"] = set_policy_input(blob, length=0xFFFFFFFF)
    # Internal counts no blob of this size can hold.
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 24, 0xFFFFFFFF)
    cases["huge rule count"] = set_policy_input(rechecksum(bad))
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 20, 0x10000000)
    cases["huge string count"] = set_policy_input(rechecksum(bad))
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 28, 0x7FFFFFF0)
    cases["huge string data length"] = set_policy_input(rechecksum(bad))
    # A string directory entry pointing past the string data.
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 40, string_data_len + 8)
    cases["string offset out of range"] = set_policy_input(rechecksum(bad))
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 44, string_data_len + 1)
    cases["string length out of range"] = set_policy_input(rechecksum(bad))
    # The second string overlapping the first.
    bad = bytearray(blob)
    struct.pack_into("<II", bad, 48, first_offset, min(first_length, second_length))
    cases["overlapping strings"] = set_policy_input(rechecksum(bad))
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 16, 0x80)
    cases["unknown settings bits"] = set_policy_input(rechecksum(bad))
    cases["unknown request flags"] = set_policy_input(blob, flags=0x4)
    cases["unknown request flag bit 31"] = set_policy_input(blob, flags=0x80000001)
    cases["short header"] = set_policy_input(blob)[:7]
    cases["three bytes"] = b"\x01\x00\x00"
    cases["no input"] = b""
    cases["empty blob"] = set_policy_input(b"")
    cases["trailing bytes after the blob"] = set_policy_input(blob) + b"\0"
    # Trailing bytes inside the blob (total_len and checksum consistent).
    bad = bytearray(blob + b"\0\0\0\0")
    struct.pack_into("<I", bad, 8, len(bad))
    cases["trailing bytes inside the blob"] = set_policy_input(rechecksum(bad))
    return cases


# Case -> what the driver's trace must give as the reason ("policy rejected:
# ..." from the blob decoder; None: refused by the request parser, before
# any blob is decoded), so each case is refused for the defect it carries.
MALFORMED = {
    "truncated blob": "header declares",
    "bad checksum": "checksum mismatch",
    "flipped byte": "checksum mismatch",
    "bad magic": "bad magic",
    "wrong version": "unsupported format version 3",
    "blob length beyond the buffer": None,
    "blob length 4 GiB": None,
    "huge rule count": "rule count 4294967295 cannot fit",
    "huge string count": "string count 268435456 cannot fit",
    "huge string data length": "string byte count 2147483632 cannot fit",
    "string offset out of range": "string 0 lies outside the string data",
    "string length out of range": "string 0 lies outside the string data",
    "overlapping strings": "not the canonical encoding",
    "unknown settings bits": "reserved bits set in settings",
    "unknown request flags": None,
    "unknown request flag bit 31": None,
    "short header": None,
    "three bytes": None,
    "no input": None,
    "empty blob": "shorter than the 40-byte header",
    "trailing bytes after the blob": None,
    "trailing bytes inside the blob": "bytes after the last rule",
}


def test_malformed_set_policy_inputs_are_each_invalid_parameter_and_the_previous_policy_stays(driver, blob):
    # One machine for all 22 cases (a load per case would cost ~15 s): after
    # each refusal the original policy must still be the one in force, and
    # nothing may have reached the registry. Problems are collected per case.
    cases = _malformed(blob)
    assert sorted(cases) == sorted(MALFORMED)
    problems = {}
    for case, request in cases.items():
        # Also asked to persist: a refused policy must not reach the registry either.
        if len(request) >= 8 and "request flag" not in case:
            request = struct.pack("<I", SET_POLICY_PERSIST) + request[4:]
        messages = len(driver.debug_messages)
        result = driver.ioctl(IOCTL_SET_POLICY, request, 0)
        trace = "".join(message.text for message in driver.debug_messages[messages:])
        reason = MALFORMED[case]
        try:
            assert (result.status, result.information) == (STATUS_INVALID_PARAMETER, 0), hex(result.status)
            if reason is None:
                assert "policy rejected" not in trace, f"refused by the request parser, yet: {trace}"
            else:
                assert "policy rejected: " in trace and reason in trace, f"wrong reason: {trace}"
            assert driver.set_value_attempts == 0 and driver.key_creates == [], "registry touched"
            assert_original_policy_in_force(driver, blob)
        except AssertionError as error:
            problems[case] = str(error)
    assert problems == {}


def test_an_input_larger_than_any_request_is_refused_without_being_read(driver, blob):
    # 1 MiB blob cap + the 8-byte header, plus one byte.
    result = driver.ioctl(IOCTL_SET_POLICY, b"\0" * (8 + (1 << 20) + 1), 0)
    assert result.status == STATUS_INVALID_PARAMETER
    assert result.request.retrievals == [], "refused from InputBufferLength alone"
    assert_original_policy_in_force(driver, blob)


# ------------------------------------------------------ wrong buffer sizes


def test_status_output_of_255_bytes_is_buffer_too_small(driver):
    for length in (0, 1, STATUS_SIZE - 1):
        result = driver.ioctl(IOCTL_GET_STATUS, b"", length)
        assert (result.status, result.information) == (STATUS_BUFFER_TOO_SMALL, 0), length
    assert driver.ioctl(IOCTL_GET_STATUS, b"", STATUS_SIZE + 100).information == STATUS_SIZE


def test_events_output_under_80_bytes_is_buffer_too_small_and_takes_nothing(driver):
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)
    for length in (0, EVENTS_HEADER_SIZE, EVENTS_HEADER_SIZE + AUDIT_RECORD_BYTES - 1):
        result = driver.ioctl(IOCTL_READ_EVENTS, b"", length)
        assert (result.status, result.information) == (STATUS_BUFFER_TOO_SMALL, 0), length
    records, remaining, dropped, decoded = drain(driver, EVENTS_HEADER_SIZE + AUDIT_RECORD_BYTES)
    assert (records, remaining, dropped) == (1, 0, 0)
    assert decoded[0].sequence == 1  # sequence 0: the boot policy record (drained by load)


@pytest.mark.parametrize(
    "code", [IOCTL_GET_STATUS, IOCTL_GET_POLICY, IOCTL_READ_EVENTS, IOCTL_RESET_COUNTERS, IOCTL_GET_RULE_COUNTERS],
    ids=["status", "get-policy", "read-events", "reset-counters", "rule-counters"],
)
def test_stray_input_to_an_ioctl_that_takes_none_is_invalid_parameter_and_changes_nothing(driver, code):
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)
    result = driver.ioctl(code, b"\x01", 4096)
    assert (result.status, result.information, result.output) == (STATUS_INVALID_PARAMETER, 0, b"")
    report = status(driver)
    assert report["counters"]["seen"] == 1 and report["counters"]["events_pending"] == 1
    _identity, counters = rule_counters(driver, 3)
    assert counters[0] == (1, 1)


def test_rule_counters_need_room_for_every_rule(driver):
    result = driver.ioctl(IOCTL_GET_RULE_COUNTERS, b"", 8 + 16 * 3 - 1)
    assert (result.status, result.information) == (STATUS_BUFFER_TOO_SMALL, 0)


# ------------------------------------------------------------ event drain


def test_events_drain_in_order_with_every_field_correct(driver):
    driver.current_tid = 2004
    time_before = driver.system_time
    assert open_process(driver, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    thread = driver.pre_operation(
        operation=CREATE, object_kind="thread", target=driver.agent_thread,
        desired_access=THREAD_SUSPEND_RESUME, current_pid=EDITOR,
    )
    assert thread.desired_access == 0
    assert open_process(driver, AGENT, PROCESS_VM_READ, EDITOR) == PROCESS_VM_READ  # audit only
    records, remaining, dropped, (first, second, third) = drain(driver)
    assert (records, remaining, dropped) == (3, 0, 0)
    assert [first.sequence, second.sequence, third.sequence] == [1, 2, 3]  # sequence 0: the boot policy record (drained by load)
    assert time_before < first.timestamp < second.timestamp < third.timestamp <= driver.system_time
    assert (first.object, first.duplication, first.mode) == ("process", False, "enforce")
    assert (first.process_id, first.thread_id) == (AGENT, 0)
    assert (first.originator_process_id, first.originator_thread_id) == (ATTACKER, 2004)
    assert (first.source_process_id, first.target_process_id) == (0, 0)
    assert (first.original_desired_access, first.desired_access) == (PROCESS_TERMINATE | PROCESS_VM_READ, PROCESS_VM_READ)
    assert (first.result_code, first.rule_id, first.reserved) == (0, 0, 0)
    assert (second.object, second.mode, second.rule_id) == ("thread", "enforce", 1)
    assert (second.process_id, second.thread_id) == (AGENT, driver.threads[driver.agent_thread].tid)
    assert (second.original_desired_access, second.desired_access) == (THREAD_SUSPEND_RESUME, 0)
    assert second.originator_process_id == EDITOR
    assert (third.mode, third.rule_id, third.desired_access) == ("audit", 2, PROCESS_VM_READ)
    assert drain(driver)[:3] == (0, 0, 0), "drained: nothing left"


def test_a_drain_never_splits_a_record(driver):
    for _ in range(3):
        open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)
    # Room for two and a half records: two come out, one stays.
    records, remaining, dropped, decoded = drain(driver, EVENTS_HEADER_SIZE + 2 * AUDIT_RECORD_BYTES + 32)
    assert (records, remaining, dropped) == (2, 1, 0)
    assert [record.sequence for record in decoded] == [1, 2]  # sequence 0: the boot policy record (drained by load)
    records, remaining, _dropped, decoded = drain(driver)
    assert (records, remaining, [record.sequence for record in decoded]) == (1, 0, [3])


def test_after_an_overflow_drain_reports_dropped_and_remaining(kernel, blob):
    kernel.parameters = {"Policy": reg_binary(blob), "AuditRecords": reg_dword(4)}
    kernel.new_process(AGENT, IMAGES[AGENT])
    kernel.load()
    requesters = [3000 + 4 * index for index in range(10)]
    for requester in requesters:
        assert open_process(kernel, AGENT, PROCESS_TERMINATE, requester) == 0
    report = status(kernel)
    assert report["audit_capacity"] == 4
    assert (report["counters"]["events_dropped"], report["counters"]["events_pending"]) == (6, 4)
    # The oldest were dropped; the newest four are intact, in order.
    records, remaining, dropped, decoded = drain(kernel, EVENTS_HEADER_SIZE + 3 * AUDIT_RECORD_BYTES)
    assert (records, remaining, dropped) == (3, 1, 6)
    records, remaining, dropped, rest = drain(kernel)
    assert (records, remaining, dropped) == (1, 0, 6)
    decoded += rest
    assert [record.sequence for record in decoded] == [7, 8, 9, 10]  # sequence 0: the boot policy record (drained by load)
    assert [record.originator_process_id for record in decoded] == requesters[-4:]
    assert all(record.desired_access == 0 and record.mode == "enforce" for record in decoded)
    # Draining made room: new records are kept again, numbering goes on.
    open_process(kernel, AGENT, PROCESS_TERMINATE, ATTACKER)
    records, remaining, dropped, decoded = drain(kernel)
    assert (records, remaining, dropped, decoded[0].sequence) == (1, 0, 6, 11)


def test_records_added_between_drains_each_appear_exactly_once_in_sequence_order(driver):
    expected = []  # originator pid of each stripped request, in request order
    drained = []
    requester = 5000
    for round_number in range(8):
        for _ in range(round_number % 3 + 1):
            requester += 4
            assert open_process(driver, AGENT, PROCESS_TERMINATE, requester) == 0
            expected.append(requester)
        # A drain with room for two records, between the requests.
        records, remaining, dropped, decoded = drain(driver, EVENTS_HEADER_SIZE + 2 * AUDIT_RECORD_BYTES)
        assert records == min(2, len(expected) - len(drained))
        assert remaining == len(expected) - len(drained) - records
        assert dropped == 0
        drained += decoded
    while True:
        records, remaining, _dropped, decoded = drain(driver, EVENTS_HEADER_SIZE + 2 * AUDIT_RECORD_BYTES)
        drained += decoded
        if remaining == 0:
            break
    assert [record.sequence for record in drained] == list(range(1, len(expected) + 1))  # after the boot record
    assert [record.originator_process_id for record in drained] == expected


# ------------------------------------------------------------ counters


def test_reset_counters_zeroes_the_status_counters_and_the_rule_counters(driver, blob):
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER, kernel_handle=True)
    open_process(driver, AGENT, PROCESS_TERMINATE, AGENT)
    assert status(driver)["counters"]["seen"] == 3
    result = driver.ioctl(IOCTL_RESET_COUNTERS, b"", 0)
    assert (result.status, result.information) == (STATUS_SUCCESS, 0)
    counters = status(driver)["counters"]
    assert {name: value for name, value in counters.items() if not name.startswith("events_")} == {
        "seen": 0, "modified": 0, "audited": 0, "skipped_kernel": 0, "skipped_self": 0, "exempt": 0,
        "unclassified": 0,
    }
    assert counters["events_pending"] == 1, "the records are not counters: still there to drain"
    identity, per_rule = rule_counters(driver, 3)
    assert (identity, per_rule) == (policy_id(blob), [(0, 0)] * 3)
    # Counting resumes from zero.
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)
    assert status(driver)["counters"]["seen"] == 1
    assert rule_counters(driver, 3)[1][0] == (1, 1)


def test_per_rule_counters_count_hits_and_strips_of_the_rule_responsible(driver, blob, replacement):
    assert rule_counters(driver, 3) == (policy_id(blob), [(0, 0)] * 3)
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER)  # rule 0: hit, strip
    open_process(driver, AGENT, PROCESS_VM_WRITE, EDITOR)  # rule 0: hit, strip
    open_process(driver, AGENT, PROCESS_TERMINATE, AGENT)  # self-open: rule 0 would have applied
    driver.pre_operation(  # rule 1: hit, strip
        operation=CREATE, object_kind="thread", target=driver.agent_thread,
        desired_access=THREAD_SUSPEND_RESUME, current_pid=ATTACKER,
    )
    open_process(driver, AGENT, PROCESS_VM_READ, ATTACKER)  # rule 2 (audit): hit, nothing stripped
    open_process(driver, AGENT, PROCESS_QUERY_LIMITED_INFORMATION, ATTACKER)  # no rule removes this
    open_process(driver, EDITOR, PROCESS_TERMINATE, ATTACKER)  # unprotected target
    open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER, kernel_handle=True)  # kernel handle
    assert rule_counters(driver, 3) == (policy_id(blob), [(3, 2), (1, 1), (1, 0)])
    # A new policy starts its own counters.
    assert set_policy(driver, replacement) == STATUS_SUCCESS
    assert rule_counters(driver, 1) == (policy_id(replacement), [(0, 0)])
    open_process(driver, ATTACKER, PROCESS_TERMINATE, AGENT)
    assert rule_counters(driver, 1) == (policy_id(replacement), [(1, 1)])
