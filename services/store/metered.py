"""A store whose every call is timed by operation, whatever the backend behind it."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from services.core.errors import StoreUnavailable
from services.core.metrics import StoreObserver
from services.store.base import Store

# The contract's methods, role by role: the operation label's only values.
OPERATIONS = tuple(
    name
    for role in Store.__mro__
    for name, member in vars(role).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(member)
)


def metered(store: Store, observer: StoreObserver) -> Store:
    """``store``, with each contract method's calls reported to ``observer``."""
    return cast(Store, _MeteredStore(store, observer))


class _MeteredStore:
    """Holds a timed wrapper for each contract method; anything else is the store's own."""

    def __init__(self, store: Store, observer: StoreObserver) -> None:
        self._store = store
        for operation in OPERATIONS:
            setattr(self, operation, _timed(getattr(store, operation), operation, observer))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _timed(
    call: Callable[..., Awaitable[Any]], operation: str, observer: StoreObserver
) -> Callable[..., Awaitable[Any]]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        failed = False
        try:
            return await call(*args, **kwargs)
        except StoreUnavailable:
            failed = True
            raise
        finally:
            observer.store_call(operation, time.perf_counter() - started, failed=failed)

    return timed
