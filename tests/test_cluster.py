"""Shards as SLURM jobs on the single-node cluster of scripts/slurm-local.sh (marker `cluster`).

Every job there has a private /tmp, as on a node other than the submitting host, so the jobs'
folder must be one they share: each test works in a fresh folder under /var/tmp.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, EmulatorProcesses, cli_env, run_cli
from runs import charges_by_seed, ledger

from pipeline import manifest

pytestmark = pytest.mark.cluster

SHARED = Path("/var/tmp")  # seen alike by the test and by its SLURM jobs
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",  # the local node offers 8 CPUs: all shards run at once
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
TIMEOUT_S = 240  # one multirun on the local cluster takes seconds; a stuck job fails the test
Emulator = Callable[..., tuple[str, Path]]  # start(*flags) → (base URL, ledger path)
PRICE_CHECK_READY = "price_check" in (REPO / "conf" / "run.yaml").read_text()


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    """The local cluster must be up (`scripts/slurm-local.sh start`): fail, never skip, if not."""
    if shutil.which("sinfo") is None:
        pytest.fail(
            "no SLURM client: apt-get install slurm-wlm munge; scripts/slurm-local.sh start"
        )
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if state.returncode or state.stdout.split() not in (["idle"], ["mixed"], ["allocated"]):
        pytest.fail(f"no SLURM node up ({state.stdout.strip()}{state.stderr.strip()}): "
                    "run scripts/slurm-local.sh start")  # fmt: skip


@pytest.fixture
def work() -> Iterator[Path]:
    """A fresh folder the SLURM jobs see too (not under /tmp, which is private to each job)."""
    path = Path(tempfile.mkdtemp(prefix="krea-cluster-", dir=SHARED))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def emulator(work: Path) -> Iterator[Emulator]:
    """One standalone emulator on 127.0.0.1 for all shards: `start(*flags)` → (url, ledger)."""
    emulators = EmulatorProcesses(work)

    def start(*flags: str) -> tuple[str, Path]:
        return emulators.start("--latency", "0.05", *flags)

    yield start
    emulators.stop()


def sweep_args(url: str, seeds: int) -> list[str]:
    """A seed sweep of `seeds` cells against the emulator at `url`."""
    return ["sweep=seed_study", f"sweep.seeds.count={seeds}", "sweep.seeds.start=0",
            "api=emulator", f"api.base_url={url}", "runner.progress=none"]  # fmt: skip


def slurm_multirun(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`krea-run -m … hydra/launcher=slurm` in `work`.

    The user's data and cache dirs (the store, sweep-file links) are in `work`, which every job
    sees, as a home directory is on a real cluster: the test's own are under its private /tmp.
    """
    env = cli_env(XDG_DATA_HOME=str(work / "xdg-data"), XDG_CACHE_HOME=str(work / "xdg-cache"))
    return run_cli("run", "-m", *SLURM, *args, cwd=work, timeout=TIMEOUT_S, env=env)


def slurm_tasks_run(sweep_dir: Path) -> list[str]:
    """The SLURM array tasks (`<job id>_<task>`) that ran a shard of the multirun to its end."""
    done = []
    for folder in sorted((sweep_dir / ".submitit").glob("*_*")):
        log = next(folder.glob("*_log.out"), None)
        ran = log is not None and f"JobEnvironment(job_id={folder.name}," in log.read_text()
        if ran and next(folder.glob("*_result.pkl"), None) is not None:
            done.append(folder.name)
    return done


def test_three_slurm_shards_cover_the_plan_once_and_report_merges_them(
    work: Path, emulator: Emulator
) -> None:
    url, ledger_path = emulator()
    full = run_cli("run", *sweep_args(url, 30), "dry_run=true", "hydra.run.dir=full", cwd=work)
    assert full.returncode == 0, full.stderr
    planned = set(pd.read_parquet(work / "full" / "plan.parquet")["cell_id"])

    done = slurm_multirun(work, *sweep_args(url, 30), "shard.count=3", "shard.index=range(3)",
                          "hydra.sweep.dir=multi")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(slurm_tasks_run(work / "multi")) == 3  # one SLURM array task per shard
    shards = [manifest.read(work / "multi" / str(i)) for i in range(3)]
    assert all(len(s) for s in shards)
    rows = pd.concat(shards)
    assert rows["cell_id"].is_unique and set(rows["cell_id"]) == planned
    assert set(rows["status"]) == {"ok"}
    assert charges_by_seed(ledger_path) == {s: 1 for s in range(30)}
    assert [(work / "multi" / str(i) / "exit_code").read_text() for i in range(3)] == ["0\n"] * 3

    report = run_cli("report", "run_dir=multi", cwd=work)
    assert report.returncode == 0, report.stderr
    assert "(30 rows; 3 shards merged" in report.stdout
    totals = pd.read_csv(work / "multi" / "report" / "totals.csv")
    assert totals.shape[0] >= 1 and (work / "multi" / "report" / "index.html").is_file()


