"""krea-report: tables, contact sheets and one HTML page from what runs stored (manifests only).

`main` is the Hydra shell and `report_job` the job on plain config data; the body is in
`pipeline/reporting/`:

    load(paths) -> ReportData            a run dir, a multirun dir (shards merged) or several runs
    tables.make_tables(data) -> [Table]  totals, billed vs estimated, by model/axis, failures
    tables.write_tables / text.format_tables   CSV files under the report dir / terminal text
    sheetfiles.draw_sheets(...)          labelled PNG contact sheets (pipeline.sheets draws them)
    page.html_page(...) -> str           one self-contained page: tables, plots (SVG), sheets
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline import explorer, journal, manifest, sheets
from pipeline.entry import CONF_DIR, console, report_errors, to_plain
from pipeline.errors import ConfigError

PLAN_NAME = "plan.parquet"
RUN = sheets.RUN
SOURCE = sheets.SOURCE
NOT_RUN = sheets.NOT_RUN
STATUS_RANK = {"ok": 0, "cached": 1, "failed": 2}


# --- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """One run dir as read: its manifest, swept axes and planned cells that never finished."""

    path: Path
    frame: pd.DataFrame
    axes: list[str]
    not_run: pd.DataFrame | None  # None when the run dir has no plan.parquet
    rebuilt: bool  # manifest rebuilt from the journal (a crashed or unfinished run)


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows: manifest rows of every run, merged and labelled."""

    frame: pd.DataFrame  # manifest rows (+ `_run_dir`, + `run` when comparing)
    not_run: pd.DataFrame  # planned cells with no manifest row (same columns where known)
    axes: list[str]
    runs: list[str]
    paths: list[Path]
    shards: int = 1
    rebuilt: int = 0
    dropped: int = 0  # duplicate rows dropped when shards were merged
    planned: frozenset[str] = field(default_factory=frozenset)  # runs with a plan.parquet

    @property
    def compare(self) -> bool:
        """Whether several runs are compared (tables grouped by run)."""
        return len(self.runs) > 1

    @property
    def by(self) -> list[str]:
        """The columns every table is grouped by first."""
        return [RUN] if self.compare else []


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds a run: a manifest, or at least a journal."""
    names = (manifest.PARQUET_NAME, manifest.CSV_NAME, journal.JOURNAL_NAME)
    return any((path / n).is_file() for n in names)


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def find_run_dirs(path: Path) -> list[Path]:
    """`path` itself when it is a run dir, else its shards (a multirun dir); ConfigError if none."""
    if not path.exists():
        raise ConfigError(f"run_dir {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"run_dir {path} is not a folder")
    if is_run_dir(path):
        return [path]
    shards = sorted((p for p in path.iterdir() if p.is_dir() and is_run_dir(p)), key=_natural)
    if not shards:
        raise ConfigError(
            f"no run in {path}: expected {manifest.PARQUET_NAME} or {journal.JOURNAL_NAME} in it "
            "(a run dir) or in its subfolders (a multirun dir)"
        )
    return shards


def header_axes(run_dir: Path) -> list[str] | None:
    """The swept axis names recorded in the journal's header line, if any."""
    try:
        with open(run_dir / journal.JOURNAL_NAME, "rb") as fh:
            first = fh.readline()
        obj = json.loads(first)
    except (OSError, ValueError):
        return None
    names = obj.get("axis_names") if isinstance(obj, dict) else None
    if obj.get("event") != "header" or not isinstance(names, list):
        return None
    return [str(n) for n in names]


def swept_axes(frame: pd.DataFrame, header: Sequence[str] | None) -> list[str]:
    """The journal header's axis names, else the columns outside the manifest contract."""
    extra = [
        str(c)
        for c in frame.columns
        if c not in manifest.COLUMNS and not str(c).startswith("_") and c != RUN
    ]
    if header is None:
        return extra
    return list(dict.fromkeys([a for a in header if a in frame.columns] + extra))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_run_dir(path: Path) -> RunDir:
    """Read one run dir: manifest.parquet (or .csv), else the manifest rebuilt from its journal."""
    header = header_axes(path)
    has_manifest = any((path / n).is_file() for n in (manifest.PARQUET_NAME, manifest.CSV_NAME))
    try:
        frame = manifest.read(path) if has_manifest else manifest.rebuild(path, header)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise ConfigError(f"cannot read the run in {path}: {_first_line(exc)}") from exc
    axes = swept_axes(frame, header)
    return RunDir(path, frame, axes, read_not_run(path, frame), not has_manifest)


def read_not_run(run_dir: Path, frame: pd.DataFrame) -> pd.DataFrame | None:
    """Cells of the run's plan.parquet with no manifest row, as `not run` pseudo-rows."""
    plan_path = run_dir / PLAN_NAME
    if not plan_path.is_file():
        return None
    try:
        plan = pd.read_parquet(plan_path)
    except (OSError, ValueError):
        return None  # a damaged plan only loses the "not run" cells
    if "cell_id" not in plan.columns:
        return None
    done: set[Any] = (
        set(frame["cell_id"].dropna().tolist()) if "cell_id" in frame.columns else set()
    )
    missing = plan[~plan["cell_id"].isin(done)].drop(columns=["cached"], errors="ignore")
    return not_run_rows(missing)


