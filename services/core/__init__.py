"""The ground floor: what every room shares and nothing of Chatify's own behaviour.

Owns the settings (``settings``, with the shapes of provider and tool configuration it parses:
``provider_config``, ``tool_config``), the domain errors (``errors``), the records the service
keeps (``records``: sessions, messages, turns, usage; ``branch_records``: regenerated and
edited turns and their variants), Prometheus metrics (``metrics``),
background tasks that never fail a turn (``background``), text cleaning (``plain_text``), the
one Redis client (``redis_link``) and the Firebase credential (``firebase_credentials``).

May import: nothing of ``services`` outside this room.
"""
