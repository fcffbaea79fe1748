"""Structural tests of the driver package that README command 1 produces.

They run the same checks `cargo xtask package` enforces, on the real packaged
files and on deliberately broken copies, so each rule is shown to catch what
it is for: a check that cannot fail proves nothing.
"""

import os
import shutil
import struct
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(os.environ.get("PROCGUARD_PACKAGE", REPO / "package"))
SYS = PACKAGE / "procguard.sys"
CERT_SUBJECT = "CN=procguard Test Signing"  # crates/xtask/src/signing.rs

IMAGE_SCN_MEM_NOT_PAGED = 0x08000000
IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY = 0x80


def check_pe(path, signed=False):
    args = [os.environ.get("CARGO", "cargo"), "xtask", "check-pe"]
    if signed:
        args.append("--signed")
    return subprocess.run(args + [str(path)], cwd=REPO, capture_output=True, text=True)


def headers(data):
    """Offsets of the optional header and of the section table."""
    e_lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[e_lfanew : e_lfanew + 4] == b"PE\0\0"
    sections = struct.unpack_from("<H", data, e_lfanew + 6)[0]
    optional_size = struct.unpack_from("<H", data, e_lfanew + 20)[0]
    optional = e_lfanew + 24
    return optional, optional + optional_size, sections


def section_offset(data, name):
    _, table, count = headers(data)
    for index in range(count):
        entry = table + 40 * index
        if data[entry : entry + 8].rstrip(b"\0") == name:
            return entry
    raise AssertionError(f"no section {name!r}")


@pytest.fixture
def broken_copy(tmp_path):
    def make(mutate):
        data = bytearray(SYS.read_bytes())
        mutate(data)
        path = tmp_path / "broken.sys"
        path.write_bytes(bytes(data))
        return path

    return make


def test_package_has_the_signed_driver_the_inf_and_the_certificate():
    for name in ("procguard.sys", "procguard.inf", "procguard.cer", "procguardctl.exe", "procguard-smoke.exe"):
        assert (PACKAGE / name).is_file(), f"{name} missing from {PACKAGE} (run: cargo xtask package)"


