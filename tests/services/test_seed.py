"""The seeding command, on a Firebase database (our RTDB test server)."""

from __future__ import annotations

import os
import subprocess
import sys

from services.core.settings import REPO_ROOT
from testkit.rtdb_server import RTDBServer


def run_seed(url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIREBASE", "STORE"))}
    env["FIREBASE_DATABASE_URL"] = url
    done = subprocess.run(
        [sys.executable, "-m", "services.templates.seed", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_seeding_is_idempotent_and_keeps_edits_unless_overwriting(rtdb: RTDBServer) -> None:
    url = rtdb.database_url("seed-test")
    first = run_seed(url)
    assert "created      friendly-assistant" in first
    assert "firebase store: 9 created, 0 overwritten, 0 kept" in first
    templates = rtdb.get_data("seed-test", "/templates")
    assert templates["friendly-assistant"]["isDefault"] is True
    assert rtdb.get_data("seed-test", "/settings/universalRules")["enabled"] is True

    rtdb.set_data("seed-test", "/templates/friendly-assistant/title", "Edited by an author")
    second = run_seed(url)
    assert "firebase store: 0 created, 0 overwritten, 9 kept" in second
    title = rtdb.get_data("seed-test", "/templates/friendly-assistant/title")
    assert title == "Edited by an author"

    third = run_seed(url, "--overwrite")
    assert "firebase store: 0 created, 9 overwritten, 0 kept" in third
    assert rtdb.get_data("seed-test", "/templates/friendly-assistant/title") != title
