"""The VM scripts (tests/vm/*.ps1) parse as PowerShell, follow the scripts'
rules, and name the service, device, files, certificate and INF section that
the package really has (tests/package/ps_rules.py).

Nothing here runs PowerShell: the scripts only run on a test-signed Windows
VM (README, "Deploy to a test-signed VM"). What only that VM can confirm is
in WINDOWS-CHECKS.md. Each rule is also applied to a deliberately broken copy,
which it must catch.
"""

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

from inf_rules import parse as parse_inf
from ps_rules import COMMON, check_script, parse, shared_names, string_literals, syntax_errors

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(os.environ.get("PROCGUARD_PACKAGE", REPO / "package"))
VM = REPO / "tests" / "vm"
SCRIPTS = sorted(VM.glob("*.ps1"))
RUNNABLE = [path for path in SCRIPTS if path.name != COMMON]
EXAMPLE_POLICY = REPO / "crates" / "procguardctl" / "examples" / "protect-agent.toml"

# What the package must hold for the scripts (package.rs copies them).
PACKAGE_FILE_KEYS = (
    "InfName",
    "DriverName",
    "CatalogName",
    "CertificateName",
    "ControlToolName",
    "SmokeTestName",
    "EventsExeName",
    "ExamplePolicyName",
)
# Windows' own programs the scripts run or name.
WINDOWS_FILES = {"pnputil.exe", "bcdedit.exe", "sc.exe", "rundll32.exe", "setupapi.dll", "powershell.exe"}
FILE_NAME = re.compile(r"(?<![\w.-])([\w.-]+\.(?:inf|sys|cat|cer|pdb|exe|dll|toml|ps1))(?![\w-])", re.IGNORECASE)


def text_of(path):
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def names():
    return shared_names(text_of(VM / COMMON))


def package_inf():
    path = PACKAGE / "procguard.inf"
    assert path.is_file(), f"{path} missing (run: cargo xtask package)"
    return path.read_bytes().decode("ascii")


# ---- syntax ----------------------------------------------------------------


