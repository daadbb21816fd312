"""The report's interactive grid explorer: a manifest frame → JSON data, thumbnails and links.

`krea-report` writes, beside `index.html` (everything the page loads stays in the report folder):

    explorer.js, explorer.css       the viewer (plain JavaScript shipped in pipeline/assets/)
    explorer-data.js                `window.KREA_EXPLORER = {...}`: axes, defaults, one row per tile
    explorer/detail-NNN.js          prompt, request as sent, error text, reproduce command, per
                                    chunk of DETAIL_CHUNK tiles; loaded when a tile is opened
    thumbs/<key>-<px>.jpg           one thumbnail per image (key: the image's SHA-256), made in
                                    parallel and reused on a rerun
    images/<run>/<file>             the full images, hard links (else symlinks) to the run's files

Data is plain JSON in `<script>` files (no fetch: pages opened from file:// may not fetch).
A tile is one manifest row (an image, a failed cell) or one planned cell that never ran.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import images, manifest, rundir, sheets
from pipeline.reporting.text import is_missing

DATA_NAME = "explorer-data.js"
DETAIL_DIR = "explorer"
THUMBS_DIR = "thumbs"
FULL_DIR = "images"
ASSETS = ("explorer.js", "explorer.css")
DETAIL_CHUNK = 500  # tiles per detail file
SEED = "seed"
IMAGE = "image"  # pseudo-axis: result_index, when a cell returned several images
STATUS_CODES = {"ok": 0, "cached": 1, "failed": 2, sheets.NOT_RUN: 3}
MAX_FACET_VALUES = 12  # a default facet axis has at most this many values


@dataclass(frozen=True)
class ExplorerOptions:
    """How the explorer's files are made."""

    thumb_px: int  # longest side of a thumbnail file (`report.explorer_thumb_px`)
    workers: int  # threads making thumbnails (0: one per CPU; `report.thumb_workers`)


@dataclass(frozen=True)
class ExplorerFiles:
    """What `write` produced: counts for the terminal and the page's section."""

    tiles: int
    thumbs_made: int
    thumbs_reused: int
    thumbs_failed: int
    html: str
    previews: dict[Path, Path]  # image file → its thumbnail (for the contact sheets)


# --- axes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One axis of the explorer: its values in display order and each tile's value index."""

    name: str
    values: list[str]  # ids shown and used in the URL (short `#k` for list-valued axes)
    legend: list[str] | None  # the full value of each id (list-valued axes only)
    codes: np.ndarray[Any, Any]  # per tile: index into values


def _axis(name: str, series: pd.Series[Any]) -> Axis:
    """One axis from its column: values in sheet order, `#k` + legend for lists and objects."""
    labels, order = sheets.axis_labels(series)
    short = sheets.short_labels(order)
    legend = None
    if short is not None:
        legend = [short[v][1] for v in order]
        labels = np.array([short[v][0] for v in labels], dtype=object)
        order = [short[v][0] for v in order]
    index = {v: i for i, v in enumerate(order)}
    codes = np.array([index[v] for v in labels.tolist()], dtype=np.int64)
    return Axis(name, order, legend, codes)


def explorer_axes(frame: pd.DataFrame, axes: Sequence[str]) -> list[Axis]:
    """The swept axes present, then `seed`, then `image` when a cell has several images."""
    out = [_axis(a, frame[a]) for a in axes if a in frame.columns and a != sheets.RUN]
    names = {a.name for a in out}
    if SEED not in names and SEED in frame.columns:
        out.append(_axis(SEED, frame[SEED]))
    if "result_index" in frame.columns and IMAGE not in names:
        results = frame["result_index"].astype("Float64").fillna(0).astype("int64")
        if results.nunique() > 1:
            out.append(_axis(IMAGE, results.rename(IMAGE)))
    return out


