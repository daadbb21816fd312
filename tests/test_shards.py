"""Scale-out: a Hydra multirun over shards covers the sweep exactly once, against one emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import REPO, StartEmulator, cli_env, run_cli
from runs import charges_by_seed, ledger, run_sweep_inprocess, seed_sweep

from pipeline import manifest
from pipeline.emulator import Emulator


@pytest.fixture
def standalone(standalone_emulator: StartEmulator) -> tuple[str, Path]:
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


def test_a_multirun_exits_with_its_worst_jobs_code(tmp_path: Path) -> None:
    done = run_cli(
        "run",
        "-m",
        "sweep=seed_study",
        "shard.count=2",
        "shard.index=0,1",
        "budget.max_usd=0.01",
        "hydra.sweep.dir=m",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("is over the budget") == 2
    ok = run_cli(
        "run", "-m", "sweep=seed_study,sizes", "dry_run=true", "hydra.sweep.dir=n", cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr


def test_shards_that_run_one_after_another_stay_within_the_budget(tmp_path: Path) -> None:
    """Estimates of $0.01 against bills of $0.06: the shards' spending still adds up ≤ budget."""
    cheap = dict.fromkeys(("per_image", "with_reference_images", "with_moodboards"), 0.01)
    with Emulator(0, ledger=tmp_path / "l.jsonl") as emu:
        for index in range(2):
            run_sweep_inprocess(
                tmp_path, seed_sweep(20), tmp_path / f"shard{index}",
                **{"api.backend": "emulator", "api.base_url": emu.base_url,
                   "budget.max_usd": 0.30, "runner.concurrency": 1, "shard.index": index,
                   "shard.count": 2, "pricing.models": {"krea:krea@2-large": cheap}},
            )  # fmt: skip
    assert 0 < sum(entry["cost"] for entry in ledger(tmp_path / "l.jsonl")) <= 0.30 + 1e-9


@pytest.mark.slow
def test_concurrent_runs_sharing_a_store_pay_each_cell_once(
    tmp_path: Path, standalone: tuple[str, Path]
) -> None:
    url, ledger_path = standalone
    args = [
        "sweep=seed_study",
        "sweep.seeds.count=300",
        "sweep.seeds.start=0",
        "api=emulator",
        f"api.base_url={url}",
        "runner.concurrency=16",
        "budget.max_usd=100",
        "runner.progress=none",
    ]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.run", *args, f"hydra.run.dir=r{i}"],
                              cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(3)]  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    assert charges_by_seed(ledger_path) == {s: 1 for s in range(300)}


def test_each_job_keeps_its_code_in_its_run_dir_and_a_rerun_drops_stale_codes(
    tmp_path: Path,
) -> None:
    args = ["run", "-m", "sweep=seed_study", "shard.count=2", "shard.index=0,1"]
    failed = run_cli(*args, "budget.max_usd=0.01", "hydra.sweep.dir=m", cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert [(tmp_path / "m" / str(i) / "exit_code").read_text() for i in range(2)] == ["1\n"] * 2
    (tmp_path / "m" / "9").mkdir()  # a job dir an earlier, larger multirun left behind
    (tmp_path / "m" / "9" / "exit_code").write_text("2\n")
    again = run_cli(*args, "dry_run=true", "hydra.sweep.dir=m", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(tmp_path / "m" / str(i) / "exit_code").read_text() for i in range(2)] == ["0\n"] * 2
    assert not (tmp_path / "m" / "9" / "exit_code").exists()


def test_a_multirun_whose_jobs_leave_no_code_in_its_sweep_dir_fails(tmp_path: Path) -> None:
    """Jobs that write elsewhere (no folder shared with the launching host): not a silent 0."""
    done = run_cli(
        "run", "-m", "sweep=seed_study,sizes", "dry_run=true", "hydra.sweep.dir=m",
        "hydra.sweep.subdir=../elsewhere/${hydra.job.num}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "krea-run: error: no job of the multirun left its exit_code in" in done.stderr
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["0", "1"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_multirun_in_worker_processes_exits_with_its_worst_jobs_code(
    tmp_path: Path, launcher: str
) -> None:
    args = ["run", "-m", "sweep=seed_study", "shard.count=2", "shard.index=0,1",
            f"hydra/launcher={launcher}"]  # fmt: skip
    failed = run_cli(*args, "budget.max_usd=0.01", "hydra.sweep.dir=m", cwd=tmp_path, timeout=180)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert [(tmp_path / "m" / str(i) / "exit_code").read_text() for i in range(2)] == ["1\n"] * 2


def test_a_report_multirun_exits_with_its_worst_jobs_code(tmp_path: Path) -> None:
    done = run_cli("run", "sweep=sizes", "runner.progress=none", "hydra.run.dir=r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = run_cli("report", "-m", "run_dir=r,missing", "hydra.sweep.dir=rep", cwd=tmp_path)
    assert report.returncode == 1, report.stdout + report.stderr
    codes = sorted((tmp_path / "rep" / str(i) / "exit_code").read_text() for i in range(2))
    assert codes == ["0\n", "1\n"]


def test_the_ray_cluster_config_joins_a_running_cluster_without_object_store_memory() -> None:
    """ray.init() refuses object_store_memory with an address; the plugin defaults it to 75 MB."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher.ray_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    def init_kwargs(*overrides: str) -> dict[str, Any]:
        """What the plugin passes to ray.init() for hydra/launcher=ray_cluster."""
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose("run", ["hydra/launcher=ray_cluster", *overrides], True)
        finally:
            GlobalHydra.instance().clear()
        launcher = instantiate(cfg.hydra.launcher)
        launcher.ray_cfg.init.setdefault("object_store_memory", 78643200)  # as the plugin does
        kwargs = OmegaConf.to_container(launcher.ray_cfg.init, resolve=True)
        assert isinstance(kwargs, dict)
        return {str(k): v for k, v in kwargs.items()}

    assert init_kwargs() == {"address": "auto", "object_store_memory": None}
    local = init_kwargs("hydra.launcher.ray.init.address=null")
    assert local == {"address": None, "object_store_memory": None}
