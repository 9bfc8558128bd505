"""``HTTPPool``: the pooled HTTP/1.1 POST under our chat-completions client, on asyncio's
transports and ``httptools`` (the parser uvicorn serves with).

Measured against the mock LLM (``python -m bench.llm_client``), a completion costs about a
third of aiohttp's CPU, and a streamed body is handed to its reader from the protocol's own
``data_received``, with no task switch per chunk (docs/performance.md). It does only what a
chat-completions call needs: one POST with a JSON body to one URL, keep-alive connections up to
a limit, TLS, a connect timeout and, for streams, an idle timeout between two chunks. Behind a
proxy (``HTTPS_PROXY`` / ``HTTP_PROXY``) ``AiohttpPool`` does the same over aiohttp, which
speaks to proxies.

Failures are this module's three exceptions; ``OpenAIChat`` maps them to the API's errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import aiohttp
import httptools

BodySink = Callable[[bytes], None]  # takes a 200 reply's body as it arrives
DNS_TTL_SECONDS = 10.0  # a host name's addresses are looked up again after this (as aiohttp)
Address = tuple[str, int]


class ConnectTimeout(Exception):
    """No connection to the server within the connect timeout."""


class IdleTimeout(Exception):
    """A streamed reply fell silent for longer than its idle timeout."""


class ConnectionFailed(Exception):
    """The connection could not be made, or broke, or the reply was not HTTP."""


@dataclass(frozen=True, slots=True)
class HTTPReply:
    """A reply: its status, its headers (lower-case names), and its body (empty when a sink
    took it)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class HTTPPool:
    """POSTs to one URL over pooled keep-alive connections (at most ``connections`` at once;
    more calls wait for one)."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        connections: int,
        connect_timeout: float,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        host = parts.netloc.rpartition("@")[2]
        fields = {"Host": host, "User-Agent": "chatify", "Accept": "*/*", **headers}
        lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
        for name, value in fields.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[_Connection] = []
        # A burst of new connections looks the name up once (in the loop's thread pool).
        self._addresses: list[Address] = _literal(self._host, self._port)
        self._fixed = bool(self._addresses)  # an IP address is never looked up
        self._fresh_until = float("-inf")
        self._lookup: asyncio.Future[list[Address]] | None = None

    async def post(
        self, body: bytes, *, sink: BodySink | None = None, idle: float | None = None
    ) -> HTTPReply:
        """Send ``body``; a 200 reply's body goes to ``sink`` as it arrives when one is given.
        ``idle``: the longest silence allowed before the reply and between two of its chunks."""
        request = b"%b%d\r\n\r\n%b" % (self._head, len(body), body)
        async with self._slots:
            connection = await self._connection()
            reused = False
            try:
                reply = await connection.exchange(request, sink, idle)
                reused = connection.reusable()
            finally:
                if reused:
                    self._idle.append(connection)
                else:
                    connection.close()
        return reply

    async def close(self) -> None:
        """Close the idle connections (those in use close when their call ends)."""
        while self._idle:
            self._idle.pop().close()

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._connect()
        except TimeoutError as exc:
            raise ConnectTimeout(f"no connection within {self._connect_timeout:g} s") from exc

    async def _connect(self) -> _Connection:
        """A new connection to the first of the host's addresses that takes one."""
        loop, failure = asyncio.get_running_loop(), None
        for host, port in await self._resolved():
            try:
                _, connection = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls else None,
                )
                return connection
            except OSError as exc:
                failure = exc
        raise ConnectionFailed(f"cannot connect: {type(failure).__name__}") from failure

    async def _resolved(self) -> list[Address]:
        """The host's addresses: a literal's own, else looked up at most once per
        ``DNS_TTL_SECONDS`` however many connections wait for them."""
        if self._fixed or asyncio.get_running_loop().time() < self._fresh_until:
            return self._addresses
        if self._lookup is None:
            self._lookup = asyncio.ensure_future(self._look_up())
            self._lookup.add_done_callback(self._looked_up)
        return await asyncio.shield(self._lookup)

    async def _look_up(self) -> list[Address]:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectionFailed(f"cannot resolve the host: {type(exc).__name__}") from exc
        addresses = [(str(info[4][0]), int(info[4][1])) for info in found]
        self._addresses, self._fresh_until = addresses, loop.time() + DNS_TTL_SECONDS
        return addresses

    def _looked_up(self, lookup: asyncio.Future[list[Address]]) -> None:
        self._lookup = None
        if not lookup.cancelled():
            lookup.exception()  # retrieved: each waiter has it raised already