def default_view(
    frame: pd.DataFrame, axes: Sequence[str], rows: str | None = None, cols: str | None = None
) -> dict[str, str | None]:
    """x (columns), y (rows) and facet shown first: the contact sheets' choice, seeds when alone."""
    swept = [a for a in axes if a in frame.columns and a not in (SEED, IMAGE, sheets.RUN)]
    varying = [a for a in swept if frame[a].nunique(dropna=False) > 1]
    seeds = SEED in frame.columns and frame[SEED].nunique(dropna=False) > 1
    x = y = facet = None
    if len(varying) >= 2 or rows or cols:
        y, x, facets = sheets.choose_axes(frame, swept, rows, cols)
        live = [f for f in facets if f in varying]
        if live and frame[live[0]].nunique(dropna=False) <= MAX_FACET_VALUES:
            facet = live[0]
    elif varying:
        x = varying[0]
        if seeds and frame.groupby(x, dropna=False)[SEED].nunique().max() > 1:
            y = SEED  # a seed list crossed with one axis: seeds down, the axis across
    elif seeds:
        x = SEED
    return {"x": x, "y": y, "facet": facet}


# --- files ---------------------------------------------------------------------------------------


def _num(v: Any, places: int = 9) -> float | None:
    """A number for JSON (rounded), or None."""
    if is_missing(v):
        return None
    return round(float(v), places)


def _text(v: Any) -> str | None:
    """Text for JSON, or None."""
    return None if is_missing(v) else str(v)


def _source(row_source: Any) -> Path:
    """The run dir a row's image path is relative to."""
    return Path(str(row_source)) if isinstance(row_source, str) and row_source else Path()


def thumb_key(path: Path, sha: str | None) -> str:
    """A thumbnail's file stem: the image's SHA-256 when known, else a hash of path, size, mtime."""
    if sha:
        return sha[:32]
    try:
        st = path.stat()
        token = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        token = str(path)
    return "p" + hashlib.sha256(token.encode()).hexdigest()[:31]


def make_thumb(src: Path, dst: Path, px: int) -> bool:
    """Write a JPEG thumbnail of `src` (longest side `px`) atomically; False if unreadable."""
    try:
        im = images.thumbnail(src.read_bytes(), px)
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    if im.mode != "RGB":
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A") if im.mode == "RGBA" else None)
        im = flat
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    im.save(tmp, format="JPEG", quality=82)
    os.replace(tmp, dst)
    return True


def make_thumbs(jobs: Sequence[tuple[Path, Path]], px: int, workers: int) -> tuple[int, int, int]:
    """Thumbnails for (source, target) pairs in parallel; existing targets are reused.

    Returns (made, reused, failed).
    """
    unique = {d: s for s, d in jobs}  # the same image in two runs: one thumbnail
    todo = [(s, d) for d, s in unique.items() if not d.is_file()]
    reused = len(unique) - len(todo)
    if not todo:
        return 0, reused, 0
    n = workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=max(1, min(n, len(todo)))) as pool:
        done = list(pool.map(lambda job: make_thumb(job[0], job[1], px), todo))
    made = sum(done)
    return made, reused, len(done) - made


def link_full(src: Path, dst: Path) -> bool:
    """`dst` as a hard link to `src` (else a relative symlink); True when `dst` is there."""
    if dst.exists() or dst.is_symlink():
        try:
            if os.path.samefile(src, dst):
                return True
        except OSError:
            pass
        dst.unlink()  # an earlier report's link to another file: replaced
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError:
        pass
    try:
        os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)
        return True
    except OSError:
        return False


@lru_cache(maxsize=1024)
def _dir_key(run_dir: Path) -> str:
    """A short stable folder name for one run dir's linked images."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]


def reproduce_command(run_dir: Path, cell_id: str) -> str:
    """The exact `krea-reproduce` command for one cell of a run dir."""
    return f"krea-reproduce run_dir={shlex.quote(str(run_dir))} 'select=[{cell_id}]'"


def _js(name: str, value: Any) -> str:
    """`<name><value as JSON>;` safe inside any script (no `</`, no line separators)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"{name}{text};\n"


