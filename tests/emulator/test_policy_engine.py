"""Issue 4: the policy engine's rules and exemptions, enforced by the real
driver on processes it classified itself (enumeration at load), with the
audit records each decision leaves. Mirrors driver/src/end_to_end_tests.rs."""

from __future__ import annotations

import struct

import pytest

from kernel_harness import (
    IOCTL_SET_POLICY,
    STATUS_SUCCESS,
    NO_RULE,
    OB_OPERATION_HANDLE_CREATE as CREATE,
    OB_OPERATION_HANDLE_DUPLICATE as DUPLICATE,
    image_path,
    reg_binary,
)

PROCESS_TERMINATE = 0x0001
PROCESS_VM_OPERATION = 0x0008
PROCESS_VM_READ = 0x0010
PROCESS_VM_WRITE = 0x0020
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_ALL_ACCESS = 0x1FFFFF
THREAD_TERMINATE = 0x0001
THREAD_SUSPEND_RESUME = 0x0002
THREAD_QUERY_LIMITED_INFORMATION = 0x0800
THREAD_ALL_ACCESS = 0x1FFFFF

AGENT = 1000  # agent.exe: protected by name
KIOSK = 1100  # \Device\HarddiskVolume3\Kiosk\kiosk.exe: protected by a path glob
PINNED = 1200  # pinned by pid
ATTACKER = 2000  # tool.exe
EDITOR = 3000  # editor.exe
CSRSS = 400  # the real csrss.exe, in System32
FAKE_CSRSS = 4400  # a csrss.exe somewhere else
SYSTEM = 4

SYSTEM32 = "\\Device\\HarddiskVolume3\\Windows\\System32"

POLICY = r"""
[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_TERMINATE", "PROCESS_VM_WRITE"]

[[rule]]
name = "agent-threads"
target = { name = "agent.exe" }
objects = "thread"
strip = ["THREAD_SUSPEND_RESUME", "THREAD_TERMINATE"]

[[rule]]
name = "agent-reads-watched"
target = { name = "agent.exe" }
objects = "process"
strip = ["PROCESS_VM_READ"]
mode = "audit"

[[rule]]
name = "kiosk-by-path"
target = { path = ['\Device\HarddiskVolume*\Kiosk\**\*.exe'] }
objects = "process"
strip = ["PROCESS_VM_OPERATION"]

[[rule]]
name = "pinned-by-pid"
target = { pid = 1200 }
objects = "process"
strip = ["PROCESS_TERMINATE"]
"""

IMAGES = {
    AGENT: image_path("agent.exe"),
    KIOSK: "\\Device\\HarddiskVolume3\\Kiosk\\bin\\kiosk.exe",
    PINNED: image_path("whatever.exe"),
    ATTACKER: image_path("tool.exe"),
    EDITOR: image_path("editor.exe"),
    CSRSS: SYSTEM32 + "\\csrss.exe",
    FAKE_CSRSS: "\\Device\\HarddiskVolume3\\Users\\Public\\csrss.exe",
}


@pytest.fixture
def driver(kernel, compile_policy):
    kernel.parameters = {"Policy": reg_binary(compile_policy(POLICY))}
    for pid, path in IMAGES.items():
        kernel.new_process(pid, path)
    kernel.thread = {pid: kernel.new_thread(pid) for pid in (AGENT, ATTACKER)}
    kernel.load()
    assert f"policy of 5 rule(s) in force; {len(IMAGES) + 1} running process(es) classified" in kernel.trace_text()
    return kernel


def open_process(driver, target, access, requester, **extra):
    return driver.pre_operation(
        operation=CREATE,
        object_kind="process",
        target=driver.eprocess(target),
        desired_access=access,
        current_pid=requester,
        **extra,
    ).desired_access


def test_a_rule_by_image_name_protects_the_named_process_only(driver):
    access = PROCESS_TERMINATE | PROCESS_VM_WRITE | PROCESS_QUERY_LIMITED_INFORMATION
    assert open_process(driver, AGENT, access, ATTACKER) == PROCESS_QUERY_LIMITED_INFORMATION
    assert open_process(driver, EDITOR, access, ATTACKER) == access, "another image"
    assert open_process(driver, ATTACKER, access, AGENT) == access, "the protected one as requester"


