"""Scale-out, optional (``REDIS_URL``): what replicas share about a conversation through Redis.

- ``bus.py``: ``RedisBus``, the ``SessionBus`` that carries a session's events to the
  sockets of every replica.
- ``turns.py``: each turn's events in a Redis Stream, so any replica can resume it.
- ``codec.py``: events as JSON, field by field, whatever kinds and fields they grow.

The one client is ``services.core.redis_link``; the shared limits are
``services.limits.redis``. Each falls back to its in-process counterpart while Redis is
unavailable (docs/scaling.md).

May import: ``core`` and ``conversation`` (the events and turns it carries).
"""
