"""`procguardctl export`: the files fleet tools push, read back by Windows'
own tools (Wine's).

The packaged `procguardctl.exe export --reg` writes a `.reg` file under Wine;
Wine's `regedit /s` and `reg import` import it into the prefix's registry,
`reg query` reads `Parameters\\Policy` back as REG_BINARY holding exactly
the bytes `procguardctl compile` writes, and Wine's `regedit /e` and
`reg export` of the key write the very same bytes as our file (Wine's
exporter follows Windows' format: UTF-16LE, CRLF, its line wrapping). A
second export of another policy, imported, replaces the value.

The `--powershell` script cannot run here (no PowerShell on Debian): it is
parsed with the PowerShell grammar of tests/package/ps_rules.py and checked
with the VM scripts' rules that apply to it, and its bytes literal and
policy id are read from the syntax tree and compared with the compiled blob
and with zlib's CRC-32 of it. That the script runs and does what it says is
a Windows check (WINDOWS-CHECKS.md).

Nothing is skipped: without wine64 or the package every Wine test fails
and says what to install or run.
"""

import importlib.util
import re
import zlib
from pathlib import Path

import pytest

from test_windows_programs import EXIT_ERROR, EXIT_OK, REPO, host, packaged, wine  # noqa: F401 (fixtures)

KEY = r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Services\procguard\Parameters"
SERVICE_KEY = r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Services\procguard"
EXAMPLE = "protect-agent.toml"
SECOND = REPO / "crates" / "procguardctl" / "tests" / "policies" / "warnings.toml"
BAD = REPO / "crates" / "procguardctl" / "tests" / "policies" / "bad-values.toml"


def _ps_rules():
    """tests/package/ps_rules.py, loaded by path (tests/package is not a
    package and has a conftest of its own)."""
    spec = importlib.util.spec_from_file_location(
        "procguard_ps_rules", REPO / "tests" / "package" / "ps_rules.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ps_rules = _ps_rules()


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / EXAMPLE).write_bytes(packaged(EXAMPLE).read_bytes())
    (tmp_path / "second.toml").write_bytes(SECOND.read_bytes())
    (tmp_path / "bad.toml").write_bytes(BAD.read_bytes())
    return tmp_path


@pytest.fixture
def registry(wine, workdir):
    """Runs Wine's reg.exe / regedit.exe; the procguard service key is gone
    before and after the test (no other test may see a procguard key)."""

    def delete():
        wine(["reg", "delete", SERVICE_KEY, "/f"], workdir)

    delete()
    yield lambda args: wine(args, workdir)
    delete()


def compile_blob(host, workdir, policy, name):
    code, out, err = host("procguardctl", ["compile", policy, "-o", name], workdir)
    assert code == EXIT_OK, out + err
    return (workdir / name).read_bytes()


def export(wine, workdir, *args):
    code, out, err = wine([packaged("procguardctl.exe"), "export", *args], workdir)
    assert code == EXIT_OK, out + err
    return out, err


def query_policy(registry):
    """`reg query KEY /v Policy`: (type, bytes)."""
    code, out, err = registry(["reg", "query", KEY, "/v", "Policy"])
    assert code == 0, out + err
    match = re.search(r"^\s+Policy\s+(REG_\w+)\s+([0-9A-Fa-f]*)\s*$", out, re.MULTILINE)
    assert match, out
    return match.group(1), bytes.fromhex(match.group(2))


