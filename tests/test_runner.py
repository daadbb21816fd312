"""The runner end to end against the emulator: images, manifest, store, budget, stops, reruns."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from conftest import cli_env, compose_config, run_cli
from runs import charges_by_seed, ledger, read_manifest, run_sweep_inprocess, seed_sweep

from pipeline import images, manifest
from pipeline.client import Client
from pipeline.emulator import Emulator
from pipeline.journal import read_journal
from pipeline.runner import Outcome, Runner
from pipeline.settings import RunnerSettings
from pipeline.store import Store, StoredCell
from pipeline.sweep import expand, load_sweep


def _emulator_edits(emu: Emulator) -> dict[str, object]:
    return {"api.backend": "emulator", "api.base_url": emu.base_url}


# A price table that underestimates: the plan passes, the bills (0.06 each) reach the budget.
CHEAP = {
    "pricing.models": {
        "krea:krea@2-large": dict.fromkeys(
            ("per_image", "with_reference_images", "with_moodboards"), 0.01
        )
    }
}


def test_demo_console_script_writes_images_manifest_and_recipes(tmp_path: Path) -> None:
    done = run_cli("run", "runner.progress=log", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("backend: emulator")
    run = tmp_path / "run"
    frame = manifest.read(run)
    axes = read_journal(run).axis_names or []
    assert list(frame.columns) == manifest.column_names(axes)
    assert set(frame["status"]) == {"ok"} and frame["cell_id"].is_unique
    assert (frame["backend"] == "emulator").all()
    for row in frame.itertuples():
        data = (run / str(row.image_path)).read_bytes()
        assert str(row.image_path).startswith(f"images/{row.cell_id}-0.")
        assert hashlib.sha256(images.strip_recipe(data)).hexdigest() == row.image_sha256
        recipe = images.read_recipe(data)
        assert recipe is not None and recipe["cell_id"] == row.cell_id
        assert recipe["request"]["seed"] == row.seed
    assert (run / "manifest.csv").exists() and (run / "plan.parquet").exists()
    assert "krea-report run_dir=" in done.stdout


def test_api_key_never_lands_in_a_file(tmp_path: Path) -> None:
    secret = "sk-test-DO-NOT-WRITE-4242"
    with Emulator(0, api_key=secret) as emu:
        done = run_cli(
            "run",
            "api=emulator",
            f"api.base_url={emu.base_url}",
            "hydra.run.dir=run",
            cwd=tmp_path,
            env=cli_env(RUNWARE_API_KEY=secret),
        )
    assert done.returncode == 0, done.stderr
    hits = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert hits == []
    assert secret not in done.stdout + done.stderr


def test_rerun_of_a_finished_sweep_makes_zero_requests(tmp_path: Path) -> None:
    with Emulator(0, ledger=tmp_path / "ledger.jsonl") as emu:
        sweep = seed_sweep(12)
        assert run_sweep_inprocess(tmp_path, sweep, tmp_path / "a", **_emulator_edits(emu)) == 0
        posts = emu.stats()["posts"]
        assert run_sweep_inprocess(tmp_path, sweep, tmp_path / "b", **_emulator_edits(emu)) == 0
        assert emu.stats()["posts"] == posts
    assert charges_by_seed(tmp_path / "ledger.jsonl") == {s: 1 for s in range(12)}
    second = read_manifest(tmp_path / "b")
    assert set(second["status"]) == {"cached"} and second["cost_usd"].sum() == 0
    assert second["original_cost_usd"].sum() == pytest.approx(12 * 0.06)
    first = read_manifest(tmp_path / "a")
    assert sorted(second["image_sha256"]) == sorted(first["image_sha256"])


def test_emulator_images_are_not_cached_for_the_real_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNWARE_API_KEY", "k")
    with Emulator(0) as emu:
        run_sweep_inprocess(tmp_path, seed_sweep(3), tmp_path / "a", **_emulator_edits(emu))
        code = run_sweep_inprocess(
            tmp_path,
            seed_sweep(3),
            tmp_path / "b",
            **{"api.backend": "runware", "api.base_url": emu.base_url},
        )
    assert code == 0
    assert set(read_manifest(tmp_path / "b")["status"]) == {"ok"}


def test_budget_is_enforced_while_running(tmp_path: Path) -> None:
    """The table says $0.01, the server bills $0.06: no submit once billed + $0.01 > $0.30."""
    with Emulator(0, ledger=tmp_path / "ledger.jsonl") as emu:
        code = run_sweep_inprocess(
            tmp_path,
            seed_sweep(20),
            tmp_path / "run",
            **_emulator_edits(emu),
            **{"budget.max_usd": 0.30, "runner.concurrency": 1, **CHEAP},
        )
    assert code == 2
    billed = sum(e["cost"] for e in ledger(tmp_path / "ledger.jsonl"))
    assert billed <= 0.30 + 1e-9
    assert len(read_manifest(tmp_path / "run")) == 5


def test_bad_key_stops_the_run_at_once(tmp_path: Path) -> None:
    with Emulator(0, api_key="the-right-key") as emu:
        code = run_sweep_inprocess(
            tmp_path,
            seed_sweep(40),
            tmp_path / "run",
            **_emulator_edits(emu),
            **{"runner.concurrency": 2},
        )
        assert emu.stats()["posts"] <= 4
    frame = read_manifest(tmp_path / "run")
    assert code == 2
    assert set(frame["error_code"]) == {"invalidApiKey"} and len(frame) <= 4


def test_no_credits_stops_the_run_and_keeps_what_finished(tmp_path: Path) -> None:
    with Emulator(0, credits=0.2) as emu:
        code = run_sweep_inprocess(
            tmp_path,
            seed_sweep(10),
            tmp_path / "run",
            **_emulator_edits(emu),
            **{"runner.concurrency": 1},
        )
    frame = read_manifest(tmp_path / "run")
    assert code == 2
    assert (frame["status"] == "ok").sum() == 3
    assert set(frame.loc[frame["status"] == "failed", "error_code"]) == {"insufficientCredits"}


def test_a_failed_cell_is_a_row_not_a_crash(tmp_path: Path) -> None:
    with Emulator(0, faults={"http_500": 1.0}, fault_seed=1) as emu:
        code = run_sweep_inprocess(
            tmp_path,
            seed_sweep(3),
            tmp_path / "run",
            **_emulator_edits(emu),
            **{"runner.max_retries": 1, "api.backoff_base_s": 0.01, "api.backoff_cap_s": 0.05},
        )
    frame = read_manifest(tmp_path / "run")
    assert code == 1
    assert list(frame["status"]) == ["failed"] * 3
    assert frame["error_code"].notna().all() and (frame["attempts"] >= 1).all()
    assert frame["task_uuid"].notna().all()  # kept, so a rerun asks for it before paying again


def test_rerun_in_the_same_run_dir_finishes_only_what_is_missing(tmp_path: Path) -> None:
    with Emulator(0, ledger=tmp_path / "ledger.jsonl") as emu:
        sweep = seed_sweep(8)
        first = run_sweep_inprocess(
            tmp_path,
            sweep,
            tmp_path / "run",
            **_emulator_edits(emu),
            **{"budget.max_usd": 0.25, "runner.concurrency": 1, **CHEAP},
        )
        assert first == 2  # bills of $0.06 against $0.01 estimates: reservations scale up
        assert len(read_manifest(tmp_path / "run")) == 4
        again = run_sweep_inprocess(tmp_path, sweep, tmp_path / "run", **_emulator_edits(emu))
    assert again == 0
    frame = read_manifest(tmp_path / "run")
    assert len(frame) == 8 and frame["cell_id"].is_unique and set(frame["status"]) == {"ok"}
    assert charges_by_seed(tmp_path / "ledger.jsonl") == {s: 1 for s in range(8)}


def test_number_results_gives_one_row_per_image(tmp_path: Path) -> None:
    with Emulator(0) as emu:
        code = run_sweep_inprocess(
            tmp_path, seed_sweep(2, number_results=3), tmp_path / "run", **_emulator_edits(emu)
        )
    frame = read_manifest(tmp_path / "run")
    assert code == 0
    assert sorted(frame["result_index"]) == [0, 0, 1, 1, 2, 2]
    assert frame["image_uuid"].is_unique and frame["image_path"].is_unique


def test_real_api_cells_are_stored_apart_from_emulator_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offline try-out first, then three real-API runs: each real cell is paid once."""
    sweep = seed_sweep(3)
    assert (
        run_sweep_inprocess(tmp_path, sweep, tmp_path / "emu", **{"api.backend": "emulator"}) == 0
    )
    monkeypatch.setenv("RUNWARE_API_KEY", "sk-test")
    with Emulator(0, ledger=tmp_path / "runware.jsonl") as real:
        edits = {"api.backend": "runware", "api.base_url": real.base_url, "confirm": False}
        for name in ("r1", "r2", "r3"):
            assert run_sweep_inprocess(tmp_path, sweep, tmp_path / name, **edits) == 0
    assert charges_by_seed(tmp_path / "runware.jsonl") == {0: 1, 1: 1, 2: 1}
    assert set(read_manifest(tmp_path / "r3")["status"]) == {"cached"}


