"""The docs' ``useChat`` example (docs/streaming.md) as a page a browser runs: the React code
taken from the docs as it stands, bundled with esbuild against the real ``react``,
``@ai-sdk/react`` and ``ai`` packages, and served on 127.0.0.1 as a dev server would serve it.

The page comes from a server of its own on the loopback address, like the service: Chromium
refuses a page from anywhere else (even one the test answers itself) the right to call a
loopback address."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testkit.node_ai import NODE_DIR, node_script

DOC = Path(__file__).resolve().parents[1] / "docs" / "streaming.md"
EXAMPLE_BASE = "https://your-host"  # the docs' placeholder for where Chatify runs
_ENTRY = """\
import { createRoot } from "react-dom/client";
import { ChatPage } from "./example.jsx";

const params = new URLSearchParams(location.search);
createRoot(document.getElementById("root")).render(
  <ChatPage sessionId={params.get("session")} apiKey={params.get("key") || undefined} />,
);
"""
_HTML = (
    '<!doctype html><html><head><meta charset="utf-8"><title>useChat</title></head>'
    '<body><div id="root"></div><script src="/bundle.js"></script></body></html>'
)


def docs_example(doc: Path = DOC, heading: str = "## React: `useChat`") -> str:
    """The section's ``jsx`` block (the components) and its ``js`` block (``loadChat``)."""
    section = doc.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(jsx|js)\n(.*?)```", section, flags=re.DOTALL)
    code: dict[str, str] = dict(reversed(blocks))  # the first block of each kind
    return code["jsx"] + "\n" + code["js"]


def build_page(service_url: str, out: Path, *, example: str | None = None) -> Path:
    """The example (the streaming docs' unless given) bundled for the browser in ``out``,
    talking to ``service_url``."""
    node_script()  # the packages installed
    example = example or docs_example()
    assert EXAMPLE_BASE in example, "the docs' example names where Chatify runs"
    (out / "example.jsx").write_text(example.replace(EXAMPLE_BASE, service_url))
    (out / "main.jsx").write_text(_ENTRY)
    bundle = out / "bundle.js"
    subprocess.run(
        [
            str(NODE_DIR / "node_modules" / ".bin" / "esbuild"),
            str(out / "main.jsx"),
            "--bundle",
            "--jsx=automatic",
            "--define:process.env.NODE_ENV='production'",
            f"--outfile={bundle}",
            "--log-level=warning",
        ],
        env={"NODE_PATH": str(NODE_DIR / "node_modules"), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return bundle


@contextmanager
def page_server(folder: Path) -> Iterator[str]:
    """``folder`` served on 127.0.0.1 (``index.html`` at ``/``); yields the page's origin,
    which the service must allow (``CORS_ORIGINS``)."""
    (folder / "index.html").write_text(_HTML)
    handler = partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        """Requests are not logged (the test's output stays the test's)."""
