"""Loading procguard.sys: KMDF binding, the Parameters key, and the one
ObRegisterCallbacks registration with its altitude-collision retries."""

from __future__ import annotations

import struct
import zlib

import pytest

from kernel_harness import (
    OB_FLT_REGISTRATION_VERSION,
    OB_OPERATION_HANDLE_CREATE,
    OB_OPERATION_HANDLE_DUPLICATE,
    POOL_FLAG_NON_PAGED,
    POOL_TAG_PGRD,
    STATUS_ACCESS_DENIED,
    STATUS_FLT_INSTANCE_ALTITUDE_COLLISION,
    STATUS_SUCCESS,
    KMDF_BIND_FUNCTION_COUNT,
    image_path,
    reg_binary,
    reg_dword,
    reg_sz,
)

DEFAULT_ALTITUDE = "385201"
DEFAULT_RETRIES = 8
MAX_RETRIES = 32
PROTECTED_PID = 500
OTHER_PID = 600
PROCESS_ALL_ACCESS = 0x1FFFFF

# One rule protecting protected.exe; the corrupt blobs below are this
# policy's blob, damaged in one place each.
POLICY = """
[[rule]]
name = "protected-no-kill"
target = { name = "protected.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]
"""


@pytest.fixture(scope="module")
def policy(compile_policy) -> bytes:
    return compile_policy(POLICY)


def with_checksum(blob: bytes) -> bytes:
    """Re-seals a modified blob: CRC-32 of the blob with the checksum field
    (bytes 12..16) zeroed, stored there (FORMAT.md)."""
    blob = bytearray(blob)
    blob[12:16] = b"\0\0\0\0"
    struct.pack_into("<I", blob, 12, zlib.crc32(bytes(blob)))
    return bytes(blob)


def patched(blob: bytes, offset: int, fmt: str, value: int, *, reseal: bool = True) -> bytes:
    blob = bytearray(blob)
    struct.pack_into(fmt, blob, offset, value)
    return with_checksum(bytes(blob)) if reseal else bytes(blob)


def assert_nothing_left_behind(kernel) -> None:
    """After a failed DriverEntry a kernel must find no trace of the driver."""
    assert kernel.live_registrations == {}, "a registration survived the failed load"
    assert kernel.pool == {}, f"pool blocks leaked: {kernel.pool}"
    assert kernel.open_keys == {}, f"registry handles leaked: {kernel.open_keys}"
    assert len(kernel.wdf_unbinds) == 1, "the entry stub must unbind from KMDF after a failed DriverEntry"


def test_load_with_defaults_registers_once_for_process_and_thread_handles(kernel):
    kernel.parameters = None  # no Parameters key at all
    kernel.load()

    assert len(kernel.registrations) == 1
    registration = kernel.registrations[0]
    assert registration.status == STATUS_SUCCESS
    assert registration.version == OB_FLT_REGISTRATION_VERSION
    assert registration.count == 2
    assert registration.altitude == DEFAULT_ALTITUDE
    assert registration.altitude_length == 2 * len(DEFAULT_ALTITUDE), "Length counts no NUL"
    assert registration.context != 0
    # ObjectType is POBJECT_TYPE*: the ADDRESS of the kernel's PsProcessType
    # variable, not the OBJECT_TYPE it points to (one dereference too many is
    # the classic bug this catches).
    assert [entry.object_type for entry in registration.entries] == [
        kernel.ps_process_type_variable,
        kernel.ps_thread_type_variable,
    ]
    assert kernel.process_object_type not in [e.object_type for e in registration.entries]
    for entry in registration.entries:
        assert entry.operations == OB_OPERATION_HANDLE_CREATE | OB_OPERATION_HANDLE_DUPLICATE == 3
        assert kernel.in_image(entry.pre_operation), f"{entry.pre_operation:#x} is outside the image"
        assert entry.post_operation == 0
    assert len(kernel.live_registrations) == 1
    assert "no Parameters key; defaults in use" in kernel.trace_text()
    assert "policy of 0 rule(s) in force" in kernel.trace_text()


def test_entry_stub_binds_the_floor_kmdf_1_29_with_its_function_table(kernel):
    kernel.load()
    assert len(kernel.wdf_binds) == 1
    bind = kernel.wdf_binds[0]
    assert bind.size == 48
    assert bind.component == "KmdfLibrary"
    # Windows 10 1903's framework (driver/windows-support.toml [bind]); the
    # harness' WdfVersionBind refuses anything the floor does not ship.
    assert bind.version == (1, 29, 0)
    assert bind.func_count == KMDF_BIND_FUNCTION_COUNT == 454
    assert kernel.in_image(bind.func_table_slot), "FuncTable must point at the driver's table variable"
    assert bind.module == 0
    # The loader wrote the table through FuncTable and the driver used it:
    # WdfDriverCreate (index 116) was reached through it.
    assert kernel.read(bind.func_table_slot, 8) == kernel.wdf_function_table.to_bytes(8, "little")
    assert len(kernel.wdf_driver_creates) == 1
    assert kernel.wdf_unbinds == [], "unbinding belongs to unload on success"


