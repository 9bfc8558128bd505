"""Redis, optional (``REDIS_URL``): what replicas and workers share through it.

- ``link.py``: the one client (the lifespan owns it) and its health; every call goes through
  it, so a Redis that stops answering turns into a fallback, never an error for a client.
- ``limits.py``: per-user rates, open-stream caps and the daily token count, shared.
- ``bus.py``: ``RedisBus``, the ``SessionBus`` that carries a session's events to the
  sockets of every replica.
- ``turns.py``: each turn's events in a Redis Stream, so any replica can resume it.
- ``codec.py``: events as JSON, field by field, whatever kinds and fields they grow.

Each falls back to its in-process counterpart while Redis is unavailable (docs/scaling.md).
"""
