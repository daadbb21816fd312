"""The report's terminal text: cell formatting (shared with the HTML page), tables as text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline import charts, sheets
from pipeline.reporting.data import ReportData
from pipeline.reporting.tables import Table
from pipeline.sheets import RUN

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


def is_missing(v: Any) -> bool:
    """Whether a cell value is missing (None, NA, NaT, NaN)."""
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
    if is_missing(v):
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


def load_notes(data: ReportData, rebuilt: str = "rebuilt") -> list[str]:
    """What reading the runs did: shards merged, duplicate rows dropped, manifests rebuilt."""
    notes = []
    if data.shards > len(data.paths):
        notes.append(f"{data.shards} shards merged")
    if data.dropped:
        notes.append(f"{data.dropped} duplicate rows dropped")
    if data.rebuilt:
        notes.append(f"{data.rebuilt} {rebuilt} from the journal (unfinished run)")
    return notes


def describe(data: ReportData) -> str:
    """One line naming what was read."""
    parts = [f"{len(data.frame):,} rows", *load_notes(data)]
    parts.append("axes: " + (", ".join(data.axes) or "none"))
    names = ", ".join(str(p) for p in data.paths)
    return f"krea-report  {names}  ({'; '.join(parts)})"
