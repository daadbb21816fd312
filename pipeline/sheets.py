"""Contact sheets: labelled grids of thumbnails, one per facet, built from a manifest afterwards.

Three pure steps, each testable alone:

    plan_sheets(frame, axes, options) -> [SheetSpec]      what goes where (labels, cells), no pixels
    fit_sheets(specs, options)        -> [SheetLayout]     geometry: boxes of every label and cell;
                                                           shrinks thumbnails or splits wide grids
    render(layout)                    -> PIL.Image          draws the layout

Rows of the frame are manifest rows (status ok / cached / failed) plus optional pseudo-rows with
status `not run` (planned cells that never finished). Image paths are relative to the run dir named
in the hidden `_run_dir` column (or to the current folder when it is absent).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from pipeline import images
from pipeline.errors import ConfigError, first_line
from pipeline.rundir import SOURCE

RUN = "run"
NOT_RUN = "not run"
ABSENT = "not in sweep"  # a row × column combination the sweep never had (e.g. excluded)
NONE_LABEL = "(none)"
GRID_ROW = "_grid_row"
GRID_COL = "_grid_col"

RGB = tuple[int, int, int]
BACKGROUND: RGB = (255, 255, 255)
INK: RGB = (25, 25, 25)
MUTED: RGB = (105, 105, 105)
TILE_BG: RGB = (244, 244, 244)
FAILED_BG: RGB = (252, 226, 226)
FAILED_FG: RGB = (150, 25, 25)
FAILED_EDGE: RGB = (215, 140, 140)
NOT_RUN_BG: RGB = (234, 234, 234)
NOT_RUN_FG: RGB = (110, 110, 110)
MISSING_BG: RGB = (255, 242, 210)
MISSING_FG: RGB = (120, 85, 0)
BADGE_BG: RGB = (40, 40, 40)
BADGE_FAILED_BG: RGB = (165, 30, 30)

PAD = 14  # outer margin
GAP = 6  # between cells
MAX_TILES = 4  # images drawn in one cell (2 × 2); more are counted in a badge

STATE_FILL: dict[str, RGB] = {
    "failed": FAILED_BG,
    NOT_RUN: NOT_RUN_BG,
    ABSENT: (248, 248, 248),
    "missing": MISSING_BG,
    "ok": TILE_BG,
    "partial": TILE_BG,
}


# --- data model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle in sheet pixels; `right` and `bottom` are exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.right - self.left

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.bottom - self.top

    def contains(self, other: Box) -> bool:
        """Whether `other` lies inside this box."""
        return (
            self.left <= other.left
            and self.top <= other.top
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share any pixel."""
        return (
            self.left < other.right
            and other.left < self.right
            and self.top < other.bottom
            and other.top < self.bottom
        )


@dataclass(frozen=True, slots=True)
class Text:
    """A label as drawn: role, full text, its wrapped/cut lines, and where it goes."""

    role: str  # title | axis | row | col | cell | badge
    text: str
    lines: tuple[str, ...]
    box: Box
    size: int
    align: str = "left"  # left | center | right
    valign: str = "top"  # top | middle | bottom
    color: RGB = INK
    fill: RGB | None = None  # background (badges)
    bold: bool = False


@dataclass(frozen=True, slots=True)
class Cell:
    """What one grid position holds: its images and its failures."""

    images: tuple[Path, ...] = ()  # image files that exist, in cell/result order
    total: int = 0  # ok + cached rows
    missing: int = 0  # ok/cached rows whose file is not there
    failed: int = 0  # failed rows
    error_codes: tuple[str, ...] = ()
    in_sweep: bool = True  # False for a grid position no cell of the sweep has

    @property
    def state(self) -> str:
        """ok | partial | failed | missing | not run | not in sweep."""
        if not self.in_sweep:
            return ABSENT
        if self.total:
            if not self.images:
                return "missing"
            return "partial" if self.failed else "ok"
        return "failed" if self.failed else NOT_RUN


@dataclass(frozen=True)
class SheetSpec:
    """The content of one sheet: its facet, row/column labels and cells; no geometry."""

    title: str
    facet: tuple[tuple[str, str], ...]
    row_axis: str | None
    col_axis: str | None
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    cells: Mapping[tuple[int, int], Cell]
    part: tuple[int, int] = (1, 1)
    aspect: float = 1.0  # height / width of the images (cells take this shape)
    legend: tuple[tuple[str, str, str], ...] = ()  # (axis, short label, full value) of list axes

    def cell(self, row: int, col: int) -> Cell:
        """The cell at (row, col); a `not in sweep` blank when no cell of the sweep is there."""
        return self.cells.get((row, col), Cell(in_sweep=False))


