"""Project tools run with ``python -m tools.<name>``."""
