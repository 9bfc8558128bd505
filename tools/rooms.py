"""``python -m tools.rooms``: check that imports between the rooms of ``services/`` run one way.

A room is a folder of ``services/`` (or one of its few loose modules). Each room may import
itself and the rooms below it in ``ROOMS``, never one above; nothing in ``services/`` imports
``api``. Prints each room with the rooms it imports, and every import that breaks the order;
exits 1 when one does (docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# From the ground up: a room may import the rooms before it, never one after it.
ROOMS = (
    "core",
    "store",
    "attachments",
    "templates",
    "llm",
    "limits",
    "identity",
    "conversation",
    "push",
    "redis",
    "application",
)


def room_of(module: str) -> str | None:
    """The room of a ``services`` module (``services.llm.tools.loop`` → ``llm``)."""
    parts = module.split(".")
    if parts[0] != "services" or len(parts) < 2:
        return None
    return parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def check(root: Path = REPO) -> tuple[dict[str, set[str]], list[str]]:
    """The rooms each room imports, and the imports that break the order."""
    uses: dict[str, set[str]] = defaultdict(set)
    broken: list[str] = []
    for path in sorted((root / "services").rglob("*.py")):
        relative = path.relative_to(root)
        module = ".".join(relative.with_suffix("").parts)
        if module == "services.__init__":
            continue
        room = room_of(module)
        if room not in ROOMS:
            broken.append(f"{relative}: not in a room of ROOMS")
            continue
        for line, name in imports_of(path):
            if name == "api" or name.startswith("api."):
                broken.append(f"{relative}:{line}: imports {name} (services never import api)")
                continue
            target = room_of(name)
            if target is None or target == room:
                continue
            uses[room].add(target)
            if target not in ROOMS or ROOMS.index(target) > ROOMS.index(room):
                broken.append(f"{relative}:{line}: {room} imports {name} ({target} is above it)")
    return uses, broken


def main() -> int:
    uses, broken = check()
    for room in reversed(ROOMS):
        below = ", ".join(r for r in ROOMS if r in uses.get(room, set())) or "-"
        sys.stdout.write(f"{room:<13} imports {below}\n")
    for line in broken:
        sys.stdout.write(f"BROKEN {line}\n")
    sys.stdout.write(f"{len(broken)} import(s) against the order\n")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
