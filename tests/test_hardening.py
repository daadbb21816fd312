"""Hostile input (issue 11): huge sweeps, bad references, odd files, full disks: one clear line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_config, run_cli
from runs import set_path

from pipeline.entry import JobContext
from pipeline.errors import BudgetExceeded, ConfigError
from pipeline.run import run_job

BASE: dict[str, Any] = {
    "model": "krea:krea@2-large",
    "positivePrompt": "a lighthouse",
    "width": 1024,
    "height": 1024,
}


def _sweep(**over: Any) -> dict[str, Any]:
    return {"name": "t", "base": copy.deepcopy(BASE), **over}


def _run(workdir: Path, sweep: dict[str, Any], **edits: Any) -> int:
    """krea-run's job in this process, a dry run unless `dry_run=False` is given."""
    cfg = compose_config("run", ["dry_run=true"])
    cfg.pop("hydra", None)
    cfg["sweep"] = sweep
    cfg["runner"]["progress"] = "none"
    cfg["store"]["dir"] = str(workdir / "store")
    for key, value in edits.items():
        set_path(cfg, key, value)
    ctx = JobContext(run_dir=workdir / "run", multirun=False, sweep_dir=workdir, overrides=[])
    return run_job(cfg, ctx)


def _one_line_exit_1(done: Any, expected: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) >= 1 and expected in done.stderr, done.stderr


# ---------------------------------------------------------------- item 6: huge sweeps


@pytest.mark.parametrize(
    "sweep",
    [
        pytest.param(_sweep(seeds={"count": 10**12}), id="seeds-count-1e12"),
        pytest.param(
            _sweep(
                base={**BASE, "positivePrompt": " ".join(f"{{v{i}}}" for i in range(12))},
                grid={f"vars.v{i}": list(range(10)) for i in range(12)},
            ),
            id="12-axis-grid-1e12",
        ),
        pytest.param(_sweep(seeds={"count": 10**12}, sample={"n": 10**30}), id="sample-n-1e30-int"),
    ],
)
def test_a_huge_sweep_is_refused_from_its_shape(isolated: Path, sweep: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"1,000,000,000,000 cells .*at most 1,000,000"):
        _run(isolated, sweep)
    assert not (isolated / "run" / "plan.parquet").exists()


def test_sample_n_1e30_as_a_float_is_one_clear_error(isolated: Path) -> None:
    with pytest.raises(ConfigError, match=r"sample.n must be a positive integer, got 1e\+30"):
        _run(isolated, _sweep(seeds={"count": 10**12}, sample={"n": 1e30}))


def test_a_million_cells_over_budget_are_refused_before_the_plan_is_written(
    isolated: Path,
) -> None:
    # Was: refused only after 27 s of planning and a 44 MB plan.parquet.
    with pytest.raises(BudgetExceeded, match=r"at least \$60,000.00 .*budget.max_usd=60000.01"):
        _run(isolated, _sweep(seeds={"count": 10**6}))
    assert not (isolated / "run").exists()


def test_the_cli_answers_a_trillion_seeds_at_once(tmp_path: Path) -> None:
    done = run_cli(
        "run",
        "sweep=seed_study",
        "sweep.seeds.count=1000000000000",
        "dry_run=true",
        cwd=tmp_path,
        timeout=60,
    )
    _one_line_exit_1(done, "one run plans at most 1,000,000")


def test_many_excludes_over_a_huge_product_are_not_walked(isolated: Path) -> None:
    sweep = _sweep(
        base={**BASE, "positivePrompt": " ".join(f"{{v{i}}}" for i in range(12))},
        grid={f"vars.v{i}": list(range(10)) for i in range(12)},
        exclude=[{"vars.v0": i} for i in range(10)] + [{"vars.v1": i} for i in range(3)],
    )
    with pytest.raises(ConfigError, match="13 entries over a product of 1,000,000,000,000"):
        _run(isolated, sweep)
