"""The manifest: one row per image and one per failed cell; `COLUMNS` is the column contract.

Rows are plain dicts keyed by column name. The runner makes them with the helpers below
(`cell_row` once per cell, then `generation_rows`, `failed_row` or `cached_rows`), writes them to
the journal as they finish; at the end `pipeline.job` calls `rebuild` (the journal's rows through
`build`) and `write`.

Conventions:
- `estimated_cost_usd` is per row: the per-image estimate on image rows, and the estimate of the
  images that are missing on a failed row (the whole cell when nothing came back).
- `cost_usd` is what this run was billed for the row: the API's per-image cost on ok rows, 0.0 on
  cached rows, null on failed rows. `original_cost_usd` is what the image cost when it was paid.
- `image_sha256` is the hash of the bytes as the API delivered them (before the recipe is embedded;
  `images.strip_recipe` gives them back from the file), so reproductions compare equal.
- A failed row has `result_index` = the number of images that did come back (0 for a whole-cell
  failure), so (cell_id, result_index) stays unique.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import pandas as pd

from pipeline import images, journal, models
from pipeline.canonical import canonical_json
from pipeline.errors import PipelineError
from pipeline.rundir import MANIFEST_CSV, MANIFEST_PARQUET

TIMESTAMP = "datetime64[ms, UTC]"  # submitted_at / finished_at: UTC, millisecond precision
# Low-cardinality text is categorical; where the values are known, every frame has the same
# categories (so shards and runs concatenate as categoricals too).
KNOWN_CATEGORIES: dict[str, list[str]] = {
    "status": ["ok", "cached", "failed"],
    "backend": ["emulator", "runware"],
}
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell

# The fixed columns; after `height` come the extra columns the models declare (pipeline/models:
# today `settings.creativity`), then the rest.
COLUMNS: dict[str, str] = {
    "cell_id": "string",
    "cell_index": "Int64",
    "result_index": "Int64",
    "status": "category",
    "seed": "Int64",
    "positivePrompt": "string",
    "width": "Int64",
    "height": "Int64",
    **{column.name: column.dtype for column in models.extra_columns()},
    "numberResults": "Int64",
    "reference_count": "Int64",
    "task_uuid": "string",
    "image_uuid": "string",
    "image_path": "string",
    "image_sha256": "string",
    "cost_usd": "Float64",
    "estimated_cost_usd": "Float64",
    "original_cost_usd": "Float64",
    "attempts": "Int64",
    "latency_s": "Float64",
    "error_code": "category",
    "error_message": "string",
    "submitted_at": TIMESTAMP,
    "finished_at": TIMESTAMP,
    "backend": "category",
    "model": "category",
    "nsfw": "boolean",
    "request_json": "string",
}
STATUSES = frozenset({"ok", "failed", "cached"})
AXES_AFTER = "reference_count"
RECORD_VERSION = 1

_FIXED = list(COLUMNS)
_SPLIT = _FIXED.index(AXES_AFTER) + 1


class CellLike(Protocol):
    """What `cell_row` reads from a `pipeline.sweep.Cell`."""

    @property
    def index(self) -> int: ...
    @property
    def axes(self) -> Mapping[str, Any]: ...
    @property
    def request(self) -> Mapping[str, Any]: ...
    @property
    def seed(self) -> int: ...
    @property
    def cell_id(self) -> str: ...


class ImageLike(Protocol):
    """What `generation_rows` reads from a `pipeline.client.ImageResult`."""

    @property
    def image_uuid(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def ext(self) -> str: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def cost(self) -> float | None: ...
    @property
    def nsfw(self) -> bool | None: ...


class GenerationLike(Protocol):
    """What `generation_rows` reads from a `pipeline.client.Generation`."""

    @property
    def task_uuid(self) -> str: ...
    @property
    def images(self) -> Sequence[ImageLike]: ...
    @property
    def errors(self) -> Sequence[BaseException]: ...
    @property
    def attempts(self) -> int: ...
    @property
    def submitted_at(self) -> str: ...
    @property
    def finished_at(self) -> str: ...
    @property
    def latency_s(self) -> float: ...
    @property
    def request(self) -> Mapping[str, Any]: ...


# --- columns -----------------------------------------------------------------------------------


def column_names(axis_names: Sequence[str]) -> list[str]:
    """Every column in order: fixed ones with the axes inserted after `reference_count`."""
    axes = [a for a in dict.fromkeys(axis_names) if a not in COLUMNS]
    return _FIXED[:_SPLIT] + axes + _FIXED[_SPLIT:]


# --- row helpers -------------------------------------------------------------------------------


def cell_row(cell: CellLike, *, estimated_cost_usd: float | None, backend: str) -> dict[str, Any]:
    """Fields shared by every row of a cell; `estimated_cost_usd` is the whole cell's estimate."""
    req = cell.request
    n = int(req.get("numberResults", 1) or 1)
    row: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "cell_index": cell.index,
        "seed": cell.seed,
        "positivePrompt": req.get("positivePrompt"),
        "width": req.get("width"),
        "height": req.get("height"),
        **{column.name: column.read(req) for column in models.extra_columns()},
        "numberResults": n,
        "reference_count": len((req.get("inputs") or {}).get("referenceImages") or []),
        "estimated_cost_usd": None if estimated_cost_usd is None else estimated_cost_usd / n,
        "backend": backend,
        "model": req.get("model"),
        "request_json": canonical_json(req),
    }
    for name, value in cell.axes.items():
        if name not in COLUMNS:
            row[name] = value
    return row