def not_run_rows(plan: pd.DataFrame) -> pd.DataFrame:
    """Plan rows as manifest-like rows with status `not run` (request fields filled in)."""
    out = plan.reset_index(drop=True).copy()
    out["status"] = NOT_RUN
    raw = out["request_json"].tolist() if "request_json" in out.columns else [None] * len(out)
    requests = [_loads(r) for r in raw]
    derived: dict[str, list[Any]] = {
        "positivePrompt": [r.get("positivePrompt") for r in requests],
        "width": [r.get("width") for r in requests],
        "height": [r.get("height") for r in requests],
        "settings.creativity": [(r.get("settings") or {}).get("creativity") for r in requests],
        "reference_count": [
            len((r.get("inputs") or {}).get("referenceImages") or []) for r in requests
        ],
    }
    for name, values in derived.items():
        if name not in out.columns:
            dtype = manifest.COLUMNS[name]
            clean = [v if isinstance(v, str | int) else None for v in values]
            out[name] = pd.array(clean, dtype=cast(Any, dtype))
    return out


def _loads(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _na_column(index: pd.Index[Any], dtype: Any) -> pd.Series[Any]:
    """An all-missing column of (a nullable version of) `dtype`."""
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iu":
            dtype = pd.Int64Dtype()
        elif dtype.kind == "b":
            dtype = pd.BooleanDtype()
        elif dtype.kind != "f":
            dtype = np.dtype(object)
    return pd.Series(pd.array([None] * len(index), dtype=dtype), index=index)


def concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack frames whose columns may differ; a missing column is NA of the same dtype."""
    live = [f for f in frames if len(f)] or list(frames[:1])
    if not live:
        return pd.DataFrame()
    if len(live) == 1:
        return live[0].reset_index(drop=True)
    columns = list(dict.fromkeys(c for f in live for c in f.columns))
    dtypes: dict[Any, Any] = {}
    for f in live:
        for c in f.columns:
            dtypes.setdefault(c, f[c].dtype)
    aligned = []
    for f in live:
        missing = {c: _na_column(f.index, dtypes[c]) for c in columns if c not in f.columns}
        aligned.append(f.assign(**missing)[columns] if missing else f[columns])
    return pd.concat(aligned, ignore_index=True)


def merge_shards(frames: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Shard manifests as one: a row per (cell_id, result_index), ok > cached > failed."""
    both = concat_frames(frames)
    if sum(1 for f in frames if len(f)) <= 1:
        return both, 0
    rank = both["status"].astype(object).map(STATUS_RANK).fillna(len(STATUS_RANK))
    ordered = both.assign(_rank=rank.to_numpy()).sort_values(
        ["cell_id", "result_index", "_rank"], kind="stable"
    )
    kept = ordered.drop_duplicates(["cell_id", "result_index"], keep="first")
    kept = kept.drop(columns="_rank").sort_values(["cell_index", "result_index"], kind="stable")
    return kept.reset_index(drop=True), len(both) - len(kept)


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct names for the runs compared: folder names, with parents when they clash."""
    resolved = [p.resolve() for p in paths]
    for depth in (1, 2, 3):
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} #{i + 1}" for i, label in enumerate(labels)]


def load(paths: Sequence[Path]) -> ReportData:
    """Read every run named: shards of a multirun dir merged; several runs labelled by `run`."""
    if not paths:
        raise ConfigError("run_dir is an empty list: name at least one run dir")
    labels = run_labels(paths)
    compare = len(paths) > 1
    frames, not_runs = [], []
    axes: dict[str, None] = {}
    planned: set[str] = set()
    shards = rebuilt = dropped = 0
    for path, label in zip(paths, labels, strict=True):
        runs = [read_run_dir(d) for d in find_run_dirs(path)]
        shards += len(runs)
        rebuilt += sum(r.rebuilt for r in runs)
        for r in runs:
            axes.update(dict.fromkeys(r.axes))
        merged, n = merge_shards([r.frame.assign(**{SOURCE: str(r.path)}) for r in runs])
        dropped += n
        plans = [r.not_run.assign(**{SOURCE: str(r.path)}) for r in runs if r.not_run is not None]
        not_run = concat_frames(plans) if plans else pd.DataFrame()
        if plans:
            planned.add(label)
            done = merged["cell_id"].dropna().unique()
            not_run = not_run[~not_run["cell_id"].isin(done)].drop_duplicates("cell_id")
        if compare:
            merged = merged.assign(**{RUN: label})
            if len(not_run.columns):
                not_run = not_run.assign(**{RUN: label})
        frames.append(merged)
        not_runs.append(not_run)
    frame = concat_frames(frames)
    not_run_all = concat_frames([f for f in not_runs if len(f.columns)])
    return ReportData(
        frame=frame,
        not_run=not_run_all,
        axes=list(axes),
        runs=labels,
        paths=list(paths),
        shards=shards,
        rebuilt=rebuilt,
        dropped=dropped,
        planned=frozenset(planned),
    )


# --- the job -----------------------------------------------------------------------------------


def report_job(cfg: Mapping[str, Any], now: datetime | None = None) -> int:
    """The whole krea-report job on plain config data; returns the exit code."""
    # Imported here until pipeline/reporting/data.py holds the loading above: the reporting
    # modules import ReportData from this module, so a module-level import would be a cycle.
    from pipeline.reporting.options import output_dir, parse_options, parse_run_dirs
    from pipeline.reporting.page import INDEX_NAME, html_page, plots
    from pipeline.reporting.sheetfiles import SheetFile, draw_sheets, sheet_frame
    from pipeline.reporting.tables import make_tables, write_tables
    from pipeline.reporting.text import describe, format_tables

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
