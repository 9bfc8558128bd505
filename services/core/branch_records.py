"""Records of regenerated and edited turns: the branch a regenerate or an edit writes, and
the variants it leaves behind (``services.conversation.branches``, ``Store.write_branch``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.records import NewTurn, StoredMessage


@dataclass(frozen=True, slots=True)
class NewBranch:
    """A regenerated or edited turn, ready to store: its messages replace the active ones from
    ``seq`` on, which are kept as a variant of ``seq``. ``seq`` is the reply's (a regenerate:
    the user message stays, the new reply carries ``turn.client_message_id``, the regenerate
    request's id) or the user message's (an edit: both messages are new)."""

    seq: int
    turn: NewTurn
    next_seq: int  # where the caller saw the active branch end; the write checks it
    reset_memory: bool = False  # the memory covered what is replaced: it is cleared

    @property
    def regenerates(self) -> bool:
        """A regenerate (the reply's seq, odd): the user message stays."""
        return self.seq % 2 == 1

    def messages(self, answered: StoredMessage | None) -> tuple[StoredMessage, StoredMessage]:
        """The branch's user message and reply: a regenerate's user message is the stored
        one it answers again (``answered``, as read by the write), an edit's is new; the
        reply of a regenerate carries ``turn.client_message_id``."""
        turn = self.turn
        if self.regenerates:
            assert answered is not None
            user, reply_id = answered, turn.client_message_id
        else:
            user = StoredMessage(
                self.seq, "user", turn.user_text, turn.user_at, turn.client_message_id
            )
            reply_id = None
        reply = StoredMessage(
            user.seq + 1, "assistant", turn.reply, turn.reply_at, reply_id, turn.usage,
            turn.provider, turn.model, turn.tools, turn.finish_reason,
        )  # fmt: skip
        return user, reply


@dataclass(frozen=True, slots=True)
class Variant:
    """Messages that left the active branch at ``seq`` (an earlier reply, or the tail an edit
    replaced), numbered from 1 per seq; ``select_variant`` swaps them back."""

    seq: int
    number: int
    messages: tuple[StoredMessage, ...]
    created_at: str
