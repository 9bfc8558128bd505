"""What a stored reply counts, wherever it was written (a turn, a regenerate or an edit): the
personality's stats, the user's usage meter and the turn metrics."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.metrics import TurnObserver
from services.core.records import NewTurn, SessionRecord, StoredTurn
from services.limits.usage import UsageMeter
from services.llm.client import Completion
from services.templates.stats import TemplateStats


@dataclass(frozen=True, slots=True)
class StoredCounts:
    """The counters a newly stored reply moves (none for a replay: it was counted once)."""

    stats: TemplateStats
    usage: UsageMeter | None
    observer: TurnObserver | None

    def count(
        self,
        record: SessionRecord,
        stored: StoredTurn,
        new: NewTurn,
        completion: Completion,
        *,
        seconds: float,
        first_delta_seconds: float | None = None,
    ) -> None:
        """Count a reply this process stored: its tokens, cost, route target and time."""
        usage = stored.assistant.usage
        self.stats.turn_done(
            record.template_id,
            reply_tokens=usage.completion_tokens if usage else 0,
            served_by=new.served_by,
            cost_micros=new.usage.cost_micros if new.usage else None,
        )
        if self.usage is not None:
            self.usage.spent(record.user_id, usage, at=new.reply_at)
        if self.observer is not None:
            self.observer.turn_stored(
                template=record.template_id,
                provider=completion.provider,
                model=completion.served_by[1],  # as in usage's by_model: the model asked for
                usage=usage,
                seconds=seconds,
                first_delta_seconds=first_delta_seconds,
            )
