"""Protocol-faithful Firebase Realtime Database REST server for tests.

Implements the subset of the RTDB REST protocol that ``firebase_admin.db`` (7.x) uses:
GET/PUT/PATCH/POST/DELETE on ``/<path>.json``, per-namespace data trees (``?ns=``), multi-path
PATCH, push ids, ETags (``X-Firebase-ETag``, ``if-match``, ``if-none-match``), ordered and
filtered queries, ``shallow=true`` and ``print=silent``.  Tests can inject faults, inspect a
request log and read/write the data tree directly.

Pointing firebase-admin at it (no credentials are needed; emulator mode never loads them)::

    app = firebase_admin.initialize_app(
        options={"databaseURL": f"{server.url}?ns=chatify-test"}, name="test")

or, with ``FIREBASE_DATABASE_EMULATOR_HOST=127.0.0.1:PORT`` set, a production style URL
``https://chatify-test.firebaseio.com`` (the namespace is the host's first label).

Query strings are decoded with ``unquote`` (``+`` stays ``+``) because the SDK does not
URL-encode query values; clients that encode spaces as ``+`` are therefore not supported.

Standalone: ``python -m testkit.rtdb_server --port 9000``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

PUSH_CHARS = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
DEFAULT_NAMESPACE = "default"
_INVALID_KEY_CHARS = re.compile(r"[.$#\[\]/\x00-\x1f\x7f]")
_INVALID_PATH_CHARS = re.compile(r"[.$#\[\]\x00-\x1f\x7f]")
_ARRAY_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")
_INT32_KEY = re.compile(r"^(0|-?[1-9][0-9]{0,9})$")
_QUERY_PARAMS = ("orderBy", "startAt", "endAt", "equalTo", "limitToFirst", "limitToLast")
_MAX_KEY_BYTES = 768
_BAD_JSON = "Invalid data; couldn't parse JSON object, array, or value."


class RTDBError(Exception):
    """A protocol error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PreconditionFailed(RTDBError):
    """``if-match`` mismatch: answered 412 with the current value and its ETag."""

    def __init__(self, current: Any, etag: str) -> None:
        super().__init__(412, "ETag mismatch")
        self.body = dumps(to_output(current))
        self.etag = etag


# --------------------------------------------------------------------------- push ids


class PushIdGenerator:
    """Generates Firebase push ids: 8 time chars + 12 random chars, strictly increasing."""

    def __init__(self, clock: Callable[[], int] | None = None, seed: int | None = None) -> None:
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._last_time = 0
        self._last_rand = [0] * 12

    def next_id(self) -> str:
        """Return a new push id, greater than every id returned before."""
        with self._lock:
            now = max(self._clock(), self._last_time)  # never go back in time
            if now == self._last_time and not self._increment_random():
                now += 1  # random part overflowed: borrow the next millisecond
            if now != self._last_time:
                self._last_rand = [self._rng.randrange(64) for _ in range(12)]
            self._last_time = now
            time_chars = []
            for _ in range(8):
                time_chars.append(PUSH_CHARS[now % 64])
                now //= 64
            rand_chars = "".join(PUSH_CHARS[i] for i in self._last_rand)
            return "".join(reversed(time_chars)) + rand_chars

    def _increment_random(self) -> bool:
        """Add one to the random part (same millisecond); False on overflow."""
        for i in range(11, -1, -1):
            if self._last_rand[i] < 63:
                self._last_rand[i] += 1
                return True
            self._last_rand[i] = 0
        return False


# --------------------------------------------------------------------------- values


def validate_key(key: Any) -> None:
    """Raise RTDBError(400) unless ``key`` is a legal RTDB key."""
    if (
        not isinstance(key, str)
        or not key
        or _INVALID_KEY_CHARS.search(key)
        or len(key.encode("utf-8")) > _MAX_KEY_BYTES
    ):
        raise RTDBError(400, f"Invalid data; invalid key: {key!r}")


def normalize(value: Any, current: Any = None, now_ms: int = 0) -> Any:
    """Convert client JSON into stored form (arrays -> int-keyed objects, empties -> None).

    ``current`` is the value already stored at the same location (used by increments).
    """
    if isinstance(value, dict):
        if ".sv" in value:
            return _server_value(value[".sv"], current, now_ms)
        if ".value" in value:
            return normalize(value[".value"], current, now_ms)
        out: dict[str, Any] = {}
        for key, child in value.items():
            if key == ".priority":
                continue
            validate_key(key)
            old = current.get(key) if isinstance(current, dict) else None
            norm = normalize(child, old, now_ms)
            if norm is not None:
                out[key] = norm
        return out or None
    if isinstance(value, list):
        return normalize({str(i): v for i, v in enumerate(value)}, current, now_ms)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise RTDBError(400, _BAD_JSON)


