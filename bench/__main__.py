"""`python -m bench`: run every benchmark in its own process and print one Markdown table.

    python -m bench [--only plan,runner,latency,polling,rerun,report,shards,explorer]
                    [--quick] [--out FILE]

The table (benchmark | figure | target | ratio/ok) is also written to bench/results.md (or --out).
`--quick` runs small sizes for a smoke run: figures are real, the targets are not at their sizes;
it only prints the table (it writes a file only with --out, never the tracked bench/results.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, child, machine

Row = tuple[str, str, str, str]  # benchmark | figure | target | ratio/ok
NAMES = ("plan", "runner", "latency", "polling", "rerun", "report", "shards", "explorer")


def _ok(passed: bool) -> str:
    return "ok" if passed else "MISS"


def _rate(value: float) -> str:
    return f"{value:,.1f} img/s"


# -- one function per benchmark: (child arguments, rows from its RESULT) -----------------------


def plan_args(quick: bool) -> list[str]:
    """bench.plan: the 100k-cell sweep (quick: 1 seed → 20,000 cells)."""
    return ["--seeds", "1"] if quick else []


def plan_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """Plan N cells: wall and peak memory vs 10 s per 100k cells and 1 GiB."""
    limit = 10.0 * r["cells"] / 100_000
    passed = r["wall_s"] <= limit and r["peak_mb"] <= 1024
    return [
        (
            f"plan {r['cells']:,} cells",
            f"{r['wall_s']:.2f} s ({r['us_per_cell']:.0f} µs/cell), peak {r['peak_mb']:.0f} MiB",
            f"≤ {limit:g} s, ≤ 1 GiB",
            f"{r['wall_s'] / limit:.2f} of the time · {_ok(passed)}",
        )
    ]


def runner_args(quick: bool) -> list[str]:
    """bench.runner: 400 images at concurrency 8, 3 interleaved repeats."""
    if quick:
        return ["--images", "40", "--repeats", "1", "--sdk-images", "16"]
    return ["--images", "400", "--concurrency", "8", "--repeats", "3"]


def runner_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """Runner vs the requests loop (async and sync), vs the SDK (its default), SDK sync (info)."""
    rate = r["images_per_s"]
    only = r["runner_only_images_per_s"]
    size = f"{r['images']} images, C={r['concurrency']}, median of {r['repeats']}"

    def versus(ours: str, theirs: str, label: str) -> str:
        return (
            f"runner {_rate(rate[ours])} (Runner alone {_rate(only[ours])}) vs "
            f"{label} {_rate(rate[theirs])}"
        )

    return [
        (
            f"runner vs requests loop, async+getResponse, both first-poll "
            f"{r.get('first_poll_s', 1.0):g} s ({size})",
            versus("runner-async", "requests-async", "loop"),
            "≥ 0.8×",
            f"{r['ratio_async']:.2f}× · {_ok(r['ratio_async'] >= 0.8)}",
        ),
        (
            "runner vs requests loop, sync (api.delivery=sync)",
            versus("runner-sync", "requests-sync", "loop"),
            "≥ 0.8×",
            f"{r['ratio_sync']:.2f}× · {_ok(r['ratio_sync'] >= 0.8)}",
        ),
        (
            f"runner vs Runware SDK, asyncio.gather ({r['sdk_images']} images)",
            f"runner {_rate(rate['runner-async'])} vs SDK {_rate(rate['sdk'])} "
            f"(SDK delivery: {r['sdk_delivery']})",
            "> 1×",
            f"{r['ratio_sdk']:.1f}× · {_ok(r['ratio_sdk'] > 1)}",
        ),
        (
            "runner sync vs Runware SDK sync (info)",
            f"runner {_rate(rate['runner-sync'])} vs SDK {_rate(rate['sdk-sync'])} "
            "(deliveryMethod=sync)",
            "—",
            f"{r['ratio_sdk_sync']:.2f}× · info",
        ),
    ]


def latency_args(quick: bool) -> list[str]:
    """bench.latency: 320 images, 2 s latency, concurrency 32 (quick: 32 images, 0.5 s, C=8)."""
    if quick:
        return ["--images", "32", "--latency", "0.5", "--concurrency", "8"]
    return ["--images", "320", "--latency", "2", "--concurrency", "32"]


def latency_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """Wall vs ideal at a fixed emulator latency."""
    return [
        (
            f"latency-bound: {r['images']} images, {r['latency_s']:g} s latency, "
            f"C={r['concurrency']}",
            f"wall {r['wall_s']:.2f} s vs ideal {r['ideal_s']:g} s",
            f"≥ 0.9 (wall ≤ {r['ideal_s'] / 0.9:.1f} s)",
            f"{r['efficiency']:.3f} · {_ok(r['efficiency'] >= 0.9)}",
        )
    ]


def polling_args(quick: bool) -> list[str]:
    """bench.polling: 1,000 images at 6 s (fixed, lognormal σ 0.4), C=64 and 256, with the SDK."""
    if quick:
        return ["--images", "24", "--latency", "0.5", "--concurrency", "8"]
    return ["--images", "1000", "--latency", "6", "--sigma", "0.4", "--concurrency", "64,256"]


def polling_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """Per shape and C: ≥ 0.95 of ideal (one canary period allowed), ≤ 1.5 polls/image (fixed)."""
    rows: list[Row] = []
    for entry in r["rows"]:
        run, sdk = entry["runner"], entry.get("sdk")
        shape = "fixed" if not entry["sigma"] else f"lognormal σ {entry['sigma']:g}"
        figure = (
            f"runner wall {run['wall_s']:.1f} s vs ideal {run['ideal_s']:.1f} s "
            f"({run['efficiency']:.3f}), {run['polls_per_image']:.2f} polls/image"
        )
        # One canary period allowed: the wall less one latency period against the ideal.
        canary = run["ideal_s"] / max(run["wall_s"] - r["latency_s"], 1e-9)
        passed = canary >= 0.95
        target = "≥ 0.95 of ideal (one canary period allowed)"
        if not entry["sigma"]:
            passed = passed and run["polls_per_image"] <= 1.5
            target += ", ≤ 1.5 polls/image"
        if sdk is not None:
            figure += (
                f"; SDK wall {sdk['wall_s']:.1f} s ({sdk['efficiency']:.3f}), "
                f"{sdk['polls_per_image']:.2f} polls/image"
            )
            passed = passed and run["polls_per_image"] < sdk["polls_per_image"]
            target += ", fewer polls than the SDK"
        rows.append(
            (
                f"polling: {entry['images']:,} images, {r['latency_s']:g} s {shape}, "
                f"C={entry['concurrency']}",
                figure,
                target,
                f"{run['efficiency']:.3f} ({min(canary, 1.0):.3f} less a canary) · {_ok(passed)}",
            )
        )
    return rows


def rerun_args(quick: bool) -> list[str]:
    """bench.rerun: a finished 10,000-cell sweep (quick: 300)."""
    return ["--cells", "300"] if quick else ["--cells", "10000"]


def rerun_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """Rerun wall vs 5 s per 10k cells; requests must be zero."""
    limit = 5.0 * r["cells"] / 10_000
    passed = r["rerun_wall_s"] <= limit and r["zero_requests"]
    return [
        (
            f"rerun of a finished {r['cells']:,}-cell sweep",
            f"{r['rerun_wall_s']:.2f} s (Runner alone {r['rerun_runner_wall_s']:.2f} s; "
            f"again: {r['rerun2_wall_s']:.2f} s); "
            f"{r['new_charges']} new ledger lines, {r['rerun2_posts']} POSTs",
            f"≤ {limit:g} s, 0 requests",
            f"{r['rerun_wall_s'] / limit:.2f} of the time · {_ok(passed)}",
        )
    ]


def other_rows(name: str) -> Callable[[dict[str, Any], bool], list[Row]]:
    """Rows of a benchmark written elsewhere: its own `rows`, else figure/target/ok, else keys."""

    def rows(r: dict[str, Any], quick: bool) -> list[Row]:
        if isinstance(r.get("rows"), list):
            return [
                (
                    str(x.get("benchmark", name)),
                    str(x.get("figure", "")),
                    str(x.get("target", "—")),
                    str(x.get("ok", x.get("ratio", ""))),
                )
                for x in r["rows"]
            ]
        if "figure" in r:
            ok = r.get("ok")
            mark = ok if isinstance(ok, str) else ("" if ok is None else _ok(bool(ok)))
            ratio = f"{r['ratio']} · " if "ratio" in r else ""
            return [(name, str(r["figure"]), str(r.get("target", "—")), ratio + mark)]
        shown = ", ".join(f"{k}={v}" for k, v in r.items() if not isinstance(v, dict | list))
        return [(name, shown, "—", "info")]

    return rows


def report_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """bench.report (written elsewhere): load a synthetic manifest, every table, the CSVs."""
    try:
        return [
            (
                f"report: {r['rows']:,}-row manifest",
                f"{r['wall_s']:.2f} s (load {r['load_s']:.2f} s, tables {r['tables_s']:.2f} s, "
                f"CSV {r['csv_s']:.2f} s), peak {r['peak_mb']:.0f} MiB",
                "—",
                "info",
            )
        ]
    except (KeyError, TypeError, ValueError):
        return other_rows("report")(r, quick)


def shards_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """bench.shards (written elsewhere): 1, 2 and 4 joblib shards against one latent emulator."""
    try:
        return [
            (
                f"shards: {r['cells']} cells, {r['latency_s']:g} s latency, "
                f"C={r['concurrency_per_shard']} per shard",
                f"1 shard {r['shards_1_s']:.1f} s, 2 shards {r['shards_2_s']:.1f} s, "
                f"4 shards {r['shards_4_s']:.1f} s",
                "—",
                f"4 shards: {r['speedup_4']:.2f}× · info",
            )
        ]
    except (KeyError, TypeError, ValueError):
        return other_rows("shards")(r, quick)


def _has_option(name: str, option: str) -> bool:
    return option in (REPO / "bench" / f"{name}.py").read_text()


def report_args(quick: bool) -> list[str]:
    """bench.report: its defaults (quick: 10,000 rows when it has --rows)."""
    return ["--rows", "10000"] if quick and _has_option("report", "--rows") else []


def shards_args(quick: bool) -> list[str]:
    """bench.shards: its defaults (quick: 48 cells when it has --cells)."""
    return ["--cells", "48"] if quick and _has_option("shards", "--cells") else []


def explorer_args(quick: bool) -> list[str]:
    """bench.explorer: 1,000 and 10,000 images (quick: 200)."""
    return ["--images", "200"] if quick else ["--images", "1000,10000"]


def explorer_rows(r: dict[str, Any], quick: bool) -> list[Row]:
    """Report with the explorer (cold, rerun) and page load in Chromium, per size; 1,000 ≤ 60 s."""
    rows: list[Row] = []
    for size in r["sizes"]:
        n = size["images"]
        page = (
            f"; page: grid drawn {size['page_ready_ms'] / 1000:.2f} s, axes swapped in "
            f"{size['swap_ms']} ms, detail panel {size['detail_ms']} ms, "
            f"{size['console_errors']} console errors, {size['outside_requests']} outside requests"
            if "page_ready_ms" in size
            else ""
        )
        figure = (
            f"report {size['report_s']:.1f} s (CPU {size['report_cpu_s']:.0f} s), rerun "
            f"{size['rerun_s']:.1f} s (thumbnails reused){page}; load avg {size['load_avg']:g}"
        )
        if n == 1000:
            rows.append(
                (
                    f"report + explorer: {n:,} images",
                    figure,
                    "≤ 60 s",
                    f"{size['report_s'] / 60:.2f} of the time · {_ok(size['report_s'] <= 60)}",
                )
            )
        else:
            rows.append((f"report + explorer: {n:,} images", figure, "—", "info"))
    return rows


BENCHMARKS: dict[str, tuple[Callable[[bool], list[str]], Callable[..., list[Row]]]] = {
    "plan": (plan_args, plan_rows),
    "runner": (runner_args, runner_rows),
    "latency": (latency_args, latency_rows),
    "polling": (polling_args, polling_rows),
    "rerun": (rerun_args, rerun_rows),
    "report": (report_args, report_rows),
    "shards": (shards_args, shards_rows),
    "explorer": (explorer_args, explorer_rows),
}


def run_one(name: str, quick: bool) -> tuple[list[Row], float]:
    """Run one benchmark in a child process; its rows (or a row saying why not) and seconds."""
    if not (REPO / "bench" / f"{name}.py").exists():
        return [(name, "not available", "—", "—")], 0.0
    make_args, make_rows = BENCHMARKS[name]
    start = time.perf_counter()
    try:
        result = child(name, *make_args(quick), timeout=3600)
        rows = make_rows(result, quick)
    except Exception as exc:  # one failing benchmark must not hide the others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        rows = [(name, f"failed: {first[:200]}", "—", "FAILED")]
    return rows, time.perf_counter() - start


def table(rows: list[Row], quick: bool) -> str:
    """The Markdown table with the machine line and the date."""
    escape = str.maketrans({"|": "\\|"})
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    note = "  \n**Quick run**: small sizes; targets scaled or not meaningful." if quick else ""
    lines = [
        "| benchmark | figure | target | ratio/ok |",
        "|---|---|---|---|",
        *("| " + " | ".join(cell.translate(escape) for cell in row) + " |" for row in rows),
        "",
        f"Machine: {machine()}  ",
        f"Date: {date}{note}",
    ]
    return "\n".join(lines) + "\n"


RESULTS = REPO / "bench" / "results.md"  # the tracked table of the latest full run


def output_path(out: Path | None, quick: bool) -> Path | None:
    """Where the table is written: --out, else bench/results.md for a full run, else nowhere."""
    if out is not None:
        return out
    return None if quick else RESULTS


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, print the table, write it to a file; 1 if one failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the table here (default: bench/results.md)"
    )
    args = parser.parse_args(argv)
    names = list(NAMES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(NAMES)}")
    rows: list[Row] = []
    failed = False
    for name in names:
        print(f"running bench.{name} …", file=sys.stderr, flush=True)
        got, seconds = run_one(name, args.quick)
        failed = failed or any(row[3] == "FAILED" for row in got)
        print(f"  done in {seconds:.0f} s", file=sys.stderr, flush=True)
        rows.extend(got)
    text = table(rows, args.quick)
    print(text, end="", flush=True)
    out = output_path(args.out, args.quick)
    if out is not None:
        out.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
