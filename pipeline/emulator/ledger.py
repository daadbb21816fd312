"""The billing ledger and the credit balance: one JSON line per billed image."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

MICRO = 1_000_000  # balances are kept in micro-USD so that repeated charges add up exactly


def to_micro(usd: float) -> int:
    """USD → integer micro-USD."""
    return round(usd * MICRO)


class Ledger:
    """Billed images in memory and, when a path is given, appended to a JSON-lines file."""

    def __init__(self, path: Path | None = None, credits: float | None = None) -> None:
        self.path = path
        self._entries: list[dict[str, Any]] = []
        self._balance = None if credits is None else to_micro(credits)
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def charge(self, entries: list[dict[str, Any]]) -> bool:
        """Bill `entries` at once if the balance covers them; False (nothing billed) if not."""
        total = sum(to_micro(float(e["cost"])) for e in entries)
        with self._lock:
            if self._balance is not None:
                if total > self._balance:
                    return False
                self._balance -= total
            self._entries.extend(entries)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        return True

    def balance(self) -> float | None:
        """Credits left in USD, or None when credits are unlimited."""
        with self._lock:
            return None if self._balance is None else self._balance / MICRO

    def entries(self) -> list[dict[str, Any]]:
        """A copy of every billed image so far."""
        with self._lock:
            return [dict(e) for e in self._entries]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