def generation_rows(
    base: Mapping[str, Any], gen: GenerationLike, image_paths: Sequence[str]
) -> list[dict[str, Any]]:
    """Ok rows for each image of `gen` (+ one failed row if images are missing)."""
    if len(image_paths) != len(gen.images):
        raise ValueError(f"{len(gen.images)} images but {len(image_paths)} paths")
    common = {
        **base,
        "task_uuid": gen.task_uuid,
        "attempts": gen.attempts,
        "latency_s": gen.latency_s,
        "submitted_at": gen.submitted_at,
        "finished_at": gen.finished_at,
        "request_json": canonical_json(gen.request),
    }
    rows = [
        {
            **common,
            "result_index": i,
            "status": "ok",
            "seed": img.seed if img.seed is not None else base.get("seed"),
            "image_uuid": img.image_uuid,
            "image_path": path,
            "image_sha256": images.sha256_hex(img.data),
            "cost_usd": img.cost,
            "original_cost_usd": img.cost,
            "nsfw": img.nsfw,
        }
        for i, (img, path) in enumerate(zip(gen.images, image_paths, strict=True))
    ]
    missing = int(base.get("numberResults") or 1) - len(gen.images)
    if missing > 0:
        if gen.errors:
            code = ",".join(dict.fromkeys(_error_code(e) for e in gen.errors))
            message = "; ".join(str(e) for e in gen.errors)
        else:
            code, message = "missingResults", f"{missing} image(s) not returned"
        rows.append(
            failed_row(
                base,
                None,
                error_code=code,
                error_message=message,
                task_uuid=gen.task_uuid,
                attempts=gen.attempts,
                latency_s=gen.latency_s,
                submitted_at=gen.submitted_at,
                finished_at=gen.finished_at,
                request=gen.request,
                result_index=len(gen.images),
                missing=missing,
            )
        )
    return rows


def failed_row(
    base: Mapping[str, Any],
    error: BaseException | None,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    task_uuid: str | None = None,
    attempts: int = 0,
    latency_s: float | None = None,
    submitted_at: str | None = None,
    finished_at: str | None = None,
    request: Mapping[str, Any] | None = None,
    result_index: int = 0,
    missing: int | None = None,
) -> dict[str, Any]:
    """The row of a failed cell (code and message from `error` unless given)."""
    n = int(base.get("numberResults") or 1)
    per_image = base.get("estimated_cost_usd")
    row = {
        **base,
        "result_index": result_index,
        "status": "failed",
        "cost_usd": None,
        "task_uuid": task_uuid,
        "attempts": attempts,
        "latency_s": latency_s,
        "submitted_at": submitted_at,
        "finished_at": finished_at or journal.utc_now(),
        "error_code": error_code if error_code is not None else _error_code(error),
        "error_message": error_message if error_message is not None else _error_text(error),
        "estimated_cost_usd": None if per_image is None else per_image * (missing or n),
    }
    if request is not None:
        row["request_json"] = canonical_json(request)
    return row


