"""krea-report: tables, contact sheets and one HTML page from what runs stored (manifests only).

`main` is the Hydra shell; the rest are plain functions on paths and DataFrames:

    load(paths) -> ReportData            a run dir, a multirun dir (shards merged) or several runs
    make_tables(data) -> [Table]         totals, billed vs estimated, by axis, failures
    write_tables / format_tables         CSV files under the report dir / compact terminal text
    sheets.contact_sheets(...)           labelled PNG contact sheets
    html_page(...) -> str                one self-contained page: tables, plots (SVG), sheets

Conventions (the numbers the tables show):
- images = ok + cached rows; failed images = the images a failed row stands for
  (numberResults - result_index: a whole-cell failure counts every image of the cell);
  failure rate = failed images / (images + failed images).
- billed = sum of `cost_usd` (null on failed rows, 0 on cached rows); estimated = sum of
  `estimated_cost_usd` over every row; $/image = billed / ok images.
- latency = one value per request (cell and taskUUID), cached rows excluded.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline import charts, explorer, sheets
from pipeline.entry import CONF_DIR, console, report_errors, to_plain
from pipeline.errors import ConfigError
from pipeline.reporting.data import ReportData, load
from pipeline.rundir import concat_frames

RUN = sheets.RUN
NOT_RUN = sheets.NOT_RUN
SIZE = "width×height"
STATUS_RANK = {"ok": 0, "cached": 1, "failed": 2}
SHEETS_DIR = "sheets"
INDEX_NAME = "index.html"
MONEY_PLACES = 9  # sums are rounded to nano-dollars: no float noise, exact to the cent
TOTAL_EMBED_MB = 16.0  # data URIs in one page at most; later sheets are linked files

HEADERS = {
    "images_ok": "ok",
    "images_cached": "cached",
    "images_failed": "failed",
    "failed": "failed",
    "failure_rate": "fail rate",
    "billed_usd": "billed",
    "estimated_usd": "estimated",
    "difference_usd": "difference",
    "usd_per_image": "$/image",
    "latency_p50_s": "latency p50",
    "latency_p95_s": "latency p95",
    "started_at": "started",
    "finished_at": "finished",
    "wall_s": "wall",
    "not_run_cells": "not run",
    "error_code": "error code",
    "example_message": "example message",
    "example_cell_id": "example cell",
}


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportOptions:
    """The `report:` section of the config, checked."""

    rows: str | None = None
    cols: str | None = None
    filter: str | None = None
    thumb_px: int = 256
    min_thumb_px: int = 96
    max_sheet_px: int = 4096
    max_sheets: int = 60
    sheets: bool = True
    html: bool = True
    embed_max_mb: float = 4.0
    out_dir: Path | None = None
    print_rows: int = 20
    explorer: bool = True
    explorer_thumb_px: int = 320
    thumb_workers: int = 0


def parse_options(section: Mapping[str, Any] | None) -> ReportOptions:
    """`ReportOptions` from the config's `report:` mapping (ConfigError on a wrong value)."""
    s = dict(section or {})
    known = set(ReportOptions.__dataclass_fields__)
    unknown = sorted(set(s) - known)
    if unknown:
        raise ConfigError(f"unknown report option(s): {', '.join(unknown)}")

    def text(key: str) -> str | None:
        v = s.get(key)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise ConfigError(f"report.{key} must be text, got {v!r}")
        return v

    def integer(key: str, default: int, low: int) -> int:
        v = s.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"report.{key} must be an integer ≥ {low}, got {v!r}")
        return v

    def flag(key: str, default: bool) -> bool:
        v = s.get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"report.{key} must be true or false, got {v!r}")
        return v

    embed = s.get("embed_max_mb", 4.0)
    if isinstance(embed, bool) or not isinstance(embed, int | float) or embed < 0:
        raise ConfigError(f"report.embed_max_mb must be a number ≥ 0, got {embed!r}")
    thumb = integer("thumb_px", 256, 16)
    out = text("out_dir")
    return ReportOptions(
        rows=text("rows"),
        cols=text("cols"),
        filter=text("filter"),
        thumb_px=thumb,
        min_thumb_px=min(thumb, integer("min_thumb_px", 96, 16)),
        max_sheet_px=integer("max_sheet_px", 4096, 256),
        max_sheets=integer("max_sheets", 60, 0),
        sheets=flag("sheets", True),
        html=flag("html", True),
        embed_max_mb=float(embed),
        out_dir=Path(out) if out else None,
        print_rows=integer("print_rows", 20, 1),
        explorer=flag("explorer", True),
        explorer_thumb_px=integer("explorer_thumb_px", 320, 16),
        thumb_workers=integer("thumb_workers", 0, 0),
    )


