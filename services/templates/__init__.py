"""Personality templates: the one schema (``schema``), placeholders (``variables``), history
(``versions``), per-personality counters (``stats``), drafts tried out (``preview``), what a
personality reads as, defaults included (``effective``), and the service that keeps the current
templates in memory (``service``)."""
