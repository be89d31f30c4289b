"""Progress lines with rate and ETA, written every N seconds rather than every N percent.

A 512-token epoch on 2 cores runs for 20 minutes; a line per 10% of its steps leaves two minutes of silence
and says nothing about when it ends. Lines are plain log records (no carriage-return bars), because Ray
streams worker and driver output line by line into the job log, where a redrawn bar turns into noise.
The interval: `progress_every_s`, from BERTCLF_PROGRESS_SECONDS (default 30; Ray workers get it from the driver).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from bertclf.errors import ConfigError

EVERY_ENV = "BERTCLF_PROGRESS_SECONDS"
DEFAULT_EVERY_S = 30.0


def every_seconds(raw: str | None = None) -> float:
    """The interval between progress lines: `raw`, else BERTCLF_PROGRESS_SECONDS (seconds, > 0)."""
    raw = (os.environ.get(EVERY_ENV, "") if raw is None else raw).strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{EVERY_ENV}={raw!r}: give the seconds between progress lines as a number > 0")
    return value


def format_duration(seconds: float) -> str:
    """Short and sortable by eye: 45s, 3m05s, 2h07m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done: float, total: float | None, elapsed: float) -> float | None:
    """Time left at the average rate so far; None while there is no rate (or no total) to go by."""
    if total is None or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, total - done) * elapsed / done


class Progress:
    """Counts toward a total and logs `progress: <what> done/total unit (pct), rate unit/s, ETA ...` when at
    least `every_s` seconds have passed since the last line, and once more at the end (`finish`)."""

    def __init__(self, what: str, total: int | None, unit: str = "rows", *, log: logging.Logger,
                 every_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.every_s = every_seconds() if every_s is None else every_s
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0

    def update(self, done: int, detail: str | Callable[[], str] = "") -> bool:
        """Set the count reached (not an increment); log a line if one is due. `detail` (text, or a function
        called only when a line is due) follows the numbers. Returns whether it logged."""
        self.done = done
        now = self.clock()
        if now - self.last < self.every_s:
            return False
        self.last = now
        self.log.info(self.line(now, detail() if callable(detail) else detail))
        return True

    def finish(self, detail: str = "") -> None:
        """The closing line, whatever the interval: how many, how fast, how long."""
        self.last = self.clock()
        self.log.info(self.line(self.last, detail, final=True))

    def line(self, now: float, detail: str = "", final: bool = False) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        count = f"{self.done:,}/{self.total:,}" if self.total is not None else f"{self.done:,}"
        pct = f" ({100 * min(self.done, self.total) / max(1, self.total):.0f}%)" if self.total is not None else ""
        if final:
            tail = f"in {format_duration(elapsed)}"
        else:
            eta = eta_seconds(self.done, self.total, elapsed)
            tail = f"ETA {format_duration(eta)}" if eta is not None else "ETA unknown"
        text = f"progress: {self.what} {count} {self.unit}{pct}, {rate:,.1f} {self.unit}/s, {tail}"
        return f"{text}; {detail}" if detail else text
