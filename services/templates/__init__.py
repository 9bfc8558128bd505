"""Personality templates: the one schema (``schema``), placeholders (``variables``),
per-personality counters (``stats``), what a personality reads as, defaults included
(``effective``), writes by authors (``authoring``), the seed command (``seed``) and the service
that keeps the current templates in memory (``service``). Their history is the store's
(``services.store.versions``); a draft tried out is a turn (``services.conversation.preview``).

May import: ``core`` and ``store``.
"""