# --- the data ------------------------------------------------------------------------------------


def explorer_data(
    frame: pd.DataFrame,
    axes: Sequence[str],
    runs: Sequence[str],
    out_dir: Path,
    options: ExplorerOptions,
    *,
    rows: str | None = None,
    cols: str | None = None,
) -> tuple[
    dict[str, Any], list[list[dict[str, Any]]], list[tuple[Path, Path]], list[tuple[Path, Path]]
]:
    """The page's data, the detail chunks, thumbnail jobs and full-image links to make.

    `frame` is the report's sheet frame (manifest rows + not-run rows, in cell order, with the
    `_run_dir` column and `run` when comparing). Nothing is written here.
    """
    frame = frame.reset_index(drop=True)
    n = len(frame)
    ax = explorer_axes(frame, axes)
    run_index = {r: i for i, r in enumerate(runs)}
    run_col = (
        frame[sheets.RUN].astype(object).map(run_index).fillna(0).astype(int).tolist()
        if sheets.RUN in frame.columns and len(runs) > 1
        else [0] * n
    )

    def col(name: str) -> list[Any]:
        return frame[name].astype(object).tolist() if name in frame.columns else [None] * n

    status = col("status")
    sources = col(rundir.SOURCE)
    rels = col("image_path")
    shas = col("image_sha256")
    widths, heights = col("width"), col("height")
    source_names: dict[str, int] = {}
    thumbs_px = options.thumb_px
    thumb_jobs: list[tuple[Path, Path]] = []
    links: list[tuple[Path, Path]] = []
    thumb: list[str | None] = []
    full: list[str | None] = []
    src_ix: list[int] = []
    for k in range(n):
        src_dir = _source(sources[k])
        src_ix.append(source_names.setdefault(str(src_dir), len(source_names)))
        rel = rels[k]
        if status[k] in ("ok", "cached") and not is_missing(rel):
            path = src_dir / str(rel)
            if path.is_file():
                key = thumb_key(path, _text(shas[k]))
                t_rel = f"{THUMBS_DIR}/{key[:2]}/{key}-{thumbs_px}.jpg"
                thumb_jobs.append((path, out_dir / t_rel))
                f_rel = f"{FULL_DIR}/{_dir_key(src_dir)}/{Path(str(rel)).name}"
                links.append((path, out_dir / f_rel))
                thumb.append(t_rel)
                full.append(f_rel)
                continue
        thumb.append(None)
        full.append(None)
    tiles: dict[str, list[Any]] = {
        "run": run_col,
        "cell": [str(c) for c in col("cell_id")],
        "result": [0 if is_missing(v) else int(v) for v in col("result_index")],
        "seed": [_text(v) for v in col("seed")],
        "status": [STATUS_CODES.get(str(s), 3) for s in status],
        "thumb": thumb,
        "full": full,
        "w": [None if is_missing(v) else int(v) for v in widths],
        "h": [None if is_missing(v) else int(v) for v in heights],
        "cost": [_num(v) for v in col("cost_usd")],
        "estimate": [_num(v) for v in col("estimated_cost_usd")],
        "latency": [_num(v, 4) for v in col("latency_s")],
        "attempts": [None if is_missing(v) else int(v) for v in col("attempts")],
        "error": [_text(v) for v in col("error_code")],
        "values": [a.codes.tolist() for a in ax],
    }
    view = default_view(frame, [a.name for a in ax], rows, cols)
    data = {
        "version": 1,
        "runs": list(runs),
        "axes": [{"name": a.name, "values": a.values, "legend": a.legend} for a in ax],
        "defaults": view,
        "chunk": DETAIL_CHUNK,
        "chunks": max(1, math.ceil(n / DETAIL_CHUNK)),
        "tiles": tiles,
    }
    prompts, requests, messages = col("positivePrompt"), col("request_json"), col("error_message")
    indexes, tasks, finished = col("cell_index"), col("task_uuid"), col("finished_at")
    source_list = list(source_names)
    details: list[list[dict[str, Any]]] = []
    for start in range(0, max(n, 1), DETAIL_CHUNK):
        chunk = []
        for k in range(start, min(n, start + DETAIL_CHUNK)):
            cell_id = tiles["cell"][k]
            chunk.append(
                {
                    "prompt": _text(prompts[k]),
                    "request": _text(requests[k]),
                    "message": _text(messages[k]),
                    "cell_index": None if is_missing(indexes[k]) else int(indexes[k]),
                    "task": _text(tasks[k]),
                    "finished": manifest.time_text(finished[k]),
                    "run_dir": source_list[src_ix[k]],
                    "reproduce": None  # not in the manifest: krea-run in the run dir finishes it
                    if status[k] == sheets.NOT_RUN
                    else reproduce_command(Path(source_list[src_ix[k]]), cell_id),
                }
            )
        details.append(chunk)
    return data, details, thumb_jobs, links


