"""Crash safety: kill -9 and Ctrl-C mid-run, then a rerun; faults under load. Never paid twice."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import StartEmulator, cli_env, run_cli
from runs import charges_by_seed, ledger, read_manifest, run_sweep_inprocess, seed_sweep

from pipeline import images
from pipeline.emulator import Emulator

CELLS = 40


@pytest.fixture
def standalone(standalone_emulator: StartEmulator) -> tuple[str, Path]:
    """A standalone emulator process with 0.3 s latency and a ledger: (url, ledger)."""
    return standalone_emulator(0.3)


def _krea_run(tmp_path: Path, url: str, run_dir: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            "sweep=seed_study",
            f"sweep.seeds.count={CELLS}",
            "sweep.seeds.start=0",
            "api=emulator",
            f"api.base_url={url}",
            "runner.concurrency=4",
            "runner.progress=none",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_charges(path: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(ledger(path)) < count:
        assert proc.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)


def _check_final(run_dir: Path, ledger_path: Path) -> None:
    frame = read_manifest(run_dir)
    assert len(frame) == CELLS and frame["cell_id"].is_unique
    assert set(frame["status"]) <= {"ok", "cached"}
    for row in frame.itertuples():
        data = (run_dir / str(row.image_path)).read_bytes()
        assert hashlib.sha256(images.strip_recipe(data)).hexdigest() == row.image_sha256
    charges = charges_by_seed(ledger_path)
    assert max(charges.values()) == 1, "a cell was billed twice"
    assert sum(charges.values()) == CELLS


@pytest.mark.slow
@pytest.mark.parametrize(
    ("charges_before_kill", "rerun_dir"),
    [(1, "run"), (CELLS // 2, "run"), (CELLS - 3, "run"), (CELLS // 2, "rerun")],
    ids=["after-first-charge", "halfway", "near-the-end", "halfway-rerun-elsewhere"],
)
def test_kill_9_then_rerun_pays_each_cell_once(
    tmp_path: Path, standalone: tuple[str, Path], charges_before_kill: int, rerun_dir: str
) -> None:
    url, ledger_path = standalone
    proc = _krea_run(tmp_path, url, "run")
    _wait_for_charges(ledger_path, charges_before_kill, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    rerun = _krea_run(tmp_path, url, rerun_dir)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    _check_final(tmp_path / rerun_dir, ledger_path)


@pytest.mark.slow
def test_ctrl_c_stops_writes_the_manifest_and_a_rerun_finishes(
    tmp_path: Path, standalone: tuple[str, Path]
) -> None:
    url, ledger_path = standalone
    proc = _krea_run(tmp_path, url, "run")
    _wait_for_charges(ledger_path, 8, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    partial = read_manifest(tmp_path / "run")
    assert 0 < len(partial) < CELLS
    rerun = _krea_run(tmp_path, url, "run")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    _check_final(tmp_path / "run", ledger_path)


@pytest.mark.slow
def test_500_cells_under_faults_all_finish_with_one_charge_each(tmp_path: Path) -> None:
    faults = {
        "http_429": 0.10,
        "http_503": 0.05,
        "http_500": 0.03,
        "disconnect": 0.02,
        "stall": 0.01,
    }
    with Emulator(
        0, faults=faults, fault_seed=5, stall_s=4.0, ledger=tmp_path / "ledger.jsonl"
    ) as emu:
        code = run_sweep_inprocess(
            tmp_path,
            seed_sweep(500),
            tmp_path / "run",
            **{
                "api.backend": "emulator",
                "api.base_url": emu.base_url,
                "api.timeout_s": 1.5,
                "runner.concurrency": 16,
                "runner.max_retries": 8,
                "budget.max_usd": 40,
            },
        )
        stats = emu.stats()
    frame = read_manifest(tmp_path / "run")
    assert code == 0, frame["error_code"].value_counts()
    assert len(frame) == 500 and set(frame["status"]) == {"ok"}
    assert charges_by_seed(tmp_path / "ledger.jsonl") == {s: 1 for s in range(500)}
    assert sum(v for k, v in stats.items() if k.startswith("faults.") and k.count(".") == 1) > 50


@pytest.mark.slow
def test_a_killed_reproduction_is_recovered_not_repaid(
    tmp_path: Path, standalone_emulator: StartEmulator
) -> None:
    first = run_cli(
        "run", "sweep=seed_study", "sweep.seeds.count=3", "hydra.run.dir=orig", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    url, ledger_path = standalone_emulator(3.0)
    args = [
        sys.executable,
        "-m",
        "pipeline.reproduce",
        "run_dir=orig",
        'select="seed >= 0"',
        "api=emulator",
        f"api.base_url={url}",
        "runner.progress=none",
    ]
    proc = subprocess.Popen(
        [*args, "hydra.run.dir=rep1"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_charges(ledger_path, 3, proc)  # all three tasks accepted and paid, none finished
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    again = subprocess.run(
        [*args, "hydra.run.dir=rep2"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(charges_by_seed(ledger_path).values()) == {1}
