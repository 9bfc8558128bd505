"""A forwarding HTTP proxy on 127.0.0.1 for plain-HTTP targets: it takes each request in the
absolute form a client sends to a proxy, records its request line, and passes it on in origin
form to the host it names; the replies flow back untouched."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse


class RelayProxy:
    """Start it with ``await start()`` (its URL), stop it with ``await close()``."""

    def __init__(self) -> None:
        self.targets: list[str] = []  # "POST http://host:port/path" of each relayed request
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on a free port; the proxy's URL."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening and drop the relayed connections."""
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, client: asyncio.StreamReader, back: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            while head := await client.readuntil(b"\r\n\r\n"):
                line, _, rest = head.partition(b"\r\n")
                method, target, version = line.decode("latin-1").split(" ", 2)
                self.targets.append(f"{method} {target}")
                url = urllib.parse.urlsplit(target)
                if upstream is None:
                    reader, upstream = await asyncio.open_connection(url.hostname, url.port)
                    self._pipe(reader, back)
                length = 0
                for field in rest.split(b"\r\n"):
                    name, _, value = field.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await client.readexactly(length)
                upstream.write(f"{method} {url.path} {version}\r\n".encode() + rest + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            back.close()
            if upstream is not None:
                upstream.close()

    def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def pipe() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
            writer.close()

        task = asyncio.create_task(pipe())
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)
