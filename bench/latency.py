"""Latency-bound efficiency: the real run path against an emulator that takes S seconds per task.

    python -m bench.latency [--latency 2] [--concurrency 32] [--images 320] [--delivery async]

Ideal wall = ceil(images / concurrency) × latency (320 / 32 × 2 s = 20 s); efficiency = ideal /
wall of krea-run's job (plan and manifest included). The emulator is a separate process.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from bench.common import (
    emit,
    emulator_process,
    peak_rss_mb,
    run_config,
    run_real,
    seed_sweep,
    warm_imports,
)
from pipeline import rundir


def main() -> None:
    """Run N images at latency S and concurrency C; RESULT has wall, ideal and efficiency."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--delivery", choices=("async", "sync"), default="async")
    args = parser.parse_args()
    warm_imports()
    ideal = math.ceil(args.images / args.concurrency) * args.latency
    with tempfile.TemporaryDirectory() as tmp, emulator_process(args.latency) as url:
        root = Path(tmp)
        cfg = run_config(
            seed_sweep(args.images),
            base_url=url,
            store_dir=root / "store",
            concurrency=args.concurrency,
            delivery=args.delivery,
        )
        run = run_real(cfg, root / "run")
        written = sum(1 for _ in (root / "run" / rundir.IMAGES_DIR).iterdir())
    if run.code != 0 or written != args.images:
        raise SystemExit(f"run failed (exit {run.code}, {written} images):\n{run.output[-2000:]}")
    emit(
        {
            "images": args.images,
            "concurrency": args.concurrency,
            "latency_s": args.latency,
            "delivery": args.delivery,
            "wall_s": round(run.wall_s, 2),
            "runner_wall_s": round(run.runner_wall_s, 2),
            "ideal_s": round(ideal, 2),
            "efficiency": round(ideal / run.wall_s, 3),
            "peak_mb": round(peak_rss_mb(), 1),
        }
    )


if __name__ == "__main__":
    main()
