"""The driver against `procguardctl explain`, differentially.

Random policies (every selector, requester form, object kind, operation,
mode and setting of the policy language), random machines (processes
enumerated at load and notified afterwards, pid reuse, critical image names
in and outside System32, System) and random requests (create and duplicate,
process and thread handles, kernel handles, PASSIVE and APC level) go to the
real procguard.sys in the emulator and to `procguardctl explain --json` (the
host build of the control tool, on the reference evaluator). The
DesiredAccess the driver leaves must be explain's `access`, and the audit
records it queues must be the ones explain says it writes (same order, rule,
masks and mode).

Seeded and reproducible: the seed is printed (and is in every failure);
`PROCGUARD_DIFFERENTIAL_SEED=<n>` replays it, `PROCGUARD_DIFFERENTIAL_CASES`
sets the number of cases (one policy + one machine each). A disagreement is
shrunk (rules dropped, settings reset, uninvolved processes dropped, the
access reduced) and the minimal case is printed with both answers.

Only processes the driver was told about (enumerated at load or notified)
take part: for a process it never heard of the driver deliberately gives the
unknown-process record, which `explain` (given the full identity) does not
model.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import pytest

from kernel_harness import (
    APC_LEVEL,
    OB_OPERATION_HANDLE_CREATE as CREATE,
    OB_OPERATION_HANDLE_DUPLICATE as DUPLICATE,
    PASSIVE_LEVEL,
    KernelHarness,
    PolicyCompileError,
    cargo_build_binary,
    reg_binary,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CASES = 10
REQUESTS_PER_CASE = 60
SHRINK_SECONDS = 60

# --- the policy language (crates/procguard-policy/src/rights.rs, toml.rs) ---
PROCESS_RIGHTS = [
    "PROCESS_TERMINATE", "PROCESS_CREATE_THREAD", "PROCESS_SET_SESSIONID", "PROCESS_VM_OPERATION",
    "PROCESS_VM_READ", "PROCESS_VM_WRITE", "PROCESS_DUP_HANDLE", "PROCESS_CREATE_PROCESS",
    "PROCESS_SET_QUOTA", "PROCESS_SET_INFORMATION", "PROCESS_QUERY_INFORMATION",
    "PROCESS_SUSPEND_RESUME", "PROCESS_QUERY_LIMITED_INFORMATION", "PROCESS_SET_LIMITED_INFORMATION",
]
THREAD_RIGHTS = [
    "THREAD_TERMINATE", "THREAD_SUSPEND_RESUME", "THREAD_ALERT", "THREAD_GET_CONTEXT",
    "THREAD_SET_CONTEXT", "THREAD_SET_INFORMATION", "THREAD_QUERY_INFORMATION",
    "THREAD_SET_THREAD_TOKEN", "THREAD_IMPERSONATE", "THREAD_DIRECT_IMPERSONATION",
    "THREAD_SET_LIMITED_INFORMATION", "THREAD_QUERY_LIMITED_INFORMATION", "THREAD_RESUME",
]
STANDARD_RIGHTS = ["DELETE", "READ_CONTROL", "WRITE_DAC", "WRITE_OWNER", "SYNCHRONIZE", "ACCESS_SYSTEM_SECURITY"]
RIGHT_SETS = ["no-kill", "no-inject", "no-debug", "no-tamper"]
STANDARD_BITS = 0x1F0000 | 0x1000000
VALID_BITS = {"process": 0x3FFF | STANDARD_BITS, "thread": 0x1FFF | STANDARD_BITS}
SETTINGS = ("exempt_self", "exempt_kernel_handles", "exempt_critical_requesters")

# --- the machine's images ----------------------------------------------------
VOLUME = "\\Device\\HarddiskVolume3"
SYSTEM32_SPELLINGS = [
    VOLUME + "\\Windows\\System32",
    "\\SystemRoot\\System32",
    "\\??\\C:\\Windows\\System32",
    "\\Device\\HarddiskVolume1\\WINDOWS\\system32",
]
ELSEWHERE = [
    VOLUME + "\\Program Files\\Acme",
    VOLUME + "\\Program Files\\Acme\\bin",
    VOLUME + "\\Users\\Public",
    "\\Device\\HarddiskVolume2\\Tools",
    VOLUME + "\\Windows\\System32\\drivers",  # not System32 itself
]
CRITICAL_NAMES = ["csrss.exe", "lsass.exe", "services.exe", "smss.exe", "wininit.exe"]
PLAIN_NAMES = ["agent.exe", "Agent.EXE", "updater.exe", "tool.exe", "kiosk.exe", "svchost.exe", "editor.exe"]
NAME_SELECTORS = ["agent.exe", "AGENT.exe", "updater.exe", "tool.exe", "kiosk.exe", "svchost.exe", "csrss.exe",
                  "lsass.exe", "nothing.exe"]
PATH_SELECTORS = [
    "\\Device\\HarddiskVolume*\\Program Files\\Acme\\*.exe",
    "\\Device\\HarddiskVolume?\\Program Files\\Acme\\**\\*.exe",
    "**\\agent.exe",
    "**\\Users\\**",
    "\\Device\\HarddiskVolume3\\Windows\\System32\\*",
    "\\SystemRoot\\System32\\?s*.exe",
    "\\Device\\HarddiskVolume2\\**",
    "\\Device\\HarddiskVolume3\\Program Files\\Acme\\updater.exe",
]


def image_for(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(SYSTEM32_SPELLINGS) + "\\" + rng.choice(CRITICAL_NAMES + ["svchost.exe"])
    if roll < 0.45:
        return rng.choice(ELSEWHERE) + "\\" + rng.choice(CRITICAL_NAMES)
    return rng.choice(ELSEWHERE) + "\\" + rng.choice(PLAIN_NAMES)


# --- policies --------------------------------------------------------------

def toml_string(text: str) -> str:
    return "'" + text + "'"  # literal strings: no escapes (no ' in our images)


def random_selector(rng: random.Random, pids: list[int]) -> str:
    parts = []
    while not parts:
        if rng.random() < 0.6:
            names = rng.sample(NAME_SELECTORS, rng.randint(1, 2))
            parts.append("name = [" + ", ".join(toml_string(n) for n in names) + "]")
        if rng.random() < 0.4:
            paths = rng.sample(PATH_SELECTORS, rng.randint(1, 2))
            parts.append("path = [" + ", ".join(toml_string(p) for p in paths) + "]")
        if rng.random() < 0.25:
            chosen = rng.sample(pids + [4, 99996], rng.randint(1, 2))
            parts.append("pid = [" + ", ".join(str(p) for p in chosen) + "]")
    return "{ " + ", ".join(parts) + " }"


def random_strip(rng: random.Random, objects: str) -> str:
    kinds = ["process", "thread"] if objects == "both" else [objects]
    items = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.45:
            pool = PROCESS_RIGHTS if rng.choice(kinds) == "process" else THREAD_RIGHTS
            items.append(f'"{rng.choice(pool)}"')
        elif roll < 0.6:
            items.append(f'"{rng.choice(STANDARD_RIGHTS)}"')
        elif roll < 0.8 and objects == "both":
            items.append(f'"{rng.choice(RIGHT_SETS)}"')
        else:
            valid = VALID_BITS["process"] & VALID_BITS["thread"] if objects == "both" else VALID_BITS[objects]
            mask = rng.getrandbits(25) & valid & rng.choice([0xFF, 0xFFF, 0x1FFFFF, 0x1FFFFFF])
            items.append(hex(mask or 0x1))
    return "[" + ", ".join(items) + "]"


@dataclass
class PolicySpec:
    settings: dict[str, bool]
    rules: list[str]  # each a complete [[rule]] table

    def toml(self) -> str:
        head = "[settings]\n" + "".join(f"{k} = {str(v).lower()}\n" for k, v in self.settings.items())
        return head + "".join("\n" + rule for rule in self.rules)


def random_policy(rng: random.Random, pids: list[int]) -> PolicySpec:
    settings = {
        "exempt_self": rng.random() < 0.7,
        "exempt_kernel_handles": rng.random() < 0.5,
        "exempt_critical_requesters": rng.random() < 0.6,
    }
    rules = []
    for index in range(rng.randint(1, 6)):
        objects = rng.choice(["process", "thread", "both"])
        requester = rng.choice(["any", "only", "except"])
        lines = [
            "[[rule]]",
            f'name = "rule-{index}"',
            f"target = {random_selector(rng, pids)}",
        ]
        if requester == "only":
            lines.append(f"requester = {random_selector(rng, pids)}")
        elif requester == "except":
            lines.append(f"requester = {{ except = {random_selector(rng, pids)} }}")
        elif rng.random() < 0.5:
            lines.append('requester = "any"')
        lines.append(f'objects = "{objects}"')
        lines.append(f'operations = "{rng.choice(["create", "duplicate", "both"])}"')
        lines.append(f"strip = {random_strip(rng, objects)}")
        lines.append(f'mode = "{"audit" if rng.random() < 0.3 else "enforce"}"')
        rules.append("\n".join(lines) + "\n")
    return PolicySpec(settings, rules)


# --- machines and requests ---------------------------------------------------

@dataclass
class MachineEvent:
    kind: str  # "enumerated" (running at load), "notified" (started after), "exited"
    pid: int
    image: str = ""


@dataclass
class Request:
    operation: str  # "create" | "duplicate"
    object: str  # "process" | "thread"
    target: int
    requester: int  # create: the current process; duplicate: the receiving process
    access: int
    kernel_handle: bool
    irql: int
    source: int = 0  # duplicate: the process the handle comes from
    current: int = 0  # duplicate: the process calling DuplicateHandle


def random_machine(rng: random.Random) -> list[MachineEvent]:
    pids = rng.sample(range(100, 6000, 4), 12)
    events = [MachineEvent("enumerated", pid, image_for(rng)) for pid in pids[:rng.randint(3, 7)]]
    fresh = pids[len(events):]
    for _ in range(rng.randint(2, 6)):
        live = live_pids(events)
        roll = rng.random()
        if roll < 0.45 and fresh:
            events.append(MachineEvent("notified", fresh.pop(), image_for(rng)))
        elif roll < 0.8:
            # PID reuse: the process exits, a new one gets its id.
            pid = rng.choice(live)
            events.append(MachineEvent("exited", pid))
            events.append(MachineEvent("notified", pid, image_for(rng)))
        elif len(live) > 2:
            events.append(MachineEvent("exited", rng.choice(live)))
    return events


def live_pids(events: list[MachineEvent]) -> list[int]:
    live: dict[int, str] = {}
    for event in events:
        if event.kind == "exited":
            live.pop(event.pid, None)
        else:
            live[event.pid] = event.image
    return list(live)


def consistent(events: list[MachineEvent]) -> bool:
    """Every exit is of a live process, every start of a pid not in use."""
    live: set[int] = set()
    for event in events:
        if (event.kind == "exited") != (event.pid in live):
            return False
        (live.discard if event.kind == "exited" else live.add)(event.pid)
    return True


def live_images(events: list[MachineEvent]) -> dict[int, str]:
    live = {4: ""}  # System: no image path
    for event in events:
        if event.kind == "exited":
            live.pop(event.pid, None)
        else:
            live[event.pid] = event.image
    return live


def random_access(rng: random.Random, kind: str) -> int:
    roll = rng.random()
    if roll < 0.2:
        return 0x1FFFFF  # *_ALL_ACCESS
    if roll < 0.5:
        return 1 << rng.choice([b for b in range(25) if VALID_BITS[kind] >> b & 1])
    return (rng.getrandbits(25) & VALID_BITS[kind]) or 0x1


def random_request(rng: random.Random, images: dict[int, str]) -> Request:
    pids = list(images)
    target = rng.choice(pids)
    requester = target if rng.random() < 0.15 else rng.choice(pids)
    kind = rng.choice(["process", "thread"])
    operation = rng.choice(["create", "duplicate"])
    return Request(
        operation=operation,
        object=kind,
        target=target,
        requester=requester,
        access=random_access(rng, kind),
        kernel_handle=rng.random() < 0.35,
        irql=APC_LEVEL if rng.random() < 0.3 else PASSIVE_LEVEL,
        source=rng.choice(pids) if operation == "duplicate" else 0,
        current=rng.choice(pids) if operation == "duplicate" else 0,
    )


# --- the two sides ------------------------------------------------------------

@dataclass
class Case:
    policy: PolicySpec
    machine: list[MachineEvent]
    requests: list[Request]


@dataclass
class Disagreement:
    request: Request
    what: str
    driver: object
    explain: object
    explanation: dict = field(default_factory=dict)


class ControlTool:
    """The host build of procguardctl (built once per session)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.executable, build = cargo_build_binary("procguardctl", REPO_ROOT)
        assert build.returncode == 0, build.stderr
        assert self.executable, "cargo built no procguardctl executable"
        self.files: dict[str, Path] = {}

    def policy_file(self, text: str) -> Path:
        if text not in self.files:
            path = self.directory / f"differential-{len(self.files)}.toml"
            path.write_text(text)
            self.files[text] = path
        return self.files[text]

    def explain(self, policy: str, images: dict[int, str], request: Request) -> dict:
        arguments = [
            self.executable, "explain", "--json",
            "--policy", str(self.policy_file(policy)),
            "--requester", images[request.requester], "--requester-pid", str(request.requester),
            "--target", images[request.target], "--target-pid", str(request.target),
            "--object", request.object, "--op", request.operation,
            "--access", hex(request.access),
        ]
        if request.kernel_handle:
            arguments.append("--kernel-handle")
        result = subprocess.run(arguments, capture_output=True, text=True)
        assert result.returncode == 0, f"explain failed: {result.stderr}\n{arguments}"
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def control_tool(tmp_path_factory) -> ControlTool:
    return ControlTool(tmp_path_factory.mktemp("differential"))