def _server_value(spec: Any, current: Any, now_ms: int) -> Any:
    """Resolve a ``{".sv": ...}`` placeholder (timestamp or increment)."""
    if spec == "timestamp":
        return now_ms
    if isinstance(spec, dict) and set(spec) == {"increment"}:
        delta = spec["increment"]
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise RTDBError(400, "Invalid data; increment must be a number")
        is_number = isinstance(current, (int, float)) and not isinstance(current, bool)
        return normalize(current + delta if is_number else delta)
    raise RTDBError(400, f"Invalid data; unsupported server value: {spec!r}")


def to_output(value: Any) -> Any:
    """Render a stored value as RTDB does: int-keyed, mostly dense objects become arrays."""
    if not isinstance(value, dict):
        return value
    rendered = {key: to_output(child) for key, child in value.items()}
    if not all(_ARRAY_INDEX.match(key) for key in rendered):
        return rendered
    max_index = max(int(key) for key in rendered)
    if 2 * len(rendered) <= max_index + 1:
        return rendered
    return [rendered.get(str(i)) for i in range(max_index + 1)]


def compute_etag(value: Any) -> str:
    """ETag of a stored value: base64(sha1(canonical JSON)); stable for null."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(hashlib.sha1(canonical.encode("utf-8")).digest()).decode("ascii")


def dumps(value: Any, pretty: bool = False) -> bytes:
    """Serialize a response value to UTF-8 JSON."""
    if pretty:
        return json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def parse_json(raw: bytes | str) -> Any:
    """Parse a JSON document, raising RTDBError(400) on failure (NaN/Infinity rejected)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise RTDBError(400, _BAD_JSON) from exc


# --------------------------------------------------------------------------- ordering


def key_sort_key(key: str) -> tuple[int, int, str]:
    """RTDB key order: 32-bit integer keys numerically first, then strings."""
    if _INT32_KEY.match(key) and -(2**31) <= int(key) < 2**31:
        return (0, int(key), "")
    return (1, 0, key)


