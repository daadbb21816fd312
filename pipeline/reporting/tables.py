"""The report's tables: totals, billed vs estimated, one per axis, failures — numbers only.

Conventions (the numbers the tables show):
- images = ok + cached rows; failed images = the images a failed row stands for
  (numberResults - result_index: a whole-cell failure counts every image of the cell);
  failure rate = failed images / (images + failed images).
- billed = sum of `cost_usd` (null on failed rows, 0 on cached rows); estimated = sum of
  `estimated_cost_usd` over every row; $/image = billed / ok images.
- latency = one value per request (cell and taskUUID), cached rows excluded.
- a frame holding more than one `model` gets a `by model` table (first), so cost, failures and
  latency compare by model even when `model` was not a swept axis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import manifest, models, sheets
from pipeline.reporting.data import ReportData
from pipeline.rundir import PRECEDENCE, concat_frames
from pipeline.sheets import RUN

MODEL = "model"
SIZE = "width×height"
MONEY_PLACES = 9  # sums are rounded to nano-dollars: no float noise, exact to the cent


@dataclass(frozen=True)
class Table:
    """One result table: file stem, heading, data, and its grouping column (by-axis tables)."""

    name: str
    title: str
    frame: pd.DataFrame
    key: str | None = None


def _factor(series: pd.Series[Any]) -> tuple[np.ndarray[Any, Any], Any]:
    """Integer codes (NA is a group) and uniques; numbers ascending, anything else first-seen."""
    codes, uniques = pd.factorize(series, sort=sheets.is_numeric(series), use_na_sentinel=False)
    return np.asarray(codes), uniques


def numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-row numeric columns every table sums (same index as `frame`)."""
    status = frame["status"].astype(object).to_numpy()
    ok = status == "ok"
    cached = status == "cached"
    failed = status == "failed"
    n_results = frame["numberResults"].astype("Float64").to_numpy(dtype="float64", na_value=1.0)
    came_back = frame["result_index"].astype("Float64").to_numpy(dtype="float64", na_value=0.0)
    failed_images = np.where(failed, np.maximum(1.0, n_results - came_back), 0.0)
    live = ~cached
    t0 = pd.to_datetime(frame["submitted_at"], utc=True, format="ISO8601", errors="coerce")
    t1 = pd.to_datetime(frame["finished_at"], utc=True, format="ISO8601", errors="coerce")
    return pd.DataFrame(
        {
            "cell_id": frame["cell_id"].to_numpy(),
            "_ok": ok.astype("int64"),
            "_cached": cached.astype("int64"),
            "_failed": failed.astype("int64"),
            "_failed_images": failed_images.astype("int64"),
            "_billed": frame["cost_usd"].astype("Float64").to_numpy("float64", na_value=0.0),
            "_estimated": frame["estimated_cost_usd"]
            .astype("Float64")
            .to_numpy("float64", na_value=0.0),
            "_t0": t0.where(live),
            "_t1": t1.where(live),
        },
        index=frame.index,
    )


def request_latencies(frame: pd.DataFrame, by: Sequence[str] = ()) -> np.ndarray[Any, Any]:
    """Row positions holding one latency per request (cell, taskUUID); cached rows excluded."""
    status = frame["status"].astype(object).to_numpy()
    latency = frame["latency_s"].astype("Float64").to_numpy("float64", na_value=np.nan)
    mask = (status != "cached") & np.isfinite(latency)
    positions = np.flatnonzero(mask)
    if not len(positions):
        return positions
    keys = frame.iloc[positions][[*by, "cell_id", "task_uuid"]]
    unique: np.ndarray[Any, Any] = positions[~keys.duplicated().to_numpy()]
    return unique


def _group(
    frame: pd.DataFrame,
    nums: pd.DataFrame,
    lat_pos: np.ndarray[Any, Any],
    keys: Sequence[tuple[str, pd.Series[Any]]],
) -> pd.DataFrame:
    """Counts, money, span and latency quantiles per combination of `keys` (name, values)."""
    if not keys:
        keys = [("_all", pd.Series(np.zeros(len(frame), dtype="int64"), index=frame.index))]
    codes: dict[str, np.ndarray[Any, Any]] = {}
    uniques: dict[str, Any] = {}
    for i, (_, values) in enumerate(keys):
        codes[f"_k{i}"], uniques[f"_k{i}"] = _factor(values)
    names = list(codes)
    grouped = nums.assign(**codes).groupby(names, sort=True)
    agg = grouped.agg(
        cells=("cell_id", "nunique"),
        ok=("_ok", "sum"),
        cached=("_cached", "sum"),
        failed_rows=("_failed", "sum"),
        failed=("_failed_images", "sum"),
        billed_usd=("_billed", "sum"),
        estimated_usd=("_estimated", "sum"),
        t0=("_t0", "min"),
        t1=("_t1", "max"),
    )
    for money_col in ("billed_usd", "estimated_usd"):
        agg[money_col] = agg[money_col].round(MONEY_PLACES)
    latency = frame["latency_s"].astype("Float64").to_numpy("float64", na_value=np.nan)
    lat = pd.DataFrame({n: c[lat_pos] for n, c in codes.items()})
    lat["latency"] = latency[lat_pos]
    lat_groups = lat.groupby(names, sort=True)["latency"]
    agg["latency_p50_s"] = lat_groups.quantile(0.5)
    agg["latency_p95_s"] = lat_groups.quantile(0.95)
    out = agg.reset_index()
    for i, (name, _) in enumerate(keys):
        col = f"_k{i}"
        values = uniques[col].take(out[col].to_numpy())
        out.insert(i, name, values)
    return out.drop(columns=names)


