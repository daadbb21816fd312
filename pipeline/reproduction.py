"""Re-issuing recorded cells and comparing what comes back with what was recorded.

`rebuild_cell` turns a recorded cell into the cell to send (as planned; a reference file that is
gone is replaced by the copy the run uploaded); `compare` measures each new image against the
recorded one; `reproductions` is the store area krea-reproduce runs against.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import images, manifest, rundir
from pipeline.errors import PipelineError
from pipeline.progress import shown
from pipeline.protocol import CLIENT_FIELDS
from pipeline.selection import IMAGE_STATUSES, Recorded, Target, plain, records
from pipeline.store import Store
from pipeline.sweep import Cell, cell_id_of, is_local_file

REPRODUCTIONS_DIR = "reproductions"
RESULTS = ("identical", "different", "failed")


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
        request = {k: v for k, v in rec.sent.items() if k not in CLIENT_FIELDS}
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
    frame = manifest.read(run_dir) if (run_dir / rundir.MANIFEST_PARQUET).exists() else None
    new: dict[tuple[str, int], dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for row in [] if frame is None else records(frame):
        task = plain(row.get("task_uuid"))
        if task is not None and str(task) in originals:
            errors[str(row["cell_id"])] = (
                f"answered by the recorded task {task} itself, not by a new one: "
                "no reproduction (rerun to reproduce it)"
            )
        elif row["status"] in IMAGE_STATUSES and plain(row["image_path"]):
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
        seed = plain(row["seed"])
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


def prepare_area(
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