def value_sort_key(value: Any) -> tuple[int, float, str]:
    """RTDB value order: null < false < true < numbers < strings < objects."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool):
        return (2, 0, "") if value else (1, 0, "")
    if isinstance(value, (int, float)):
        return (3, value, "")
    if isinstance(value, str):
        return (4, 0, value)
    return (5, 0, "")


def _child_at(value: Any, path: str) -> Any:
    for segment in path.split("/"):
        if not isinstance(value, dict):
            return None
        value = value.get(segment)
    return value


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class QuerySpec:
    """A parsed ordered query; bounds are already converted to sort keys."""

    order_by: str
    start: tuple[Any, ...] | None = None
    end: tuple[Any, ...] | None = None
    limit_first: int | None = None
    limit_last: int | None = None

    def index_of(self, key: str, value: Any) -> tuple[Any, ...]:
        """The index a child is ordered and filtered by."""
        if self.order_by == "$key":
            return key_sort_key(key)
        if self.order_by == "$value":
            return value_sort_key(value)
        if self.order_by == "$priority":
            return value_sort_key(None)
        return value_sort_key(_child_at(value, self.order_by))

    def apply(self, node: Any) -> Any:
        """Order, filter and limit the children of ``node`` (stored form)."""
        if not isinstance(node, dict):
            return node
        entries = sorted(
            ((self.index_of(k, v), key_sort_key(k), k, v) for k, v in node.items()),
            key=lambda entry: (entry[0], entry[1]),
        )
        selected = [
            (k, v)
            for index, _, k, v in entries
            if (self.start is None or index >= self.start)
            and (self.end is None or index <= self.end)
        ]
        if self.limit_first is not None:
            selected = selected[: self.limit_first]
        if self.limit_last is not None:
            selected = (
                selected[max(0, len(selected) - self.limit_last) :] if self.limit_last else []
            )
        return dict(selected) or None


def _parse_limit(params: Mapping[str, str], name: str) -> int | None:
    if name not in params:
        return None
    raw = params[name]
    if not raw.isascii() or not raw.isdigit():
        raise RTDBError(400, f"{name} must be a non-negative integer")
    return int(raw)


def _parse_bound(params: Mapping[str, str], name: str, order_by: str) -> tuple[Any, ...] | None:
    if name not in params:
        return None
    try:
        value = parse_json(params[name])
    except RTDBError as exc:
        raise RTDBError(400, f"{name} must be a valid JSON value") from exc
    if isinstance(value, (dict, list)):
        raise RTDBError(400, f"{name} must be a JSON primitive")
    if order_by == "$key":
        if not isinstance(value, str):
            raise RTDBError(400, f"{name} must be a string when orderBy is $key")
        return key_sort_key(value)
    return value_sort_key(value)


def parse_query(params: Mapping[str, str]) -> QuerySpec | None:
    """Validate query parameters; None when the request is not a query."""
    present = [name for name in _QUERY_PARAMS if name in params]
    if params.get("shallow") == "true" and present:
        raise RTDBError(400, "Mixing 'shallow' and querying parameters is not supported")
    if not present:
        return None
    if "orderBy" not in params:
        raise RTDBError(400, "orderBy must be defined when other query parameters are defined")
    try:
        order_by = parse_json(params["orderBy"])
    except RTDBError as exc:
        raise RTDBError(400, "orderBy must be a valid JSON encoded path") from exc
    if not isinstance(order_by, str) or not order_by.strip("/"):
        raise RTDBError(400, "orderBy must be a valid JSON encoded path")
    order_by = order_by if order_by.startswith("$") else order_by.strip("/")
    if "limitToFirst" in params and "limitToLast" in params:
        raise RTDBError(400, "limitToFirst and limitToLast cannot both be specified")
    if "equalTo" in params and ("startAt" in params or "endAt" in params):
        raise RTDBError(400, "equalTo cannot be combined with startAt or endAt")
    equal = _parse_bound(params, "equalTo", order_by)
    return QuerySpec(
        order_by=order_by,
        start=equal if equal is not None else _parse_bound(params, "startAt", order_by),
        end=equal if equal is not None else _parse_bound(params, "endAt", order_by),
        limit_first=_parse_limit(params, "limitToFirst"),
        limit_last=_parse_limit(params, "limitToLast"),
    )


# --------------------------------------------------------------------------- data tree


class DataTree:
    """Per-namespace JSON trees guarded by one re-entrant lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._roots: dict[str, Any] = {}

    def read(self, ns: str, segments: list[str]) -> Any:
        """Stored value at a path (a live reference: hold ``lock`` while using it)."""
        node = self._roots.get(ns)
        for segment in segments:
            if not isinstance(node, dict):
                return None
            node = node.get(segment)
        return node

    def write(self, ns: str, segments: list[str], value: Any) -> None:
        """Store a normalized value (None deletes) and prune emptied ancestors."""
        with self.lock:
            if not segments:
                self._store_root(ns, value)
                return
            root = self._roots.get(ns)
            if not isinstance(root, dict):
                if value is None:
                    return
                root = {}
            trail: list[tuple[dict[str, Any], str]] = []
            node = root
            for segment in segments[:-1]:
                child = node.get(segment)
                if not isinstance(child, dict):
                    if value is None:
                        return
                    child = node[segment] = {}
                trail.append((node, segment))
                node = child
            if value is None:
                node.pop(segments[-1], None)
            else:
                node[segments[-1]] = value
            for parent, segment in reversed(trail):
                if parent[segment]:
                    break
                del parent[segment]
            self._store_root(ns, root or None)

    def _store_root(self, ns: str, value: Any) -> None:
        if value is None:
            self._roots.pop(ns, None)
        else:
            self._roots[ns] = value

    def clear(self) -> None:
        """Drop every namespace."""
        with self.lock:
            self._roots.clear()


def split_path(path: str) -> list[str]:
    """Split a decoded path into segments, rejecting RTDB-illegal characters."""
    segments = [segment for segment in path.split("/") if segment]
    for segment in segments:
        if _INVALID_PATH_CHARS.search(segment):
            raise RTDBError(400, f"Invalid path: {path!r}")
    return segments


# --------------------------------------------------------------------------- protocol


