"""Helpers for tests that run whole sweeps: small sweep specs, in-process runs, ledger checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from conftest import compose_config

from bench.common import seed_sweep as seed_sweep  # one sweep spec for tests and benchmarks
from pipeline import manifest
from pipeline.entry import JobContext
from pipeline.run import run_job


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict."""
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def run_sweep_inprocess(workdir: Path, sweep: dict[str, Any], run_dir: Path, **edits: Any) -> int:
    """Run krea-run's job in this process on a sweep spec, with dotted config edits."""
    cfg = compose_config("run")
    cfg.pop("hydra", None)
    cfg["sweep"] = sweep
    cfg["runner"]["progress"] = "none"
    for key, value in edits.items():
        set_path(cfg, key, value)
    ctx = JobContext(run_dir=run_dir, multirun=False, sweep_dir=workdir, overrides=[])
    return run_job(cfg, ctx)


def ledger(path: Path) -> list[dict[str, Any]]:
    """The emulator's billed images."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def charges_by_seed(path: Path) -> Counter[int]:
    """How many images were billed per request seed (seed sweeps: one cell per seed)."""
    return Counter(int(entry["seed"]) for entry in ledger(path))


def read_manifest(run_dir: Path) -> pd.DataFrame:
    """The run's manifest."""
    return manifest.read(run_dir)
