"""The pre-operation callback, called as the object manager calls it, with
crafted OB_PRE_OPERATION_INFORMATION blocks."""

from __future__ import annotations

import itertools
import struct

import pytest

from kernel_harness import (
    OB_OPERATION_HANDLE_CREATE as CREATE,
    OB_OPERATION_HANDLE_DUPLICATE as DUPLICATE,
    OB_PREOP_SUCCESS,
    image_path,
    reg_binary,
)

# Access rights (winnt.h).
PROCESS_TERMINATE = 0x0001
PROCESS_CREATE_THREAD = 0x0002
PROCESS_VM_OPERATION = 0x0008
PROCESS_VM_READ = 0x0010
PROCESS_VM_WRITE = 0x0020
PROCESS_DUP_HANDLE = 0x0040
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_SUSPEND_RESUME = 0x0800
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_ALL_ACCESS = 0x1FFFFF
THREAD_TERMINATE = 0x0001
THREAD_SUSPEND_RESUME = 0x0002
THREAD_GET_CONTEXT = 0x0008
THREAD_SET_CONTEXT = 0x0010
THREAD_ALL_ACCESS = 0x1FFFFF
SYNCHRONIZE = 0x100000
# Every right a rule may strip (FORMAT.md, "Validation after parsing").
VALID_PROCESS_RIGHTS = 0x3FFF | 0x1F0000 | 0x1000000
VALID_THREAD_RIGHTS = 0x1FFF | 0x1F0000 | 0x1000000

PROTECTED = 500  # protected.exe: protected by name
ALSO_PROTECTED = 1000  # protected by pid: loses every right a rule can strip
OTHER = 600  # an unprotected process (the usual requester)
THIRD = 700  # yet another unprotected process

PROCESS_STRIP = PROCESS_TERMINATE | PROCESS_VM_WRITE | PROCESS_VM_OPERATION | PROCESS_SUSPEND_RESUME
THREAD_STRIP = THREAD_TERMINATE | THREAD_SUSPEND_RESUME | THREAD_SET_CONTEXT
POLICY = f"""
[[rule]]
name = "protected-process"
target = {{ name = "protected.exe" }}
objects = "process"
strip = [{PROCESS_STRIP:#x}]

[[rule]]
name = "protected-threads"
target = {{ name = "protected.exe" }}
objects = "thread"
strip = [{THREAD_STRIP:#x}]

[[rule]]
name = "everything-process"
target = {{ pid = {ALSO_PROTECTED} }}
objects = "process"
strip = [{VALID_PROCESS_RIGHTS:#x}]

[[rule]]
name = "everything-thread"
target = {{ pid = {ALSO_PROTECTED} }}
objects = "thread"
strip = [{VALID_THREAD_RIGHTS:#x}]
"""
IMAGES = {PROTECTED: "protected.exe", ALSO_PROTECTED: "also.exe", OTHER: "tool.exe", THIRD: "third.exe"}


@pytest.fixture
def driver(kernel, compile_policy):
    """The driver loaded with POLICY; the four processes run before the
    load (so they are classified by enumeration), each with one thread."""
    kernel.parameters = {"Policy": reg_binary(compile_policy(POLICY))}
    kernel.process = {pid: kernel.new_process(pid, image_path(name)) for pid, name in IMAGES.items()}
    kernel.thread = {pid: kernel.new_thread(pid) for pid in IMAGES}
    kernel.load()
    return kernel


def open_process(driver, target_pid, access, *, requester=OTHER, **extra):
    """OpenProcess(access, target) from `requester`: a create operation."""
    return driver.pre_operation(
        operation=CREATE,
        object_kind="process",
        target=driver.process[target_pid],
        desired_access=access,
        current_pid=requester,
        **extra,
    )


def duplicate(driver, kind, target_pid, access, *, source, receiver, current, **extra):
    """DuplicateHandle of a handle to `target_pid`'s process/thread, from
    `source`'s handle table into `receiver`'s, called by `current`."""
    objects = driver.process if kind == "process" else driver.thread
    return driver.pre_operation(
        operation=DUPLICATE,
        object_kind=kind,
        target=objects[target_pid],
        desired_access=access,
        source_process=driver.process[source],
        target_process=driver.process[receiver],
        current_pid=current,
        **extra,
    )


