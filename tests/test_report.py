"""krea-report: reading runs (single, multirun, compared, crashed), table numbers, CSV, HTML, CLI.

The helpers at the top build synthetic run dirs (manifest + small PNGs + journal) and are shared
with test_sheets.py and test_report_browser.py.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import CONF, compose_config, run_cli
from PIL import Image

from pipeline import manifest, report, rundir
from pipeline.errors import ConfigError
from pipeline.journal import Journal
from pipeline.reporting.data import ReportData, load
from pipeline.reporting.options import ReportOptions, output_dir, parse_options, parse_run_dirs
from pipeline.reporting.page import html_page, plots
from pipeline.reporting.tables import SIZE, Table, make_tables, table_keys, write_tables
from pipeline.reporting.text import format_tables
from pipeline.sheets import RUN

AXES = ["vars.style", "settings.creativity"]
STYLES = ["film grain", "motion blur"]
LEVELS = ["low", "medium", "high"]
T0 = datetime(2025, 1, 1, 12, 0, 0)
XSS = "<script>alert(1)</script> & <b>bold</b>"


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    """A small solid-colour PNG."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def stamp(seconds: float) -> str:
    """UTC ISO 8601 time `seconds` after T0."""
    t = pd.Timestamp(T0) + pd.Timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def make_row(
    index: int,
    result: int = 0,
    *,
    status: str = "ok",
    axes: dict[str, Any] | None = None,
    cost: float | None = 0.065,
    estimate: float = 0.065,
    latency: float | None = 1.0,
    start: float = 0.0,
    n: int = 1,
    code: str | None = None,
    message: str | None = None,
    prompt: str = "a lighthouse",
    task: str | None = None,
    cell_id: str | None = None,
    width: int = 64,
    height: int = 48,
) -> dict[str, Any]:
    """One manifest row (image path set for ok/cached rows)."""
    cid = cell_id or f"cell{index:04d}"
    row: dict[str, Any] = {
        "cell_id": cid,
        "cell_index": index,
        "result_index": result,
        "status": status,
        "seed": 1000 + index,
        "positivePrompt": prompt,
        "width": width,
        "height": height,
        "numberResults": n,
        "reference_count": 0,
        "estimated_cost_usd": estimate,
        "backend": "emulator",
        "model": "krea:krea@2-large",
        "request_json": json.dumps({"positivePrompt": prompt, "width": width}),
        **(axes or {}),
    }
    if status in ("ok", "cached"):
        row.update(
            image_path=f"images/{cid}-{result}.png",
            image_uuid=f"img-{cid}-{result}",
            cost_usd=0.0 if status == "cached" else cost,
        )
    if status == "cached":
        row.update(attempts=0, finished_at=stamp(-3600))
    else:
        row.update(
            task_uuid=task or f"task-{cid}",
            attempts=1,
            latency_s=latency,
            submitted_at=stamp(start),
            finished_at=stamp(start + (latency or 0.0)),
        )
    if status == "failed":
        row.update(error_code=code or "timeout", error_message=message or "read timed out")
    return row


def sample_rows() -> list[dict[str, Any]]:
    """2 styles × 3 creativity levels: one failed cell, one cached, one cell of 2 images."""
    rows: list[dict[str, Any]] = []
    i = 0
    for style in STYLES:
        for level in LEVELS:
            axes = {"vars.style": style, "settings.creativity": level}
            latency = 0.5 + 0.37 * i
            if (style, level) == ("motion blur", "high"):
                rows.append(
                    make_row(
                        i,
                        status="failed",
                        axes=axes,
                        latency=latency,
                        start=i,
                        code="timeout",
                        message="read timed out after 30 s",
                    )
                )
            elif (style, level) == ("film grain", "low"):
                rows.append(make_row(i, status="cached", axes=axes))
            elif (style, level) == ("film grain", "high"):
                for r in range(2):
                    rows.append(
                        make_row(
                            i, r, axes=axes, n=2, cost=0.06, estimate=0.06, latency=latency, start=i
                        )
                    )
            else:
                rows.append(
                    make_row(i, axes=axes, latency=latency, start=i, cost=0.065 + 0.001 * i)
                )
            i += 1
    return rows


