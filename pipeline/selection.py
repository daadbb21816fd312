"""What krea-reproduce re-issues: the recorded cells and images a selection names.

A selection is cell ids or a pandas query over a run dir's manifest (a multirun dir's, merged by
`pipeline.rundir`), or image files whose metadata carries their recipe. Rows of failed cells have
no image and are skipped.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import images, rundir
from pipeline.errors import ConfigError, SelectError
from pipeline.progress import shown

IMAGE_PREFIXES = ("image:", "image=")
IMAGE_STATUSES = ("ok", "cached")  # rows that hold an image
_CELL_ID_RE = re.compile(r"[0-9a-f]{20}\Z")


@dataclass(frozen=True)
class Select:
    """A parsed selection: cell ids, a pandas query, or image files."""

    ids: tuple[str, ...] = ()
    query: str = ""
    images: tuple[Path, ...] = ()
    run_dir: Path | None = None


@dataclass(frozen=True)
class Recorded:
    """One recorded cell: where it sat, its axes, the request as planned and as sent."""

    cell_id: str
    index: int
    axes: dict[str, Any]
    planned: dict[str, Any] | None  # local reference files as absolute paths
    sent: dict[str, Any]  # local reference files replaced by what the run uploaded
    seed: int | None = None  # the cell's seed in plan.parquet, when there is one


@dataclass(frozen=True)
class Target:
    """One recorded image to compare with its reproduction."""

    cell_id: str
    result_index: int
    seed: int | None
    sha256: str  # of the bytes as the API delivered them
    path: Path | None  # the recorded file, for the pixel measure


@dataclass(frozen=True)
class Selection:
    """What a select names: the cells to re-issue and the images to compare."""

    cells: list[Recorded]
    targets: list[Target]
    axis_names: list[str]
    name: str  # the sweep's name, kept in the new journal and recipes
    source: str
    notes: list[str]
    dirs: list[Path]  # the recorded run dirs (a reproduction must not write into one)
    originals: frozenset[str] = frozenset()  # taskUUIDs of the recorded tasks


def parse_select(select: Any, image: Any = None, run_dir: Any = None) -> Select:
    """Read `select`, `image` and `run_dir` (as Hydra gives them) into one Select."""
    files = [*_as_list(image)]
    items = _as_list(select)
    picked = [i for i in items if isinstance(i, str) and i.strip().startswith(IMAGE_PREFIXES)]
    if picked and len(picked) != len(items):
        raise SelectError("select mixes image:<file> with other items; use one kind at a time")
    files += [p.strip()[len("image:") :].strip() for p in picked]
    if picked:
        select = None
    if files:
        if run_dir is not None:
            raise SelectError(
                "pass either image=<file> or run_dir=… select=…, not both "
                "(an image carries its own recipe)"
            )
        if select is not None:
            raise SelectError("pass either image=<file> or select=…, not both")
        bad = [f for f in files if not isinstance(f, str) or not f.strip()]
        if bad:
            raise SelectError(f"image: {bad[0]!r} is not a file name")
        return Select(images=tuple(Path(os.path.expanduser(f.strip())) for f in files))
    if run_dir is None or str(run_dir).strip() == "":
        raise SelectError(
            "nothing to reproduce: pass run_dir=<run dir> select=…, or image=<image file>"
        )
    folder = Path(os.path.expanduser(str(run_dir)))
    if select is None:
        raise SelectError(
            "run_dir=… needs select=…: cell ids (select=[id,…]) or a pandas query over the "
            "manifest (select='\"seed == 42\"')"
        )
    if isinstance(select, list):
        if not select:
            raise SelectError("select=[] names no cell")
        return Select(ids=tuple(dict.fromkeys(_cell_id(i) for i in select)), run_dir=folder)
    if isinstance(select, bool) or not isinstance(select, str | int):
        raise SelectError(f"select={select!r} is neither cell ids, a pandas query nor image:<file>")
    text = str(select).strip() if isinstance(select, str) else _cell_id(select)
    if not text:
        raise SelectError("select is empty: name cell ids, a pandas query or image:<file>")
    if _CELL_ID_RE.match(text.lower()):
        return Select(ids=(text.lower(),), run_dir=folder)
    return Select(query=text, run_dir=folder)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _cell_id(item: Any) -> str:
    """One cell id from a select list (Hydra reads an all-digit id as an int: restore it)."""
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 10**20:
        item = str(item).zfill(20)
    if not isinstance(item, str):
        raise SelectError(
            f"select item {item!r} is not a cell id; Hydra read it as a number, so quote it: "
            "select='[\"<id>\"]'"
        )
    text = item.strip().lower()
    if not _CELL_ID_RE.match(text):
        raise SelectError(
            f"select item {item!r} is not a cell id (20 hex characters, the manifest's cell_id)"
        )
    return text


def load_selection(sel: Select) -> Selection:
    """The cells and images a parsed selection names, read from a run dir or image files."""
    if sel.images:
        return _from_images(sel.images)
    assert sel.run_dir is not None
    return _from_run(sel)


def _from_images(paths: Sequence[Path]) -> Selection:
    cells: dict[str, Recorded] = {}
    targets: dict[tuple[str, int], Target] = {}
    name = ""
    for path in paths:
        try:
            data = images.read_reference(path, image=False)  # a FIFO or device is never read
        except ValueError as exc:
            raise SelectError(f"image {path}: {exc}") from exc
        recipe = images.read_recipe(data)
        if recipe is None:
            raise SelectError(
                f"image {path} has no krea-sweep recipe in its metadata "
                "(not written by krea-run, or re-saved by another program)"
            )
        cell_id, request = recipe.get("cell_id"), recipe.get("request")
        if not isinstance(cell_id, str) or not isinstance(request, dict):
            raise SelectError(f"image {path}: its recipe has no cell_id or request")
        planned = recipe.get("cell_request")
        seed = recipe.get("seed")
        if cell_id not in cells:
            cells[cell_id] = Recorded(
                cell_id=cell_id,
                index=len(cells),
                axes={},
                planned=planned if isinstance(planned, dict) else None,
                sent=request,
            )
        index = int(recipe.get("result_index") or 0)
        targets.setdefault(
            (cell_id, index),
            Target(
                cell_id=cell_id,
                result_index=index,
                seed=seed if isinstance(seed, int) else None,
                sha256=images.sha256_hex(images.strip_recipe(data)),
                path=path,
            ),
        )
        name = name or str(recipe.get("sweep") or "")
    source = ", ".join(shown(p) for p in paths)
    dirs = [p.parent.parent for p in paths if rundir.is_run_dir(p.parent.parent)]
    originals = frozenset(task_of(c.sent) for c in cells.values()) - {""}
    return Selection(
        list(cells.values()), list(targets.values()), [], name, source, [], dirs, originals
    )


def _from_run(sel: Select) -> Selection:
    assert sel.run_dir is not None
    try:
        runs = rundir.read_runs(sel.run_dir)
    except ConfigError as exc:  # not a run dir, or an unreadable one: a select that cannot be read
        raise SelectError(str(exc)) from exc
    frame, plans, axis_names, name = runs.frame, _planned(runs), runs.axes, runs.sweep
    where = shown(sel.run_dir)
    notes: list[str] = []
    if sel.ids:
        known = set(frame["cell_id"].dropna())
        unknown = [i for i in sel.ids if i not in known]
        if unknown:
            raise SelectError(
                f"unknown cell id(s), not in {where}'s manifest: {', '.join(unknown)}"
            )
        rows = frame[frame["cell_id"].isin(sel.ids)]
        for cell_id in sel.ids:
            cell_rows = rows[rows["cell_id"] == cell_id]
            if not cell_rows["status"].isin(IMAGE_STATUSES).any():
                code = cell_rows["error_code"].dropna()
                why = f" (it failed: {code.iloc[0]})" if len(code) else ""
                raise SelectError(
                    f"cell {cell_id} has no image in {where}{why}; rerun it with krea-run"
                )
    else:
        rows = _query(frame, sel.query, where)
    ok = rows[rows["status"].isin(IMAGE_STATUSES) & rows["image_sha256"].notna()]
    if ok.empty:
        raise SelectError(
            f"select {sel.query!r} matches {len(rows)} row(s) of {where}, none with an image "
            "(failed cells: rerun them with krea-run)"
        )
    if len(ok) < len(rows):
        notes.append(f"{len(rows) - len(ok)} selected row(s) of failed cells have no image")
    cells: dict[str, Recorded] = {}
    targets: list[Target] = []
    for row in records(ok):
        cell_id = str(row["cell_id"])
        if cell_id not in cells:
            cells[cell_id] = _recorded(row, plans.get(cell_id), axis_names)
        targets.append(
            Target(
                cell_id=cell_id,
                result_index=int(row["result_index"]),
                seed=plain(row["seed"]),
                sha256=str(row["image_sha256"]),
                path=Path(row[rundir.SOURCE]) / str(row["image_path"])
                if plain(row["image_path"])
                else None,
            )
        )
    dirs = [Path(d) for d in dict.fromkeys(frame[rundir.SOURCE])]
    tasks: list[Any] = list(frame["task_uuid"].dropna()) if "task_uuid" in frame.columns else []
    originals = frozenset(str(t) for t in tasks) | {task_of(c.sent) for c in cells.values()}
    return Selection(
        list(cells.values()), targets, axis_names, name, where, notes, dirs, originals - {""}
    )


def _planned(runs: rundir.Runs) -> dict[str, dict[str, Any]]:
    """The plan rows of every run dir by cell_id (the first run dir's, when two plan a cell)."""
    plans: dict[str, dict[str, Any]] = {}
    for run in runs.runs:
        if run.plan is not None and "request_json" in run.plan.columns:
            for row in records(run.plan):
                plans.setdefault(str(row["cell_id"]), row)
    return plans


def task_of(request: dict[str, Any]) -> str:
    """The taskUUID a recorded request was sent with ("" when it has none)."""
    task = request.get("taskUUID")
    return task if isinstance(task, str) else ""


def _query(frame: pd.DataFrame, query: str, where: str) -> pd.DataFrame:
    """The rows a pandas query picks; every failure of the query is one SelectError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mask = frame.drop(columns=rundir.SOURCE).eval(query)
    except Exception as exc:  # pandas raises many types for a query that does not read
        raise SelectError(f"select: cannot read the query {query!r}: {_summary(exc)}") from exc
    if not isinstance(mask, pd.Series) or not pd.api.types.is_bool_dtype(mask.dtype):
        raise SelectError(
            f"select: the query {query!r} is not a condition on the manifest's rows "
            "(like seed == 42 and `settings.creativity` == 'raw')"
        )
    rows = frame[mask.fillna(False).astype(bool)]
    if rows.empty:
        raise SelectError(
            f"select: the query {query!r} matches none of the {len(frame)} rows of {where}'s "
            "manifest"
        )
    return rows


def _summary(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= 160 else text[:159] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _recorded(
    row: dict[str, Any], plan_row: dict[str, Any] | None, axis_names: list[str]
) -> Recorded:
    source = plan_row if plan_row is not None else row
    axes = {a: plain(source.get(a)) for a in axis_names if a in source}
    planned = json.loads(plan_row["request_json"]) if plan_row is not None else None
    return Recorded(
        cell_id=str(row["cell_id"]),
        index=int(row["cell_index"]) if plain(row["cell_index"]) is not None else 0,
        axes=axes,
        planned=planned,
        sent=json.loads(str(row["request_json"])),
        seed=plain(plan_row["seed"]) if plan_row is not None else None,
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as dicts keyed by column name."""
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def plain(value: Any) -> Any:
    """A pandas/numpy scalar as plain Python (missing -> None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
