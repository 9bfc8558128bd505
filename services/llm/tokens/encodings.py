"""OpenAI's tokenizer encodings, read from files vendored in ``data/``: nothing is downloaded.

``tiktoken`` alone fetches an encoding's ranks over the network the first time it is used; here
the ranks come gzipped inside the repository (see ``data/README.md`` for where they come from),
are checked against the SHA-256 that tiktoken itself expects, and are handed to
``tiktoken.Encoding`` with the split pattern and special tokens copied below.

Parsing an encoding takes a few hundred milliseconds and tens of MiB (docs/tokens.md), so it is
done at most once per process and only in a worker thread: ``Encodings.load`` blocks. The last
step, ``tiktoken.Encoding``'s Rust constructor, holds the GIL throughout (≈ 0.3 s for o200k_base),
which no thread can hide from the event loop.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Literal

import tiktoken

logger = logging.getLogger(__name__)

EncodingName = Literal["cl100k_base", "o200k_base"]
ENCODING_NAMES: tuple[EncodingName, ...] = ("cl100k_base", "o200k_base")
DATA_DIR = Path(__file__).resolve().parent / "data"

# The constants below are copied from tiktoken 0.14.0, tiktoken_ext/openai_public.py
# (functions cl100k_base() and o200k_base()); tests/services/test_tokens.py checks them against
# the installed tiktoken, so an upgrade that changes them fails there.
EXPECTED_SHA256: dict[EncodingName, str] = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"
SPECIAL_TOKENS: dict[EncodingName, dict[str, int]] = {
    "cl100k_base": {
        _ENDOFTEXT: 100257,
        _FIM_PREFIX: 100258,
        _FIM_MIDDLE: 100259,
        _FIM_SUFFIX: 100260,
        _ENDOFPROMPT: 100276,
    },
    "o200k_base": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
}
PAT_STR: dict[EncodingName, str] = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
        r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}


class EncodingIntegrityError(RuntimeError):
    """A vendored encoding file is not the one tiktoken expects: corrupted or replaced."""


def read_encoding(name: EncodingName, path: Path) -> tiktoken.Encoding:
    """Parse one gzipped ``.tiktoken`` file (blocking); raise if its content hash is wrong."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise EncodingIntegrityError(f"cannot read the {name} encoding at {path}: {exc}") from exc
    actual = hashlib.sha256(raw).hexdigest()
    if actual != EXPECTED_SHA256[name]:
        raise EncodingIntegrityError(
            f"the {name} encoding at {path} has SHA-256 {actual}, expected "
            f"{EXPECTED_SHA256[name]}: the vendored file is corrupted or was replaced"
        )
    # Each line is "<base64 of the token's bytes> <rank>", as tiktoken.load.load_tiktoken_bpe reads.
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in raw.splitlines() if line)
    }
    return tiktoken.Encoding(
        name, pat_str=PAT_STR[name], mergeable_ranks=ranks, special_tokens=SPECIAL_TOKENS[name]
    )


class Encodings:
    """Encodings read from one directory, each parsed once, safe to load from many threads.

    The loaded encodings are immutable and large, so one instance (``ENCODINGS``) is shared by
    every app in the process rather than owned by a lifespan.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._loaded: dict[EncodingName, tiktoken.Encoding] = {}
        self._parses: dict[EncodingName, int] = dict.fromkeys(ENCODING_NAMES, 0)
        self._lock = threading.Lock()

    def loaded(self, name: EncodingName) -> tiktoken.Encoding | None:
        """The encoding if it was loaded already (never blocks), else None."""
        return self._loaded.get(name)

    def parses(self, name: EncodingName) -> int:
        """How many times the file was parsed (at most once after a success)."""
        return self._parses[name]

    def load(self, name: EncodingName) -> tiktoken.Encoding:
        """The encoding, parsed on first use (blocking: call it in a worker thread)."""
        with self._lock:
            encoding = self._loaded.get(name)
            if encoding is None:
                started = time.perf_counter()
                self._parses[name] += 1
                encoding = read_encoding(name, self._directory / f"{name}.tiktoken.gz")
                self._loaded[name] = encoding
                logger.info(
                    "loaded the %s encoding in %.0f ms",
                    name,
                    1000 * (time.perf_counter() - started),
                )
            return encoding


ENCODINGS = Encodings(DATA_DIR)
