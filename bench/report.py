"""Report benchmark: load a synthetic 100,000-row manifest, compute every table, write the CSVs."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from bench.common import emit, peak_rss_mb
from pipeline import manifest, rundir
from pipeline.reporting.data import load
from pipeline.reporting.tables import make_tables, write_tables
from pipeline.reporting.text import format_tables

AXES = [
    "vars.style",
    "settings.creativity",
    "inputs.referenceImages[0].strength",
    "width",
    "height",
]
STYLES = [f"style {i:02d}" for i in range(50)]
LEVELS = ["raw", "low", "medium", "high"]
STRENGTHS = [-1.0, -0.5, 0.0, 0.5, 1.0]
SIZES = [(1024, 1024), (1376, 768)]
CODES = ["timeout", "http_503", "http_500", "missingResults", "invalidPositivePrompt"]
NONE = np.array(None, dtype=object)  # a missing value np.where can broadcast (and mypy accepts)


def _column(values: Any, rows: int, dtype: str) -> Any:
    """A typed pandas array of `rows` values (a scalar is repeated; NaN becomes NA)."""
    items = np.broadcast_to(np.asarray(values, dtype=object), (rows,))
    clean = [None if isinstance(v, float) and np.isnan(v) else v for v in items]
    return pd.array(clean, dtype=cast(Any, dtype))


def synthetic_manifest(rows: int, seed: int = 7) -> pd.DataFrame:
    """A manifest of `rows` one-image cells over five axes, ~3% failed and ~5% cached."""
    rng = np.random.default_rng(seed)
    i = np.arange(rows)
    status = np.where(rng.random(rows) < 0.03, "failed", "ok").astype(object)
    status[(status == "ok") & (rng.random(rows) < 0.05)] = "cached"
    ok, failed, cached = status == "ok", status == "failed", status == "cached"
    size = i % len(SIZES)
    width = np.array([s[0] for s in SIZES])[size]
    height = np.array([s[1] for s in SIZES])[size]
    strength = np.array(STRENGTHS)[(i // 2) % len(STRENGTHS)]
    level = np.array(LEVELS, dtype=object)[(i // 10) % len(LEVELS)]
    style = np.array(STYLES, dtype=object)[(i // 40) % len(STYLES)]
    estimate = np.where(strength == 0.0, 0.06, 0.065)
    cost = np.where(ok, estimate + rng.choice([0.0, 0.0, 0.0005], rows), np.nan)
    cost[cached] = 0.0
    latency = np.where(cached, np.nan, rng.lognormal(0.0, 0.4, rows) * 4)
    start = pd.Timestamp("2025-01-01T00:00:00Z") + pd.to_timedelta(i * 0.05, unit="s")
    end = start + pd.to_timedelta(np.nan_to_num(latency), unit="s")
    iso = "%Y-%m-%dT%H:%M:%S.%fZ"
    cell_id = np.array([f"{k:020x}" for k in rng.integers(0, 2**62, rows)], dtype=object)
    code = np.where(failed, np.array(CODES, dtype=object)[i % len(CODES)], NONE)
    prompt = np.array([f"a lighthouse on a cliff at dusk, {s}" for s in STYLES], dtype=object)
    data: dict[str, Any] = {
        "cell_id": cell_id,
        "cell_index": i,
        "result_index": np.zeros(rows, dtype=int),
        "status": status,
        "seed": 1000 + i,
        "positivePrompt": prompt[(i // 40) % len(STYLES)],
        "width": width,
        "height": height,
        "settings.creativity": level,
        "numberResults": np.ones(rows, dtype=int),
        "reference_count": np.ones(rows, dtype=int),
        "vars.style": style,
        "inputs.referenceImages[0].strength": strength,
        "task_uuid": np.where(cached, NONE, cell_id),
        "image_uuid": np.where(failed, NONE, cell_id),
        "image_path": np.where(failed, NONE, "images/" + cell_id + "-0.jpg"),
        "image_sha256": np.where(failed, NONE, "ab" * 32),
        "cost_usd": cost,
        "estimated_cost_usd": estimate,
        "original_cost_usd": np.where(failed, np.nan, estimate),
        "attempts": np.where(cached, 0, 1),
        "latency_s": latency,
        "error_code": code,
        "error_message": np.where(failed, "the request failed: " + code.astype(str), NONE),
        "submitted_at": np.where(cached, NONE, start.strftime(iso).to_numpy()),
        "finished_at": end.strftime(iso).to_numpy(),
        "backend": "emulator",
        "model": "krea:krea@2-large",
        "nsfw": None,
        "request_json": '{"model":"krea:krea@2-large"}',
    }
    columns = manifest.column_names(AXES)
    dtypes = {**manifest.COLUMNS, "vars.style": "string",
              "inputs.referenceImages[0].strength": "Float64"}  # fmt: skip
    frame = pd.DataFrame({c: _column(data[c], rows, dtypes[c]) for c in columns})
    return frame


def main() -> None:
    """Time load + every table + CSV for a synthetic manifest (default 100,000 rows)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        frame = synthetic_manifest(args.rows)
        manifest.write(frame, run_dir)
        header = {"event": "header", "version": 1, "axis_names": AXES}
        (run_dir / rundir.JOURNAL_NAME).write_text(json.dumps(header) + "\n")
        start = time.perf_counter()
        data = load([run_dir])
        loaded = time.perf_counter()
        tables = make_tables(data)
        text = format_tables(tables, data)
        computed = time.perf_counter()
        write_tables(tables, run_dir / rundir.REPORT_DIR)
        done = time.perf_counter()
        totals = tables[0].frame.iloc[0]
        expected = float(frame["cost_usd"].sum())
    assert abs(float(totals["billed_usd"]) - expected) < 0.005, (totals["billed_usd"], expected)
    emit(
        {
            "rows": len(data.frame),
            "tables": len(tables),
            "wall_s": round(done - start, 2),
            "load_s": round(loaded - start, 2),
            "tables_s": round(computed - loaded, 2),
            "csv_s": round(done - computed, 2),
            "peak_mb": round(peak_rss_mb(), 1),
            "billed_usd": round(float(totals["billed_usd"]), 2),
            "text_lines": text.count("\n") + 1,
        }
    )


if __name__ == "__main__":
    main()
