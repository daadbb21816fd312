"""Baselines for the runner benchmark: a minimal hand-written `requests` loop and Runware's SDK.

    python -m bench.baseline --url URL --kind requests --delivery async --images 400
    python -m bench.baseline --url URL --kind sdk --images 400      # SDK default delivery: async

Both send the same Krea 2 Large tasks as the runner (seeds 0 … N-1, includeCost, base64Data
output) with at most C in flight, and write each image to a file. Nothing else: no journal, no
store, no recipe, no manifest, no retries.

The requests loop follows Runware's polling guidance as the runner does (the same protocol):
until it has seen a task complete, no task's first getResponse comes sooner than
`--first-poll-s` (the runner's `api.first_poll_s`, 1 s) after its submit; after that it polls
at once, then every 50 ms. `--first-poll-s 0` gives the old loop that polls at once from the start.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from bench.common import cpu_s, emit, peak_rss_mb

MODEL = "krea:krea@2-large"
PROMPT = "a lighthouse on a cliff at dusk"
POLL_EVERY_S = 0.05
FIRST_POLL_S = 1.0  # the default of the runner's api.first_poll_s (bench.runner passes its value)


def task(seed: int, delivery: str | None) -> dict[str, Any]:
    """One imageInference task as the runner sends it (without a taskUUID/delivery if None)."""
    body: dict[str, Any] = {
        "taskType": "imageInference",
        "model": MODEL,
        "positivePrompt": PROMPT,
        "width": 1024,
        "height": 1024,
        "numberResults": 1,
        "seed": seed,
        "includeCost": True,
        "outputType": "base64Data",
    }
    if delivery is not None:
        body["deliveryMethod"] = delivery
    return body


def requests_loop(
    url: str, n: int, concurrency: int, out: Path, delivery: str, first_poll_s: float = FIRST_POLL_S
) -> float:
    """N images through a ThreadPoolExecutor of C threads sharing one Session; returns wall s."""
    seen_completion = threading.Event()  # like the runner: first polls wait until one is done
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=concurrency))
    headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}

    def post(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resp = session.post(url, data=json.dumps(tasks), headers=headers, timeout=60)
        resp.raise_for_status()
        return list(resp.json().get("data") or [])

    def one(seed: int) -> None:
        sent = {**task(seed, delivery), "taskUUID": str(uuid.uuid4())}
        submitted = time.monotonic()
        items = post([sent])
        if delivery == "async":
            poll = {"taskType": "getResponse", "taskUUID": sent["taskUUID"]}
            if not seen_completion.is_set():  # no completion seen yet: the first-poll wait
                time.sleep(max(0.0, submitted + first_poll_s - time.monotonic()))
            while True:  # then immediately, then every 50 ms
                items = [i for i in post([poll]) if i.get("status") == "success"]
                if items:
                    seen_completion.set()
                    break
                time.sleep(POLL_EVERY_S)
        data = base64.b64decode(items[0]["imageBase64Data"])
        (out / f"{seed}.jpg").write_bytes(data)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(one, seed) for seed in range(n)]:
            future.result()
    wall = time.perf_counter() - start
    session.close()
    return wall


def sdk_gather(url: str, n: int, concurrency: int, out: Path, delivery: str | None) -> float:
    """N images with Runware's SDK (REST) under asyncio.gather + Semaphore(C); returns wall s."""
    from runware import Runware

    async def main() -> float:
        client = Runware(api_key="bench-key", transport="rest", http_base_url=url, validate=False)
        gate = asyncio.Semaphore(concurrency)

        async def one(seed: int) -> None:
            async with gate:
                items = await client.run(task(seed, delivery))
            data = base64.b64decode(items[0]["imageBase64Data"])
            (out / f"{seed}.jpg").write_bytes(data)

        try:
            start = time.perf_counter()
            await asyncio.gather(*(one(seed) for seed in range(n)))
            return time.perf_counter() - start
        finally:
            await client.close()

    return asyncio.run(main())


def main() -> None:
    """Run one baseline against an emulator URL; RESULT has images/s."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=("requests", "sdk"), required=True)
    parser.add_argument("--delivery", choices=("async", "sync", "default"), default="async")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--first-poll-s",
        type=float,
        default=FIRST_POLL_S,
        help="requests loop: first-poll wait until a completion is seen (the runner's setting)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cpu0 = cpu_s()
        if args.kind == "requests":
            delivery = "async" if args.delivery == "default" else args.delivery
            wall = requests_loop(
                args.url, args.images, args.concurrency, out, delivery, args.first_poll_s
            )
        else:
            # "default": send no deliveryMethod; the SDK then sends `async` (protocol §9).
            delivery = "async (SDK default)" if args.delivery == "default" else args.delivery
            sent = None if args.delivery == "default" else args.delivery
            wall = sdk_gather(args.url, args.images, args.concurrency, out, sent)
        cpu = cpu_s() - cpu0
        written = sum(1 for _ in out.iterdir())
    if written != args.images:
        raise SystemExit(f"wrote {written} images, expected {args.images}")
    emit(
        {
            "kind": args.kind,
            "delivery": delivery,
            "images": args.images,
            "concurrency": args.concurrency,
            "wall_s": round(wall, 3),
            "images_per_s": round(args.images / wall, 1),
            "cpu_ms_per_image": round(cpu / args.images * 1000, 2),
            "peak_mb": round(peak_rss_mb(), 1),
        }
    )


if __name__ == "__main__":
    main()
