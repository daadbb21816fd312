"""The run-dir reader: one merge rule for shards and repeated runs, used by report and reproduce."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_report import make_row, make_run

from pipeline import rundir
from pipeline.errors import ConfigError, SelectError
from pipeline.reporting.data import load
from pipeline.selection import load_selection, parse_select

CELL = "0123456789abcdef0123"
AXES = ["vars.style"]
Rows = list[tuple[int, str]]  # (result_index, status) of one cell's rows in one run dir


def _multirun(parent: Path, runs: list[Rows]) -> Path:
    """A multirun dir whose job dirs 0, 1, … hold the given rows of CELL (2 images per cell)."""
    for number, rows in enumerate(runs):
        made = [
            make_row(0, result, status=status, n=2, cell_id=CELL, axes={"vars.style": "a"})
            for result, status in rows
        ]
        for row in made:  # the digest reproduce compares with
            row["image_sha256"] = (
                None if row["status"] == "failed" else f"{number}{row['result_index']}"
            )
        make_run(parent / str(number), made, AXES)
    return parent


def _kept(frame: pd.DataFrame) -> list[tuple[int, str, str]]:
    columns = [frame["result_index"], frame[rundir.SOURCE], frame["status"]]
    return [(int(i), str(d), str(s)) for i, d, s in zip(*columns, strict=True)]


# (rows in run A, rows in run B) → the row kept for each image: (result_index, run, status)
MERGES: list[tuple[Rows, Rows, list[tuple[int, str, str]]]] = [
    ([(0, "ok")], [(0, "cached")], [(0, "A", "ok")]),
    ([(0, "cached")], [(0, "ok")], [(0, "B", "ok")]),  # the row with the bill wins
    ([(0, "failed")], [(0, "ok")], [(0, "B", "ok")]),
    ([(0, "failed")], [(0, "cached")], [(0, "B", "cached")]),
    ([(0, "ok")], [(0, "failed")], [(0, "A", "ok")]),
    ([(0, "ok")], [(0, "ok")], [(0, "A", "ok")]),  # a tie: the first run dir
    ([(0, "cached")], [(0, "cached")], [(0, "A", "cached")]),
    ([(0, "failed")], [(0, "failed")], [(0, "A", "failed")]),
    ([], [(0, "failed")], [(0, "B", "failed")]),
    ([(0, "ok"), (1, "failed")], [(0, "cached"), (1, "ok")], [(0, "A", "ok"), (1, "B", "ok")]),
    ([(0, "cached"), (1, "cached")], [(0, "ok")], [(0, "B", "ok"), (1, "A", "cached")]),
]


@pytest.mark.parametrize(("run_a", "run_b", "kept"), MERGES)
def test_one_merge_rule_for_report_and_reproduce(
    tmp_path: Path, run_a: Rows, run_b: Rows, kept: list[tuple[int, str, str]]
) -> None:
    parent = _multirun(tmp_path / "multi", [run_a, run_b])
    where = {"A": str(parent / "0"), "B": str(parent / "1")}
    expected = [(index, where[run], status) for index, run, status in kept]

    runs = rundir.read_runs(parent)
    assert _kept(runs.frame) == expected
    assert runs.dropped == len(run_a) + len(run_b) - len(kept)

    data = load([parent])  # krea-report
    assert _kept(data.frame) == expected and data.dropped == runs.dropped

    images = [(index, run) for index, run, status in expected if status != "failed"]
    select = parse_select([CELL], None, str(parent))  # krea-reproduce
    if not images:
        with pytest.raises(SelectError, match="has no image"):
            load_selection(select)
        return
    targets = load_selection(select).targets
    chosen = [(t.result_index, str(t.path.parent.parent) if t.path else "") for t in targets]
    assert chosen == images


def test_run_dirs_are_read_in_natural_order(tmp_path: Path) -> None:
    parent = tmp_path / "multi"
    for name in ("10", "2", "shard-1", "a"):
        make_run(parent / name, [make_row(0, cell_id=CELL)], AXES)
    (parent / "report").mkdir()  # a folder without a run is not a run dir
    assert [p.name for p in rundir.find_run_dirs(parent)] == ["2", "10", "a", "shard-1"]
    # the tie between four ok rows of one image goes to the first of them
    assert rundir.read_runs(parent).frame[rundir.SOURCE].tolist() == [str(parent / "2")]


def test_a_folder_without_a_run_is_one_clear_error_in_both_commands(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    message = "no run in .*: it has no manifest or journal"
    with pytest.raises(ConfigError, match=message):
        load([tmp_path / "empty"])
    with pytest.raises(SelectError, match=message):
        load_selection(parse_select([CELL], None, str(tmp_path / "empty")))