def test_wdf_driver_create_gets_a_non_pnp_config_with_an_unload_callback(kernel):
    kernel.load()
    (create,) = kernel.wdf_driver_creates
    assert create["globals"] == kernel.wdf_driver_globals
    assert create["driver_object"] == kernel.driver_object
    assert create["registry_path"].lower().endswith("\\services\\procguard")
    assert create["config_size"] == 32
    assert create["evt_driver_device_add"] == 0
    assert kernel.in_image(create["evt_driver_unload"])
    assert create["driver_init_flags"] == 1  # WdfDriverInitNonPnpDriver
    # DriverUnload is the entry stub's (displacing the framework's), in the image.
    assert kernel.in_image(kernel.driver_unload_routine())


def test_registry_values_are_read_with_a_size_probe_and_every_key_is_closed(kernel, policy):
    kernel.parameters = {
        "Altitude": reg_sz("385210.25"),
        "AltitudeRetries": reg_dword(3),
        "Policy": reg_binary(policy),
        "AuditRecords": reg_dword(64),
    }
    kernel.load()
    service, parameters = kernel.key_opens
    assert service[0].lower().endswith("\\services\\procguard") and service[1] == 0
    assert parameters[0] == "Parameters" and parameters[1] != 0, "opened relative to the service key"
    names = [query[0] for query in kernel.value_queries]
    assert names == [
        "Altitude", "Altitude", "AltitudeRetries", "AltitudeRetries",
        "Policy", "Policy", "AuditRecords", "AuditRecords",
    ]
    assert all(query[1] == 2 for query in kernel.value_queries), "KeyValuePartialInformation"
    sizes = {name: kernel.parameters[name][1] for name in kernel.parameters}
    for index in range(0, 8, 2):
        probe, full = kernel.value_queries[index], kernel.value_queries[index + 1]
        assert probe[2] == 16
        assert full[2] >= 12 + len(sizes[probe[0]])
    assert kernel.open_keys == {}, "every key opened is closed"
    assert kernel.registration.altitude == "385210.25"
    assert "policy of 1 rule(s) in force" in kernel.trace_text()


def test_custom_altitude_from_the_registry_is_used(kernel):
    kernel.parameters = {"Altitude": reg_sz("320000.5")}
    kernel.load()
    assert [r.altitude for r in kernel.registrations] == ["320000.5"]
    assert "registered at altitude 320000.5 after 1 attempt(s)" in kernel.trace_text()
    assert not kernel.messages_containing("Parameters\\Altitude"), "a valid value draws no complaint"


def test_altitude_without_a_terminating_nul_is_accepted(kernel):
    # REG_SZ data need not end in NUL (RegSetValueEx stores what it is given).
    kernel.parameters = {"Altitude": (1, "385250".encode("utf-16-le"))}
    kernel.load()
    assert kernel.registration.altitude == "385250"


def test_unreadable_parameters_key_loads_with_defaults_and_says_why(kernel):
    kernel.parameters = {"Altitude": reg_sz("320000")}
    kernel.parameters_open_status = STATUS_ACCESS_DENIED
    kernel.load()
    assert "opening the Parameters key failed with 0xC0000022; defaults in use" in kernel.trace_text()
    assert kernel.registration.altitude == DEFAULT_ALTITUDE
    assert kernel.open_keys == {}, "the service key is closed on that path too"


def test_a_registry_path_longer_than_the_stub_buffer_fails_before_binding(kernel):
    # FxDriverEntry copies the registry path into a 512-unit static buffer.
    driver_object = kernel.se.mem_alloc(0x150, tag="harness.DRIVER_OBJECT")
    path = kernel.unicode_string("\\Registry\\Machine\\System\\" + "x" * 600)
    entry = kernel.image_base + kernel.module.ep
    status = kernel.call(entry, [driver_object, path], "FxDriverEntry") & 0xFFFFFFFF
    assert status == 0xC0000106  # STATUS_NAME_TOO_LONG
    assert kernel.wdf_binds == [] and kernel.registrations == []


