"""The service process moves what its imports and its app made out of the garbage collector's
sight before serving (``gc.freeze``), so a full collection does not stall a turn."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from api.__main__ import frozen, worker_app
from api.app import create_app
from services.core.settings import Settings
before = gc.get_freeze_count()
frozen(create_app(Settings(_env_file=None)))
print(before, gc.get_freeze_count())
worker_app()
print(gc.get_freeze_count())
"""


def test_the_app_is_frozen_before_it_serves() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    first, second = done.stdout.splitlines()
    before, after = map(int, first.split())
    assert before == 0
    assert after > 50_000  # the imported modules, classes and schemas: hundreds of thousands
    assert int(second) > after  # a worker's app is frozen too