def store_record(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The store record of a finished cell from its ok rows (all images ok, else ValueError)."""
    if not rows:
        raise ValueError("no rows")
    cell_ids = {r["cell_id"] for r in rows}
    if len(cell_ids) != 1:
        raise ValueError(f"rows of several cells: {sorted(cell_ids)}")
    bad = [r.get("status") for r in rows if r.get("status") != "ok"]
    if bad:
        raise ValueError(f"only fully successful cells go in the store (got {bad})")
    ordered = sorted(rows, key=lambda r: int(r["result_index"]))
    n = int(ordered[0].get("numberResults") or 1)
    if [int(r["result_index"]) for r in ordered] != list(range(n)):
        raise ValueError(f"cell {next(iter(cell_ids))} has {len(rows)} of {n} images")
    first = ordered[0]
    return {
        "version": RECORD_VERSION,
        "cell_id": first["cell_id"],
        "backend": first.get("backend"),
        "model": first.get("model"),
        "request_json": first.get("request_json"),
        "finished_at": max(str(r.get("finished_at") or "") for r in ordered) or None,
        "images": [
            {
                "result_index": int(r["result_index"]),
                "seed": r.get("seed"),
                "image_uuid": r.get("image_uuid"),
                "task_uuid": r.get("task_uuid"),
                "sha256": r.get("image_sha256"),
                "cost": r.get("original_cost_usd", r.get("cost_usd")),
                "ext": Path(str(r.get("image_path") or "x.png")).suffix.lstrip("."),
                "nsfw": r.get("nsfw"),
            }
            for r in ordered
        ],
    }


def cached_rows(
    base: Mapping[str, Any], record: Mapping[str, Any], image_paths: Sequence[str]
) -> list[dict[str, Any]]:
    """Cached rows of a cell found in the store; `image_paths[i]` is record image i in the run."""
    imgs = record["images"]
    if len(image_paths) != len(imgs):
        raise ValueError(f"{len(imgs)} stored images but {len(image_paths)} paths")
    return [
        {
            **base,
            "result_index": img["result_index"],
            "status": "cached",
            "seed": img.get("seed", base.get("seed")),
            "task_uuid": img.get("task_uuid"),
            "image_uuid": img.get("image_uuid"),
            "image_path": path,
            "image_sha256": img.get("sha256"),
            "cost_usd": 0.0,
            "original_cost_usd": img.get("cost"),
            "attempts": 0,
            "finished_at": record.get("finished_at"),
            "backend": record.get("backend", base.get("backend")),
            "nsfw": img.get("nsfw"),
            "request_json": record.get("request_json", base.get("request_json")),
        }
        for img, path in zip(imgs, image_paths, strict=True)
    ]


def _error_code(error: BaseException | None) -> str:
    if error is None:
        return "unknown"
    return str(getattr(error, "code", "") or type(error).__name__)


def _error_text(error: BaseException | None) -> str:
    return "" if error is None else str(error) or type(error).__name__


# --- DataFrame ---------------------------------------------------------------------------------


def build(rows: Iterable[Mapping[str, Any]], axis_names: Sequence[str]) -> pd.DataFrame:
    """The manifest DataFrame: exact columns and dtypes, sorted by cell_index, result_index."""
    names = column_names(axis_names)
    allowed = set(names)
    rows = list(rows)
    for i, row in enumerate(rows):
        extra = row.keys() - allowed
        if extra:
            raise ValueError(f"manifest row {i} has unknown columns: {sorted(extra)}")
        status = row.get("status")
        if status not in STATUSES:
            raise ValueError(f"manifest row {i} has status {status!r}")
    data: dict[str, Any] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        dtype = COLUMNS.get(name)
        if dtype is None:
            dtype, values = _infer_axis(values)
        data[name] = _typed(name, values, dtype)
    df = pd.DataFrame(data, columns=names)
    if len(df):
        df = df.sort_values(["cell_index", "result_index"], kind="stable", na_position="last")
    return df.reset_index(drop=True)


def _typed(name: str, values: list[Any], dtype: str) -> Any:
    """Values as a pandas array of the contract's dtype (timestamps parsed, text categorised)."""
    if dtype == TIMESTAMP:
        text = pd.Series([None if _missing(v) else v for v in values], dtype=object)
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        return parsed.astype(cast(Any, TIMESTAMP)).array
    if dtype == "category":
        present = sorted({str(v) for v in values if not _missing(v)})
        known = KNOWN_CATEGORIES.get(name, [])
        categories = [*known, *(v for v in present if v not in known)]
        cat = pd.CategoricalDtype(categories, ordered=False)
        return pd.Categorical([None if _missing(v) else str(v) for v in values], dtype=cat)
    return pd.array(values, dtype=cast(Any, dtype))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v is pd.NA


def _infer_axis(values: list[Any]) -> tuple[str, list[Any]]:
    """Dtype of an axis column: bool, int, float stay so; strings and mixtures become string."""
    present = [v for v in values if not _missing(v)]
    if present and all(isinstance(v, bool) for v in present):
        return "boolean", values
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present:
        return "Int64", values
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "Float64", values
    return "string", [
        None if _missing(v) else v if isinstance(v, str) else canonical_json(v) for v in values
    ]


def write(df: pd.DataFrame, run_dir: Path) -> tuple[Path, Path]:
    """Write `manifest.parquet` and `manifest.csv` into `run_dir`, each atomically."""
    run_dir = Path(run_dir)
    parquet, csv = run_dir / MANIFEST_PARQUET, run_dir / MANIFEST_CSV
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    try:
        images.write_atomic(parquet, buf.getvalue())
        images.write_atomic(csv, csv_frame(df).to_csv(index=False).encode("utf-8"))
    except OSError as exc:  # a full disk, a quota, a read-only folder
        raise PipelineError(
            f"cannot write the manifest in {run_dir}: {exc.strerror or exc}; every result is "
            "kept in journal.jsonl and the store: free space and rerun the same command "
            "(nothing is paid twice)"
        ) from exc
    return parquet, csv


def time_text(value: Any) -> str | None:
    """A manifest time as the CSV, the report and the explorer show it: ISO 8601, ms, `Z`."""
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The manifest as the CSV shows it: ISO 8601 times, and no cell a spreadsheet would run.

    A text cell beginning with `=`, `+`, `-`, `@` (or tab / CR) is written with a leading `'`,
    as are cells that already begin with `'` (so reading the CSV back is exact). The parquet
    keeps the exact text.
    """
    out = df.copy()
    for name in out.columns:
        col = out[name]
        if isinstance(col.dtype, pd.DatetimeTZDtype):
            text = col.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
            out[name] = text.astype("string")
        elif isinstance(col.dtype, pd.CategoricalDtype | pd.StringDtype) or col.dtype == object:
            out[name] = col.astype("string").map(_csv_escape, na_action="ignore").astype("string")
    return out


def _csv_escape(value: Any) -> Any:
    text = str(value)
    return "'" + text if text.startswith((*CSV_FORMULA_START, "'")) else text


def _csv_unescape(value: str | None) -> str | None:
    if (
        value is not None
        and value.startswith("'")
        and value[1:].startswith((*CSV_FORMULA_START, "'"))
    ):
        return value[1:]
    return value


def read(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A manifest (parquet, csv, or a run dir holding one) with the contract's dtypes."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_PARQUET if (p / MANIFEST_PARQUET).exists() else p / MANIFEST_CSV
    if p.suffix == ".csv":
        return _read_csv(p)
    df = pd.read_parquet(p)
    for name, dtype in COLUMNS.items():
        if name in df.columns and str(df[name].dtype) != dtype:
            df[name] = _typed(name, df[name].tolist(), dtype)
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
    data: dict[str, Any] = {}
    for name in raw.columns:
        values = [None if _missing(v) else _csv_unescape(v) for v in raw[name].tolist()]
        dtype = COLUMNS.get(name)
        data[name] = (
            _typed(name, values, dtype)
            if dtype in (TIMESTAMP, "category")
            else _from_text(values, dtype)
        )
    return pd.DataFrame(data, columns=list(raw.columns))


def _from_text(values: list[str | None], dtype: str | None) -> Any:
    """A typed pandas array from CSV text; an axis (dtype None) gets its dtype inferred."""
    present = [v for v in values if v is not None]
    if dtype is None:
        if present and all(v in ("True", "False") for v in present):
            dtype = "boolean"
        elif all(_is_int(v) for v in present) and present:
            dtype = "Int64"
        elif present and all(_is_float(v) for v in present):
            dtype = "Float64"
        else:
            dtype = "string"
    if dtype == "Int64":
        return pd.array([None if v is None else int(v) for v in values], dtype="Int64")
    if dtype == "Float64":
        return pd.array([None if v is None else float(v) for v in values], dtype="Float64")
    if dtype == "boolean":
        truth = {"True": True, "False": False, "true": True, "false": False}
        return pd.array([None if v is None else truth[v] for v in values], dtype="boolean")
    return pd.array(values, dtype="string")


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def rebuild(run_dir: Path, axis_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The manifest from a run dir's journal (axis names from the header unless given)."""
    state = journal.read_journal(run_dir)
    if axis_names is None:
        axis_names = state.axis_names
    if axis_names is None:
        seen: dict[str, None] = {}
        for row in state.rows.values():
            seen.update(dict.fromkeys(k for k in row if k not in COLUMNS))
        axis_names = list(seen)
    return build(state.rows.values(), axis_names)
