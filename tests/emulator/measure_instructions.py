#!/usr/bin/env python3
"""Instruction counts of one pre-operation callback of the real procguard.sys
(issue 4 requirement), measured in the emulated kernel.

Counts x86 instructions executed inside the driver image during one call of
the registered pre-operation callback (a Speakeasy code hook bounded to the
image: kernel API bodies run in Python and count only as the driver's
`call`), and the kernel functions the callback called.

Machine: 1,000 tracked processes (`proc<N>.exe`, enumerated at load) plus
agent.exe (protected) and tool.exe (the requester). Policies: 1 rule
(agent.exe's process and thread handles lose TERMINATE) and 10,000 rules
(agent.exe + 9,999 rules each naming a distinct image that does not run).
Requests, by tool.exe:
  (a) OpenProcess(PROCESS_TERMINATE) of proc0.exe — matches nothing;
  (b) OpenProcess(PROCESS_TERMINATE | PROCESS_VM_READ) of agent.exe —
      stripped and audited;
and the other shapes of both, each its own case: (a thread) OpenThread of a
proc0.exe thread; (b thread) OpenThread(THREAD_TERMINATE |
THREAD_GET_CONTEXT) of an agent.exe thread; (b duplicate) and (b thread
duplicate): the same handles duplicated from tool.exe into tool.exe, the
shapes with the most kernel calls (the receiver's and the source's ids for
the audit record).
The first call is reported separately from the steady state (the median of
the following calls; they are all equal in practice).

Run from the repository root:
    .venv/bin/python tests/emulator/measure_instructions.py [--processes N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_harness import (  # noqa: E402
    OB_OPERATION_HANDLE_CREATE,
    OB_OPERATION_HANDLE_DUPLICATE,
    KernelHarness,
    PolicyCompiler,
    image_path,
    reg_binary,
    symbolize,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT, TOOL = 1000, 2000
PROCESS_TERMINATE, PROCESS_VM_READ = 0x1, 0x10
THREAD_TERMINATE, THREAD_GET_CONTEXT = 0x1, 0x8
STEADY_CALLS = 4

AGENT_RULE = """[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
objects = "both"
strip = ["PROCESS_TERMINATE", "THREAD_TERMINATE"]
"""


def policy_toml(rules: int) -> str:
    """`rules` rules: agent.exe's, then rules naming images nobody runs."""
    parts = [AGENT_RULE]
    for index in range(rules - 1):
        parts.append(
            f'[[rule]]\nname = "app{index}"\ntarget = {{ name = "app{index:05d}.exe" }}\n'
            'objects = "process"\nstrip = ["PROCESS_TERMINATE"]\n'
        )
    return "\n".join(parts)


@dataclass
class CallFigures:
    instructions: int
    api_calls: list[str]
    allocations: int
    mutex_acquisitions: int
    desired_access: int
    hot: list[tuple[int, int]] = field(default_factory=list)  # (address, count), top first


@dataclass
class CaseFigures:
    first: CallFigures
    steady: list[CallFigures]

    @property
    def steady_instructions(self) -> int:
        return int(statistics.median(call.instructions for call in self.steady))

    @property
    def steady_api_calls(self) -> int:
        return int(statistics.median(len(call.api_calls) for call in self.steady))


@dataclass
class PolicyFigures:
    rules: int
    blob_bytes: int
    load_seconds: float
    tracked: str
    cases: dict[str, CaseFigures]


@dataclass(frozen=True)
class Case:
    """One measured request shape, by tool.exe."""

    name: str
    kind: str  # "process" | "thread"
    duplicate: bool
    target_pid: int  # the process the handle is for
    access: int
    expected: int  # DesiredAccess after the callback

    @property
    def stripped(self) -> bool:
        return self.expected != self.access


# (a)/(b) are issue 4's two named requests; the others are their other shapes.
CASES = (
    Case("a", "process", False, 100_000, PROCESS_TERMINATE, PROCESS_TERMINATE),
    Case("a thread", "thread", False, 100_000, THREAD_TERMINATE, THREAD_TERMINATE),
    Case("b", "process", False, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, PROCESS_VM_READ),
    Case("b thread", "thread", False, AGENT, THREAD_TERMINATE | THREAD_GET_CONTEXT, THREAD_GET_CONTEXT),
    Case("b duplicate", "process", True, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, PROCESS_VM_READ),
    Case("b thread duplicate", "thread", True, AGENT, THREAD_TERMINATE | THREAD_GET_CONTEXT, THREAD_GET_CONTEXT),
)


def _call(kernel: KernelHarness, case: Case, target: int) -> CallFigures:
    tool = kernel.eprocess(TOOL)
    duplicate = {"source_process": tool, "target_process": tool} if case.duplicate else {}
    measurement = kernel.measure(
        lambda: kernel.pre_operation(
            operation=OB_OPERATION_HANDLE_DUPLICATE if case.duplicate else OB_OPERATION_HANDLE_CREATE,
            object_kind=case.kind,
            target=target,
            desired_access=case.access,
            current_pid=TOOL,
            **duplicate,
        )
    )
    return CallFigures(
        instructions=measurement.instructions,
        api_calls=measurement.api_calls,
        allocations=measurement.allocations,
        mutex_acquisitions=measurement.mutex_acquisitions,
        desired_access=measurement.result.desired_access,
        hot=measurement.address_counts.most_common(),
    )


def measure_policy(driver_path: str, blob: bytes, rules: int, processes: int) -> PolicyFigures:
    kernel = KernelHarness(driver_path)
    kernel.parameters = {"Policy": reg_binary(blob)}
    for index in range(processes):
        kernel.new_process(100_000 + 4 * index, image_path(f"proc{index}.exe"))
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.new_process(TOOL, image_path("tool.exe"))
    threads = {pid: kernel.new_thread(pid) for pid in (100_000, AGENT)}
    started = time.monotonic()
    kernel.load()
    load_seconds = time.monotonic() - started
    tracked = next(line for line in kernel.trace_text().splitlines() if "rule(s) in force" in line)
    cases = {}
    for case in CASES:
        target = threads[case.target_pid] if case.kind == "thread" else kernel.eprocess(case.target_pid)
        first = _call(kernel, case, target)
        steady = [_call(kernel, case, target) for _ in range(STEADY_CALLS)]
        cases[case.name] = CaseFigures(first, steady)
    kernel.unload()
    return PolicyFigures(rules, len(blob), load_seconds, tracked, cases)


def measure_all(driver_path: str, compiler: PolicyCompiler, processes: int = 1000) -> dict[int, PolicyFigures]:
    return {
        rules: measure_policy(driver_path, compiler(policy_toml(rules)), rules, processes)
        for rules in (1, 10_000)
    }


def table(figures: dict[int, PolicyFigures]) -> str:
    lines = [
        "| case | rules | first call: instr / kernel calls | steady: instr / kernel calls | allocations | mutex | kernel calls (steady) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in (case.name for case in CASES):
        for rules, policy in figures.items():
            figures_case = policy.cases[case]
            steady = figures_case.steady[-1]
            lines.append(
                f"| ({case}) | {rules:,} | {figures_case.first.instructions} / {len(figures_case.first.api_calls)} | "
                f"{figures_case.steady_instructions} / {figures_case.steady_api_calls} | "
                f"{max(c.allocations for c in [figures_case.first, *figures_case.steady])} | "
                f"{max(c.mutex_acquisitions for c in [figures_case.first, *figures_case.steady])} | "
                f"{', '.join(steady.api_calls)} |"
            )
    for rules, policy in figures.items():
        lines.append(
            f"\n{rules:,} rule(s): blob {policy.blob_bytes:,} bytes, load {policy.load_seconds:.1f} s emulated; {policy.tracked}"
        )
    return "\n".join(lines)


def hot_spots(driver_path: str, call: CallFigures, top: int = 12) -> str:
    """Instructions of one call grouped by source line (the innermost
    inlined frame, with the function it was inlined into), most first."""
    import collections
    import subprocess

    addresses = [address for address, _count in call.hot]
    result = subprocess.run(
        ["llvm-symbolizer-16", f"--obj={driver_path}", "--inlining", *[hex(a) for a in addresses]],
        capture_output=True, text=True,
    )
    by_line: collections.Counter[str] = collections.Counter()
    for (_address, count), block in zip(call.hot, result.stdout.strip().split("\n\n")):
        lines = block.split("\n")
        inner = f"{lines[0]} ({lines[1].rsplit('/', 1)[-1]})" if len(lines) > 1 else "?"
        outer = lines[-2] if len(lines) > 2 else ""
        by_line[f"{inner}  [in {outer}]" if outer and outer != lines[0] else inner] += count
    return "\n".join(f"{count:5d}  {where}" for where, count in by_line.most_common(top))


# ---------------------------------------------------------------- ask (issue 12)

ASKED, HANDLER = 3000, 5000
ASK_POLICY = AGENT_RULE + """
[[rule]]
name = "asked-ask"
target = { name = "asked.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]
mode = "ask"
"""


@dataclass
class AskFigures:
    """One callback of each ask shape (steady state, after one warm-up call)."""

    cases: dict[str, CallFigures]
    switched: dict[str, int]  # instructions on the handler thread during the wait
    waits: dict[str, int]  # KeWaitForSingleObject calls


ASK_CASES = (
    # name, target, handler connected, expected access
    ("a with ask rules", 100_000, True, PROCESS_TERMINATE),
    ("ask answered", ASKED, True, 0),
    ("ask no handler", ASKED, False, 0),
)


def measure_ask(driver_path: str, compiler: PolicyCompiler, processes: int = 1000) -> AskFigures:
    """The ask policy (agent.exe enforced, asked.exe asked about) on the same
    1,000-process machine; a handler (python/'s role, played by
    tests/emulator/ask_handler.py) connected with one worker pended, which
    answers "remove PROCESS_TERMINATE". The asked request's instructions are
    the callback's own, outside the wait: the handler thread's (the reply
    IOCTL, the worker's next get-request) are counted apart."""
    from ask_handler import HandlerProcess  # noqa: PLC0415

    kernel = KernelHarness(driver_path)
    kernel.parameters = {"Policy": reg_binary(compiler(ASK_POLICY))}
    for index in range(processes):
        kernel.new_process(100_000 + 4 * index, image_path(f"proc{index}.exe"))
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.new_process(TOOL, image_path("tool.exe"))
    kernel.new_process(ASKED, image_path("asked.exe"))
    kernel.load()
    handler = HandlerProcess(kernel, HANDLER)
    handler.remove = PROCESS_TERMINATE
    cases, switched, waits = {}, {}, {}
    for name, target, connected, _expected in ASK_CASES:
        if connected and not handler.get_requests:
            handler.start(workers=1)
        if not connected and handler.get_requests:
            kernel.close(handler.handle)
            handler.get_requests.clear()

        def request():
            return kernel.pre_operation(operation=OB_OPERATION_HANDLE_CREATE, object_kind="process",
                                        target=kernel.eprocess(target), desired_access=PROCESS_TERMINATE,
                                        current_pid=TOOL)

        request()  # warm-up: the first call of a shape
        waits_before = len(kernel.waits)
        measurement = kernel.measure(request)
        cases[name] = CallFigures(
            instructions=measurement.instructions, api_calls=measurement.api_calls,
            allocations=measurement.allocations, mutex_acquisitions=measurement.mutex_acquisitions,
            desired_access=measurement.result.desired_access, hot=measurement.address_counts.most_common(),
        )
        switched[name] = measurement.switched_instructions
        waits[name] = len(kernel.waits) - waits_before
    kernel.unload()
    return AskFigures(cases, switched, waits)


def ask_table(figures: AskFigures) -> str:
    lines = [
        "| ask case | callback instructions (outside the wait) | handler thread instructions | waits | kernel calls (both threads) |",
        "|---|---|---|---|---|",
    ]
    for name, call in figures.cases.items():
        lines.append(
            f"| ({name}) | {call.instructions} | {figures.switched[name]} | {figures.waits[name]} | "
            f"{len(call.api_calls)}: {', '.join(call.api_calls)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--hot", action="store_true", help="print the most executed addresses of each steady call")
    arguments = parser.parse_args()
    driver_path = os.environ.get("PROCGUARD_SYS", str(REPO_ROOT / "package" / "procguard.sys"))
    with tempfile.TemporaryDirectory() as directory:
        compiler = PolicyCompiler(Path(directory), REPO_ROOT)
        figures = measure_all(driver_path, compiler, arguments.processes)
        ask = measure_ask(driver_path, compiler, arguments.processes)
    print(table(figures))
    print()
    print(ask_table(ask))
    if arguments.hot:
        for rules, policy in figures.items():
            for case, figures_case in policy.cases.items():
                print(f"\n({case}) {rules:,} rules, steady call, hottest instructions:")
                print(hot_spots(driver_path, figures_case.steady[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