def test_regedit_imports_the_reg_file_and_exports_the_same_bytes(wine, host, registry, workdir):
    blob = compile_blob(host, workdir, EXAMPLE, "example.bin")
    out, err = export(wine, workdir, "--reg", EXAMPLE, "-o", "policy.reg")
    assert f"policy id 0x{zlib.crc32(blob[:12] + bytes(4) + blob[16:]):08x}" in out, out
    reg = (workdir / "policy.reg").read_bytes()
    # The host build writes the same file.
    code, _, err = host("procguardctl", ["export", "--reg", EXAMPLE, "-o", "host.reg"], workdir)
    assert code == EXIT_OK, err
    assert (workdir / "host.reg").read_bytes() == reg

    code, out, err = registry(["regedit", "/s", "policy.reg"])
    assert code == 0, out + err
    assert query_policy(registry) == ("REG_BINARY", blob)
    # Windows' format as Wine's regedit writes it: byte for byte our file.
    code, out, err = registry(["regedit", "/e", "exported.reg", KEY])
    assert code == 0, out + err
    assert (workdir / "exported.reg").read_bytes() == reg


def test_reg_import_sets_the_value_and_a_second_export_replaces_it(wine, host, registry, workdir):
    first = compile_blob(host, workdir, EXAMPLE, "first.bin")
    second = compile_blob(host, workdir, "second.toml", "second.bin")
    assert first != second
    export(wine, workdir, "--reg", EXAMPLE, "-o", "first.reg")
    _, err = export(wine, workdir, "--reg", "second.toml", "-o", "second.reg")
    assert ": warning: " in err, "warnings.toml's warnings are printed"

    code, out, err = registry(["reg", "import", "first.reg"])
    assert code == 0, out + err
    assert query_policy(registry) == ("REG_BINARY", first)
    code, out, err = registry(["reg", "import", "second.reg"])
    assert code == 0, out + err
    assert query_policy(registry) == ("REG_BINARY", second)
    code, out, err = registry(["reg", "export", KEY, "exported.reg", "/y"])
    assert code == 0, out + err
    assert (workdir / "exported.reg").read_bytes() == (workdir / "second.reg").read_bytes()


def test_an_invalid_policy_exports_nothing(wine, workdir):
    for args in (["--reg", "bad.toml", "-o", "bad.reg"], ["--powershell", "bad.toml", "-o", "bad.ps1"]):
        code, out, err = wine([packaged("procguardctl.exe"), "export", *args], workdir)
        assert (code, out) == (EXIT_ERROR, ""), err
        assert err.endswith("errors; nothing written\n"), err
    assert not (workdir / "bad.reg").exists() and not (workdir / "bad.ps1").exists()


def test_the_windows_build_writes_the_same_script_as_the_host_build(wine, host, workdir):
    for extra in ([], ["--detect"]):
        args = ["export", "--powershell", *extra, EXAMPLE, "-o", "windows.ps1"]
        code, out, err = wine([packaged("procguardctl.exe"), *args], workdir)
        assert code == EXIT_OK, out + err
        code, _, err = host("procguardctl", [*args[:-1], "linux.ps1"], workdir)
        assert code == EXIT_OK, err
        script = (workdir / "windows.ps1").read_bytes()
        assert script == (workdir / "linux.ps1").read_bytes()
        assert script.startswith(b"<#\r\n.SYNOPSIS\r\n")


# ---- the PowerShell script (structure only: no PowerShell here) -------------


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)


def assignment(tree, variable):
    """The right-hand side node of the script-level assignment to `variable`."""
    found = [
        node for node in _walk(tree.root_node)
        if node.type == "assignment_expression"
        and node.children[0].text.decode().split("]")[-1].lower() == variable.lower()
    ]
    assert len(found) == 1, f"{variable} is assigned {len(found)} times"
    return found[0].children[-1]


def integer_values(node):
    values = []
    for literal in _walk(node):
        if literal.type == "hexadecimal_integer_literal":
            values.append(int(literal.text.decode(), 16))
        elif literal.type == "decimal_integer_literal":
            values.append(int(literal.text.decode()))
    return values


@pytest.fixture(scope="module")
def scripts(host, tmp_path_factory):
    """(blob, remediation script, detection script) of the example policy."""
    workdir = tmp_path_factory.mktemp("powershell")
    (workdir / EXAMPLE).write_bytes(packaged(EXAMPLE).read_bytes())
    blob = compile_blob(host, workdir, EXAMPLE, "example.bin")
    found = []
    for extra in ([], ["--detect"]):
        code, out, err = host("procguardctl", ["export", "--powershell", *extra, EXAMPLE], workdir)
        assert code == EXIT_OK, err
        found.append(out)
    return blob, found[0], found[1]