def _literal(host: str, port: int) -> list[Address]:
    """An IP address's own address; nothing for a name (it is looked up)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return []
    return [(host, port)]


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time, its reply parsed as it arrives."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[HTTPReply] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._sink: BodySink | None = None
        self._sized = False  # the reply says where its body ends (length or chunks)
        self._keep_alive = False
        self._idle = 0.0
        self._heard = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._spoiled = False

    async def exchange(
        self, request: bytes, sink: BodySink | None, idle: float | None
    ) -> HTTPReply:
        """Send one request and wait for its whole reply."""
        assert self._transport is not None and self._waiter is None
        waiter: asyncio.Future[HTTPReply] = self._loop.create_future()
        self._waiter = waiter
        self._status, self._headers, self._body, self._sink = 0, {}, [], sink
        self._sized = self._keep_alive = False
        if idle is not None:
            self._idle, self._heard = idle, self._loop.time()
            self._timer = self._loop.call_at(self._heard + idle, self._check_idle)
        self._transport.write(request)
        try:
            return await waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def reusable(self) -> bool:
        """Whether the connection may carry another exchange."""
        transport = self._transport
        return (
            self._keep_alive
            and not self._spoiled
            and transport is not None
            and not transport.is_closing()
        )

    def close(self) -> None:
        """Close it now (a reply cut short leaves nothing reusable)."""
        self._keep_alive = False
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server speaking out of turn
            self.close()
            return
        self._heard = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # a sink refused the body
            self._fail(exc.__context__ or exc)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionFailed(f"the reply is not HTTP/1.1: {type(exc).__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            if self._status and not self._sized and self._keep_alive is False and exc is None:
                self.on_message_complete()  # a body that ends where the connection does
            else:
                self._fail(ConnectionFailed("the connection closed before the reply ended"))

    # httptools' callbacks
    def on_message_begin(self) -> None:
        if self._status:  # a second reply to one request: the connection is out of step
            self._spoiled = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        headers = self._headers
        self._sized = "content-length" in headers or "transfer-encoding" in headers
        if self._status != 200:
            self._sink = None  # an error's body is read whole

    def on_body(self, body: bytes) -> None:
        if self._sink is None:
            self._body.append(body)
        else:
            self._sink(body)  # its exception ends the exchange (data_received)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive() and self._sized
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(HTTPReply(self._status, self._headers, b"".join(self._body)))

    def _check_idle(self) -> None:
        due = self._heard + self._idle
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_idle)
            return
        self._timer = None
        self._fail(IdleTimeout(f"nothing for {self._idle:g} s"))

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class AiohttpPool:
    """``HTTPPool``'s calls over aiohttp, for a server reached through a proxy."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        connections: int,
        connect_timeout: float,
        proxy: str | None,
    ) -> None:
        self._url, self._headers, self._proxy = url, dict(headers), proxy
        self._connections, self._connect_timeout = connections, connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self, body: bytes, *, sink: BodySink | None = None, idle: float | None = None
    ) -> HTTPReply:
        """As ``HTTPPool.post``."""
        timeout = aiohttp.ClientTimeout(sock_connect=self._connect_timeout, sock_read=idle)
        try:
            async with self._http().post(
                self._url, data=body, headers=self._headers, timeout=timeout
            ) as response:
                headers = {name.lower(): value for name, value in response.headers.items()}
                if response.status != 200 or sink is None:
                    return HTTPReply(response.status, headers, await response.read())
                async for piece in response.content.iter_any():
                    sink(piece)
                return HTTPReply(response.status, headers, b"")
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectTimeout(str(exc)) from exc
        except aiohttp.SocketTimeoutError as exc:
            raise IdleTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise ConnectionFailed(type(exc).__name__) from exc

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, limit_per_host=0),
                proxy=self._proxy,
            )
        return self._session