class Machine:
    """One emulated machine running the driver with a policy, built from a
    case's events."""

    def __init__(self, driver_path: str, blob: bytes, events: list[MachineEvent]):
        self.kernel = kernel = KernelHarness(driver_path)
        kernel.parameters = {"Policy": reg_binary(blob)}
        for event in events:
            if event.kind == "enumerated":
                kernel.new_process(event.pid, event.image)
        kernel.load()
        for event in events:
            if event.kind == "notified":
                kernel.notify_create(event.pid, event.image)
            elif event.kind == "exited":
                kernel.notify_exit(event.pid)

    def run(self, request: Request) -> int:
        kernel = self.kernel
        target = kernel.eprocess(request.target) if request.object == "process" else kernel.new_thread(request.target)
        if request.operation == "create":
            result = kernel.pre_operation(
                operation=CREATE, object_kind=request.object, target=target, desired_access=request.access,
                kernel_handle=request.kernel_handle, current_pid=request.requester, irql=request.irql,
            )
        else:
            result = kernel.pre_operation(
                operation=DUPLICATE, object_kind=request.object, target=target, desired_access=request.access,
                kernel_handle=request.kernel_handle, source_process=kernel.eprocess(request.source),
                target_process=kernel.eprocess(request.requester), current_pid=request.current,
                irql=request.irql,
            )
        return result.desired_access

    def close(self) -> None:
        assert not self.kernel.hook_failures, self.kernel.hook_failures
        assert not self.kernel.bugchecks, self.kernel.bugchecks