@dataclass(frozen=True, slots=True)
class Slot:
    """One grid position on the sheet."""

    row: int
    col: int
    box: Box
    state: str
    cell: Cell


@dataclass(frozen=True)
class SheetLayout:
    """Everything `render` draws: the canvas size, every label and every cell box."""

    spec: SheetSpec
    width: int
    height: int
    thumb_px: int
    texts: tuple[Text, ...]
    slots: tuple[Slot, ...]

    def slot(self, row: int, col: int) -> Slot:
        """The slot at (row, col)."""
        for s in self.slots:
            if (s.row, s.col) == (row, col):
                return s
        raise KeyError((row, col))

    def texts_of(self, role: str) -> list[Text]:
        """The labels with this role, in drawing order."""
        return [t for t in self.texts if t.role == role]


@dataclass(frozen=True, kw_only=True)
class SheetOptions:
    """How sheets are cut and sized (`thumb_px`: the caller's, from `report.thumb_px`)."""

    rows: str | None = None
    cols: str | None = None
    query: str | None = None
    thumb_px: int
    min_thumb_px: int = 96
    max_px: int = 4096
    max_sheets: int = 60
    heading: str = "all cells"
    compare: bool = False  # several runs: `run` becomes the first facet


# --- labels and ordering -----------------------------------------------------------------------


def value_label(value: Any) -> str:
    """How an axis value is written on a sheet: floats keep a decimal point, NA is `(none)`."""
    if value is None or value is pd.NA or value is pd.NaT:
        return NONE_LABEL
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return NONE_LABEL
        return f"{f:.1f}" if f.is_integer() and abs(f) < 1e15 else repr(f)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value)


def is_numeric(series: pd.Series[Any]) -> bool:
    """Whether a column holds numbers (sorted ascending on sheets and in tables)."""
    dtype = series.dtype
    return bool(pd.api.types.is_numeric_dtype(dtype)) and not pd.api.types.is_bool_dtype(dtype)


def axis_labels(series: pd.Series[Any]) -> tuple[np.ndarray[Any, Any], list[str]]:
    """Each row's label and the labels in display order (numbers ascending, else first seen)."""
    codes, uniques = pd.factorize(series, sort=is_numeric(series), use_na_sentinel=True)
    names = [value_label(u) for u in uniques]
    table = np.array([*names, NONE_LABEL], dtype=object)
    labels = table[np.where(codes < 0, len(names), codes)]
    order = list(dict.fromkeys(names))
    if (codes < 0).any() and NONE_LABEL not in order:
        order.append(NONE_LABEL)
    return labels, order


def structured(label: str) -> Any:
    """The list or object an axis value written as JSON text stands for, else None."""
    if not label or label[0] not in "[{":
        return None
    try:
        value = json.loads(label)
    except ValueError:
        return None
    return value if isinstance(value, list | dict) else None


