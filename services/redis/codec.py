"""Events as JSON and back, field by field: a turn's ``TurnEvent`` and a session's
``SessionEvent`` cross replicas whatever kinds and fields they grow (tool calls, say), as long
as their fields are plain values, dataclasses of plain values, or a ``ChatifyError``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
from collections.abc import Hashable
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from services.core.errors import ChatifyError

T = TypeVar("T")
_ERROR = "$error"


def dumps(event: object) -> str:
    """A dataclass instance as JSON text."""
    return json.dumps(_plain(event), separators=(",", ":"), ensure_ascii=False)


def loads(kind: type[T], text: str | bytes) -> T:
    """An instance of the dataclass ``kind`` from ``dumps``'s text."""
    return _build(kind, json.loads(text))


def _plain(value: object) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, ChatifyError):
        return {_ERROR: [value.code, value.status, value.message, value.retry_after]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    raise TypeError(f"cannot send a {type(value).__name__} between replicas")


@functools.cache
def _hints(kind: Hashable) -> dict[str, Any]:
    return get_type_hints(kind)


def _build(kind: type[T], data: dict[str, Any]) -> T:
    hints = _hints(cast(Hashable, kind))
    known = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    values = {name: _value(hints[name], item) for name, item in data.items() if name in known}
    return kind(**values)


def _value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        arms = [arm for arm in get_args(hint) if arm is not type(None)]
        for arm in arms:
            if isinstance(value, dict) and _structured(arm) and _fits(arm, value):
                return _value(arm, value)
        return _value(arms[0], value) if len(arms) == 1 else value
    if isinstance(hint, type) and issubclass(hint, ChatifyError):
        return _error(value[_ERROR])
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if origin in (tuple, list):
        args = [arg for arg in get_args(hint) if arg is not Ellipsis]
        items = [_value(args[0], item) if args else item for item in value]
        return tuple(items) if origin is tuple else items
    return value


def _fits(hint: Any, value: dict[str, Any]) -> bool:
    """Whether a dict was made from this arm of a union (``ToolCall | ToolUse``): an error's
    marker, or a dataclass whose fields hold every key."""
    if issubclass(hint, ChatifyError):
        return _ERROR in value
    return set(value) <= {f.name for f in dataclasses.fields(hint)}


def _structured(hint: Any) -> bool:
    return isinstance(hint, type) and (
        dataclasses.is_dataclass(hint) or issubclass(hint, ChatifyError)
    )


def _error(fields: list[Any]) -> ChatifyError:
    """The error as it was raised where the turn ran: its class when this process knows its
    code, else a ``ChatifyError`` that answers with the same code and status."""
    code, status, message, retry_after = fields
    kind = _error_classes().get(code, ChatifyError)
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    error.message = message
    error.retry_after = retry_after
    if kind is ChatifyError:
        error.code, error.status = code, status
    return error


@functools.cache
def _error_classes() -> dict[str, type[ChatifyError]]:
    found: dict[str, type[ChatifyError]] = {}
    pending = list(ChatifyError.__subclasses__())
    while pending:
        kind = pending.pop()
        found.setdefault(kind.code, kind)
        pending.extend(kind.__subclasses__())
    return found
