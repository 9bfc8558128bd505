"""The Firebase store's connection: the firebase-admin app, its HTTP pool and retry policy,
and the two bounded thread pools every role's blocking calls run on (``_run``).

Every role of the store (sessions.py, turns.py, ...) is a mixin on ``FirebaseConnection``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import firebase_admin
import requests
from cachetools import LRUCache
from firebase_admin import credentials, db
from firebase_admin import exceptions as firebase_errors
from urllib3.util import retry

from services.core.errors import StoreUnavailable
from services.core.firebase_credentials import firebase_credential
from services.core.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

FIREBASE_ERRORS = (firebase_errors.FirebaseError, requests.RequestException)


class FirebaseConnection:
    """The app, its pools and a cache of references by path."""

    name = "firebase"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._threads = settings.store_threads
        self._background_threads = max(1, settings.store_threads // 2)
        self._timeout = settings.store_timeout_seconds
        self._app: firebase_admin.App | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Titles, memories and their counts: several requests each, never ahead of a turn's.
        self._background: ThreadPoolExecutor | None = None
        self._refs: LRUCache[str, db.Reference] = LRUCache(1024)
        self._refs_lock = threading.Lock()

    async def open(self) -> None:
        """Create the firebase-admin app and its HTTP pool; check the database answers."""
        self._app = firebase_admin.initialize_app(
            _credential(self._settings),
            options={
                "databaseURL": _database_url(self._settings),
                # Each attempt gets a third of the budget, so a retry still fits in it.
                "httpTimeout": max(1.0, self._timeout / 3),
            },
            name=f"chatify-{uuid.uuid4()}",
        )
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="firebase-store")
        self._background = ThreadPoolExecutor(
            self._background_threads, thread_name_prefix="firebase-background"
        )
        await self._run(self._configure_http)

    def _configure_http(self) -> None:
        # firebase-admin retries 500/503 four times with 0+1+2+4 s waits (~7 s), which with our
        # own deadline would leave nothing for the request itself. Two quick retries of
        # idempotent methods instead; a multi-path PATCH is never retried, because its
        # server-side increment must apply exactly once.
        policy = retry.Retry(
            connect=1,
            read=1,
            status=2,
            status_forcelist=[500, 502, 503, 504],
            allowed_methods=frozenset({"GET", "PUT", "DELETE"}),
            backoff_factor=0.25,
            raise_on_status=False,
        )
        adapter = requests.adapters.HTTPAdapter(
            max_retries=policy,
            pool_connections=1,
            pool_maxsize=self._threads + self._background_threads,  # one per thread
        )
        client = self._ref("/")._client
        session = client.session
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # requests reads the proxy and CA variables from the whole environment on every
        # request (1.5 ms a request with 200 variables, on every turn's path). Read once.
        session.proxies.update(requests.utils.get_environ_proxies(client.base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False

    async def close(self) -> None:
        """Stop the pool and delete the firebase-admin app."""
        for pool in (self._executor, self._background):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._background = None
        if self._app is not None:
            firebase_admin.delete_app(self._app)
            self._app = None
            self._refs.clear()

    async def ping(self) -> None:
        """A tiny shallow read."""
        await self._run(lambda: self._ref("/settings").get(shallow=True))

    def _ref(self, path: str) -> db.Reference:
        """A reference, built once per path (building one looks the app's client up again)."""
        with self._refs_lock:
            ref = self._refs.get(path)
        if ref is None:
            # firebase-admin puts the path into the URL as it is, and the server
            # percent-decodes it: an escaped key (``encode_key``) needs its ``%`` escaped once
            # more to arrive as the key that JSON bodies (multi-path updates) write.
            ref = db.reference(path.replace("%", "%25"), app=self._app)
            with self._refs_lock:
                self._refs[path] = ref
        return ref

    async def _run(self, work: Callable[[], T], *, background: bool = False) -> T:
        """``work`` on a pool thread, bounded by the store timeout. Background work (titles,
        memories, their counts) has a pool of its own, so a turn's claim and write never wait
        behind a title's several requests."""
        pool = self._background if background else self._executor
        if pool is None:
            raise StoreUnavailable("The session store is not open")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(pool, work)
        except TimeoutError as exc:
            logger.error("firebase store call exceeded %.1f s", self._timeout)
            raise StoreUnavailable("The session store is not answering; try again shortly") from exc
        except FIREBASE_ERRORS as exc:
            logger.error("firebase store error: %s: %s", type(exc).__name__, short(exc))
            raise StoreUnavailable("The session store is unavailable; try again shortly") from exc


def refused(exc: Exception) -> bool:
    """Whether the database answered with an error (so the request was not applied)."""
    response = getattr(exc, "http_response", None)
    return response is not None and response.status_code >= 400


def may_land_later(exc: BaseException) -> bool:
    """A timeout: the request may still be applied. (A refusal or a dropped connection is not.)"""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, requests.exceptions.Timeout | TimeoutError | socket.timeout):
            return True
        if "timed out" in str(seen).lower():
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    return False


def short(exc: Exception) -> str:
    """An error's first line, bounded (for logs)."""
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def _credential(settings: Settings) -> credentials.Base | None:
    if settings.firebase_uses_emulator:
        return None  # firebase-admin sends the emulator's owner token itself
    return firebase_credential(settings)


def _database_url(settings: Settings) -> str:
    url = settings.firebase_database_url or ""
    host = settings.firebase_database_emulator_host
    if host and url.startswith("https://"):
        # What firebase-admin does with FIREBASE_DATABASE_EMULATOR_HOST, from settings instead
        # of the process environment (so a .env file works too).
        namespace = url.removeprefix("https://").split(".")[0]
        return f"http://{host}?ns={namespace}"
    return url
