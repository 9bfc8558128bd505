"""The model: how a prompt becomes a reply.

Owns the client contract (``client``: messages, ``Completion``, ``LLMClient``), the lean
OpenAI-compatible client (``openai_chat`` over its HTTP/1.1 pool ``http``, reading replies
with ``replies`` and the stream decoder ``wire``), the offline responder (``offline``, with
its ``placeholder`` image), providers with routing, fallback and breakers (``providers``),
token counting (``tokens``) and MCP tools with the tool loop (``tools``).

May import: ``core``.
"""