def describe_value(value: Any) -> str:
    """A list / object value as readable words: `image: refs/a.png, strength: 0.5; image: …`."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {describe_value(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, list):
        return "; ".join(describe_value(v) for v in value) or "[]"
    if value is None:
        return "null"
    return value_label(value)


def short_labels(order: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """For an axis of lists/objects: label → (short label `#k`, readable full value), else None."""
    if not any(structured(v) is not None for v in order):
        return None
    out: dict[str, tuple[str, str]] = {}
    k = 0
    for label in order:
        value = structured(label)
        if value is None:
            out[label] = (label, label)
            continue
        k += 1
        out[label] = (f"#{k}", describe_value(value))
    return out


def sparse(frame: pd.DataFrame, rows: str | None, cols: str | None, facets: Sequence[str]) -> bool:
    """Whether this choice fills < 1/5 of its grid positions (a sampled sweep, not a grid)."""
    live = [f for f in facets if f in frame.columns and frame[f].nunique(dropna=False) > 1]
    if not live or not len(frame):
        return False
    n_facets = len(frame[live].astype(object).drop_duplicates())
    size = n_facets
    for axis in (rows, cols):
        if axis is not None:
            size *= frame[axis].nunique(dropna=False)
    ids = frame["cell_id"].nunique() if "cell_id" in frame.columns else len(frame)
    return ids < 0.2 * size


def apply_filter(frame: pd.DataFrame, query: str | None) -> pd.DataFrame:
    """The rows matching a pandas query (ConfigError naming the problem when it is invalid)."""
    if not query:
        return frame
    try:
        out = frame.query(query, engine="python")
    except Exception as exc:  # pandas raises many types for a bad expression
        raise ConfigError(f"report.filter {query!r} cannot be used: {first_line(exc)}") from exc
    if not isinstance(out, pd.DataFrame):
        raise ConfigError(f"report.filter {query!r} does not select rows")
    return out


def choose_axes(
    frame: pd.DataFrame,
    axes: Sequence[str],
    rows_axis: str | None = None,
    cols_axis: str | None = None,
    compare: bool = False,
) -> tuple[str | None, str | None, list[str]]:
    """(rows axis, columns axis, facet axes): defaults are the first two axes that vary."""
    present = [a for a in axes if a in frame.columns]
    usable = {c for c in frame.columns if not str(c).startswith("_")}
    for key, name in (("report.rows", rows_axis), ("report.cols", cols_axis)):
        if name is not None and name not in usable:
            known = ", ".join(present) or "none"
            raise ConfigError(f"{key}={name!r} is not a manifest column (swept axes: {known})")
    if rows_axis is not None and rows_axis == cols_axis:
        raise ConfigError(f"report.rows and report.cols are both {rows_axis!r}")
    varying = [a for a in present if frame[a].nunique(dropna=False) > 1] or present
    rows, cols = rows_axis, cols_axis
    if rows is None and cols is None:
        if len(varying) >= 2:
            rows, cols = varying[0], varying[1]
        elif varying:
            cols = varying[0]  # one axis: one row
    elif rows is None:
        rows = next((a for a in varying if a != cols), None)
    elif cols is None:
        cols = next((a for a in varying if a != rows), None)
    facets = [a for a in present if a not in (rows, cols)]
    if rows_axis is None and cols_axis is None and sparse(frame, rows, cols, facets):
        # a sampled sweep: one-image facets help nobody; the two axes with the fewest values go
        # on rows and columns and the others are shown together in each cell
        few = sorted(varying, key=lambda a: (frame[a].nunique(dropna=False), varying.index(a)))
        rows, cols = few[0], few[1]
        facets = []
    if compare and RUN not in (rows, cols):
        facets.insert(0, RUN)
    return rows, cols, facets


# --- planning ----------------------------------------------------------------------------------


def _image_path(source: Any, rel: Any) -> Path:
    base = Path(str(source)) if isinstance(source, str) and source else Path()
    return base / str(rel)


def _cell(rows: pd.DataFrame) -> Cell:
    """The content of one grid position from its rows (already in cell/result order)."""
    status = rows["status"].astype(object).to_numpy()
    good = (status == "ok") | (status == "cached")
    failed = status == "failed"
    paths: list[Path] = []
    missing = 0
    sources = rows[SOURCE].to_numpy() if SOURCE in rows.columns else [None] * len(rows)
    rels = rows["image_path"].to_numpy() if "image_path" in rows.columns else [None] * len(rows)
    for is_good, source, rel in zip(good, sources, rels, strict=True):
        if not is_good:
            continue
        if rel is None or rel is pd.NA or (isinstance(rel, float) and math.isnan(rel)):
            missing += 1
            continue
        path = _image_path(source, rel)
        if path.is_file():
            paths.append(path)
        else:
            missing += 1
    codes: list[str] = []
    if failed.any() and "error_code" in rows.columns:
        codes = [
            value_label(c) if value_label(c) != NONE_LABEL else "unknown"
            for c in rows["error_code"].to_numpy()[failed]
        ]
    return Cell(
        images=tuple(paths),
        total=int(good.sum()),
        missing=missing,
        failed=int(failed.sum()),
        error_codes=tuple(dict.fromkeys(codes)),
    )


def _aspect(rows: pd.DataFrame) -> float:
    """The height / width shared by the rows' images, else 1 (square cells)."""
    if "width" not in rows.columns or "height" not in rows.columns:
        return 1.0

    def floats(col: str) -> np.ndarray[Any, Any]:
        values = pd.to_numeric(rows[col].astype(object), errors="coerce")
        return values.astype("float64").to_numpy()

    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = floats("height") / floats("width")
    shapes = np.unique(np.round(ratio[np.isfinite(ratio) & (ratio > 0)], 3))
    return float(shapes[0]) if len(shapes) == 1 else 1.0