def test_a_rule_by_path_glob_protects_matching_paths_only(driver, kernel):
    access = PROCESS_VM_OPERATION | PROCESS_TERMINATE
    assert open_process(driver, KIOSK, access, ATTACKER) == PROCESS_TERMINATE
    # Same file name, outside the globbed directory: not protected.
    elsewhere = kernel.new_process(5000, "\\Device\\HarddiskVolume3\\Other\\kiosk.exe")
    result = kernel.pre_operation(
        operation=CREATE, object_kind="process", target=elsewhere, desired_access=access, current_pid=ATTACKER
    )
    assert result.desired_access == access


def test_a_rule_by_pid_protects_that_pid_whatever_its_image(driver):
    assert open_process(driver, PINNED, PROCESS_ALL_ACCESS, ATTACKER) == PROCESS_ALL_ACCESS & ~PROCESS_TERMINATE
    assert open_process(driver, PINNED + 4, PROCESS_ALL_ACCESS, ATTACKER) == PROCESS_ALL_ACCESS


def test_thread_handles_of_a_protected_process_lose_the_thread_rights(driver):
    access = THREAD_SUSPEND_RESUME | THREAD_TERMINATE | THREAD_QUERY_LIMITED_INFORMATION
    result = driver.pre_operation(
        operation=CREATE, object_kind="thread", target=driver.thread[AGENT], desired_access=access,
        current_pid=ATTACKER,
    )
    assert result.desired_access == THREAD_QUERY_LIMITED_INFORMATION
    result = driver.pre_operation(
        operation=CREATE, object_kind="thread", target=driver.thread[ATTACKER], desired_access=access,
        current_pid=AGENT,
    )
    assert result.desired_access == access, "threads of an unprotected process"
    (record,) = driver.drain_audit_records()
    assert (record.object, record.process_id, record.thread_id) == (
        "thread", AGENT, driver.threads[driver.thread[AGENT]].tid
    )
    assert record.rule_id == 1, "agent-threads"


def test_duplication_judges_the_receiving_process_when_source_current_and_receiver_differ(driver):
    # EDITOR (current) duplicates a handle to AGENT out of AGENT into ATTACKER.
    result = driver.pre_operation(
        operation=DUPLICATE, object_kind="process", target=driver.eprocess(AGENT),
        desired_access=PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION,
        source_process=driver.eprocess(AGENT), target_process=driver.eprocess(ATTACKER), current_pid=EDITOR,
    )
    assert result.desired_access == PROCESS_QUERY_LIMITED_INFORMATION
    (record,) = driver.drain_audit_records()
    assert record.duplication
    assert record.originator_process_id == EDITOR
    assert (record.source_process_id, record.target_process_id) == (AGENT, ATTACKER)
    # Into AGENT itself (the receiver is the target): a process getting a
    # handle to itself, though neither source nor current process is AGENT.
    result = driver.pre_operation(
        operation=DUPLICATE, object_kind="process", target=driver.eprocess(AGENT),
        desired_access=PROCESS_TERMINATE, source_process=driver.eprocess(ATTACKER),
        target_process=driver.eprocess(AGENT), current_pid=EDITOR,
    )
    assert result.desired_access == PROCESS_TERMINATE
    # Current process AGENT, receiver ATTACKER: stripped (the current process
    # is not the requester of a duplicate).
    result = driver.pre_operation(
        operation=DUPLICATE, object_kind="process", target=driver.eprocess(AGENT),
        desired_access=PROCESS_TERMINATE, source_process=driver.eprocess(EDITOR),
        target_process=driver.eprocess(ATTACKER), current_pid=AGENT,
    )
    assert result.desired_access == 0