@dataclass
class Response:
    """An HTTP response produced by the protocol layer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _etag_requested(headers: Mapping[str, str]) -> bool:
    return headers.get("x-firebase-etag", "").lower() == "true"


def error_response(status: int, message: str) -> Response:
    """A ``{"error": message}`` response."""
    return Response(status, dumps({"error": message}))


class RealtimeDatabase:
    """RTDB REST semantics, independent of the HTTP transport."""

    def __init__(self) -> None:
        self.tree = DataTree()
        self.push_ids = PushIdGenerator()

    def handle(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        ns: str,
    ) -> Response:
        """Execute one request; ``path`` is decoded and stripped of ``.json``."""
        handlers = {
            "GET": self._get,
            "PUT": self._put,
            "PATCH": self._patch,
            "POST": self._post,
            "DELETE": self._delete,
        }
        try:
            handler = handlers.get(method)
            if handler is None:
                raise RTDBError(405, f"Method {method} not supported")
            response = handler(ns, split_path(path), params, headers, body)
        except PreconditionFailed as exc:
            return Response(412, exc.body, {"ETag": exc.etag})
        except RTDBError as exc:
            return error_response(exc.status, exc.message)
        if params.get("print") == "silent" and response.status < 300:
            return Response(204, b"", response.headers)
        return response

    def _get(
        self,
        ns: str,
        segments: list[str],
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        query = parse_query(params)
        wants_etag = _etag_requested(headers) or "if-none-match" in headers
        with self.tree.lock:
            current = self.tree.read(ns, segments)
            extra = {"ETag": compute_etag(current)} if wants_etag else {}
            if "if-none-match" in headers and headers["if-none-match"] == extra["ETag"]:
                return Response(304, b"", extra)
            if params.get("shallow") == "true":
                result = dict.fromkeys(current, True) if isinstance(current, dict) else current
            else:
                result = to_output(query.apply(current) if query else current)
            return Response(200, dumps(result, params.get("print") == "pretty"), extra)

    def _put(
        self,
        ns: str,
        segments: list[str],
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        value = parse_json(body)
        with self.tree.lock:
            current = self.tree.read(ns, segments)
            self._check_if_match(current, headers)
            stored = normalize(value, current, int(time.time() * 1000))
            self.tree.write(ns, segments, stored)
            return Response(200, dumps(to_output(stored)), self._etag_headers(stored, headers))

    def _patch(
        self,
        ns: str,
        segments: list[str],
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        update = parse_json(body)
        if not isinstance(update, dict):
            raise RTDBError(
                400,
                "Invalid data; couldn't parse JSON object. Are you sending a "
                "JSON object with valid key names?",
            )
        paths = [(key, segments + self._update_path(key)) for key in update]
        self._check_disjoint([path for _, path in paths])
        now_ms = int(time.time() * 1000)
        with self.tree.lock:
            staged = [
                (key, path, normalize(update[key], self.tree.read(ns, path), now_ms))
                for key, path in paths
            ]
            for _, path, value in staged:
                self.tree.write(ns, path, value)
            if params.get("print") == "silent":  # nothing to send back: skip encoding it
                return Response(204, b"", {})
            return Response(200, dumps({key: to_output(value) for key, _, value in staged}))

    def _post(
        self,
        ns: str,
        segments: list[str],
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        value = parse_json(body)
        push_id = self.push_ids.next_id()
        stored = normalize(value, None, int(time.time() * 1000))
        self.tree.write(ns, [*segments, push_id], stored)
        return Response(200, dumps({"name": push_id}))

    def _delete(
        self,
        ns: str,
        segments: list[str],
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        with self.tree.lock:
            self._check_if_match(self.tree.read(ns, segments), headers)
            self.tree.write(ns, segments, None)
        return Response(200, b"null", self._etag_headers(None, headers))

    @staticmethod
    def _update_path(key: str) -> list[str]:
        rel = [segment for segment in key.split("/") if segment]
        if not rel:
            raise RTDBError(400, f"Invalid data; invalid update path: {key!r}")
        for segment in rel:
            validate_key(segment)
        return rel

    @staticmethod
    def _check_disjoint(paths: list[list[str]]) -> None:
        ordered = sorted(tuple(path) for path in paths)
        for first, second in zip(ordered, ordered[1:], strict=False):
            if second[: len(first)] == first:
                raise RTDBError(
                    400,
                    f"Invalid data; path /{'/'.join(first)} is an ancestor of /{'/'.join(second)}",
                )

    @staticmethod
    def _check_if_match(current: Any, headers: Mapping[str, str]) -> None:
        expected = headers.get("if-match")
        if expected is None:
            return
        etag = compute_etag(current)
        if expected.strip('"') != etag:
            raise PreconditionFailed(current, etag)

    @staticmethod
    def _etag_headers(value: Any, headers: Mapping[str, str]) -> dict[str, str]:
        if "if-match" in headers or _etag_requested(headers):
            return {"ETag": compute_etag(value)}
        return {}


# --------------------------------------------------------------------------- faults and log


@dataclass
class Fault:
    """One injected fault; see :meth:`FaultInjector.add`."""

    status: int | None = None
    times: int | None = 1
    methods: frozenset[str] | None = None
    path_prefix: str = "/"
    namespace: str | None = None
    delay: float = 0.0
    gate: threading.Event | None = None
    drop: bool = False
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, method: str, path: str, ns: str) -> bool:
        """Whether a request (path without ``.json``) is affected by this fault."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.namespace is not None and ns != self.namespace:
            return False
        prefix = "/" + self.path_prefix.strip("/")
        return prefix == "/" or path == prefix or path.startswith(prefix + "/")

    def response(self) -> Response:
        """The HTTP response this fault answers with (requires ``status``)."""
        assert self.status is not None
        body = self.body if self.body is not None else {"error": "injected fault"}
        return Response(self.status, dumps(body), dict(self.headers))


