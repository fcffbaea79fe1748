"""The driver's WDF manifest (written by driver/src/ffi/layout_check.rs)
against an independent record: Speakeasy's KMDF definitions.

mingw ships no WDF headers, so the function-table indices and WDF struct
layouts the binding layer hard-codes can only be checked here. Speakeasy's
`defs/wdf.py` was written independently from the KMDF headers; where it has
no definition, or a known-wrong one (WDF_IO_QUEUE_CONFIG), the facts in
TOOLCHAIN.md (checked by compiling the open-source KMDF 1.33 headers) are
the reference.
"""

from __future__ import annotations

import ctypes

import pytest
import speakeasy.winenv.defs.wdf as speakeasy_wdf

from kernel_harness import (
    KMDF_BIND_FUNCTION_COUNT,
    WDF_IO_QUEUE_CONFIG_OFFSETS,
    WDF_IO_QUEUE_CONFIG_SIZE,
    speakeasy_wdf_function_names,
)

# KMDF 1.33 layouts Speakeasy 1.5.11 does not define, from TOOLCHAIN.md
# ("Layouts (x64)"). Used only while Speakeasy lacks the struct.
TOOLCHAIN_FACTS = {
    "WDF_DRIVER_GLOBALS": {
        "size": 56,
        "fields": {"Driver": 0, "DriverFlags": 8, "DriverTag": 12, "DriverName": 16, "DisplaceDriverUnload": 48},
    },
    "WDF_OBJECT_ATTRIBUTES": {
        "size": 56,
        "fields": {
            "Size": 0,
            "EvtCleanupCallback": 8,
            "EvtDestroyCallback": 16,
            "ExecutionLevel": 24,
            "SynchronizationScope": 28,
            "ParentObject": 32,
            "ContextSizeOverride": 40,
            "ContextTypeInfo": 48,
        },
    },
    # wdfdevice.h (KMDF 1.0 and later, unchanged): the control device's
    # file-object configuration (EvtFileCleanup of the ask path).
    "WDF_FILEOBJECT_CONFIG": {
        "size": 40,
        "fields": {
            "Size": 0,
            "EvtDeviceFileCreate": 8,
            "EvtFileClose": 16,
            "EvtFileCleanup": 24,
            "AutoForwardCleanupClose": 32,
            "FileObjectClass": 36,
        },
    },
    # Speakeasy 1.5.11 defines this one, but wrongly (next comment): the
    # reference is the KMDF 1.33 headers' layout from TOOLCHAIN.md.
    "WDF_IO_QUEUE_CONFIG": {
        "size": 96,
        "fields": {
            "Size": 0,
            "DispatchType": 4,
            "PowerManaged": 8,
            "AllowZeroLengthRequests": 12,
            "DefaultQueue": 13,
            "EvtIoDefault": 16,
            "EvtIoRead": 24,
            "EvtIoWrite": 32,
            "EvtIoDeviceControl": 40,
            "EvtIoInternalDeviceControl": 48,
            "EvtIoStop": 56,
            "EvtIoResume": 64,
            "EvtIoCanceledOnQueue": 72,
            "Settings": 80,
            "Driver": 88,
        },
    },
}

# Speakeasy 1.5.11's WDF_IO_QUEUE_CONFIG is known wrong: it declares the
# ULONG/enum fields as 8-byte words, so the struct is 112 bytes instead of 96
# and every EvtIo* callback sits 16 bytes late (EvtIoDeviceControl at 56, not
# 40). Never use it as a reference; the harness reads the driver's queue
# config with the TOOLCHAIN.md layout (kernel_harness.WDF_IO_QUEUE_CONFIG_OFFSETS).
SPEAKEASY_KNOWN_WRONG = {"WDF_IO_QUEUE_CONFIG"}


def speakeasy_layout(name: str):
    """(size, alignment, {field: offset}) of Speakeasy's x64 definition, or None."""
    definition = getattr(speakeasy_wdf, name, None)
    if definition is None or name in SPEAKEASY_KNOWN_WRONG:
        return None
    ctype = type(definition(8).__struct__)
    fields = {field: getattr(ctype, field).offset for field, _type in ctype._fields_}
    return ctypes.sizeof(ctype), ctypes.alignment(ctype), fields


def test_manifest_function_count_is_the_bound_kmdf_1_29_table_size(wdf_layout):
    assert wdf_layout["function_count"] == KMDF_BIND_FUNCTION_COUNT == 454
    # Speakeasy's table is shorter (it stops at 422); every index the driver
    # uses must still fall inside both.
    assert len(speakeasy_wdf_function_names()) == 422
    assert max(wdf_layout["indices"].values()) < len(speakeasy_wdf_function_names())