def test_an_audit_only_rule_leaves_the_access_and_records_mode_audit(driver):
    assert open_process(driver, AGENT, PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    (record,) = driver.drain_audit_records()
    assert record.mode == "audit"
    assert record.rule_id == 2, "agent-reads-watched"
    assert record.original_desired_access == record.desired_access == PROCESS_VM_READ


def test_a_process_opening_itself_is_exempt_and_not_audited(driver):
    assert open_process(driver, AGENT, PROCESS_ALL_ACCESS, AGENT) == PROCESS_ALL_ACCESS
    assert driver.drain_audit_records() == []


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_kernel_handle_is_exempt_and_not_audited(driver, kind):
    target = driver.eprocess(AGENT) if kind == "process" else driver.thread[AGENT]
    result = driver.pre_operation(
        operation=CREATE, object_kind=kind, target=target, desired_access=PROCESS_ALL_ACCESS,
        kernel_handle=True, current_pid=ATTACKER,
    )
    assert result.desired_access == PROCESS_ALL_ACCESS
    assert driver.drain_audit_records() == []


@pytest.mark.parametrize("requester", [CSRSS, SYSTEM], ids=["csrss-in-system32", "system"])
def test_a_critical_system_requester_is_exempt(driver, requester):
    assert open_process(driver, AGENT, PROCESS_ALL_ACCESS, requester) == PROCESS_ALL_ACCESS
    assert driver.drain_audit_records() == []


def test_a_csrss_exe_outside_system32_is_not_exempt(driver):
    assert open_process(driver, AGENT, PROCESS_TERMINATE, FAKE_CSRSS) == 0
    (record,) = driver.drain_audit_records()
    assert record.originator_process_id == FAKE_CSRSS and record.mode == "enforce"


def test_exemptions_can_be_turned_off(kernel, compile_policy):
    policy = "[settings]\nexempt_self = false\nexempt_critical_requesters = false\n" + POLICY
    kernel.parameters = {"Policy": reg_binary(compile_policy(policy))}
    for pid, path in IMAGES.items():
        kernel.new_process(pid, path)
    kernel.load()
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, AGENT) == 0, "self-open no longer exempt"
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, CSRSS) == 0, "csrss no longer exempt"
    # Kernel handles are still exempt: that setting is on by default.
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, ATTACKER, kernel_handle=True) == PROCESS_TERMINATE


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_kernel_handles_are_filtered_when_their_exemption_is_off(kernel, compile_policy, kind):
    # Issue 11, item 11: the callback used to pass every kernel handle before
    # any rule was consulted, whatever the setting said.
    policy = "[settings]\nexempt_kernel_handles = false\n" + POLICY
    kernel.parameters = {"Policy": reg_binary(compile_policy(policy))}
    for pid, path in IMAGES.items():
        kernel.new_process(pid, path)
    thread = kernel.new_thread(AGENT)
    kernel.load()
    target, access, kept = (
        (kernel.eprocess(AGENT), PROCESS_TERMINATE | PROCESS_VM_READ, PROCESS_VM_READ)
        if kind == "process"
        else (thread, THREAD_SUSPEND_RESUME | THREAD_QUERY_LIMITED_INFORMATION, THREAD_QUERY_LIMITED_INFORMATION)
    )
    for irql in (0, 1):
        result = kernel.pre_operation(
            operation=CREATE, object_kind=kind, target=target, desired_access=access,
            kernel_handle=True, current_pid=ATTACKER, irql=irql,
        )
        assert result.desired_access == kept
    records = kernel.drain_audit_records()
    assert [(r.process_id, r.mode, r.desired_access) for r in records] == [(AGENT, "enforce", kept)] * 2
    # The other exemptions still apply to kernel handles.
    result = kernel.pre_operation(
        operation=CREATE, object_kind=kind, target=target, desired_access=access, kernel_handle=True,
        current_pid=SYSTEM,
    )
    assert result.desired_access == access, "System keeps every right"


def test_the_kernel_handle_setting_follows_each_policy_installed(driver, compile_policy):
    # The callback passes kernel handles on a copy of the setting kept next
    # to the published policy: it must follow every policy change, both ways.
    def install(text):
        blob = compile_policy(text)
        result = driver.ioctl(IOCTL_SET_POLICY, struct.pack("<II", 0, len(blob)) + blob, 0)
        assert result.status == STATUS_SUCCESS

    def kernel_open():
        return open_process(driver, AGENT, PROCESS_TERMINATE, ATTACKER, kernel_handle=True)

    assert kernel_open() == PROCESS_TERMINATE, "the default: exempt"
    install("[settings]\nexempt_kernel_handles = false\n" + POLICY)
    assert kernel_open() == 0
    install(POLICY)
    assert kernel_open() == PROCESS_TERMINATE
    install("[settings]\nexempt_kernel_handles = false\n" + POLICY)
    assert kernel_open() == 0


