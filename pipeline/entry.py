"""What the three Hydra entry points share: config location, plain data, error reporting."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError, PipelineError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_CODE_FILE = "exit_code"  # in each multirun job's run dir: that job's exit code
_multirun_dirs: list[Path] = []  # sweep dirs of the multiruns this process launched


@dataclass(frozen=True)
class JobContext:
    """What a job needs to know about its Hydra run, as plain data."""

    run_dir: Path
    multirun: bool
    sweep_dir: Path | None
    overrides: list[str]


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain dicts and lists (interpolations resolved)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # OmegaConf raises several unrelated types for a missing value
        raise ConfigError(str(exc).splitlines()[0]) from exc
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


def job_context() -> JobContext:
    """Read the run dir, mode and the chosen sweep file's folder from Hydra."""
    hc = HydraConfig.get()
    sweep_choice = hc.runtime.choices.get("sweep")
    sweep_dir = None
    if sweep_choice:
        for source in hc.runtime.config_sources:
            if source.schema == "file":
                candidate = Path(source.path) / "sweep" / f"{sweep_choice}.yaml"
                if candidate.is_file():
                    sweep_dir = candidate.parent
                    break
    return JobContext(
        run_dir=Path(hc.runtime.output_dir),
        multirun=hc.mode == RunMode.MULTIRUN,
        sweep_dir=sweep_dir,
        overrides=list(hc.overrides.task),
    )


def report_errors(command: str, job: Callable[[], int]) -> None:
    """Run a job; an expected error is one clear message on stderr and exit 1, never a traceback."""
    try:
        code = job()
    except PipelineError as exc:
        if os.environ.get("PIPELINE_FULL_ERROR") == "1":
            raise
        print(f"{command}: error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr, flush=True)
        code = 130
    except BaseException:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            _record_exit_code(1)  # an unexpected error: the traceback goes on, the code is kept
        raise
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        if code:
            sys.exit(code)
    else:
        _record_exit_code(code)


def _record_exit_code(code: int) -> None:
    """Leave a multirun job's code in its own run dir, wherever the job runs (any host)."""
    from pipeline.images import write_atomic

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_atomic(run_dir / EXIT_CODE_FILE, f"{code}\n".encode())


def _job_codes(sweep_dir: Path) -> dict[Path, int]:
    """The codes jobs left under a sweep dir: {job run dir: code} (job dirs do not nest)."""
    codes: dict[Path, int] = {}
    for folder, subdirs, files in os.walk(sweep_dir):
        if EXIT_CODE_FILE in files:
            text = (Path(folder) / EXIT_CODE_FILE).read_text().strip()
            codes[Path(folder)] = int(text) if text.lstrip("-").isdigit() else 1
            subdirs.clear()
    return codes


class MultirunExitCodes(Callback):
    """Hydra callback, run by the launching process: note the sweep dir, drop stale job codes."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job: remember where the jobs go and remove codes an earlier multirun left."""
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        _multirun_dirs.append(sweep_dir)
        for job_dir in _job_codes(sweep_dir):
            (job_dir / EXIT_CODE_FILE).unlink(missing_ok=True)


def console(hydra_main: Callable[[], None], command: str) -> None:
    """A console script: run the Hydra app; after a multirun, exit with its worst job's code."""
    _multirun_dirs.clear()
    hydra_main()
    worst = worst_job_code(command)
    if worst:
        sys.exit(worst)


def worst_job_code(command: str) -> int:
    """The worst code the jobs of this process's multiruns left in their run dirs (0: none ran)."""
    worst = 0
    for sweep_dir in _multirun_dirs:
        codes = _job_codes(sweep_dir)
        if not codes:
            print(
                f"{command}: error: no job of the multirun left its {EXIT_CODE_FILE} in "
                f"{sweep_dir}: its jobs must write there (a hydra.sweep.dir they all share)",
                file=sys.stderr,
                flush=True,
            )
        worst = max(worst, *codes.values(), 0 if codes else 1)
    return worst