def test_the_vm_scripts_are_all_there():
    expected = {
        COMMON,
        "Enable-TestSigning.ps1",
        "Install-ProcGuard.ps1",
        "Uninstall-ProcGuard.ps1",
        "Test-ProcGuard.ps1",
        "Get-ProcGuardDiagnostics.ps1",
    }
    assert expected <= {path.name for path in SCRIPTS}, sorted(path.name for path in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_vm_script_parses_with_the_powershell_grammar(script):
    text = text_of(script)
    errors = syntax_errors(text)
    assert errors == [], f"{script.name}:\n" + "\n".join(errors)
    # The grammar really read the script: top-level statements, not one blob.
    statements = [node for node in parse(text).root_node.named_children if node.type != "comment"]
    assert statements, f"{script.name}: no statement found"


INSTALL = VM / "Install-ProcGuard.ps1"


def insert_line(text, number, line):
    lines = text.split("\n")
    lines.insert(number - 1, line)
    return "\n".join(lines)


def drop_last_brace(text):
    at = text.rstrip().rfind("}")
    return text[:at] + text[at + 1 :]


# (mutation of Install-ProcGuard.ps1, what the error says, its line or None)
# Where the broken lines go (1-based): in Test-ServiceLoadsPackage, before
# the brace closing its second `if`, the line before its last statement
# (found, not hard-coded, so the help text may grow).
AT = text_of(INSTALL).split("\n").index("    return (Get-FileHash -LiteralPath $image -Algorithm SHA256).Hash -eq $DriverHash")

BROKEN_SYNTAX = {
    "unclosed-brace": (drop_last_brace, "missing '}'", None),
    "unterminated-string": (lambda t: insert_line(t, AT, "    Write-Host 'never closed"), "cannot parse", AT),
    "unclosed-parenthesis": (lambda t: insert_line(t, AT, "    if ($x -eq 1 {"), "cannot parse", AT),
    "powershell-7-null-coalescing": (lambda t: insert_line(t, AT, "    $a = $b ?? 'default'"), "cannot parse", AT),
}


@pytest.mark.parametrize("name", sorted(BROKEN_SYNTAX))
def test_a_syntax_error_is_reported_with_its_line_and_column(name):
    mutate, expected, line = BROKEN_SYNTAX[name]
    original = text_of(INSTALL)
    broken = mutate(original)
    assert broken != original
    errors = syntax_errors(broken)
    print(f"{name}:", *errors, sep="\n  ")
    assert errors, f"{name}: the broken copy parsed without error"
    assert all(re.match(r"line \d+, column \d+: ", error) for error in errors), errors
    assert any(expected in error for error in errors), errors
    if line is not None:
        assert any(error.startswith(f"line {line},") for error in errors), errors
    # And the rule check refuses it too.
    assert any("does not parse" in problem for problem in check_script(broken))


# ---- the names the scripts use ------------------------------------------------


def test_the_service_name_is_the_one_the_inf_installs(names):
    for label, text in (
        ("inf/procguard.inx", (REPO / "inf" / "procguard.inx").read_text(encoding="ascii")),
        ("package/procguard.inf", package_inf()),
    ):
        sections, errors = parse_inf(text)
        assert not errors, errors
        services = [s for name, entries in sections.items() if name.endswith(".services") for s in entries]
        added = [value.split(",")[0].strip() for key, value in services if key == "addservice"]
        assert added == [names["ServiceName"]], f"{label}: AddService {added}, the scripts use {names['ServiceName']!r}"


def test_the_device_path_is_the_protocols_user_mode_path(names):
    source = (REPO / "crates" / "procguard-protocol" / "src" / "ioctl.rs").read_text(encoding="utf-8")
    match = re.search(r'pub const USER_MODE_PATH: &str = ("(?:[^"\\]|\\.)*");', source)
    assert match, "USER_MODE_PATH not found in crates/procguard-protocol/src/ioctl.rs"
    assert names["DevicePath"] == ast.literal_eval(match.group(1)) == "\\\\.\\ProcGuard"


def test_the_certificate_subject_is_the_packaged_certificates(names):
    cer = PACKAGE / "procguard.cer"
    assert cer.is_file(), f"{cer} missing (run: cargo xtask package)"
    subject = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(cer), "-noout", "-subject", "-nameopt", "RFC2253"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert subject == f"subject={names['CertificateSubject']}", subject
    signing = (REPO / "crates" / "xtask" / "src" / "signing.rs").read_text(encoding="utf-8")
    assert f'pub const CERTIFICATE_SUBJECT: &str = "{names["CertificateSubject"]}";' in signing


def test_the_install_section_is_in_the_inf(names):
    section = names["InstallSection"]
    headers = [line.strip() for line in package_inf().splitlines() if line.strip().startswith("[")]
    assert f"[{section}]" in headers, headers
    assert f"[{section}.Services]" in headers, headers
    template = (REPO / "inf" / "procguard.inx").read_text(encoding="ascii").replace("$ARCH$", "amd64")
    assert f"[{section}]" in template


def test_every_package_file_the_scripts_use_is_in_the_built_package(names):
    missing = [names[key] for key in PACKAGE_FILE_KEYS if not (PACKAGE / names[key]).is_file()]
    assert not missing, (
        f"missing from {PACKAGE}: {', '.join(missing)}. The VM scripts need them beside themselves: "
        "crates/xtask/src/package.rs must put procguard-smoke.exe and "
        "crates/procguardctl/examples/protect-agent.toml (as protect-agent.toml) into the package, "
        "then run: cargo xtask package"
    )


def test_the_package_carries_the_vm_scripts_and_the_example_policy():
    problems = []
    for script in SCRIPTS:
        packaged = PACKAGE / script.name
        if not packaged.is_file():
            problems.append(f"{script.name} missing")
        elif packaged.read_bytes() != script.read_bytes():
            problems.append(f"{script.name} differs from tests/vm/{script.name} (stale package?)")
    packaged = PACKAGE / EXAMPLE_POLICY.name
    if not packaged.is_file():
        problems.append(f"{EXAMPLE_POLICY.name} missing")
    elif packaged.read_bytes() != EXAMPLE_POLICY.read_bytes():
        problems.append(f"{EXAMPLE_POLICY.name} differs from crates/procguardctl/examples/{EXAMPLE_POLICY.name}")
    assert not problems, (
        f"{PACKAGE}: " + "; ".join(problems) + ". crates/xtask/src/package.rs must copy every tests/vm/*.ps1 "
        "and crates/procguardctl/examples/protect-agent.toml to the package root, then run: cargo xtask package"
    )


def unknown_file_names(texts, names):
    """File names in string literals that are neither package files, nor VM
    scripts, nor Windows' own: a typo, or a file the package lacks."""
    known = {names[key].lower() for key in PACKAGE_FILE_KEYS} | {path.name.lower() for path in SCRIPTS} | WINDOWS_FILES
    unknown = []
    for script, text in texts.items():
        for content, line in string_literals(text):
            unknown += [f"{script}:{line}: {name}" for name in FILE_NAME.findall(content) if name.lower() not in known]
    return unknown


def names_written_outside_the_shared_file(texts, names):
    """String literals of the run scripts that spell a shared name instead of
    using $ProcGuard.<Key>."""
    written = []
    for script, text in texts.items():
        for content, line in string_literals(text):
            for key, value in names.items():
                whole = content == value
                inside = key in ("DevicePath", "CertificateSubject", "InstallSection") and value in content
                if whole or inside:
                    written.append(f"{script}:{line}: {content!r} is $ProcGuard.{key}")
    return written


def test_every_file_name_in_the_scripts_strings_is_a_package_file_a_script_or_windows(names):
    unknown = unknown_file_names({path.name: text_of(path) for path in SCRIPTS}, names)
    assert not unknown, "file names that are neither in the package, nor a VM script, nor Windows':\n" + "\n".join(unknown)


def test_the_names_are_written_only_in_the_shared_file(names):
    # The scripts say $ProcGuard.ServiceName, never 'procguard', so the tests
    # above that compare the shared file with the INF, the protocol and the
    # certificate cover every script.
    written = names_written_outside_the_shared_file({path.name: text_of(path) for path in RUNNABLE}, names)
    assert not written, "\n".join(written)


def test_a_misspelt_file_name_and_a_name_written_twice_are_caught(names):
    broken = text_of(INSTALL).replace(
        "Set-StrictMode -Version Latest\n",
        "Set-StrictMode -Version Latest\n$tool = 'procguardctrl.exe'\n$service = 'procguard'\n$device = \"\\\\.\\ProcGuard\"\n",
    )
    assert syntax_errors(broken) == []
    line = broken.split("\n").index("$tool = 'procguardctrl.exe'") + 1
    assert unknown_file_names({INSTALL.name: broken}, names) == [f"{INSTALL.name}:{line}: procguardctrl.exe"]
    written = names_written_outside_the_shared_file({INSTALL.name: broken}, names)
    assert any("'procguard' is $ProcGuard.ServiceName" in entry for entry in written), written
    assert any("$ProcGuard.DevicePath" in entry for entry in written), written


def test_the_scripts_call_only_scripts_that_exist(names):
    for key in ("InstallScript", "DiagnosticsScript"):
        assert (VM / names[key]).is_file(), names[key]


# ---- the rules ---------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_vm_script_follows_the_rules(script):
    problems = check_script(text_of(script), runnable=script.name != COMMON)
    assert problems == [], f"{script.name}:\n" + "\n".join(problems)


def remove_help(text):
    return re.sub(r"<#.*?#>\n", "", text, count=1, flags=re.DOTALL)


def move_help_after_strict_mode(text):
    help_text = re.search(r"<#.*?#>\n", text, re.DOTALL).group(0)
    text = text.replace(help_text, "", 1)
    return text.replace("Set-StrictMode -Version Latest\n", "Set-StrictMode -Version Latest\n" + help_text, 1)


def catch_exits_zero(text):
    at = text.rfind("    exit 1\n}")
    return text[:at] + "    exit 0\n}" + text[at + len("    exit 1\n}") :]


# (script, mutation, what the rule says)
BROKEN_RULES = {
    "not-ascii": (INSTALL, lambda t: t.replace("the driver answers", "the driver answers \u2014 fine"), "not ASCII"),
    "no-help": (INSTALL, remove_help, "no comment-based help"),
    "no-help-in-the-shared-file": (VM / COMMON, remove_help, "no comment-based help"),
    "help-after-the-first-statement": (INSTALL, move_help_after_strict_mode, "no comment-based help"),
    "help-without-description": (INSTALL, lambda t: t.replace(".DESCRIPTION", ".NOTES", 1), "no .DESCRIPTION"),
    "help-without-example": (INSTALL, lambda t: t.replace(".EXAMPLE", ".LINK"), "no .EXAMPLE"),
    "no-admin-requirement": (INSTALL, lambda t: t.replace("#Requires -RunAsAdministrator\n", ""), "#Requires -RunAsAdministrator"),
    "admin-requirement-commented-out": (INSTALL, lambda t: t.replace("#Requires -RunAsAdministrator", "# #Requires -RunAsAdministrator"), "#Requires -RunAsAdministrator"),
    "no-version-requirement": (INSTALL, lambda t: t.replace("#Requires -Version 5.1\n", ""), "#Requires -Version 5.1"),
    "strict-mode-commented-out": (INSTALL, lambda t: t.replace("Set-StrictMode -Version Latest", "# Set-StrictMode -Version Latest"), "Set-StrictMode"),
    "strict-mode-off": (INSTALL, lambda t: t.replace("Set-StrictMode -Version Latest", "Set-StrictMode -Off"), "Set-StrictMode"),
    "strict-mode-only-in-a-function": (
        INSTALL,
        lambda t: t.replace("Set-StrictMode -Version Latest", "function Set-Strict {\n    Set-StrictMode -Version Latest\n}"),
        "Set-StrictMode",
    ),
    "errors-continue": (INSTALL, lambda t: t.replace("$ErrorActionPreference = 'Stop'", "$ErrorActionPreference = 'Continue'"), "$ErrorActionPreference"),
    "errors-stop-only-in-a-string": (
        INSTALL,
        lambda t: t.replace("$ErrorActionPreference = 'Stop'", "Write-Host '$ErrorActionPreference = ''Stop'''"),
        "$ErrorActionPreference",
    ),
    "shared-file-not-dot-sourced": (INSTALL, lambda t: t.replace(". (Join-Path $PSScriptRoot 'ProcGuard.Common.ps1')\n", ""), "dot-source"),
    "failure-exits-zero": (INSTALL, catch_exits_zero, "non-zero"),
    "powershell-7-pipeline-chain": (
        INSTALL,
        lambda t: t.replace("Set-StrictMode -Version Latest\n", "Set-StrictMode -Version Latest\nGet-Item . && Write-Host ok\n"),
        "'&&'",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_RULES))
def test_each_rule_catches_a_broken_copy(name):
    script, mutate, expected = BROKEN_RULES[name]
    original = text_of(script)
    broken = mutate(original)
    assert broken != original, f"the mutation {name} changed nothing"
    # The copy still parses: the rule, not the grammar, must catch it.
    assert syntax_errors(broken) == [], syntax_errors(broken)
    problems = check_script(broken, runnable=script.name != COMMON)
    assert any(expected.lower() in problem.lower() for problem in problems), problems
