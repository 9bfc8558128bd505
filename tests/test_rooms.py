"""The rooms of ``services/`` import one way (``python -m tools.rooms``)."""

from __future__ import annotations

from pathlib import Path

from tools.rooms import ROOMS, check


def test_imports_between_rooms_run_one_way() -> None:
    _, broken = check()
    assert broken == []


def test_an_import_up_a_floor_is_found(tmp_path: Path) -> None:
    """The check can fail: a core module that imports the conversation is reported."""
    (tmp_path / "services" / "core").mkdir(parents=True)
    (tmp_path / "services" / "conversation").mkdir()
    (tmp_path / "services" / "core" / "records.py").write_text(
        "from services.conversation.turns import TurnPipeline\n"
    )
    (tmp_path / "services" / "conversation" / "turns.py").write_text(
        "from services.core.records import Clock\nimport api.deps\n"
    )
    (tmp_path / "services" / "odd.py").write_text("")
    uses, broken = check(tmp_path)
    assert uses == {"core": {"conversation"}, "conversation": {"core"}}
    assert broken == [
        "services/conversation/turns.py:2: imports api.deps (services never import api)",
        "services/core/records.py:1: core imports services.conversation.turns.TurnPipeline "
        "(conversation is above it)",
        "services/odd.py: not in a room of ROOMS",
    ]
    assert ROOMS[0] == "core"
