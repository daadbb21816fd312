"""The store follows the user: the same sweep from another folder is never paid again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from conftest import cli_env, run_cli
from runs import ledger

from pipeline.settings import OLD_STORE, STORE_ENV, store_location

THREE_CELLS = """\
name: three
base:
  model: krea:krea@2-large
  positivePrompt: a lighthouse on a cliff
  width: 1024
  height: 1024
seeds: [1, 2, 3]
"""


def _run_in(folder: Path, sweep: Path, url: str, *extra: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    proc = run_cli(
        "run",
        f"sweep={sweep}",
        "api=emulator",
        f"api.base_url={url}",
        "runner.progress=none",
        *extra,
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_same_sweep_from_two_folders_pays_once(
    isolated: Path, standalone_emulator: Callable[..., tuple[str, Path]]
) -> None:
    url, billed = standalone_emulator()
    sweep = isolated / "three.yaml"
    sweep.write_text(THREE_CELLS)
    first = _run_in(isolated / "one", sweep, url)
    home = Path(os.environ["XDG_DATA_HOME"]) / "krea-sweep" / "store"
    assert f"  store: {home}  (user data dir)" in first
    second = _run_in(isolated / "two" / "deeper", sweep, url)
    assert "cached                  3" in second and "cost     $0.00 billed" in second
    assert len(ledger(billed)) == 3  # one ledger line per image, whatever the folder
    assert not (isolated / "one" / "outputs" / ".store").exists()


def test_an_old_store_in_the_folder_is_used_and_announced(
    isolated: Path, standalone_emulator: Callable[..., tuple[str, Path]]
) -> None:
    url, billed = standalone_emulator()
    sweep = isolated / "three.yaml"
    sweep.write_text(THREE_CELLS)
    work = isolated / "work"
    # A run of an older version: its store is ./outputs/.store.
    _run_in(work, sweep, url, f"store.dir={work / OLD_STORE}")
    again = _run_in(work, sweep, url)
    assert (
        "  store: outputs/.store  (found at the old default; used so nothing paid for is" in again
    )
    assert "cached                  3" in again
    assert len(ledger(billed)) == 3


def test_store_dir_and_the_environment_override_the_default(isolated: Path) -> None:
    env = {STORE_ENV: str(isolated / "from-env")}
    assert store_location({"store": {"dir": "mine"}}, env).root == Path("mine")
    assert store_location({"store": {"dir": None}}, env).root == isolated / "from-env"
    assert store_location({}, env).why == STORE_ENV
    (isolated / OLD_STORE).mkdir(parents=True)
    assert store_location({}, {}).root == OLD_STORE
    assert store_location({}, env).root == isolated / "from-env"  # the variable wins over it


def test_the_environment_variable_reaches_a_run(isolated: Path) -> None:
    proc = run_cli(
        "run", "dry_run=true", cwd=isolated, env=cli_env(**{STORE_ENV: str(isolated / "s")})
    )
    assert proc.returncode == 0, proc.stderr
    assert f"  store: {isolated / 's'}  ({STORE_ENV})" in proc.stdout


def test_no_test_touches_the_real_user_store(isolated: Path) -> None:
    assert store_location({}).root == isolated / "xdg-data" / "krea-sweep" / "store"


def _shape(stdout: str) -> list[str]:
    """The console output's line structure: each line's first word (numbers and paths vary)."""
    return [line.split()[0] if line.split() else "" for line in stdout.splitlines()]


def test_a_rerun_from_the_saved_config_is_like_a_normal_run(isolated: Path) -> None:
    sweep = isolated / "three.yaml"
    sweep.write_text(THREE_CELLS)
    first = run_cli("run", f"sweep={sweep}", "runner.progress=none", cwd=isolated)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (isolated / "outputs" / "three").iterdir()
    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    again = run_cli(
        "run",
        f"--config-path={run_dir / '.hydra'}",
        "--config-name=config",
        "runner.progress=none",
        cwd=elsewhere,
    )
    assert again.returncode == 0, again.stderr
    assert _shape(again.stdout) == _shape(first.stdout)  # no log lines, same summary
    assert "cached                  3" in again.stdout
    (rerun_dir,) = (elsewhere / "outputs" / "three").iterdir()  # the sweep's run-dir pattern
    assert (rerun_dir / "run.log").is_file() and (rerun_dir / "manifest.parquet").is_file()
    assert not again.stderr
    # …and a rerun of the rerun still is one
    third = run_cli(
        "run",
        f"--config-path={rerun_dir / '.hydra'}",
        "--config-name=config",
        "runner.progress=none",
        "+dryrun=1",
        cwd=elsewhere,
    )
    assert third.returncode == 1 and "did you mean 'dry_run'" in third.stderr


def test_a_sweep_file_by_path_resolves_its_files_against_its_own_folder(isolated: Path) -> None:
    from PIL import Image

    study = isolated / "studies"
    (study / "refs").mkdir(parents=True)
    (study / "prompts").mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(study / "refs" / "green.png")
    (study / "prompts" / "subjects.txt").write_text("a fox\na hare\n")
    (study / "mine.yaml").write_text(
        "name: mine\n"
        "base:\n"
        "  model: krea:krea@2-large\n"
        "  positivePrompt: '{subject} in the snow'\n"
        "  width: 1024\n"
        "  height: 1024\n"
        "  inputs: {referenceImages: [{image: refs/green.png, strength: 0.5}]}\n"
        "grid:\n"
        "  vars.subject: {file: prompts/subjects.txt}\n"
        "seeds: [1]\n"
    )
    work = isolated / "elsewhere"
    work.mkdir()
    proc = run_cli("run", "sweep=../studies/mine.yaml", "runner.progress=none", cwd=work)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (work / "outputs" / "mine").iterdir()
    frame = pd.read_parquet(run_dir / "manifest.parquet")
    assert sorted(frame["positivePrompt"]) == ["a fox in the snow", "a hare in the snow"]
    assert list(frame["reference_count"]) == [1, 1] and set(frame["status"]) == {"ok"}
