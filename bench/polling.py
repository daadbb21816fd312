"""Polling cadence at realistic latency: wall vs ideal and getResponse per image, beside the SDK.

For each latency shape (fixed, lognormal) and concurrency, the same N images are made by the real
run path (`pipeline.run.run_job`) and by Runware's SDK (`asyncio.gather`, REST, its default async
delivery), each against a fresh emulator process (same `--fault-seed`, so the same latencies in
acceptance order). Ideal wall = greedy list scheduling of the ledger's latencies over C slots in
acceptance order (zero overhead); getResponse calls come from the emulator's counters.
"""

from __future__ import annotations

import argparse
import heapq
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.baseline import sdk_gather
from bench.common import emit, emulator_process, run_config, run_real, seed_sweep, warm_imports


def ideal_wall(latencies: list[float], concurrency: int) -> float:
    """Makespan of tasks taken in order by `concurrency` slots, each when one frees up."""
    slots = [0.0] * min(concurrency, max(1, len(latencies)))
    heapq.heapify(slots)
    end = 0.0
    for lat in latencies:
        start = heapq.heappop(slots)
        end = max(end, start + lat)
        heapq.heappush(slots, start + lat)
    return end


def one(kind: str, images: int, concurrency: int, latency: float, sigma: float) -> dict[str, Any]:
    """One contender ("runner" | "sdk"): wall, ideal, efficiency, polls per image."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ledger, stats = root / "ledger.jsonl", root / "stats.json"
        extra = ("--latency-sigma", str(sigma), "--fault-seed", "1", "--stats-out", str(stats))
        with emulator_process(latency, ledger, *extra) as url:
            if kind == "runner":
                cfg = run_config(
                    seed_sweep(images),
                    base_url=url,
                    store_dir=root / "store",
                    concurrency=concurrency,
                )
                run = run_real(cfg, root / "run")
                if run.code != 0:
                    raise SystemExit(f"run failed (exit {run.code}):\n{run.output[-2000:]}")
                wall = run.wall_s
            else:
                out = root / "sdk"
                out.mkdir()
                wall = sdk_gather(url, images, concurrency, out, None)
        entries = [json.loads(line) for line in ledger.read_text().splitlines() if line]
        counters = json.loads(stats.read_text())
    ideal = ideal_wall([float(e["latency_s"]) for e in entries], concurrency)
    return {
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "efficiency": round(ideal / wall, 3),
        "polls_per_image": round(counters["tasks.getResponse"] / max(1, len(entries)), 2),
        "billed": len(entries),
    }


def main() -> None:
    """RESULT: one entry per (latency shape, concurrency) with the runner and the SDK."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=6.0)
    parser.add_argument("--sigma", type=float, default=0.4)
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--no-sdk", action="store_true")
    args = parser.parse_args()
    warm_imports()
    rows = []
    for sigma in (0.0, args.sigma):
        for c in (int(x) for x in args.concurrency.split(",")):
            row: dict[str, Any] = {"sigma": sigma, "concurrency": c, "images": args.images}
            row["runner"] = one("runner", args.images, c, args.latency, sigma)
            if not args.no_sdk:
                row["sdk"] = one("sdk", args.images, c, args.latency, sigma)
            rows.append(row)
            print(json.dumps(row), flush=True)
    emit({"latency_s": args.latency, "rows": rows})


if __name__ == "__main__":
    main()
