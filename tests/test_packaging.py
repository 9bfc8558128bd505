"""The container files, checked without a container runtime: the image starts the service as
the Procfile does, as a non-root user, from only what it copies, and its health check asks
/health on $PORT; Compose runs it beside a Redis."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import free_port
from services.core.settings import REPO_ROOT, Settings


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined, current = [], ""
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip().removesuffix("\\")
        if not line.rstrip().endswith("\\"):
            joined.append(current)
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def arguments(keyword: str) -> list[str]:
    """The last ``keyword`` instruction's arguments."""
    return [args for name, args in instructions() if name == keyword][-1].split()


def exec_form(keyword: str) -> list[str]:
    """The last ``keyword`` instruction's command, in exec (JSON) form."""
    text = [args for name, args in instructions() if name == keyword][-1]
    command: list[str] = json.loads(text[text.index("[") :])
    return command


def test_the_image_starts_the_service_as_the_procfile_does() -> None:
    assert arguments("FROM") == ["python:3.11-slim"]
    procfile = (REPO_ROOT / "Procfile").read_text().strip().removeprefix("web: ")
    assert exec_form("CMD") == procfile.split()


def test_the_image_runs_as_a_user_other_than_root() -> None:
    user = arguments("USER")[0].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()


def test_compose_runs_the_service_beside_redis() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    chatify, redis = compose["services"]["chatify"], compose["services"]["redis"]
    assert chatify["build"] == "." and redis["image"] == "redis:7"
    assert chatify["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert all(port.startswith("127.0.0.1:") for port in chatify["ports"])


def test_compose_has_a_postgres_profile_the_service_can_use() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    chatify, postgres = compose["services"]["chatify"], compose["services"]["postgres"]
    assert postgres["image"] == "postgres:15" and postgres["profiles"] == ["postgres"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert chatify["environment"]["STORE"] == "${STORE:-}"
    assert chatify["environment"]["DATABASE_URL"] == "${DATABASE_URL:-}"
    waits = chatify["depends_on"]["postgres"]
    assert waits == {"condition": "service_healthy", "required": False}  # off without it


def test_the_blueprint_names_an_optional_postgres_database() -> None:
    """Uncommented, the option is a Render Postgres database and the two settings on it."""
    lines = (REPO_ROOT / "render.yaml").read_text().splitlines()

    def uncommented(first: str, last: str) -> Any:
        begin = next(i for i, line in enumerate(lines) if line.strip() == first)
        end = next(i for i in range(begin, len(lines)) if lines[i].strip() == last)
        block = [line.split("# ", 1)[1] for line in lines[begin : end + 1]]
        return yaml.safe_load("\n".join(block))

    settings = uncommented("# - key: STORE", "#     property: connectionString")
    database = uncommented("# databases:", "#     ipAllowList: []")["databases"][0]
    assert settings == [
        {"key": "STORE", "value": "postgres"},
        {
            "key": "DATABASE_URL",
            "fromDatabase": {"name": database["name"], "property": "connectionString"},
        },
    ]
    assert database["name"] == "chatify-db" and database["ipAllowList"] == []


def test_the_blueprint_names_an_optional_key_value_store() -> None:
    blueprint = (REPO_ROOT / "render.yaml").read_text()
    assert yaml.safe_load(blueprint)["services"][0]["startCommand"] == "python -m api"
    assert "# - type: keyvalue" in blueprint and "#   name: chatify-redis" in blueprint


def test_the_blueprint_waits_for_a_graceful_stop() -> None:
    web = yaml.safe_load((REPO_ROOT / "render.yaml").read_text())["services"][0]
    graceful = Settings(_env_file=None).llm_timeout_seconds + 5  # api/__main__.py
    assert graceful <= web["maxShutdownDelaySeconds"] <= 300  # Render's maximum


@contextlib.contextmanager
def image_copy(target: Path) -> Iterator[Path]:
    """Only what the Dockerfile copies into the image, in a folder of its own."""
    target.mkdir(parents=True)
    for name, args in instructions():
        if name == "COPY":
            *sources, _ = args.split()
            for source in sources:
                path = REPO_ROOT / source
                if path.is_dir():
                    shutil.copytree(path, target / source, ignore=shutil.ignore_patterns("*.pyc"))
                else:
                    shutil.copy(path, target / source)
    yield target


def test_the_image_command_serves_from_its_copy_with_only_port_set(tmp_path: Path) -> None:
    """What the container runs, as near as this machine allows: its command in a folder
    holding only what the image copies, with the image's environment and PORT; then its
    HEALTHCHECK command, on that PORT and on a closed one."""
    port = free_port()
    environment = dict(
        arg.split("=", 1) for name, args in instructions() if name == "ENV" for arg in args.split()
    )
    env = {
        **environment,
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "HOST": "127.0.0.1",  # the image's 0.0.0.0, kept on this machine
        "SQLITE_PATH": str(tmp_path / "data" / "chatify.db"),  # the image's /data volume
    }
    command = [sys.executable, *exec_form("CMD")[1:]]
    health_check = [sys.executable, *exec_form("HEALTHCHECK")[1:]]
    with image_copy(tmp_path / "app") as app:
        log = (tmp_path / "service.log").open("wb")
        service = subprocess.Popen(command, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = wait_for(f"http://127.0.0.1:{port}/health", service)
            checked = subprocess.run(health_check, env={"PORT": str(port)}, timeout=30)
            closed = subprocess.run(health_check, env={"PORT": str(free_port())}, timeout=30)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        finally:
            service.terminate()
            service.wait(30)
            log.close()
    output = (tmp_path / "service.log").read_text()
    assert ready, output
    assert checked.returncode == 0 and closed.returncode != 0
    assert metrics.status_code == 200 and "chatify_http_requests_total" in metrics.text
    assert "Application shutdown complete" in output


def wait_for(url: str, service: subprocess.Popen[bytes]) -> bool:
    """Whether ``url`` answered before the process exited or a minute passed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and service.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        time.sleep(0.05)
    return False


def test_the_procfile_command_runs_on_uvloop(tmp_path: Path) -> None:
    """uvicorn picks uvloop (and httptools) when they are installed, not otherwise: the
    service started as the Procfile starts it says which event loop it runs on."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "SQLITE_PATH": str(tmp_path / "chatify.db"),
    }
    command = [sys.executable, *procfile_web_command()[1:]]
    log = (tmp_path / "service.log").open("wb")
    service = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        ready = wait_for(f"http://127.0.0.1:{port}/health", service)
    finally:
        service.terminate()
        service.wait(30)
        log.close()
    output = (tmp_path / "service.log").read_text()
    assert ready, output
    assert "chatify ready:" in output and "loop=uvloop" in output, output


def procfile_web_command() -> list[str]:
    """The Procfile's ``web:`` command, split as a shell would split it."""
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    line = next(line for line in lines if line.startswith("web:"))
    return shlex.split(line.removeprefix("web:"))
