"""A real package: a built wheel (and an editable install) runs from an empty folder.

Each install goes into a fresh venv (`--system-site-packages` for the dependencies, nothing
downloaded), and every command runs with the repo off `sys.path`, in a folder holding nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

SHIPPED = ["pyproject.toml", "README.md", "pipeline", "conf", "schemas"]


def _source_copy(dest: Path) -> Path:
    """The package's source, copied so a build leaves no build/ or egg-info in the repo."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "outputs", "build")
    for name in SHIPPED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _venv(path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(path)],
        check=True,
        capture_output=True,
    )
    return path / "bin"


def _pip_install(bin_dir: Path, *args: str) -> None:
    """Install into the venv of `bin_dir`, offline and without dependencies."""
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", *args],
        check=True,
        capture_output=True,
    )


def _env(tmp: Path) -> dict[str, str]:
    """No repo on the path, no key, and a store of the test's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUNWARE_API_KEY")}
    env["XDG_DATA_HOME"] = str(tmp / "xdg-data")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    return proc


def _use_from_empty_folder(bin_dir: Path, tmp: Path, installed_in: Path) -> None:
    """The demo, krea-report on it, krea-reproduce of one image, the standalone emulator."""
    env = _env(tmp)
    work = tmp / "empty"
    work.mkdir()
    where = _run(
        [str(bin_dir / "python"), "-c", "import pipeline; print(pipeline.__file__)"], work, env
    )
    assert where.stdout.startswith(str(installed_in)), where.stdout  # not the repo, not /work/main

    helped = _run([str(bin_dir / "krea-run"), "--help"], work, env)  # names a README that exists
    (line,) = [x for x in helped.stdout.splitlines() if x.startswith("Exit codes and more: ")]
    readme = Path(line.removeprefix("Exit codes and more: ").split(" (")[0])
    assert readme.is_file() and "### Exit codes" in readme.read_text(), line

    demo = _run([str(bin_dir / "krea-run"), "runner.progress=none"], work, env)
    assert "done 34" in demo.stdout or "images   34" in demo.stdout, demo.stdout
    (run_dir,) = (work / "outputs" / "demo").iterdir()
    manifest = pd.read_parquet(run_dir / "manifest.parquet")
    assert len(manifest) == 34 and set(manifest.status) == {"ok"}

    report = _run([str(bin_dir / "krea-report"), f"run_dir={run_dir}"], work, env)
    assert (run_dir / "report" / "index.html").is_file(), report.stdout

    image = run_dir / str(manifest.image_path.iloc[0])
    again = _run([str(bin_dir / "krea-reproduce"), f"image={image}"], work, env)
    assert "identical" in again.stdout, again.stdout

    emu = subprocess.Popen(
        [str(bin_dir / "python"), "-m", "pipeline.emulator", "--port", "0"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert emu.stdout is not None
        url = emu.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), emu.stderr.read() if emu.stderr else url
    finally:
        emu.terminate()
        emu.communicate(timeout=10)
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]


def test_built_wheel_runs_from_an_empty_folder(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("krea_sweep-*.whl")
    bin_dir = _venv(tmp_path / "venv")
    _pip_install(bin_dir, str(wheel))
    _use_from_empty_folder(bin_dir, tmp_path, tmp_path / "venv")


def test_editable_install_runs_from_an_empty_folder(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    bin_dir = _venv(tmp_path / "venv")
    _pip_install(bin_dir, "--no-build-isolation", "-e", str(src))
    _use_from_empty_folder(bin_dir, tmp_path, src)
