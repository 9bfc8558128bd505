"""Sampling the service with py-spy while a phase runs, and the top functions of the samples.

The samples are py-spy's raw collapsed stacks: one line per distinct stack, frames
``func (file:line)`` from the root down, separated by ``;``, then a space and the count.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

RATE_HZ = 250
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
# Frames every sample of a thread starts with: the interpreter's entry, uvicorn's runner, the
# event loop and the thread pools' bootstrap. They hold 100 % and say nothing, so the ranking
# starts below them (their samples still count in the total).
_SCAFFOLD = {
    "_run_module_as_main (<frozen runpy>)",
    "_run_code (<frozen runpy>)",
    "<module> (api/__main__.py)",
    "main (api/__main__.py)",
    "run (uvicorn/main.py)",
    "Server.run (uvicorn/server.py)",
    "asyncio_run (uvicorn/_compat.py)",
    "run (asyncio/runners.py)",
    "Runner.run (asyncio/runners.py)",
    "BaseEventLoop.run_until_complete (asyncio/base_events.py)",
    "BaseEventLoop.run_forever (asyncio/base_events.py)",
    "BaseEventLoop._run_once (asyncio/base_events.py)",
    "Handle._run (asyncio/events.py)",
    "Thread._bootstrap (threading.py)",
    "Thread._bootstrap_inner (threading.py)",
    "Thread.run (threading.py)",
    "_worker (concurrent/futures/thread.py)",
    "_WorkItem.run (concurrent/futures/thread.py)",
}


@dataclass
class Profile:
    """Inclusive and self sample counts by function, over all the stacks read."""

    total: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)

    def add_raw(self, text: str, *, roots: tuple[Path, ...] = ()) -> None:
        """Add py-spy raw output; file paths under ``roots`` are made relative to them."""
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [function_name(frame, roots) for frame in stack.split(";")]
            while frames and frames[0] in _SCAFFOLD:
                frames.pop(0)
            self.total += int(count)
            for name in set(frames):  # a recursive function counts once per sample
                self.inclusive[name] += int(count)
            if frames:
                self.own[frames[-1]] += int(count)

    def top(self, n: int = 10) -> list[tuple[str, float, float]]:
        """The ``n`` functions with the most inclusive samples: (name, inclusive %, self %)."""
        return [
            (name, 100 * count / self.total, 100 * self.own[name] / self.total)
            for name, count in self.inclusive.most_common(n)
        ]


def function_name(frame: str, roots: tuple[Path, ...] = ()) -> str:
    """``func (file:line)`` as ``func (file)``, ``file`` relative to the first matching root."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for root in roots:
        prefix = f"{root}/"
        if file.startswith(prefix):
            file = file.removeprefix(prefix)
            break
    return f"{match['func']} ({file})"


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, output: Path) -> Iterator[None]:
    """Sample ``pid`` into ``output`` (raw collapsed stacks) while the block runs.

    ``--gil`` samples only the thread holding the GIL, i.e. Python running on a CPU. Without
    it, a trial counted pool threads parked in ``work_queue.get`` and SQLite's fsync as busy
    (a third of the samples). ``--nonblocking`` never pauses the service: pausing it 250
    times a second added about 18 % to its CPU per turn in a trial (3.75-3.92 ms against
    3.08-3.50 unsampled), which would skew the very phase being measured; reading it while it
    runs added nothing measurable, at the price of catching about 75 % of its CPU time and a
    torn stack now and then. Failing to attach is logged, never fatal: the figures do not
    need it.
    """
    executable = py_spy()
    if executable is None:
        logger.warning("py-spy is not installed (requirements-dev.txt): no profile")
        yield
        return
    args = [executable, "record", "-p", str(pid), "-f", "raw", "-o", str(output)]
    args += ["-r", str(RATE_HZ), "--nonblocking", "--gil"]
    errors = output.with_suffix(".stderr")
    with errors.open("wb") as err:
        spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output file on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        if spy.returncode != 0 or not output.exists():
            detail = errors.read_text(errors="replace").strip().splitlines()[-3:]
            logger.warning(
                "py-spy could not sample pid %s (exit %s), going on without this profile: %s",
                pid,
                spy.returncode,
                " / ".join(detail) or "no output",
            )


def profile_table(profile: Profile, n: int = 10) -> str:
    """The top ``n`` functions by inclusive samples, as a Markdown table."""
    lines = [
        "| # | function (file) | cumulative % | self % |",
        "|---|---|---|---|",
    ]
    for rank, (name, inclusive, own) in enumerate(profile.top(n), 1):
        lines.append(f"| {rank} | `{name}` | {inclusive:.1f} | {own:.1f} |")
    return "\n".join(lines)
