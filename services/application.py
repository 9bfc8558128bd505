"""The application's composition: settings → store → services → background jobs, in one place.

``start`` builds every service on an ``AsyncExitStack`` whose callbacks stop them in reverse
order (the turns drain before what they use closes); ``Services`` is what it built, for the
routes (``api``), the tests and the bench. The one module of ``services`` that may import every
room; nothing in ``services`` imports it.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from services.attachments.service import Attachments
from services.conversation.admission import Admission
from services.conversation.bus import LocalBus, SessionBus
from services.conversation.gate import TurnGate
from services.conversation.memory import Memory
from services.conversation.preview import Previews
from services.conversation.registry import ActiveSessions
from services.conversation.scheduler import build_scheduler
from services.conversation.sessions import SessionService
from services.conversation.titles import Titles
from services.conversation.turns import TurnPipeline
from services.conversation.user_data import UserData
from services.core.background import Tasks
from services.core.metrics import Metrics
from services.core.records import Clock
from services.core.redis_link import RedisLink
from services.core.settings import Settings
from services.identity import Authenticator, build_authenticator
from services.limits.cost import PriceTable
from services.limits.quotas import Quotas
from services.limits.usage import BackgroundCalls, UsageService
from services.llm.client import LLMClient
from services.llm.providers import build_llm
from services.llm.tokens import TokenCounter
from services.llm.tools.images import ImageTool
from services.llm.tools.loop import ToolLimits, ToolLoop
from services.llm.tools.mcp import McpServers
from services.push.claims import LocalClaims, PushClaims
from services.push.devices import PushDevices
from services.push.fcm import FcmClient
from services.push.notifier import PushNotifier
from services.redis.bus import RedisBus
from services.redis.push import RedisClaims
from services.redis.turns import RedisTurns
from services.store import build_attachment_store, build_store
from services.store.base import Store
from services.store.metered import metered
from services.templates.authoring import Authoring
from services.templates.service import TemplateService
from services.templates.stats import TemplateStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the lifespan built, for the routes."""

    settings: Settings
    store: Store
    templates: TemplateService
    llm: LLMClient
    sessions: SessionService
    turns: TurnPipeline
    admission: Admission  # the one way in for a turn, on every transport
    auth: Authenticator
    quotas: Quotas
    authoring: Authoring
    stats: TemplateStats
    previews: Previews
    titles: Titles
    memory: Memory
    user_data: UserData
    bus: SessionBus
    usage: UsageService
    calls: BackgroundCalls
    metrics: Metrics
    attachments: Attachments
    devices: PushDevices  # push devices and opt-outs, kept whether or not pushes are on
    redis: RedisLink | None = None  # REDIS_URL set: shared limits, resume, live events
    relay: RedisTurns | None = None
    push: PushNotifier | None = None  # PUSH_ENABLED: FCM notifications of unheard replies


LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


async def _start_tools(settings: Settings, llm: LLMClient, stack: AsyncExitStack) -> ToolLoop:
    """The MCP servers, connected in the background (a slow one never delays the start), and
    the built-in image tool."""
    servers = McpServers(settings.mcp_servers)
    stack.push_async_callback(servers.close)  # after the turns drained
    if settings.mcp_servers:
        warming = Tasks()
        warming.start(servers.warm())
        stack.push_async_callback(warming.close)
    limits = ToolLimits(
        max_rounds=settings.tool_max_rounds,
        call_timeout=settings.tool_timeout_seconds,
        turn_deadline=settings.tool_turn_deadline_seconds,
        result_max_chars=settings.tool_result_max_chars,
    )
    image_tool = ImageTool(
        llm,
        model=settings.image_model,
        size=settings.image_size,
        max_bytes=settings.image_max_bytes,
    )
    return ToolLoop(llm, servers, limits, image_tool=image_tool)


