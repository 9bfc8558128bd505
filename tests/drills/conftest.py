"""The store fixture the process drills share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import running, start_rtdb
from testkit.postgres_server import PostgresServer
from tests.support.stored import DrillStore


@pytest.fixture(params=["sqlite", "firebase", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DrillStore]:
    """An empty store of each kind (Firebase: the RTDB test server as its own process;
    PostgreSQL: a database of its own on the run's cluster)."""
    if request.param == "sqlite":
        yield DrillStore("sqlite", tmp_path, None)
        return
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        yield DrillStore("postgres", tmp_path, None, server)
        return
    with running(start_rtdb()) as rtdb:
        yield DrillStore("firebase", tmp_path, rtdb)
