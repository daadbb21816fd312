"""Sharded run benchmark: wall time of 1, 2 and 4 joblib shards against one latent emulator."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit, emulator_process


def main() -> None:
    """Run the same sweep with 1, 2 and 4 shards (fresh store each time) and time each multirun."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=192)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=8, help="tasks in flight per shard")
    args = parser.parse_args()
    result: dict[str, float | int] = {
        "cells": args.cells,
        "latency_s": args.latency,
        "concurrency_per_shard": args.concurrency,
    }
    with tempfile.TemporaryDirectory() as tmp, emulator_process(args.latency) as url:
        work = Path(tmp)
        for shards in (1, 2, 4):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "pipeline.run", "-m", "sweep=seed_study",
                 f"sweep.seeds.count={args.cells}", "api=emulator", f"api.base_url={url}",
                 f"runner.concurrency={args.concurrency}", "runner.progress=none",
                 "budget.max_usd=1000", f"store.dir={work / f'store{shards}'}",
                 f"shard.count={shards}", f"shard.index=range({shards})",
                 "hydra/launcher=joblib", f"hydra.sweep.dir={work / f'multi{shards}'}"],
                cwd=work, capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
            result[f"shards_{shards}_s"] = round(time.perf_counter() - start, 2)
    result["speedup_4"] = round(float(result["shards_1_s"]) / float(result["shards_4_s"]), 2)
    emit(result)


if __name__ == "__main__":
    main()
