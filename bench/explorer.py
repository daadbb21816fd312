"""Explorer benchmark: krea-report on N real 1024×1024 JPEGs (cold, rerun), page load in Chromium.

    python -m bench.explorer [--images 1000,10000] [--no-browser]

For each size: a synthetic run dir (bench.report's manifest, five axes, ~3% failed, ~5% cached;
each image a distinct 1024×1024 JPEG file) → `report_job` timed cold (thumbnails made) and again
(thumbnails reused) → headless Chromium (Playwright, Debian's chromium) opens
`index.html#x=settings.creativity&y=inputs.referenceImages[0].strength`: time to the explorer's
first drawn grid, the redraw after swapping the axes (in the page), and a click to a filled
detail panel.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import cpu_s, emit, peak_rss_mb
from bench.report import AXES, synthetic_manifest
from pipeline import manifest, report, rundir

BASES = 24  # distinct pictures; every file still differs (a unique comment), as do their hashes


def base_jpegs(n: int) -> list[bytes]:
    """`n` different 1024×1024 JPEGs (noise over colour fields: not trivially compressible)."""
    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        field = np.zeros((1024, 1024, 3), dtype=np.uint8)
        field[..., 0] = (np.arange(1024) * (k + 1) % 256).astype(np.uint8)[None, :]
        field[..., 1] = (np.arange(1024) * 3 % 256).astype(np.uint8)[:, None]
        field[..., 2] = rng.integers(0, 256, (1024, 1024), dtype=np.uint8) // 4 + 40 * (k % 5)
        buf = io.BytesIO()
        Image.fromarray(field).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_run(run_dir: Path, images: int) -> int:
    """A run dir of `images` manifest rows and their JPEG files; how many files were written."""
    frame = synthetic_manifest(images, seed=11)
    bases = base_jpegs(BASES)
    written = 0
    shas: list[str | None] = []
    (run_dir / rundir.IMAGES_DIR).mkdir(parents=True)
    for k, rel in enumerate(frame["image_path"].astype(object).tolist()):
        if not isinstance(rel, str):
            shas.append(None)
            continue
        data = bases[k % BASES]
        data = data[:2] + b"\xff\xfe\x00\x0a" + k.to_bytes(8, "big") + data[2:]  # COM segment
        (run_dir / rel).write_bytes(data)
        shas.append(hashlib.sha256(data).hexdigest())
        written += 1
    frame["image_sha256"] = frame["image_sha256"].astype(object)
    frame["image_sha256"] = shas
    frame["image_sha256"] = frame["image_sha256"].astype("string")
    manifest.write(frame, run_dir)
    header = {"event": "header", "version": 1, "axis_names": AXES}
    (run_dir / rundir.JOURNAL_NAME).write_text(json.dumps(header) + "\n")
    return written


def page_times(out_dir: Path) -> dict[str, Any]:
    """Chromium: ms to the first drawn grid, to redraw with swapped axes, to open a detail panel.

    The detail time is Playwright's click (its actionability checks included) to a filled panel.
    """
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"browser": "chromium not installed"}
    folder = out_dir.resolve().as_uri() + "/"
    outside: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        def route(r: Any) -> None:
            if r.request.url.startswith((folder, "data:")):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        frag = "#x=settings.creativity&y=inputs.referenceImages%5B0%5D.strength"
        t0 = time.perf_counter()
        page.goto(folder + "index.html" + frag, wait_until="commit")
        page.wait_for_selector("#kx[data-ready]", timeout=120_000)
        ready = time.perf_counter()
        page.wait_for_load_state("load", timeout=120_000)
        loaded = time.perf_counter()
        tiles = page.locator(".kx-tile").count()
        swaps = [  # in the page: the redraw (script + style + layout), median of 3
            page.evaluate(
                "() => { const t = performance.now();"
                " document.querySelector('button[data-act=swap]').click();"
                " document.body.offsetHeight; return performance.now() - t; }"
            )
            for _ in range(3)
        ]
        swapped = time.perf_counter()
        page.locator(".kx-tile[data-status=ok]").first.click()
        page.locator(".kx-detail:not([hidden]) .kx-reproduce").wait_for()
        detail = time.perf_counter()
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
        browser.close()
    return {
        "tiles": tiles,
        "page_ready_ms": round((ready - t0) * 1000),
        "page_load_event_ms": round((loaded - t0) * 1000),
        "swap_ms": round(sorted(swaps)[1]),
        "detail_ms": round((detail - swapped) * 1000),
        "js_heap_mb": round(heap / 2**20, 1),
        "console_errors": len(errors),
        "outside_requests": len(outside),
    }


def one(images: int, browser: bool) -> dict[str, Any]:
    """Every figure for one size."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t = time.perf_counter()
        files = make_run(run_dir, images)
        setup = time.perf_counter() - t
        cfg = {"run_dir": str(run_dir), "report": {}}
        with contextlib.redirect_stdout(io.StringIO()):
            t, c = time.perf_counter(), cpu_s()
            report.report_job(cfg)
            cold, cold_cpu = time.perf_counter() - t, cpu_s() - c
            t, c = time.perf_counter(), cpu_s()
            report.report_job(cfg)
            warm, warm_cpu = time.perf_counter() - t, cpu_s() - c
        out = run_dir / rundir.REPORT_DIR
        thumbs = sum(1 for _ in (out / "thumbs").rglob("*.jpg"))
        data_mb = (out / "explorer-data.js").stat().st_size / 2**20
        page = page_times(out) if browser else {}
    return {
        "images": images,
        "files": files,
        "setup_s": round(setup, 1),
        "report_s": round(cold, 2),
        "report_cpu_s": round(cold_cpu, 2),
        "rerun_s": round(warm, 2),
        "rerun_cpu_s": round(warm_cpu, 2),
        "load_avg": round(os.getloadavg()[0], 1),
        "thumbs": thumbs,
        "data_mb": round(data_mb, 2),
        **page,
    }


def main() -> None:
    """Run the sizes asked for and print one RESULT."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default="1000,10000")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.images.split(",") if s.strip()]
    runs = [one(n, not args.no_browser) for n in sizes]
    emit({"sizes": runs, "peak_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
