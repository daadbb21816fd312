"""Helpers shared by the benchmarks: child-process measurement and the result table."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    """Print a child's result as the last line of its output."""
    print("RESULT " + json.dumps(result), flush=True)


def child(module: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run `python -m bench.<module> args…` in a fresh process and return its RESULT."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RUNWARE_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"bench.{module} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def machine() -> str:
    """One line describing the machine."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
