"""Issue 13, part 1: the real driver applies `Parameters\\Policy` when the
registry value changes.

The harness calls the driver's registry callback (CmRegisterCallbackEx) as
Windows does for a set or delete of a value (pre- then post-notification,
REG_POST_OPERATION_INFORMATION over REG_SET_VALUE_KEY_INFORMATION /
REG_DELETE_VALUE_KEY_INFORMATION, the key named with ControlSet001 as the
callback sees it); the callback only enqueues a WDF work item, which runs
when the test says so (``run_work_items``: PASSIVE_LEVEL, under the IRQL
verifier). Mirrors `mod policy_updates` of driver/src/end_to_end_tests.rs."""

from __future__ import annotations

import pytest

from kernel_harness import (
    REG_BINARY,
    SET_POLICY_PERSIST,
    STATUS_ACCESS_DENIED,
    STATUS_FLT_INSTANCE_ALTITUDE_COLLISION,
    STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS,
    reg_binary,
    reg_sz,
)
from test_control_plane import (
    AGENT,
    ATTACKER,
    IMAGES,
    POLICY,
    PROCESS_TERMINATE,
    REPLACEMENT,
    open_process,
    policy_id,
    set_policy,
    status,
)

STATUS_OBJECT_TYPE_MISMATCH = 0xC0000024
STATUS_INVALID_BUFFER_SIZE = 0xC0000206
MAX_VALUE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def blob(compile_policy) -> bytes:
    return compile_policy(POLICY)


@pytest.fixture(scope="module")
def replacement(compile_policy) -> bytes:
    return compile_policy(REPLACEMENT)


@pytest.fixture
def driver(kernel, blob):
    kernel.parameters = {"Policy": reg_binary(blob)}
    for pid, path in IMAGES.items():
        kernel.new_process(pid, path)
    kernel.load()  # drains the boot record into policy_records
    (boot,) = kernel.drain_policy_records()
    assert (boot.mode, boot.policy_source, boot.policy_id, boot.rules) == ("policy-applied", "boot", policy_id(blob), 3)
    return kernel


def agent_protected(kernel) -> bool:
    return open_process(kernel, AGENT, PROCESS_TERMINATE, ATTACKER) == 0


def tool_protected(kernel) -> bool:
    return open_process(kernel, ATTACKER, PROCESS_TERMINATE, AGENT) == 0


def test_the_callback_is_registered_at_the_driver_altitude_with_a_work_item_under_the_control_device(driver):
    (registration,) = driver.registry_callbacks.values()
    assert registration["altitude"] == status(driver)["altitude"]
    assert registration["driver"] == driver.driver_object
    (item,) = driver.work_items.values()
    assert item["parent"] in driver.devices and not item["queued"]
    report = status(driver)["policy_updates"]
    assert report == {"applied": 1, "rejected": 0, "last_rejected_status": 0, "source": "boot"}


def test_a_changed_value_is_applied_by_the_work_item_and_recorded(driver, replacement):
    assert agent_protected(driver)
    driver.registry_set_value("Policy", reg_binary(replacement))
    assert driver.queued_work_items(), "the callback enqueued the work item"
    assert agent_protected(driver), "nothing applied in the writer's thread"
    assert driver.run_work_items() == 1
    assert not agent_protected(driver) and tool_protected(driver), "the new policy decides"
    (record,) = driver.drain_policy_records()
    assert (record.mode, record.policy_source, record.policy_id, record.rules) == (
        "policy-applied", "registry", policy_id(replacement), 1,
    )
    assert (record.originator_process_id, record.originator_thread_id, record.result_code) == (0, 0, 0)
    report = status(driver)
    assert (report["policy_id"], report["rule_count"]) == (policy_id(replacement), 1)
    assert report["policy_updates"] == {"applied": 2, "rejected": 0, "last_rejected_status": 0, "source": "registry"}


@pytest.mark.parametrize("case", ["corrupt", "wrong type", "oversized"])
def test_an_unusable_value_is_rejected_and_the_old_policy_stays(driver, blob, case):
    value, expected = {
        "corrupt": (reg_binary(blob[:-3]), STATUS_INVALID_PARAMETER),
        "wrong type": (reg_sz("not a policy"), STATUS_OBJECT_TYPE_MISMATCH),
        "oversized": ((REG_BINARY, bytes(MAX_VALUE_BYTES + 1)), STATUS_INVALID_BUFFER_SIZE),
    }[case]
    driver.registry_set_value("Policy", value)
    assert driver.run_work_items() == 1
    assert agent_protected(driver), "the old policy is still in force"
    (record,) = driver.drain_policy_records()
    assert (record.mode, record.policy_source, record.result_code) == ("policy-rejected", "registry", expected)
    assert (record.policy_id, record.rules) == (policy_id(blob), 3), "the policy in force"
    report = status(driver)
    assert report["policy_id"] == policy_id(blob)
    assert report["policy_updates"] == {
        "applied": 1, "rejected": 1, "last_rejected_status": expected, "source": "boot",
    }
    assert driver.messages_containing("rejected"), "a debug-log line"


