"""``python -m api``: serve on HOST:PORT with the settings from the environment."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from api.app import create_app
from api.middleware import redact_credentials_in_logs
from services.settings import Settings


def main() -> None:
    """Configure logging and run uvicorn."""
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact_credentials_in_logs(*logging.getLogger().handlers)
    # APScheduler logs every job run at INFO; our jobs log what they did themselves.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.root.level))
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.llm_timeout_seconds) + 5,
        # Longer than the idle timeout of clients' pools and load balancers (60 s is common),
        # so the server never closes a connection that a client is about to reuse.
        "timeout_keep_alive": int(settings.http_keepalive_seconds),
        # Protocol pings keep idle WebSockets open through proxies that cut silent ones.
        "ws_ping_interval": settings.ws_ping_seconds,
        "ws_ping_timeout": settings.ws_ping_seconds,
    }
    if settings.web_concurrency > 1:
        # Each worker process builds its own app (and reads the same settings) from the
        # factory; both stores are safe for several processes on one machine.
        uvicorn.run("api.app:create_app", factory=True, workers=settings.web_concurrency, **options)
    else:
        uvicorn.run(create_app(settings), **options)


if __name__ == "__main__":
    main()
