"""Run a plan: bounded concurrency, the budget while running, crash-safe results, Ctrl-C.

Threads: the main thread walks the cells in plan order, answers cached cells from the store, checks
the budget and hands each remaining cell to a pool of daemon worker threads (at most
`runner.concurrency` in flight). A worker journals the taskUUID (fsync'd) *before* the submit, so a
run killed at any moment leaves enough to recover the task by its taskUUID instead of paying again.
Results are journaled as they finish; `pipeline.job` rebuilds the manifest from the journal at
the end (it can be after a crash too). A failed cell is a row, never an exception that unwinds the
run; only a bad key or missing credits stop it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline import images, manifest, pricing
from pipeline.client import Client, Generation
from pipeline.errors import ApiError, AuthError, CreditsError, RequestRejected, SafetyError
from pipeline.journal import Journal, read_journal
from pipeline.pricing import usd
from pipeline.progress import Progress
from pipeline.rundir import IMAGES_DIR
from pipeline.settings import RunnerSettings
from pipeline.store import Store, StoredCell
from pipeline.sweep import Cell

log = logging.getLogger(__name__)


class SweepInfo(Protocol):
    """What the runner reads of a sweep (a `pipeline.sweep.Sweep`, or krea-reproduce's source)."""

    @property
    def name(self) -> str:
        """The sweep's name (journal header, image recipes)."""
        ...

    @property
    def axis_names(self) -> list[str]:
        """The swept axis columns of the manifest."""
        ...


@dataclass
class Outcome:
    """How a run ended."""

    ok: int = 0
    failed: int = 0
    cached: int = 0
    images: int = 0
    billed_usd: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    stopped: str = ""  # why submitting stopped early ("" when every cell was tried)
    interrupted: bool = False
    not_run: int = 0
    wall_s: float = 0.0
    maybe_billed_usd: float = 0.0  # failed cells whose task may have been billed, at estimate
    maybe_billed_cells: int = 0
    price_note: str = ""  # what the price check saw
    cell_ids: set[str] = field(default_factory=set)  # the cells of this plan that were seen

    @property
    def exit_code(self) -> int:
        """0 only when every cell is ok or cached; see the README's exit codes."""
        if self.interrupted:
            return 130
        if self.stopped:
            return 2
        return 1 if self.failed else 0


class Runner:
    """One run of one plan against one backend."""

    def __init__(
        self,
        *,
        sweep: SweepInfo,
        client: Client,
        store: Store,
        run_dir: Path,
        price_table: dict[str, Any],
        budget_usd: float,
        cfg: RunnerSettings,
        backend: str,
        total_cells: int,
        price_check: bool = False,
        price_tolerance: float = 0.1,
    ) -> None:
        self.sweep = sweep
        self.client = client
        self.store = store
        self.run_dir = run_dir
        self.images_dir = run_dir / IMAGES_DIR
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.price_table = price_table
        self.budget = budget_usd
        self.cfg = cfg
        self.backend = backend
        state = read_journal(run_dir)
        failed_here = {row["cell_id"] for row in state.rows.values() if row["status"] == "failed"}
        self.done_here = {
            row["cell_id"]: row["status"]
            for row in state.rows.values()
            if row["cell_id"] not in failed_here
        }
        self.pending = dict(state.pending)
        self.journal = Journal(
            run_dir,
            header={"axis_names": sweep.axis_names, "sweep": sweep.name, "backend": backend},
        )
        self.progress = Progress(
            total_cells, budget_usd, mode=cfg.progress, log_every=cfg.log_every
        )
        self.outcome = Outcome()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._in_flight_usd = 0.0
        self._billed_vs_estimate = [0.0, 0.0]  # billed and estimated USD of finished cells
        self._maybe_billed_usd = 0.0  # failed tasks that may have been billed, at their estimate
        # The price check before fan-out: "pending" (no priced image yet), "probing" (one cell
        # runs alone), "done". Off: "done" from the start.
        self._price = "pending" if price_check else "done"
        self.price_tolerance = price_tolerance
        self._stop_reason = ""
        self._queue: queue.Queue[tuple[Cell, float] | None] = queue.Queue()
        self._workers = [
            threading.Thread(target=self._work, name=f"krea-worker-{i}", daemon=True)
            for i in range(cfg.concurrency)
        ]

    # -- the submit loop (main thread) --------------------------------------------------------

    def run(self, cells: Iterable[Cell]) -> Outcome:
        """Run every cell; returns how the run ended (never raises for a failed cell)."""
        started = time.monotonic()
        for worker in self._workers:
            worker.start()
        remaining = 0
        try:
            iterator = iter(cells)
            for cell in iterator:
                if not self._dispatch(cell):  # submitting stopped: this cell and the rest not run
                    remaining = 1
                    for rest in iterator:
                        remaining += 1
                        self.outcome.cell_ids.add(rest.cell_id)
                    break
            self._drain(timeout=None)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            self._stop("interrupted (Ctrl-C)")
            print("\nstopping: no new submits; waiting for tasks in flight …", flush=True)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
                self._drain(timeout=self.cfg.stop_grace_s)
        finally:
            for _ in self._workers:
                self._queue.put(None)
            self.progress.close()
            with self._lock:
                left = self._in_flight
            if left:
                self.journal.stop(
                    f"{left} task(s) in flight at exit; recovered by taskUUID on rerun"
                )
            elif self._stop_reason:
                self.journal.stop(self._stop_reason)
            self.journal.close()
        self.outcome.stopped = self._stop_reason if not self.outcome.interrupted else ""
        self.outcome.not_run = remaining
        self.outcome.wall_s = time.monotonic() - started
        return self.outcome

    def _dispatch(self, cell: Cell) -> bool:
        """Answer a cell from this run dir or the store, or hand it to a worker; False: stopped."""
        self.outcome.cell_ids.add(cell.cell_id)
        if cell.cell_id in self.done_here:
            self._count(self.done_here[cell.cell_id], 0, 0.0)
            return True
        stored = self.store.get(cell.cell_id, backend=self.backend)
        if stored is not None and self._from_store(cell, stored):
            return True
        with self._idle:
            # What the cell may cost: its estimate, scaled up if bills have run above estimates.
            billed, estimated = self._billed_vs_estimate
            scale = max(1.0, billed / estimated) if estimated else 1.0
            estimate = pricing.estimate(cell.request, self.price_table) * scale
            while True:
                if self._stop_reason:
                    return False
                if self._price == "probing":  # the price check: the first cell runs alone
                    self._idle.wait(0.5)
                    continue
                spent = self.outcome.billed_usd + self._maybe_billed_usd
                over = spent + self._in_flight_usd + estimate > self.budget + 1e-9
                if over and self._in_flight == 0:
                    self._stop(
                        f"budget reached: {usd(self.outcome.billed_usd)} billed, the next cell "
                        f"would pass budget.max_usd={usd(self.budget)}"
                    )
                    return False
                if not over and self._in_flight < self.cfg.concurrency:
                    break
                self._idle.wait(0.5)
            if self._price == "pending":
                self._price = "probing"
            self._in_flight += 1
            self._in_flight_usd += estimate
        self._queue.put((cell, estimate))
        return True

    def _drain(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    return
                self._idle.wait(wait)

    def _stop(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason = reason

    # -- workers ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            cell, reserved = item
            estimate = pricing.estimate(cell.request, self.price_table)
            try:
                self._run_cell(cell, estimate)
            except Exception as exc:  # e.g. a full disk, or the journal closed after Ctrl-C
                log.exception("cell %s: its result could not be recorded", cell.cell_id)
                self._unrecorded(cell, estimate, exc)
            finally:
                with self._idle:
                    if self._price == "probing":  # no priced image from the probe: next cell
                        self._price = "pending"
                    self._in_flight -= 1
                    self._in_flight_usd -= reserved
                    self._idle.notify_all()

    def _run_cell(self, cell: Cell, estimate: float) -> None:
        number = int(cell.request.get("numberResults", 1))
        # A taskUUID submitted before (this run dir's journal, or any run's intent in the store)
        # may have been paid for: it is asked for by that taskUUID before anything is submitted.
        task_uuid = self.pending.get(cell.cell_id) or self.store.intent(cell.cell_id)
        fresh = False
        generation: Generation | None = None
        try:
            if task_uuid is None:
                claimed = str(uuid.uuid4())
                fresh = self.store.claim_intent(cell.cell_id, claimed)
                # Lost the claim: another run is on this cell right now; follow its task.
                task_uuid = claimed if fresh else self.store.intent(cell.cell_id) or claimed
            stored = self.store.get(cell.cell_id, backend=self.backend)
            if stored is not None:  # finished by another run since this one looked
                if self._from_store(cell, stored):
                    return
                old = _stored_task(stored.record)
                if fresh and old:  # nothing sent yet: ask for the stored copy's task first
                    self.store.record_intent(cell.cell_id, old)
                    task_uuid, fresh = old, False
            if not fresh:
                generation, task_uuid = self._recover(cell, task_uuid, number)
            if generation is None:
                self.journal.submit(cell.cell_id, task_uuid)
                generation = self.client.generate(cell.request, task_uuid)
        except ApiError as exc:
            if isinstance(exc, AuthError | CreditsError):
                self._stop(f"{type(exc).__name__}: {exc}")
            if exc.code == "taskGone":  # the server holds that taskUUID but has no result
                self.store.record_intent(cell.cell_id, str(uuid.uuid4()))
            self._record_failure(cell, estimate, exc, task_uuid)  # the intent stays: a rerun asks
            return
        except Exception as exc:  # an unexpected bug in one cell must not lose the others
            self._record_failure(cell, estimate, exc, task_uuid)
            return
        self._record_success(cell, estimate, generation, recovered=not fresh)

    def _recover(self, cell: Cell, task_uuid: str, number: int) -> tuple[Generation | None, str]:
        """An earlier task's result, or (None, the taskUUID under which to submit)."""
        try:
            generation = self.client.recover(task_uuid, number)
        except (RequestRejected, SafetyError) as exc:
            # The server settled that task as failed (no image): the cell starts a new task.
            log.info("cell %s: task %s had failed (%s); new task", cell.cell_id, task_uuid, exc)
            task_uuid = str(uuid.uuid4())
            self.store.record_intent(cell.cell_id, task_uuid)
            return None, task_uuid
        if generation is not None:  # a recovered task carries no request: restore the cell's
            request = {**cell.request, "taskType": "imageInference", "taskUUID": task_uuid}
            generation = dataclasses.replace(generation, request=request)
        return generation, task_uuid

    def _record_success(
        self, cell: Cell, estimate: float, gen: Generation, *, recovered: bool = False
    ) -> None:
        base = manifest.cell_row(cell, estimated_cost_usd=estimate, backend=self.backend)
        paths: list[str] = []
        files: list[tuple[bytes | Path, str]] = []  # the store hard-links the run dir's files
        for index, image in enumerate(gen.images):
            seed = image.seed if image.seed is not None else cell.seed
            recipe = images.make_recipe(
                cell.cell_id,
                gen.request,
                seed,
                index,
                sweep=self.sweep.name,
                cell_request=cell.request,  # as planned: local reference files by path
            )
            data = images.embed_recipe(image.data, image.ext, recipe)
            path = images.image_relpath(cell.cell_id, index, image.ext)
            images.write_atomic(self.run_dir / path, data)
            paths.append(path)
            files.append((self.run_dir / path, image.ext))
        rows = manifest.generation_rows(base, gen, paths)
        ok = [row for row in rows if row["status"] == "ok"]
        whole = len(ok) == len(rows)
        if whole and not self.store.put(cell.cell_id, manifest.store_record(ok), files):
            stored = self.store.get(cell.cell_id, backend=self.backend)
            theirs = {
                img.get("task_uuid") for img in (stored.record if stored else {}).get("images", [])
            }
            if stored is not None and theirs == {gen.task_uuid}:
                # Another run stored this same task first (a concurrent run followed its intent,
                # or the reverse): it is that run's bill; here it is a cached cell.
                self.store.clear_intent(cell.cell_id)
                self._from_store(cell, stored)
                self._price_seen(0.0, 0.0)
                return
        if whole or recovered:
            # Settled. A partial result straight from a submit keeps its intent: a rerun asks for
            # the same task again (free; e.g. a failed download) before paying for a new one.
            self.store.clear_intent(cell.cell_id)
        self.journal.results(rows)
        per_image = estimate / max(int(cell.request.get("numberResults", 1)), 1)
        # Toward the budget, an image the API did not price counts at its estimate, never as free.
        billed = sum(per_image if row["cost_usd"] is None else float(row["cost_usd"]) for row in ok)
        priced = [float(row["cost_usd"]) for row in ok if row["cost_usd"] is not None]
        with self._lock:
            self._billed_vs_estimate[0] += billed
            self._billed_vs_estimate[1] += per_image * len(ok)
            if len(ok) < len(rows) and gen.task_uuid:  # the missing images may be billed too
                self._maybe_billed_usd += per_image * (len(rows) - len(ok))
        if ok and not priced:
            self._price_unknown()
        self._price_seen(sum(priced), per_image * len(priced))
        self._count("ok" if len(ok) == len(rows) else "failed", len(ok), billed)
        if len(ok) != len(rows):
            with self._lock:
                self.outcome.failures[str(rows[-1]["error_code"])] += 1

    def _price_unknown(self) -> None:
        """The probe's images carry no cost: the check cannot be made; fan out on estimates."""
        with self._idle:
            if self._price == "probing":
                self.outcome.price_note = (
                    "price check: the API reported no cost; the budget counts estimates"
                )
                self._price = "done"
                self._idle.notify_all()

    def _price_seen(self, billed: float, estimated: float) -> None:
        """The price check: compare the probe's billed cost with its estimate; stop or fan out."""
        with self._idle:
            if self._price != "probing" or estimated <= 0:
                return
            ratio = billed / estimated
            over = ratio - 1.0
            self.outcome.price_note = (
                f"price check: the first image billed {usd(billed)} vs {usd(estimated)} "
                f"estimated ({over:+.0%})"
            )
            if over > self.price_tolerance + 1e-9:
                accept = math.ceil(over * 100 + 1) / 100
                self._stop(
                    f"{self.outcome.price_note}, beyond budget.price_tolerance="
                    f"{self.price_tolerance:g}; nothing else was submitted. Update the price "
                    f"table in conf/pricing/ (or pricing.models…), or accept the drift with "
                    f"budget.price_tolerance={accept:g}"
                )
            self._price = "done"
            self._idle.notify_all()

    def _record_failure(
        self, cell: Cell, estimate: float, exc: Exception, task_uuid: str | None
    ) -> None:
        if task_uuid and getattr(exc, "maybe_billed", not isinstance(exc, ApiError)) is not False:
            # Accepted or of unknown outcome: it counts at its estimate (at the observed price)
            # toward spending, until a rerun recovers it and learns its cost.
            with self._lock:
                billed, estimated = self._billed_vs_estimate
                scale = max(1.0, billed / estimated) if estimated else 1.0
                self._maybe_billed_usd += estimate * scale
                self.outcome.maybe_billed_usd += estimate * scale
                self.outcome.maybe_billed_cells += 1
        base = manifest.cell_row(cell, estimated_cost_usd=estimate, backend=self.backend)
        attempts = int(getattr(exc, "attempts", 0) or (1 if task_uuid else 0))
        row = manifest.failed_row(base, exc, task_uuid=task_uuid, attempts=attempts)
        self.journal.results([row])
        self._count("failed", 0, 0.0)
        with self._lock:
            self.outcome.failures[str(row["error_code"])] += 1

    def _unrecorded(self, cell: Cell, estimate: float, exc: Exception) -> None:
        """A cell whose outcome could not be written: counted as failed, never as done."""
        with self._lock:
            self.outcome.failures["unrecorded"] += 1
        self._count("failed", 0, 0.0)
        base = manifest.cell_row(cell, estimated_cost_usd=estimate, backend=self.backend)
        row = manifest.failed_row(base, exc, error_code="unrecorded")
        with contextlib.suppress(Exception):  # the intent and the store still hold what was paid
            self.journal.results([row])

    def _from_store(self, cell: Cell, stored: StoredCell) -> bool:
        """Answer a cell from the store; False if its stored copy broke or went away: run it.

        Another process may damage or remove the cell between `get` and the linking (the store
        sets a damaged cell aside); either way the record's taskUUID is kept as an intent, so
        running the cell recovers that task by taskUUID before anything is paid again.
        """
        record = stored.record
        paths = [
            images.image_relpath(cell.cell_id, img["result_index"], img["ext"])
            for img in record["images"]
        ]
        try:
            self.store.link_images(cell.cell_id, self.images_dir, [Path(p).name for p in paths])
        except (KeyError, ValueError, OSError) as exc:
            if self.store.get(cell.cell_id, backend=self.backend) is not None:
                # The stored copy is whole: the failure is on this side (e.g. a full disk).
                # Never paid again for that: failed here, served from the store on a rerun.
                log.warning("cell %s: cannot link its stored images: %s", cell.cell_id, exc)
                self._unrecorded(cell, 0.0, exc)
                return True
            task = _stored_task(record)
            if task and self.store.intent(cell.cell_id) is None:
                with contextlib.suppress(OSError):  # its task is asked for before paying again
                    self.store.claim_intent(cell.cell_id, task)
            log.warning("cell %s: its stored copy went away (%s); run again", cell.cell_id, exc)
            return False
        base = manifest.cell_row(cell, estimated_cost_usd=0.0, backend=self.backend)
        rows = manifest.cached_rows(base, record, paths)
        self.journal.results(rows, sync=False)  # re-derivable from the store: no fsync per cell
        self._count("cached", len(rows), 0.0)
        return True

    # -- bookkeeping --------------------------------------------------------------------------

    def _count(self, status: str, n_images: int, billed: float) -> None:
        with self._lock:
            setattr(self.outcome, status, getattr(self.outcome, status) + 1)
            self.outcome.images += n_images
            self.outcome.billed_usd += billed
        self.progress.add(status, n_images, billed)


def _stored_task(record: dict[str, Any]) -> str | None:
    """The taskUUID a stored cell's images came from, if its record names one."""
    for img in record.get("images") or []:
        task = img.get("task_uuid") if isinstance(img, dict) else None
        if isinstance(task, str) and task:
            return task
    return None