def test_deleting_the_value_leaves_no_rules(driver):
    driver.registry_set_value("Policy", None)
    assert driver.run_work_items() == 1
    assert not agent_protected(driver)
    (record,) = driver.drain_policy_records()
    assert (record.mode, record.policy_source, record.rules) == ("policy-applied", "registry", 0)
    report = status(driver)
    assert (report["rule_count"], report["policy_id"]) == (0, record.policy_id)
    assert report["policy_updates"]["applied"] == 2


def test_a_storm_before_the_work_item_runs_queues_it_once_and_the_last_value_wins(driver, blob, replacement):
    for value in (replacement, blob, blob[:-1], replacement):
        driver.registry_set_value("Policy", reg_binary(value))
    assert driver.work_item_enqueues == 4 and len(driver.queued_work_items()) == 1
    assert driver.run_work_items() == 1, "one run for the whole storm"
    (record,) = driver.drain_policy_records()
    assert (record.mode, record.policy_id) == ("policy-applied", policy_id(replacement))
    assert status(driver)["policy_updates"]["applied"] == 2


@pytest.mark.parametrize("case", ["another value", "another key", "a failed write", "a similar value name"])
def test_an_unrelated_change_enqueues_nothing(driver, blob, case):
    other_key = driver.parameters_key_name().replace("\\procguard\\", "\\other\\")
    assert other_key != driver.parameters_key_name()
    if case == "another value":
        driver.registry_set_value("AuditRecords", (4, (64).to_bytes(4, "little")))
    elif case == "another key":
        driver.registry_set_value("Policy", reg_binary(blob[:-1]), key=other_key)
    elif case == "a failed write":
        driver.registry_set_value("Policy", reg_binary(blob[:-1]), status=STATUS_ACCESS_DENIED)
    else:
        driver.registry_set_value("Policy2", reg_binary(blob[:-1]))
    assert driver.work_item_enqueues == 0 and not driver.queued_work_items()
    assert driver.run_work_items() == 0
    assert driver.drain_policy_records() == []


def test_the_value_name_and_key_compare_case_insensitively(driver, replacement):
    driver.registry_set_value("POLICY", reg_binary(replacement), key=driver.parameters_key_name().upper())
    assert driver.queued_work_items()


def test_apply_persist_is_applied_once_and_its_own_registry_write_changes_nothing(driver, replacement):
    assert set_policy(driver, replacement, SET_POLICY_PERSIST) == STATUS_SUCCESS
    # The driver's own ZwSetValueKey reached the callback: the work item is queued.
    assert driver.queued_work_items()
    assert driver.run_work_items() == 1
    (record,) = driver.drain_policy_records()
    assert (record.mode, record.policy_source) == ("policy-applied", "control")
    assert record.originator_process_id == 4, "sent by the current process"
    report = status(driver)["policy_updates"]
    assert report == {"applied": 2, "rejected": 0, "last_rejected_status": 0, "source": "control"}


def test_a_control_policy_refused_is_recorded_with_its_sender(driver, blob):
    assert set_policy(driver, blob[:-2]) == STATUS_INVALID_PARAMETER
    (record,) = driver.drain_policy_records()
    assert (record.mode, record.policy_source, record.result_code) == ("policy-rejected", "control", STATUS_INVALID_PARAMETER)
    assert status(driver)["policy_updates"]["rejected"] == 1


def test_a_corrupt_boot_policy_is_recorded_as_rejected_at_start(kernel, blob):
    kernel.parameters = {"Policy": reg_binary(blob[:-3])}
    kernel.load()
    (record,) = kernel.drain_policy_records()
    assert (record.mode, record.policy_source, record.result_code, record.rules) == (
        "policy-rejected", "boot", STATUS_INVALID_PARAMETER, 0,
    )
    assert status(kernel)["policy_updates"] == {
        "applied": 0, "rejected": 1, "last_rejected_status": STATUS_INVALID_PARAMETER, "source": "boot",
    }


def test_unload_after_changes_with_an_item_queued_unregisters_then_flushes(driver, replacement):
    driver.registry_set_value("Policy", reg_binary(replacement))
    assert driver.run_work_items() == 1
    driver.registry_set_value("Policy", None)
    assert driver.queued_work_items()
    driver.unload()
    names = [event[0] for event in driver.events]
    unregister = names.index("CmUnRegisterCallback")
    flush = names.index("WdfWorkItemFlush")
    delete = names.index("WdfObjectDelete")
    assert unregister < flush < delete, "callback gone, then the item finished, then the device"
    assert not driver.registry_callbacks and driver.registry_unregistered
    assert not driver.queued_work_items() and driver.work_item_runs == 2, "the flush ran the queued item"


def test_unload_with_nothing_queued(driver):
    driver.unload()
    assert not driver.registry_callbacks
    (item,) = driver.work_items.values()
    assert item["flushes"] == 1 and item["deleted"]


def test_a_refused_registration_leaves_the_driver_loaded_without_watching(kernel, blob):
    kernel.parameters = {"Policy": reg_binary(blob)}
    kernel.registry_callback_status = STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    kernel.load()
    assert not kernel.registry_callbacks
    assert status(kernel)["last_error"] == STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    kernel.unload()
