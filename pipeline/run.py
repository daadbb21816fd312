"""krea-run: expand → validate → plan (count, price, budget) → run → manifest."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline import settings
from pipeline.entry import CONF_DIR, JobContext, console, job_context, report_errors, to_plain
from pipeline.errors import ConfigError
from pipeline.plan import Plan, check_budget, format_plan, in_shard, make_plan
from pipeline.pricing import usd
from pipeline.schema import validate_cells
from pipeline.store import Store
from pipeline.sweep import Cell, Sweep, count_cells, expand, load_sweep

if TYPE_CHECKING:
    from pipeline.runner import SweepInfo


def load(cfg: dict[str, Any], ctx: JobContext) -> Sweep:
    """The sweep of this config, with paths resolved against its file's folder."""
    spec = cfg.get("sweep")
    if not isinstance(spec, dict):
        raise ConfigError("no sweep selected: pass sweep=<name> (a file in conf/sweep/)")
    base_dir = ctx.sweep_dir or Path(spec.get("dir") or CONF_DIR / "sweep")
    return load_sweep({k: v for k, v in spec.items() if k != "dir"}, base_dir)


def run_job(cfg: dict[str, Any], ctx: JobContext) -> int:
    """The whole krea-run job on plain data; returns the exit code."""
    api = settings.api_settings(cfg.get("api") or {})
    runner_cfg = settings.runner_settings(cfg.get("runner") or {})
    budget = settings.budget_usd(cfg)
    shard = settings.shard_of(cfg)
    dry_run = cfg.get("dry_run") is True
    print(backend_line(api, dry_run), flush=True)
    key = "" if dry_run else settings.api_key(api)  # a missing key fails before any work

    sweep = load(cfg, ctx)
    # One store (and one set of submit intents) per backend: an emulator image is never served to,
    # and an emulator run never touches the intents of, a run on the real API.
    where = settings.store_location(cfg)
    store = Store(where.root / api.backend)
    price_table = cfg.get("pricing") or {}

    def cells() -> Iterable[Cell]:
        return expand(sweep)

    plan = make_plan(
        cells,
        price_table=price_table,
        axis_names=sweep.axis_names,
        budget_usd=budget,  # for the whole sweep: each shard gets a share (see Plan)
        store=store,
        shard=shard,
        out_dir=ctx.run_dir,
        backend=api.backend,
        cell_count=count_cells(sweep),  # an over-budget sweep is refused before it is expanded
        models=sweep.models,  # ... at the least price of the models it names
    )
    stop = gate(plan, api, dry_run=dry_run, confirm=cfg.get("confirm") is not False, store=where)
    if stop is not None:
        return stop
    return execute(
        (c for c in validate_cells(cells()) if in_shard(c.cell_id, *shard)),
        plan,
        sweep=sweep,
        api=api,
        key=key,
        runner_cfg=runner_cfg,
        store=store,
        price_table=price_table,
        run_dir=ctx.run_dir,
        report_dir=ctx.run_dir.parent if ctx.multirun else None,
        budget=settings.budget_settings(cfg),
    )


def gate(
    plan: Plan,
    api: settings.ApiSettings,
    *,
    dry_run: bool,
    confirm: bool,
    store: settings.StoreLocation | None = None,
) -> int | None:
    """Print the plan and apply its gates (budget, dry run, confirmation); a code means stop."""
    print(format_plan(plan), flush=True)
    if store is not None:
        print(f"  store: {store.root}  ({store.why})", flush=True)
    check_budget(plan)
    if dry_run:
        print("dry run: stopped after the plan; nothing was sent.", flush=True)
        return 0
    ask = api.backend == "runware" and plan.todo_images and confirm
    if ask and sys.stdin.isatty() and not _confirmed(plan.estimate_usd, plan.todo_images):
        print("not confirmed: nothing was sent.", flush=True)
        return 1
    return None


def execute(
    cells: Iterable[Cell],
    plan: Plan,
    *,
    sweep: SweepInfo,
    api: settings.ApiSettings,
    key: str,
    runner_cfg: settings.RunnerSettings,
    store: Store,
    price_table: dict[str, Any],
    run_dir: Path,
    report_dir: Path | None = None,
    budget: settings.BudgetSettings | None = None,
) -> int:
    """Run a gated plan's cells on its backend (the built-in emulator if none); the exit code."""
    from pipeline import runner  # the run itself; imported here so a dry run stays light

    with ExitStack() as stack:
        base_url = api.base_url
        if api.backend == "emulator" and base_url is None:
            from pipeline.emulator import Emulator

            emulator = Emulator(
                0,
                latency_s=api.latency_s,
                faults=api.faults,
                ledger=Path(api.ledger) if api.ledger else None,
                fault_seed=api.fault_seed,
                latency_sigma=api.latency_sigma,
                **api.emulator.kwargs(),
            )
            base_url = stack.enter_context(emulator).base_url
        assert base_url is not None
        return runner.run_sweep(
            cells=cells,
            plan=plan,
            sweep=sweep,
            api=api,
            base_url=base_url,
            key=key,
            runner_cfg=runner_cfg,
            store=store,
            price_table=price_table,
            run_dir=run_dir,
            report_dir=report_dir,
            budget=budget,
        )


def backend_line(api: settings.ApiSettings, dry_run: bool) -> str:
    """The first line of output: which backend this run talks to."""
    if api.backend == "runware":
        return f"backend: runware ({api.base_url})" + (
            " — dry run, nothing sent" if dry_run else ""
        )
    if api.base_url:
        return f"backend: emulator ({api.base_url})"
    why = f"no {api.key_env} set; " if api.auto else ""
    state = "dry run, not started" if dry_run else "built-in, offline, nothing is billed"
    return f"backend: emulator ({why}{state})"


def _confirmed(estimate_usd: float, images: int) -> bool:
    answer = input(f"Spend up to {usd(estimate_usd)} on {images:,} images on Runware? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


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
    from pipeline.images import write_atomic

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