def parse_run_dirs(value: Any) -> list[Path]:
    """`run_dir` as paths: one path, or a list of paths to compare."""
    items = value if isinstance(value, list | tuple) else [value]
    paths = []
    for item in items:
        if not isinstance(item, str | Path) or not str(item).strip():
            raise ConfigError(f"run_dir must be a path or a list of paths, got {value!r}")
        paths.append(Path(str(item).strip()))
    if not paths:
        raise ConfigError("run_dir is an empty list: name at least one run dir")
    return paths


def output_dir(paths: Sequence[Path], out_dir: Path | None, now: datetime) -> Path:
    """Where the report goes: `report.out_dir`, else <run_dir>/report, else a compare folder."""
    if out_dir is not None:
        return out_dir
    if len(paths) == 1:
        return paths[0] / "report"
    return Path("outputs") / "reports" / f"compare-{now:%Y-%m-%d_%H-%M-%S}"


# --- tables ------------------------------------------------------------------------------------


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


def _iso(value: Any) -> str | None:
    if value is None or pd.isna(value):
        return None
    text = pd.Timestamp(value).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def table_keys(frame: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """Grouping keys: every swept axis, then creativity, reference count, size when not swept."""
    keys = [a for a in axes if a in frame.columns and a != RUN]
    for extra in ("settings.creativity", "reference_count"):
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
    out["started_at"] = [_iso(t) for t in g["t0"]]
    out["finished_at"] = [_iso(t) for t in g["t1"]]
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
        for name in (*STATUS_RANK, "total"):
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


# --- formatting --------------------------------------------------------------------------------


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float | np.floating) and math.isnan(v)


def money(v: float, places: int = 2, sign: bool = False) -> str:
    """`$1,234.56`, or `$2.205` where tenths of a cent matter (and `+`/`-` when `sign`)."""
    if places == 2 and round(abs(v) * 100, 6) != int(round(abs(v) * 100, 6)):
        places = 3  # prices have half-cent steps ($0.065): show them as krea-run does
    text = f"${abs(v):,.{places}f}"
    if sign:
        return ("-" if v < 0 and round(abs(v), places) else "+") + text
    return "-" + text if v < 0 else text


def seconds(v: float) -> str:
    """A duration for people: `0.42 s`, `75.3 s`, `12.5 min`, `3.2 h`."""
    if v < 10:
        return f"{v:.2f} s"
    if v < 120:
        return f"{v:.1f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.1f} h"


def format_value(column: str, v: Any, key: bool = False) -> str:
    """How one table cell is shown in the terminal and the HTML page."""
    if key:
        return sheets.value_label(v)
    if _missing(v):
        return "—"
    if column == "usd_per_image":
        return money(float(v), 4)
    if column.endswith("_usd"):
        return money(float(v), 2, sign=column.startswith("difference"))
    if column == "failure_rate":
        return f"{float(v):.1%}"
    if column.endswith("_s"):
        return seconds(float(v))
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        return f"{float(v):,.4g}"
    return str(v)


def is_numeric_column(column: str) -> bool:
    """Whether a table column holds numbers (right-aligned)."""
    return column.endswith(("_usd", "_s", "_rate")) or column in {
        "cells",
        "images",
        "failed",
        "rows",
        "images_ok",
        "images_cached",
        "images_failed",
        "not_run_cells",
    }


def display_frame(table: Table, by: Sequence[str], max_chars: int | None = None) -> pd.DataFrame:
    """The table as text cells with readable headers (long text cut to `max_chars`)."""
    keys = {*by, *([table.key] if table.key else [])}
    if table.name == "failures":
        keys.add("error_code")
    cols: dict[str, list[str]] = {}
    for col in table.frame.columns:
        is_key = col in keys
        values = [format_value(str(col), v, is_key) for v in table.frame[col].tolist()]
        if max_chars is not None:
            values = [charts.shorten(v, max_chars, middle=is_key) for v in values]
        cols[HEADERS.get(str(col), str(col))] = values
    return pd.DataFrame(cols)


def transpose_totals(table: Table, data: ReportData) -> pd.DataFrame:
    """Totals as metric rows × run columns (easier to read than one wide line)."""
    shown = display_frame(table, data.by)
    names = data.runs if data.compare else ["value"]
    if data.compare:
        shown = shown.drop(columns=[RUN])
    body = {"metric": list(shown.columns)}
    for i, name in enumerate(names[: len(shown)]):
        body[name] = shown.iloc[i].tolist()
    return pd.DataFrame(body)


