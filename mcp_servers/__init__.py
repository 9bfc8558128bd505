"""MCP servers that ship with Chatify: ``demo`` (time zones, unit conversion)."""
