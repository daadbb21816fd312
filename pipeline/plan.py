"""The plan: count, price and budget-check every cell before anything is sent."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import pricing
from pipeline.canonical import canonical_json
from pipeline.errors import BudgetExceeded, ConfigError
from pipeline.pricing import usd
from pipeline.progress import shown
from pipeline.rundir import PLAN_NAME
from pipeline.schema import ProblemLog, validate_cells
from pipeline.sweep import Cell

_BATCH = 10_000
# plan.parquet's column contract: these columns and types, with the swept axes (one column each,
# in the sweep's order) right after AXES_AFTER; an axis whose values mix types is written as text.
COLUMNS: dict[str, pa.DataType] = {
    "cell_id": pa.string(),
    "cell_index": pa.int64(),
    "seed": pa.int64(),
    "numberResults": pa.int64(),
    "estimated_cost_usd": pa.float64(),
    "cached": pa.bool_(),
    "request_json": pa.string(),
}
AXES_AFTER = "seed"
_SPLIT = list(COLUMNS).index(AXES_AFTER) + 1


class HasCells(Protocol):
    """The one store question the plan asks."""

    def has(self, cell_id: str, *, backend: str | None = None) -> bool:
        """Whether the cell is finished and stored."""
        ...

    def count(self) -> int:
        """How many cells are stored (of any sweep): at most this many cells are free."""
        ...


@dataclass
class Plan:
    """What a run will do and cost; `estimate_usd` covers only the cells still to run.

    With shards, `sweep_estimate_usd`/`sweep_budget_usd` are the whole sweep's (its cells still to
    run, so a shard planned after others filled the store sees less) and `budget_usd` is this
    shard's share of the budget, in proportion to its part of the estimate: the shares add up to
    the budget.
    """

    cells: int = 0
    images: int = 0
    cached_cells: int = 0
    cached_images: int = 0
    estimate_usd: float = 0.0
    budget_usd: float = 0.0
    sweep_estimate_usd: float = 0.0
    sweep_budget_usd: float = 0.0
    shard_part: float = 1.0  # this shard's part of the whole sweep's cost, cached cells included
    shard: tuple[int, int] = (0, 1)
    price_note: str = ""
    path: Path | None = None
    by_model: dict[str, tuple[int, float]] = field(default_factory=dict)  # AIR → images, USD to run

    @property
    def todo_images(self) -> int:
        """Images that still need paying for."""
        return self.images - self.cached_images


def in_shard(cell_id: str, index: int, count: int) -> bool:
    """Whether a cell belongs to shard `index` of `count` (by its id, so shards never overlap)."""
    if count <= 1:
        return True
    return int(hashlib.sha256(cell_id.encode()).hexdigest()[:12], 16) % count == index


def make_plan(
    cells: Callable[[], Iterable[Cell]],
    *,
    price_table: dict[str, Any],
    axis_names: list[str],
    budget_usd: float,
    store: HasCells | None = None,
    shard: tuple[int, int] = (0, 1),
    out_dir: Path | None = None,
    backend: str | None = None,
    cell_count: int | None = None,
    models: Collection[str] | None = None,
) -> Plan:
    """Validate, shard, price and look up every cell in one streaming pass; write plan.parquet.

    With `cell_count` (the sweep's size, from its shape), a sweep that is over the budget even at
    the cheapest price of its `models` (every model of the table when not given), with as many
    cells free as the store holds, is refused before the pass.
    """
    if cell_count is not None:
        check_least_cost(cell_count, price_table, budget_usd, store, models)
    string_axes: set[str] = set()
    while True:
        try:
            return _plan_pass(
                cells(),
                price_table,
                axis_names,
                budget_usd,
                store,
                shard,
                out_dir,
                string_axes,
                backend,
            )
        except _AxisTypeChanged as changed:
            string_axes.add(changed.axis)  # mixed-type axis: write it as text, start again


class _AxisTypeChanged(Exception):
    def __init__(self, axis: str) -> None:
        self.axis = axis


def _plan_pass(
    cells: Iterable[Cell],
    table: dict[str, Any],
    axis_names: list[str],
    budget_usd: float,
    store: HasCells | None,
    shard: tuple[int, int],
    out_dir: Path | None,
    string_axes: set[str],
    backend: str | None,
) -> Plan:
    plan = Plan(sweep_budget_usd=budget_usd, shard=shard, price_note=_price_note(table))
    writer = _PlanWriter(out_dir, axis_names, string_axes) if out_dir is not None else None
    log = ProblemLog()
    seen: dict[int, int] = {}  # hash of each cell_id → its index: a duplicate would pay twice
    all_usd = shard_usd = 0.0  # every cell's estimate, cached or not: shares that add up
    duplicates: list[str] = []
    try:
        for cell in validate_cells(cells, log):
            key = hash(cell.cell_id)
            first = seen.setdefault(key, cell.index)
            if first != cell.index and len(duplicates) < 10:
                duplicates.append(
                    f"  cells {first} and {cell.index} are the same request (cell_id "
                    f"{cell.cell_id}): {', '.join(f'{k}={v}' for k, v in cell.axes.items())}"
                )
            cost = pricing.estimate(cell.request, table) if not log.groups else 0.0
            all_usd += cost
            if not in_shard(cell.cell_id, *shard):
                # Another shard's cell: only its estimate counts, for the whole sweep's budget.
                if store is None or not store.has(cell.cell_id, backend=backend):
                    plan.sweep_estimate_usd += cost
                continue
            shard_usd += cost
            images = int(cell.request.get("numberResults", 1))
            cached = store is not None and store.has(cell.cell_id, backend=backend)
            plan.cells += 1
            plan.images += images
            if cached:
                plan.cached_cells += 1
                plan.cached_images += images
            else:
                plan.estimate_usd += cost
                model = str(cell.request.get("model", ""))
                todo, model_usd = plan.by_model.get(model, (0, 0.0))
                plan.by_model[model] = (todo + images, model_usd + cost)
            if writer is not None and not log.groups:
                writer.add(cell, cost, cached)
        if duplicates:
            raise ConfigError(
                "the sweep asks for the same request more than once (it would be paid twice); "
                "drop the repeats (e.g. with exclude) or vary them:\n" + "\n".join(duplicates)
            )
        plan.sweep_estimate_usd += plan.estimate_usd
        # Shares come from estimates the store cannot change, so shards that plan at different
        # moments (while others fill the store) still get shares that add up to the budget.
        plan.shard_part = shard_usd / all_usd if all_usd else 1.0 / shard[1]
        plan.budget_usd = budget_usd * plan.shard_part if shard[1] > 1 else budget_usd
        if writer is not None:
            plan.path = writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return plan


class _PlanWriter:
    """Streams plan rows to a temporary parquet file in batches; renamed into place on close."""

    def __init__(self, out_dir: Path, axis_names: list[str], string_axes: set[str]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.final = out_dir / PLAN_NAME
        self.tmp = out_dir / f".{PLAN_NAME}.{os.getpid()}.tmp"
        self.axis_names = [a for a in axis_names if a not in COLUMNS]
        self.string_axes = string_axes
        self.rows: dict[str, list[Any]] = self._empty()
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None

    def _empty(self) -> dict[str, list[Any]]:
        names = list(COLUMNS)
        return {c: [] for c in [*names[:_SPLIT], *self.axis_names, *names[_SPLIT:]]}

    def add(self, cell: Cell, cost: float, cached: bool) -> None:
        """Buffer one row; flush a batch when full."""
        rows = self.rows
        rows["cell_id"].append(cell.cell_id)
        rows["cell_index"].append(cell.index)
        rows["seed"].append(cell.seed)
        for axis in self.axis_names:
            value = cell.axes.get(axis)
            if axis in self.string_axes and value is not None and not isinstance(value, str):
                value = canonical_json(value)
            rows[axis].append(value)
        rows["numberResults"].append(int(cell.request.get("numberResults", 1)))
        rows["estimated_cost_usd"].append(cost)
        rows["cached"].append(cached)
        rows["request_json"].append(canonical_json(cell.request))
        if len(rows["cell_id"]) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if not self.rows["cell_id"]:
            return
        arrays = {}
        for name, values in self.rows.items():
            if name in COLUMNS:
                arrays[name] = pa.array(values, type=COLUMNS[name])
            elif name in self.string_axes:
                arrays[name] = pa.array(values, type=pa.string())
            elif self.schema is None:
                arrays[name] = pa.array(values)
            else:
                try:
                    arrays[name] = pa.array(values, type=self.schema.field(name).type)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise _AxisTypeChanged(name) from exc
        table = pa.table(arrays)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.writer.write_table(table)
        self.rows = self._empty()

    def close(self) -> Path:
        """Finish the file and move it into place."""
        self.flush()
        if self.writer is None:  # no rows at all: still leave a readable, empty plan
            table = pa.table({n: pa.array([], type=pa.string()) for n in self._empty()})
            pq.write_table(table, self.tmp)
        else:
            self.writer.close()
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """Drop the temporary file (validation failed or the pass was restarted)."""
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def _price_note(table: dict[str, Any]) -> str:
    return f"at prices of {table.get('date', '?')} (conf/pricing)"


def check_budget(plan: Plan) -> None:
    """Refuse a plan whose estimate for the cells still to run is over the budget."""
    estimate, budget = plan.sweep_estimate_usd, plan.sweep_budget_usd
    if estimate > budget + 1e-9:
        whole = " of the whole sweep (all shards)" if plan.shard[1] > 1 else ""
        raise BudgetExceeded(
            f"the plan's estimate{whole} {usd(estimate)} is over the budget "
            f"{usd(budget)}; nothing was sent. Raise it with budget.max_usd="
            f"{_round_up(estimate)}, or shrink the sweep (sample, fewer seeds)."
        )


def least_price(table: dict[str, Any], models: Collection[str] | None = None) -> float:
    """The lowest price of one image in the table, of `models` when it prices any (0: none)."""
    rows = {a: m for a, m in (table.get("models") or {}).items() if isinstance(m, dict)}
    if models is not None and rows.keys() & set(models):
        rows = {a: m for a, m in rows.items() if a in models}
    prices = [
        float(v)
        for model in rows.values()
        for v in model.values()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return max(min(prices), 0.0) if prices else 0.0


def check_least_cost(
    cells: int,
    table: dict[str, Any],
    budget_usd: float,
    store: HasCells | None,
    models: Collection[str] | None = None,
) -> None:
    """Refuse at once a sweep whose least possible cost is over the budget (no expansion)."""
    price = least_price(table, models)
    if cells * price <= budget_usd + 1e-9:
        return
    stored = store.count() if store is not None and hasattr(store, "count") else 0
    least = max(cells - stored, 0) * price
    if least > budget_usd + 1e-9:
        free = f", {stored:,} of them at most from the store" if stored else ""
        raise BudgetExceeded(
            f"the plan's estimate of at least {usd(least)} ({cells:,} cells at {usd(price)} or "
            f"more each{free}) is over the budget {usd(budget_usd)}; nothing was sent. Raise it "
            f"with budget.max_usd={_round_up(least)} or more, or shrink the sweep (sample, "
            "fewer seeds)."
        )


def _round_up(usd: float) -> str:
    return f"{(int(usd * 100) + 1) / 100:.2f}"


def format_plan(plan: Plan) -> str:
    """The plan as a few aligned lines for a person."""
    shard = f" (shard {plan.shard[0]} of {plan.shard[1]})" if plan.shard[1] > 1 else ""
    lines = [
        f"plan{shard}",
        f"  cells        {plan.cells:>12,}",
        f"  images       {plan.images:>12,}",
        f"  cached       {plan.cached_images:>12,}   (already paid for, taken from the store)",
        f"  to run       {plan.todo_images:>12,}",
        f"  estimate     {usd(plan.estimate_usd):>12}   {plan.price_note}"
        + (f"; whole sweep {usd(plan.sweep_estimate_usd)} still to run" if shard else ""),
    ]
    if len(plan.by_model) > 1:  # a sweep over models: what each costs
        width = max(map(len, plan.by_model))
        lines += [
            f"    {air:<{width}}  {usd(cost):>8}   {images:,} image(s) to run"
            for air, (images, cost) in plan.by_model.items()
        ]
    lines.append(
        f"  budget       {usd(plan.budget_usd):>12}"
        + (f"   this shard's share of {usd(plan.sweep_budget_usd)}" if shard else "")
    )
    if plan.path is not None:
        lines.append(f"  every request: {shown(plan.path)}")
    return "\n".join(lines)
