"""The plan: shards, counts, store hits, prices, budget and plan.parquet."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.errors import BudgetExceeded, ConfigError
from pipeline.plan import (
    AXES_AFTER,
    COLUMNS,
    Plan,
    check_budget,
    check_least_cost,
    format_plan,
    in_shard,
    least_price,
    make_plan,
)
from pipeline.pricing import estimate, load_price_table, usd
from pipeline.sweep import Cell

TABLE = load_price_table()


def _cell(index: int, axes: dict[str, Any], **request: Any) -> Cell:
    base = {
        "model": "krea:krea@2-large",
        "positivePrompt": f"p{index}",
        "width": 1024,
        "height": 1024,
        "seed": index,
    }
    base.update(request)
    return Cell(index=index, axes=axes, request=base, seed=index, cell_id=f"{index:020x}")


def _cells(n: int = 10) -> list[Cell]:
    return [_cell(i, {"vars.k": i % 3}) for i in range(n)]


class FakeStore:
    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = set(ids)

    def count(self) -> int:
        return len(self.ids)

    def has(self, cell_id: str, *, backend: str | None = None) -> bool:
        return cell_id in self.ids


@pytest.mark.parametrize(
    ("request_", "usd"),
    [
        ({"model": "krea:krea@2-large"}, 0.06),
        ({"model": "krea:krea@2-large", "numberResults": 3}, 0.18),
        ({"model": "krea:krea@2-large", "inputs": {"referenceImages": ["x"]}}, 0.065),
        (
            {
                "model": "krea:krea@2-large",
                "settings": {"moodboards": [{"id": "m"}]},
                "inputs": {"referenceImages": ["x"]},
            },
            0.07,
        ),
    ],
)
def test_estimate(request_: dict[str, Any], usd: float) -> None:
    assert estimate(request_, TABLE) == pytest.approx(usd)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover(count: int) -> None:
    ids = [f"{i:020x}" for i in range(500)]
    owners = [[s for s in range(count) if in_shard(cid, s, count)] for cid in ids]
    assert all(len(o) == 1 for o in owners)


def test_plan_counts_prices_and_store_hits(tmp_path: Path) -> None:
    cells = _cells(10)
    store = FakeStore([cells[0].cell_id, cells[1].cell_id])
    plan = make_plan(
        lambda: cells,
        price_table=TABLE,
        axis_names=["vars.k"],
        budget_usd=5.0,
        store=store,
        out_dir=tmp_path,
    )
    assert (plan.cells, plan.images, plan.cached_images, plan.todo_images) == (10, 10, 2, 8)
    assert plan.estimate_usd == pytest.approx(0.48)
    frame = pd.read_parquet(tmp_path / "plan.parquet")
    assert list(frame.columns) == [
        "cell_id",
        "cell_index",
        "seed",
        "vars.k",
        "numberResults",
        "estimated_cost_usd",
        "cached",
        "request_json",
    ]
    assert frame["cached"].sum() == 2 and frame["cell_index"].tolist() == list(range(10))
    assert "to run" in format_plan(plan)


EXPECTED_COLUMNS = [
    ("cell_id", "string"),
    ("cell_index", "int64"),
    ("seed", "int64"),
    ("numberResults", "int64"),
    ("estimated_cost_usd", "double"),
    ("cached", "bool"),
    ("request_json", "string"),
]


def test_plan_parquet_has_exactly_the_contract_columns(tmp_path: Path) -> None:
    assert [(name, str(kind)) for name, kind in COLUMNS.items()] == EXPECTED_COLUMNS
    assert AXES_AFTER == "seed"
    cells = [
        _cell(i, {"vars.k": i, "settings.creativity": ["low", "high"][i % 2]}) for i in range(4)
    ]
    axes = ["vars.k", "settings.creativity"]
    make_plan(lambda: cells, price_table=TABLE, axis_names=axes, budget_usd=5.0, out_dir=tmp_path)
    schema = pq.read_schema(tmp_path / "plan.parquet")
    written = [(field.name, str(field.type)) for field in schema]
    split = [name for name, _ in EXPECTED_COLUMNS].index("seed") + 1
    assert written == [
        *EXPECTED_COLUMNS[:split],
        ("vars.k", "int64"),
        ("settings.creativity", "string"),
        *EXPECTED_COLUMNS[split:],
    ]


def test_plan_of_one_shard(tmp_path: Path) -> None:
    cells = _cells(40)
    parts = [
        make_plan(lambda: cells, price_table=TABLE, axis_names=[], budget_usd=5, shard=(i, 2)).cells
        for i in range(2)
    ]
    assert sum(parts) == 40 and all(parts)


def test_mixed_type_axis_is_written_as_text(tmp_path: Path) -> None:
    cells = [_cell(i, {"a": i}) for i in range(10_005)] + [_cell(10_005, {"a": "x"})]
    make_plan(lambda: cells, price_table=TABLE, axis_names=["a"], budget_usd=1e6, out_dir=tmp_path)
    frame = pd.read_parquet(tmp_path / "plan.parquet")
    assert frame["a"].tolist()[-2:] == ["10004", "x"]


@pytest.mark.parametrize(
    ("estimate_usd", "budget", "refused"), [(1.0, 1.0, False), (1.01, 1.0, True)]
)
def test_budget_gate(estimate_usd: float, budget: float, refused: bool) -> None:
    plan = Plan(
        cells=1,
        images=1,
        estimate_usd=estimate_usd,
        budget_usd=budget,
        sweep_estimate_usd=estimate_usd,
        sweep_budget_usd=budget,
    )
    if refused:
        with pytest.raises(BudgetExceeded, match=r"budget.max_usd=1\.02"):
            check_budget(plan)
    else:
        check_budget(plan)


def test_a_repeated_request_is_refused_before_it_is_paid_twice(tmp_path: Path) -> None:
    cells = _cells(5)
    twin = Cell(
        index=5, axes={"vars.k": 9}, request=cells[2].request, seed=2, cell_id=cells[2].cell_id
    )
    with pytest.raises(ConfigError, match="cells 2 and 5 are the same request"):
        make_plan(
            lambda: [*cells, twin],
            price_table=TABLE,
            axis_names=["vars.k"],
            budget_usd=5,
            out_dir=tmp_path,
        )
    assert not (tmp_path / "plan.parquet").exists()


def test_an_axis_named_like_a_plan_column_is_written_once(tmp_path: Path) -> None:
    cells = [_cell(i, {"numberResults": 1 + i % 2}, numberResults=1 + i % 2) for i in range(6)]
    plan = make_plan(
        lambda: cells,
        price_table=TABLE,
        axis_names=["numberResults"],
        budget_usd=5,
        out_dir=tmp_path,
    )
    frame = pd.read_parquet(tmp_path / "plan.parquet")
    assert plan.images == 9 and frame["numberResults"].tolist() == [1, 2, 1, 2, 1, 2]


def test_shards_share_the_budget_in_proportion_to_their_estimates(tmp_path: Path) -> None:
    cells = _cells(40)
    whole = 40 * 0.06
    plans = [
        make_plan(lambda: cells, price_table=TABLE, axis_names=[], budget_usd=whole, shard=(i, 3))
        for i in range(3)
    ]
    for plan in plans:
        check_budget(plan)  # the whole sweep fits, so no shard refuses, however uneven
        assert plan.sweep_estimate_usd == pytest.approx(whole)
        assert plan.budget_usd == pytest.approx(plan.estimate_usd)
    # Another shard's cells already stored change neither the shares nor their sum.
    store = FakeStore(c.cell_id for c in cells if in_shard(c.cell_id, 1, 3))
    later = make_plan(
        lambda: cells, price_table=TABLE, axis_names=[], budget_usd=whole, shard=(0, 3), store=store
    )
    assert later.budget_usd == pytest.approx(plans[0].budget_usd)
    assert sum(p.budget_usd for p in plans) == pytest.approx(whole)
    with pytest.raises(BudgetExceeded, match="whole sweep"):
        check_budget(
            make_plan(
                lambda: cells,
                price_table=TABLE,
                axis_names=[],
                budget_usd=whole - 0.01,
                shard=(0, 3),
            )
        )


def test_the_least_cost_gate_counts_only_what_the_store_could_serve(tmp_path: Path) -> None:
    large = ["krea:krea@2-large"]  # a sweep of Krea 2 Large only: Large's least price
    assert least_price(TABLE, large) == 0.06
    assert least_price(TABLE) == 0.03  # any model of the table: Krea 2 Medium's
    check_least_cost(100, TABLE, 6.0, None, large)  # 100 x $0.06 fits exactly
    with pytest.raises(BudgetExceeded, match=r"at least \$6.06 \(101 cells"):
        check_least_cost(101, TABLE, 6.0, None, large)
    # 1,000 cells, 950 of which the store might serve: at least 50 x $0.06 = $3 still to pay
    stored = FakeStore(f"{i:020x}" for i in range(950))
    check_least_cost(1000, TABLE, 3.0, stored, large)
    with pytest.raises(BudgetExceeded, match="950 of them at most from the store"):
        check_least_cost(1000, TABLE, 2.99, stored, large)


def test_make_plan_refuses_before_expanding_when_the_count_is_over_budget(tmp_path: Path) -> None:
    def never() -> Iterable[Cell]:
        raise AssertionError("the cells were expanded")

    with pytest.raises(BudgetExceeded, match="at least"):
        make_plan(
            never,
            price_table=TABLE,
            axis_names=[],
            budget_usd=1.0,
            cell_count=10**6,
            out_dir=tmp_path,
        )
    assert not (tmp_path / "plan.parquet").exists()


def test_a_shard_plan_says_the_whole_sweep_figure_is_what_is_left_to_run() -> None:
    # Walk-through: shards started after others had filled the store printed "whole sweep $7.15",
    # then "$6.695", for a $13 sweep, with nothing saying those were the cells still to run.
    cells = _cells(40)
    store = FakeStore(c.cell_id for c in cells if in_shard(c.cell_id, 1, 3))
    plan = make_plan(
        lambda: cells, price_table=TABLE, axis_names=[], budget_usd=5, shard=(0, 3), store=store
    )
    assert plan.sweep_estimate_usd < 40 * 0.06
    line = next(ln for ln in format_plan(plan).splitlines() if ln.startswith("  estimate"))
    assert line.endswith(f"; whole sweep {usd(plan.sweep_estimate_usd)} still to run"), line


def test_a_sweep_over_models_is_planned_and_shown_by_model() -> None:
    medium = "krea:krea@2-medium"
    cells = [
        _cell(i, {"model": m}, model=m, numberResults=n)
        for i, (m, n) in enumerate(
            [("krea:krea@2-large", 1), (medium, 2), ("krea:krea@2-large", 1), (medium, 1)]
        )
    ]
    store = FakeStore([cells[2].cell_id])  # a stored Large cell costs nothing more
    plan = make_plan(
        lambda: cells, price_table=TABLE, axis_names=["model"], budget_usd=5.0, store=store
    )
    assert list(plan.by_model) == ["krea:krea@2-large", medium]
    assert [n for n, _ in plan.by_model.values()] == [1, 3]
    assert [c for _, c in plan.by_model.values()] == pytest.approx([0.06, 0.09])
    assert plan.estimate_usd == pytest.approx(0.15)
    lines = format_plan(plan).splitlines()
    estimate_at = next(i for i, ln in enumerate(lines) if ln.startswith("  estimate"))
    assert lines[estimate_at + 1 : estimate_at + 3] == [
        "    krea:krea@2-large      $0.06   1 image(s) to run",
        "    krea:krea@2-medium     $0.09   3 image(s) to run",
    ]


def test_a_one_model_plan_has_no_model_lines() -> None:
    plan = make_plan(lambda: _cells(3), price_table=TABLE, axis_names=["vars.k"], budget_usd=5.0)
    assert list(plan.by_model) == ["krea:krea@2-large"]
    assert "krea:krea@2-large" not in format_plan(plan)
