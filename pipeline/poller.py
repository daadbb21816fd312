"""The shared poll scheduler of a Client: every in-flight task's next getResponse, one thread.

One scheduler thread keeps a heap of next-poll times over every in-flight task; polls run on a
small worker pool, one getResponse per POST, or up to 50 per POST with ``batch_polls``. The
poller reaches its client only through `Sender` (send a batch of getResponse, ask getTaskDetails,
the retry backoff, a counter) and reads time only from the `clock` it is given, so it can be
driven by a fake sender and a fake clock (``threaded=False`` and `run_due`).

Cadence: until this client has seen a completion, no task is polled sooner than ``first_poll_s``
(1 s) after its submit, then every 0.5 s ×1.5. After that, the first poll comes at 1.02 × the
learnt *target*: the median of the last 32 accept→done times, or — once the server reports
``progress`` — their 10th percentile, learnt only from canaries (tasks polled before the first
completion) and probes, so that a first poll can tell when a slow task will end. One task in
eight (and every task after a probe found its task already done) is a *probe*, first polled at
half the target, so a falling latency is learnt. A task still processing is polled next when its
``progress`` predicts completion (else ×1.5 backoff up to 5 s). An accepted task answering
``{"data": []}`` is still queued: it is polled on until ``poll_timeout_s``, never given up.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from pipeline.errors import ApiError, TransientError
from pipeline.protocol import (
    Answer,
    as_float,
    by_task,
    classify,
    error_entry,
    flatten_error,
    is_error,
    is_success,
    result_lost,
    snippet,
)

__all__ = ["Closed", "Pending", "Poller", "SendFailed", "Sender"]

log = logging.getLogger(__name__)

# Poll cadence (seconds).
FIRST_POLL_S = 1.0  # default first-poll delay before this client has seen a completion
FIRST_INTERVAL_START = 0.5  # the interval after that first poll (then ×1.5), like Runware's SDK
FIRST_POLL_FACTOR = 1.02  # once completions are known: first poll just after the median
FIRST_POLL_MARGIN = 0.005
FIRST_POLL_MIN = 0.005
FIRST_POLL_MAX = 120.0
POLL_INTERVAL_MIN = 0.02
POLL_STEP_FACTOR = 0.05  # the first interval after the first poll, as a fraction of the median
POLL_INTERVAL_CAP = 5.0
PREDICT_CAP_S = 30.0  # a poll predicted from `progress` may wait this long
PREDICT_MARGIN_S = 0.01
PROBE_EVERY = 8  # one task in this many is first polled early, to learn when latency falls
PROBE_AT = 0.5  # … at this fraction of the target
LOW_QUANTILE = 0.1  # with `progress`: first polls aim at this quantile of completion times
EMPTY_ANSWERS_SYNC = 3  # a known sync task answering nothing this often: its result is not kept
POLL_BACKOFF = 1.5
POLL_BATCH_MAX = 50  # getResponse tasks per POST with batch_polls


class SendFailed(Exception):
    """A transport failure; `maybe_sent` says whether the server may have seen the request."""

    def __init__(self, error: TransientError, maybe_sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.maybe_sent = maybe_sent


class Closed(Exception):
    """The client was closed while waiting."""


class Sender(Protocol):
    """All the poller may ask of its client."""

    def get_responses(self, task_uuids: list[str]) -> Answer:
        """POST one getResponse per task in one request; raises SendFailed or Closed."""
        ...

    def task_details(self, pending: Pending) -> bool:
        """getTaskDetails for a task: True (absorbed into `pending`) if it told the result."""
        ...

    def retry_delay(self, k: int, retry_after: float | None) -> float:
        """The wait before retry `k` (0-based), or the server's Retry-After."""
        ...

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to the client's counter `key`."""
        ...


