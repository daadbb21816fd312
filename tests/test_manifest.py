"""The manifest column contract, exact dtypes, round trips through parquet and CSV, rebuild."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline import images, manifest
from pipeline.errors import RateLimited
from pipeline.journal import Journal
from pipeline.rundir import JOURNAL_NAME

MAX_SEED = 9223372036854775807

EXPECTED_COLUMNS = [
    ("cell_id", "string"),
    ("cell_index", "Int64"),
    ("result_index", "Int64"),
    ("status", "category"),
    ("seed", "Int64"),
    ("positivePrompt", "string"),
    ("width", "Int64"),
    ("height", "Int64"),
    ("settings.creativity", "string"),
    ("numberResults", "Int64"),
    ("reference_count", "Int64"),
    ("task_uuid", "string"),
    ("image_uuid", "string"),
    ("image_path", "string"),
    ("image_sha256", "string"),
    ("cost_usd", "Float64"),
    ("estimated_cost_usd", "Float64"),
    ("original_cost_usd", "Float64"),
    ("attempts", "Int64"),
    ("latency_s", "Float64"),
    ("error_code", "category"),
    ("error_message", "string"),
    ("submitted_at", "datetime64[ms, UTC]"),
    ("finished_at", "datetime64[ms, UTC]"),
    ("backend", "category"),
    ("model", "category"),
    ("nsfw", "boolean"),
    ("request_json", "string"),
]
AXES = ["inputs.referenceImages[0].strength", "vars.style", "settings.creativity", "width"]


def test_columns_contract() -> None:
    assert list(manifest.COLUMNS.items()) == EXPECTED_COLUMNS


def test_built_frame_has_exact_columns_and_dtypes() -> None:
    df = manifest.build([], AXES)
    names = [c for c, _ in EXPECTED_COLUMNS]
    at = names.index("reference_count") + 1
    expected = [*names[:at], "inputs.referenceImages[0].strength", "vars.style", *names[at:]]
    assert list(df.columns) == expected
    assert [str(df[c].dtype) for c, _ in EXPECTED_COLUMNS] == [d for _, d in EXPECTED_COLUMNS]
    assert len(df) == 0


def _row(cell_index: int, result_index: int = 0, /, **kw: Any) -> dict[str, Any]:
    return {
        "cell_id": f"c{cell_index:03d}",
        "cell_index": cell_index,
        "result_index": result_index,
        "status": "ok",
        **kw,
    }


def test_build_sorts_and_types() -> None:
    rows = [_row(2, 1), _row(0, 0), _row(2, 0), _row(1, 0, status="failed")]
    df = manifest.build(rows, [])
    assert list(zip(df["cell_index"], df["result_index"], strict=True)) == [
        (0, 0), (1, 0), (2, 0), (2, 1)
    ]  # fmt: skip
    assert df["seed"].isna().all() and str(df["seed"].dtype) == "Int64"


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"typo_cost": 1.0}, "unknown columns"),
        ({"vars.unlisted": "x"}, "unknown columns"),
        ({"status": "done"}, "status"),
    ],
)
def test_build_rejects_bad_rows(row: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        manifest.build([_row(0, **row)], ["vars.style"])


AXIS_CASES = [
    # id, values, dtype, first value after build
    ("ints", [1, 2, None], "Int64", 1),
    ("floats", [-1.0, 0.0, 1.5], "Float64", -1.0),
    ("int and float", [1, 0.5, None], "Float64", 1.0),
    ("strings", ["film grain", "motion blur", None], "string", "film grain"),
    ("mixed", [1, "a", None], "string", "1"),
    ("bools", [True, False, None], "boolean", True),
    ("all missing", [None, None, None], "string", pd.NA),
    ("lists", [[1, 2], "x", None], "string", "[1,2]"),
]


@pytest.mark.parametrize(("values", "dtype", "first"), [c[1:] for c in AXIS_CASES],
                         ids=[c[0] for c in AXIS_CASES])  # fmt: skip
def test_axis_dtype_inferred(values: list[Any], dtype: str, first: Any, tmp_path: Path) -> None:
    rows = [_row(i, axis=v) for i, v in enumerate(values)]
    df = manifest.build(rows, ["axis"])
    assert str(df["axis"].dtype) == dtype
    assert df["axis"][0] is pd.NA if first is pd.NA else df["axis"][0] == first
    manifest.write(df, tmp_path)
    for path in (tmp_path / "manifest.parquet", tmp_path / "manifest.csv"):
        again = manifest.read(path)
        assert str(again["axis"].dtype) == dtype, path.name
        pd.testing.assert_series_equal(again["axis"], df["axis"])


def _full_rows() -> list[dict[str, Any]]:
    tricky = 'a "quoted", comma\nnewline — 灯台 🌅'
    return [
        _row(0, 0, seed=MAX_SEED, positivePrompt=tricky, width=1024, height=1024,
             **{"settings.creativity": "raw", "vars.style": "film grain"},
             numberResults=2, reference_count=1, task_uuid="t0", image_uuid="u0",
             image_path="images/c000-0.png", image_sha256="ab" * 32, cost_usd=0.1 + 0.2,
             estimated_cost_usd=0.065, original_cost_usd=0.1 + 0.2, attempts=1, latency_s=1.25,
             submitted_at="2025-01-01T00:00:00.000Z", finished_at="2025-01-01T00:00:01.250Z",
             backend="emulator", model="krea:krea@2-large", nsfw=False,
             request_json=json.dumps({"positivePrompt": tricky, "seed": MAX_SEED})),
        _row(0, 1, seed=MAX_SEED - 1, nsfw=True, cost_usd=0.0, status="cached"),
        _row(1, 0, seed=0, status="failed", error_code="timeout", error_message="read timed out",
             **{"vars.style": "NA"}),
        _row(2, 0, seed=-(2**63), error_message="", request_json="null"),
    ]  # fmt: skip


def test_round_trip_parquet_and_csv(tmp_path: Path) -> None:
    df = manifest.build(_full_rows(), ["vars.style"])
    parquet, csv = manifest.write(df, tmp_path)
    assert (parquet.name, csv.name) == ("manifest.parquet", "manifest.csv")
    assert sorted(os.listdir(tmp_path)) == ["manifest.csv", "manifest.parquet"]  # no temp files
    from_parquet = manifest.read(parquet)
    from_csv = manifest.read(csv)
    pd.testing.assert_frame_equal(from_parquet, df)
    # CSV cannot tell "" from missing: the one empty string comes back as NA, nothing else differs
    expected_csv = df.copy()
    expected_csv.loc[3, "error_message"] = pd.NA
    pd.testing.assert_frame_equal(from_csv, expected_csv)
    for frame in (from_parquet, from_csv):
        assert frame["seed"][0] == MAX_SEED and type(frame["seed"][0]) is not float
        assert frame["seed"][1] == MAX_SEED - 1
        assert frame["seed"][3] == -(2**63)
        assert frame["cost_usd"][0] == 0.1 + 0.2
        assert frame["vars.style"][2] == "NA"
    assert f",{MAX_SEED}," in csv.read_text()
    pd.testing.assert_frame_equal(manifest.read(tmp_path), df)  # a run dir reads the parquet


def test_read_run_dir_falls_back_to_csv(tmp_path: Path) -> None:
    df = manifest.build(_full_rows(), ["vars.style"])
    manifest.write(df, tmp_path)
    (tmp_path / "manifest.parquet").unlink()
    assert manifest.read(tmp_path)["seed"][0] == MAX_SEED


def test_write_replaces_existing(tmp_path: Path) -> None:
    manifest.write(manifest.build(_full_rows(), ["vars.style"]), tmp_path)
    manifest.write(manifest.build([_row(5)], []), tmp_path)
    assert list(manifest.read(tmp_path)["cell_index"]) == [5]
    assert list(manifest.read(tmp_path / "manifest.csv")["cell_index"]) == [5]


# --- rebuild from the journal ------------------------------------------------------------------


def test_rebuild_from_journal_with_torn_last_line(tmp_path: Path) -> None:
    with Journal(tmp_path, header={"axis_names": ["vars.style"], "sweep": "demo"}) as j:
        j.submit("c000", "t0")
        j.results([_row(0, 0, seed=MAX_SEED, status="failed", **{"vars.style": "a"})])
        j.submit("c000", "t1")
        j.results([_row(0, 0, seed=MAX_SEED, **{"vars.style": "a"}),
                   _row(0, 1, seed=MAX_SEED, **{"vars.style": "a"})])  # fmt: skip
        j.submit("c001", "t2")
        j.results([_row(1, 0, seed=7, **{"vars.style": "b"})])
        j.submit("c002", "t3")
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"event":"result","part":[0,1],"cell_id":"c002","cell_in')  # kill -9 here

    df = manifest.rebuild(tmp_path)
    assert list(df["cell_id"]) == ["c000", "c000", "c001"]
    assert list(df["status"]) == ["ok", "ok", "ok"]
    assert list(df["vars.style"]) == ["a", "a", "b"]
    assert df["seed"][0] == MAX_SEED
    assert list(df.columns) == manifest.column_names(["vars.style"])


def test_rebuild_without_header_infers_axes(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        j.results([_row(0, **{"vars.b": 1, "vars.a": "x"})])
    df = manifest.rebuild(tmp_path)
    assert list(df.columns) == manifest.column_names(["vars.b", "vars.a"])
    assert manifest.rebuild(tmp_path / "empty").empty


# --- row helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeCell:
    index: int
    axes: dict[str, Any]
    request: dict[str, Any]
    seed: int
    cell_id: str


@dataclass
class FakeImage:
    image_uuid: str
    data: bytes
    ext: str
    seed: int | None
    cost: float | None
    nsfw: bool | None
    url: str | None = None


@dataclass
class FakeGeneration:
    task_uuid: str
    images: list[FakeImage]
    errors: list[Exception] = field(default_factory=list)
    attempts: int = 1
    submitted_at: str = "2025-01-01T00:00:00.000Z"
    finished_at: str = "2025-01-01T00:00:02.000Z"
    latency_s: float = 2.0
    request: dict[str, Any] = field(default_factory=dict)


REQUEST = {
    "model": "krea:krea@2-large",
    "positivePrompt": "a lighthouse, film grain",
    "width": 1376,
    "height": 768,
    "seed": MAX_SEED,
    "numberResults": 2,
    "settings": {"creativity": "high"},
    "inputs": {"referenceImages": [{"image": "/abs/refs/palette.png", "strength": 0.7}]},
}
CELL = FakeCell(
    3,
    {
        "vars.style": "film grain",
        "settings.creativity": "high",
        "inputs.referenceImages[0].strength": 0.7,
    },
    REQUEST,
    MAX_SEED,
    "0123456789abcdef0123",
)
AXIS_NAMES = list(CELL.axes)
SENT = {**REQUEST, "taskType": "imageInference", "taskUUID": "task-1", "includeCost": True}


def _base() -> dict[str, Any]:
    return manifest.cell_row(CELL, estimated_cost_usd=0.13, backend="emulator")


def test_cell_row() -> None:
    base = _base()
    assert base["positivePrompt"] == "a lighthouse, film grain"
    assert (base["width"], base["height"], base["numberResults"]) == (1376, 768, 2)
    assert base["settings.creativity"] == "high" and base["reference_count"] == 1
    assert base["estimated_cost_usd"] == pytest.approx(0.065)
    assert base["seed"] == MAX_SEED and base["cell_index"] == 3
    assert json.loads(base["request_json"]) == REQUEST


def test_generation_rows_ok_then_store_record_then_cached() -> None:
    gen = FakeGeneration(
        "task-1",
        [FakeImage("u0", b"img0", "png", MAX_SEED, 0.065, False),
         FakeImage("u1", b"img1", "png", None, 0.065, None)],
        request=SENT,
    )  # fmt: skip
    paths = [images.image_relpath(CELL.cell_id, i, "png") for i in range(2)]
    rows = manifest.generation_rows(_base(), gen, paths)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["image_sha256"] == images.sha256_hex(b"img0")
    assert rows[1]["seed"] == MAX_SEED and rows[1]["original_cost_usd"] == 0.065
    assert json.loads(rows[0]["request_json"])["taskUUID"] == "task-1"

    record = manifest.store_record(rows)
    assert record["images"][1] == {
        "result_index": 1, "seed": MAX_SEED, "image_uuid": "u1", "task_uuid": "task-1",
        "sha256": images.sha256_hex(b"img1"), "cost": 0.065, "ext": "png", "nsfw": None,
    }  # fmt: skip
    cached = manifest.cached_rows(_base(), record, paths)
    assert [r["status"] for r in cached] == ["cached", "cached"]
    assert cached[0]["cost_usd"] == 0.0 and cached[0]["original_cost_usd"] == 0.065
    assert cached[0]["image_sha256"] == rows[0]["image_sha256"]

    df = manifest.build(rows + cached, AXIS_NAMES)
    assert len(df) == 4 and df["cost_usd"].sum() == pytest.approx(0.13)
    assert df["inputs.referenceImages[0].strength"].dtype == "Float64"


def test_partial_failure_adds_failed_row_and_is_not_storable() -> None:
    gen = FakeGeneration(
        "task-1",
        [FakeImage("u0", b"img0", "jpg", 5, 0.065, False)],
        errors=[RateLimited("slow down", code="tooManyRequests")],
        request=SENT,
    )
    rows = manifest.generation_rows(_base(), gen, ["images/a-0.jpg"])
    assert [(r["status"], r["result_index"]) for r in rows] == [("ok", 0), ("failed", 1)]
    assert rows[1]["error_code"] == "tooManyRequests" and rows[1]["cost_usd"] is None
    assert rows[1]["estimated_cost_usd"] == pytest.approx(0.065)
    with pytest.raises(ValueError, match="only fully successful"):
        manifest.store_record(rows)
    with pytest.raises(ValueError, match="1 of 2"):
        manifest.store_record(rows[:1])
    manifest.build(rows, AXIS_NAMES)


def test_failed_row_from_exception() -> None:
    row = manifest.failed_row(_base(), TimeoutError("read timed out"), task_uuid="t", attempts=4)
    assert (row["status"], row["result_index"], row["attempts"]) == ("failed", 0, 4)
    assert (row["error_code"], row["error_message"]) == ("TimeoutError", "read timed out")
    assert row["estimated_cost_usd"] == pytest.approx(0.13)
    assert row["finished_at"].endswith("Z")
    df = manifest.build([row], AXIS_NAMES)
    assert df["status"][0] == "failed"


# --- analysis-ready dtypes, CSV formula escaping, readers without casts, file modes ------------

FORMULAS = ['=HYPERLINK("http://x","y")', "+1+2", "-2+3", "@SUM(A1)", "'quoted", "plain"]


def _formula_rows() -> list[dict[str, Any]]:
    return [
        _row(i, 0, positivePrompt=text, error_message=text, **{"vars.style": text})
        for i, text in enumerate(FORMULAS)
    ]


def test_csv_escapes_cells_a_spreadsheet_would_run(tmp_path: Path) -> None:
    df = manifest.build(_formula_rows(), ["vars.style"])
    parquet, csv = manifest.write(df, tmp_path)
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    expected = ["'" + t if t[0] in "=+-@'" else t for t in FORMULAS]
    for column in ("positivePrompt", "error_message", "vars.style"):
        assert list(raw[column]) == expected, column
    assert list(pd.read_parquet(parquet)["positivePrompt"]) == FORMULAS  # exact text
    assert list(manifest.read(csv)["positivePrompt"]) == FORMULAS  # read back exactly


def test_times_are_utc_timestamps_and_low_cardinality_text_is_categorical(tmp_path: Path) -> None:
    df = manifest.build(_full_rows(), ["vars.style"])
    manifest.write(df, tmp_path)
    for frame in (
        df,
        manifest.read(tmp_path / "manifest.parquet"),
        manifest.read(tmp_path / "manifest.csv"),
    ):
        assert frame["submitted_at"][0] == pd.Timestamp("2025-01-01T00:00:00.000Z")
        assert frame["finished_at"][0] - frame["submitted_at"][0] == pd.Timedelta("1.25s")
        assert list(frame["status"].cat.categories) == ["ok", "cached", "failed"]
        assert list(frame["backend"].cat.categories) == ["emulator", "runware"]
    assert "2025-01-01T00:00:01.250Z" in (tmp_path / "manifest.csv").read_text()


def test_duckdb_reads_the_manifest_without_casts(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    manifest.write(manifest.build(_full_rows(), ["vars.style"]), tmp_path)
    path = str(tmp_path / "manifest.parquet")
    con = duckdb.connect()
    types = dict(
        con.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{path}')"
        ).fetchall()
    )
    assert types["submitted_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["seed"] == "BIGINT" and types["cost_usd"] == "DOUBLE"
    rows = con.execute(
        f"SELECT status, count(*) FROM '{path}' "
        "WHERE finished_at >= TIMESTAMPTZ '2025-01-01 00:00:01+00' AND status = 'ok' "
        "GROUP BY status"
    ).fetchall()
    assert rows == [("ok", 1)]


def test_polars_reads_the_manifest_without_casts(tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    manifest.write(manifest.build(_full_rows(), ["vars.style"]), tmp_path)
    frame = pl.read_parquet(tmp_path / "manifest.parquet")
    assert frame.schema["finished_at"] == pl.Datetime("ms", "UTC")
    assert frame.schema["status"] == pl.Categorical or frame.schema["status"] == pl.Enum
    assert frame.schema["seed"] == pl.Int64
    took = frame.filter(pl.col("status") == "ok").select(
        (pl.col("finished_at") - pl.col("submitted_at")).dt.total_milliseconds()
    )
    assert took.to_series().to_list() == [1250, None]  # the second ok row has no times


def test_run_outputs_honour_the_umask(isolated: Path) -> None:
    from conftest import run_cli

    mask = os.umask(0o022)
    os.umask(mask)
    proc = run_cli(
        "run", "sweep=seed_study", "sweep.seeds.count=2", "runner.progress=none", cwd=isolated
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (isolated / "outputs" / "seed_study").iterdir()
    files = [
        run_dir / "manifest.parquet",
        run_dir / "manifest.csv",
        run_dir / "plan.parquet",
        run_dir / ".hydra" / "config.yaml",
        *(run_dir / "images").iterdir(),
    ]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
        f.name: oct(0o666 & ~mask) for f in files
    }
