"""Tools a personality may call: MCP servers (``mcp.py``), the tool loop (``loop.py``)."""
