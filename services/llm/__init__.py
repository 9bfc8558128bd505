"""The model: how a prompt becomes a reply.

Owns the lean OpenAI-compatible client (``client``, with its stream decoder ``wire`` and the
offline responder's ``placeholder`` image), providers with routing, fallback and breakers
(``providers``), token counting (``tokens``) and MCP tools with the tool loop (``tools``).

May import: ``core``.
"""
