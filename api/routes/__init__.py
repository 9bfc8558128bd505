"""The routers, one module per resource; ``api.app`` mounts them.

- ``sessions``: create, read, rename, end a session; send a message (JSON); its messages.
- ``branches``: regenerate a reply, edit a user message, list and select their variants.
- ``stream``: a message as Server-Sent Events, and resuming it. ``ws``: the WebSocket.
- ``ui_stream``: the Vercel AI SDK's UI-message stream (``/chat``) and its history.
- ``users``: a user's sessions, usage, export and erasure (``me`` for the caller).
- ``push``: a user's push devices and opt-outs (docs/push.md).
- ``personalities``: the public list, and authoring (admin): CRUD, versions, stats.
- ``preview``: a draft personality tried out. ``rules``: the universal rules (admin).
- ``admin``: service-wide stats. ``ops``: health and readiness. ``metrics``: Prometheus.
- ``playground`` and ``studio``: the static pages.
"""
