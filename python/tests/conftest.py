"""pytest setup for the procguard package's tests: import the package from
the source tree (python/) and the test helpers from here; the golden files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

GOLDEN = HERE / "golden"


def load_golden(name: str) -> Dict[str, Any]:
    """A golden file written by the Rust tests (python_golden, python_events_golden)."""
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def protocol_golden() -> Dict[str, Any]:
    return load_golden("protocol.json")


@pytest.fixture(scope="session")
def rights_golden() -> Dict[str, Any]:
    return load_golden("rights.json")


@pytest.fixture(scope="session")
def events_golden() -> Dict[str, Any]:
    return load_golden("events_json.json")
