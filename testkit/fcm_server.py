"""Firebase Cloud Messaging's HTTP v1 API as a local test server (as ``rtdb_server`` stands in
for the database): ``POST /v1/projects/{project}/messages:send``.

It records every message it accepts, answers ``UNREGISTERED`` (404) or ``INVALID_ARGUMENT``
(400) for the tokens a test names, and fails the next requests with a status (429, 500, 503,
with ``Retry-After`` when asked) as many times as a test says. Tests wait for messages with
``wait_for`` (a poll with a deadline, never a fixed sleep).

Point the service at it with ``FCM_URL=http://127.0.0.1:PORT`` (plain HTTP: no credentials).
Standalone: ``python -m testkit.fcm_server --port 9099``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


@dataclass(frozen=True, slots=True)
class Failure:
    """The answer to the next requests, ``times`` of them."""

    status: int
    times: int
    retry_after: str | None = None


class FCMServer:
    """In-process FCM v1 server: ``with FCMServer() as fcm: ... fcm.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []  # accepted, in order
        self.attempts = 0  # every send request, answered or refused
        self.authorizations: list[str | None] = []  # each request's Authorization header
        self.unregistered: set[str] = set()
        self.invalid: set[str] = set()
        self._failures: list[Failure] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FCMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL (``FCM_URL``)."""
        assert self._httpd is not None
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> FCMServer:
        """Listen and serve in a daemon thread."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                status, headers, body = server.handle(
                    self.path, self.rfile.read(length), self.headers.get("Authorization")
                )
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug(format, *args)

        self._httpd = ThreadingHTTPServer((self.host, self._port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reset(self) -> None:
        """Forget messages, attempts, failures and token answers (between tests)."""
        with self._lock:
            self.messages.clear()
            self.authorizations.clear()
            self.attempts = 0
            self.unregistered.clear()
            self.invalid.clear()
            self._failures.clear()

    def fail_next(self, status: int, times: int = 1, *, retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests with ``status`` (429, 500, 503...)."""
        with self._lock:
            self._failures.append(Failure(status, times, retry_after))

    def tokens(self) -> list[str]:
        """The token of each accepted message, in order."""
        with self._lock:
            return [message["token"] for message in self.messages]

    async def wait_for(self, count: int, *, within: float = 5.0) -> list[dict[str, Any]]:
        """The accepted messages once there are ``count`` (``TimeoutError`` past the
        deadline); polled, so the app's event loop keeps running meanwhile."""
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages)} FCM messages, not {count}")
            await asyncio.sleep(0.005)

    def handle(
        self, path: str, raw: bytes, authorization: str | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """One request: its status, headers and JSON body."""
        with self._lock:
            self.attempts += 1
            self.authorizations.append(authorization)
            match = _SEND_PATH.match(path)
            if match is None:
                return 404, {}, _error(404, "NOT_FOUND", None, "no such method")
            if self._failures:
                failure = self._failures[0]
                if failure.times <= 1:
                    self._failures.pop(0)
                else:
                    self._failures[0] = Failure(
                        failure.status, failure.times - 1, failure.retry_after
                    )
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
                return failure.status, headers, _error(failure.status, "UNAVAILABLE", None, "")
            try:
                message = json.loads(raw)["message"]
                token = message["token"]
                assert isinstance(token, str) and token
            except (ValueError, KeyError, TypeError, AssertionError):
                return 400, {}, _error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "bad message")
            if token in self.unregistered:
                return 404, {}, _error(404, "NOT_FOUND", "UNREGISTERED", "token unregistered")
            if token in self.invalid:
                return 400, {}, _error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "bad token")
            self.messages.append(message)
            name = f"projects/{match.group(1)}/messages/{len(self.messages)}"
            return 200, {}, {"name": name}


def _error(code: int, status: str, fcm_code: str | None, message: str) -> dict[str, Any]:
    details = [{"@type": _FCM_ERROR, "errorCode": fcm_code}] if fcm_code else []
    return {"error": {"code": code, "message": message, "status": status, "details": details}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9099)
    port = parser.parse_args().port
    with FCMServer(port=port) as server:
        logger.warning("FCM test server on %s", server.url)
        threading.Event().wait()


if __name__ == "__main__":
    main()
