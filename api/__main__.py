"""``python -m api``: serve on HOST:PORT with the settings from the environment."""

from __future__ import annotations

import gc
import logging.config
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.logs import logging_config
from services.core.settings import Settings

WORKER_HEALTHCHECK_SECONDS = 30


def main() -> None:
    """Configure logging and run uvicorn."""
    settings = Settings()
    log_config = logging_config(settings)
    logging.config.dictConfig(log_config)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # uvicorn applies it again in each worker process (WEB_CONCURRENCY > 1), which
        # starts with logging unconfigured.
        "log_config": log_config,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.llm_timeout_seconds) + 5,
        # Longer than the idle timeout of clients' pools and load balancers (60 s is common),
        # so the server never closes a connection that a client is about to reuse.
        "timeout_keep_alive": int(settings.http_keepalive_seconds),
        # Protocol pings keep idle WebSockets open through proxies that cut silent ones.
        "ws_ping_interval": settings.ws_ping_seconds,
        "ws_ping_timeout": settings.ws_ping_seconds,
        # uvicorn closes a socket with 1009 on a larger frame before buffering it (its default
        # is 16 MiB); the app checks the same limit for servers that do not.
        "ws_max_size": settings.ws_frame_limit,
    }
    if settings.web_concurrency > 1:
        # Each worker process builds its own app (and reads the same settings) from the
        # factory; both stores are safe for several processes on one machine. A worker
        # answers the parent's health check only once its imports are done (3.5 s of CPU,
        # measured): uvicorn's 5 s default killed and restarted workers in a loop on a busy
        # 2-core machine.
        uvicorn.run(
            "api.__main__:worker_app",
            factory=True,
            workers=settings.web_concurrency,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
            **options,
        )
    else:
        uvicorn.run(frozen(create_app(settings)), **options)


def worker_app() -> FastAPI:
    """The app of one worker process (``WEB_CONCURRENCY`` > 1), built as ``main`` builds it."""
    return frozen(create_app())


def frozen(app: FastAPI) -> FastAPI:
    """``app``, with everything the imports and the app made so far moved out of the garbage
    collector's sight (``gc.freeze``): they live as long as the process, and a full collection
    walked all of them, stalling the event loop about 130 ms each time (seen in the bench as a
    turn of 130 ms, every few hundred turns, and 0.3 ms of CPU per turn on average)."""
    gc.collect()
    gc.freeze()
    return app


if __name__ == "__main__":
    main()