def test_the_powershell_script_parses_and_follows_the_scripts_rules(scripts):
    for script in scripts[1:]:
        assert "\r\n" in script and "\n" not in script.replace("\r\n", ""), "CRLF line ends"
        text = script.replace("\r\n", "\n")
        # Syntax, ASCII only, comment-based help, no PowerShell 7 syntax.
        assert ps_rules.check_script(text, runnable=False) == []
        assert ("-version", "5.1") in ps_rules.requires(text)
        # No -RunAsAdministrator: detection runs without elevation.
        assert ("-runasadministrator", "") not in ps_rules.requires(text)
        tree = ps_rules.parse(text)
        commands = ps_rules.top_level_commands(tree)
        assert any(name == "Set-StrictMode" and args == ["-Version", "Latest"] for name, args, _ in commands)
        assert ("$ErrorActionPreference", "'Stop'") in ps_rules.top_level_assignments(tree)
        # A top-level try whose catch exits non-zero; every exit is 0 or 1.
        tries = [node for node in _walk(tree.root_node) if node.type == "try_statement"]
        assert len(tries) == 1
        functions = [node for node in _walk(tree.root_node) if node.type == "function_statement"]
        assert not any(f.start_byte < tries[0].start_byte < f.end_byte for f in functions), "try at top level"
        exits = [
            node.text.decode() for node in _walk(tries[0])
            if node.type == "flow_control_statement" and node.text.decode().startswith("exit")
        ]
        catch_exits = [
            node.text.decode() for clause in _walk(tries[0]) if clause.type == "catch_clause"
            for node in _walk(clause) if node.type == "flow_control_statement"
        ]
        assert catch_exits == ["exit 1"]
        assert sorted(set(exits)) == ["exit 0", "exit 1"]
        # Windows PowerShell 5.1 reads a hexadecimal literal above 0x7FFFFFFF
        # as a negative int32: every large constant is written in decimal.
        for node in _walk(tree.root_node):
            if node.type == "hexadecimal_integer_literal":
                assert int(node.text.decode(), 16) <= 0x7FFFFFFF, node.text


def test_the_powershell_script_holds_the_blob_and_its_crc32(scripts):
    blob, remediation, detection = scripts
    policy_id = zlib.crc32(blob[:12] + bytes(4) + blob[16:])
    assert int.from_bytes(blob[12:16], "little") == policy_id
    for script in (remediation, detection):
        tree = ps_rules.parse(script.replace("\r\n", "\n"))
        assert bytes(integer_values(assignment(tree, "$Policy"))) == blob
        assert integer_values(assignment(tree, "$PolicyId")) == [policy_id]
        assert assignment(tree, "$KeyPath").text.decode() == (
            r"'HKLM:\SYSTEM\CurrentControlSet\Services\procguard\Parameters'"
        )
        assert assignment(tree, "$ValueName").text.decode() == "'Policy'"
        # The CRC-32 the script computes is zlib's: its constants.
        crc = [n.text.decode() for n in _walk(tree.root_node) if n.type == "decimal_integer_literal"]
        assert str(0xEDB88320) in crc and str(0xFFFFFFFF) in crc
        writes = [
            args for name, args, _ in ps_rules.top_level_commands(tree) if name == "Set-ItemProperty"
        ]
        assert writes == [["-Path", "$KeyPath", "-Name", "$ValueName", "-Value", "$Policy", "-Type", "Binary"]]
    assert "[switch]$Detect = $false" in remediation
    assert "[switch]$Detect = $true" in detection
    assert remediation.replace("$Detect = $false", "") .count("$Detect") == detection.replace(
        "$Detect = $true", ""
    ).count("$Detect")
