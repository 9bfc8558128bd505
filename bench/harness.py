"""Real processes on 127.0.0.1 for benchmarks and fault drills: the service (exactly as the
Procfile starts it), the mock LLM and the Realtime Database test server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
_SETTING_PREFIXES = (
    "OPENAI_", "FIREBASE_", "GOOGLE_APPLICATION", "STORE", "SQLITE_", "AUTH_", "DATABASE_",
)  # fmt: skip


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**values: object) -> dict[str, str]:
    """This process's environment without Chatify settings, plus ``values`` (upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update({key.upper(): str(value) for key, value in values.items()})
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclass
class Proc:
    """A started process, its URL and its log file."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path
    args: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        """What it printed."""
        return self.log.read_text(errors="replace")


def start(
    args: list[str], *, env: dict[str, str], ready_url: str, name: str, repo: Path = REPO
) -> Proc:
    """Start a process in ``repo`` and wait until ``ready_url`` answers (bounded)."""
    log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        popen = subprocess.Popen(args, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=1).status_code < 500:
                break
        if time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"{name} did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    base = ready_url.split("/", 3)
    return Proc(popen, "/".join(base[:3]), log, args)


def start_service(
    port: int | None = None, *, repo: Path = REPO, module: str = "api", **settings: Any
) -> Proc:
    """``python -m api`` (the Procfile's command) with settings from the environment only, run
    from the checkout ``repo`` (another commit's worktree, for a baseline); ``module``: another
    service to run the same way (``bench.floor_service``)."""
    port = port or free_port()
    values: dict[str, object] = {"port": port, "host": "127.0.0.1", "log_level": "WARNING"}
    values.update(settings)
    env = clean_env(**values)
    env["PYTHONPATH"] = str(repo)  # else that checkout would import this one's code
    return start(
        [sys.executable, "-m", module],
        env=env,
        ready_url=f"http://127.0.0.1:{port}/health",
        name="chatify",
        repo=repo,
    )


def start_mock_llm(*extra: str) -> Proc:
    """``python -m testkit.mock_llm`` with extra flags; its URL is the server root."""
    port = free_port()
    return start(
        [sys.executable, "-m", "testkit.mock_llm", "--port", str(port), *extra],
        env=clean_env(),
        ready_url=f"http://127.0.0.1:{port}/health",
        name="mock-llm",
    )


def start_rtdb() -> Proc:
    """The Realtime Database test server as its own process."""
    port = free_port()
    return start(
        [sys.executable, "-m", "testkit.rtdb_server", "--port", str(port)],
        env=clean_env(),
        ready_url=f"http://127.0.0.1:{port}/.json?ns=ping",
        name="rtdb",
    )


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    """Stop the process on exit."""
    try:
        yield proc
    finally:
        proc.stop()
