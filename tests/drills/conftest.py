"""The store fixture the process drills share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import running, start_rtdb
from tests.support.stored import DrillStore


@pytest.fixture(params=["sqlite", "firebase"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DrillStore]:
    """An empty store of each kind (Firebase: the RTDB test server as its own process)."""
    if request.param == "sqlite":
        yield DrillStore("sqlite", tmp_path, None)
        return
    with running(start_rtdb()) as rtdb:
        yield DrillStore("firebase", tmp_path, rtdb)
