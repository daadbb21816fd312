"""The report's contact sheet files: the rows they draw, PNGs under sheets/, what the page embeds.

Here rather than in `pipeline/sheets.py`: that module lays out and paints sheets from a plain
frame and knows nothing of run dirs or report dirs; this one takes the report's data and options
and writes the files (and decides which ones the page embeds as data URIs).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import sheets
from pipeline.reporting.data import ReportData
from pipeline.reporting.options import ReportOptions
from pipeline.rundir import concat_frames
from pipeline.sheets import RUN

SHEETS_DIR = "sheets"
TOTAL_EMBED_MB = 16.0  # data URIs in one page at most; later sheets are linked files


@dataclass(frozen=True)
class SheetFile:
    """A contact sheet written to disk, and how the page shows it."""

    title: str
    path: Path  # relative to the report dir
    width: int
    height: int
    data_uri: str | None  # set when small enough to embed


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


def draw_sheets(
    data: ReportData,
    options: ReportOptions,
    out_dir: Path,
    previews: Mapping[Path, Path] | None = None,
) -> tuple[list[SheetFile], list[str]]:
    """The report's contact sheets as files, and notes on what was not drawn."""
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
    files = write_sheets(layouts, out_dir, options.embed_max_mb, options.thumb_workers, previews)
    notes = []
    if skipped:
        notes.append(
            f"{skipped} more sheet(s) not drawn (report.max_sheets={options.max_sheets}); "
            "narrow them with report.filter or pick other report.rows / report.cols"
        )
    if options.filter and not layouts:
        notes.append(f"report.filter {options.filter!r} matched no rows: no contact sheets")
    return files, notes