def test_a_key_revoked_while_polling_keeps_the_tasks_for_the_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks accepted (and billed) before a 401 on a poll are recovered, not paid again."""
    with Emulator(0, latency_s=1.0, api_key="key-1", ledger=tmp_path / "l.jsonl") as emu:

        def rotate() -> None:
            while len(ledger(tmp_path / "l.jsonl")) < 3:
                time.sleep(0.02)
            emu.api_key = "key-2"  # the key is rotated in the dashboard mid-run

        threading.Thread(target=rotate, daemon=True).start()
        monkeypatch.setenv("RUNWARE_API_KEY", "key-1")
        edits = {"api.backend": "runware", "api.base_url": emu.base_url, "confirm": False}
        assert run_sweep_inprocess(tmp_path, seed_sweep(3), tmp_path / "r1", **edits) == 2
        monkeypatch.setenv("RUNWARE_API_KEY", "key-2")
        assert run_sweep_inprocess(tmp_path, seed_sweep(3), tmp_path / "r2", **edits) == 0
    assert charges_by_seed(tmp_path / "l.jsonl") == {0: 1, 1: 1, 2: 1}
    recovered = read_manifest(tmp_path / "r2")
    assert recovered["request_json"].str.contains('"positivePrompt"').all()  # not a stub request


class _RacingStore(Store):
    """A store another process damages (or removes a cell from) right after each first `get`."""

    def __init__(self, root: Path, how: str) -> None:
        super().__init__(root)
        self.how = how
        self.raced: set[str] = set()
        self.seen: set[str] = set()

    def get(self, cell_id: str, *, backend: str | None = None) -> StoredCell | None:
        stored = super().get(cell_id, backend=backend)
        if self.how == "late" and cell_id not in self.seen:  # as if another run stored it
            self.seen.add(cell_id)  # after the runner's first look, i.e. in the worker
            return None
        if stored is not None and cell_id not in self.raced:
            self.raced.add(cell_id)
            if self.how == "damaged":
                stored.images[0].unlink()
            else:
                self.remove(cell_id)
        return stored


def _runner_run(emu: Emulator, store: Store, run_dir: Path, tmp_path: Path) -> Outcome:
    sweep = load_sweep(seed_sweep(4, name="race"), tmp_path)
    with Client(emu.base_url, "k", first_poll_s=0.05, settle_s=0.2) as client:
        runner = Runner(
            sweep=sweep,
            client=client,
            store=store,
            run_dir=run_dir,
            price_table=compose_config("run")["pricing"],
            budget_usd=5.0,
            cfg=RunnerSettings(
                concurrency=2, max_retries=2, progress="none", log_every=1, stop_grace_s=1.0
            ),
            backend="emulator",
            total_cells=4,
        )
        return runner.run(expand(sweep))


@pytest.mark.parametrize("how", ["damaged", "removed", "late"])
def test_a_stored_cell_that_breaks_before_linking_is_recovered(tmp_path: Path, how: str) -> None:
    """harden-helper: a cell damaged/removed between store.get and link_images was a KeyError."""
    with Emulator(latency_s=0.02) as emu:
        first = _runner_run(emu, Store(tmp_path / "store"), tmp_path / "r1", tmp_path)
        assert first.ok == 4 and len(emu.ledger_entries()) == 4
        racing = _RacingStore(tmp_path / "store", how)
        second = _runner_run(emu, racing, tmp_path / "r2", tmp_path)
        charges = len(emu.ledger_entries())
    assert len(racing.raced) == 4 and second.failed == 0 and second.ok == 4
    assert charges == 4  # recovered by the stored task's taskUUID, not paid again
    assert len(list((tmp_path / "r2" / "images").iterdir())) == 4


def test_the_summary_says_one_cell_not_one_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Walkthrough: the summary said "1 cells run"."""
    with Emulator() as emu:
        code = run_sweep_inprocess(
            tmp_path, seed_sweep(1), tmp_path / "one", **_emulator_edits(emu)
        )
    assert code == 0
    assert "(1 cell run, 0 cached, 0 failed)" in capsys.readouterr().out
