"""Plan benchmark: expand, validate, hash and price N cells, plan.parquet included."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import REPO, emit, peak_rss_mb
from pipeline.plan import make_plan
from pipeline.pricing import load_price_table
from pipeline.sweep import expand, load_sweep


def main() -> None:
    """Plan a sweep file (default: conf/sweep/bench_100k.yaml); report time and memory."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", default="bench_100k")
    parser.add_argument("--seeds", type=int, default=0, help="replace the seeds by count N")
    parser.add_argument("--no-parquet", action="store_true")
    args = parser.parse_args()
    sweep_dir = REPO / "conf" / "sweep"
    spec = yaml.safe_load((sweep_dir / f"{args.sweep}.yaml").read_text())
    if args.seeds:
        spec["seeds"] = {"count": args.seeds, "start": 0}
    start = time.perf_counter()
    sweep = load_sweep(spec, sweep_dir)
    with tempfile.TemporaryDirectory() as tmp:
        plan = make_plan(
            lambda: expand(sweep),
            price_table=load_price_table(),
            axis_names=sweep.axis_names,
            budget_usd=1e12,
            out_dir=None if args.no_parquet else Path(tmp),
        )
    wall = time.perf_counter() - start
    emit(
        {
            "cells": plan.cells,
            "wall_s": round(wall, 2),
            "peak_mb": round(peak_rss_mb(), 1),
            "us_per_cell": round(wall / max(plan.cells, 1) * 1e6, 1),
            "estimate_usd": round(plan.estimate_usd, 2),
        }
    )


if __name__ == "__main__":
    main()
