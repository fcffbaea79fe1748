"""Issue 4: which processes the driver knows and how it keeps that current —
enumeration at load, the process notify routine, exits, PID reuse — and the
audit ring's overflow behaviour."""

from __future__ import annotations

import pytest

from kernel_harness import (
    OB_OPERATION_HANDLE_CREATE as CREATE,
    STATUS_ACCESS_DENIED,
    STATUS_INFO_LENGTH_MISMATCH,
    STATUS_SUCCESS,
    image_path,
    reg_binary,
    reg_dword,
)

PROCESS_TERMINATE = 0x0001
AGENT = 1000
ATTACKER = 2000
POLICY = """
[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE"]
"""


@pytest.fixture
def policy(compile_policy) -> bytes:
    return compile_policy(POLICY)


def terminate(kernel, target_pid: int, requester: int = ATTACKER) -> int:
    return kernel.pre_operation(
        operation=CREATE,
        object_kind="process",
        target=kernel.eprocess(target_pid),
        desired_access=PROCESS_TERMINATE,
        current_pid=requester,
    ).desired_access


def test_processes_running_before_load_are_enumerated_and_protected(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.new_process(ATTACKER, image_path("tool.exe"))
    kernel.load()
    # One consistent snapshot of the list, each listed process looked up,
    # identified and dereferenced (Idle, pid 0, is not an object).
    assert [query[0] for query in kernel.process_list_queries] == [5]
    assert "3 running process(es) classified" in kernel.trace_text()
    assert all(process.references == 0 for process in kernel.processes.values())
    assert kernel.image_name_blocks == {}
    lookups = kernel.image_name_lookups
    assert terminate(kernel, AGENT) == 0
    assert terminate(kernel, ATTACKER, requester=AGENT) == PROCESS_TERMINATE
    assert kernel.image_name_lookups == lookups, "known processes are not identified again per request"


def test_the_notify_routine_is_registered_before_the_enumeration(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.load()
    calls = kernel.api_calls
    registered = calls.index("PsSetCreateProcessNotifyRoutineEx")
    assert registered < calls.index("ZwQuerySystemInformation") < calls.index("ObRegisterCallbacks")
    # Both under the writer lock, so a notification waits for the enumeration.
    acquired = max(i for i in range(registered) if calls[i] == "ExAcquireResourceExclusiveLite")
    assert "ExReleaseResourceLite" not in calls[acquired:calls.index("ZwQuerySystemInformation")]


def test_a_long_process_list_is_read_with_the_length_mismatch_protocol(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    for index in range(1000):
        kernel.new_process(10_000 + 4 * index, image_path(f"app{index}.exe"))
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.load()
    statuses = [status for _class, _length, status in kernel.process_list_queries]
    assert statuses == [STATUS_INFO_LENGTH_MISMATCH, STATUS_SUCCESS], kernel.process_list_queries
    first, second = kernel.process_list_queries
    assert second[1] > first[1], "the retry asks for more"
    assert "1002 running process(es) classified" in kernel.trace_text()
    assert terminate(kernel, AGENT) == 0


def test_a_failed_enumeration_still_protects_from_the_next_notification_on(kernel, policy):
    # The callbacks read no image path (file-system I/O): a process the
    # failed enumeration missed is unknown when first met, noted, and
    # classified by the next process notification (any process's).
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.process_list_results.append(STATUS_ACCESS_DENIED)
    kernel.load()
    assert "enumerating running processes failed with 0xC0000022" in kernel.trace_text()
    assert terminate(kernel, AGENT) == PROCESS_TERMINATE, "unknown when first met"
    kernel.notify_create(4444, image_path("editor.exe"))
    assert terminate(kernel, AGENT) == 0


def test_a_process_started_after_load_is_protected(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(ATTACKER, image_path("tool.exe"))
    kernel.load()
    kernel.notify_create(4444, image_path("agent.exe"))
    lookups = kernel.image_name_lookups
    assert terminate(kernel, 4444) == 0
    assert kernel.image_name_lookups == lookups, "classified by the notification, not on the spot"
    assert kernel.image_name_blocks == {} and not any(kernel.mutexes.values())
    assert not any(resource.held for resource in kernel.resources.values())


def test_a_reused_pid_does_not_inherit_the_old_protection(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(ATTACKER, image_path("tool.exe"))
    kernel.load()
    kernel.notify_create(4444, image_path("agent.exe"))
    assert terminate(kernel, 4444) == 0
    kernel.notify_exit(4444)
    kernel.notify_create(4444, image_path("notepad.exe"))
    assert terminate(kernel, 4444) == PROCESS_TERMINATE, "pid reuse: another image, another process"


def test_a_reused_pid_does_not_lose_a_protection_either(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(ATTACKER, image_path("tool.exe"))
    kernel.load()
    kernel.notify_create(4444, image_path("notepad.exe"))
    kernel.notify_exit(4444)
    kernel.notify_create(4444, image_path("agent.exe"))
    assert terminate(kernel, 4444) == 0


def test_a_stale_record_never_applies_to_a_later_process_with_the_same_pid(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.new_process(ATTACKER, image_path("tool.exe"))
    kernel.load()
    # AGENT's exit notification is lost and a new process reuses its id: the
    # table's creation key no longer matches the object's.
    kernel.exit_process(AGENT)
    kernel.new_process(AGENT, image_path("notepad.exe"))
    assert terminate(kernel, AGENT) == PROCESS_TERMINATE


def test_exit_of_an_unknown_process_is_harmless(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy)}
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.load()
    kernel.new_process(7000, image_path("never-notified.exe"))
    kernel.notify_exit(7000)
    assert terminate(kernel, AGENT) == 0


def test_an_overflowing_audit_ring_drops_the_oldest_and_keeps_the_newest(kernel, policy):
    kernel.parameters = {"Policy": reg_binary(policy), "AuditRecords": reg_dword(4)}
    kernel.new_process(AGENT, image_path("agent.exe"))
    kernel.load()
    requesters = [3000 + 4 * index for index in range(10)]
    for requester in requesters:
        assert terminate(kernel, AGENT, requester=requester) == 0
    records = kernel.drain_audit_records()
    # Sequences are consecutive from 1 (0 is the boot policy record, drained
    # at load): the first one kept, 7, says that 6 were dropped (test_control_plane checks the `dropped` count itself).
    assert [record.sequence for record in records] == [7, 8, 9, 10]  # sequence 0: the boot policy record (drained by load)
    assert [record.originator_process_id for record in records] == requesters[-4:], "newest intact"
    assert all(record.desired_access == 0 and record.mode == "enforce" for record in records)