def _rate(numerator: pd.Series[Any], denominator: pd.Series[Any]) -> pd.Series[Any]:
    den = denominator.astype("float64")
    return (numerator.astype("float64") / den.where(den > 0)).astype("float64")


def table_keys(frame: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Grouping keys: model when several, swept axes, the models' columns, references, size."""
    keys = [a for a in axes if a in frame.columns and a != RUN]
    if MODEL not in keys and MODEL in frame.columns and frame[MODEL].nunique() > 1:
        keys.insert(0, MODEL)
    for extra in (*(c.name for c in models.extra_columns()), "reference_count"):
        if extra not in keys and extra in frame.columns:
            keys.append(extra)
    if "width" not in keys and "height" not in keys and {"width", "height"} <= set(frame.columns):
        keys.append(SIZE)
    return keys


def key_values(frame: pd.DataFrame, key: str) -> pd.Series[Any]:
    """The values a table is grouped by (`width×height` is built from the two columns)."""
    if key == SIZE:
        w = frame["width"].astype("string")
        h = frame["height"].astype("string")
        return (w + "×" + h).rename(SIZE)
    return frame[key]


def totals_table(
    data: ReportData, nums: pd.DataFrame, lat_pos: np.ndarray[Any, Any]
) -> pd.DataFrame:
    """One row per run: cells, images, failures, money, wall time, latency."""
    frame = data.frame
    keys = [(b, frame[b]) for b in data.by]
    if len(frame):
        g = _group(frame, nums, lat_pos, keys)
    else:
        g = pd.DataFrame(
            {
                **{b: pd.Series([], dtype=object) for b in data.by},
                **{c: [0] for c in ("cells", "ok", "cached", "failed", "failed_rows")},
                "billed_usd": [0.0],
                "estimated_usd": [0.0],
                "t0": [pd.NaT],
                "t1": [pd.NaT],
                "latency_p50_s": [np.nan],
                "latency_p95_s": [np.nan],
            }
        )
        if data.by:
            g = g.iloc[0:0]
    out = pd.DataFrame({b: g[b] for b in data.by})
    out["cells"] = g["cells"]
    out["images_ok"] = g["ok"]
    out["images_cached"] = g["cached"]
    out["images_failed"] = g["failed"]
    out["failure_rate"] = _rate(g["failed"], g["ok"] + g["cached"] + g["failed"])
    out["billed_usd"] = g["billed_usd"]
    out["estimated_usd"] = g["estimated_usd"]
    out["difference_usd"] = (g["billed_usd"] - g["estimated_usd"]).round(MONEY_PLACES)
    out["latency_p50_s"] = g["latency_p50_s"]
    out["latency_p95_s"] = g["latency_p95_s"]
    out["started_at"] = [manifest.time_text(t) for t in g["t0"]]
    out["finished_at"] = [manifest.time_text(t) for t in g["t1"]]
    out["wall_s"] = [
        (b - a).total_seconds() if pd.notna(a) and pd.notna(b) else np.nan
        for a, b in zip(g["t0"], g["t1"], strict=True)
    ]
    if data.compare:  # a run with no rows yet still gets its line of zeros
        absent = [r for r in data.runs if r not in set(out[RUN].tolist())]
        if absent:
            names = ("cells", "images_ok", "images_cached", "images_failed")
            zeros = {c: [0] * len(absent) for c in names}
            money_cols = {c: [0.0] * len(absent) for c in ("billed_usd", "estimated_usd")}
            extra = pd.DataFrame({RUN: absent, **zeros, **money_cols, "difference_usd": 0.0})
            out = concat_frames([out, extra])
            order = {r: i for i, r in enumerate(data.runs)}
            out = out.sort_values(RUN, key=lambda col: col.map(order), kind="stable")
    if data.planned:
        counts = _not_run_counts(data)
        runs = out[RUN] if data.compare else pd.Series([data.runs[0]] * len(out))
        out["not_run_cells"] = [
            counts.get(r, 0) if r in data.planned else None for r in runs.tolist()
        ]
        out["not_run_cells"] = out["not_run_cells"].astype("Int64")
    return out.reset_index(drop=True)


def _not_run_counts(data: ReportData) -> dict[str, int]:
    nr = data.not_run
    if not len(nr):
        return {}
    if data.compare:
        return {str(k): int(v) for k, v in nr.groupby(RUN)["cell_id"].nunique().items()}
    return {data.runs[0]: int(nr["cell_id"].nunique())}


def billed_table(data: ReportData, nums: pd.DataFrame) -> pd.DataFrame:
    """Billed vs estimated per status (ok, cached, failed) and in total, per run."""
    frame = data.frame
    rows: list[dict[str, Any]] = []
    parts: list[tuple[str | None, pd.Index[Any]]]
    if data.compare:
        parts = [(r, frame.index[(frame[RUN] == r).to_numpy()]) for r in data.runs]
    else:
        parts = [(None, frame.index)]
    status = frame["status"].astype(object)
    for run, idx in parts:
        for name in (*PRECEDENCE, "total"):
            sel = idx if name == "total" else idx[(status.loc[idx] == name).to_numpy()]
            n = nums.loc[sel]
            images = int((n["_ok"] + n["_cached"] + n["_failed_images"]).sum())
            billed = round(float(n["_billed"].sum()), MONEY_PLACES)
            estimated = round(float(n["_estimated"].sum()), MONEY_PLACES)
            row: dict[str, Any] = {RUN: run} if data.compare else {}
            row.update(
                status=name,
                rows=len(sel),
                images=images,
                billed_usd=billed,
                estimated_usd=estimated,
                difference_usd=round(billed - estimated, MONEY_PLACES),
            )
            rows.append(row)
    return pd.DataFrame(rows)


def axis_table(
    data: ReportData, nums: pd.DataFrame, lat_pos: np.ndarray[Any, Any], key: str
) -> pd.DataFrame:
    """Images, failures, cost and latency per value of `key` (per run too when comparing)."""
    frame = data.frame
    keys = [(b, frame[b]) for b in data.by] + [(key, key_values(frame, key))]
    if not len(frame):
        return pd.DataFrame(
            columns=[
                *data.by,
                key,
                *("cells", "images", "failed", "failure_rate", "billed_usd", "estimated_usd"),
                *("usd_per_image", "latency_p50_s", "latency_p95_s"),
            ]
        )
    g = _group(frame, nums, lat_pos, keys)
    out = g[[*data.by, key, "cells"]].copy()
    out["images"] = g["ok"] + g["cached"]
    out["failed"] = g["failed"]
    out["failure_rate"] = _rate(g["failed"], out["images"] + g["failed"])
    out["billed_usd"] = g["billed_usd"]
    out["estimated_usd"] = g["estimated_usd"]
    out["usd_per_image"] = _rate(g["billed_usd"], g["ok"])
    out["latency_p50_s"] = g["latency_p50_s"]
    out["latency_p95_s"] = g["latency_p95_s"]
    return out


def failures_table(data: ReportData, nums: pd.DataFrame) -> pd.DataFrame:
    """Failed rows by error code: count, images, an example message and cell."""
    frame = data.frame
    columns = [*data.by, "error_code", "rows", "images", "example_message", "example_cell_id"]
    if not len(frame):
        return pd.DataFrame(columns=columns)
    failed = (frame["status"].astype(object) == "failed").to_numpy()
    if not failed.any():
        return pd.DataFrame(columns=columns)
    sub = frame.loc[failed, [*data.by, "error_code", "error_message", "cell_id"]].copy()
    sub["error_code"] = sub["error_code"].astype(object).where(sub["error_code"].notna(), "unknown")
    sub["_images"] = nums.loc[failed, "_failed_images"].to_numpy()
    g = sub.groupby([*data.by, "error_code"], sort=False, dropna=False).agg(
        rows=("cell_id", "size"),
        images=("_images", "sum"),
        example_message=("error_message", "first"),
        example_cell_id=("cell_id", "first"),
    )
    out = g.reset_index()
    order = [*data.by, "rows"]
    ascending = [True] * len(data.by) + [False]
    if data.compare:
        rank = {r: i for i, r in enumerate(data.runs)}
        out = out.assign(_r=out[RUN].map(rank)).sort_values(
            ["_r", "rows"], ascending=[True, False], kind="stable"
        )
        out = out.drop(columns="_r")
    else:
        out = out.sort_values(order, ascending=ascending, kind="stable")
    return out[columns].reset_index(drop=True)


def slug(text: str) -> str:
    """A file-name-safe version of an axis name."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "axis"


def make_tables(data: ReportData) -> list[Table]:
    """Every table of the report, in the order they are shown."""
    frame = data.frame
    nums = numbers(frame)
    lat_pos = request_latencies(frame, data.by)
    tables = [
        Table("totals", "totals", totals_table(data, nums, lat_pos)),
        Table("billed_vs_estimated", "billed vs estimated", billed_table(data, nums)),
    ]
    used: set[str] = {"totals", "billed_vs_estimated", "failures"}
    for key in table_keys(frame, data.axes):
        name = f"by_{slug(key)}"
        while name in used:
            name += "_"
        used.add(name)
        tables.append(Table(name, f"by {key}", axis_table(data, nums, lat_pos, key), key))
    tables.append(Table("failures", "failures by error code", failures_table(data, nums)))
    return tables


def write_tables(tables: Sequence[Table], out_dir: Path) -> list[Path]:
    """Each table as `<name>.csv` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in tables:
        path = out_dir / f"{t.name}.csv"
        t.frame.to_csv(path, index=False)
        paths.append(path)
    return paths