def test_altitude_collision_on_first_try_registers_at_385201_1(kernel):
    kernel.occupied_altitudes = {DEFAULT_ALTITUDE}  # another driver holds it
    kernel.load()
    assert [(r.altitude, r.status) for r in kernel.registrations] == [
        (DEFAULT_ALTITUDE, STATUS_FLT_INSTANCE_ALTITUDE_COLLISION),
        ("385201.1", STATUS_SUCCESS),
    ]
    assert kernel.registration.altitude == "385201.1"
    assert "registered at altitude 385201.1 after 2 attempt(s)" in kernel.trace_text()
    # The retry is the same registration otherwise.
    first, second = kernel.registrations
    assert first.entries == second.entries and first.context == second.context


@pytest.mark.parametrize(
    ("retries_value", "expected_retries"),
    [(None, DEFAULT_RETRIES), (3, 3), (1000, MAX_RETRIES)],
    ids=["default-8", "configured-3", "capped-at-32"],
)
def test_every_attempt_colliding_fails_driver_entry_after_one_plus_retries_attempts(
    kernel, retries_value, expected_retries
):
    if retries_value is not None:
        kernel.parameters = {"AltitudeRetries": reg_dword(retries_value)}
    kernel.register_results.extend([STATUS_FLT_INSTANCE_ALTITUDE_COLLISION] * 100)
    assert kernel.driver_entry() == STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    altitudes = [r.altitude for r in kernel.registrations]
    assert len(altitudes) == 1 + expected_retries
    assert altitudes[:3] == [DEFAULT_ALTITUDE, "385201.1", "385201.2"][: len(altitudes)]
    assert len(set(altitudes)) == len(altitudes), "each attempt uses a new altitude string"
    assert kernel.messages_containing("ObRegisterCallbacks failed with 0xC01C0011")
    assert_nothing_left_behind(kernel)


def test_altitude_retries_zero_fails_at_once_on_a_collision(kernel):
    kernel.parameters = {"AltitudeRetries": reg_dword(0)}
    kernel.occupied_altitudes = {DEFAULT_ALTITUDE}
    assert kernel.driver_entry() == STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    assert [r.altitude for r in kernel.registrations] == [DEFAULT_ALTITUDE]
    assert_nothing_left_behind(kernel)


def test_collision_retries_try_numerically_distinct_altitudes(kernel):
    from decimal import Decimal

    kernel.parameters = {"AltitudeRetries": reg_dword(MAX_RETRIES)}
    kernel.register_results.extend([STATUS_FLT_INSTANCE_ALTITUDE_COLLISION] * 100)
    assert kernel.driver_entry() == STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    values = [Decimal(r.altitude) for r in kernel.registrations]
    assert len(set(values)) == len(values), sorted(values)


def test_registration_access_denied_fails_driver_entry_cleanly_without_retrying(kernel):
    kernel.register_results.append(STATUS_ACCESS_DENIED)
    assert kernel.driver_entry() == STATUS_ACCESS_DENIED
    assert len(kernel.registrations) == 1, "only collisions are retried"
    assert kernel.messages_containing("ObRegisterCallbacks failed with 0xC0000022")
    assert_nothing_left_behind(kernel)