async def start(settings: Settings, clock: Clock, stack: AsyncExitStack) -> Services:
    """Every service, started; ``stack`` stops them."""
    if settings.auth_mode == "none" and settings.host not in LOOPBACK_HOSTS:
        logger.warning(
            "AUTH_MODE=none while serving on %s: anyone who reaches this port can read and "
            "write every session; set AUTH_MODE=api_key or firebase before exposing it",
            settings.host,
        )
    auth = build_authenticator(settings)
    stack.push_async_callback(auth.close)
    meters = Metrics()
    store = metered(build_store(settings), meters)
    await store.open()
    stack.push_async_callback(store.close)

    attachment_store = build_attachment_store(settings)
    await attachment_store.open()
    stack.push_async_callback(attachment_store.close)
    attachments = Attachments(attachment_store, settings)
    stack.push_async_callback(attachments.close)

    templates = TemplateService(store, settings, clock=clock)
    await templates.seed_if_empty()
    await templates.refresh()
    store.watch_documents(templates.refresh)  # PostgreSQL: edits served as soon as committed

    llm = build_llm(settings, observer=meters)
    stack.push_async_callback(llm.close)
    tools = await _start_tools(settings, llm, stack)
    stats = TemplateStats(store, clock=clock)
    stack.push_async_callback(stats.flush)  # runs after the turns drained (callbacks unwind)
    previews = Previews(templates, llm)
    stack.push_async_callback(previews.drain)

    redis, bus, relay = await _start_redis(settings, stack)
    quotas = Quotas(settings, store=store, now=clock, redis=redis)
    stack.push_async_callback(quotas.close)
    prices = PriceTable.of(settings)
    calls = BackgroundCalls(store=store, clock=clock, meter=quotas, prices=prices)
    stack.push_async_callback(calls.close)  # after titles and memories stopped
    titles = Titles(store=store, llm=llm, model=settings.title_model, bus=bus, calls=calls)
    stack.push_async_callback(titles.close)  # after the turns drained: none starts later
    cache = ActiveSessions(
        store,
        maxsize=settings.session_cache_max,
        idle_seconds=settings.session_idle_timeout_seconds,
        clock=clock,
    )
    tokens = TokenCounter()
    # Building a tokenizer holds the GIL for up to 0.3 s: done here, before any traffic, for
    # the personalities that count tokens (one added later loads on its first turn).
    for model in sorted(templates.budget_models()):
        await tokens.prepare(model)
    memory = Memory(
        store=store,
        llm=llm,
        counter=tokens,
        clock=clock,
        model=settings.summary_model,
        max_tokens=settings.memory_max_tokens,
        calls=calls,
    )
    stack.push_async_callback(memory.close)  # after the turns drained: none starts later
    push = _start_push(settings, store, templates, redis, bus, meters, stack)
    gate = TurnGate(settings.session_queue_limit)
    turns = TurnPipeline(
        store=store,
        sessions=cache,
        gate=gate,
        llm=llm,
        clock=clock,
        stats=stats,
        tokens=tokens,
        titles=titles if settings.session_titles else None,
        memory=memory if settings.session_memory else None,
        bus=bus,
        log_content=settings.log_message_content,
        usage=quotas,
        tools=tools,
        observer=meters,
        relay=relay,
        prices=prices,
        stops=bus if isinstance(bus, RedisBus) else None,
        rewrites=bus if isinstance(bus, RedisBus) else None,
        attachments=attachments,
        watch=push.watch if push is not None else None,
    )
    if isinstance(bus, RedisBus):
        bus.on_stop(turns.stop_here)
        bus.on_forget(cache.forget)
    stack.push_async_callback(turns.drain)
    meters.watch(
        sessions_cached=cache.__len__,
        turns_in_flight=lambda: turns.in_flight_count,
        turns_queued=lambda: gate.queued_count,
    )
    if redis is not None:
        link = redis
        meters.watch_redis(lambda: link.healthy)
    session_service = SessionService(
        store=store,
        templates=templates,
        sessions=cache,
        settings=settings,
        clock=clock,
        stats=stats,
        bus=bus,
    )
    scheduler = build_scheduler(
        settings, sessions=session_service, templates=templates, stats=stats
    )
    scheduler.start()
    stack.callback(scheduler.shutdown, wait=False)
    return Services(
        settings=settings,
        store=store,
        templates=templates,
        llm=llm,
        sessions=session_service,
        turns=turns,
        admission=Admission(
            turns=turns,
            sessions=session_service,
            quotas=quotas,
            attachments=attachments,
            templates=templates,
        ),
        auth=auth,
        quotas=quotas,
        authoring=Authoring(store, templates, clock=clock),
        stats=stats,
        previews=previews,
        titles=titles,
        memory=memory,
        user_data=UserData(
            store=store, sessions=cache, turns=turns, clock=clock, bus=bus, images=attachments
        ),
        bus=bus,
        calls=calls,
        usage=UsageService(
            store=store,
            clock=clock,
            quota=settings.user_daily_token_quota or None,
            cost_limit=settings.user_daily_cost_limit_micros or None,
        ),
        metrics=meters,
        attachments=attachments,
        devices=PushDevices(store=store, clock=clock, limit=settings.push_max_devices_per_user),
        redis=redis,
        relay=relay,
        push=push,
    )


def _start_push(
    settings: Settings,
    store: Store,
    templates: TemplateService,
    redis: RedisLink | None,
    bus: SessionBus,
    meters: Metrics,
    stack: AsyncExitStack,
) -> PushNotifier | None:
    """With PUSH_ENABLED: the notifier, told of every socket that joins a session (closed
    after the turns drained, since exit callbacks unwind); without it: nothing at all."""
    if not settings.push_enabled:
        return None
    claims: PushClaims = (
        LocalClaims()
        if redis is None
        else RedisClaims(redis, grace_seconds=settings.push_grace_seconds)
    )
    push = PushNotifier(
        settings=settings,
        store=store,
        templates=templates,
        fcm=FcmClient(settings),
        claims=claims,
        subscribers=bus.subscribers,
        observer=meters,
    )
    bus.on_subscribe(push.attached)
    stack.push_async_callback(push.close)
    logger.info("push notifications on (grace %.1f s)", settings.push_grace_seconds)
    return push


async def _start_redis(
    settings: Settings, stack: AsyncExitStack
) -> tuple[RedisLink | None, SessionBus, RedisTurns | None]:
    """With REDIS_URL: the client, the shared bus and the turn relay (closed after the turns
    drained, since exit callbacks unwind); without it: the in-process bus alone."""
    if not settings.redis_url:
        return None, LocalBus(), None
    link = RedisLink(
        settings.redis_url,
        prefix=settings.redis_key_prefix,
        timeout=settings.redis_timeout_seconds,
    )
    await link.start()
    stack.push_async_callback(link.close)
    bus = RedisBus(link)
    bus.start()
    stack.push_async_callback(bus.close)
    relay = RedisTurns(link)
    stack.push_async_callback(relay.close)
    return link, bus, relay
