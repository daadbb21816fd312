"""The report's data: every run named, read by `pipeline.rundir`, merged and labelled."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd

from pipeline import manifest, models, rundir
from pipeline.errors import ConfigError
from pipeline.sheets import NOT_RUN, RUN


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


def read_not_run(run: rundir.Run) -> pd.DataFrame | None:
    """Cells of the run's plan.parquet with no manifest row, as `not run` pseudo-rows."""
    if run.plan is None:
        return None
    frame = run.frame
    done: set[Any] = (
        set(frame["cell_id"].dropna().tolist()) if "cell_id" in frame.columns else set()
    )
    missing = run.plan[~run.plan["cell_id"].isin(done)].drop(columns=["cached"], errors="ignore")
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
        **{c.name: [c.read(r) for r in requests] for c in models.extra_columns()},
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
        runs = rundir.read_runs(path)
        shards += len(runs.runs)
        rebuilt += sum(r.rebuilt for r in runs.runs)
        axes.update(dict.fromkeys(a for a in runs.axes if a != RUN))
        merged = runs.frame
        dropped += runs.dropped
        plans = []
        for run in runs.runs:
            rows = read_not_run(run)
            if rows is not None:
                plans.append(rows.assign(**{rundir.SOURCE: str(run.path)}))
        not_run = rundir.concat_frames(plans) if plans else pd.DataFrame()
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
    frame = rundir.concat_frames(frames)
    not_run_all = rundir.concat_frames([f for f in not_runs if len(f.columns)])
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
