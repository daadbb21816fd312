"""One job of krea-run or krea-reproduce, on plain data: settings → plan → gate → run → manifest.

`start` checks the settings both commands share, says which backend the job talks to and reads
the key (a missing key fails before any work); `run_plan` plans the cells (count, price, store
hits, budget), applies the gates (budget, dry run, confirmation) and `execute`s what is left: the
built-in emulator when no server is named, one `Client`, the `Runner`, then the manifest and the
summary. No Hydra here: the command shells (run.py, reproduce.py) convert their config once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import manifest, rundir, settings
from pipeline.plan import Plan, check_budget, format_plan, in_shard, make_plan
from pipeline.pricing import usd
from pipeline.progress import shown
from pipeline.schema import validate_cells
from pipeline.store import Store
from pipeline.sweep import Cell

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.client import Client
    from pipeline.emulator import Emulator
    from pipeline.runner import Outcome, SweepInfo


@dataclass(frozen=True)
class Job:
    """The checked settings of one job and where it writes."""

    api: settings.ApiSettings
    runner: settings.RunnerSettings
    budget: settings.BudgetSettings
    store: settings.StoreLocation
    price_table: dict[str, Any]
    run_dir: Path
    report_dir: Path | None  # where `krea-report` should look (a multirun dir), if not run_dir
    key: str
    dry_run: bool
    confirm: bool


def start(cfg: dict[str, Any], run_dir: Path, report_dir: Path | None = None) -> Job:
    """The job's settings, checked; prints the backend line, then reads the key."""
    api = settings.api_settings(cfg.get("api") or {})
    runner_cfg = settings.runner_settings(cfg.get("runner") or {})
    budget = settings.budget_settings(cfg)
    dry_run = cfg.get("dry_run") is True
    print(backend_line(api, dry_run), flush=True)
    key = "" if dry_run else settings.api_key(api)  # a missing key fails before any work
    return Job(
        api=api,
        runner=runner_cfg,
        budget=budget,
        store=settings.store_location(cfg),
        price_table=cfg.get("pricing") or {},
        run_dir=run_dir,
        report_dir=report_dir,
        key=key,
        dry_run=dry_run,
        confirm=cfg.get("confirm") is not False,
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


@dataclass(frozen=True)
class Ended:
    """How a job ended: its exit code, and whether the gates let the run start."""

    code: int
    ran: bool


def run_plan(
    job: Job,
    cells: Callable[[], Iterable[Cell]],
    *,
    sweep: SweepInfo,
    store: Store,
    shard: tuple[int, int] = (0, 1),
    cell_count: int | None = None,
    models: Collection[str] | None = None,
) -> Ended:
    """Plan `cells` (a fresh iterator per pass), apply the gates, run the shard's cells."""
    plan = make_plan(
        cells,
        price_table=job.price_table,
        axis_names=sweep.axis_names,
        budget_usd=job.budget.max_usd,  # for the whole sweep: each shard gets a share (see Plan)
        store=store,
        shard=shard,
        out_dir=job.run_dir,
        backend=job.api.backend,
        cell_count=cell_count,  # an over-budget sweep is refused before it is expanded
        models=models,  # ... at the least price of the models it names
    )
    stop = gate(plan, job)
    if stop is not None:
        return Ended(stop, ran=False)
    todo = (c for c in validate_cells(cells()) if in_shard(c.cell_id, *shard))
    return Ended(execute(todo, plan, job, sweep=sweep, store=store), ran=True)


def gate(plan: Plan, job: Job) -> int | None:
    """Print the plan and apply its gates (budget, dry run, confirmation); a code means stop."""
    print(format_plan(plan), flush=True)
    print(f"  store: {job.store.root}  ({job.store.why})", flush=True)
    check_budget(plan)
    if job.dry_run:
        print("dry run: stopped after the plan; nothing was sent.", flush=True)
        return 0
    ask = job.api.backend == "runware" and plan.todo_images and job.confirm
    if ask and sys.stdin.isatty() and not _confirmed(plan.estimate_usd, plan.todo_images):
        print("not confirmed: nothing was sent.", flush=True)
        return 1
    return None


def _confirmed(estimate_usd: float, images: int) -> bool:
    answer = input(f"Spend up to {usd(estimate_usd)} on {images:,} images on Runware? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def execute(cells: Iterable[Cell], plan: Plan, job: Job, *, sweep: SweepInfo, store: Store) -> int:
    """Run a gated plan's cells, write the manifest, print the summary; the exit code."""
    from pipeline.runner import Runner  # the run itself; imported here so a dry run stays light

    with ExitStack() as stack:
        base_url = job.api.base_url
        if job.api.backend == "emulator" and base_url is None:
            base_url = stack.enter_context(_emulator(job.api)).base_url
        assert base_url is not None
        client = make_client(job.api, job.key, job.runner, base_url)
        try:
            runner = Runner(
                sweep=sweep,
                client=client,
                store=store,
                run_dir=job.run_dir,
                price_table=job.price_table,
                budget_usd=plan.budget_usd,
                cfg=job.runner,
                backend=job.api.backend,
                total_cells=plan.cells,
                price_check=job.budget.check_price(job.api.backend),
                price_tolerance=job.budget.price_tolerance,
            )
            outcome = runner.run(cells)
        finally:
            client.close()
        frame, left_out = write_manifest(job.run_dir, sweep.axis_names, outcome)
        report_dir = job.report_dir or job.run_dir
        print(summary(outcome, frame, job.run_dir, report_dir, left_out=left_out), flush=True)
        return outcome.exit_code


def _emulator(api: settings.ApiSettings) -> Emulator:
    """The built-in emulator for a job on the emulator with no server named (not yet started)."""
    from pipeline.emulator import Emulator

    return Emulator(
        0,
        latency_s=api.latency_s,
        faults=api.faults,
        ledger=Path(api.ledger) if api.ledger else None,
        fault_seed=api.fault_seed,
        latency_sigma=api.latency_sigma,
        **api.emulator.kwargs(),
    )


def make_client(
    api: settings.ApiSettings, key: str, runner_cfg: settings.RunnerSettings, base_url: str
) -> Client:
    """The one Client of a job, from its api and runner settings."""
    from pipeline.client import Client

    return Client(
        base_url,
        key,
        timeout_s=api.timeout_s,
        connect_timeout_s=api.connect_timeout_s,
        max_retries=runner_cfg.max_retries,
        delivery=api.delivery,
        output_type=api.output_type,
        upload_refs=api.upload_refs,
        batch_polls=api.batch_polls,
        poll_timeout_s=api.poll_timeout_s,
        pool_size=runner_cfg.concurrency + 8,
        first_poll_s=api.first_poll_s,
        settle_s=api.settle_s,
        backoff_base_s=api.backoff_base_s,
        backoff_cap_s=api.backoff_cap_s,
    )


def write_manifest(
    run_dir: Path, axis_names: list[str], outcome: Outcome
) -> tuple[pd.DataFrame, int]:
    """Rebuild the manifest from the journal and write the plan's rows; (rows, rows left out)."""
    whole = manifest.rebuild(run_dir, axis_names)
    # The manifest describes this plan: rows of cells an earlier, different sweep left in this
    # run dir stay in journal.jsonl only. (After Ctrl-C not every cell was seen: keep all.)
    frame = whole
    if not outcome.interrupted:
        frame = whole[whole["cell_id"].isin(outcome.cell_ids)].reset_index(drop=True)
    manifest.write(frame, run_dir)
    return frame, len(whole) - len(frame)


def summary(
    outcome: Outcome,
    frame: Any,
    run_dir: Path,
    report_dir: Path,
    *,
    left_out: int = 0,
) -> str:
    """The end-of-run summary for a person (the README's "What the cost figures count")."""
    failed = frame[frame["status"] == "failed"]
    by_code = failed["error_code"].value_counts().to_dict() if len(failed) else {}
    lines = [
        "",
        f"images   {int((frame['status'] != 'failed').sum()):,} "
        f"({outcome.ok:,} cell{'' if outcome.ok == 1 else 's'} run, {outcome.cached:,} cached, "
        f"{outcome.failed:,} failed)",
    ]
    if by_code:
        lines.append("failures " + ", ".join(f"{code} × {n}" for code, n in by_code.items()))
    # Billed and estimated over the same images: the ones this run dir paid for (status ok).
    paid = frame[frame["status"] == "ok"]
    billed = float(paid["cost_usd"].fillna(0).sum())
    estimated = float(paid["estimated_cost_usd"].fillna(0).sum())
    lines.append(
        f"cost     {usd(billed)} billed vs {usd(estimated)} estimated for the "
        f"{len(paid):,} image(s) paid for here"
    )
    if outcome.maybe_billed_cells:
        lines.append(
            f"unsettled {usd(outcome.maybe_billed_usd)} at estimate: "
            f"{outcome.maybe_billed_cells:,} task(s) accepted or of unknown outcome, no result "
            "yet; a rerun recovers them by taskUUID (not paid again)"
        )
    if outcome.price_note:
        lines.append(outcome.price_note)
    if left_out:
        lines.append(
            f"note     {left_out:,} row(s) of cells not in this plan (an earlier sweep in this run"
            f" dir) are left out of the manifest; {rundir.JOURNAL_NAME} keeps them"
        )
    lines.append(f"wall     {outcome.wall_s:,.1f} s")
    if outcome.interrupted:
        lines.append(
            "stopped  interrupted; rerun the same command to finish (nothing is paid twice)"
        )
    elif outcome.stopped:
        lines.append(f"stopped  {outcome.stopped}; {outcome.not_run:,} cell(s) not run")
    lines.append(
        f"outputs  {shown(run_dir)}  (manifest: {rundir.MANIFEST_PARQUET}, {rundir.IMAGES_DIR}/)"
    )
    lines.append(f"next     krea-report run_dir={shown(report_dir)}")
    return "\n".join(lines)