COLORS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 180, 30), (150, 60, 170)]


def write_images(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A small PNG for every row that names an image."""
    for k, row in enumerate(rows):
        rel = row.get("image_path")
        if rel:
            path = run_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(COLORS[k % len(COLORS)], (row["width"], row["height"])))


def write_journal(run_dir: Path, rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> None:
    """journal.jsonl: the header, then each cell's rows as one results() call."""
    with Journal(run_dir, header={"axis_names": list(axes), "sweep": "test"}) as j:
        by_cell: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_cell.setdefault(row["cell_id"], []).append(row)
        for cell_rows in by_cell.values():
            j.submit(cell_rows[0]["cell_id"], cell_rows[0].get("task_uuid") or "t")
            j.results(cell_rows)


def make_run(
    run_dir: Path,
    rows: Sequence[dict[str, Any]] | None = None,
    axes: Sequence[str] = AXES,
    *,
    manifest_file: bool = True,
    journal_file: bool = True,
    images: bool = True,
) -> Path:
    """A synthetic run dir: manifest.parquet/.csv, journal.jsonl and images/."""
    rows = sample_rows() if rows is None else list(rows)
    run_dir.mkdir(parents=True, exist_ok=True)
    if images:
        write_images(run_dir, rows)
    if journal_file:
        write_journal(run_dir, rows, axes)
    if manifest_file:
        manifest.write(manifest.build(rows, axes), run_dir)
    return run_dir


def write_plan(run_dir: Path, cells: Sequence[dict[str, Any]]) -> None:
    """plan.parquet with the given cells (cell_id, cell_index, axes, request_json)."""
    pd.DataFrame(cells).to_parquet(run_dir / "plan.parquet", index=False)


def cents(value: Any) -> float:
    """Dollars rounded to the cent (after dropping float noise below a nano-dollar)."""
    return round(round(float(value), 9), 2)


def tables_of(data: ReportData) -> dict[str, Table]:
    """The report's tables by name."""
    return {t.name: t for t in make_tables(data)}


def request_latency(df: pd.DataFrame) -> pd.Series[Any]:
    """One latency per (cell, task) among non-cached rows: the test's own computation."""
    live = df[(df["status"] != "cached") & df["latency_s"].notna()]
    return live.drop_duplicates(["cell_id", "task_uuid"])["latency_s"].astype("float64")


# --- loading -----------------------------------------------------------------------------------


def test_single_run_loads_manifest_and_header_axes(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    data = load([run])
    assert data.axes == AXES
    assert not data.compare and data.shards == 1 and data.rebuilt == 0
    assert len(data.frame) == 7
    assert set(data.frame[rundir.SOURCE]) == {str(run)}


def test_axes_without_journal_are_the_extra_columns(tmp_path: Path) -> None:
    rows = [make_row(0, axes={"vars.style": "a", "inputs.referenceImages[0].strength": 0.5})]
    run = make_run(
        tmp_path / "run",
        rows,
        ["inputs.referenceImages[0].strength", "vars.style"],
        journal_file=False,
    )
    assert load([run]).axes == ["inputs.referenceImages[0].strength", "vars.style"]


@pytest.mark.parametrize("kind", ["missing", "file", "empty dir"])
def test_no_run_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("hi")
    elif kind == "empty dir":
        (path / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"run_dir|no run"):
        load([path])


def test_crashed_run_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    rows = sample_rows()
    run = make_run(tmp_path / "run", rows[:4], manifest_file=False)
    # the plan knew about every cell: the ones without a result are "not run"
    plan_cells = [
        {
            "cell_id": r["cell_id"],
            "cell_index": r["cell_index"],
            "seed": r["seed"],
            "vars.style": r["vars.style"],
            "settings.creativity": r["settings.creativity"],
            "numberResults": r["numberResults"],
            "estimated_cost_usd": 0.065,
            "cached": False,
            "request_json": r["request_json"],
        }
        for r in {r["cell_id"]: r for r in rows}.values()
    ]
    write_plan(run, plan_cells)
    data = load([run])
    assert data.rebuilt == 1
    assert list(data.frame["cell_id"]) == [r["cell_id"] for r in rows[:4]]
    assert sorted(data.not_run["cell_id"]) == ["cell0003", "cell0004", "cell0005"]
    assert set(data.not_run["status"]) == {"not run"}
    totals = tables_of(data)["totals"].frame
    assert totals["not_run_cells"][0] == 3
    assert totals["cells"][0] == 3


def test_multirun_shards_are_merged_without_duplicates(tmp_path: Path) -> None:
    rows = sample_rows()
    parent = tmp_path / "multirun"
    a = [r for r in rows if r["cell_index"] % 2 == 0]
    b = [r for r in rows if r["cell_index"] % 2 == 1]
    # cell 1 also failed in shard 0 (a rerun that later succeeded in shard 1)
    medium = {"vars.style": "film grain", "settings.creativity": "medium"}
    a_fail = make_row(1, status="failed", axes=medium, code="http_503")
    make_run(parent / "0", [*a, a_fail])
    make_run(parent / "1", b)
    (parent / "multirun.yaml").write_text("hydra: {}\n")
    (parent / "report").mkdir()  # an earlier report is not a shard
    data = load([parent])
    assert data.shards == 2 and data.dropped == 1
    keys = list(zip(data.frame["cell_id"], data.frame["result_index"], strict=True))
    assert len(keys) == len(set(keys)) == len(rows)
    cell1 = data.frame[data.frame["cell_id"] == "cell0001"]
    assert list(cell1["status"]) == ["ok"]
    assert cell1[rundir.SOURCE].iloc[0] == str(parent / "1")
    assert list(data.frame["cell_index"]) == sorted(data.frame["cell_index"])
    totals = tables_of(data)["totals"].frame
    expected = manifest.build(rows, AXES)
    assert cents(totals["billed_usd"][0]) == cents(expected["cost_usd"].sum())


def test_merge_prefers_ok_then_cached_then_failed() -> None:
    ax = {"vars.style": "a", "settings.creativity": "low"}
    frames = [
        manifest.build([make_row(0, status="failed", axes=ax)], AXES),
        manifest.build([make_row(0, status="cached", axes=ax)], AXES),
        manifest.build([make_row(0, status="ok", axes=ax)], AXES),
    ]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        merged, dropped = rundir.merge_runs([frames[i] for i in order])
        assert list(merged["status"]) == ["ok"] and dropped == 2
    merged, _ = rundir.merge_runs(frames[:2])
    assert list(merged["status"]) == ["cached"]


def test_compare_runs_adds_a_run_column(tmp_path: Path) -> None:
    a = make_run(tmp_path / "x" / "same")
    rows_b = [
        make_row(i, axes={"vars.style": s, "settings.creativity": "low"}, cost=0.06)
        for i, s in enumerate(STYLES)
    ]
    b = make_run(tmp_path / "y" / "same", rows_b)
    data = load([a, b])
    assert data.compare and data.runs == ["x/same", "y/same"]
    assert list(dict.fromkeys(data.frame[RUN])) == data.runs
    t = tables_of(data)
    totals = t["totals"].frame
    assert list(totals[RUN]) == data.runs
    assert cents(totals["billed_usd"][1]) == 0.12
    by_style = t["by_vars.style"].frame
    assert list(by_style.columns[:2]) == [RUN, "vars.style"]
    assert list(zip(by_style[RUN], by_style["vars.style"], strict=True)) == [
        ("x/same", "film grain"),
        ("x/same", "motion blur"),
        ("y/same", "film grain"),
        ("y/same", "motion blur"),
    ]
    assert list(by_style["images"])[2:] == [1, 1]
    bve = t["billed_vs_estimated"].frame
    assert set(bve[RUN]) == set(data.runs)


def test_compare_keeps_a_run_with_no_rows(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", [], manifest_file=False)  # crashed before any result
    totals = tables_of(load([a, b]))["totals"].frame
    assert list(totals[RUN]) == ["a", "b"]
    assert list(totals["cells"]) == [6, 0] and totals["billed_usd"][1] == 0.0


# --- table numbers -----------------------------------------------------------------------------


def test_totals_match_the_manifest_to_the_cent(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    df = manifest.read(run)
    totals = tables_of(load([run]))["totals"].frame.iloc[0]
    ok = int((df["status"] == "ok").sum())
    cached = int((df["status"] == "cached").sum())
    failed = int((df["status"] == "failed").sum())
    assert (totals["images_ok"], totals["images_cached"], totals["images_failed"]) == (
        ok,
        cached,
        failed,
    )
    assert totals["cells"] == df["cell_id"].nunique() == 6
    billed, estimated = float(df["cost_usd"].sum()), float(df["estimated_cost_usd"].sum())
    assert cents(totals["billed_usd"]) == cents(billed)
    assert cents(totals["estimated_usd"]) == cents(estimated)
    assert math.isclose(totals["billed_usd"], billed, abs_tol=1e-9)
    assert math.isclose(totals["difference_usd"], billed - estimated, abs_tol=1e-9)
    assert math.isclose(totals["failure_rate"], failed / (ok + cached + failed))
    # wall span: first submit to last finish of the rows run now (cached rows are older)
    assert totals["started_at"] == stamp(1)  # cell 0 is cached
    assert totals["finished_at"] == stamp(5 + 0.5 + 0.37 * 5)  # the failed cell ends last
    assert math.isclose(totals["wall_s"], 4 + 0.5 + 0.37 * 5, abs_tol=1e-3)
    lat = request_latency(df)
    assert math.isclose(totals["latency_p50_s"], float(np.quantile(lat, 0.5)))
    assert math.isclose(totals["latency_p95_s"], float(np.quantile(lat, 0.95)))


def test_by_axis_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    df = manifest.read(run)
    t = tables_of(load([run]))["by_vars.style"].frame.set_index("vars.style")
    assert list(t.index) == STYLES
    for style in STYLES:
        sub = df[df["vars.style"] == style]
        good = sub["status"].isin(["ok", "cached"]).sum()
        bad = (sub["status"] == "failed").sum()
        row = t.loc[style]
        assert isinstance(row, pd.Series)
        assert row["images"] == good and row["failed"] == bad
        assert row["cells"] == sub["cell_id"].nunique()
        assert math.isclose(row["failure_rate"], bad / (good + bad))
        assert cents(row["billed_usd"]) == cents(sub["cost_usd"].sum())
        assert math.isclose(row["estimated_usd"], float(sub["estimated_cost_usd"].sum()))
        ok = (sub["status"] == "ok").sum()
        assert math.isclose(row["usd_per_image"], float(sub["cost_usd"].sum()) / ok)
        lat = request_latency(sub)
        assert math.isclose(row["latency_p50_s"], float(np.quantile(lat, 0.5)))
        assert math.isclose(row["latency_p95_s"], float(np.quantile(lat, 0.95)))
    # the 2-image cell counts one request, not two
    assert t.loc["film grain", "images"] == 4


def test_axis_order_numbers_ascending_strings_as_swept(tmp_path: Path) -> None:
    rows = [
        make_row(i, axes={"vars.style": s, "strength": v})
        for i, (s, v) in enumerate([("zeta", 1.0), ("alpha", -1.0), ("zeta", 0.0), ("mid", None)])
    ]
    run = make_run(tmp_path / "run", rows, ["vars.style", "strength"])
    t = tables_of(load([run]))
    assert list(t["by_vars.style"].frame["vars.style"]) == ["zeta", "alpha", "mid"]
    strengths = list(t["by_strength"].frame["strength"])
    assert strengths[:3] == [-1.0, 0.0, 1.0] and strengths[3] is pd.NA


def test_unswept_creativity_refs_and_size_get_tables(tmp_path: Path) -> None:
    shapes = [("a", 64, 48), ("b", 48, 64), ("a", 48, 64)]
    rows = [
        make_row(i, axes={"vars.style": s}, width=w, height=h) for i, (s, w, h) in enumerate(shapes)
    ]
    for r in rows:
        r["settings.creativity"] = "medium"
    run = make_run(tmp_path / "run", rows, ["vars.style"])
    t = tables_of(load([run]))
    assert {
        "by_vars.style",
        "by_settings.creativity",
        "by_reference_count",
        "by_width_height",
    } <= set(t)
    size = t["by_width_height"].frame
    assert list(size[SIZE]) == ["64×48", "48×64"] and list(size["images"]) == [1, 2]


LARGE, MEDIUM = "krea:krea@2-large", "krea:krea@2-medium"


def two_model_rows() -> list[dict[str, Any]]:
    """Large: 2 ok cells at $0.065, 1 s; Medium: 2 ok at $0.03, 3 s, and one failed cell."""
    rows = [make_row(i, axes={"vars.style": s}, latency=1.0) for i, s in enumerate(STYLES)]
    for i, style in enumerate(STYLES, 2):
        row = make_row(i, axes={"vars.style": style}, cost=0.03, estimate=0.03, latency=3.0)
        rows.append({**row, "model": MEDIUM})
    failed = make_row(4, status="failed", axes={"vars.style": STYLES[0]}, estimate=0.03)
    rows.append({**failed, "model": MEDIUM, "latency_s": 5.0})
    return rows


def test_two_models_are_compared_by_model(tmp_path: Path) -> None:
    """Not swept (the model column only): cost, failures and latency per model, first table."""
    data = load([make_run(tmp_path / "run", two_model_rows(), ["vars.style"])])
    assert "model" not in data.axes
    tables = make_tables(data)
    assert [t.name for t in tables][:4] == [
        "totals",
        "billed_vs_estimated",
        "by_model",
        "by_vars.style",
    ]
    by_model = tables[2].frame.set_index("model")
    assert list(by_model.index) == [LARGE, MEDIUM]
    assert list(by_model["cells"]) == [2, 3]
    assert list(by_model["images"]) == [2, 2] and list(by_model["failed"]) == [0, 1]
    assert list(by_model["failure_rate"]) == [0.0, pytest.approx(1 / 3)]
    assert [cents(v) for v in by_model["billed_usd"]] == [0.13, 0.06]
    assert [cents(v) for v in by_model["estimated_usd"]] == [0.13, 0.09]
    assert list(by_model["usd_per_image"]) == [pytest.approx(0.065), pytest.approx(0.03)]
    assert list(by_model["latency_p50_s"]) == [1.0, 3.0]
    assert list(by_model["latency_p95_s"]) == [1.0, pytest.approx(4.8)]
    text = format_tables(tables, data)
    assert "\nby model\n" in text and MEDIUM in text
    page = html_page(data, tables, [], plots(data, tables), generated="now")
    assert "<h3>by model</h3>" in page and "billed cost by model" in page


def test_one_model_or_a_swept_model_gets_one_model_table(tmp_path: Path) -> None:
    assert "model" not in table_keys(manifest.read(make_run(tmp_path / "one")), AXES)
    frame = pd.DataFrame({"model": [LARGE, MEDIUM], "vars.style": STYLES})
    assert table_keys(frame, ["vars.style", "model"]) == ["vars.style", "model"]
    assert table_keys(frame, ["vars.style"]) == ["model", "vars.style"]


def test_billed_vs_estimated_by_status(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    df = manifest.read(run)
    t = tables_of(load([run]))["billed_vs_estimated"].frame.set_index("status")
    assert list(t.index) == ["ok", "cached", "failed", "total"]
    for status in ("ok", "cached", "failed"):
        sub = df[df["status"] == status]
        assert t.loc[status, "rows"] == len(sub)
        assert math.isclose(t["billed_usd"].loc[status], float(sub["cost_usd"].sum()))
        assert math.isclose(t["estimated_usd"].loc[status], float(sub["estimated_cost_usd"].sum()))
    assert math.isclose(t["billed_usd"].loc["total"], float(df["cost_usd"].sum()))
    assert t.loc["total", "rows"] == len(df)
    assert t.loc["cached", "billed_usd"] == 0.0 and t.loc["failed", "billed_usd"] == 0.0


def test_failures_by_code(tmp_path: Path) -> None:
    ax = {"vars.style": "a", "settings.creativity": "low"}
    rows = [
        make_row(0, axes=ax),
        make_row(1, status="failed", axes=ax, code="http_503", message="first 503"),
        make_row(2, status="failed", axes=ax, code="timeout", message="slow"),
        make_row(3, status="failed", axes=ax, code="http_503", message="second 503"),
        make_row(4, 0, axes=ax, n=3, task="t4"),  # 1 of 3 images came back
        make_row(4, 1, status="failed", axes=ax, n=3, code="missingResults", task="t4"),
    ]
    run = make_run(tmp_path / "run", rows)
    t = tables_of(load([run]))
    f = t["failures"].frame
    assert list(f["error_code"]) == ["http_503", "timeout", "missingResults"]
    assert list(f["rows"]) == [2, 1, 1]
    assert list(f["images"]) == [2, 1, 2]
    assert f["example_message"][0] == "first 503" and f["example_cell_id"][0] == "cell0001"
    totals = t["totals"].frame.iloc[0]
    assert totals["images_failed"] == 5 and totals["images_ok"] == 2
    assert math.isclose(totals["failure_rate"], 5 / 7)


def test_empty_run_still_reports(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [], manifest_file=False)
    data = load([run])
    t = tables_of(data)
    assert t["totals"].frame["cells"][0] == 0
    assert len(t["failures"].frame) == 0
    page = html_page(data, list(t.values()), [], [], generated="now")
    assert "<table>" in page


# --- output ------------------------------------------------------------------------------------


def test_csv_files_hold_the_tables(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    data = load([run])
    tables = make_tables(data)
    paths = write_tables(tables, tmp_path / "out")
    assert {p.name for p in paths} == {
        "totals.csv",
        "billed_vs_estimated.csv",
        "by_vars.style.csv",
        "by_settings.creativity.csv",
        "by_reference_count.csv",
        "by_width_height.csv",
        "failures.csv",
    }
    totals = pd.read_csv(tmp_path / "out" / "totals.csv")
    df = manifest.read(run)
    assert cents(totals["billed_usd"][0]) == cents(df["cost_usd"].sum())
    by_style = pd.read_csv(tmp_path / "out" / "by_vars.style.csv")
    assert math.isclose(by_style["billed_usd"].sum(), float(df["cost_usd"].sum()))


def test_terminal_text_is_compact(tmp_path: Path) -> None:
    data = load([make_run(tmp_path / "run")])
    text = format_tables(make_tables(data), data, max_rows=1)
    assert "billed" in text and "$" in text and "fail rate" in text
    assert "… 1 more rows in by_vars.style.csv" in text
    assert "failures by error code" in text and "timeout" in text


def test_html_escapes_user_text(tmp_path: Path) -> None:
    rows = [
        make_row(0, axes={"vars.style": XSS, "settings.creativity": "low"}, prompt=XSS),
        make_row(
            1,
            status="failed",
            axes={"vars.style": "b", "settings.creativity": XSS},
            prompt=XSS,
            code=XSS,
            message=XSS,
        ),
    ]
    run = make_run(tmp_path / "run", rows)
    assert report.report_job({"run_dir": str(run), "report": {}}) == 0
    page = (run / "report" / "index.html").read_text()
    scripts = re.findall(r"<script[^>]*>", page.lower())
    assert scripts == ['<script src="explorer-data.js">', '<script src="explorer.js">']
    assert "alert(1)</script>" not in page and "<b>bold</b>" not in page
    data = (run / "report" / "explorer-data.js").read_text()
    assert "</script>" not in data and XSS.replace("</", "<\\/") in data  # JSON text, never markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page


def test_html_is_self_contained(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    report.report_job({"run_dir": str(run), "report": {}})
    page = (run / "report" / "index.html").read_text()
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources
    assert not [s for s in sources if re.match(r"[a-z]+://", s) or s.startswith("//")]
    assert "url(" not in page and "@import" not in page
    imgs = re.findall(r'<img src="([^"]*)"', page)
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert page.count("<svg") >= 3  # cost bars, latency histogram, cumulative cost
    for name in ("Totals", "Billed vs estimated", "Failures by error code", "Contact sheets"):
        assert name in page


def test_big_sheets_are_linked_not_embedded(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    report.report_job({"run_dir": str(run), "report": {"embed_max_mb": 0}})
    page = (run / "report" / "index.html").read_text()
    imgs = re.findall(r'<img src="([^"]*)"', page)
    assert imgs and all(s.startswith("sheets/sheet-") for s in imgs)
    assert all((run / "report" / s).is_file() for s in imgs)


def test_report_job_writes_only_the_report_dir(tmp_path: Path, capsys: Any) -> None:
    run = make_run(tmp_path / "run")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert report.report_job({"run_dir": str(run), "report": {"html": True}}) == 0
    after = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert [p for p in after if p not in before and p.parts[0] != "report"] == []
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("wrote    ")
    assert (run / "report" / "index.html").is_file()
    assert list((run / "report" / "sheets").glob("sheet-*.png"))


def test_out_dir_and_compare_default(tmp_path: Path) -> None:
    now = datetime(2025, 2, 3, 4, 5, 6)
    a, b = Path("a"), Path("b")
    assert output_dir([a], None, now) == Path("a/report")
    assert output_dir([a, b], None, now) == Path("outputs/reports/compare-2025-02-03_04-05-06")
    assert output_dir([a, b], Path("x"), now) == Path("x")


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"thumb_px": 0}, "thumb_px"),
        ({"thumb_px": "big"}, "thumb_px"),
        ({"html": "yes"}, "html"),
        ({"rows": 3}, "rows"),
        ({"colour": 1}, "unknown report option"),
        ({"embed_max_mb": -1}, "embed_max_mb"),
    ],
)
def test_bad_options(section: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_options(section)


def test_config_composes_and_every_key_is_documented() -> None:
    cfg = compose_config("report", ["run_dir=x"])
    options = parse_options(cfg["report"])
    assert options.thumb_px == 256 and options.out_dir is None
    text = (CONF / "report.yaml").read_text()
    for line in text.splitlines():
        if re.match(r"\s*[\w.]+:\s*\S", line) and not line.strip().startswith("-"):
            assert " # " in line, f"undocumented key: {line}"


def test_defaults_are_the_typed_configs() -> None:
    """An absent key, the composed report.yaml and ReportOptions() agree: one set of defaults."""
    composed = parse_options(compose_config("report", ["run_dir=x"])["report"])
    assert parse_options({}) == composed == ReportOptions()
    with pytest.raises(ConfigError, match="max_sheet_px must be an integer ≥ 256"):
        parse_options({"max_sheet_px": 255})


def test_run_dir_values() -> None:
    assert parse_run_dirs("a") == [Path("a")]
    assert parse_run_dirs(["a", "b"]) == [Path("a"), Path("b")]
    for bad in ([], 3, [""], None):
        with pytest.raises(ConfigError):
            parse_run_dirs(bad)


# --- the console script ------------------------------------------------------------------------


def test_cli_writes_the_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "demo")
    work = tmp_path / "work"
    work.mkdir()
    done = run_cli("report", f"run_dir={run}", "report.thumb_px=64", cwd=work)
    assert done.returncode == 0, done.stderr
    out = run / "report"
    for name in ("index.html", "totals.csv", "by_vars.style.csv", "failures.csv"):
        assert (out / name).is_file(), name
    assert list((out / "sheets").glob("sheet-*.png"))
    assert list(work.iterdir()) == []  # Hydra left nothing in the current folder
    assert not (run / ".hydra").exists() and not list(run.glob("*.log"))
    assert "billed" in done.stdout and "wrote" in done.stdout


def test_cli_compares_a_list_of_runs(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b")
    out = tmp_path / "cmp"
    done = run_cli("report", f"run_dir=[{a},{b}]", f"report.out_dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    totals = pd.read_csv(out / "totals.csv")
    assert list(totals["run"]) == ["a", "b"]
    assert not (a / "report").exists() and not (b / "report").exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_cli_bad_run_dir_is_one_line(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "nope"
    if kind == "empty":
        target.mkdir()
    done = run_cli("report", f"run_dir={target}", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("krea-report: error: ")
    assert "Traceback" not in done.stderr + done.stdout
    assert not (target / "report").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["nope"] if kind == "empty" else [])


def test_cli_missing_run_dir_is_one_line(tmp_path: Path) -> None:
    done = run_cli("report", cwd=tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "run_dir" in done.stderr


def test_cli_bad_filter_is_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    done = run_cli("report", f"run_dir={run}", "report.filter='no_such_column == 1'", cwd=tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "report.filter" in done.stderr