def _grid_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Synthetic row/column labels laying cells out by cell_index in a near-square grid."""
    index = frame["cell_index"] if "cell_index" in frame.columns else pd.Series(range(len(frame)))
    codes, uniques = pd.factorize(index, sort=True)
    n = max(1, len(uniques))
    ncols = max(1, math.ceil(math.sqrt(n)))
    firsts = [value_label(uniques[i]) for i in range(0, n, ncols)]
    out = frame.copy()
    out[GRID_ROW] = np.array(firsts, dtype=object)[codes // ncols] if len(frame) else []
    out[GRID_COL] = np.array([f"+{k}" for k in range(ncols)], dtype=object)[codes % ncols]
    return out


def plan_sheets(frame: pd.DataFrame, axes: Sequence[str], options: SheetOptions) -> list[SheetSpec]:
    """One sheet spec per facet (every present combination of the axes not on rows/columns)."""
    if not len(frame):
        return []
    rows_axis, cols_axis, facets = choose_axes(  # before the filter
        frame, axes, options.rows, options.cols, options.compare
    )
    frame = apply_filter(frame, options.query)
    if not len(frame):
        return []
    facets = [f for f in facets if f in frame.columns]
    grid = rows_axis is None and cols_axis is None
    if grid:
        frame = _grid_columns(frame)
        rows_axis, cols_axis = GRID_ROW, GRID_COL
    frame = frame.reset_index(drop=True)
    labels: dict[str, np.ndarray[Any, Any]] = {}
    orders: dict[str, list[str]] = {}
    legends: dict[str, list[tuple[str, str, str]]] = {}
    for axis in [a for a in (rows_axis, cols_axis) if a is not None] + facets:
        if axis in (GRID_ROW, GRID_COL):
            labels[axis] = frame[axis].to_numpy(dtype=object)
            orders[axis] = list(dict.fromkeys(labels[axis].tolist()))
            if axis == GRID_COL:
                orders[axis] = sorted(orders[axis], key=lambda s: int(s[1:]))
        else:
            labels[axis], orders[axis] = axis_labels(frame[axis])
            short = short_labels(orders[axis])
            if short is not None:  # lists / objects: `#k` on the sheet, the value in a legend
                labels[axis] = np.array([short[v][0] for v in labels[axis]], dtype=object)
                orders[axis] = [short[v][0] for v in orders[axis]]
                legends[axis] = [(axis, a, b) for a, b in short.values() if a != b]
    facet_keys = (
        list(zip(*(labels[f] for f in facets), strict=True)) if facets else [()] * len(frame)
    )
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, key in enumerate(facet_keys):
        groups.setdefault(tuple(key), []).append(i)
    row_name = "cell_index" if grid else rows_axis
    col_name = "+ offset" if grid else cols_axis
    specs: list[SheetSpec] = []
    for key, positions in groups.items():
        sub = frame.iloc[positions]
        r_lab = labels[rows_axis][positions] if rows_axis else np.full(len(sub), "", object)
        c_lab = labels[cols_axis][positions] if cols_axis else np.full(len(sub), "", object)
        r_present, c_present = set(r_lab.tolist()), set(c_lab.tolist())
        row_labels = [v for v in orders[rows_axis] if v in r_present] if rows_axis else [""]
        col_labels = [v for v in orders[cols_axis] if v in c_present] if cols_axis else [""]
        r_index = {v: i for i, v in enumerate(row_labels)}
        c_index = {v: i for i, v in enumerate(col_labels)}
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, (rv, cv) in enumerate(zip(r_lab.tolist(), c_lab.tolist(), strict=True)):
            buckets.setdefault((r_index[rv], c_index[cv]), []).append(i)
        cells = {pos: _cell(sub.iloc[idx]) for pos, idx in buckets.items()}
        facet = tuple(zip(facets, key, strict=True))
        title = " · ".join(f"{a} = {v}" for a, v in facet) if facet else options.heading
        shown = {*row_labels, *col_labels, *key}
        legend = [
            entry
            for axis in [a for a in (rows_axis, cols_axis) if a is not None] + facets
            for entry in legends.get(axis, [])
            if entry[1] in shown
        ]
        specs.append(
            SheetSpec(
                legend=tuple(legend),
                aspect=_aspect(sub),
                title=title,
                facet=facet,
                row_axis=row_name,
                col_axis=col_name,
                row_labels=tuple(row_labels),
                col_labels=tuple(col_labels),
                cells=cells,
            )
        )
    return specs


# --- layout ------------------------------------------------------------------------------------

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=32)
def font(size: int, bold: bool = False) -> Font:
    """A sans-serif font of `size` px: DejaVu Sans when installed (wide coverage), else Pillow's."""
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def line_height(size: int) -> int:
    """Pixels from one text line to the next."""
    return size + size // 3 + 2


