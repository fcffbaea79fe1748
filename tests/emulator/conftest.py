"""Fixtures of the emulator suite: where the driver and the WDF layout
manifest are, policy blobs compiled from TOML, and a fresh emulated kernel
per test."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest

from kernel_harness import KernelHarness, PolicyCompiler

REPO_ROOT = Path(__file__).resolve().parents[2]


def _path_from_env(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else default


@pytest.fixture(scope="session")
def driver_path() -> str:
    """The signed driver image. Missing is a failure, not a skip: a suite
    that silently tests nothing would pass CI."""
    path = _path_from_env("PROCGUARD_SYS", REPO_ROOT / "package" / "procguard.sys")
    if not path.is_file():
        pytest.fail(
            f"driver image {path} not found: run `cargo xtask package` or set PROCGUARD_SYS",
            pytrace=False,
        )
    return str(path)


@pytest.fixture(scope="session")
def wdf_layout() -> dict:
    """The WDF layout/index manifest the driver's host tests write."""
    path = _path_from_env(
        "PROCGUARD_LAYOUT_JSON", REPO_ROOT / "target" / "layout" / "wdf-layout.json"
    )
    if not path.is_file():
        pytest.fail(
            f"WDF layout manifest {path} not found: run `PROCGUARD_LAYOUT_JSON={path} "
            "cargo test -p procguard layout` or set PROCGUARD_LAYOUT_JSON",
            pytrace=False,
        )
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def compile_policy(tmp_path_factory) -> Callable[[str], bytes]:
    """TOML policy text -> the driver's `Policy` blob (cached per session)."""
    return PolicyCompiler(tmp_path_factory.mktemp("policies"), REPO_ROOT)


@pytest.fixture
def kernel(driver_path: str):
    """A fresh machine with the image mapped and the harness' kernel hooks in
    place, DriverEntry not yet run. A new Speakeasy per test (~0.1 s) keeps
    tests independent: nothing a driver run leaves behind can leak into the
    next test."""
    harness = KernelHarness(driver_path)
    # Every test runs under the IRQL verifier (irql_verifier.py): it is part
    # of the harness, not an option a test could forget.
    assert harness.irql_limits, "the IRQL verifier has no limits table"
    yield harness
    # Every run already checks for faults; this catches a hook that raised
    # outside any checked run.
    assert not harness.hook_failures, harness.hook_failures
    assert not harness.bugchecks, harness.bugchecks
    assert not harness.irql_violations, harness.irql_report()
