"""Helpers shared by the benchmarks: child-process measurement and the result table."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    """Print a child's result as the last line of its output."""
    print("RESULT " + json.dumps(result), flush=True)


def child(module: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run `python -m bench.<module> args…` in a fresh process and return its RESULT."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RUNWARE_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"bench.{module} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def machine() -> str:
    """One line describing the machine."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


# -- shared by the runner benchmarks (added for bench.runner / latency / rerun) ----------------


@contextlib.contextmanager
def emulator_process(
    latency_s: float = 0.0, ledger: Path | None = None, *extra: str
) -> Iterator[str]:
    """Run `python -m pipeline.emulator` as a separate process; yield its base URL."""
    cmd = [sys.executable, "-m", "pipeline.emulator", "--port", "0", "--latency", str(latency_s)]
    if ledger is not None:
        cmd += ["--ledger", str(ledger)]
    cmd += list(extra)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            if not url.startswith("http://"):
                proc.wait(timeout=10)
                errors.seek(0)
                raise RuntimeError(f"emulator did not start: {errors.read()[-2000:]}")
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def seed_sweep(
    n: int, *, name: str = "bench", number_results: int = 1, **base: Any
) -> dict[str, Any]:
    """A sweep of `n` Krea 2 Large cells that differ only by seed (0 … n-1); the tests' too."""
    return {
        "name": name,
        "base": {
            "model": "krea:krea@2-large",
            "positivePrompt": "a lighthouse on a cliff at dusk",
            "width": 1024,
            "height": 1024,
            "numberResults": number_results,
            **base,
        },
        "seeds": {"count": n, "start": 0},
    }


def run_config(
    sweep: dict[str, Any],
    *,
    base_url: str,
    store_dir: Path,
    concurrency: int,
    delivery: str = "async",
) -> dict[str, Any]:
    """krea-run's composed config (conf/run.yaml) as plain data, pointed at an emulator."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            composed = compose(config_name="run", overrides=["api=emulator"])
            data = OmegaConf.to_container(composed, resolve=False)
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(data, dict)
    cfg: dict[str, Any] = {str(k): v for k, v in data.items() if k != "hydra"}
    cfg["sweep"] = sweep
    cfg["api"].update(base_url=base_url, delivery=delivery)
    cfg["runner"].update(concurrency=concurrency, progress="none")
    cfg["store"]["dir"] = str(store_dir)
    cfg["budget"]["max_usd"] = 1e9
    cfg["confirm"] = False
    return cfg


@dataclasses.dataclass(frozen=True)
class RealRun:
    """One run of krea-run's job: exit code, wall of the job, wall of `Runner.run`, stdout."""

    code: int
    wall_s: float
    runner_wall_s: float
    output: str


def run_real(cfg: dict[str, Any], run_dir: Path, *, quiet: bool = True) -> RealRun:
    """Run krea-run's job (`pipeline.run.run_job`) in this process and time it.

    `Runner.run` is wrapped (in this process only) to time the Runner alone: no plan, no manifest.
    """
    import io
    import time

    from pipeline.entry import JobContext
    from pipeline.run import run_job
    from pipeline.runner import Runner

    ctx = JobContext(run_dir=run_dir, multirun=False, sweep_dir=run_dir.parent, overrides=[])
    out = io.StringIO()
    redirect = contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext()
    spans: list[float] = []
    original = Runner.run

    def timed(self: Runner, cells: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(self, cells)
        finally:
            spans.append(time.perf_counter() - began)

    Runner.run = timed  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        with redirect:
            code = run_job(cfg, ctx)
        wall = time.perf_counter() - start
    finally:
        Runner.run = original  # type: ignore[method-assign]
    return RealRun(code, wall, sum(spans), out.getvalue())


def ledger_lines(path: Path) -> int:
    """Lines (billed images) in an emulator ledger file; 0 when it does not exist."""
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm_imports() -> None:
    """Import what krea-run's job imports lazily, so no timed figure includes import time."""
    import importlib

    for name in ("pipeline.run", "pipeline.runner", "pandas", "pyarrow.parquet", "PIL.Image"):
        importlib.import_module(name)
