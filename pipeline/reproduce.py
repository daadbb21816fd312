"""krea-reproduce: re-issue recorded requests with their recorded seeds and compare the images.

What to reproduce (Hydra overrides; exactly one source):

    krea-reproduce run_dir=<run dir> select=[<cell_id>,<cell_id>]     cells by id (or select=<id>)
    krea-reproduce run_dir=<run dir> 'select="seed == 42 and `settings.creativity` == \\"high\\""'
                                                                         a pandas query (quoted)
    krea-reproduce image=<image file>                                  the recipe in an image file
                                                 (also image=[a.png,b.png] or select=image:<file>)

`run_dir` may be a multirun dir: the manifests of its job dirs are merged. The query runs over the
manifest (backticks around column names with dots); rows of failed cells have no image and are
skipped. Every image of a selected cell is compared when cells are named by id; a query or an
image compares just the images it names (the whole cell is re-issued either way).

Each cell is re-issued as it was planned (`plan.parquet`, or the recipe's `cell_request`), so local
reference files are uploaded again; when one no longer exists (or changed), the copy the run
uploaded is sent instead (a Runware image UUID, kept about 30 days), and a note says so. The seed
is the recorded one and the cell id must come out the same (a mismatch is a bug and stops here).
The requests go through krea-run's plan → budget → runner with the store's reproductions area
(`reproductions`) in place of the store, so an image is never served from krea-run's store (it
would be compared with itself) and a reproduction is never answered by the recorded task; the
journal, the budget and recovery by taskUUID still protect the money, and a stopped reproduction
run again takes what it finished from that area instead of paying twice.

An image is `identical` when sha256 of the API bytes (`images.strip_recipe` of the new file)
equals the recorded `image_sha256`; otherwise `different`, measured by the mean absolute pixel
difference (0–255 over all channels) and the share of pixels that differ at all (or a note that
the sizes differ), or `failed` when no image came back. The table is printed and written to
`reproduce.csv` in the new run dir.

Exit codes: 0 every image identical (or a dry run); 1 an image differs or failed, or a bad select
(one line on stderr); 2 and 130 as krea-run (the run stopped early; interrupted).
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from PIL import Image

from pipeline import images, manifest, settings
from pipeline.entry import CONF_DIR, JobContext, console, job_context, report_errors, to_plain
from pipeline.errors import ConfigError, PipelineError, SelectError
from pipeline.journal import JOURNAL_NAME
from pipeline.plan import PLAN_FILE, make_plan
from pipeline.progress import shown
from pipeline.protocol import CLIENT_FIELDS
from pipeline.run import backend_line, execute, gate
from pipeline.store import Store
from pipeline.sweep import Cell, cell_id_of, is_local_file

REPORT_NAME = "reproduce.csv"
REPRODUCTIONS_DIR = "reproductions"
IMAGE_PREFIXES = ("image:", "image=")
RESULTS = ("identical", "different", "failed")
_CELL_ID_RE = re.compile(r"[0-9a-f]{20}\Z")
_CLIENT_FIELDS = frozenset(CLIENT_FIELDS)
_IMAGE_STATUSES = ("ok", "cached")


# --------------------------------------------------------------------------- plain data


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


@dataclass(frozen=True)
class Source:
    """What the runner reads of a sweep, for a reproduction."""

    name: str
    axis_names: list[str]


@dataclass(frozen=True)
class Difference:
    """How far two images are apart (None when their sizes differ)."""

    mean_abs: float | None
    share: float | None
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    """One row of reproduce.csv."""

    cell_id: str
    result_index: int
    seed: int | None
    result: str  # identical | different | failed
    mean_abs_diff: float | None
    differing_pixels: float | None  # share 0..1
    original_sha256: str
    sha256: str | None
    original_image: str
    image: str
    note: str


# --------------------------------------------------------------------------- select


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
    dirs = [p.parent.parent for p in paths if _is_run(p.parent.parent)]
    originals = frozenset(_task_of(c.sent) for c in cells.values()) - {""}
    return Selection(
        list(cells.values()), list(targets.values()), [], name, source, [], dirs, originals
    )


def read_runs(run_dir: Path) -> tuple[pd.DataFrame, dict[str, dict[str, Any]], list[str], str]:
    """A run dir's (or a multirun dir's merged) manifest, plan rows by cell_id, axes, sweep name.

    The manifest gets a `_dir` column: the run dir each row's `image_path` is relative to.
    """
    if not run_dir.is_dir():
        raise SelectError(f"run_dir {run_dir} is not a directory")
    dirs = (
        [run_dir]
        if _is_run(run_dir)
        else sorted((p for p in run_dir.iterdir() if p.is_dir() and _is_run(p)), key=_dir_order)
    )
    if not dirs:
        raise SelectError(
            f"run_dir {run_dir} has no manifest or journal: not a krea-run run dir "
            "(nor a multirun dir of them)"
        )
    frames: list[pd.DataFrame] = []
    plans: dict[str, dict[str, Any]] = {}
    axes: dict[str, None] = {}
    name = ""
    for folder in dirs:
        frame = _read_manifest(folder)
        frame["_dir"] = str(folder)
        frames.append(frame)
        axes.update(dict.fromkeys(c for c in frame.columns if c not in manifest.COLUMNS))
        for cell_id, row in _read_plan(folder).items():
            plans.setdefault(cell_id, row)
        name = name or _sweep_name(folder)
    axes.pop("_dir", None)
    with warnings.catch_warnings():  # all-NA axis columns of one shard: nothing to warn about
        warnings.simplefilter("ignore", FutureWarning)
        merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) > 1:  # a cell in two job dirs: keep one row per image, an image before a failure
        rank = (~merged["status"].isin(_IMAGE_STATUSES)).astype(int)
        merged = (
            merged.assign(_rank=rank)
            .sort_values(["_rank"], kind="stable")
            .drop_duplicates(["cell_id", "result_index"])
            .drop(columns="_rank")
            .sort_values(["cell_index", "result_index"], kind="stable")
            .reset_index(drop=True)
        )
    return merged, plans, list(axes), name


def _sweep_name(folder: Path) -> str:
    """The sweep's name from the journal's header line (the first line), if there is one."""
    try:
        with open(folder / JOURNAL_NAME, "rb") as fh:
            header = json.loads(fh.readline() or b"{}")
    except (OSError, ValueError):
        return ""
    return str(header.get("sweep") or "") if isinstance(header, dict) else ""


def _is_run(folder: Path) -> bool:
    names = (manifest.PARQUET_NAME, manifest.CSV_NAME, JOURNAL_NAME)
    return any((folder / n).is_file() for n in names)


def _dir_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 62, path.name)


def _read_manifest(folder: Path) -> pd.DataFrame:
    """The manifest as written at the end of the run, else rebuilt from its journal."""
    has_file = any((folder / n).is_file() for n in (manifest.PARQUET_NAME, manifest.CSV_NAME))
    try:
        return manifest.read(folder) if has_file else manifest.rebuild(folder)
    except (OSError, ValueError) as exc:
        raise SelectError(f"cannot read the manifest of {folder}: {_summary(exc)}") from exc


def _read_plan(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / PLAN_FILE
    if not path.is_file():
        return {}
    frame = pd.read_parquet(path)
    if "cell_id" not in frame.columns or "request_json" not in frame.columns:
        return {}
    return {str(row["cell_id"]): row for row in _records(frame)}


def _from_run(sel: Select) -> Selection:
    assert sel.run_dir is not None
    frame, plans, axis_names, name = read_runs(sel.run_dir)
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
            if not cell_rows["status"].isin(_IMAGE_STATUSES).any():
                code = cell_rows["error_code"].dropna()
                why = f" (it failed: {code.iloc[0]})" if len(code) else ""
                raise SelectError(
                    f"cell {cell_id} has no image in {where}{why}; rerun it with krea-run"
                )
    else:
        rows = _query(frame, sel.query, where)
    ok = rows[rows["status"].isin(_IMAGE_STATUSES) & rows["image_sha256"].notna()]
    if ok.empty:
        raise SelectError(
            f"select {sel.query!r} matches {len(rows)} row(s) of {where}, none with an image "
            "(failed cells: rerun them with krea-run)"
        )
    if len(ok) < len(rows):
        notes.append(f"{len(rows) - len(ok)} selected row(s) of failed cells have no image")
    cells: dict[str, Recorded] = {}
    targets: list[Target] = []
    for row in _records(ok):
        cell_id = str(row["cell_id"])
        if cell_id not in cells:
            cells[cell_id] = _recorded(row, plans.get(cell_id), axis_names)
        targets.append(
            Target(
                cell_id=cell_id,
                result_index=int(row["result_index"]),
                seed=_py(row["seed"]),
                sha256=str(row["image_sha256"]),
                path=Path(row["_dir"]) / str(row["image_path"]) if _py(row["image_path"]) else None,
            )
        )
    dirs = [Path(d) for d in dict.fromkeys(frame["_dir"])]
    tasks: list[Any] = list(frame["task_uuid"].dropna()) if "task_uuid" in frame.columns else []
    originals = frozenset(str(t) for t in tasks) | {_task_of(c.sent) for c in cells.values()}
    return Selection(
        list(cells.values()), targets, axis_names, name, where, notes, dirs, originals - {""}
    )


def _task_of(request: dict[str, Any]) -> str:
    task = request.get("taskUUID")
    return task if isinstance(task, str) else ""


def _query(frame: pd.DataFrame, query: str, where: str) -> pd.DataFrame:
    """The rows a pandas query picks; every failure of the query is one SelectError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mask = frame.drop(columns="_dir").eval(query)
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
    axes = {a: _py(source.get(a)) for a in axis_names if a in source}
    planned = json.loads(plan_row["request_json"]) if plan_row is not None else None
    return Recorded(
        cell_id=str(row["cell_id"]),
        index=int(row["cell_index"]) if _py(row["cell_index"]) is not None else 0,
        axes=axes,
        planned=planned,
        sent=json.loads(str(row["request_json"])),
        seed=_py(plan_row["seed"]) if plan_row is not None else None,
    )


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def _py(value: Any) -> Any:
    """A pandas/numpy scalar as plain Python (missing -> None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- requests


def rebuild_cell(rec: Recorded) -> tuple[Cell, str | None]:
    """The cell to re-issue, and a note when the request cannot be the planned one."""
    note: str | None = None
    if rec.planned is not None:
        request = rec.planned
        local = _local_files(request)
        gone = [f for f in local if not os.path.isfile(f)]
        if not gone and cell_id_of(request) == rec.cell_id:
            return _cell(rec, request), None
        if not local:
            raise _mismatch(rec, cell_id_of(request))
        why = f"{gone[0]} no longer exists" if gone else "a reference file changed since the run"
        request = _with_sent_refs(rec, request)
        note = (
            f"cell {rec.cell_id}: {why}; re-sending the copy the run uploaded "
            "(a Runware image UUID, kept about 30 days)"
        )
    else:
        request = {k: v for k, v in rec.sent.items() if k not in _CLIENT_FIELDS}
        if "model" not in request:  # a task recovered by its taskUUID after a crash
            raise PipelineError(
                f"cell {rec.cell_id}: the run recorded only its taskUUID (the task was recovered "
                "after a crash) and has no plan.parquet for it, so it cannot be re-issued"
            )
        if cell_id_of(request) != rec.cell_id:
            if not _refs(request):
                raise _mismatch(rec, cell_id_of(request))
            note = (
                f"cell {rec.cell_id}: no planned request recorded; re-sending the request as "
                "sent (reference images as uploaded)"
            )
    return _cell(rec, request), note


def _cell(rec: Recorded, request: dict[str, Any]) -> Cell:
    seed = request.get("seed")
    sent = rec.sent.get("seed")
    recorded = sent if isinstance(sent, int) else rec.seed  # a recovered task: the plan's seed
    if not isinstance(seed, int) or (recorded is not None and seed != recorded):
        raise PipelineError(
            f"cell {rec.cell_id}: the planned seed {seed!r} is not the recorded seed "
            f"({recorded!r}); this is a bug in krea-sweep, please report it"
        )
    return Cell(rec.index, dict(rec.axes), request, seed, rec.cell_id)


def _mismatch(rec: Recorded, got: str) -> PipelineError:
    return PipelineError(
        f"cell {rec.cell_id}: its recorded request hashes to cell id {got}; a reproduction "
        "would not be the same cell. This is a bug in krea-sweep, please report it"
    )


def _refs(request: dict[str, Any]) -> list[Any]:
    inputs = request.get("inputs")
    refs = inputs.get("referenceImages") if isinstance(inputs, dict) else None
    return refs if isinstance(refs, list) else []


def _ref_value(ref: Any) -> Any:
    return ref.get("image") if isinstance(ref, dict) else ref


def _local_files(request: dict[str, Any]) -> list[str]:
    values = [_ref_value(r) for r in _refs(request)]
    return [v for v in values if isinstance(v, str) and is_local_file(v)]


def _with_sent_refs(rec: Recorded, planned: dict[str, Any]) -> dict[str, Any]:
    """The planned request with each local reference file replaced by the copy that was sent."""
    sent = _refs(rec.sent)
    out: list[Any] = []
    for i, ref in enumerate(_refs(planned)):
        value = _ref_value(ref)
        if isinstance(value, str) and is_local_file(value):
            copy = _ref_value(sent[i]) if i < len(sent) else None
            if not isinstance(copy, str) or is_local_file(copy):
                raise PipelineError(
                    f"cell {rec.cell_id}: reference file {value} is gone and the run recorded "
                    "no uploaded copy of it; restore the file to reproduce this cell"
                )
            ref = {**ref, "image": copy} if isinstance(ref, dict) else copy
        out.append(ref)
    return {**planned, "inputs": {**planned["inputs"], "referenceImages": out}}


# --------------------------------------------------------------------------- compare


def pixel_difference(original: bytes, new: bytes) -> Difference:
    """Mean absolute difference (0–255, all channels) and share of differing pixels."""
    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(new)) as b:
        if a.size != b.size:
            return Difference(None, None, f"size {_size(b.size)}, recorded {_size(a.size)}")
        alpha = any(im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info for im in (a, b))
        mode = "RGBA" if alpha else "RGB"
        x = np.asarray(a.convert(mode), dtype=np.int16)
        y = np.asarray(b.convert(mode), dtype=np.int16)
    delta = np.abs(x - y)
    return Difference(float(delta.mean()), float((delta.max(axis=2) > 0).mean()))


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def compare(
    targets: Sequence[Target], run_dir: Path, originals: frozenset[str] = frozenset()
) -> list[Comparison]:
    """Each recorded image against its reproduction in `run_dir` (its manifest and files).

    A row answered by one of the `originals` (a recorded task) is no reproduction: `failed`.
    """
    frame = manifest.read(run_dir) if (run_dir / manifest.PARQUET_NAME).exists() else None
    new: dict[tuple[str, int], dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for row in [] if frame is None else _records(frame):
        task = _py(row.get("task_uuid"))
        if task is not None and str(task) in originals:
            errors[str(row["cell_id"])] = (
                f"answered by the recorded task {task} itself, not by a new one: "
                "no reproduction (rerun to reproduce it)"
            )
        elif row["status"] in _IMAGE_STATUSES and _py(row["image_path"]):
            new[str(row["cell_id"]), int(row["result_index"])] = row
        elif row["status"] == "failed":
            errors[str(row["cell_id"])] = f"{row['error_code']}: {row['error_message']}"
    return [_compare_one(t, new.get((t.cell_id, t.result_index)), errors, run_dir) for t in targets]


def _compare_one(
    target: Target, row: dict[str, Any] | None, errors: dict[str, str], run_dir: Path
) -> Comparison:
    result, digest, image, mean, share = "failed", None, "", None, None
    notes: list[str] = []
    if row is None:
        notes.append(errors.get(target.cell_id, "not run (the run stopped before this cell)"))
    else:
        path = run_dir / str(row["image_path"])
        data = path.read_bytes()
        digest, image = images.sha256_hex(images.strip_recipe(data)), shown(path)
        result = "identical" if digest == target.sha256 else "different"
        seed = _py(row["seed"])
        if target.seed is not None and seed != target.seed:
            notes.append(f"seed {seed}, recorded {target.seed}")
        if result == "different" and target.path is not None and target.path.is_file():
            diff = pixel_difference(target.path.read_bytes(), data)
            mean, share = diff.mean_abs, diff.share
            notes += [diff.note] if diff.note else []
        elif result == "different":
            notes.append("recorded image file not found: no pixel measure")
    return Comparison(
        cell_id=target.cell_id,
        result_index=target.result_index,
        seed=target.seed,
        result=result,
        mean_abs_diff=mean,
        differing_pixels=share,
        original_sha256=target.sha256,
        sha256=digest,
        original_image="" if target.path is None else shown(target.path),
        image=image,
        note="; ".join(notes),
    )


def comparison_frame(rows: Sequence[Comparison]) -> pd.DataFrame:
    """reproduce.csv as a DataFrame (one row per compared image)."""
    columns = list(Comparison.__dataclass_fields__)
    return pd.DataFrame([[getattr(r, c) for c in columns] for r in rows], columns=columns)


def format_table(rows: Sequence[Comparison]) -> str:
    """The comparison as a compact table for a person."""
    counts = {r: sum(1 for c in rows if c.result == r) for r in RESULTS}
    head = f"reproduce  {len(rows)} image(s): " + ", ".join(f"{n} {r}" for r, n in counts.items())
    lines = [
        "",
        head,
        f"  {'cell_id':<20} {'#':>2} {'seed':>11}  {'result':<9} {'mean|Δ|':>8} {'pixels':>8}",
    ]
    for r in rows:
        mean = "" if r.mean_abs_diff is None else f"{r.mean_abs_diff:.2f}"
        share = "" if r.differing_pixels is None else f"{r.differing_pixels:.2%}"
        seed = "" if r.seed is None else str(r.seed)
        line = (
            f"  {r.cell_id:<20} {r.result_index:>2} {seed:>11}  {r.result:<9} {mean:>8} {share:>8}"
        )
        lines.append((line + ("  " + r.note if r.note else "")).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- the job


def reproduce_job(cfg: dict[str, Any], ctx: JobContext) -> int:
    """The whole krea-reproduce job on plain data; returns the exit code."""
    api = settings.api_settings(cfg.get("api") or {})
    runner_cfg = settings.runner_settings(cfg.get("runner") or {})
    budget = settings.budget_usd(cfg)
    dry_run = cfg.get("dry_run") is True
    print(backend_line(api, dry_run), flush=True)
    key = "" if dry_run else settings.api_key(api)  # a missing key fails before any work

    selection = load_selection(
        parse_select(cfg.get("select"), cfg.get("image"), cfg.get("run_dir"))
    )
    if ctx.run_dir.resolve() in {d.resolve() for d in selection.dirs}:
        raise ConfigError(
            f"the new run dir {shown(ctx.run_dir)} is the run being reproduced: a reproduction "
            "writes to a run dir of its own (leave hydra.run.dir alone, or name a new one)"
        )
    cells: list[Cell] = []
    for rec in selection.cells:
        cell, note = rebuild_cell(rec)
        cells.append(cell)
        if note:
            selection.notes.append(note)
    print(
        f"reproduce  {len(selection.targets)} image(s) of {len(cells)} cell(s) from "
        f"{selection.source}",
        flush=True,
    )
    for note in selection.notes:
        print(f"note       {note}", flush=True)
    price_table = cfg.get("pricing") or {}
    source = Source(selection.name or "reproduce", selection.axis_names)
    where = settings.store_location(cfg)
    store = reproductions(where.root, api.backend)
    originals = selection.originals | {_task_of(r.sent) for r in selection.cells}
    for note in _prepare_area(store, cells, originals - {""}, api.backend):
        print(f"note       {note}", flush=True)
    plan = make_plan(
        lambda: cells,
        price_table=price_table,
        axis_names=source.axis_names,
        budget_usd=budget,
        store=store,
        out_dir=ctx.run_dir,
        backend=api.backend,
    )
    stop = gate(plan, api, dry_run=dry_run, confirm=cfg.get("confirm") is not False, store=where)
    if stop is not None:
        return stop
    code = execute(
        cells,
        plan,
        sweep=source,
        api=api,
        key=key,
        runner_cfg=runner_cfg,
        store=store,
        price_table=price_table,
        run_dir=ctx.run_dir,
        budget=settings.budget_settings(cfg),
    )
    rows = compare(selection.targets, ctx.run_dir, originals - {""})
    report = ctx.run_dir / REPORT_NAME
    images.write_atomic(report, comparison_frame(rows).to_csv(index=False).encode("utf-8"))
    print(format_table(rows), flush=True)
    print(f"written    {shown(report)}", flush=True)
    if code in (2, 130):
        return code
    if all(r.result != "failed" for r in rows):
        # Every reproduction came back and is reported: the next krea-reproduce asks the API anew.
        for cell in cells:
            store.remove(cell.cell_id)
            store.clear_intent(cell.cell_id)  # settled: its task must not answer a later one
    return 0 if all(r.result == "identical" for r in rows) else 1


def reproductions(store_root: Path, backend: str) -> Store:
    """The store's reproductions area for one backend: never read by krea-run.

    `<store.dir>/<backend>/reproductions/` keeps finished reproductions (by cell_id) and the
    submit intents of reproductions, apart from krea-run's cells and intents: a stopped
    krea-reproduce run again takes the reproductions it had finished from here and recovers its
    tasks in flight by taskUUID, so nothing is paid twice; a reproduction never sees a krea-run
    intent (whose task would be the original). A krea-reproduce that gets every image back
    removes its cells from here, so a later one asks the API again.
    """
    return Store(store_root / backend / REPRODUCTIONS_DIR)


def _prepare_area(
    store: Store, cells: Sequence[Cell], originals: frozenset[str], backend: str
) -> list[str]:
    """Drop what in the area is an original task; notes on what an earlier run finished."""
    notes: list[str] = []
    earlier = 0
    for cell in cells:
        if store.intent(cell.cell_id) in originals:
            store.clear_intent(cell.cell_id)
            notes.append(f"cell {cell.cell_id}: a submit intent named the recorded task; dropped")
        stored = store.get(cell.cell_id, backend=backend)
        if stored is None:
            continue
        tasks = {str(i.get("task_uuid")) for i in stored.record.get("images") or []}
        if tasks & originals:
            store.remove(cell.cell_id)
            notes.append(f"cell {cell.cell_id}: a kept reproduction was the recorded task; dropped")
        else:
            earlier += 1
    if earlier:
        notes.append(
            f"{earlier} cell(s) were reproduced by an earlier krea-reproduce that stopped; their "
            "images are taken from it (paid once, not again)"
        )
    return notes


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="reproduce")
def main(cfg: DictConfig) -> None:
    """Console script `krea-reproduce`."""
    report_errors("krea-reproduce", lambda: reproduce_job(to_plain(cfg), job_context()), cfg)


def cli() -> None:
    """Console script `krea-reproduce`."""
    console(main, "krea-reproduce")


if __name__ == "__main__":
    cli()
