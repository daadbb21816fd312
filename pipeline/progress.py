"""The live progress line (terminal) or periodic log lines (pipes and files)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from pipeline.pricing import usd


class Progress:
    """Counts finished cells and shows done / failed / cached / remaining, rate, ETA and dollars."""

    def __init__(
        self,
        total_cells: int,
        budget_usd: float,
        *,
        mode: str = "auto",
        log_every: int = 25,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode
        self.total = total_cells
        self.budget = budget_usd
        self.log_every = log_every
        self.ok = self.failed = self.cached = self.images = 0
        self.billed = 0.0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._since_log = 0

    def add(self, status: str, images: int = 0, billed: float = 0.0) -> None:
        """Record one finished cell (`ok`, `failed` or `cached`)."""
        with self._lock:
            if status == "ok":
                self.ok += 1
            elif status == "cached":
                self.cached += 1
            else:
                self.failed += 1
            self.images += images
            self.billed += billed
            self._since_log += 1
            self._show()

    def line(self) -> str:
        """The current state in one line."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = self.ok + self.failed + self.cached
        remaining = max(self.total - done, 0)
        run = self.ok + self.failed
        rate = self.images / elapsed
        eta = f"{remaining * elapsed / run:,.0f}s" if run and remaining else "—"
        return (
            f"done {self.ok:,} · failed {self.failed:,} · cached {self.cached:,} · "
            f"remaining {remaining:,} · {rate:.1f} img/s · ETA {eta} · "
            f"{usd(self.billed)} of {usd(self.budget)}"
        )

    def _show(self) -> None:
        if self.mode == "bar":
            now = time.monotonic()
            if now - self._last_draw >= 0.1:
                self._last_draw = now
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
        elif self.mode == "log" and self._since_log >= self.log_every:
            self._since_log = 0
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """Draw the final state and end the line."""
        with self._lock:
            if self.mode == "bar":
                self.stream.write("\r" + self.line() + "\x1b[K\n")
                self.stream.flush()
            elif self.mode == "log" and self._since_log:
                print(self.line(), file=self.stream, flush=True)


def shown(path: Path) -> str:
    """A path as short as it can be said: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
