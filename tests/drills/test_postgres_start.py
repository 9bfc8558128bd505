"""The service started as the Procfile starts it, with nothing but ``STORE=postgres`` and
``DATABASE_URL`` (and ``PORT``, ``HOST``) in its environment: the core flow, a conversation
carried on after a restart, its rows where ``psql`` sees them; and a refusal to start, in one
clear line without the password, on a bad password, database, host or schema version.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import httpx
import pytest

from bench.harness import Proc, free_port, running, start
from services.core.settings import REPO_ROOT
from services.store.postgres.schema import migrations
from testkit.postgres_server import PASSWORD, PostgresServer

API = "/api/v1/chatbot"
WRONG_PASSWORD = "not-the-password-8c1f"


def procfile_env(url: str, port: int) -> dict[str, str]:
    """Only the store's two settings, and where to listen."""
    return {
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "STORE": "postgres",
        "DATABASE_URL": url,
    }


def procfile_command() -> list[str]:
    """The Procfile's ``web:`` command, on this interpreter."""
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    line = next(line for line in lines if line.startswith("web:"))
    return [sys.executable, *shlex.split(line.removeprefix("web:"))[1:]]


def procfile_service(url: str) -> Proc:
    """The service as the Procfile starts it, once /health answers."""
    port = free_port()
    return start(
        procfile_command(),
        env=procfile_env(url, port),
        ready_url=f"http://127.0.0.1:{port}/health",
        name="chatify-postgres",
    )


def turn(client: httpx.Client, session_id: str, text: str, cmid: str) -> dict[str, object]:
    """One turn, answered 200."""
    body = {"message": text, "client_message_id": cmid}
    response = client.post(f"{API}/session/{session_id}/message", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def test_the_procfile_service_on_postgres_alone_keeps_its_conversations(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    with (
        running(procfile_service(url)) as service,
        httpx.Client(base_url=service.url, timeout=30) as client,
    ):
        created = client.post(f"{API}/session", json={"user_id": "procfile-user"})
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        assert turn(client, session_id, "Hello there", "m-1")["message_count"] == 1
        assert turn(client, session_id, "And again", "m-2")["message_count"] == 2
        assert turn(client, session_id, "And again", "m-2")["replayed"] is True
        listed = client.get(f"{API}/users/procfile-user/sessions").json()
        assert [s["session_id"] for s in listed["sessions"]] == [session_id]
    assert "store=postgres" in service.log_text()

    with (
        running(procfile_service(url)) as again,
        httpx.Client(base_url=again.url, timeout=30) as client,
    ):
        carried = turn(client, session_id, "Still there?", "m-3")
        assert carried["message_count"] == 3 and carried["replayed"] is False
        detail = client.get(f"{API}/session/{session_id}").json()
        contents = [m["content"] for m in detail["conversation_history"] if m["role"] == "user"]
        assert contents == ["Hello there", "And again", "Still there?"]

    # The rows, as any PostgreSQL client sees them.
    rows = postgres_server.psql(
        f"SELECT seq, role, content, coalesce(client_message_id, '') FROM messages "
        f"WHERE session_id = '{session_id}' ORDER BY seq",
        database,
    ).splitlines()
    assert [row.split("|")[:2] for row in rows] == [
        [str(seq), "user" if seq % 2 == 0 else "assistant"] for seq in range(6)
    ]
    assert [row.split("|")[3] for row in rows[::2]] == ["m-1", "m-2", "m-3"]
    count = postgres_server.psql(
        f"SELECT message_count, user_id FROM sessions WHERE session_id = '{session_id}'", database
    )
    assert count.strip() == "3|procfile-user"
    version = postgres_server.psql("SELECT max(version) FROM schema_version", database).strip()
    assert version == str(len(migrations()))


def refusal(url: str) -> tuple[int, str]:
    """Start the service on ``url``; its exit code and everything it printed."""
    done = subprocess.run(
        procfile_command(),
        cwd=REPO_ROOT,
        env=procfile_env(url, free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong password", 'password authentication failed for user "postgres"'),
        ("no such database", 'database "nowhere" does not exist'),
        ("closed port", "the server cannot be reached (Connection refused)"),
        ("not a postgres url", "DATABASE_URL must start with postgresql:// or postgres://"),
    ],
)
def test_a_bad_url_or_password_refuses_to_start_in_one_line_without_the_password(
    postgres_server: PostgresServer, case: str, reason: str
) -> None:
    url = {
        "wrong password": postgres_server.url(password=WRONG_PASSWORD),
        "no such database": postgres_server.url("nowhere", password=WRONG_PASSWORD),
        "closed port": f"postgresql://postgres:{WRONG_PASSWORD}@127.0.0.1:{free_port()}/x",
        "not a postgres url": f"mysql://postgres:{WRONG_PASSWORD}@127.0.0.1/x",
    }[case]
    if case == "no such database":  # the right password, so the server gets to say this
        url = url.replace(WRONG_PASSWORD, PASSWORD)
    code, output = refusal(url)
    assert code != 0, output
    lines = [line for line in output.splitlines() if reason in line]
    assert lines, output[-3000:]
    assert WRONG_PASSWORD not in output and PASSWORD not in output
    if case != "not a postgres url":
        port = url.rsplit(":", 1)[1].split("/")[0]
        assert f"Cannot open the PostgreSQL store at postgres@127.0.0.1:{port}/" in lines[0]


def test_a_database_of_a_newer_release_is_refused(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    with running(procfile_service(url)):
        pass  # migrated to this release's version
    database = url.rsplit("/", 1)[1]
    postgres_server.psql(
        "INSERT INTO schema_version (version, name) VALUES (99, '099_x')", database
    )
    code, output = refusal(url)
    assert code != 0
    known = len(migrations())
    assert f"schema version 99, newer than this release knows ({known})" in output, output[-3000:]
