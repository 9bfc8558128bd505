"""Prometheus metrics, one registry per app (built by the lifespan, never module-level), so
two apps in one process, and the tests' app per test, never share a counter.

The turn pipeline, the LLM router and the store report through the narrow observer protocols
below; ``Metrics`` implements them all. Every label is bounded: route templates (never raw
paths), error codes, store operations, configured providers, and personality ids and model
names capped at ``MAX_LABEL_VALUES`` each (past that they count as ``other``). No message text,
user id, session id or credential is ever a label. docs/operations.md names every metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

from services.core.records import Usage

MAX_LABEL_VALUES = 100  # distinct personality ids or model names per label, then "other"
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "WS"})
# Seconds. A turn and an LLM call take from a few hundred milliseconds to LLM_TIMEOUT_SECONDS.
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
FIRST_DELTA_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class TurnObserver(Protocol):
    """Told how each turn ended (``services/conversation/turns.py``)."""

    def turn_stored(
        self,
        *,
        template: str,
        provider: str,
        model: str,
        usage: Usage | None,
        seconds: float,
        first_delta_seconds: float | None,
    ) -> None:
        """A new turn was stored; ``first_delta_seconds`` for streamed turns only."""

    def turn_failed(self, code: str) -> None:
        """A turn ended with this error code (whatever the transport)."""


class LLMObserver(Protocol):
    """Told of every call to a model provider (``services/llm/providers.py``)."""

    def llm_call(self, *, provider: str, model: str, seconds: float, outcome: str) -> None:
        """One call: ``outcome`` is ``ok``, an error code, or ``cancelled``."""


class StoreObserver(Protocol):
    """Told of every store call (``services/store/metered.py``)."""

    def store_call(self, operation: str, seconds: float, *, failed: bool) -> None:
        """One call of a ``Store`` method; ``failed``: it raised ``StoreUnavailable``."""


class _Capped:
    """A label's values as given until ``limit`` distinct ones were seen, then ``other``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


