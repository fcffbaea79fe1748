"""Issue 4's cost targets for one pre-operation callback, measured on the
real driver with 1,000 tracked processes and policies of 1 and 10,000 rules
(see measure_instructions.py, which also prints the table). Assertions are
on the steady state; the first call is checked to cost the same.

A missed target is a strict xfail carrying the measured number: when the
driver gets fast enough the xfail turns into a failure, and the marker is
removed. Targets are never loosened here."""

from __future__ import annotations

import pytest

from measure_instructions import PROCESS_VM_READ, measure_all, policy_toml

REGISTRY_VALUE_CAP = 1 << 20  # the INF/registry cap for the Policy value


@pytest.fixture(scope="module")
def figures(driver_path, compile_policy):
    """Both loads (the 10,000-rule one takes ~30 s emulated), measured once."""
    return measure_all(driver_path, compile_policy)


def test_the_10000_rule_policy_compiles_and_fits_the_registry_value(compile_policy):
    blob = compile_policy(policy_toml(10_000))
    assert len(blob) <= REGISTRY_VALUE_CAP, len(blob)


def test_both_policies_load_and_track_every_process(figures):
    for rules, policy in figures.items():
        assert f"policy of {rules} rule(s) in force; 1003 running process(es) classified" in policy.tracked


@pytest.mark.parametrize("rules", [1, 10_000])
def test_the_measured_requests_are_decided_correctly(figures, rules):
    cases = figures[rules].cases
    assert all(call.desired_access == 0x1 for call in [cases["a"].first, *cases["a"].steady]), "(a) untouched"
    assert all(call.desired_access == PROCESS_VM_READ for call in [cases["b"].first, *cases["b"].steady])


@pytest.mark.parametrize("rules", [1, 10_000])
def test_an_unmatched_request_makes_at_most_4_kernel_calls_no_allocation_no_mutex(figures, rules):
    case = figures[rules].cases["a"]
    for call in [case.first, *case.steady]:
        assert len(call.api_calls) <= 4, call.api_calls
        assert call.allocations == 0
        assert call.mutex_acquisitions == 0
        assert not {"ExAllocatePool2", "KeAcquireGuardedMutex", "KeAcquireSpinLockRaiseToDpc"} & set(call.api_calls)


@pytest.mark.parametrize("rules", [1, 10_000])
def test_an_unmatched_request_costs_at_most_150_instructions(figures, rules):
    assert figures[rules].cases["a"].steady_instructions <= 150


@pytest.mark.parametrize("rules", [1, 10_000])
@pytest.mark.xfail(
    strict=True,
    reason="measured 338 instructions and 7 kernel calls (steady = first call, 1 and 10,000 rules) "
    "against the 300 target (365 before the top-bits table hash, which also put agent.exe and "
    "tool.exe one probe from home instead of two; 514 before decisions copied only the record words they read; "
    "554 / 8 before the slot protected flag and the lazy requester)",
)
def test_a_stripped_and_audited_request_costs_at_most_300_instructions(figures, rules):
    assert figures[rules].cases["b"].steady_instructions <= 300


@pytest.mark.parametrize("case", ["a", "b"])
def test_10000_rules_cost_within_10_percent_of_1_rule(figures, case):
    one, many = figures[1].cases[case], figures[10_000].cases[case]
    assert many.steady_instructions <= one.steady_instructions * 1.10
    assert many.steady_api_calls <= one.steady_api_calls


@pytest.mark.parametrize("case", ["a", "b"])
def test_steady_state_calls_cost_the_same_and_so_does_the_first(figures, case):
    for policy in figures.values():
        calls = [policy.cases[case].first, *policy.cases[case].steady]
        assert len({call.instructions for call in calls}) == 1, [call.instructions for call in calls]
