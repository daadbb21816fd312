"""Shared fixtures: an isolated cwd and environment, Hydra compose, and the console scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import pipeline.config  # noqa: F401  (puts the typed schemas and help pages in Hydra's ConfigStore)

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own empty folder, with no Runware key in the environment.

    The user data dir (the store's default home) points into the test's folder too, so no test
    ever reads or writes the real user's store.
    """
    monkeypatch.delenv("RUNWARE_API_KEY", raising=False)
    monkeypatch.delenv("KREA_SWEEP_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def compose_config(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose conf/<name>.yaml with overrides, as plain data (Hydra's compose API)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides or [])
            data = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a console-script subprocess: no key, the repo importable."""
    env = {k: v for k, v in os.environ.items() if k != "RUNWARE_API_KEY"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(
    module: str, *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline.<module> args…` in `cwd` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def emulator() -> Iterator[Any]:
    """A fresh in-process emulator on loopback."""
    from pipeline.emulator import Emulator

    with Emulator(0) as emu:
        yield emu


class StartEmulator(Protocol):
    """The `standalone_emulator` fixture: start one emulator process → (base URL, ledger)."""

    def __call__(self, latency_s: float = 0.0) -> tuple[str, Path]: ...


class EmulatorProcesses:
    """Standalone emulators (`python -m pipeline.emulator`), each with a ledger in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *flags: str) -> tuple[str, Path]:
        """One more emulator on a free loopback port, with `flags` → (base URL, ledger)."""
        ledger = self.folder / f"ledger-{len(self.procs)}.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.emulator", "--port", "0", "--ledger", str(ledger),
             *flags],
            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        return url, ledger

    def stop(self) -> None:
        """Stop every emulator started."""
        for proc in self.procs:
            proc.terminate()
            proc.communicate(timeout=10)


@pytest.fixture
def standalone_emulator(tmp_path: Path) -> Iterator[StartEmulator]:
    """Start `python -m pipeline.emulator` processes: `start(latency_s)` → (base URL, ledger)."""
    emulators = EmulatorProcesses(tmp_path)

    def start(latency_s: float = 0.0) -> tuple[str, Path]:
        return emulators.start("--latency", str(latency_s))

    yield start
    emulators.stop()