SECTION = """<h2 id="explorer">Explorer</h2>
<p class="note">Pick any two axes for rows and columns (the view is kept in the address, e.g.
<code>index.html#x=settings.creativity&amp;y=vars.subject</code>); click a tile for its image,
request, cost and the command that reproduces it.</p>
<div id="kx" class="kx" data-tiles="{tiles}"><p class="note">loading the explorer…</p></div>
<noscript><p class="note">The explorer needs JavaScript; the tables and contact sheets below
do not.</p></noscript>"""

SCRIPTS = (
    f'<link rel="stylesheet" href="{ASSETS[1]}">',
    f'<script src="{DATA_NAME}"></script>',
    f'<script src="{ASSETS[0]}"></script>',
)


def write(
    frame: pd.DataFrame,
    axes: Sequence[str],
    runs: Sequence[str],
    out_dir: Path,
    options: ExplorerOptions,
    *,
    rows: str | None = None,
    cols: str | None = None,
) -> ExplorerFiles:
    """Write the explorer's files into `out_dir`; the returned html goes into index.html."""
    data, details, thumb_jobs, links = explorer_data(
        frame, axes, runs, out_dir, options, rows=rows, cols=cols
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in {d.parent for _, d in thumb_jobs}:
        d.mkdir(parents=True, exist_ok=True)
    made, reused, failed = make_thumbs(thumb_jobs, options.thumb_px, options.workers)
    linked = {d for s, d in links if link_full(s, d)}
    tiles = data["tiles"]
    for k, rel in enumerate(tiles["thumb"]):  # a tile whose file is not there shows no image
        if rel is not None and not (out_dir / rel).is_file():
            tiles["thumb"][k] = None
    tiles["full"] = [f if f is not None and out_dir / f in linked else None for f in tiles["full"]]
    for name in ASSETS:
        text = resources.files("pipeline").joinpath("assets", name).read_text(encoding="utf-8")
        (out_dir / name).write_text(text, encoding="utf-8")
    (out_dir / DATA_NAME).write_text(_js("window.KREA_EXPLORER=", data), encoding="utf-8")
    detail_dir = out_dir / DETAIL_DIR
    detail_dir.mkdir(exist_ok=True)
    for old in detail_dir.glob("detail-*.js"):
        old.unlink()
    for i, chunk in enumerate(details):
        text = _js(f"window.KREA_DETAIL=window.KREA_DETAIL||{{}};KREA_DETAIL[{i}]=", chunk)
        (detail_dir / f"detail-{i:03d}.js").write_text(text, encoding="utf-8")
    html = SECTION.replace("{tiles}", str(len(data["tiles"]["cell"])))
    previews = {s: d for s, d in thumb_jobs if d.is_file()}
    return ExplorerFiles(len(data["tiles"]["cell"]), made, reused, failed, html, previews)
