"""krea-report: tables, contact sheets and one HTML page from what runs stored (manifests only).

`main` is the Hydra shell and `report_job` the job on plain config data; the body is in
`pipeline/reporting/`:

    data.load(paths) -> ReportData       a run dir, a multirun dir (shards merged) or several runs
    tables.make_tables(data) -> [Table]  totals, billed vs estimated, by model/axis, failures
    tables.write_tables / text.format_tables   CSV files under the report dir / terminal text
    sheetfiles.draw_sheets(...)          labelled PNG contact sheets (pipeline.sheets draws them)
    page.html_page(...) -> str           one self-contained page: tables, plots (SVG), sheets
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline import explorer
from pipeline.entry import console, report_errors, to_plain
from pipeline.errors import ConfigError
from pipeline.reporting.data import load
from pipeline.reporting.options import output_dir, parse_options, parse_run_dirs
from pipeline.reporting.page import INDEX_NAME, html_page, plots
from pipeline.reporting.sheetfiles import SheetFile, draw_sheets, sheet_frame
from pipeline.reporting.tables import make_tables, write_tables
from pipeline.reporting.text import describe, format_tables
from pipeline.resources import CONF_DIR


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
        previews = None  # the explorer's thumbnails, when big enough, are drawn on the sheets
        if shown is not None and options.explorer_thumb_px >= options.thumb_px:
            previews = shown.previews
        files, sheet_notes = draw_sheets(data, options, out_dir, previews)
        notes += sheet_notes
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
