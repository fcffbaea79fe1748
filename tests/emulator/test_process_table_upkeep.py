"""Issue 11, defects 7 and 9: keeping the process table current without
heavy work on the creating thread, and without tracking processes that have
already exited."""

from __future__ import annotations

import pytest

from kernel_harness import (
    STATUS_SUCCESS,
    image_path,
    reg_binary,
)
from test_control_plane import set_policy, status
from test_process_tracking import AGENT, ATTACKER, POLICY, PROCESS_TERMINATE, terminate

# driver_state.rs INITIAL_PROCESS_CAPACITY: the first table has room for
# this many processes at a load factor of one half.
INITIAL_PROCESS_CAPACITY = 1024
OTHER_POLICY = """
[[rule]]
name = "tool-no-kill"
target = { name = "tool.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]
"""


def test_a_tombstoned_table_is_rebuilt_on_the_creating_thread_without_enumerating(kernel, compile_policy):
    kernel.parameters = {"Policy": reg_binary(compile_policy(POLICY))}
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.new_process(ATTACKER, image_path("tool.exe"))
    kernel.load()
    tracked = status(kernel)["tracked_processes"]
    # Short-lived processes leave a tombstone each; at half the table the
    # creating thread rebuilds it (a fresh table: a large allocation).
    rebuilt_at = None
    for round_ in range(INITIAL_PROCESS_CAPACITY + 16):
        pid = 10_000 + 4 * round_
        calls, lookups, events = len(kernel.api_calls), kernel.image_name_lookups, len(kernel.events)
        kernel.notify_create(pid, image_path("short.exe"))
        on_creating_thread = kernel.api_calls[calls:]
        assert "ZwQuerySystemInformation" not in on_creating_thread, (
            f"process creation {round_} enumerated the system's processes"
        )
        assert kernel.image_name_lookups - lookups <= 1, "only the new process may be identified"
        big = [size for name, size in kernel.events[events:] if name.startswith("ExAllocatePool") and size >= 1 << 16]
        kernel.notify_exit(pid)
        if big:
            rebuilt_at = round_
            break
    assert rebuilt_at is not None, "the tombstones never triggered a rebuild"
    assert rebuilt_at >= INITIAL_PROCESS_CAPACITY // 2
    # The records came over as they were.
    assert status(kernel)["tracked_processes"] == tracked
    assert terminate(kernel, AGENT) == 0
    assert terminate(kernel, ATTACKER, requester=AGENT) == PROCESS_TERMINATE


@pytest.mark.parametrize("install", ["ioctl", "load"])
def test_an_exited_process_still_listed_is_not_tracked_again(kernel, compile_policy, install):
    """The exit notification of AGENT runs before the enumeration reaches it;
    AGENT stays listed and found by id (someone references it), with its exit
    status set. The enumeration must skip it: nothing would remove it later."""
    if install == "load":
        # DriverEntry's enumeration meets a process that already exited.
        kernel.parameters = {"Policy": reg_binary(compile_policy(POLICY))}
        kernel.new_process(ATTACKER, image_path("tool.exe"))
        zombie = kernel.new_process(AGENT, image_path("agent.exe"))
        kernel.processes[zombie].exit_status = STATUS_SUCCESS
        kernel.load()
        assert status(kernel)["tracked_processes"] == 2, "System and ATTACKER only"
        return
    kernel.parameters = {"Policy": reg_binary(compile_policy(POLICY))}
    kernel.new_process(ATTACKER, image_path("tool.exe"))
    kernel.load()
    kernel.notify_create(AGENT, image_path("agent.exe"))
    tracked = status(kernel)["tracked_processes"]
    kernel.notify_exit(AGENT, stays_listed=True)
    assert status(kernel)["tracked_processes"] == tracked - 1
    assert AGENT in kernel.running, "still listed"
    assert set_policy(kernel, compile_policy(OTHER_POLICY)) == STATUS_SUCCESS
    assert status(kernel)["tracked_processes"] == tracked - 1, "the install's enumeration tracked AGENT again"
