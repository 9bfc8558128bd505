"""Redis, optional (``REDIS_URL``): what replicas and workers share through it.

- ``link.py``: the one client (the lifespan owns it) and its health; every call goes through
  it, so a Redis that stops answering turns into a fallback, never an error for a client.
- ``limits.py``: per-user rates, open-stream caps and the daily token count, shared.

Each falls back to its in-process counterpart while Redis is unavailable (docs/scaling.md).
"""