def test_packaged_driver_passes_every_structural_check_and_is_signed():
    result = check_pe(SYS, signed=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "structure: OK" in result.stdout
    assert "signed: true" in result.stdout
    imports = [line for line in result.stdout.splitlines() if line.startswith("imports ")]
    modules = {line.split()[1].rstrip(":").lower() for line in imports}
    assert modules <= {"ntoskrnl.exe", "hal.dll", "wdfldr.sys"}, modules
    assert "ObRegisterCallbacks" in result.stdout and "WdfVersionBind" in result.stdout


def test_missing_force_integrity_is_rejected(broken_copy):
    def clear(data):
        optional, _, _ = headers(data)
        flags = struct.unpack_from("<H", data, optional + 70)[0]
        struct.pack_into("<H", data, optional + 70, flags & ~IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY)

    result = check_pe(broken_copy(clear))
    assert result.returncode != 0
    assert "lacks FORCE_INTEGRITY" in result.stderr


def test_a_non_native_subsystem_is_rejected(broken_copy):
    def windows_gui(data):
        optional, _, _ = headers(data)
        struct.pack_into("<H", data, optional + 68, 2)

    result = check_pe(broken_copy(windows_gui))
    assert result.returncode != 0
    assert "is not NATIVE" in result.stderr


def test_pageable_code_is_rejected(broken_copy):
    def pageable_text(data):
        entry = section_offset(data, b".text")
        flags = struct.unpack_from("<I", data, entry + 36)[0]
        struct.pack_into("<I", data, entry + 36, flags & ~IMAGE_SCN_MEM_NOT_PAGED)

    result = check_pe(broken_copy(pageable_text))
    assert result.returncode != 0
    assert "section .text is pageable" in result.stderr


def test_an_import_from_a_user_mode_dll_is_rejected(broken_copy):
    def user_mode_import(data):
        at = data.find(b"WDFLDR.SYS\0")
        assert at > 0
        data[at : at + 10] = b"USER32.DLL"

    result = check_pe(broken_copy(user_mode_import))
    assert result.returncode != 0
    assert "imports from USER32.DLL, not a kernel module" in result.stderr


def test_a_modified_signed_image_fails_the_checksum_and_the_signature(broken_copy, tmp_path):
    def flip_code_byte(data):
        entry = section_offset(data, b".text")
        raw = struct.unpack_from("<I", data, entry + 20)[0]
        data[raw + 16] ^= 0xFF

    broken = broken_copy(flip_code_byte)
    result = check_pe(broken, signed=True)
    assert result.returncode != 0
    assert "PE checksum" in result.stderr
    pem = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(PACKAGE / "procguard.cer"), "-out", str(pem)], check=True
    )
    good = subprocess.run(["osslsigncode", "verify", "-CAfile", str(pem), "-in", str(SYS)], capture_output=True, text=True)
    assert good.returncode == 0 and "Signature verification: ok" in good.stdout, good.stdout + good.stderr
    bad = subprocess.run(["osslsigncode", "verify", "-CAfile", str(pem), "-in", str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0


def test_certificate_is_a_self_signed_code_signing_certificate():
    text = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(PACKAGE / "procguard.cer"), "-noout", "-subject", "-issuer", "-ext", "extendedKeyUsage"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert CERT_SUBJECT.replace("CN=", "CN = ") in text or CERT_SUBJECT in text
    assert "Code Signing" in text


def test_inf_is_stamped_and_primitive():
    inf = (PACKAGE / "procguard.inf").read_bytes().decode("ascii")
    assert "\r\n" in inf, "INF lines end in CRLF"
    lines = [line.strip() for line in inf.splitlines() if line.strip() and not line.strip().startswith(";")]
    leftovers = [line for line in lines if "$" in line.replace("$WINDOWS NT$", "")]
    assert not leftovers, leftovers
    driver_ver = [line for line in lines if line.startswith("DriverVer")]
    assert len(driver_ver) == 1
    date, version = driver_ver[0].split("=", 1)[1].strip().split(",")
    month, day, year = date.split("/")
    assert len(month) == 2 and len(day) == 2 and len(year) == 4 and int(year) >= 2026
    assert version.count(".") == 3
    sections = {line.strip("[]").lower() for line in lines if line.startswith("[")}
    assert "manufacturer" not in sections, "a primitive driver has no Manufacturer section"
    assert "defaultinstall.ntamd64" in sections and "defaultinstall.ntamd64.services" in sections
    assert "defaultinstall" not in sections, "DefaultInstall must be architecture-decorated"
    # The version the driver binds, the floor's (driver/windows-support.toml [bind]).
    table = tomllib.loads((Path(__file__).resolve().parents[2] / "driver" / "windows-support.toml").read_text())
    assert f"KmdfLibraryVersion = {table['bind']['kmdf']}" in inf
    assert table["bind"]["kmdf"] == "1.29"
    assert "ServiceType    = 1" in inf
    assert "procguard.sys" in inf and "CatalogFile = procguard.cat" in inf


def assert_signed_console_program_importing_only_system_dlls(exe):
    """An AMD64 console program, importing only Windows system DLLs, whose
    Authenticode signature verifies against the package's test certificate."""
    headers = subprocess.run(["llvm-readobj-16", "--file-headers", "--coff-imports", str(exe)], capture_output=True, text=True, check=True).stdout
    assert "IMAGE_FILE_MACHINE_AMD64" in headers and "IMAGE_SUBSYSTEM_WINDOWS_CUI" in headers
    dlls = {line.split(":", 1)[1].strip().lower() for line in headers.splitlines() if line.strip().startswith("Name:") and line.strip().lower().endswith(".dll")}
    system = {"kernel32.dll", "ntdll.dll", "advapi32.dll", "msvcrt.dll", "bcrypt.dll", "bcryptprimitives.dll", "ws2_32.dll", "userenv.dll"}
    assert dlls and all(dll in system or dll.startswith("api-ms-win-") for dll in dlls), dlls
    pem = PACKAGE.parent / "target" / "procguard-test.pem"
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(PACKAGE / "procguard.cer"), "-out", str(pem)], check=True)
    verified = subprocess.run(["osslsigncode", "verify", "-CAfile", str(pem), "-in", str(exe)], capture_output=True, text=True)
    assert verified.returncode == 0 and "Signature verification: ok" in verified.stdout, verified.stdout + verified.stderr
    return dlls


def test_the_control_tool_is_a_signed_windows_console_program_importing_only_system_dlls():
    assert_signed_console_program_importing_only_system_dlls(PACKAGE / "procguardctl.exe")


def test_the_smoke_test_is_a_signed_windows_console_program_importing_only_system_dlls():
    exe = PACKAGE / "procguard-smoke.exe"
    assert exe.is_file(), f"{exe} missing (run: cargo xtask package)"
    dlls = assert_signed_console_program_importing_only_system_dlls(exe)
    # What the smoke test calls beyond std: NtQueryObject (the granted access).
    assert "ntdll.dll" in dlls
    symbols = subprocess.run(["llvm-readobj-16", "--coff-imports", str(exe)], capture_output=True, text=True, check=True).stdout
    for symbol in ("OpenProcess", "OpenThread", "TerminateProcess", "NtQueryObject", "GetTokenInformation"):
        assert f"Symbol: {symbol} " in symbols, symbol


def test_the_import_check_rejects_a_program_importing_a_non_system_dll(tmp_path):
    """The helper above is a real check: USER32.dll in a copy fails it."""
    data = bytearray((PACKAGE / "procguard-smoke.exe").read_bytes())
    at = data.find(b"advapi32.dll\0")
    assert at > 0
    data[at : at + 12] = b"user32.dll\0\0"
    broken = tmp_path / "procguard-smoke.exe"
    broken.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="user32.dll"):
        assert_signed_console_program_importing_only_system_dlls(broken)