def format_tables(tables: Sequence[Table], data: ReportData, max_rows: int = 20) -> str:
    """All tables as compact text for the terminal (at most `max_rows` rows each)."""
    blocks = []
    for t in tables:
        if t.name == "totals":
            text = transpose_totals(t, data).to_string(index=False, header=data.compare)
            if not data.compare:
                shown = transpose_totals(t, data)
                width = max(len(m) for m in shown["metric"])
                text = "\n".join(
                    f"{m:<{width}}  {v}"
                    for m, v in zip(shown["metric"], shown["value"], strict=True)
                )
        elif not len(t.frame):
            text = "(none)"
        else:
            head = Table(t.name, t.title, t.frame.head(max_rows), t.key)
            text = display_frame(head, data.by, 40).to_string(index=False)
            if len(t.frame) > max_rows:
                text += f"\n… {len(t.frame) - max_rows} more rows in {t.name}.csv"
        body = "\n".join("  " + line.rstrip() for line in text.splitlines())
        blocks.append(f"{t.title}\n{body}")
    return "\n\n".join(blocks)


def describe(data: ReportData) -> str:
    """One line naming what was read."""
    parts = [f"{len(data.frame):,} rows"]
    if data.shards > len(data.paths):
        parts.append(f"{data.shards} shards merged")
    if data.dropped:
        parts.append(f"{data.dropped} duplicate rows dropped")
    if data.rebuilt:
        parts.append(f"{data.rebuilt} rebuilt from the journal (unfinished run)")
    parts.append("axes: " + (", ".join(data.axes) or "none"))
    names = ", ".join(str(p) for p in data.paths)
    return f"krea-report  {names}  ({'; '.join(parts)})"


# --- plots -------------------------------------------------------------------------------------


def cost_series(data: ReportData, max_points: int = 400) -> list[charts.Series]:
    """Cumulative billed cost against seconds since each run's first request."""
    frame = data.frame
    if not len(frame):
        return []
    nums = numbers(frame)
    runs = frame[RUN].astype(object).to_numpy() if data.compare else np.full(len(frame), "")
    out = []
    for name in data.runs if data.compare else [""]:
        sel = runs == name
        t0 = nums.loc[sel, "_t0"].min()
        billed = nums.loc[sel & (nums["_billed"].to_numpy() > 0)]
        billed = billed[billed["_t1"].notna()].sort_values("_t1", kind="stable")
        if not len(billed) or pd.isna(t0):
            continue
        xs = (billed["_t1"] - t0).dt.total_seconds().to_numpy()
        ys = billed["_billed"].cumsum().to_numpy()
        if len(xs) > max_points:
            pick = np.unique(np.linspace(0, len(xs) - 1, max_points).round().astype(int))
            xs, ys = xs[pick], ys[pick]
        out.append(charts.Series(name or "billed", xs.tolist(), ys.tolist()))
    return out


def plots(data: ReportData, tables: Sequence[Table]) -> list[str]:
    """The page's SVG plots: cost by axis, latency histogram(s), cumulative cost over time."""
    out: list[str] = []
    for t in tables:
        if t.key is None or not len(t.frame):
            continue
        labels = [sheets.value_label(v) for v in t.frame[t.key].tolist()]
        values = t.frame["billed_usd"].astype("float64").tolist()
        groups: list[int] | None = None
        if data.compare:
            rank = {r: i for i, r in enumerate(data.runs)}
            groups = [rank[r] for r in t.frame[RUN].tolist()]
        out.append(
            charts.bar_chart(
                labels,
                values,
                title=f"billed cost by {t.key}",
                fmt=money,
                groups=groups,
                legend=data.runs if data.compare else (),
            )
        )
    frame = data.frame
    if len(frame):
        pos = request_latencies(frame, data.by)
        latency = frame["latency_s"].astype("Float64").to_numpy("float64", na_value=np.nan)
        by_run = (
            [(r, pos[(frame[RUN].astype(object).to_numpy()[pos] == r)]) for r in data.runs]
            if data.compare
            else [("", pos)]
        )
        for name, p in by_run:
            title = "request latency" + (f" · {name}" if name else "")
            out.append(
                charts.histogram(
                    latency[p].tolist(), title=title, x_label="seconds", fmt=lambda v: f"{v:g}"
                )
            )
    series = cost_series(data)
    if series:
        out.append(
            charts.line_chart(
                series,
                title="cumulative billed cost over time",
                x_label="seconds since the first request",
                y_label="USD",
                fmt_y=lambda v: money(v, 2),
            )
        )
    return out


