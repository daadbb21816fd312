"""Rerun of a finished sweep: every cell comes from the store, nothing is sent, and it is quick.

    python -m bench.rerun [--cells 10000] [--concurrency 16] [--workdir DIR] [--profile FILE]

Setup: krea-run's job runs N seed cells once (zero latency, standalone emulator process with a
`--ledger`, empty store). Measured: the same config into a NEW run dir against the same emulator
(wall of the whole job: plan with store hits, runner, manifest), with the ledger's line count
before and after; then once more into another run dir against an in-process `Emulator`, whose
POST count must stay 0. `--workdir DIR` keeps (and reuses) the finished store between calls;
`--profile FILE` writes a cProfile of the measured rerun.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    emit,
    emulator_process,
    ledger_lines,
    peak_rss_mb,
    run_config,
    run_real,
    seed_sweep,
    warm_imports,
)
from pipeline import rundir


def setup(root: Path, cells: int, concurrency: int) -> dict[str, Any]:
    """Run the sweep once into `root/store` (skipped when `root/setup.json` says it was)."""
    marker = root / "setup.json"
    if marker.exists():
        done: dict[str, Any] = json.loads(marker.read_text())
        if done.get("cells") == cells:
            return {**done, "reused": True}
    for name in ("store", "first", "ledger.jsonl"):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    with emulator_process(0.0, ledger=root / "ledger.jsonl") as url:
        cfg = run_config(
            seed_sweep(cells), base_url=url, store_dir=root / "store", concurrency=concurrency
        )
        run = run_real(cfg, root / "first")
    billed = ledger_lines(root / "ledger.jsonl")
    if run.code != 0 or billed != cells:
        raise SystemExit(f"setup failed (exit {run.code}, {billed} billed):\n{run.output[-2000:]}")
    done = {"cells": cells, "setup_wall_s": round(run.wall_s, 1), "setup_billed": billed}
    marker.write_text(json.dumps(done))
    return {**done, "reused": False}


def main() -> None:
    """Run N cells once, rerun them twice into new run dirs; RESULT has the rerun wall."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16, help="for the setup run")
    parser.add_argument("--workdir", type=Path, help="keep the finished store here (reused)")
    parser.add_argument("--profile", type=Path, help="cProfile of the measured rerun")
    args = parser.parse_args()
    warm_imports()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        made = setup(root, args.cells, args.concurrency)
        for name in ("rerun", "rerun-inproc"):
            shutil.rmtree(root / name, ignore_errors=True)
        ledger = root / "ledger.jsonl"

        # 1. against the standalone emulator (the setup's config, a new run dir)
        with emulator_process(0.0, ledger=ledger) as url:
            cfg = run_config(
                seed_sweep(args.cells),
                base_url=url,
                store_dir=root / "store",
                concurrency=args.concurrency,
            )
            before = ledger_lines(ledger)
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            rerun = run_real(cfg, root / "rerun")
            if profiler:
                profiler.disable()
                profiler.dump_stats(str(args.profile))
            after = ledger_lines(ledger)
        images = sum(1 for _ in (root / "rerun" / rundir.IMAGES_DIR).iterdir())

        # 2. against an in-process emulator, to count POSTs (the standalone one prints nothing)
        from pipeline.emulator import Emulator

        with Emulator(0) as emu:
            cfg["api"]["base_url"] = emu.base_url
            again = run_real(cfg, root / "rerun-inproc")
            posts = emu.stats()["posts"]
    if rerun.code != 0 or again.code != 0 or images != args.cells:
        codes = f"{rerun.code}/{again.code}"
        raise SystemExit(f"rerun failed (exit {codes}, {images} images):\n{rerun.output[-2000:]}")
    emit(
        {
            "cells": args.cells,
            **{k: v for k, v in made.items() if k != "cells"},
            "rerun_wall_s": round(rerun.wall_s, 2),
            "rerun_runner_wall_s": round(rerun.runner_wall_s, 2),
            "rerun_images": images,
            "ledger_before": before,
            "ledger_after": after,
            "new_charges": after - before,
            "rerun2_wall_s": round(again.wall_s, 2),
            "rerun2_posts": posts,
            "zero_requests": after == before and posts == 0,
            "peak_mb": round(peak_rss_mb(), 1),
        }
    )


if __name__ == "__main__":
    main()
