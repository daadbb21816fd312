"""Scale-out: a Hydra multirun over shards covers the sweep exactly once, against one emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import run_cli
from runs import charges_by_seed, ledger

from pipeline import manifest


@pytest.fixture
def standalone(standalone_emulator: Any) -> tuple[str, Path]:
    """One standalone emulator process with a ledger, shared by every shard: (url, ledger)."""
    return standalone_emulator(0.05)


def test_two_joblib_shards_cover_the_plan_once(
    tmp_path: Path, standalone: tuple[str, Path]
) -> None:
    url, ledger_path = standalone
    common = [
        "sweep=seed_study",
        "sweep.seeds.count=30",
        "sweep.seeds.start=0",
        "api=emulator",
        f"api.base_url={url}",
        "runner.progress=none",
    ]
    full = run_cli("run", *common, "dry_run=true", "hydra.run.dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    planned = set(pd.read_parquet(tmp_path / "full" / "plan.parquet")["cell_id"])

    done = run_cli(
        "run",
        "-m",
        *common,
        "shard.count=2",
        "shard.index=0,1",
        "hydra/launcher=joblib",
        "hydra.sweep.dir=multi",
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shards = [manifest.read(tmp_path / "multi" / str(i)) for i in range(2)]
    assert all(len(s) for s in shards)
    cells = pd.concat(shards)["cell_id"]
    assert cells.is_unique and set(cells) == planned
    assert set(pd.concat(shards)["status"]) == {"ok"}
    assert charges_by_seed(ledger_path) == {s: 1 for s in range(30)}
    assert "krea-report run_dir=multi" in done.stdout


def test_a_second_multirun_is_served_from_the_shared_store(
    tmp_path: Path, standalone: tuple[str, Path]
) -> None:
    url, ledger_path = standalone
    args = [
        "-m",
        "sweep=sizes",
        "shard.count=2",
        "shard.index=0,1",
        "hydra/launcher=joblib",
        "api=emulator",
        f"api.base_url={url}",
        "runner.progress=none",
    ]
    assert run_cli("run", *args, "hydra.sweep.dir=a", cwd=tmp_path, timeout=300).returncode == 0
    charged = len(ledger(ledger_path))
    assert run_cli("run", *args, "hydra.sweep.dir=b", cwd=tmp_path, timeout=300).returncode == 0
    assert len(ledger(ledger_path)) == charged == 8
    second = pd.concat(manifest.read(tmp_path / "b" / str(i)) for i in range(2))
    assert set(second["status"]) == {"cached"}


def test_multirun_over_two_sweeps(tmp_path: Path) -> None:
    done = run_cli(
        "run", "-m", "sweep=seed_study,sizes", "dry_run=true", "hydra.sweep.dir=m", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.parent.name for p in (tmp_path / "m").glob("*/plan.parquet")) == ["0", "1"]