def expected_record(request: Request, answer: dict) -> tuple:
    stripped = answer["access"] != request.access
    return (
        request.object, request.operation == "duplicate", request.target, request.access, answer["access"],
        answer["rule"], "enforce" if stripped else "audit",
    )


def record_key(record) -> tuple:
    return (
        record.object, record.duplication, record.process_id, record.original_desired_access,
        record.desired_access, record.rule_id, record.mode,
    )


def run_case(
    case: Case, driver_path: str, compile_policy, tool: ControlTool, drain_each: bool = False
) -> Optional[Disagreement]:
    """Runs every request of `case` on both sides; the first disagreement.
    Audit records are drained once at the end (an IOCTL per request would
    double the emulator's work); when they differ, the case runs again
    draining after every request, so the disagreement names its request."""
    text = case.policy.toml()
    machine = Machine(driver_path, compile_policy(text), case.machine)
    images = live_images(case.machine)
    expected: list[tuple] = []
    try:
        for request in case.requests:
            driver_access = machine.run(request)
            answer = tool.explain(text, images, request)
            if driver_access != answer["access"]:
                return Disagreement(request, "DesiredAccess", hex(driver_access), hex(answer["access"]), answer)
            mine = [expected_record(request, answer)] if answer["audit"] else []
            if drain_each:
                records = [record_key(r) for r in machine.kernel.drain_audit_records()]
                if records != mine:
                    return Disagreement(request, "audit records", records, mine, answer)
            expected += mine
        if not drain_each:
            records = [record_key(r) for r in machine.kernel.drain_audit_records()]
            if records != expected:
                return run_case(case, driver_path, compile_policy, tool, drain_each=True) or Disagreement(
                    case.requests[-1], "audit records of the whole case", records, expected
                )
    finally:
        machine.close()
    return None


