"""The package's Windows programs, run under Wine as a new user would.

`procguardctl.exe` and `procguard-smoke.exe` (README command 1 puts them in
`package/`) run under Debian's `wine64` in a headless prefix of their own
(`target/wine-prefix`). Every offline command (`--version`, `--help`,
`check`, `compile`, `explain`, a bad command line), on the shipped example
policy and on broken ones, must give the same exit code, stdout and stderr
as the host build of procguardctl, and `compile` the same bytes. Two
differences are allowed, applied to the host's output by `as_on_windows`:
the program name clap prints (`procguardctl.exe`, as on Windows) and the
system's text for an I/O error (Wine's own). With no driver, every command
that talks to it must say procguard is not installed (or, with a stopped
service, not running), exit code 1, and the smoke test must stop before
changing anything with its "cannot reach the driver" exit code 2.

Nothing is skipped: without wine64 (or the package) every test fails and
says what to install or run.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(os.environ.get("PROCGUARD_PACKAGE", REPO / "package"))
# Debian's wine64 has no launcher in /usr/bin (that is package `wine`, which
# also wants the 32-bit half): its loader and server are here.
WINE = Path(os.environ.get("PROCGUARD_WINE", "/usr/lib/wine/wine64"))
WINESERVER = WINE.with_name("wineserver64")
PREFIX = Path(os.environ.get("PROCGUARD_WINEPREFIX", REPO / "target" / "wine-prefix"))
POLICIES = Path(__file__).resolve().parent / "policies"
CTL_POLICIES = REPO / "crates" / "procguardctl" / "tests" / "policies"

EXAMPLE = "protect-agent.toml"
NOT_INSTALLED = (
    "error: procguard is not installed: \\\\.\\ProcGuard does not exist and there is no "
    "procguard service (install procguard.inf, then run `sc start procguard`)\n"
)
NOT_WINDOWS = (
    "error: this command talks to the driver: Windows only (check, compile and explain "
    "work anywhere)\n"
)
# crates/procguardctl/src/lib.rs and crates/procguard-smoke/src/report.rs.
EXIT_OK, EXIT_ERROR, EXIT_WARNINGS, EXIT_UNSUPPORTED, EXIT_USAGE = 0, 1, 2, 3, 64
SMOKE_CANNOT_START, SMOKE_NOT_WINDOWS = 2, 3


def wine_env():
    env = dict(os.environ)
    for display in ("DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(display, None)  # headless: nothing may open a window
    env.update(
        WINEPREFIX=str(PREFIX),
        WINEDEBUG="-all",
        # No Mono / Gecko installer dialogs while the prefix is made.
        WINEDLLOVERRIDES="mscoree,mshtml=",
        # English system messages (FormatMessage, strerror) on both sides.
        LC_ALL="C.UTF-8",
    )
    return env


SHIMS = Path(__file__).resolve().parent / "shims"


def install_wine8_shims():
    """Wine 8 lacks bcryptprimitives.dll (Windows has it from Windows 8 on),
    from which Rust's std imports ProcessPrng: build the test-only shim of
    `shims/bcryptprimitives.c` into the prefix's system32 (never shipped)."""
    system32 = PREFIX / "drive_c" / "windows" / "system32"
    target = system32 / "bcryptprimitives.dll"
    source = SHIMS / "bcryptprimitives.c"
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return
    compiler = shutil.which("x86_64-w64-mingw32-gcc") or shutil.which("x86_64-w64-mingw32-gcc-win32")
    assert compiler, "x86_64-w64-mingw32-gcc is missing (apt-get install gcc-mingw-w64-x86-64)"
    built = subprocess.run(
        [compiler, "-shared", "-O2", "-s", "-o", str(target), str(source), "-ladvapi32"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, f"building the bcryptprimitives shim failed:\n{built.stderr}"


def run(command, cwd, env):
    """Exit code, stdout and stderr of `command`. Output goes through files,
    not pipes: a Wine program may start Wine's background services, which
    inherit its handles and would hold a pipe open long after it exits."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=err, timeout=180).returncode
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode()


@pytest.fixture(scope="session")
def wine():
    """Runs a Windows program under Wine: `wine([exe, args...], cwd)`."""
    if not WINE.exists():
        pytest.fail(
            f"{WINE} is missing: install Debian's wine64 (apt-get install --no-install-recommends "
            "wine64; `cargo xtask test` does it as root)"
        )
    env = wine_env()
    PREFIX.mkdir(parents=True, exist_ok=True)
    # A server this prefix still has from an interrupted run goes first.
    subprocess.run([str(WINESERVER), "--kill"], env=env, capture_output=True, timeout=60)
    if not (PREFIX / "system.reg").exists():
        # A fresh prefix: ~15 s headless (no window, no installer prompt).
        # Its server is let go (the registry is written when it exits): in a
        # server kept running, the prefix's first program started a second
        # service manager, and the two answered service queries in turn.
        code, out, err = run([str(WINE), "wineboot", "--init"], REPO, env)
        subprocess.run([str(WINESERVER), "--wait"], env=env, capture_output=True, timeout=120)
        made = (PREFIX / "system.reg").exists()
        assert code == 0 and made, f"wineboot failed ({code}):\n{out}{err}"
    install_wine8_shims()
    # One server for the whole session (it would exit 3 s after each program
    # and cost ~3 s to start again, with Wine's services, for the next one).
    subprocess.run([str(WINESERVER), "--persistent"], env=env, check=True, timeout=60)
    try:
        # Boots the prefix's services (and the service manager the driver
        # commands ask) now, outside any test's timing, and removes the
        # procguard service an interrupted run may have left.
        run([str(WINE), "sc", "delete", "procguard"], REPO, env)
    except BaseException:
        subprocess.run([str(WINESERVER), "--kill"], env=env, capture_output=True, timeout=60)
        raise
    yield lambda args, cwd: run([str(WINE), *map(str, args)], cwd, env)
    # The wineserver of this prefix (and only it) stops with the session.
    subprocess.run([str(WINESERVER), "--kill"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def host():
    """Runs the host build of a program: `host(binary, [args...], cwd)`."""
    cargo = os.environ.get("CARGO", "cargo")
    build = subprocess.run(
        [cargo, "build", "--quiet", "--package", "procguardctl", "--package", "procguard-smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, LC_ALL="C.UTF-8")
    binaries = REPO / "target" / "debug"
    return lambda name, args, cwd: run([str(binaries / name), *map(str, args)], cwd, env)


def packaged(name):
    path = PACKAGE / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo xtask package` (README command 1) first")
    return path


@pytest.fixture
def workdir(tmp_path):
    """A folder as a user would have it: the shipped example policy and the
    broken ones, named relative to the working directory."""
    shutil.copy(packaged(EXAMPLE), tmp_path / EXAMPLE)
    for source in [*CTL_POLICIES.glob("*.toml"), *POLICIES.glob("*.toml")]:
        shutil.copy(source, tmp_path / source.name)
    # Saved by Notepad: CRLF line ends, and a UTF-8 byte order mark.
    syntax_error = (CTL_POLICIES / "syntax-error.toml").read_bytes()
    (tmp_path / "syntax-error-crlf.toml").write_bytes(syntax_error.replace(b"\n", b"\r\n"))
    example = (tmp_path / EXAMPLE).read_bytes()
    (tmp_path / "example-bom-crlf.toml").write_bytes(b"\xef\xbb\xbf" + example.replace(b"\n", b"\r\n"))
    # A file name with a space and a letter outside ASCII.
    shutil.copy(tmp_path / "bad-values.toml", tmp_path / "Agënt policy.toml")
    # Written by Windows PowerShell 5.1 (`>`, Out-File): UTF-16LE with a mark.
    powershell = "\ufeff" + example.decode().replace("\n", "\r\n")
    (tmp_path / "example-utf16.toml").write_bytes(powershell.encode("utf-16-le"))
    # Saved in an ANSI code page (Windows-1252): not UTF-8 from line 3 on.
    ansi = "# Contoso Agent\n[[rule]]\nname = \"agënt\"\ntarget = { name = \"agent.exe\" }\nstrip = [\"no-kill\"]\n"
    (tmp_path / "ansi.toml").write_bytes(ansi.encode("cp1252"))
    return tmp_path


def as_on_windows(text, exe):
    """The host build's output as Windows (and Wine) prints it.

    - clap names the program as it was invoked in its usage lines: the
      executable's file name, `procguardctl.exe` on Windows;
    - I/O errors carry the system's text for the error code (FormatMessage),
      not Linux's strerror. Wine's text is its own: for error 2 Windows says
      "The system cannot find the file specified.", Wine "File not found.".
    """
    stem = exe.removesuffix(".exe")
    text = re.sub(rf"^(\s*Usage: ){re.escape(stem)}\b", rf"\g<1>{exe}", text, flags=re.MULTILINE)
    return text.replace(
        "No such file or directory (os error 2)",
        "File not found. (os error 2)",
    )


TASKMGR = r"\Device\HarddiskVolume3\Windows\System32\Taskmgr.exe"
AGENT = r"\Device\HarddiskVolume3\Program Files\Contoso\Agent\contoso-agent.exe"
UPDATER = r"\Device\HarddiskVolume3\Program Files\Contoso\Agent\contoso-updater.exe"
CSRSS = r"\Device\HarddiskVolume3\Windows\System32\csrss.exe"

# (id, arguments, exit code expected of both builds)
OFFLINE = [
    ("version", ["--version"], EXIT_OK),
    ("help", ["--help"], EXIT_OK),
    *[(f"help-{command}", [command, "--help"], EXIT_OK)
      for command in ["check", "compile", "explain", "apply", "status", "events", "counters"]],
    ("help-policy-show", ["policy", "show", "--help"], EXIT_OK),
    ("help-explain", ["help", "explain"], EXIT_OK),
    ("short-version", ["-V"], EXIT_OK),
    ("no-command", [], EXIT_USAGE),
    ("unknown-command", ["verify", EXAMPLE], EXIT_USAGE),
    ("explain-missing-arguments", ["explain", "--policy", EXAMPLE], EXIT_USAGE),
    ("bad-object-kind", ["explain", "--policy", EXAMPLE, "--requester", "a.exe", "--target", "b.exe",
                         "--access", "0x1", "--object", "file"], EXIT_USAGE),
    ("check-example", ["check", EXAMPLE], EXIT_OK),
    ("check-example-deny-warnings", ["check", "--deny-warnings", EXAMPLE], EXIT_OK),
    ("check-example-bom-crlf", ["check", "example-bom-crlf.toml"], EXIT_OK),
    ("check-example-utf16", ["check", "example-utf16.toml"], EXIT_OK),
    ("check-ansi", ["check", "ansi.toml"], EXIT_ERROR),
    ("check-syntax-error", ["check", "syntax-error.toml"], EXIT_ERROR),
    ("check-syntax-error-crlf", ["check", "syntax-error-crlf.toml"], EXIT_ERROR),
    ("check-bad-values", ["check", "bad-values.toml"], EXIT_ERROR),
    ("check-unknown-right", ["check", "unknown-right.toml"], EXIT_ERROR),
    ("check-bad-selectors", ["check", "bad-selectors.toml"], EXIT_ERROR),
    ("check-warnings", ["check", "warnings.toml"], EXIT_OK),
    ("check-warnings-denied", ["check", "--deny-warnings", "warnings.toml"], EXIT_WARNINGS),
    ("check-errors-beat-denied-warnings", ["check", "--deny-warnings", "bad-values.toml"], EXIT_ERROR),
    ("check-non-ascii-name", ["check", "Agënt policy.toml"], EXIT_ERROR),
    ("check-missing-file", ["check", "no-such-file.toml"], EXIT_ERROR),
    ("compile-invalid", ["compile", "bad-selectors.toml", "-o", "invalid.bin"], EXIT_ERROR),
    ("explain-taskmgr-kills-agent", ["explain", "--policy", EXAMPLE, "--requester", TASKMGR,
                                     "--target", AGENT, "--object", "process", "--op", "create",
                                     "--access", "PROCESS_TERMINATE|PROCESS_QUERY_LIMITED_INFORMATION"],
     EXIT_OK),
    ("explain-updater-thread", ["explain", "--policy", EXAMPLE, "--requester", UPDATER,
                                "--requester-pid", "3000", "--target", AGENT, "--object", "thread",
                                "--op", "duplicate", "--access",
                                "THREAD_TERMINATE,THREAD_SUSPEND_RESUME,THREAD_GET_CONTEXT"], EXIT_OK),
    ("explain-csrss-exempt", ["explain", "--policy", EXAMPLE, "--requester", CSRSS,
                              "--requester-pid", "612", "--target", AGENT, "--access",
                              "PROCESS_ALL_ACCESS"], EXIT_OK),
    ("explain-by-file-name", ["explain", "--policy", EXAMPLE, "--requester", "taskmgr.exe",
                              "--target", "contoso-agent.exe", "--access", "no-kill"], EXIT_OK),
    ("explain-kernel-handle", ["explain", "--policy", EXAMPLE, "--requester", TASKMGR, "--target",
                               AGENT, "--access", "0x1fffff", "--kernel-handle"], EXIT_OK),
    ("explain-wrong-kind", ["explain", "--policy", EXAMPLE, "--requester", "taskmgr.exe",
                            "--target", "contoso-agent.exe", "--access", "THREAD_TERMINATE"],
     EXIT_ERROR),
    ("explain-unknown-right", ["explain", "--policy", EXAMPLE, "--requester", "taskmgr.exe",
                               "--target", "contoso-agent.exe", "--access", "PROCESS_KILL"],
     EXIT_ERROR),
    ("explain-broken-policy", ["explain", "--policy", "syntax-error.toml", "--requester", "a.exe",
                               "--target", "b.exe", "--access", "0x1"], EXIT_ERROR),
    ("apply-broken-policy", ["apply", "bad-values.toml"], EXIT_ERROR),
]


@pytest.mark.parametrize("args, code", [case[1:] for case in OFFLINE], ids=[case[0] for case in OFFLINE])
def test_offline_commands_match_the_host_build(wine, host, workdir, args, code):
    windows = wine([packaged("procguardctl.exe"), *args], workdir)
    linux = host("procguardctl", args, workdir)
    expected = (linux[0], as_on_windows(linux[1], "procguardctl.exe"), as_on_windows(linux[2], "procguardctl.exe"))
    assert windows == expected, f"procguardctl.exe {args}: Wine and the host build differ"
    assert windows[0] == code, f"exit code of procguardctl.exe {args}"
    # Every failure says why; every success of these commands prints something.
    assert windows[1] or windows[2]


def test_compile_writes_the_same_blob_as_the_host_build(wine, host, workdir):
    args = ["compile", EXAMPLE, "-o", "windows.bin"]
    windows = wine([packaged("procguardctl.exe"), *args], workdir)
    linux = host("procguardctl", ["compile", EXAMPLE, "-o", "linux.bin"], workdir)
    assert windows[0] == EXIT_OK, windows
    assert windows == (linux[0], linux[1].replace("linux.bin", "windows.bin"), linux[2])
    blob = (workdir / "windows.bin").read_bytes()
    assert blob == (workdir / "linux.bin").read_bytes()
    assert f"{len(blob)} bytes" in windows[1]
    # The same policy saved by PowerShell 5.1 (UTF-16) compiles to the same blob.
    code, _, err = wine([packaged("procguardctl.exe"), "compile", "example-utf16.toml", "-o", "utf16.bin"], workdir)
    assert code == EXIT_OK, err
    assert (workdir / "utf16.bin").read_bytes() == blob


def test_compile_writes_nothing_for_an_invalid_policy(wine, workdir):
    code, _, err = wine([packaged("procguardctl.exe"), "compile", "bad-values.toml", "-o", "out.bin"], workdir)
    assert code == EXIT_ERROR, err
    assert "error: bad-values.toml: 7 errors" in err
    assert not (workdir / "out.bin").exists()


def test_check_reports_line_and_column_under_windows(wine, workdir):
    code, out, err = wine([packaged("procguardctl.exe"), "check", "syntax-error-crlf.toml"], workdir)
    assert (code, out) == (EXIT_ERROR, "")
    assert err.startswith("syntax-error-crlf.toml:5:1: error: TOML syntax error: "), err


def test_check_takes_a_windows_path(wine, host, workdir):
    """`procguardctl check C:\\...\\policy.toml`, as typed on Windows (Wine's
    Z: drive is the Linux root)."""
    path = "Z:" + str(workdir / EXAMPLE).replace("/", "\\")
    code, out, err = wine([packaged("procguardctl.exe"), "check", path], workdir.parent)
    assert (code, err) == (EXIT_OK, ""), err
    linux = host("procguardctl", ["check", EXAMPLE], workdir)
    assert linux[0] == EXIT_OK and linux[1].startswith(f"{EXAMPLE}: ok: 4 rules")
    assert out == linux[1].replace(EXAMPLE, path, 1)


DRIVER_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["policy", "show"],
    ["events"],
    ["events", "--json", "--follow"],
    # The waiting --follow (IOCTL_WAIT_EVENTS, Ctrl-C handler) starts only
    # once the device is open: without a driver it must say so, like the rest.
    ["events", "--follow"],
    ["events", "--follow", "--max", "3"],
    ["events", "--follow", "--interval-ms", "1"],
    ["counters"],
    ["counters", "--reset"],
    ["apply", EXAMPLE],
    ["apply", EXAMPLE, "--persist"],
]


@pytest.mark.parametrize("args", DRIVER_COMMANDS, ids=" ".join)
def test_driver_commands_say_procguard_is_not_installed(wine, host, workdir, args):
    """No procguard service and no \\\\.\\ProcGuard in the prefix: exit code 1
    and what to install; the host build says it is not Windows (exit 3)."""
    assert wine([packaged("procguardctl.exe"), *args], workdir) == (EXIT_ERROR, "", NOT_INSTALLED)
    assert host("procguardctl", args, workdir) == (EXIT_UNSUPPORTED, "", NOT_WINDOWS)


def test_with_the_service_but_no_device_the_driver_is_not_running(wine, workdir):
    """A procguard service that is stopped (created with Wine's sc.exe, as the
    INF would): procguardctl asks the service manager and says to start it;
    the smoke test stops before changing anything."""
    sc = ["sc", "create", "procguard", "type=", "kernel", "start=", "demand",
          "binpath=", r"C:\windows\system32\drivers\procguard.sys"]
    code, out, err = wine(sc, workdir)
    assert code == 0, out + err
    try:
        message = (
            "error: the procguard driver is not running (service state: stopped): start it with "
            "`sc start procguard`\n"
        )
        for args in DRIVER_COMMANDS:
            assert wine([packaged("procguardctl.exe"), *args], workdir) == (EXIT_ERROR, "", message), args
        code, out, err = wine([packaged("procguard-smoke.exe")], PACKAGE)
        assert (code, out) == (SMOKE_CANNOT_START, ""), err
        assert err == (
            "procguard-smoke: cannot start: the procguard driver cannot be reached (procguardctl status: "
            "exit 1: " + message.rstrip("\n") + ")\n"
        )
    finally:
        code, out, err = wine(["sc", "delete", "procguard"], workdir)
        assert code == 0, out + err
    assert wine([packaged("procguardctl.exe"), "status"], workdir) == (EXIT_ERROR, "", NOT_INSTALLED)


SMOKE_OPTIONS = [
    ("help", ["--help"], EXIT_OK),
    ("version", ["--version"], EXIT_OK),
    ("unknown-option", ["--verbose"], SMOKE_CANNOT_START),
    ("probe-needs-two-ids", ["--probe", "12"], SMOKE_CANNOT_START),
]


@pytest.mark.parametrize("args, code", [case[1:] for case in SMOKE_OPTIONS], ids=[case[0] for case in SMOKE_OPTIONS])
def test_smoke_command_line_matches_the_host_build(wine, host, workdir, args, code):
    windows = wine([packaged("procguard-smoke.exe"), *args], workdir)
    linux = host("procguard-smoke", args, workdir)
    expected = (linux[0], as_on_windows(linux[1], "procguard-smoke.exe"), as_on_windows(linux[2], "procguard-smoke.exe"))
    assert windows == expected
    assert windows[0] == code


def test_smoke_without_a_driver_cannot_start_and_changes_nothing(wine, host):
    """Run from the package folder as README "Deploy to a test-signed VM" step
    5 does: procguardctl.exe beside it answers "not installed", so the run
    stops before touching anything (no temporary directory) with exit code 2."""
    # %TEMP% of Wine 8's user profile, where the run makes its directory.
    temps = list((PREFIX / "drive_c" / "users").glob("*/Temp"))
    assert temps, "no %TEMP% in the Wine prefix"
    before = {path for temp in temps for path in temp.glob("procguard-smoke-*")}
    code, out, err = wine([packaged("procguard-smoke.exe")], PACKAGE)
    assert (code, out) == (SMOKE_CANNOT_START, ""), err
    assert err == (
        "procguard-smoke: cannot start: the procguard driver cannot be reached (procguardctl status: exit 1: "
        + NOT_INSTALLED.rstrip("\n")
        + ")\n"
    )
    after = {path for temp in temps for path in temp.glob("procguard-smoke-*")}
    assert after == before
    # The host build refuses at once: not Windows.
    linux = host("procguard-smoke", [], PACKAGE)
    assert linux[0] == SMOKE_NOT_WINDOWS


def test_smoke_says_when_procguardctl_is_missing(wine, workdir):
    shutil.copy(packaged("procguard-smoke.exe"), workdir / "procguard-smoke.exe")
    code, out, err = wine([workdir / "procguard-smoke.exe"], workdir)
    assert (code, out) == (SMOKE_CANNOT_START, "")
    assert err.startswith("procguard-smoke: cannot start: "), err
    assert err.rstrip().endswith(
        "procguardctl.exe not found: put procguardctl.exe beside procguard-smoke.exe or pass --ctl PATH"
    ), err
