"""A Cloud Storage test server: the JSON API subset google-cloud-storage (3.x) uses for
Chatify's image attachments, as ``rtdb_server`` stands in for the Realtime Database.

Speaks: multipart and simple media uploads (``POST /upload/storage/v1/b/{bucket}/o``), object
metadata (``GET /storage/v1/b/{bucket}/o/{name}``), media downloads (``alt=media``, also under
``/download/…``, with an ``x-goog-hash`` MD5), object listing with ``prefix``
(``GET /storage/v1/b/{bucket}/o``) and deletes. Buckets exist on first write. No auth; no
generations, ACLs or resumable uploads. Tests read the objects directly (``names``).

Point the client at it with ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` (scheme included),
or ``client_options={"api_endpoint": url}`` with anonymous credentials.

Standalone: ``python -m testkit.storage_server --port 9199``.
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import hashlib
import json
import logging
import signal
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

logger = logging.getLogger(__name__)


@dataclass
class StoredObject:
    """One object: its bytes and the metadata the client set."""

    data: bytes
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as received (method and path), for tests that count requests."""

    method: str
    path: str


class StorageServer:
    """The server on 127.0.0.1 and its objects, by bucket then name."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        self.requests: list[RecordedRequest] = []
        self._server = _HTTPServer((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port``: STORAGE_EMULATOR_HOST's value."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def names(self, bucket: str) -> list[str]:
        """The bucket's object names, sorted."""
        with self._lock:
            return sorted(self.buckets.get(bucket, {}))

    def read(self, bucket: str, name: str) -> StoredObject | None:
        """An object, or None."""
        with self._lock:
            return self.buckets.get(bucket, {}).get(name)

    def clear(self) -> None:
        """Forget every object and request."""
        with self._lock:
            self.buckets.clear()
            self.requests.clear()

    def start(self) -> StorageServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> StorageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Operations, called by the handler under no lock of its own.
    def put(self, bucket: str, name: str, obj: StoredObject) -> dict[str, Any]:
        with self._lock:
            self.buckets.setdefault(bucket, {})[name] = obj
        return resource(bucket, name, obj, self.url)

    def get(self, bucket: str, name: str) -> StoredObject | None:
        return self.read(bucket, name)

    def delete(self, bucket: str, name: str) -> bool:
        with self._lock:
            return self.buckets.get(bucket, {}).pop(name, None) is not None

    def list(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        with self._lock:
            found = sorted(self.buckets.get(bucket, {}).items())
        return [resource(bucket, n, o, self.url) for n, o in found if n.startswith(prefix)]


def resource(bucket: str, name: str, obj: StoredObject, base: str = "") -> dict[str, Any]:
    """An object resource as the JSON API describes it."""
    md5 = base64.b64encode(hashlib.md5(obj.data).digest()).decode()  # noqa: S324 (protocol)
    return {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/1",
        "name": name,
        "bucket": bucket,
        "generation": "1",
        "metageneration": "1",
        "contentType": obj.content_type,
        "size": str(len(obj.data)),
        "md5Hash": md5,
        "metadata": obj.metadata,
        "mediaLink": f"{base}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media",
    }


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms per response (NOTES.md)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        logger.debug(format, *args)

    @property
    def storage(self) -> StorageServer:
        return self.server.storage

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        with self.storage._lock:
            self.storage.requests.append(RecordedRequest(self.command, parts.path))
        return [unquote(p) for p in parts.path.split("/") if p], parse_qs(parts.query)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode())

    def _not_found(self) -> None:
        self._json(404, {"error": {"code": 404, "message": "No such object"}})

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        segments, query = self._route()
        body = self._body()
        # /upload/storage/v1/b/{bucket}/o?uploadType=multipart|media&name=…
        if segments[:4] != ["upload", "storage", "v1", "b"] or len(segments) != 6:
            self._json(400, {"error": {"code": 400, "message": "Unsupported request"}})
            return
        bucket = segments[4]
        kind = (query.get("uploadType") or ["media"])[0]
        if kind == "multipart":
            meta, data, content_type = _multipart(self.headers.get("Content-Type", ""), body)
            name = meta.get("name") or (query.get("name") or [""])[0]
            obj = StoredObject(data, meta.get("contentType") or content_type,
                               dict(meta.get("metadata") or {}))  # fmt: skip
        elif kind == "media":
            name = (query.get("name") or [""])[0]
            content_type = self.headers.get("Content-Type", "application/octet-stream")
            obj = StoredObject(body, content_type)
        else:
            self._json(400, {"error": {"code": 400, "message": f"uploadType {kind}"}})
            return
        if not name:
            self._json(400, {"error": {"code": 400, "message": "Object name required"}})
            return
        self._json(200, self.storage.put(bucket, name, obj))

    def do_GET(self) -> None:  # noqa: N802
        segments, query = self._route()
        download = segments[:1] == ["download"]
        if download:
            segments = segments[1:]
        if (
            segments[:3] != ["storage", "v1", "b"]
            or len(segments) < 4
            or segments[4:5]
            not in (
                [],
                ["o"],
            )
        ):
            self._not_found()
            return
        bucket = segments[3]
        if len(segments) == 4:  # the bucket itself (the client reads it before some calls)
            self._json(200, {"kind": "storage#bucket", "id": bucket, "name": bucket})
            return
        if len(segments) == 5:  # a listing
            prefix = (query.get("prefix") or [""])[0]
            self._json(200, {"kind": "storage#objects", "items": self.storage.list(bucket, prefix)})
            return
        name = "/".join(segments[5:])
        obj = self.storage.get(bucket, name)
        if obj is None:
            self._not_found()
            return
        if download or (query.get("alt") or [""])[0] == "media":
            md5 = base64.b64encode(hashlib.md5(obj.data).digest()).decode()  # noqa: S324
            headers = {"Content-Type": obj.content_type, "x-goog-hash": f"md5={md5}",
                       "x-goog-generation": "1"}  # fmt: skip
            self._send(200, obj.data, headers)
            return
        self._json(200, resource(bucket, name, obj, self.storage.url))

    def do_DELETE(self) -> None:  # noqa: N802
        segments, _ = self._route()
        if segments[:3] != ["storage", "v1", "b"] or len(segments) < 6 or segments[4] != "o":
            self._not_found()
            return
        if self.storage.delete(segments[3], "/".join(segments[5:])):
            self._send(204, b"", {})
        else:
            self._not_found()


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
    """A multipart/related upload: its JSON metadata part, then its media part."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts = list(message.iter_parts())
    meta_bytes = parts[0].get_payload(decode=True)
    media = parts[1].get_payload(decode=True)
    meta: dict[str, Any] = json.loads(meta_bytes if isinstance(meta_bytes, bytes) else b"{}")
    data = media if isinstance(media, bytes) else b""
    return meta, data, parts[1].get_content_type()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], storage: StorageServer):
        super().__init__(address, handler)
        self.storage = storage


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9199)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    server = StorageServer(port=args.port).start()
    logger.info("Cloud Storage test server on %s", server.url)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    main()