# --- shrinking ------------------------------------------------------------------

def involved(request: Request) -> set[int]:
    return {request.target, request.requester, request.source, request.current} - {0}


def shrink(case: Case, found: Disagreement, reproduce, budget: float = SHRINK_SECONDS) -> tuple[Case, Disagreement]:
    """Smaller cases that still disagree, greedily: one request, then rules
    dropped, settings back to their defaults, uninvolved processes dropped,
    the access cut to single bits (for at most `budget` seconds: the
    smallest case so far is reported when it runs out)."""
    case = replace(case, requests=[found.request])
    deadline = time.monotonic() + budget
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        candidates = []
        for index in range(len(case.policy.rules)):
            if len(case.policy.rules) > 1:
                rules = case.policy.rules[:index] + case.policy.rules[index + 1:]
                candidates.append(replace(case, policy=PolicySpec(case.policy.settings, rules)))
        for name, value in case.policy.settings.items():
            if not value:
                settings = dict(case.policy.settings, **{name: True})
                candidates.append(replace(case, policy=PolicySpec(settings, case.policy.rules)))
        request = case.requests[0]
        if request.irql != PASSIVE_LEVEL:
            candidates.append(replace(case, requests=[replace(request, irql=PASSIVE_LEVEL)]))
        if request.operation == "duplicate":
            for party in ("source", "current"):
                for pid in (request.target, request.requester):
                    if getattr(request, party) != pid:
                        candidates.append(replace(case, requests=[replace(request, **{party: pid})]))
        keep = involved(request)
        for index, event in enumerate(case.machine):
            # One event, or an exit with the start that reuses its pid.
            for end in (index + 1, index + 2):
                machine = case.machine[:index] + case.machine[end:]
                if consistent(machine) and set(live_pids(machine)) | {4} >= keep:
                    candidates.append(replace(case, machine=machine))
        if bin(request.access).count("1") > 1:
            for bit in range(32):
                if request.access >> bit & 1:
                    candidates.append(replace(case, requests=[replace(request, access=1 << bit)]))
        for candidate in candidates:
            if time.monotonic() >= deadline:
                break
            try:
                result = reproduce(candidate)
            except PolicyCompileError:
                continue  # e.g. a requester selector left naming a critical process
            if result is not None:
                case, found, improved = candidate, result, True
                break
    return case, found