def test_an_unknown_process_gets_the_unknown_record_and_is_classified_at_the_next_notification(driver, kernel):
    # Started without a notification (none reached the driver): inside a
    # callback it is never classified, at any IRQL (the harness fails the
    # test if SeLocateProcessImageName is called in a callback): not
    # protected, counted, and noted; the next process notification (PASSIVE,
    # no callback running) reads its path and tracks it.
    late = kernel.new_process(5500, image_path("agent.exe"))
    lookups = kernel.image_name_lookups
    for irql in (1, 0):
        result = kernel.pre_operation(
            operation=CREATE, object_kind="process", target=late, desired_access=PROCESS_TERMINATE,
            current_pid=ATTACKER, irql=irql,
        )
        assert result.desired_access == PROCESS_TERMINATE
    assert kernel.image_name_lookups == lookups
    kernel.notify_create(5600, image_path("editor.exe"))
    assert kernel.image_name_lookups == lookups + 2, "the new process and the noted one"
    result = kernel.pre_operation(
        operation=CREATE, object_kind="process", target=late, desired_access=PROCESS_TERMINATE,
        current_pid=ATTACKER,
    )
    assert result.desired_access == 0
    assert kernel.image_name_blocks == {}, "the looked-up names were freed"


UPDATER = 2200  # updater.exe: the one requester the attach test's rule lets through

ATTACH_POLICY = r"""
[[rule]]
name = "agent-no-kill"
target = { name = "agent.exe" }
requester = { except = { name = "updater.exe" } }
objects = "process"
strip = ["PROCESS_TERMINATE"]
"""


def test_the_requester_is_the_threads_own_process_even_while_attached_to_another(kernel, compile_policy):
    # A create's requester is the process that owns the current thread; a
    # thread attached to another process's address space (KeStackAttachProcess:
    # IoGetCurrentProcess then answers the attached process) is still its
    # owner's. Id and object must come from the same process.
    kernel.parameters = {"Policy": reg_binary(compile_policy(ATTACH_POLICY))}
    for pid, name in ((AGENT, "agent.exe"), (ATTACKER, "tool.exe"), (UPDATER, "updater.exe")):
        kernel.new_process(pid, image_path(name))
    kernel.load()
    kernel.attached_pid = UPDATER
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, ATTACKER) == 0, "the attacker attached to the updater"
    kernel.attached_pid = ATTACKER
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, UPDATER) == PROCESS_TERMINATE, "the updater attached"
    kernel.attached_pid = None
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, ATTACKER) == 0
    assert open_process(kernel, AGENT, PROCESS_TERMINATE, UPDATER) == PROCESS_TERMINATE


def test_stripped_requests_leave_complete_audit_records(driver, kernel):
    # Read with IOCTL_READ_EVENTS; every field against a known request.
    kernel.current_tid = 2004
    time_before = kernel.system_time
    assert open_process(driver, AGENT, PROCESS_TERMINATE | PROCESS_VM_READ, ATTACKER) == PROCESS_VM_READ
    (record,) = driver.drain_audit_records()
    assert record.sequence == 1  # sequence 0: the boot policy record (drained by load)
    assert time_before < record.timestamp <= kernel.system_time, "KeQuerySystemTimePrecise's value"
    assert (record.object, record.duplication) == ("process", False)
    assert (record.process_id, record.thread_id) == (AGENT, 0)
    assert (record.originator_process_id, record.originator_thread_id) == (ATTACKER, 2004)
    assert (record.source_process_id, record.target_process_id) == (0, 0)
    assert record.original_desired_access == PROCESS_TERMINATE | PROCESS_VM_READ
    assert record.desired_access == PROCESS_VM_READ
    assert record.result_code == 0
    assert record.rule_id == 0, "agent-no-kill"
    assert record.mode == "enforce"
    assert record.reserved == 0
    # An unprotected target leaves no record; the next record is sequence 1.
    open_process(driver, EDITOR, PROCESS_ALL_ACCESS, ATTACKER)
    open_process(driver, PINNED, PROCESS_TERMINATE, EDITOR)
    (second,) = driver.drain_audit_records()
    assert second.sequence == 2
    assert second.rule_id == 4 and second.originator_process_id == EDITOR
    assert NO_RULE not in (record.rule_id, second.rule_id)
