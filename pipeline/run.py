"""krea-run: expand → validate → plan (count, price, budget) → run → manifest."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline import job as jobs
from pipeline import settings
from pipeline.entry import JobContext, console, job_context, report_errors, to_plain
from pipeline.errors import ConfigError
from pipeline.images import write_atomic
from pipeline.resources import CONF_DIR
from pipeline.store import Store
from pipeline.sweep import Sweep, count_cells, expand, load_sweep


def load(cfg: dict[str, Any], ctx: JobContext) -> Sweep:
    """The sweep of this config, with paths resolved against its file's folder."""
    spec = cfg.get("sweep")
    if not isinstance(spec, dict):
        raise ConfigError("no sweep selected: pass sweep=<name> (a file in conf/sweep/)")
    base_dir = ctx.sweep_dir or Path(spec.get("dir") or CONF_DIR / "sweep")
    return load_sweep({k: v for k, v in spec.items() if k != "dir"}, base_dir)


def run_job(cfg: dict[str, Any], ctx: JobContext) -> int:
    """The whole krea-run job on plain data; returns the exit code."""
    shard = settings.shard_of(cfg)
    job = jobs.start(cfg, ctx.run_dir, ctx.run_dir.parent if ctx.multirun else None)
    sweep = load(cfg, ctx)
    # One store (and one set of submit intents) per backend: an emulator image is never served to,
    # and an emulator run never touches the intents of, a run on the real API.
    store = Store(job.store.root / job.api.backend)
    return jobs.run_plan(
        job,
        lambda: expand(sweep),
        sweep=sweep,
        store=store,
        shard=shard,
        cell_count=count_cells(sweep),  # an over-budget sweep is refused before it is expanded
        models=sweep.models,  # ... at the least price of the models it names
    ).code


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")
def main(cfg: DictConfig) -> None:
    """Console script `krea-run`."""
    report_errors("krea-run", lambda: _job(cfg), cfg)


def _job(cfg: DictConfig) -> int:
    """The job of `main`: make the saved config rerunnable, then run."""
    ctx = job_context()
    _make_rerunnable(ctx)
    return run_job(to_plain(cfg), ctx)


def _make_rerunnable(ctx: JobContext) -> None:
    """Turn the run's saved .hydra/config.yaml into a primary config that reruns like this run.

    `krea-run --config-path=<run dir>/.hydra --config-name=config` then composes the typed
    schema, the same logging and run-dir pattern (`outputs/<sweep>/<time>`) and the same
    checks as a normal run, and resolves the sweep's relative reference images and value files
    against the sweep file's folder (`sweep.dir`).
    """
    subdir = HydraConfig.get().output_subdir
    if subdir is None:
        return
    path = ctx.run_dir / str(subdir) / "config.yaml"
    with contextlib.suppress(OSError):
        saved = OmegaConf.load(path)
        if not isinstance(saved, DictConfig) or "defaults" in saved:
            return
        spec = saved.get("sweep")
        if ctx.sweep_dir is not None and isinstance(spec, DictConfig) and spec.get("dir") is None:
            spec.dir = str(ctx.sweep_dir)
        ours = OmegaConf.load(CONF_DIR / "run.yaml").hydra
        keep = ("run", "sweep", "job", "callbacks")
        hydra_node = {str(k): v for k, v in ours.items() if k in keep}
        body = OmegaConf.to_container(saved)
        assert isinstance(body, dict)
        rerun = OmegaConf.create(
            {
                "defaults": ["run_schema", {"override hydra/job_logging": "file"}, "_self_"],
                **body,
                "hydra": {**hydra_node, "searchpath": [f"file://{CONF_DIR}"]},
            }
        )
        write_atomic(path, OmegaConf.to_yaml(rerun).encode("utf-8"))


def cli() -> None:
    """Console script `krea-run`."""
    console(main, "krea-run")


if __name__ == "__main__":
    cli()