# --- HTML --------------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f7f7f8;color:#1f1f1f;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1360px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:22px;margin:6px 0 2px}
h2{font-size:18px;margin:30px 0 10px;padding-bottom:4px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:20px 0 6px}
.meta,.note{color:#5f5f5f;margin:2px 0 8px;font-size:13px}
nav{margin:8px 0 4px;font-size:13px}nav a{margin-right:14px;color:#2f5d9c}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{background:#fff;border:1px solid #e1e1e4;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.card span{color:#666;font-size:12px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;background:#fff;margin:4px 0 12px;font-size:13px;
 font-variant-numeric:tabular-nums}
th,td{border:1px solid #e3e3e6;padding:3px 9px;text-align:left;vertical-align:top;
 max-width:460px;overflow-wrap:anywhere}
th{background:#f0f0f3;font-weight:600;white-space:nowrap}
td.num{text-align:right;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:14px 22px;align-items:flex-start}
.chart{background:#fff;border:1px solid #e3e3e6;border-radius:6px;padding:10px;max-width:100%;
 overflow-x:auto}
figure{margin:14px 0 28px}
figure img{display:block;max-width:100%;height:auto;border:1px solid #ddd;background:#fff}
figcaption{color:#555;font-size:13px;margin-top:4px}
""".strip()


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def html_table(frame: pd.DataFrame, numeric: Sequence[bool], max_rows: int = 200) -> str:
    """A display frame (all text) as an HTML table; every cell escaped."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for values in frame.head(max_rows).itertuples(index=False):
        cells = "".join(
            f'<td class="num">{_esc(v)}</td>' if num else f"<td>{_esc(v)}</td>"
            for v, num in zip(values, numeric, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    more = len(frame) - max_rows
    note = f'<p class="note">… {more} more rows in the CSV file.</p>' if more > 0 else ""
    body = "".join(rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>{note}'


def _table_html(t: Table, data: ReportData) -> str:
    if t.name == "totals":
        shown = transpose_totals(t, data)
        return html_table(shown, [False] + [True] * (len(shown.columns) - 1))
    if not len(t.frame):
        return '<p class="note">none</p>'
    shown = display_frame(t, data.by)
    return html_table(shown, [is_numeric_column(str(c)) for c in t.frame.columns])


@dataclass(frozen=True)
class SheetFile:
    """A contact sheet written to disk, and how the page shows it."""

    title: str
    path: Path  # relative to the report dir
    width: int
    height: int
    data_uri: str | None  # set when small enough to embed


def _cards(tables: Sequence[Table], data: ReportData) -> str:
    if data.compare:
        return ""
    t = tables[0].frame
    if not len(t):
        return ""
    row = t.iloc[0]
    items = [
        (format_value("images_ok", row["images_ok"]), "images ok"),
        (format_value("images_cached", row["images_cached"]), "cached"),
        (format_value("images_failed", row["images_failed"]), "failed"),
        (format_value("failure_rate", row["failure_rate"]), "failure rate"),
        (format_value("billed_usd", row["billed_usd"]), "billed"),
        (format_value("estimated_usd", row["estimated_usd"]), "estimated"),
        (format_value("wall_s", row["wall_s"]), "wall time"),
    ]
    body = "".join(
        f'<div class="card"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for v, k in items
    )
    return f'<div class="cards">{body}</div>'


def _prompts(data: ReportData, limit: int = 50) -> str:
    frame = data.frame
    if not len(frame) or "positivePrompt" not in frame.columns:
        return '<p class="note">none</p>'
    counts = frame["positivePrompt"].astype(object).fillna("(none)").value_counts(sort=False)
    shown = pd.DataFrame({"prompt": [str(p) for p in counts.index], "rows": counts.to_numpy()})
    shown = shown.head(limit)
    view = pd.DataFrame({"prompt": shown["prompt"], "rows": [f"{int(v):,}" for v in shown["rows"]]})
    note = (
        f'<p class="note">{len(counts) - limit} more prompts not shown.</p>'
        if len(counts) > limit
        else ""
    )
    return html_table(view, [False, True]) + note


def html_page(
    data: ReportData,
    tables: Sequence[Table],
    sheet_files: Sequence[SheetFile],
    svgs: Sequence[str],
    *,
    generated: str,
    notes: Sequence[str] = (),
    explorer_html: str = "",
) -> str:
    """The report page: no external URLs, user text escaped; scripts only for the explorer."""
    by_axis = [t for t in tables if t.key is not None]
    named = {t.name: t for t in tables}
    title = "krea-report · " + ", ".join(data.runs)
    meta = [f"runs: {', '.join(str(p) for p in data.paths)}", f"generated {generated}"]
    if data.shards > len(data.paths):
        meta.append(f"{data.shards} shards merged")
    if data.dropped:
        meta.append(f"{data.dropped} duplicate rows dropped")
    if data.rebuilt:
        meta.append(f"{data.rebuilt} run dir(s) rebuilt from the journal (unfinished run)")
    meta.append("swept axes: " + (", ".join(data.axes) or "none"))
    csv_links = " ".join(f'<a href="{_esc(t.name)}.csv">{_esc(t.name)}.csv</a>' for t in tables)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{CSS}</style>",
        explorer.SCRIPTS[0] if explorer_html else "",
        "</head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        "".join(f'<p class="meta">{_esc(m)}</p>' for m in meta),
        "".join(f'<p class="note">{_esc(n)}</p>' for n in notes),
        "<nav>" + ('<a href="#explorer">explorer</a>' if explorer_html else ""),
        '<a href="#totals">totals</a><a href="#cost">billed vs estimated</a>'
        '<a href="#plots">plots</a><a href="#axes">by axis</a><a href="#failures">failures</a>'
        '<a href="#prompts">prompts</a><a href="#sheets">contact sheets</a></nav>',
        _cards(tables, data),
        explorer_html,
        '<h2 id="totals">Totals</h2>',
        _table_html(named["totals"], data),
        '<h2 id="cost">Billed vs estimated</h2>',
        '<p class="note">Billed is what this run paid (the API\'s cost per image). Cached '
        "images were paid for by an earlier run and cost nothing now; failed rows are not "
        "billed. Estimated is the price-table estimate of every row.</p>",
        _table_html(named["billed_vs_estimated"], data),
        '<h2 id="plots">Plots</h2>',
        '<div class="charts">' + "".join(f'<div class="chart">{s}</div>' for s in svgs) + "</div>",
        '<h2 id="axes">By axis</h2>',
        '<p class="note">images = ok + cached; failed counts the images a failed request '
        "did not return; $/image = billed ÷ ok images; latency is per request.</p>",
    ]
    for t in by_axis:
        parts += [f"<h3>{_esc(t.title)}</h3>", _table_html(t, data)]
    parts += [
        '<h2 id="failures">Failures by error code</h2>',
        _table_html(named["failures"], data),
        '<h2 id="prompts">Prompts</h2>',
        _prompts(data),
        '<h2 id="sheets">Contact sheets</h2>',
    ]
    if not sheet_files:
        parts.append('<p class="note">no contact sheets</p>')
    for i, s in enumerate(sheet_files, 1):
        src = s.data_uri or s.path.as_posix()
        parts.append(
            f'<figure><img src="{_esc(src)}" width="{s.width}" height="{s.height}" '
            f'alt="{_esc(s.title)}" loading="eager"><figcaption>sheet {i} of '
            f"{len(sheet_files)} · "
            f'<a href="{_esc(s.path.as_posix())}">{_esc(s.path.as_posix())}</a>'
            "</figcaption></figure>"
        )
    parts += [
        f'<h2 id="files">Files</h2><p class="note">{csv_links}</p>',
        "</main>",
        "".join(explorer.SCRIPTS[1:]) if explorer_html else "",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --- the job -----------------------------------------------------------------------------------


def sheet_frame(data: ReportData) -> pd.DataFrame:
    """Manifest rows plus `not run` pseudo-rows, in cell order (what contact sheets draw)."""
    frames = [data.frame] + ([data.not_run] if len(data.not_run) else [])
    both = concat_frames(frames)
    if not len(both):
        return both
    order = [c for c in (RUN, "cell_index", "result_index") if c in both.columns]
    if RUN in order:
        rank = {r: i for i, r in enumerate(data.runs)}
        both = both.assign(_r=both[RUN].map(rank))
        order[0] = "_r"
    both = both.sort_values(order, kind="stable", na_position="last")
    return both.drop(columns=["_r"], errors="ignore").reset_index(drop=True)


def write_sheets(
    layouts: Sequence[sheets.SheetLayout],
    out_dir: Path,
    embed_max_mb: float,
    workers: int = 0,
    previews: Mapping[Path, Path] | None = None,
) -> list[SheetFile]:
    """Render each layout to `sheets/sheet-NNN.png` (old sheets there are removed first)."""
    folder = out_dir / SHEETS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("sheet-*.png"):
        old.unlink()
    files = []
    budget = TOTAL_EMBED_MB * 2**20
    for i, (layout, png) in enumerate(
        zip(layouts, sheets.pngs(layouts, workers, previews), strict=True), 1
    ):
        rel = Path(SHEETS_DIR) / f"sheet-{i:03d}.png"
        (out_dir / rel).write_bytes(png)
        uri = None
        if len(png) <= embed_max_mb * 2**20 and len(png) <= budget:
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            budget -= len(png)
        title = layout.spec.title
        if layout.spec.part[1] > 1:
            title += f" (part {layout.spec.part[0]} of {layout.spec.part[1]})"
        files.append(SheetFile(title, rel, layout.width, layout.height, uri))
    return files


def report_job(cfg: Mapping[str, Any], now: datetime | None = None) -> int:
    """The whole krea-report job on plain config data; returns the exit code."""
    now = now or datetime.now()
    options = parse_options(cfg.get("report"))
    paths = parse_run_dirs(cfg.get("run_dir"))
    data = load(paths)
    out_dir = output_dir(paths, options.out_dir, now)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report to {out_dir}: {exc.strerror or exc}; set report.out_dir "
            "to a folder that can be made and written"
        ) from exc
    tables = make_tables(data)
    print(describe(data), flush=True)
    print(format_tables(tables, data, options.print_rows), flush=True)
    written = write_tables(tables, out_dir)
    notes: list[str] = []
    files: list[SheetFile] = []
    shown = None
    if options.html and options.explorer:
        shown = explorer.write(
            sheet_frame(data),
            data.axes,
            data.runs,
            out_dir,
            explorer.ExplorerOptions(options.explorer_thumb_px, options.thumb_workers),
            rows=options.rows,
            cols=options.cols,
        )
        if shown.thumbs_failed:
            notes.append(f"{shown.thumbs_failed} image(s) could not be read for thumbnails")
    if options.sheets:
        heading = data.runs[0] if len(data.runs) == 1 else "all runs"
        sheet_options = sheets.SheetOptions(
            rows=options.rows,
            cols=options.cols,
            query=options.filter,
            thumb_px=options.thumb_px,
            min_thumb_px=options.min_thumb_px,
            max_px=options.max_sheet_px,
            max_sheets=options.max_sheets,
            heading=heading,
            compare=data.compare,
        )
        layouts, skipped = sheets.contact_sheets(sheet_frame(data), data.axes, sheet_options)
        previews = None  # the explorer's thumbnails, when big enough, are drawn on the sheets
        if shown is not None and options.explorer_thumb_px >= options.thumb_px:
            previews = shown.previews
        files = write_sheets(
            layouts, out_dir, options.embed_max_mb, options.thumb_workers, previews
        )
        if skipped:
            notes.append(
                f"{skipped} more sheet(s) not drawn (report.max_sheets={options.max_sheets}); "
                "narrow them with report.filter or pick other report.rows / report.cols"
            )
        if options.filter and not layouts:
            notes.append(f"report.filter {options.filter!r} matched no rows: no contact sheets")
    for note in notes:
        print(f"note     {note}", flush=True)
    if options.html:
        page = html_page(
            data,
            tables,
            files,
            plots(data, tables),
            generated=now.strftime("%Y-%m-%d %H:%M:%S"),
            notes=notes,
            explorer_html=shown.html if shown else "",
        )
        (out_dir / INDEX_NAME).write_text(page, encoding="utf-8")
    what = [f"{len(written)} CSV", f"{len(files)} sheet(s)"]
    if options.html:
        what.append(INDEX_NAME)
    if shown:
        what.append(
            f"explorer: {shown.tiles} tiles, thumbnails {shown.thumbs_made} made, "
            f"{shown.thumbs_reused} reused"
        )
    print(f"wrote    {out_dir}  ({', '.join(what)})", flush=True)
    return 0


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def main(cfg: DictConfig) -> None:
    """Console script `krea-report`."""
    report_errors("krea-report", lambda: report_job(to_plain(cfg)), cfg)


def cli() -> None:
    """Console script `krea-report`."""
    console(main, "krea-report")


if __name__ == "__main__":
    cli()
