"""Try an unsaved draft: the reply to a short conversation, streamed like a session's turn.

Nothing is stored and no session is created; the draft is validated by the one schema and
composed exactly as a new session would compose it (rules, placeholders, defaults).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.conversation.turn_events import Turn
from services.core.errors import ChatifyError, InvalidInput
from services.core.records import Sampling, TurnResult
from services.llm.client import ChatMessage, LLMClient
from services.templates.schema import Template, template_problems, with_prefix
from services.templates.service import TemplateService

logger = logging.getLogger(__name__)
PREVIEW_ID = "draft"


@dataclass(frozen=True, slots=True)
class PreviewMessage:
    """One earlier message of the conversation to preview."""

    role: str
    content: str


class Previews:
    """Runs previews as turns that stream but never store."""

    def __init__(self, templates: TemplateService, llm: LLMClient) -> None:
        self._templates = templates
        self._llm = llm
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        draft: Mapping[str, object],
        *,
        history: Sequence[PreviewMessage],
        message: str,
        variables: Mapping[str, str] | None,
        timezone: str | None,
    ) -> Turn:
        """Validate and compose now (422 before any stream), then run the call in a task."""
        problems = template_problems(draft)
        if problems:
            raise InvalidInput(
                "The draft is not valid", problems=with_prefix(problems, "body", "template")
            )
        template = Template.model_validate(draft)
        snapshot = self._templates.snapshot(
            PREVIEW_ID, template, variables=variables, timezone=timezone
        )
        kept = list(history)[-snapshot.context_messages :] if snapshot.context_messages else []
        messages: list[ChatMessage] = [{"role": "system", "content": snapshot.system_prompt}]
        messages += [{"role": m.role, "content": m.content} for m in kept]
        messages.append({"role": "user", "content": message})
        turn = Turn(PREVIEW_ID, message, None)
        task = asyncio.create_task(self._run(turn, messages, snapshot.sampling))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return turn

    async def _run(self, turn: Turn, messages: list[ChatMessage], sampling: Sampling) -> None:
        turn.emit("start", turn=1)
        try:
            completion = await self._llm.stream(
                messages, sampling, on_delta=lambda piece: turn.emit("delta", content=piece)
            )
        except ChatifyError as error:
            turn.emit("error", error=error)
            return
        except Exception:
            # A bug: the preview's stream still gets an end (and gives back its slot).
            turn.emit("error", error=ChatifyError("The preview failed unexpectedly"))
            raise
        result = TurnResult(
            session_id="",
            reply=completion.content,
            message_count=0,
            replayed=False,
            usage=completion.usage,
            model=completion.model,
        )
        turn.emit("done", result=result)

    async def drain(self) -> None:
        """Wait for previews in flight (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
