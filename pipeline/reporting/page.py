"""The report's HTML page: plots (SVG), tables, contact sheets and the explorer in one file.

No external URLs; every piece of user text is escaped; scripts only for the explorer.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline import charts, explorer, sheets
from pipeline.reporting.data import ReportData
from pipeline.reporting.sheetfiles import SheetFile
from pipeline.reporting.tables import Table, numbers, request_latencies
from pipeline.reporting.text import (
    display_frame,
    format_value,
    is_numeric_column,
    load_notes,
    money,
    transpose_totals,
)
from pipeline.sheets import RUN

INDEX_NAME = "index.html"

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
    meta = [
        f"runs: {', '.join(str(p) for p in data.paths)}",
        f"generated {generated}",
        *load_notes(data, "run dir(s) rebuilt"),
    ]
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
