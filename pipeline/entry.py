"""What the three Hydra entry points share: config location, plain data, error reporting."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError, PipelineError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_FILE_ENV = "KREA_SWEEP_EXIT_FILE"  # where multirun jobs (in any process) leave their codes


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
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        if code:
            sys.exit(code)
    elif code and os.environ.get(EXIT_FILE_ENV):
        with open(os.environ[EXIT_FILE_ENV], "a") as codes:
            codes.write(f"{code}\n")


def console(hydra_main: Callable[[], None]) -> None:
    """A console script: run the Hydra app; after a multirun, exit with its worst job's code."""
    fd, path = tempfile.mkstemp(prefix="krea-sweep-exit-")
    os.close(fd)
    os.environ[EXIT_FILE_ENV] = path  # launchers' worker processes inherit it
    try:
        hydra_main()
        codes = [int(line) for line in Path(path).read_text().split()]
    finally:
        os.unlink(path)
    if codes:
        sys.exit(max(codes))
