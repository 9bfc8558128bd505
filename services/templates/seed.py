"""``python -m services.templates.seed [--overwrite] [--dir DIR]``: upload seed personalities
to the store.

Uses the same settings as the service (so ``FIREBASE_DATABASE_URL`` and credentials select a
Firebase database). Idempotent: templates and rules already there are kept, so authors' edits
survive, unless ``--overwrite`` is given. Reports what it did, one line per document.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from services.core.records import SeedReport
from services.core.settings import Settings
from services.store import build_store
from services.templates.service import read_seed_dir

logger = logging.getLogger("chatify.seed")


async def seed_store(settings: Settings, *, folder: Path, overwrite: bool) -> SeedReport:
    """Write the seed folder's templates and rules into the configured store."""
    templates, rules = read_seed_dir(folder)
    store = build_store(settings)
    await store.open()
    try:
        return await store.seed(templates, rules, overwrite=overwrite)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Upload seed personalities to the store.")
    parser.add_argument("--overwrite", action="store_true", help="replace existing documents")
    parser.add_argument("--dir", type=Path, help="seed folder (default: TEMPLATES_SEED_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    settings = Settings()
    folder = args.dir or settings.templates_seed_dir
    report = asyncio.run(seed_store(settings, folder=folder, overwrite=args.overwrite))
    for label in report.created:
        logger.info("created      %s", label)
    for label in report.overwritten:
        logger.info("overwritten  %s", label)
    for label in report.kept:
        logger.info("kept         %s (exists; --overwrite replaces it)", label)
    logger.info(
        "%s store: %d created, %d overwritten, %d kept",
        settings.store,
        len(report.created),
        len(report.overwritten),
        len(report.kept),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
