"""The Event Log message table of package/procguard-events.exe, read back with
an independent PE parser (pefile, from PyPI): the image has an
RT_MESSAGETABLE resource (English, US), and it holds every message of
crates/procguard-events/messages.mc under its id, with its text and its
insertion strings (%1, %2, ...) in the order the .mc gives, which is the
order crates/procguard-events/src/messages.rs writes them (a unit test
there checks the .mc against the code).

pefile finds the resource; the MESSAGE_RESOURCE_DATA layout inside it
(blocks of ids, then entries: length, flags, text) is decoded here, as
FormatMessage reads it.
"""

import os
import re
import struct
from pathlib import Path

import pefile
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(os.environ.get("PROCGUARD_PACKAGE", REPO / "package"))
MC = REPO / "crates" / "procguard-events" / "messages.mc"
RT_MESSAGETABLE = pefile.RESOURCE_TYPE["RT_MESSAGETABLE"]
EN_US = 0x409


def mc_messages(text):
    """{id: (symbol, text)} of a .mc file, the text as windmc stores it: each
    line of the .mc followed by a bare LF (the messages are one line each,
    their line breaks written %n, which FormatMessage turns into CRLF)."""
    messages = {}
    lines = iter(text.splitlines())
    for line in lines:
        match = re.fullmatch(r"MessageId=(\d+)", line.strip())
        if not match:
            continue
        ident = int(match.group(1))
        symbol = None
        for line in lines:
            if line.startswith("SymbolicName="):
                symbol = line.split("=", 1)[1].strip()
            if line.startswith("Language="):
                break
        body = []
        for line in lines:
            if line == ".":
                break
            body.append(line)
        messages[ident] = (symbol, "".join(f"{line}\n" for line in body))
    return messages


def message_table(data):
    """{id: text} of a MESSAGE_RESOURCE_DATA blob."""
    (blocks,) = struct.unpack_from("<I", data, 0)
    assert 0 < blocks < 1000, blocks
    table = {}
    for block in range(blocks):
        low, high, offset = struct.unpack_from("<III", data, 4 + 12 * block)
        assert low <= high and offset < len(data), (low, high, offset)
        for ident in range(low, high + 1):
            length, flags = struct.unpack_from("<HH", data, offset)
            assert length >= 4 and offset + length <= len(data), (ident, length)
            raw = data[offset + 4 : offset + length]
            if flags & 1:
                text = raw.decode("utf-16-le")
            else:
                text = raw.decode("cp1252")
            table[ident] = text.rstrip("\0")
            offset += length
    return table


@pytest.fixture(scope="module")
def image():
    path = PACKAGE / "procguard-events.exe"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo xtask package` (README command 1) first")
    pe = pefile.PE(str(path), fast_load=True)
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]])
    return pe


def resource(pe):
    """(language, bytes) of every RT_MESSAGETABLE resource."""
    found = []
    root = getattr(pe, "DIRECTORY_ENTRY_RESOURCE", None)
    assert root is not None, "procguard-events.exe has no resources at all"
    for kind in root.entries:
        if kind.id != RT_MESSAGETABLE:
            continue
        for name in kind.directory.entries:
            for language in name.directory.entries:
                entry = language.data.struct
                found.append((language.id, pe.get_data(entry.OffsetToData, entry.Size)))
    return found


def test_the_exe_has_an_english_message_table(image):
    tables = resource(image)
    assert len(tables) == 1, f"expected one RT_MESSAGETABLE resource, found {len(tables)}"
    language, data = tables[0]
    assert language == EN_US
    assert message_table(data), "the message table is empty"


def test_every_message_of_the_mc_is_in_the_table_with_its_text(image):
    expected = mc_messages(MC.read_text(encoding="ascii"))
    assert set(expected) == {1, 2, 3, 10, 11, 12, 20, 21, 30}, sorted(expected)
    ((_, data),) = resource(image)
    table = message_table(data)
    assert sorted(table) == sorted(expected)
    for ident, (symbol, text) in expected.items():
        assert table[ident] == text, f"message {ident} ({symbol})"
    # The event an Event Viewer shows for "access stripped": Sysmon-style
    # fields, each numbered in order.
    stripped = table[10]
    assert stripped.startswith("Process access stripped")
    fields = [re.fullmatch(r"(\w+): %(\d+)", line.strip()) for line in stripped.split("%n")[1:]]
    assert all(fields), stripped
    fields = [match.groups() for match in fields]
    assert [int(n) for _, n in fields] == list(range(1, 20))
    assert [name for name, _ in fields][:6] == [
        "UtcTime",
        "SourceProcessId",
        "SourceThreadId",
        "SourceImage",
        "TargetProcessId",
        "TargetImage",
    ]
    assert ("GrantedAccess", "10") in fields and ("Rule", "12") in fields


def test_the_reader_catches_a_missing_or_changed_message(image):
    ((_, data),) = resource(image)
    table = message_table(data)
    # Truncate the first block to one id fewer: the reader sees one message less.
    low, high, offset = struct.unpack_from("<III", data, 4)
    shortened = bytearray(data)
    struct.pack_into("<III", shortened, 4, low, high - 1, offset)
    assert len(message_table(bytes(shortened))) == len(table) - 1
    expected = mc_messages(MC.read_text(encoding="ascii"))
    changed = {**table, 10: table[10].replace("%10", "%11")}
    assert changed[10] != expected[10][1]