def test_create_of_a_protected_process_handle_loses_exactly_the_policy_bits(driver):
    result = open_process(driver, PROTECTED, PROCESS_ALL_ACCESS)
    assert result.status == OB_PREOP_SUCCESS
    assert result.desired_access == PROCESS_ALL_ACCESS & ~PROCESS_STRIP
    # Rights the policy does not name survive, even when asked alone.
    result = open_process(driver, PROTECTED, PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE)
    assert result.desired_access == PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE
    result = open_process(driver, PROTECTED, PROCESS_TERMINATE)
    assert result.desired_access == 0


def test_create_uses_the_current_process_as_requester(driver):
    # The same request is stripped or not depending only on who asks (the
    # process that owns the current thread): the protected process opening
    # itself keeps everything.
    results = []
    for requester in (OTHER, PROTECTED, THIRD):
        calls_before = len(driver.api_calls)
        results.append(open_process(driver, PROTECTED, PROCESS_TERMINATE, requester=requester).desired_access)
        calls = driver.api_calls[calls_before:]
        assert "PsGetCurrentThread" in calls and "IoThreadToProcess" in calls
        assert "IoGetCurrentProcess" not in calls, "the attached process is not the requester"
    assert results == [0, PROCESS_TERMINATE, 0]


def test_duplicate_uses_the_receiving_process_as_requester(driver):
    # Source, current and receiving process all differ. Each case is built so
    # that choosing the wrong one of the three as requester flips the result.
    # Current process is the protected one; the handle goes to OTHER: stripped.
    result = duplicate(
        driver, "process", PROTECTED, PROCESS_ALL_ACCESS, source=THIRD, receiver=OTHER, current=PROTECTED
    )
    assert result.desired_access == PROCESS_ALL_ACCESS & ~PROCESS_STRIP
    # Source is the protected one; the handle goes to THIRD: stripped.
    result = duplicate(
        driver, "process", PROTECTED, PROCESS_ALL_ACCESS, source=PROTECTED, receiver=THIRD, current=OTHER
    )
    assert result.desired_access == PROCESS_ALL_ACCESS & ~PROCESS_STRIP
    # Same for a thread handle.
    result = duplicate(
        driver, "thread", PROTECTED, THREAD_ALL_ACCESS, source=PROTECTED, receiver=OTHER, current=PROTECTED
    )
    assert result.desired_access == THREAD_ALL_ACCESS & ~THREAD_STRIP


def test_duplicate_into_the_protected_process_itself_is_untouched(driver):
    # Neither the source (THIRD) nor the caller (OTHER) is the protected
    # process, but the receiver is: it is getting a handle to itself.
    result = duplicate(
        driver, "process", PROTECTED, PROCESS_ALL_ACCESS, source=THIRD, receiver=PROTECTED, current=OTHER
    )
    assert result.desired_access == PROCESS_ALL_ACCESS
    result = duplicate(
        driver, "thread", PROTECTED, THREAD_ALL_ACCESS, source=THIRD, receiver=PROTECTED, current=OTHER
    )
    assert result.desired_access == THREAD_ALL_ACCESS


def test_thread_handle_of_a_protected_process_loses_the_thread_bits(driver):
    result = driver.pre_operation(
        operation=CREATE,
        object_kind="thread",
        target=driver.thread[PROTECTED],
        desired_access=THREAD_ALL_ACCESS,
        current_pid=OTHER,
    )
    assert result.desired_access == THREAD_ALL_ACCESS & ~THREAD_STRIP
    # The thread mask applies, not the process mask: THREAD_GET_CONTEXT (0x8)
    # shares its value with PROCESS_VM_OPERATION, which the process mask strips.
    result = driver.pre_operation(
        operation=CREATE,
        object_kind="thread",
        target=driver.thread[PROTECTED],
        desired_access=THREAD_GET_CONTEXT,
        current_pid=OTHER,
    )
    assert result.desired_access == THREAD_GET_CONTEXT
    # A thread of an unprotected process is untouched.
    result = driver.pre_operation(
        operation=CREATE,
        object_kind="thread",
        target=driver.thread[THIRD],
        desired_access=THREAD_ALL_ACCESS,
        current_pid=OTHER,
    )
    assert result.desired_access == THREAD_ALL_ACCESS