class Pending:
    """What is known so far about one task: finished items, errors, and poll bookkeeping."""

    def __init__(
        self,
        task_uuid: str,
        number_results: int,
        deadline: float,
        *,
        sync: bool = False,
        accepted_at: float | None = None,
    ) -> None:
        self.task_uuid = task_uuid
        self.sync = sync  # delivered sync: getResponse may keep nothing (getTaskDetails may)
        self.via_details = False  # polled with getTaskDetails (a sync task getResponse lost)
        self.n = max(1, number_results)
        self.deadline = deadline
        self.items: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, ApiError] = {}
        self.processing = 0
        self.fatal: ApiError | None = None  # polling itself failed (timeout, client closed)
        self.done = threading.Event()
        self.accepted_at = time.monotonic() if accepted_at is None else accepted_at
        self.last_pending_at: float | None = None
        self.failures = 0
        self.interval = POLL_INTERVAL_MIN
        self.solo = False
        self.learn = True
        self.cancelled = False
        self.empty_answers = 0  # consecutive 2xx poll answers that say nothing about the task
        self.progress: float | None = None  # highest `progress` (0-100) of the last answer
        self.prev_progress = 0.0
        self.est_total: float | None = None  # accept→done estimated from progress
        self.probe = False  # first polled early to learn whether the latency fell
        self.canary = False  # tracked before any completion was seen

    def absorb(
        self,
        items: Iterable[dict[str, Any]],
        errors: Iterable[dict[str, Any]],
        status: int | None = None,
    ) -> None:
        """Merge one (cumulative) answer: dedupe images by imageUUID, collect errors."""
        processing = 0
        progress: float | None = None
        errs = list(errors)
        for item in items:
            if is_error(item):
                errs.append(item)
            elif is_success(item):
                key = item.get("imageUUID") or item.get("resultIndex")
                if key is None:
                    key = json.dumps(item, sort_keys=True, default=str)
                self.items.setdefault(str(key), item)
            else:
                processing += 1
                value = as_float(item.get("progress"))
                if value is not None:
                    progress = value if progress is None else max(progress, value)
        self.processing = processing
        self.progress = progress
        for entry in errs:
            err = classify(status, {"errors": [entry]}, task_uuid=self.task_uuid)
            key = json.dumps(flatten_error(entry), sort_keys=True, default=str)
            self.errors.setdefault(key, err)

    @property
    def finished(self) -> bool:
        if self.fatal is not None or len(self.items) >= self.n:
            return True
        return bool(self.errors) and self.processing == 0

    def task_errors(self) -> list[ApiError]:
        return list(self.errors.values())