def text_width(text: str, size: int, bold: bool = False) -> int:
    """Width of `text` in pixels at `size`."""
    return math.ceil(font(size, bold).getlength(text))


def fit_word(word: str, size: int, width: int, bold: bool = False) -> str:
    """`word` whole when it fits in `width`, else cut in the middle with `…` (both ends kept)."""
    if text_width(word, size, bold) <= width:
        return word
    lo, hi = 0, len(word)
    while lo < hi:  # the most characters kept that still fit
        mid = (lo + hi + 1) // 2
        head = (mid + 1) // 2
        if text_width(word[:head] + "…" + word[len(word) - (mid - head) :], size, bold) <= width:
            lo = mid
        else:
            hi = mid - 1
    head = (lo + 1) // 2
    return word[:head] + "…" + word[len(word) - (lo - head) :]


def wrap(text: str, size: int, width: int, max_lines: int, bold: bool = False) -> list[str]:
    """`text` broken between words into lines no wider than `width`, cut with `…`.

    A line never breaks inside a word: a word wider than the line is cut in its middle with `…`.
    """
    flat = " ".join(text.split())
    width = max(width, text_width("W…", size, bold))
    lines: list[str] = []
    current = ""
    for word in flat.split(" "):
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, size, bold) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
            current = ""
        current = fit_word(word, size, width, bold)
    if current or not lines:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        words = lines[-1].split(" ")
        while len(words) > 1 and text_width(" ".join(words) + " …", size, bold) > width:
            words.pop()  # drop whole words, so the cut line still ends on a word
        last = " ".join(words)
        if text_width(last + " …", size, bold) <= width:
            lines[-1] = last + " …"
        else:
            lines[-1] = fit_word(last + "…", size, width, bold)
    return lines


def wrap_segments(
    segments: Sequence[str], size: int, width: int, max_lines: int, bold: bool = False
) -> list[str]:
    """Segments joined by ` · `, breaking lines between segments where possible."""
    lines: list[str] = []
    current = ""
    for seg in segments:
        candidate = f"{current} · {seg}" if current else seg
        if text_width(candidate, size, bold) <= width:
            current = candidate
            continue
        if current:
            lines.append(current + " ·")
        pieces = wrap(seg, size, width, max_lines, bold)
        lines.extend(pieces[:-1])
        current = pieces[-1]
    lines.append(current)
    if len(lines) > max_lines:
        cut = wrap(" ".join(lines[max_lines - 1 :]), size, width, 1, bold)
        lines = [*lines[: max_lines - 1], cut[0]]
    return lines


def _text(
    role: str,
    text: str,
    box: Box,
    size: int,
    max_lines: int,
    *,
    align: str = "left",
    valign: str = "top",
    color: RGB = INK,
    fill: RGB | None = None,
) -> Text:
    lines = tuple(wrap(text, size, box.width, max_lines))
    return Text(role, text, lines, box, size, align, valign, color, fill)


def _badge(text: str, slot: Box, size: int, corner: str, fill: RGB) -> Text:
    w = text_width(text, size) + 8
    h = line_height(size) + 2
    left = slot.right - w - 4 if corner.endswith("right") else slot.left + 4
    top = slot.top + 4 if corner.startswith("top") else slot.bottom - h - 4
    box = Box(left, top, left + w, top + h)
    return Text("badge", text, (text,), box, size, "center", "middle", (255, 255, 255), fill)


def cell_text(cell: Cell) -> str | None:
    """The words drawn in a cell with no picture: failed / not run / image missing."""
    state = cell.state
    if state == "failed":
        return "failed: " + ", ".join(cell.error_codes or ("unknown",))
    if state in (NOT_RUN, ABSENT):
        return state
    if state == "missing":
        return "image missing"
    return None


