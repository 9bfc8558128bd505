"""Fast unit tests: one module each, its real collaborators where cheap, no app or server of
the service (a package, so its module names do not clash with ``tests/api``'s)."""
