"""Test support that the tests and the bench share: local servers that speak the real
protocols, all on 127.0.0.1 and none reaching the internet.

- ``mock_llm``: an OpenAI-compatible LLM (scripted replies, latency, faults, recorded requests).
- ``rtdb_server``: a Firebase Realtime Database REST server (what firebase-admin speaks), with
  fault injection and a request log.
- ``firebase_tokens``: a Firebase ID-token issuer and its certificate endpoint.
- ``mcp_faulty``: an MCP server that misbehaves on purpose.
- ``redis_server``: a real Redis server started for a test session.
- ``live``: the service on a real socket; ``browser``: Chromium through Playwright;
  ``node_ai`` (with ``node/``): the Vercel AI SDK run in Node.
- ``tools``: what a test does when one of those cannot start.
- ``stored_turns``: a whole turn written straight into a store (claim, then write).

Nothing of the product imports it.
"""
