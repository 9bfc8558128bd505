"""Limits and accounting: what a user may spend and what they spent.

Owns usage accounting per turn and per background call (``usage``), the daily token quota
(``daily_tokens``), per-user rates, open-stream caps and session caps (``quotas``), and their
Redis-shared counterparts (``redis``).

May import: ``core``, ``store``, ``llm``.
"""
