"""Fault injection: per-POST draws of HTTP errors, dropped connections and stalls.

Semantics, chosen so a client's never-pay-twice logic can be tested:

- `http_429`, `http_500`, `http_503`, `http_504`: answered before anything is processed — the
  tasks are NOT accepted, not billed, and their taskUUIDs stay free (the identical body may be
  resent).
- `accepted_500`: the POST is processed first (tasks accepted and billed, async results
  retrievable with getResponse), then answered with a 500: the answer is lost.
- `accepted_disconnect`: the same, but the connection is dropped instead of answered.
- `disconnect`: the request is read, then the socket is closed without a response. Half the draws
  drop it before processing (nothing accepted); the other half process the POST first (tasks
  accepted and billed, async results retrievable with getResponse) and then drop the response.
- `stall`: no answer for `stall_s` seconds (longer than any sane read timeout). Half the draws
  accept the tasks first and send the real response after the stall (if anyone is still
  listening); the other half accept nothing and close the connection after the stall.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from pipeline.settings import FAULT_NAMES


def parse_faults(text: str) -> dict[str, float]:
    """Parse "http_429=0.1,http_503=0.05,disconnect=0.02" into {kind: probability}."""
    faults: dict[str, float] = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"fault {part!r} needs a probability, e.g. {part}=0.1")
        faults[name] = _probability(name, value)
    return check_faults(faults)


def _probability(name: str, value: object) -> float:
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"fault {name!r}: {value!r} is not a number") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fault {name!r}: probability {p} is not within [0, 1]")
    return p


def check_faults(faults: dict[str, float] | None) -> dict[str, float]:
    """Validate fault names and probabilities; return a clean copy."""
    clean: dict[str, float] = {}
    for name, value in (faults or {}).items():
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
        clean[name] = _probability(name, value)
    return clean


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault and its drawn details."""

    kind: str
    accepted: bool = False  # disconnect/stall: the tasks were processed before the drop/stall
    retry_after: int = 0  # http_429: seconds in the Retry-After header
    body: str = "json"  # http_500: "json" | "empty" | "html"


class FaultInjector:
    """Draws at most one fault per POST; reproducible for sequential clients with a seed."""

    def __init__(self, faults: dict[str, float] | None, seed: int | None = None) -> None:
        self.rates = check_faults(faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._queued: list[str] = []

    def queue(self, kinds: list[str]) -> None:
        """Inject exactly these faults on the next POSTs, in order (before any drawn by rate)."""
        check_faults(dict.fromkeys(kinds, 1.0))
        with self._lock:
            self._queued.extend(kinds)

    def set_rates(self, faults: dict[str, float] | None) -> None:
        """Replace the fault rates (the random sequence goes on)."""
        rates = check_faults(faults)
        with self._lock:
            self.rates = rates

    def draw(self) -> Fault | None:
        """The fault for the next POST, or None (kinds are tried in FAULT_NAMES order)."""
        with self._lock:
            if self._queued:
                return Fault(kind=self._queued.pop(0), accepted=True, retry_after=1)
        if not any(self.rates.values()):
            return None
        with self._lock:
            u = self._rng.random()
            detail = self._rng.random()
            edge = 0.0
            for kind in FAULT_NAMES:
                edge += self.rates.get(kind, 0.0)
                if u < edge:
                    return Fault(
                        kind=kind,
                        accepted=detail < 0.5,
                        retry_after=1 if detail < 0.5 else 0,
                        body=("json", "empty", "html")[int(detail * 3) % 3],
                    )
        return None
