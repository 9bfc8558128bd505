"""A throwaway PostgreSQL cluster on 127.0.0.1 for the tests, the drills and the bench: Debian's
``postgresql`` package binaries (``/usr/lib/postgresql/<version>/bin``), a cluster made by
``initdb`` in a temporary folder, one server process, a fresh database per test.

``initdb`` and ``postgres`` refuse to run as root: as root, they run as the ``postgres`` system
user (which the package creates) and the folder is handed to it; as anyone else, as that user.
The server can be stopped and started again on the same port and data (the restart drills).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

SUPERUSER = "postgres"
PASSWORD = "chatify-test-password"  # a throwaway cluster's, on 127.0.0.1 only


def postgres_bin() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` with initdb, if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def require_postgres() -> Path:
    """The binaries' folder; skipped without one locally, a failure in CI (``CI`` set)."""
    folder = postgres_bin()
    if folder is None:
        message = "no PostgreSQL server: apt-get install postgresql (README, 'Running the tests')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dump(url: str) -> str:
    """Every row of the database at ``url`` as ``pg_dump --data-only`` writes it."""
    folder = postgres_bin()
    if folder is None:
        raise RuntimeError("no PostgreSQL binaries")
    done = subprocess.run(
        [str(folder / "pg_dump"), "--data-only", "-d", url],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def query(url: str, sql: str) -> list[str]:
    """The rows of ``sql`` on the database at ``url`` as ``psql`` prints them (fields apart
    by ``|``), one string a row."""
    folder = postgres_bin()
    if folder is None:
        raise RuntimeError("no PostgreSQL binaries")
    done = subprocess.run(
        [str(folder / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.splitlines()


class PostgresServer:
    """One cluster and its server process."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable  # fsync and synchronous commits on, as in production (bench)
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="chatify-pg-"))
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.log = self.folder / "postgres.log"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # run as the postgres user, owner of the whole folder
            user = pwd.getpwnam(SUPERUSER)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        """``postgresql://postgres:…@127.0.0.1:PORT/database``."""
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, capture_output=True, text=True, check=check, cwd=self.folder, **self._as
        )

    def init(self) -> PostgresServer:
        """``initdb``: password logins on TCP, trust on the cluster's own socket folder."""
        pwfile = self.folder / "pwfile"
        pwfile.write_text(PASSWORD)
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self.sockets.mkdir()
        if self._as:
            os.chown(self.sockets, self._as["user"], self._as["group"])
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
            f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> PostgresServer:
        """Start the server and wait until it takes a connection (bounded)."""
        args = [
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=300", "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        if not self.durable:  # a test's data need not survive a power cut: no disk syncs
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            args += ["-c", "full_page_writes=off"]
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder, **self._as
            )
        deadline = time.monotonic() + 30
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        """Whether a real connection gets in now (``pg_isready``)."""
        ready = self._run(
            str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1",
            check=False,
        )  # fmt: skip
        return ready.returncode == 0

    def psql(self, sql: str, database: str = "postgres", *, sep: str = "|") -> str:
        """Run SQL with ``psql`` over TCP, as a client would; its unaligned output (fields
        apart by ``sep``)."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-F", sep, "-d", self.url(database), "-c", sql],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, prefix: str = "chatify") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): every session is cut, work under way rolled back."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def restart(self) -> None:
        """A fast shutdown, then a start on the same port and data."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """What the server logged."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> PostgresServer:
        return self.init().start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