@pytest.mark.parametrize("operation", [CREATE, DUPLICATE], ids=["create", "duplicate"])
@pytest.mark.parametrize("kind", ["process", "thread"])
def test_kernel_handle_requests_are_untouched(driver, operation, kind):
    objects = driver.process if kind == "process" else driver.thread
    result = driver.pre_operation(
        operation=operation,
        object_kind=kind,
        target=objects[ALSO_PROTECTED],
        desired_access=PROCESS_ALL_ACCESS,
        kernel_handle=True,
        source_process=driver.process[OTHER],
        target_process=driver.process[OTHER],
        current_pid=OTHER,
    )
    assert result.desired_access == PROCESS_ALL_ACCESS


def test_a_process_opening_itself_is_untouched(driver):
    for pid in (PROTECTED, ALSO_PROTECTED):
        assert open_process(driver, pid, PROCESS_ALL_ACCESS, requester=pid).desired_access == PROCESS_ALL_ACCESS
        result = driver.pre_operation(
            operation=CREATE,
            object_kind="thread",
            target=driver.thread[pid],
            desired_access=THREAD_ALL_ACCESS,
            current_pid=pid,
        )
        assert result.desired_access == THREAD_ALL_ACCESS


def test_handles_to_unprotected_processes_are_untouched(driver):
    for requester in (OTHER, PROTECTED, ALSO_PROTECTED):
        assert open_process(driver, THIRD, PROCESS_ALL_ACCESS, requester=requester).desired_access == (
            PROCESS_ALL_ACCESS
        )
    result = duplicate(
        driver, "process", THIRD, PROCESS_ALL_ACCESS, source=OTHER, receiver=PROTECTED, current=OTHER
    )
    assert result.desired_access == PROCESS_ALL_ACCESS


def test_desired_access_after_the_call_is_always_a_subset_of_the_request(driver):
    masks = [
        0,
        PROCESS_TERMINATE,
        PROCESS_VM_READ | PROCESS_QUERY_INFORMATION,
        PROCESS_STRIP,
        PROCESS_ALL_ACCESS,
        0xFFFFFFFF,
        0x80000000,  # GENERIC_READ: mapped before the callback, but not ours to add to
        0x12345678,
        0xFFFFFFFF & ~PROCESS_STRIP,
    ]
    targets = [PROTECTED, ALSO_PROTECTED, THIRD]
    for mask, target, kind, operation in itertools.product(masks, targets, ["process", "thread"], [CREATE, DUPLICATE]):
        objects = driver.process if kind == "process" else driver.thread
        result = driver.pre_operation(
            operation=operation,
            object_kind=kind,
            target=objects[target],
            desired_access=mask,
            source_process=driver.process[OTHER],
            target_process=driver.process[OTHER],
            current_pid=OTHER,
        )
        case = f"mask {mask:#x} target {target} {kind} op {operation}"
        assert result.desired_access & ~mask == 0, f"bits added: {case}"
        policy_strip = {PROTECTED: (PROCESS_STRIP, THREAD_STRIP), ALSO_PROTECTED: (VALID_PROCESS_RIGHTS, VALID_THREAD_RIGHTS)}
        strip = policy_strip.get(target, (0, 0))[0 if kind == "process" else 1]
        assert result.desired_access == mask & ~strip, case


