"""Chatify's HTTP transport: the FastAPI app factory, routers and error mapping."""
