"""Debian's Chromium, driven by Playwright, for tests of the pages a browser runs.

Playwright never downloads a browser of its own here: it launches the system Chromium that
``.ci/run`` installs with apt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import ConsoleMessage, Error, Page, async_playwright

from testkit.tools import unavailable

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches for the network beyond the page under test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class BrowserPage:
    """A page, and the script errors and policy violations it reported."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def _on_console(self, message: ConsoleMessage) -> None:
        # A failed fetch logs an error too (a 401 is expected), so only CSP violations count.
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def _on_page_error(self, error: Error) -> None:
        self.errors.append(f"{error.name}: {error.message}")


def require_chromium() -> None:
    """Skip without Chromium, except in CI, where a browser test must never be skipped."""
    if CHROMIUM.exists():
        return
    unavailable(f"{CHROMIUM} is missing; install it with `apt-get install chromium` (.ci/run does)")


@asynccontextmanager
async def chromium_page() -> AsyncIterator[BrowserPage]:
    """A fresh page in a headless Chromium, closed after."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            watched = BrowserPage(await browser.new_page())
            watched.page.on("console", watched._on_console)
            watched.page.on("pageerror", watched._on_page_error)
            yield watched
        finally:
            await browser.close()