def test_original_desired_access_and_the_rest_of_the_request_are_never_modified(driver):
    # OriginalDesiredAccess differs from DesiredAccess (another filter above
    # already trimmed the request); only DesiredAccess may change.
    for operation in (CREATE, DUPLICATE):
        original = PROCESS_ALL_ACCESS
        requested = PROCESS_ALL_ACCESS & ~PROCESS_DUP_HANDLE
        before_parameters = (
            struct.pack("<IIQQ", requested, original, driver.process[OTHER], driver.process[THIRD])
            if operation == DUPLICATE
            else struct.pack("<II", requested, original) + b"\xCC" * 16
        )
        result = driver.pre_operation(
            operation=operation,
            object_kind="process",
            target=driver.process[PROTECTED],
            desired_access=requested,
            original_desired_access=original,
            source_process=driver.process[OTHER],
            target_process=driver.process[THIRD],
            current_pid=OTHER,
        )
        assert result.desired_access == requested & ~PROCESS_STRIP
        assert result.original_desired_access == original
        assert result.parameters[4:] == before_parameters[4:], "only DesiredAccess may be written"
        operation_field, flags, obj, object_type, call_context, parameters = struct.unpack(
            "<IIQQQQ", result.information
        )
        assert (operation_field, flags, obj) == (operation, 0, driver.process[PROTECTED])
        assert object_type == driver.process_object_type
        assert call_context == 0x5A5A5A5A5A5A5A5A, "CallContext belongs to the post-operation"


def test_a_policy_with_many_rules_applies_each_rule_to_its_own_pid_only(kernel, compile_policy):
    # 300 pid rules (a process and a thread rule each) with gaps between
    # pids; every rule strips a different bit pattern, so a lookup that lands
    # on a neighbour is visible.
    rules = [
        (8 + 12 * index, (index * 0x1357) & 0x3FFF | 1, (index * 0x2468) & 0x1FFF | 2) for index in range(300)
    ]
    toml = "".join(
        f'[[rule]]\nname = "p{pid}"\ntarget = {{ pid = {pid} }}\nobjects = "process"\nstrip = [{process:#x}]\n\n'
        f'[[rule]]\nname = "t{pid}"\ntarget = {{ pid = {pid} }}\nobjects = "thread"\nstrip = [{thread:#x}]\n\n'
        for pid, process, thread in rules
    )
    kernel.parameters = {"Policy": reg_binary(compile_policy(toml))}
    requester = 9000
    kernel.new_process(requester, image_path("tool.exe"))
    for pid, _process_strip, _thread_strip in rules:
        kernel.new_process(pid)
    kernel.load()
    assert "policy of 600 rule(s) in force; 302 running process(es) classified" in kernel.trace_text()
    for pid, process_strip, _thread_strip in rules[:3] + rules[148:152] + rules[-3:]:
        for probe_pid, strip in ((pid, process_strip), (pid + 4, 0), (pid - 4, 0)):
            result = kernel.pre_operation(
                operation=CREATE,
                object_kind="process",
                target=kernel.eprocess(probe_pid),
                desired_access=0xFFFF,
                current_pid=requester,
            )
            assert result.desired_access == 0xFFFF & ~strip, f"pid {probe_pid}"
    thread_pid, _process_strip, thread_strip = rules[-1]
    result = kernel.pre_operation(
        operation=CREATE,
        object_kind="thread",
        target=kernel.new_thread(thread_pid),
        desired_access=0xFFFF,
        current_pid=requester,
    )
    assert result.desired_access == 0xFFFF & ~thread_strip


def test_requests_for_other_object_types_are_untouched(driver):
    # Each registered entry has its own callback (process, thread); neither
    # treats an ObjectType other than its own as its type.
    other_object_type = driver.se.mem_alloc(0x100, tag="harness.OBJECT_TYPE.Other")
    for object_type in (other_object_type, driver.ps_process_type_variable, driver.thread_object_type):
        result = open_process(driver, ALSO_PROTECTED, PROCESS_ALL_ACCESS, object_type=object_type)
        assert result.desired_access == PROCESS_ALL_ACCESS, f"process entry, ObjectType {object_type:#x}"
    # The control: with its own type, each entry strips.
    assert open_process(driver, ALSO_PROTECTED, PROCESS_ALL_ACCESS).desired_access != PROCESS_ALL_ACCESS
    for object_type in (None, other_object_type, driver.process_object_type):
        result = driver.pre_operation(
            operation=CREATE,
            object_kind="thread",
            target=driver.thread[ALSO_PROTECTED],
            desired_access=0xFFFF,
            current_pid=OTHER,
            object_type=object_type,
        )
        if object_type is None:
            assert result.desired_access != 0xFFFF, "the thread entry strips for a thread"
        else:
            assert result.desired_access == 0xFFFF, f"thread entry, ObjectType {object_type:#x}"