class _Children:
    """A labelled metric's children, each looked up once: prometheus-client's ``labels()``
    validates, locks and hashes on every call, a cost on every turn. The label values are
    bounded (see the module docstring), so is this cache."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every metric of one app, on its own ``registry`` (others may add theirs to it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._template, self._model = _Capped(), _Capped()
        self._requests = Counter(
            "chatify_http_requests",
            "HTTP requests and WebSocket connections, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self._request_seconds = Histogram(
            "chatify_http_request_seconds",
            "Seconds until the response's headers (a stream's length is not counted)",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self._errors = Counter(
            "chatify_errors", "HTTP error responses, by error code", ["code"], registry=registry
        )
        self._turn_seconds = Histogram(
            "chatify_turn_seconds",
            "Seconds from a turn's start (after its queue) until it is stored",
            ["template"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self._first_delta_seconds = Histogram(
            "chatify_turn_first_delta_seconds",
            "Seconds from a streamed turn's start until its first text reached its clients",
            ["template"],
            buckets=FIRST_DELTA_BUCKETS,
            registry=registry,
        )
        self._turn_failures = Counter(
            "chatify_turn_failures",
            "Turns that ended in an error, by error code (every transport)",
            ["code"],
            registry=registry,
        )
        self._tokens = Counter(
            "chatify_tokens",
            "Tokens of stored turns: in (prompt) and out (completion)",
            ["direction", "template", "provider", "model"],
            registry=registry,
        )
        self._cost = Counter(
            "chatify_cost_micros",
            "Cost of stored turns in micro-USD (millionths of a USD) by the price table; turns "
            "whose model has no price are left out",
            ["template", "provider", "model"],
            registry=registry,
        )
        self._llm_seconds = Histogram(
            "chatify_llm_call_seconds",
            "Seconds of one call to a model provider (a whole stream when streamed)",
            ["provider", "model"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self._llm_calls = Counter(
            "chatify_llm_calls",
            "Calls to model providers, by outcome (ok, an error code, cancelled)",
            ["provider", "model", "outcome"],
            registry=registry,
        )
        self._store_seconds = Histogram(
            "chatify_store_seconds",
            "Seconds of one store call, by operation",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self._store_failures = Counter(
            "chatify_store_failures",
            "Store calls that did not answer (store_unavailable), by operation",
            ["operation"],
            registry=registry,
        )
        self._requests_of = _Children(self._requests)
        self._request_seconds_of = _Children(self._request_seconds)
        self._errors_of = _Children(self._errors)
        self._turn_seconds_of = _Children(self._turn_seconds)
        self._first_delta_seconds_of = _Children(self._first_delta_seconds)
        self._turn_failures_of = _Children(self._turn_failures)
        self._tokens_of = _Children(self._tokens)
        self._cost_of = _Children(self._cost)
        self._llm_seconds_of = _Children(self._llm_seconds)
        self._llm_calls_of = _Children(self._llm_calls)
        self._store_seconds_of = _Children(self._store_seconds)
        self._store_failures_of = _Children(self._store_failures)
        self._sessions_cached = Gauge(
            "chatify_sessions_cached", "Sessions held in memory", registry=registry
        )
        self._turns_in_flight = Gauge(
            "chatify_turns_in_flight", "Turns running or waiting in this process", registry=registry
        )
        self._turns_queued = Gauge(
            "chatify_turns_queued",
            "Turns waiting behind another turn of their session",
            registry=registry,
        )
        self._pushes = Counter(
            "chatify_push",
            "Push notifications (PUSH_ENABLED), by outcome: sent, failed (FCM did not take "
            "it: dead_token, refused, retries_exhausted), dropped (queue_full), skipped "
            "(connected, reconnected, opted_out, no_devices, claimed)",
            ["outcome", "reason"],
            registry=registry,
        )
        self._pushes_of = _Children(self._pushes)
        # Registered on the first report only: absent while no Redis is configured.
        self._redis_up = Gauge(
            "chatify_redis_up", "1 when Redis answers, 0 when it does not", registry=None
        )
        self._redis_registered = False

    def watch(
        self,
        *,
        sessions_cached: Callable[[], float],
        turns_in_flight: Callable[[], float],
        turns_queued: Callable[[], float],
    ) -> None:
        """Read these gauges from the live objects at each scrape."""
        self._sessions_cached.set_function(sessions_cached)
        self._turns_in_flight.set_function(turns_in_flight)
        self._turns_queued.set_function(turns_queued)

    def watch_redis(self, healthy: Callable[[], bool]) -> None:
        """Read ``chatify_redis_up`` from the Redis link at each scrape (with ``REDIS_URL``)."""
        self.set_redis_up(healthy())
        self._redis_up.set_function(lambda: 1.0 if healthy() else 0.0)

    def set_redis_up(self, up: bool) -> None:
        """Report whether Redis answers; ``chatify_redis_up`` appears from the first report."""
        if not self._redis_registered:
            self.registry.register(self._redis_up)
            self._redis_registered = True
        self._redis_up.set(1 if up else 0)

    def request(self, *, method: str, route: str, status: int, seconds: float | None) -> None:
        """One HTTP request or WebSocket; ``seconds`` until its headers (None: not timed)."""
        method = method if method in HTTP_METHODS else "other"
        self._requests_of(method, route, str(status)).inc()
        if seconds is not None:
            self._request_seconds_of(method, route).observe(seconds)

    def error(self, code: str) -> None:
        """An HTTP error response."""
        self._errors_of(code).inc()

    def turn_stored(
        self,
        *,
        template: str,
        provider: str,
        model: str,
        usage: Usage | None,
        seconds: float,
        first_delta_seconds: float | None,
    ) -> None:
        """See ``TurnObserver``."""
        template, model = self._template(template), self._model(model)
        self._turn_seconds_of(template).observe(seconds)
        if first_delta_seconds is not None:
            self._first_delta_seconds_of(template).observe(first_delta_seconds)
        if usage is not None:
            self._tokens_of("in", template, provider, model).inc(usage.prompt_tokens)
            self._tokens_of("out", template, provider, model).inc(usage.completion_tokens)
            if usage.cost_micros:
                self._cost_of(template, provider, model).inc(usage.cost_micros)

    def turn_failed(self, code: str) -> None:
        """See ``TurnObserver``."""
        self._turn_failures_of(code).inc()

    def llm_call(self, *, provider: str, model: str, seconds: float, outcome: str) -> None:
        """See ``LLMObserver``."""
        model = self._model(model)
        self._llm_seconds_of(provider, model).observe(seconds)
        self._llm_calls_of(provider, model, outcome).inc()

    def store_call(self, operation: str, seconds: float, *, failed: bool) -> None:
        """See ``StoreObserver``."""
        self._store_seconds_of(operation).observe(seconds)
        if failed:
            self._store_failures_of(operation).inc()

    def push_sent(self) -> None:
        """See ``services.push.notifier.PushObserver``."""
        self._pushes_of("sent", "").inc()

    def push_failed(self, reason: str) -> None:
        """See ``PushObserver``."""
        self._pushes_of("failed", reason).inc()

    def push_dropped(self, reason: str) -> None:
        """See ``PushObserver``."""
        self._pushes_of("dropped", reason).inc()

    def push_skipped(self, reason: str) -> None:
        """See ``PushObserver``."""
        self._pushes_of("skipped", reason).inc()

    def pushes(self, outcome: str, reason: str = "") -> float:
        """How many pushes ended so (tests and the bench)."""
        labels = {"outcome": outcome, "reason": reason}
        return self.registry.get_sample_value("chatify_push_total", labels) or 0.0

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition the ``Accept`` header asks for (Prometheus text, or OpenMetrics), and
        its content type."""
        try:
            encode, content_type = choose_encoder(accept or "")
        except (TypeError, ValueError):
            # prometheus-client raises TypeError on a non-numeric version in Accept.
            encode, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
        return encode(self.registry), content_type
