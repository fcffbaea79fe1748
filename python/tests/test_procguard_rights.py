"""The package's access-right names against the engine's list
(golden/rights.json, written from procguard_policy::rights)."""

from __future__ import annotations

import procguard
from procguard import rights


def test_every_right_has_the_engines_name_kind_value_and_order(rights_golden):
    assert [tuple(r) for r in rights.ALL_RIGHTS] == [
        (r["name"], r["kind"], r["mask"]) for r in rights_golden["rights"]
    ]


def test_each_right_is_a_module_constant_and_exported_by_the_package(rights_golden):
    for right in rights_golden["rights"]:
        assert getattr(rights, right["name"]) == right["mask"]
        assert getattr(procguard, right["name"]) == right["mask"]
        assert right["name"] in procguard.__all__


def test_named_sets_and_documented_rights_are_the_engines(rights_golden):
    assert [tuple(s) for s in rights.RIGHT_SETS] == [
        (s["name"], s["process"], s["thread"]) for s in rights_golden["sets"]
    ]
    assert list(rights.DOCUMENTED_PROCESS_RIGHTS) == rights_golden["documented_process"]
    assert list(rights.DOCUMENTED_THREAD_RIGHTS) == rights_golden["documented_thread"]


def test_masks_are_named_as_the_engine_names_them(rights_golden):
    for sample in rights_golden["mask_names"]:
        assert rights.mask_names(sample["mask"], sample["object"]) == sample["text"]


def test_all_access_and_lookup_by_name():
    assert rights.PROCESS_ALL_ACCESS == 0x1FFFFF == rights.THREAD_ALL_ACCESS
    assert rights.right_by_name("process_terminate").mask == 1