class FaultInjector:
    """Thread-safe list of faults; the first matching fault wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        status: int | None = None,
        *,
        times: int | None = 1,
        methods: set[str] | frozenset[str] | list[str] | None = None,
        path_prefix: str = "/",
        namespace: str | None = None,
        delay: float = 0.0,
        gate: threading.Event | None = None,
        drop: bool = False,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Inject a fault for the next ``times`` matching requests (``None``: until cleared).

        ``status`` answers with that HTTP status and ``body`` (default
        ``{"error": "injected fault"}``); ``drop`` closes the connection without an answer;
        ``delay`` sleeps first (alone it only slows the real answer down); ``gate`` holds the
        request until the event is set (at most 30 s), then answers it.  ``path_prefix``
        matches whole segments (``/userSessions`` matches ``/userSessions/x``, not
        ``/userSessionsX``).
        """
        if status is None and not drop and delay <= 0 and gate is None:
            raise ValueError("a fault needs status, drop, delay or gate")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        fault = Fault(
            status=status,
            times=times,
            methods=frozenset(m.upper() for m in methods) if methods is not None else None,
            path_prefix=path_prefix,
            namespace=namespace,
            delay=delay,
            gate=gate,
            drop=drop,
            body=body,
            headers=dict(headers or {}),
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str, ns: str) -> Fault | None:
        """Consume one use of the first fault matching the request, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, ns):
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    def remove(self, fault: Fault) -> None:
        """Remove one fault (no error if it already expired)."""
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    @property
    def active(self) -> list[Fault]:
        """Faults that are still armed."""
        with self._lock:
            return list(self._faults)


@dataclass(frozen=True)
class RecordedRequest:
    """One served request as seen by the server."""

    method: str
    path: str
    params: dict[str, str]
    body_size: int
    status: int | None
    namespace: str
    response_size: int = 0
    connection_id: int = 0
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    faulted: bool = False


def parse_params(query: str) -> dict[str, str]:
    """Parse a query string with ``unquote`` (not ``unquote_plus``); last value wins."""
    params: dict[str, str] = {}
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            params[unquote(name)] = unquote(value)
    return params


def resolve_namespace(params: Mapping[str, str], host: str | None) -> str:
    """``ns`` parameter, else the first label of a ``NAME.host`` Host header, else default."""
    if params.get("ns"):
        return params["ns"]
    hostname = (host or "").rsplit(":", 1)[0]
    labels = hostname.split(".")
    if len(labels) > 1 and not hostname.replace(".", "").isdigit():
        return labels[0]
    return DEFAULT_NAMESPACE


# --------------------------------------------------------------------------- HTTP layer


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler writing each response with a single send."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY on accepted sockets
    server: _HTTPServer
    connection_id = 0

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        """Serve GET."""
        self._handle()

    do_PUT = do_PATCH = do_POST = do_DELETE = do_OPTIONS = do_GET

    def _handle(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        if body is None:
            return
        url = urlsplit(self.path)
        params = parse_params(url.query)
        headers = {name.lower(): value for name, value in self.headers.items()}
        method = self.command
        if method == "POST" and "x-http-method-override" in headers:
            method = headers["x-http-method-override"].upper()
        path = unquote(url.path)
        path = "/" + (path[: -len(".json")] if path.endswith(".json") else path).strip("/")
        ns = resolve_namespace(params, headers.get("host"))
        fault = owner.faults.take(method, path, ns)
        if fault is not None and fault.delay > 0:
            time.sleep(fault.delay)
        if fault is not None and fault.gate is not None:
            fault.gate.wait(30)
        if fault is not None and fault.drop:
            self.close_connection = True
            owner.record(
                RecordedRequest(
                    method, path, params, len(body), None, ns, 0, self.connection_id, headers, True
                )
            )
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.status is not None:
            response = fault.response()
        elif not url.path.endswith(".json"):
            response = error_response(404, "Not Found: paths must end with .json")
        else:
            response = owner.database.handle(method, path, params, headers, body, ns)
        # Log before answering so a client that got its answer always finds the entry.
        owner.record(
            RecordedRequest(
                method,
                path,
                params,
                len(body),
                response.status,
                ns,
                len(response.body),
                self.connection_id,
                headers,
                fault is not None,
            )
        )
        self._send(response)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            self.close_connection = True
            self._send(error_response(400, "Invalid Content-Length"))
            return None
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, response: Response) -> None:
        status = HTTPStatus(response.status)
        lines = [f"{self.protocol_version} {status.value} {status.phrase}"]
        if response.status not in (204, 304):
            lines.append("Content-Type: application/json; charset=utf-8")
            lines.append(f"Content-Length: {len(response.body)}")
        lines.append("Cache-Control: no-cache")
        lines.append("Access-Control-Allow-Origin: *")
        lines.append(f"Connection: {'close' if self.close_connection else 'keep-alive'}")
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        payload = b"" if response.status in (204, 304) else response.body
        self.wfile.write(head + payload)  # one sendall(): no Nagle/delayed-ACK stall


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that tracks open connections so stop() can close them."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: RTDBServer) -> None:
        self.owner = owner
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connection_counter = 0
        super().__init__(address, _Handler)

    def register(self, conn: socket.socket) -> int:
        """Track an accepted connection; returns its id (1, 2, ...)."""
        with self._conn_lock:
            self._connections.add(conn)
            self._connection_counter += 1
            return self._connection_counter

    def unregister(self, conn: socket.socket) -> None:
        """Forget a closed connection."""
        with self._conn_lock:
            self._connections.discard(conn)

    @property
    def connection_count(self) -> int:
        """Number of connections accepted so far."""
        return self._connection_counter

    def close_connections(self) -> None:
        """Shut down every open keep-alive connection."""
        with self._conn_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection error from %s", client_address, exc_info=True)


# --------------------------------------------------------------------------- public server


class RTDBServer:
    """In-process RTDB REST server: ``with RTDBServer() as server: ... server.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self.database = RealtimeDatabase()
        self.faults = FaultInjector()
        self._log_lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------
    def start(self) -> RTDBServer:
        """Bind, listen and serve in a daemon thread; returns once accepting."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"rtdb-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("RTDB test server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and all open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> RTDBServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when constructed with ``port=0``)."""
        if self._httpd is None:
            if self._requested_port:
                return self._requested_port
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def database_url(self, ns: str) -> str:
        """``databaseURL`` option for firebase-admin, e.g. ``http://127.0.0.1:PORT?ns=x``."""
        return f"{self.url}?ns={ns}"

    @property
    def connection_count(self) -> int:
        """TCP connections accepted since start (keep-alive reuse keeps this low)."""
        return self._httpd.connection_count if self._httpd else 0

    # request log -----------------------------------------------------------
    def record(self, entry: RecordedRequest) -> None:
        """Append to the request log (called by the HTTP handler)."""
        with self._log_lock:
            self._requests.append(entry)
        logger.debug("%s %s ns=%s -> %s", entry.method, entry.path, entry.namespace, entry.status)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of the request log, oldest first."""
        with self._log_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._log_lock:
            self._requests.clear()

    # direct data access ----------------------------------------------------
    def get_data(self, ns: str, path: str = "/") -> Any:
        """Value at ``path`` rendered as a GET would return it (None if absent)."""
        with self.database.tree.lock:
            return to_output(self.database.tree.read(ns, split_path(path)))

    def set_data(self, ns: str, path: str, value: Any) -> None:
        """Write ``value`` at ``path`` like a PUT (None deletes)."""
        segments = split_path(path)
        with self.database.tree.lock:
            current = self.database.tree.read(ns, segments)
            stored = normalize(value, current, int(time.time() * 1000))
            self.database.tree.write(ns, segments, stored)

    def reset(self) -> None:
        """Clear all data, faults and the request log."""
        self.database.tree.clear()
        self.faults.clear()
        self.clear_requests()


# --------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="Firebase RTDB REST test server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = RTDBServer(args.host, args.port).start()
    logger.info("listening on %s", server.url)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        logger.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