def slot_size(thumb_px: int, aspect: float) -> tuple[int, int]:
    """(width, height) of one cell: the image shape fitted in a `thumb_px` square."""
    aspect = min(2.0, max(0.5, aspect))
    if aspect <= 1:
        return thumb_px, max(16, round(thumb_px * aspect))
    return max(16, round(thumb_px / aspect)), thumb_px


def layout_sheet(spec: SheetSpec, thumb_px: int) -> SheetLayout:
    """Boxes of the title, axis names, row/column labels and cells for `thumb_px` thumbnails."""
    sw, sh = slot_size(thumb_px, spec.aspect)
    size = max(11, min(16, round(thumb_px / 16)))
    title_size = size + 4
    lh, tlh = line_height(size), line_height(title_size)
    nr, nc = len(spec.row_labels), len(spec.col_labels)
    has_rows = spec.row_axis is not None
    has_cols = spec.col_axis is not None
    texts: list[Text] = []

    label_w = 0
    if has_rows:
        natural = max(text_width(t, size) for t in [*spec.row_labels, spec.row_axis or ""])
        label_w = max(60, min(natural + 4, max(110, min(300, int(thumb_px * 1.2)))))
    grid_left = PAD + (label_w + 2 * GAP if has_rows else 0)
    grid_w = nc * sw + (nc - 1) * GAP
    width = max(grid_left + grid_w + PAD, 420)

    y = PAD
    title = spec.title
    if spec.part[1] > 1:
        title += f" (part {spec.part[0]} of {spec.part[1]})"
    segments = [f"{a} = {v}" for a, v in spec.facet] or [spec.title]
    if spec.part[1] > 1:
        segments.append(f"(part {spec.part[0]} of {spec.part[1]})")
    title_lines = wrap_segments(segments, title_size, width - 2 * PAD, 4, bold=True)
    title_box = Box(PAD, y, width - PAD, y + len(title_lines) * tlh)
    texts.append(Text("title", title, tuple(title_lines), title_box, title_size, bold=True))
    y = title_box.bottom + GAP

    col_lines = [wrap(t, size, sw - 4, 3) for t in spec.col_labels] if has_cols else []
    col_h = max((len(ls) for ls in col_lines), default=0) * lh
    if has_cols:
        axis_box = Box(grid_left, y, grid_left + grid_w, y + lh)
        texts.append(
            _text("axis", spec.col_axis or "", axis_box, size, 1, align="center", color=MUTED)
        )
        y = axis_box.bottom + 2
        for c, lines in enumerate(col_lines):
            left = grid_left + c * (sw + GAP)
            box = Box(left, y, left + sw, y + col_h)
            texts.append(
                Text("col", spec.col_labels[c], tuple(lines), box, size, "center", "bottom")
            )
    if has_rows:
        corner_h = max(col_h + (lh + 2 if has_cols else 0), lh)
        corner_top = y + col_h - corner_h if has_cols else y
        corner = Box(PAD, corner_top, PAD + label_w, corner_top + corner_h)
        texts.append(
            _text(
                "axis",
                spec.row_axis or "",
                corner,
                size,
                max(1, corner_h // lh),
                align="right",
                valign="bottom",
                color=MUTED,
            )
        )
        col_h = max(col_h, corner.bottom - y)
    y += col_h + GAP

    grid_top = y
    slots: list[Slot] = []
    max_row_lines = max(1, sh // lh)
    cell_size = max(11, size - 1)
    for r in range(nr):
        top = grid_top + r * (sh + GAP)
        if has_rows:
            box = Box(PAD, top, PAD + label_w, top + sh)
            texts.append(
                _text(
                    "row",
                    spec.row_labels[r],
                    box,
                    size,
                    max_row_lines,
                    align="right",
                    valign="middle",
                )
            )
        for c in range(nc):
            left = grid_left + c * (sw + GAP)
            box = Box(left, top, left + sw, top + sh)
            cell = spec.cell(r, c)
            slots.append(Slot(r, c, box, cell.state, cell))
            words = cell_text(cell)
            if words is not None:
                color = {"failed": FAILED_FG, "missing": MISSING_FG}.get(cell.state, NOT_RUN_FG)
                inner = Box(box.left + 6, box.top + 6, box.right - 6, box.bottom - 6)
                texts.append(
                    _text(
                        "cell",
                        words,
                        inner,
                        cell_size,
                        max(1, inner.height // lh),
                        align="center",
                        valign="middle",
                        color=color,
                    )
                )
            shown = min(MAX_TILES, len(cell.images))
            if cell.total > shown and shown:
                extra = cell.total - shown
                texts.append(_badge(f"+{extra} more", box, cell_size, "top-right", BADGE_BG))
            if cell.state == "partial":
                texts.append(
                    _badge(f"{cell.failed} failed", box, cell_size, "bottom-left", BADGE_FAILED_BG)
                )
    y = grid_top + nr * sh + (nr - 1) * GAP
    if spec.legend:
        y += GAP
        several = len({axis for axis, _, _ in spec.legend}) > 1  # then each line names its axis
        for axis, short, full in spec.legend:
            entry = f"{axis} {short} = {full}" if several else f"{short} = {full}"
            lines = wrap(entry, size, width - 2 * PAD, 4)
            box = Box(PAD, y, width - PAD, y + len(lines) * lh)
            texts.append(Text("legend", f"{axis} {short} = {full}", tuple(lines), box, size))
            y = box.bottom + 2
    height = y + PAD
    return SheetLayout(spec, width, height, thumb_px, tuple(texts), tuple(slots))


def _split(n: int, per: int) -> list[range]:
    per = max(1, per)
    return [range(i, min(n, i + per)) for i in range(0, n, per)]


def _part(spec: SheetSpec, rows: range, cols: range, part: tuple[int, int]) -> SheetSpec:
    cells = {
        (r - rows.start, c - cols.start): cell
        for (r, c), cell in spec.cells.items()
        if r in rows and c in cols
    }
    return replace(
        spec,
        row_labels=spec.row_labels[rows.start : rows.stop],
        col_labels=spec.col_labels[cols.start : cols.stop],
        cells=cells,
        part=part,
    )


def fit_sheet(spec: SheetSpec, options: SheetOptions) -> list[SheetLayout]:
    """Layouts within `max_px`: thumbnails shrink to `min_thumb_px`, then the grid splits."""
    limit = options.max_px
    thumb = options.thumb_px
    probe = layout_sheet(spec, thumb)
    if probe.width <= limit and probe.height <= limit:
        return [probe]
    nr, nc = len(spec.row_labels), len(spec.col_labels)
    sw, sh = slot_size(thumb, spec.aspect)
    fixed_w = probe.width - (nc * sw + (nc - 1) * GAP)
    fixed_h = probe.height - (nr * sh + (nr - 1) * GAP)
    scale = min(
        ((limit - fixed_w + GAP) / nc - GAP) / sw, ((limit - fixed_h + GAP) / nr - GAP) / sh
    )
    thumb = max(options.min_thumb_px, min(thumb, int(thumb * scale)))
    sw, sh = slot_size(thumb, spec.aspect)
    per_c = max(1, min(nc, (limit - fixed_w + GAP) // (sw + GAP)))
    per_r = max(1, min(nr, (limit - fixed_h + GAP) // (sh + GAP)))
    while True:
        row_parts, col_parts = _split(nr, per_r), _split(nc, per_c)
        total = len(row_parts) * len(col_parts)
        out: list[SheetLayout] = []
        for rows in row_parts:
            for cols in col_parts:
                part = (len(out) + 1, total)
                out.append(layout_sheet(_part(spec, rows, cols, part), thumb))
        too_wide = any(lay.width > limit for lay in out) and per_c > 1
        too_tall = any(lay.height > limit for lay in out) and per_r > 1
        if not (too_wide or too_tall):
            return out
        per_c -= too_wide
        per_r -= too_tall


def fit_sheets(specs: Sequence[SheetSpec], options: SheetOptions) -> tuple[list[SheetLayout], int]:
    """Layouts of all specs, at most `max_sheets`; also how many were left out."""
    out: list[SheetLayout] = []
    skipped = 0
    for spec in specs:
        layouts = fit_sheet(spec, options)
        room = max(0, options.max_sheets - len(out))
        out.extend(layouts[:room])
        skipped += max(0, len(layouts) - room)
    return out, skipped


def contact_sheets(
    frame: pd.DataFrame, axes: Sequence[str], options: SheetOptions
) -> tuple[list[SheetLayout], int]:
    """Plan and lay out every sheet (at most `max_sheets`); also how many were left out."""
    return fit_sheets(plan_sheets(frame, axes, options), options)


# --- drawing -----------------------------------------------------------------------------------


def _paste_fit(canvas: Image.Image, path: Path, box: Box) -> bool:
    """Draw the image at `path` centred in `box`, scaled to fit; False if it cannot be read."""
    try:
        thumb = images.thumbnail(path.read_bytes(), max(box.width, box.height))
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    if thumb.width > box.width or thumb.height > box.height:
        thumb.thumbnail((box.width, box.height))
    x = box.left + (box.width - thumb.width) // 2
    y = box.top + (box.height - thumb.height) // 2
    if thumb.mode == "RGBA":
        canvas.paste(thumb, (x, y), thumb)
    else:
        canvas.paste(thumb, (x, y))
    return True


def tile_boxes(box: Box, count: int) -> list[Box]:
    """Where `count` images go inside a cell: the whole box for one, a 2 × 2 grid for more."""
    if count <= 1:
        return [box]
    half_w = (box.width - 2) // 2
    half_h = (box.height - 2) // 2
    out = []
    for i in range(min(count, MAX_TILES)):
        left = box.left + (i % 2) * (half_w + 2)
        top = box.top + (i // 2) * (half_h + 2)
        out.append(Box(left, top, left + half_w, top + half_h))
    return out


def _draw_text(draw: ImageDraw.ImageDraw, t: Text) -> None:
    f = font(t.size, t.bold)
    lh = line_height(t.size)
    if t.fill is not None:
        draw.rounded_rectangle(
            (t.box.left, t.box.top, t.box.right - 1, t.box.bottom - 1), radius=4, fill=t.fill
        )
    block = len(t.lines) * lh
    if t.valign == "middle":
        y = t.box.top + (t.box.height - block) // 2
    elif t.valign == "bottom":
        y = t.box.bottom - block
    else:
        y = t.box.top
    offset = (lh - t.size) // 2 - 1
    for line in t.lines:
        w = text_width(line, t.size, t.bold)
        if t.align == "center":
            x = t.box.left + (t.box.width - w) // 2
        elif t.align == "right":
            x = t.box.right - w
        else:
            x = t.box.left
        draw.text((x, y + offset), line, font=f, fill=t.color)
        y += lh


def render(layout: SheetLayout, previews: Mapping[Path, Path] | None = None) -> Image.Image:
    """The sheet as an RGB image; `previews` maps an image to a smaller copy drawn instead."""
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for slot in layout.slots:
        b = slot.box
        rect = (b.left, b.top, b.right - 1, b.bottom - 1)
        draw.rectangle(rect, fill=STATE_FILL[slot.state])
        if slot.state == "failed":
            draw.rectangle(rect, outline=FAILED_EDGE)
        for path, tile in zip(slot.cell.images, tile_boxes(b, len(slot.cell.images)), strict=False):
            source = previews.get(path, path) if previews else path
            if not _paste_fit(canvas, source, tile) and not (
                source != path and _paste_fit(canvas, path, tile)
            ):
                draw.rectangle((tile.left, tile.top, tile.right - 1, tile.bottom - 1), MISSING_BG)
    for t in layout.texts:
        _draw_text(draw, t)
    return canvas


def png(layout: SheetLayout, previews: Mapping[Path, Path] | None = None) -> bytes:
    """The sheet as PNG bytes (zlib level 3: level 9 takes 15× longer for ~15% less)."""
    buf = io.BytesIO()
    render(layout, previews).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def pngs(
    layouts: Sequence[SheetLayout], workers: int = 0, previews: Mapping[Path, Path] | None = None
) -> Iterator[bytes]:
    """Each sheet as PNG bytes, in order, drawn and encoded by `workers` threads (0: per CPU)."""
    n = max(1, min(len(layouts), workers or os.cpu_count() or 2))
    if n == 1:
        yield from (png(layout, previews) for layout in layouts)
        return
    with ThreadPoolExecutor(max_workers=n) as pool:  # Pillow releases the GIL to decode/encode
        pending = [pool.submit(png, layout, previews) for layout in layouts[:n]]
        for k in range(len(layouts)):
            done = pending[k].result()
            if k + n < len(layouts):
                pending.append(pool.submit(png, layouts[k + n], previews))
            yield done
