"""The run dir: the names of the files a run leaves, and one reader for run and multirun dirs.

Layout of a run dir (each file written by its own module, named here):

    journal.jsonl        journal.py: every submit and result, fsync'd (resume, crash safety)
    plan.parquet         plan.py: every planned cell (plan.COLUMNS)
    manifest.parquet     manifest.py: one row per image or failed cell (manifest.COLUMNS)
    manifest.csv         manifest.py: the same rows for a spreadsheet
    images/              runner.py: <cell_id>-<result_index>.<ext> (images.image_relpath)
    exit_code            entry.py: a multirun job's exit code
    reproduce.csv        krea-reproduce: its comparison table
    report/              krea-report's default output folder

A multirun dir holds run dirs (its jobs, or shards) one level down. Read as one, it has one row
per (cell_id, result_index): where two run dirs hold the same image, the row kept is the first
by `PRECEDENCE` (ok, then cached, then failed), ties going to the first run dir in natural order
(`0, 1, 2, …, 10`). `ok` comes first because it carries the bill and the latency of the task that
made the image (a cached row of the same image is free and has none: keeping it would drop paid
money from the totals); any image beats a failure, which another run dir has since made good.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, first_line

JOURNAL_NAME = "journal.jsonl"
PLAN_NAME = "plan.parquet"
MANIFEST_PARQUET = "manifest.parquet"
MANIFEST_CSV = "manifest.csv"
IMAGES_DIR = "images"
EXIT_CODE_NAME = "exit_code"
REPRODUCE_CSV = "reproduce.csv"
REPORT_DIR = "report"
SOURCE = "_run_dir"  # column of a merged frame: the run dir each row's `image_path` is inside
PRECEDENCE = ("ok", "cached", "failed")  # which row of an image two run dirs hold is kept


@dataclass(frozen=True)
class Run:
    """One run dir as read: its manifest, swept axes, plan and sweep name."""

    path: Path
    frame: pd.DataFrame
    axes: list[str]
    plan: pd.DataFrame | None  # None when the run dir has no readable plan.parquet
    rebuilt: bool  # manifest rebuilt from the journal (a crashed or unfinished run)
    sweep: str = ""  # the sweep's name from the journal header ("" when unknown)


@dataclass(frozen=True)
class Runs:
    """A run dir, or a multirun dir's run dirs merged: one row per image (`PRECEDENCE`)."""

    path: Path
    runs: list[Run]
    frame: pd.DataFrame  # every run's rows merged, with a `SOURCE` column
    dropped: int  # rows of images another run dir also holds, left out

    @property
    def axes(self) -> list[str]:
        """The swept axes of every run dir, in first-seen order."""
        return list(dict.fromkeys(a for r in self.runs for a in r.axes))

    @property
    def sweep(self) -> str:
        """The sweep's name (the first run dir that records one)."""
        return next((r.sweep for r in self.runs if r.sweep), "")


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds a run: a manifest, or at least a journal."""
    return any((path / n).is_file() for n in (MANIFEST_PARQUET, MANIFEST_CSV, JOURNAL_NAME))


def has_manifest(path: Path) -> bool:
    """Whether the run in `path` wrote its manifest (else it is rebuilt from the journal)."""
    return any((path / n).is_file() for n in (MANIFEST_PARQUET, MANIFEST_CSV))


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def find_run_dirs(path: Path) -> list[Path]:
    """`path` itself when it is a run dir, else the run dirs in it (a multirun dir)."""
    if not path.exists():
        raise ConfigError(f"run_dir {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"run_dir {path} is not a folder")
    if is_run_dir(path):
        return [path]
    shards = sorted((p for p in path.iterdir() if p.is_dir() and is_run_dir(p)), key=_natural)
    if not shards:
        raise ConfigError(
            f"no run in {path}: it has no manifest or journal ({MANIFEST_PARQUET} or "
            f"{JOURNAL_NAME}), nor has any of its subfolders (a multirun dir)"
        )
    return shards


def journal_header(run_dir: Path) -> dict[str, Any]:
    """The journal's header line (sweep name, axis names, backend); {} when there is none."""
    try:
        with open(run_dir / JOURNAL_NAME, "rb") as fh:
            obj = json.loads(fh.readline())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) and obj.get("event") == "header" else {}


def header_axes(header: dict[str, Any]) -> list[str] | None:
    """The swept axis names a journal header records, if any."""
    names = header.get("axis_names")
    return [str(n) for n in names] if isinstance(names, list) else None


def swept_axes(frame: pd.DataFrame, header: Sequence[str] | None) -> list[str]:
    """The journal header's axis names, else the columns outside the manifest contract."""
    from pipeline.manifest import COLUMNS  # manifest names its files from here: import late

    extra = [str(c) for c in frame.columns if c not in COLUMNS and not str(c).startswith("_")]
    if header is None:
        return extra
    return list(dict.fromkeys([a for a in header if a in frame.columns] + extra))


def read_plan(run_dir: Path) -> pd.DataFrame | None:
    """The run's plan.parquet; None when it has none (or a damaged one, or one without cell ids)."""
    path = run_dir / PLAN_NAME
    if not path.is_file():
        return None
    try:
        plan = pd.read_parquet(path)
    except (OSError, ValueError):
        return None  # a damaged plan only loses what it adds (not-run cells, planned requests)
    return plan if "cell_id" in plan.columns else None


def read_run_dir(path: Path) -> Run:
    """One run dir: manifest.parquet (or .csv), else the manifest rebuilt from its journal."""
    from pipeline import manifest  # manifest names its files from here: import late

    header = journal_header(path)
    axes = header_axes(header)
    written = has_manifest(path)
    try:
        frame = manifest.read(path) if written else manifest.rebuild(path, axes)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise ConfigError(f"cannot read the run in {path}: {first_line(exc)}") from exc
    sweep = str(header.get("sweep") or "")
    return Run(path, frame, swept_axes(frame, axes), read_plan(path), not written, sweep)


def read_runs(path: Path) -> Runs:
    """A run dir, or every run dir of a multirun dir merged by `merge_runs`."""
    runs = [read_run_dir(d) for d in find_run_dirs(path)]
    frame, dropped = merge_runs([r.frame.assign(**{SOURCE: str(r.path)}) for r in runs])
    return Runs(path, runs, frame, dropped)


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
    with warnings.catch_warnings():  # all-NA axis columns of one shard: nothing to warn about
        warnings.simplefilter("ignore", FutureWarning)
        return pd.concat(aligned, ignore_index=True)


def merge_runs(frames: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Manifests of several run dirs as one: a row per (cell_id, result_index), by `PRECEDENCE`.

    Frames come in run-dir order (the first wins a tie); returns the rows and how many were left
    out.
    """
    both = concat_frames(frames)
    if sum(1 for f in frames if len(f)) <= 1:
        return both, 0
    rank = {status: i for i, status in enumerate(PRECEDENCE)}
    order = both["status"].astype(object).map(rank).fillna(len(rank))
    ordered = both.assign(_rank=order.to_numpy()).sort_values(
        ["cell_id", "result_index", "_rank"], kind="stable"
    )
    kept = ordered.drop_duplicates(["cell_id", "result_index"], keep="first")
    kept = kept.drop(columns="_rank").sort_values(["cell_index", "result_index"], kind="stable")
    return kept.reset_index(drop=True), len(both) - len(kept)
