"""Chatify's domain: sessions, turns, templates, storage and the LLM client."""
