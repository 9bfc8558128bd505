"""The conversation: sessions and their turns.

Owns the one way a turn gets in (``admission``), the turn pipeline (``turns``) with a turn's
event log (``turn_events``), the replay of a stored turn (``replay``) and a stop
(``stopping``), the prompt it builds (``prompt``), regenerate, edit and their variants
(``branches``), session lifecycle (``sessions``), the active-session registry (``registry``),
one turn at a time per session (``gate``), live events (``bus``), rolling memory (``memory``),
titles (``titles``), a draft tried out (``preview``), data rights (``user_data``) and the
housekeeping schedule (``scheduler``).

May import: ``core``, ``store``, ``templates``, ``llm``, ``limits`` and ``services.identity``.
"""
