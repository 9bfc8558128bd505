"""Tools some tests need from the machine (a browser, Node.js), which ``.ci/run`` installs."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(message: str) -> NoReturn:
    """A needed tool is missing: skip locally, fail in CI, where a test is never skipped."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