def test_slurm_shards_that_all_fail_make_the_multirun_fail(work: Path, emulator: Emulator) -> None:
    """The issue's observation: every shard failed on other hosts, yet the multirun exited 0."""
    url, ledger_path = emulator()
    done = slurm_multirun(work, *sweep_args(url, 30), "shard.count=2", "shard.index=0,1",
                          "budget.max_usd=0.01", "hydra.sweep.dir=m")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert [(work / "m" / str(i) / "exit_code").read_text() for i in range(2)] == ["1\n"] * 2
    assert ledger(ledger_path) == []


def test_one_failing_slurm_shard_fails_the_multirun_and_the_others_finish(
    work: Path, emulator: Emulator
) -> None:
    url, ledger_path = emulator()
    # Shard 3 of 3 does not exist: that job refuses (exit 1), shards 0 and 1 run.
    done = slurm_multirun(work, *sweep_args(url, 30), "shard.count=3", "shard.index=0,1,3",
                          "hydra.sweep.dir=m")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    codes = [(work / "m" / str(i) / "exit_code").read_text() for i in range(3)]
    assert codes == ["0\n", "0\n", "1\n"]
    cells = pd.concat(manifest.read(work / "m" / str(i)) for i in range(2))["cell_id"]
    assert cells.is_unique and len(cells) == len(ledger(ledger_path)) > 0


@pytest.mark.skipif(
    not PRICE_CHECK_READY,
    reason="needs budget.price_check (issue 10) and the emulator's --price-factor on main",
)
def test_a_price_check_that_trips_in_one_slurm_shard_stops_only_that_shard(
    work: Path, emulator: Emulator
) -> None:
    """Shards 0 and 1 are in the store; shard 2's first image bills 1.5× its estimate: exit 2.

    Each shard checks the whole sweep against the budget and spends only its share; the price
    check stops the shard whose first billed image is over the table, after that one image.
    """
    url, _ = emulator()
    first = slurm_multirun(work, *sweep_args(url, 30), "shard.count=3", "shard.index=0,1",
                           "hydra.sweep.dir=a")  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    pricey, pricey_ledger = emulator("--price-factor", "1.5")
    done = slurm_multirun(work, *sweep_args(pricey, 30), "shard.count=3", "shard.index=range(3)",
                          "budget.price_check=on", "budget.price_tolerance=0.1",
                          "hydra.sweep.dir=b")  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    codes = [(work / "b" / str(i) / "exit_code").read_text() for i in range(3)]
    assert codes == ["0\n", "0\n", "2\n"]
    assert all(set(manifest.read(work / "b" / str(i))["status"]) == {"cached"} for i in range(2))
    assert len(ledger(pricey_ledger)) == 1  # the one image that showed the price, nothing after


@pytest.mark.skipif(
    not PRICE_CHECK_READY,
    reason="needs budget.price_check (issue 10) and the emulator's --price-factor on main",
)
def test_concurrent_slurm_shards_billed_above_the_table_stay_within_the_budget(
    work: Path, emulator: Emulator
) -> None:
    """Bills 1.5× the estimates, no price check: each shard stops at its share of the budget."""
    url, ledger_path = emulator("--price-factor", "1.5")
    done = slurm_multirun(work, *sweep_args(url, 30), "shard.count=3", "shard.index=range(3)",
                          "budget.price_check=off", "budget.max_usd=1.80", "runner.concurrency=2",
                          "hydra.sweep.dir=m")  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert 0 < sum(entry["cost"] for entry in ledger(ledger_path)) <= 1.80 + 1e-9