# (how to damage the valid blob, the error the trace must name). Offsets and
# messages: crates/procguard-policy/FORMAT.md and DecodeError's Display.
CORRUPTIONS = {
    "bad-magic": (lambda b: with_checksum(b"PGPX" + b[4:]), 'bad magic (expected "PGPB")'),
    "truncated": (lambda b: b[:-4], "header declares {n} bytes, buffer has {m}"),
    "bad-checksum": (lambda b: patched(b, 12, "<I", struct.unpack_from("<I", b, 12)[0] ^ 1, reseal=False),
                     "checksum mismatch: stored"),
    "flipped-byte": (lambda b: b[:-1] + bytes([b[-1] ^ 0x40]), "checksum mismatch: stored"),
    "shorter-than-header": (lambda b: b[:20], "blob of 20 bytes is shorter than the 40-byte header"),
    "bad-version": (lambda b: patched(b, 4, "<H", 3), "unsupported format version 3"),
    # Version 1 (before ask rules) is refused since issue 12.
    "old-version": (lambda b: patched(b, 4, "<H", 1), "unsupported format version 1"),
    "rule-count-too-large": (lambda b: patched(b, 24, "<I", 0xFFFFFFFF), "count 4294967295 cannot fit in the blob"),
    "trailing-bytes": (lambda b: patched(b + b"\0" * 4, 8, "<I", len(b) + 4), "4 bytes after the last rule"),
    "old-pid-table-format": (lambda b: b"PGPT\x01\x00\x01\x00" + struct.pack("<III", 500, 1, 1),
                             "blob of 20 bytes is shorter than the 40-byte header"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_policy_loads_with_no_rules_and_names_the_problem(kernel, policy, corruption):
    damage, message = CORRUPTIONS[corruption]
    blob = damage(policy)
    message = message.format(n=len(policy), m=len(blob))
    kernel.parameters = {"Policy": reg_binary(blob)}
    protected = kernel.new_process(PROTECTED_PID, image_path("protected.exe"))
    kernel.new_process(OTHER_PID, image_path("tool.exe"))
    kernel.load()
    (line,) = kernel.messages_containing("Parameters\\Policy: ")
    assert message in line and line.endswith("; starting with no rules\n"), kernel.trace_text()
    assert "policy of 0 rule(s) in force" in kernel.trace_text()
    result = kernel.pre_operation(
        operation=OB_OPERATION_HANDLE_CREATE,
        object_kind="process",
        target=protected,
        desired_access=PROCESS_ALL_ACCESS,
        current_pid=OTHER_PID,
    )
    assert result.desired_access == PROCESS_ALL_ACCESS, "no rule of a rejected blob may apply"


def test_the_uncorrupted_policy_does_protect(kernel, policy):
    # The control for the test above: the same blob, undamaged, strips.
    kernel.parameters = {"Policy": reg_binary(policy)}
    protected = kernel.new_process(PROTECTED_PID, image_path("protected.exe"))
    kernel.new_process(OTHER_PID, image_path("tool.exe"))
    kernel.load()
    assert not kernel.messages_containing("Parameters\\Policy")
    result = kernel.pre_operation(
        operation=OB_OPERATION_HANDLE_CREATE,
        object_kind="process",
        target=protected,
        desired_access=PROCESS_ALL_ACCESS,
        current_pid=OTHER_PID,
    )
    assert result.desired_access == PROCESS_ALL_ACCESS & ~1


def test_values_of_the_wrong_registry_type_are_ignored_and_defaults_used(kernel):
    kernel.parameters = {
        "Altitude": reg_dword(385300),
        "AltitudeRetries": reg_sz("3"),
        "Policy": reg_sz("PGPT"),
    }
    kernel.register_results.extend([STATUS_FLT_INSTANCE_ALTITUDE_COLLISION] * 100)
    assert kernel.driver_entry() == STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    trace = kernel.trace_text()
    assert "Parameters\\Altitude has registry type 4; ignored, default used" in trace
    assert "Parameters\\AltitudeRetries has registry type 1; ignored, default used" in trace
    assert "Parameters\\Policy has registry type 1; ignored, default used" in trace
    # Defaults in force: the default altitude, and 1 + 8 attempts.
    altitudes = [r.altitude for r in kernel.registrations]
    assert altitudes[0] == DEFAULT_ALTITUDE
    assert len(altitudes) == 1 + DEFAULT_RETRIES


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (reg_sz("38a201"), "altitude is not a decimal number"),
        (reg_sz(""), "altitude is empty"),
        (reg_sz("1" * 40), "altitude is longer than 32 characters"),
        # REG_SZ with an odd byte count: not UTF-16.
        ((1, b"3\x008\x005"), "has an unusable size (5 bytes)"),
    ],
    ids=["not-decimal", "empty", "too-long", "odd-size"],
)
def test_malformed_altitude_falls_back_to_the_default(kernel, value, message):
    kernel.parameters = {"Altitude": value}
    kernel.load()
    assert message in kernel.trace_text()
    assert kernel.registration.altitude == DEFAULT_ALTITUDE


def test_malformed_altitude_retries_falls_back_to_the_default(kernel):
    kernel.parameters = {"AltitudeRetries": (4, b"\x03\x00")}  # 2-byte REG_DWORD
    kernel.register_results.extend([STATUS_FLT_INSTANCE_ALTITUDE_COLLISION] * 100)
    assert kernel.driver_entry() == STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    assert "Parameters\\AltitudeRetries has an unusable size (2 bytes)" in kernel.trace_text()
    assert len(kernel.registrations) == 1 + DEFAULT_RETRIES


def test_empty_policy_value_means_no_rules_without_a_complaint(kernel):
    kernel.parameters = {"Policy": reg_binary(b"")}
    kernel.load()
    assert "Policy" not in kernel.trace_text()
    assert "policy of 0 rule(s) in force" in kernel.trace_text()


def test_every_pool_allocation_is_non_paged_and_tagged_pgrd(kernel, policy):
    kernel.parameters = {
        "Altitude": reg_sz("385201"),
        "Policy": reg_binary(policy),
    }
    kernel.new_process(PROTECTED_PID, image_path("protected.exe"))
    kernel.load()
    assert kernel.allocation_count > 0
    assert kernel.pool, "the driver state lives in pool"
    for block in kernel.pool.values():
        assert block.flags == POOL_FLAG_NON_PAGED
        assert block.tag == POOL_TAG_PGRD
    assert all(tag == POOL_TAG_PGRD for _address, tag in kernel.frees)