def describe(seed: int, case: Case, found: Disagreement) -> str:
    request = found.request
    images = live_images(case.machine)
    lines = [
        f"driver and explain disagree (seed {seed}; replay with PROCGUARD_DIFFERENTIAL_SEED={seed})",
        "--- policy (minimal) ---",
        case.policy.toml().rstrip(),
        "--- machine ---",
        *(f"{e.kind:10} pid {e.pid:5} {e.image}" for e in case.machine),
        "--- request ---",
        f"{request.operation} {request.object} handle to pid {request.target} ({images.get(request.target)!r}) "
        f"for pid {request.requester} ({images.get(request.requester)!r}), access {request.access:#x}, "
        f"kernel_handle={request.kernel_handle}, irql={request.irql}"
        + (f", source pid {request.source}, caller pid {request.current}" if request.operation == "duplicate" else ""),
        f"--- {found.what}: driver {found.driver}, explain {found.explain} ---",
        "explain: " + json.dumps(found.explanation, sort_keys=True),
    ]
    return "\n".join(lines)


# --- the test ---------------------------------------------------------------------

def new_case(rng: random.Random, compile_policy) -> Case:
    machine = random_machine(rng)
    images = live_images(machine)
    while True:
        policy = random_policy(rng, [e.pid for e in machine if e.kind != "exited"])
        try:
            compile_policy(policy.toml())
        except PolicyCompileError:
            continue  # an invalid combination (e.g. "only" a critical requester): draw again
        break
    requests = [random_request(rng, images) for _ in range(REQUESTS_PER_CASE)]
    return Case(policy, machine, requests)


def test_the_driver_leaves_the_access_explain_computes(driver_path, compile_policy, control_tool):
    seed = int(os.environ.get("PROCGUARD_DIFFERENTIAL_SEED") or random.SystemRandom().randrange(1 << 32))
    cases = int(os.environ.get("PROCGUARD_DIFFERENTIAL_CASES") or DEFAULT_CASES)
    print(f"differential seed {seed} ({cases} cases of {REQUESTS_PER_CASE} requests)")
    rng = random.Random(seed)
    started = time.monotonic()

    def reproduce(case: Case) -> Optional[Disagreement]:
        return run_case(case, driver_path, compile_policy, control_tool)

    for number in range(cases):
        case = new_case(rng, compile_policy)
        found = reproduce(case)
        if found is not None:
            case, found = shrink(case, found, reproduce)
            message = describe(seed, case, found)
            print(message)
            pytest.fail(f"case {number}: {message}", pytrace=False)
    print(f"{cases * REQUESTS_PER_CASE} requests agreed in {time.monotonic() - started:.1f} s")
