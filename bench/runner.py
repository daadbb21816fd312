"""Runner throughput at zero emulator latency vs a hand-written `requests` loop and Runware's SDK.

    python -m bench.runner [--images 400] [--concurrency 8] [--repeats 3] [--sdk-images N]

Every contender runs in its own process against a fresh standalone emulator process
(`python -m pipeline.emulator`), so neither the emulator's CPU nor its image cache is shared:

- runner-async / runner-sync: krea-run's job (`pipeline.run.run_job`): expand → plan → Runner with
  journal, store, images written with their recipe → manifest; empty store, new run dir.
- requests-async / requests-sync: bench.baseline's minimal loop (C threads, one Session); async
  follows the same polling rule as the runner, with the runner's own `api.first_poll_s`.
- sdk: Runware's SDK under asyncio.gather with Semaphore(C), its default delivery (async);
  sdk-sync: the same with deliveryMethod=sync (informative).

The figure of each is the median images/s over the repeats (the SDK runs once: it is slow).
`--profile FILE` writes a cProfile of one runner-async run instead.
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    child,
    cpu_s,
    emit,
    emulator_process,
    peak_rss_mb,
    run_config,
    run_real,
    warm_imports,
)
from bench.common import seed_sweep as make_sweep
from pipeline import rundir


def run_once(url: str, images: int, concurrency: int, delivery: str) -> dict[str, Any]:
    """One real run of `images` seed cells into an empty store and a new run dir."""
    warm_imports()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = run_config(
            make_sweep(images),
            base_url=url,
            store_dir=root / "store",
            concurrency=concurrency,
            delivery=delivery,
        )
        cpu0 = cpu_s()
        run = run_real(cfg, root / "run")
        cpu = cpu_s() - cpu0
        written = sum(1 for _ in (root / "run" / rundir.IMAGES_DIR).iterdir())
    if run.code != 0 or written != images:
        raise SystemExit(f"run failed (exit {run.code}, {written} images):\n{run.output[-2000:]}")
    return {
        "kind": "runner",
        "delivery": delivery,
        "images": images,
        "concurrency": concurrency,
        "wall_s": round(run.wall_s, 3),
        "runner_wall_s": round(run.runner_wall_s, 3),  # Runner.run alone: no plan, no manifest
        "images_per_s": round(images / run.wall_s, 1),
        "cpu_ms_per_image": round(cpu / images * 1000, 2),  # this process, all threads
        "peak_mb": round(peak_rss_mb(), 1),
    }


def profile_once(url: str, images: int, concurrency: int, out: Path) -> dict[str, Any]:
    """Run once with a cProfile per thread (main, workers, pollers), merged into `out`."""
    import pstats
    import threading

    profiles = [cProfile.Profile()]

    def start_thread(*_: Any) -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()  # replaces this hook for the new thread

    threading.setprofile(start_thread)
    profiles[0].enable()
    try:
        result = run_once(url, images, concurrency, "async")
    finally:
        profiles[0].disable()
        threading.setprofile(None)
    stats = pstats.Stats(profiles[0])
    for prof in profiles[1:]:
        stats.add(prof)
    stats.dump_stats(str(out))
    return result


def runner_first_poll_s() -> float:
    """The runner's `api.first_poll_s` in the config it runs with (the loop waits as long)."""
    warm_imports()  # registers the config schemas
    cfg = run_config(make_sweep(1), base_url="", store_dir=Path("unused"), concurrency=1)
    return float(cfg["api"]["first_poll_s"])


def contender(
    name: str, images: int, concurrency: int, first_poll_s: float = 1.0
) -> dict[str, Any]:
    """Start a fresh emulator process and run one contender in a fresh child process."""
    kind, _, delivery = name.partition("-")
    with emulator_process(0.0) as url:
        common = ["--url", url, "--images", str(images), "--concurrency", str(concurrency)]
        if kind == "runner":
            return child("runner", "--one", delivery, *common)
        if kind == "requests":
            wait = ["--first-poll-s", repr(first_poll_s)]
            return child("baseline", "--kind", "requests", "--delivery", delivery, *wait, *common)
        return child("baseline", "--kind", "sdk", "--delivery", delivery or "default", *common)


def main() -> None:
    """Measure every contender; RESULT has images/s of each and the ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sdk-images", type=int, help="images for the SDK (default: --images)")
    parser.add_argument("--one", choices=("async", "sync"), help="child: one runner run")
    parser.add_argument("--url", help="child: the emulator to use")
    parser.add_argument("--profile", type=Path, help="write a cProfile of one runner-async run")
    args = parser.parse_args()
    if args.one:
        emit(run_once(args.url, args.images, args.concurrency, args.one))
        return
    if args.profile:
        with emulator_process(0.0) as url:
            emit(profile_once(url, args.images, args.concurrency, args.profile))
        return

    fast = ["runner-async", "requests-async", "runner-sync", "requests-sync", "sdk-sync"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*fast, "sdk"]}
    first_poll_s = runner_first_poll_s()
    for _ in range(args.repeats):  # interleaved, so slow phases of a noisy machine hit all
        for name in fast:
            runs[name].append(contender(name, args.images, args.concurrency, first_poll_s))
    runs["sdk"].append(contender("sdk", args.sdk_images or args.images, args.concurrency))

    rate = {name: statistics.median(r["images_per_s"] for r in rs) for name, rs in runs.items()}
    result: dict[str, Any] = {
        "images": args.images,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "first_poll_s": first_poll_s,
        "images_per_s": rate,
        "all_images_per_s": {n: [r["images_per_s"] for r in rs] for n, rs in runs.items()},
        "runner_only_images_per_s": {
            name: round(statistics.median(r["images"] / r["runner_wall_s"] for r in runs[name]), 1)
            for name in ("runner-async", "runner-sync")
        },
        "cpu_ms_per_image": {
            name: statistics.median(r["cpu_ms_per_image"] for r in rs) for name, rs in runs.items()
        },
        "sdk_delivery": runs["sdk"][0]["delivery"],
        "sdk_images": runs["sdk"][0]["images"],
        "ratio_async": round(rate["runner-async"] / rate["requests-async"], 3),
        "ratio_sync": round(rate["runner-sync"] / rate["requests-sync"], 3),
        "ratio_sdk": round(rate["runner-async"] / rate["sdk"], 2),
        "ratio_sdk_sync": round(rate["runner-sync"] / rate["sdk-sync"], 3),
    }
    emit(result)


if __name__ == "__main__":
    main()
