"""Background housekeeping on APScheduler: idle eviction, expiry, template refresh, stats."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from services.conversation.sessions import SessionService
from services.core.settings import Settings
from services.templates.service import TemplateService
from services.templates.stats import TemplateStats

logger = logging.getLogger(__name__)


def build_scheduler(
    settings: Settings,
    *,
    sessions: SessionService,
    templates: TemplateService,
    stats: TemplateStats,
) -> AsyncIOScheduler:
    """The jobs, not started yet (the app lifespan starts and stops it)."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    jobs: list[tuple[str, float, Callable[[], Awaitable[Any]]]] = [
        (
            "evict_idle_sessions",
            settings.eviction_interval_seconds,
            _as_async(sessions.evict_idle_sessions),
        ),
        ("refresh_templates", settings.template_refresh_seconds, templates.refresh),
        ("flush_template_stats", settings.stats_flush_seconds, stats.flush),
    ]
    if settings.session_expire_after_seconds:
        interval = max(settings.eviction_interval_seconds, 60.0)
        jobs.append(("expire_idle_sessions", interval, sessions.expire_idle_sessions))
    for name, seconds, job in jobs:
        scheduler.add_job(
            _logged(name, job),
            "interval",
            seconds=seconds,
            id=name,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
    return scheduler


def _as_async(job: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return job()

    return run


def _logged(name: str, job: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    """A failing job logs and runs again next time; it never stops the scheduler."""

    async def run() -> None:
        try:
            await job()
        except Exception:
            logger.exception("scheduled job %s failed", name)

    return run