class Poller:
    """One scheduler thread + a small worker pool polling every in-flight task of a Client.

    With ``threaded=False`` there is neither: `run_due` polls what is due, inline (for tests).
    """

    def __init__(
        self,
        sender: Sender,
        *,
        first_poll_s: float = FIRST_POLL_S,
        failure_limit: int = 5,
        workers: int = 2,
        batch: bool = False,
        clock: Callable[[], float] = time.monotonic,
        threaded: bool = True,
    ) -> None:
        self._sender = sender
        self._first_poll_s = first_poll_s
        self._failure_limit = failure_limit  # consecutive failed polls of a task before it fails
        self._clock = clock
        self._batch = batch
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._durations: deque[float] = deque(maxlen=32)
        self._tracked = 0
        self._probe_next = False  # the last probe found its task done: probe again
        self._progress_seen = False  # the server reports `progress` on processing items
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="krea-poll")
            self._thread = threading.Thread(
                target=self._run, name="krea-poll-scheduler", daemon=True
            )
            self._thread.start()

    # cadence -------------------------------------------------------------------------------
    def _target(self) -> float | None:
        """The learnt completion time polls aim at: the median, or the 10th percentile once
        the server reports `progress` (a first poll then tells when a slow task will end)."""
        with self._cond:
            samples = sorted(self._durations)
            low = self._progress_seen
        if not samples:
            return None
        if low:
            return samples[int(LOW_QUANTILE * (len(samples) - 1))]
        return statistics.median(samples)

    def first_delay(self, p: Pending) -> float:
        """Submit → first poll: `first_poll_s` until a completion is seen, then ~the target.

        Every PROBE_EVERY-th task (and every task after a probe that found its task already
        done) is a probe, first polled at PROBE_AT × the target, so a falling latency is seen.
        """
        target = self._target()
        if target is None:
            p.canary = True
            return self._first_poll_s
        with self._cond:
            self._tracked += 1
            p.probe = self._probe_next or self._tracked % PROBE_EVERY == 0
        delay = (PROBE_AT if p.probe else FIRST_POLL_FACTOR) * target + FIRST_POLL_MARGIN
        return min(FIRST_POLL_MAX, max(FIRST_POLL_MIN, delay))

    def first_interval(self) -> float:
        target = self._target()
        if target is None:
            return FIRST_INTERVAL_START
        return min(POLL_INTERVAL_CAP, max(POLL_INTERVAL_MIN, POLL_STEP_FACTOR * target))

    def _observe(self, p: Pending, sent: float) -> None:
        """Learn accept→done from one finished task (see the module docstring).

        Seen pending first: the `progress` estimate within the last poll gap, else the middle
        of that gap. Done at its first poll: only an upper bound. A probe's bound clips every
        sample above it (latency fell); an ordinary task's adds nothing, except as the first.
        With `progress`, only canaries and probes (first polled early, so unbiased) are learnt
        from: an ordinary task seen pending is a slow one.
        """
        elapsed = sent - p.accepted_at
        with self._cond:
            if p.last_pending_at is None:
                if p.probe:
                    clipped = [min(d, elapsed) for d in self._durations]
                    self._durations.clear()
                    self._durations.extend(clipped or [elapsed])
                    self._probe_next = True
                elif not self._durations:  # the first completion: probe below it next
                    self._durations.append(max(0.0, elapsed))
                    self._probe_next = True
                return
            if self._progress_seen and not (p.probe or p.canary):
                return
            start = p.last_pending_at - p.accepted_at
            if p.est_total is not None:
                sample = min(max(p.est_total, start), elapsed)
            else:
                sample = (start + elapsed) / 2
            if p.probe:
                self._probe_next = False
            self._durations.append(max(0.0, sample))

    @property
    def seen_completion(self) -> bool:
        """Whether this client has learnt a completion time yet."""
        with self._cond:
            return bool(self._durations)

    # scheduling ----------------------------------------------------------------------------
    def track(self, p: Pending) -> None:
        """Start polling `p` (its first poll comes after the adaptive delay)."""
        p.interval = self.first_interval()
        self._schedule(p, max(self._clock(), p.accepted_at + self.first_delay(p)))

    def _schedule(self, p: Pending, at: float) -> None:
        with self._cond:
            if self._stopped:
                p.fatal = p.fatal or TransientError("client closed", code="clientClosed")
                p.done.set()
                return
            heapq.heappush(self._heap, (at, next(self._seq), p))
            self._cond.notify()

    def _reschedule(self, p: Pending, delay: float) -> None:
        now = self._clock()
        if now >= p.deadline:
            self._timeout(p)
            return
        self._schedule(p, min(now + delay, p.deadline))

    def _timeout(self, p: Pending) -> None:
        waited = self._clock() - p.accepted_at
        p.fatal = TransientError(
            f"pollTimeout: timed out waiting for task {p.task_uuid} after {waited:.1f} s",
            code="pollTimeout",
            task_uuid=p.task_uuid,
        )
        p.done.set()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = self._clock()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if self._stopped:
                    return
                due = self._pop_due()
            self._dispatch(self._chunks(due))

    def _pop_due(self) -> list[Pending]:
        """Take every task due now (within 1 ms) off the heap; the caller holds the lock."""
        limit = self._clock() + 0.001
        due: list[Pending] = []
        while self._heap and self._heap[0][0] <= limit:
            p = heapq.heappop(self._heap)[2]
            if not p.cancelled:
                due.append(p)
        return due

    def _chunks(self, due: list[Pending]) -> list[list[Pending]]:
        """The POSTs polling `due`: one task each, or up to POLL_BATCH_MAX with batch_polls."""
        if self._batch:
            solo = [p for p in due if p.solo]
            grouped = [p for p in due if not p.solo]
            chunks = [[p] for p in solo] + [
                grouped[i : i + POLL_BATCH_MAX] for i in range(0, len(grouped), POLL_BATCH_MAX)
            ]
        else:
            chunks = [[p] for p in due]
        return chunks

    def _dispatch(self, chunks: list[list[Pending]]) -> None:
        assert self._executor is not None
        for chunk in chunks:
            try:
                self._executor.submit(self._poll_safely, chunk)
            except RuntimeError:  # executor shut down: the client is closing
                for p in chunk:
                    p.fatal = p.fatal or TransientError("client closed", code="clientClosed")
                    p.done.set()

    def next_due(self) -> float | None:
        """When the next poll is due (clock time), or None when nothing is scheduled."""
        with self._cond:
            live = [at for at, _, p in self._heap if not p.cancelled]
        return min(live) if live else None

    def run_due(self) -> int:
        """Poll every task due now, inline, one POST after another; returns how many POSTs."""
        with self._cond:
            due = [] if self._stopped else self._pop_due()
        chunks = self._chunks(due)
        for chunk in chunks:
            self._poll_safely(chunk)
        return len(chunks)

    # polling -------------------------------------------------------------------------------
    def _poll_safely(self, batch: list[Pending]) -> None:
        try:
            self._poll(batch)
        except Exception as exc:  # never leave a caller waiting forever
            log.exception("poll failed")
            for p in batch:
                if not p.done.is_set():
                    p.fatal = TransientError(f"pollFailed: {exc}", code="pollFailed")
                    p.done.set()

    def _poll(self, batch: list[Pending]) -> None:
        if batch[0].via_details:
            self._poll_details(batch[0])
            return
        uuids = [p.task_uuid for p in batch]
        sent = self._clock()
        try:
            resp = self._sender.get_responses(uuids)
        except SendFailed as failed:
            for p in batch:
                self._failed(p, failed.error, None)
            return
        except Closed:
            for p in batch:
                p.fatal = TransientError("client closed", code="clientClosed")
                p.done.set()
            return
        self._sender.count("polls", len(batch))
        if resp.ok and resp.body is None:
            err: ApiError = TransientError(
                f"badResponse: unreadable poll answer: {snippet(resp.text)}", code="badResponse"
            )
            for p in batch:
                self._failed(p, err, None)
            return
        if not resp.ok:
            err = resp.error(uuids[0] if len(uuids) == 1 else None)
            if err.retryable:
                for p in batch:
                    self._failed(p, err, resp.retry_after)
                return
        per_task, _unowned = by_task(resp.body, uuids)
        for p in batch:
            items, errors = per_task[p.task_uuid]
            if not resp.ok and not items and not errors:
                if len(batch) > 1:  # an error we cannot attribute: ask for this one alone
                    p.solo = True
                    self._reschedule(p, 0.0)
                    continue
                errors = [error_entry(resp.error(p.task_uuid))]
            p.failures = 0
            p.empty_answers = 0 if items or errors else p.empty_answers + 1
            if not items and not errors:
                self._sender.count("empty_polls")
            if p.sync and p.empty_answers >= EMPTY_ANSWERS_SYNC:
                # A known sync task whose result getResponse does not keep: getTaskDetails may.
                if self._sender.task_details(p):
                    p.via_details = True
                    self._after_answer(p, sent)
                else:
                    p.fatal = result_lost(p.task_uuid)
                    p.done.set()
                continue
            # An accepted async task answering nothing is still queued: it is polled on, with
            # backoff, until poll_timeout_s (never given up as lost).
            p.absorb(items, errors, None if resp.ok else resp.status)
            self._after_answer(p, sent)

    def _poll_details(self, p: Pending) -> None:
        """One getTaskDetails poll of a task whose getResponse answers nothing."""
        sent = self._clock()
        try:
            found = self._sender.task_details(p)
        except ApiError as err:
            self._failed(p, err, None)
            return
        if not found:
            p.fatal = result_lost(p.task_uuid)
            p.done.set()
            return
        p.failures = 0
        self._after_answer(p, sent)

    def _after_answer(self, p: Pending, sent: float) -> None:
        """After an answer was absorbed: wake the caller if finished, else schedule a poll."""
        if p.finished:
            if p.learn and p.items and not p.errors:
                self._observe(p, sent)
            p.done.set()
        else:
            p.last_pending_at = sent
            self._reschedule(p, self._next_delay(p, sent))

    def _next_delay(self, p: Pending, sent: float) -> float:
        """Backoff ×1.5, or when `progress` rose: the time it predicts (at most the cap)."""
        delay = p.interval
        p.interval = min(POLL_INTERVAL_CAP, p.interval * POLL_BACKOFF)
        progress, elapsed = p.progress, sent - p.accepted_at
        if progress is not None and not self._progress_seen:
            with self._cond:
                self._progress_seen = True
        if progress is not None and p.prev_progress < progress < 100 and elapsed > 0:
            # Servers truncate progress to an integer (the emulator does): reading it as is
            # predicts a moment at or just after completion, never before it.
            p.est_total = elapsed * 100.0 / min(100.0, max(progress, 1.0)) + PREDICT_MARGIN_S
            remaining = p.accepted_at + p.est_total - self._clock()
            delay = min(PREDICT_CAP_S, max(POLL_INTERVAL_MIN, remaining))
        else:
            p.est_total = None
        p.prev_progress = max(p.prev_progress, progress or 0.0)
        return delay

    def _failed(self, p: Pending, err: ApiError, retry_after: float | None) -> None:
        p.failures += 1
        self._sender.count("poll_retries")
        if p.failures > self._failure_limit:
            p.fatal = TransientError(
                f"pollFailed: {p.failures} consecutive poll failures for task {p.task_uuid}: {err}",
                code=err.code or "pollFailed",
                task_uuid=p.task_uuid,
            )
            p.done.set()
            return
        delay = self._sender.retry_delay(p.failures - 1, retry_after)
        self._reschedule(p, delay)

    def cancel(self, p: Pending) -> None:
        p.cancelled = True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            pending = [entry[2] for entry in self._heap]
            self._heap.clear()
            self._cond.notify_all()
        for p in pending:
            p.fatal = p.fatal or TransientError("client closed", code="clientClosed")
            p.done.set()
        # Queued polls are dropped; one already on the wire ends within its read timeout.
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout=5)
