"""``services.llm.http.HTTPPool`` against servers on 127.0.0.1 that answer in the ways a
provider (or something in front of it) may: from a full accept queue, with a body ended by
closing, out of turn, not in HTTP at all, and over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.core.errors import LLMUnavailable, ProviderUnreachable
from services.core.records import Sampling
from services.core.settings import Settings
from services.llm.http import ConnectionFailed, ConnectTimeout, HTTPPool
from services.llm.openai_chat import OpenAIChat

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
COMPLETION = b'{"choices": [{"message": {"role": "assistant", "content": "hi"}}], "model": "m"}'


@dataclass
class Served:
    """A test server's URL, and how many connections it has had."""

    url: str = ""
    connections: int = 0


Serve = Callable[[Answer], Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts a server answering each connection with ``answer``."""
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Served:
        served = Served()

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served.connections += 1
            await answer(reader, writer)

        server = await asyncio.start_server(counted, "127.0.0.1", 0)
        servers.append(server)
        served.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        return served

    yield start
    for server in servers:
        server.close()


def pool(url: str, *, connect_timeout: float = 5) -> HTTPPool:
    return HTTPPool(url, headers={}, connections=4, connect_timeout=connect_timeout)


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with ``COMPLETION``."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        while True:
            await read_request(reader)
            reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
            writer.write(reply % (len(COMPLETION), COMPLETION))
            await writer.drain()
    writer.close()


async def test_a_host_name_is_looked_up_and_its_connections_kept_alive(serve: Serve) -> None:
    served = await serve(keep_answering)
    client = pool(served.url.replace("127.0.0.1", "localhost"))  # from /etc/hosts
    for _ in range(2):
        replies = await asyncio.gather(*(client.post(b"{}") for _ in range(4)))
        assert [r.body for r in replies] == [COMPLETION] * 4
    assert served.connections == 4  # the second round reused the first round's
    await client.close()


async def test_a_server_that_accepts_no_connection_is_a_connect_timeout() -> None:
    # A listening socket that never accepts: once its queue is full, the kernel answers no
    # more handshakes, as an overloaded or firewalled host does.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = [socket.create_connection(("127.0.0.1", port), timeout=2)]  # fills a queue of 0
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    chat = OpenAIChat(
        kind="openai",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=None,
        timeout=30,
        settings=Settings(_env_file=None, llm_connect_timeout_seconds=0.2),
    )
    try:
        with pytest.raises(ConnectTimeout):
            await pool(url, connect_timeout=0.2).post(b"{}")
        with pytest.raises(LLMUnavailable, match="could not be reached") as refused:
            await chat.complete([{"role": "user", "content": "hi"}], Sampling("m", 0, 5, 0, 0))
        assert not isinstance(refused.value, ProviderUnreachable)
    finally:
        await chat.close()
        for connection in (*queued, listener):
            connection.close()


async def test_a_body_ended_by_closing_the_connection_is_read_whole(serve: Serve) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + COMPLETION)
        await writer.drain()
        writer.close()

    served = await serve(answer)
    client = pool(served.url)
    for _ in range(2):
        reply = await client.post(b"{}")
        assert (reply.status, reply.body) == (200, COMPLETION)
    assert served.connections == 2  # a reply without a length is never followed by another
    await client.close()


async def test_a_reply_out_of_turn_spoils_its_connection_for_the_next_call(serve: Serve) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(COMPLETION), COMPLETION)
        writer.write(reply + b"HTTP/1.1 200 OK\r\n")  # and the start of one nobody asked for
        await writer.drain()
        await reader.read()  # until the client closes it
        writer.close()

    served = await serve(answer)
    client = pool(served.url)
    async with asyncio.timeout(5):  # a reused connection would wait for the rest of it
        assert (await client.post(b"{}")).body == COMPLETION
        assert (await client.post(b"{}")).body == COMPLETION
    assert served.connections == 2
    await client.close()


async def test_a_reply_that_is_not_http_is_a_failed_connection(serve: Serve) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    client = pool((await serve(answer)).url)
    with pytest.raises(ConnectionFailed, match="not HTTP"):
        await client.post(b"{}")
    await client.close()


async def test_a_header_with_a_line_break_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="line break"):
        HTTPPool(
            "http://127.0.0.1:9/v1/chat/completions",
            headers={"X-Title": "a\r\nInjected: 1"},
            connections=1,
            connect_timeout=1,
        )
    with pytest.raises(ValueError, match="not an http"):
        HTTPPool("ftp://example/", headers={}, connections=1, connect_timeout=1)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatify test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_verifies_the_server_and_then_speaks_through_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    server = await asyncio.start_server(keep_answering, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        untrusted = pool(url)  # the system's authorities do not know this certificate
        with pytest.raises(ConnectionFailed, match="SSLCertVerificationError"):
            await untrusted.post(b"{}")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # as an operator's own CA would be
        trusted = pool(url)
        for _ in range(2):
            assert (await trusted.post(b"{}")).body == COMPLETION
        await trusted.close()
    finally:
        server.close()