def test_every_manifest_index_is_the_position_of_that_function_in_speakeasy_wdffunctions(wdf_layout):
    names = speakeasy_wdf_function_names()
    assert "WdfDriverCreate" in wdf_layout["indices"], "the one WDF call the driver makes today"
    mismatches = {}
    for name, index in wdf_layout["indices"].items():
        assert names.count(name) == 1, f"{name} is not (exactly once) in Speakeasy's WDFFUNCTIONS"
        if names.index(name) != index:
            mismatches[name] = (index, names.index(name))
    assert mismatches == {}, "manifest index != Speakeasy position: {name: (manifest, speakeasy)}"


@pytest.mark.parametrize("name", ["WDF_DRIVER_CONFIG", "WDF_BIND_INFO", "WDF_VERSION"])
def test_wdf_struct_layouts_agree_with_speakeasy_definitions(wdf_layout, name):
    layout = wdf_layout["layouts"][name]
    reference = speakeasy_layout(name)
    assert reference is not None, f"Speakeasy defines {name}"
    size, alignment, fields = reference
    assert layout["size"] == size
    assert layout["align"] == alignment
    # Same field names in the same places (Speakeasy names them as the headers do).
    assert layout["fields"] == fields


@pytest.mark.parametrize("name", sorted(TOOLCHAIN_FACTS))
def test_wdf_struct_layouts_speakeasy_lacks_or_gets_wrong_agree_with_the_kmdf_headers_facts(wdf_layout, name):
    # If a future Speakeasy defines the struct (correctly), compare with it instead.
    reference = speakeasy_layout(name)
    layout = wdf_layout["layouts"][name]
    if reference is not None:
        size, _alignment, fields = reference
        assert (layout["size"], layout["fields"]) == (size, fields)
        return
    facts = TOOLCHAIN_FACTS[name]
    assert layout["size"] == facts["size"]
    assert layout["fields"] == facts["fields"]


def test_wdf_io_queue_config_is_in_the_manifest_and_the_harness_reads_it_the_same_way(wdf_layout):
    layout = wdf_layout["layouts"]["WDF_IO_QUEUE_CONFIG"]
    assert (layout["size"], layout["align"]) == (WDF_IO_QUEUE_CONFIG_SIZE, 8) == (96, 8)
    assert layout["fields"] == WDF_IO_QUEUE_CONFIG_OFFSETS


def test_speakeasy_wdf_io_queue_config_is_wrong_so_the_harness_workaround_is_needed(wdf_layout):
    # Documents the Speakeasy 1.5.11 defect: read through its definition, the
    # driver's queue config would yield EvtIoInternalDeviceControl's slot
    # (+56) as EvtIoDeviceControl. When this fails, Speakeasy got fixed:
    # drop WDF_IO_QUEUE_CONFIG from SPEAKEASY_KNOWN_WRONG and compare with it.
    ctype = type(speakeasy_wdf.WDF_IO_QUEUE_CONFIG(8).__struct__)
    speakeasy_offset = getattr(ctype, "EvtIoDeviceControl").offset
    assert speakeasy_offset != wdf_layout["layouts"]["WDF_IO_QUEUE_CONFIG"]["fields"]["EvtIoDeviceControl"] == 40
    assert speakeasy_offset - 40 == 16
    assert ctypes.sizeof(ctype) == 112 != 96


def test_the_driver_passes_a_queue_config_of_the_manifest_size(kernel, wdf_layout):
    kernel.load()
    config = kernel.control_device["queue_config"]
    assert config["Size"] == wdf_layout["layouts"]["WDF_IO_QUEUE_CONFIG"]["size"]
    assert kernel.in_image(config["EvtIoDeviceControl"])
    assert config["EvtIoInternalDeviceControl"] == 0, "what Speakeasy's layout would have taken for it"


def test_every_wdf_layout_in_the_manifest_has_a_reference(wdf_layout):
    # A struct added to the manifest without a reference would go unchecked.
    unchecked = [
        name
        for name in wdf_layout["layouts"]
        if speakeasy_layout(name) is None and name not in TOOLCHAIN_FACTS
    ]
    assert unchecked == []


def test_the_running_driver_uses_the_manifest_layouts(kernel, wdf_layout):
    # The manifest comes from the host build; check that the cross-built
    # image agrees with it where the emulator can see the sizes it passes.
    kernel.load()
    assert kernel.wdf_binds[0].size == wdf_layout["layouts"]["WDF_BIND_INFO"]["size"]
    assert kernel.wdf_binds[0].func_count == wdf_layout["function_count"]
    assert kernel.wdf_driver_creates[0]["config_size"] == wdf_layout["layouts"]["WDF_DRIVER_CONFIG"]["size"]
    # DisplaceDriverUnload at the manifest's offset is what made the entry
    # stub take over DriverUnload.
    displace = wdf_layout["layouts"]["WDF_DRIVER_GLOBALS"]["fields"]["DisplaceDriverUnload"]
    assert kernel.read(kernel.wdf_driver_globals + displace, 1) == b"\x01"
    assert kernel.in_image(kernel.driver_unload_routine())
