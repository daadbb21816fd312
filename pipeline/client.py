"""The one module that speaks HTTP to Runware: upload, submit, poll, recover, download.

Retry and recovery design (the rule is: a cell is never paid for twice, and where Runware's
behaviour is unconfirmed — runware-protocol.md §11 — the client is right under every plausible
answer):

* Every call has an explicit (connect, read) timeout; every duration is clamped to 30 days, so
  an absurd setting never overflows a wait. Transport failures are split in two: *not sent*
  (connection refused, connect timeout) and *maybe sent* (read timeout, connection dropped after
  the request went out, a 5xx or an unreadable 2xx to a submit).
* A submit whose outcome is unknown is never simply repeated. After the backoff the client asks
  ``getResponse`` for that taskUUID, again and again over the **settle wait** (at least
  ``settle_s`` AND at least five answered lookups, so lookups slowed by retries or load never
  shorten it): as soon as the server knows the task (processing, done or failed) it is polled
  to completion. Only when every lookup of the settle wait says "not known" — ``{"data": []}``
  or a not-found code (``is_not_found``: exactly the codes Runware's SDK reads as not found:
  ``taskFailedOrNotFound``, ``taskCancelled``, ``unknownModel``, ``…NotFound``, ``…Expired``) — is
  the task re-submitted, with the SAME taskUUID. A ``conflictTaskUUID`` answer means the task
  exists: it is polled, never re-submitted (``taskGone`` if getResponse then says not found by
  code: that taskUUID is spent and the runner takes a new one). If a lookup cannot get an answer
  the client raises TransientError ``outcomeUnknown``; the taskUUID stays on record and the next
  run looks it up again by the same rules.
* A server that charges a repeated taskUUID again can bill twice only for a task it accepted
  but kept invisible to getResponse (empty or not-found) for the whole settle wait (≥ settle_s
  and ≥ five answered lookups): at most one extra charge per such submit (README, Cost safety).
* Retried: connection errors, timeouts, 408, 429 and 5xx, with capped exponential backoff and
  full jitter (``backoff_base_s`` × 2^k, at most ``backoff_cap_s``), or the server's
  ``Retry-After`` (seconds or HTTP date). Never retried: RequestRejected, AuthError,
  CreditsError, SafetyError. ``max_retries`` bounds the re-submits of one task; polls,
  downloads and uploads have their own bounded retries. A task the server reports as failed
  with a retryable code (provider, timeout) and no image is re-submitted with the same taskUUID,
  within the same ``max_retries``. An ApiError out of ``generate``/``recover`` carries
  ``maybe_billed``: whether any submit may have been accepted (the runner counts it toward the
  budget at its estimate).
* Async delivery (default): one shared poll scheduler per Client (`pipeline.poller`, which
  holds the cadence). An accepted task answering ``{"data": []}`` is still queued: it is polled
  on until ``poll_timeout_s``, never given up.
* Sync delivery: results come in the POST response. Runware may keep no sync results for
  getResponse; a lost sync response is recovered with ``getTaskDetails`` where the server
  supports it. Where it does not, the settle wait ends in a re-submit with the same taskUUID: a
  ``conflictTaskUUID`` then ends the cell as ``resultLost`` (paid once, no image), a replaying
  server returns the result. Use async delivery when that matters.
* URL outputs are downloaded (without the API key) with their own retries; a failed download
  never re-submits the task: the client asks getResponse for a fresh copy of the item instead.

Reading Runware's answers (fields, error classes, not-found codes) is `pipeline.protocol`'s.
The connection pool is a `requests.Session`; a caller may pass its own ``session`` or a
``transport`` (a `requests` adapter mounted for http:// and https://), as httpx takes one.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from pipeline.errors import ApiError, ConfigError, NotFoundError, RequestRejected, TransientError
from pipeline.images import read_reference
from pipeline.journal import utc_now
from pipeline.poller import FIRST_POLL_S, Closed, Pending, Poller, SendFailed
from pipeline.protocol import (
    DELIVERY_METHODS,
    FORMAT_EXT,
    OUTPUT_TYPES,
    Answer,
    as_float,
    as_int,
    by_task,
    classify,
    decode_data_uri,
    encode_data_uri,
    flatten_error,
    has_image,
    inference_task,
    is_error,
    is_not_found,
    parse_body,
    parse_retry_after,
    result_index,
    result_lost,
    sniff_ext,
    snippet,
    url_ext,
)
from pipeline.sweep import is_local_file

__all__ = ["Client", "Generation", "ImageResult"]

log = logging.getLogger(__name__)

SETTLE_LOOKUPS = 4  # answered lookups the settle wait needs after the first (settle_s > 0)
MAX_DURATION_S = 30 * 24 * 3600.0  # every duration is clamped to this (no wait may overflow)
RETRY_AFTER_CAP = 120.0  # a server's Retry-After is honoured up to this (or backoff_cap_s)
BACKOFF_BASE_S = 0.5  # retry k waits up to BACKOFF_BASE_S × 2^k (full jitter) …
BACKOFF_CAP_S = 30.0  # … and never more than this


@dataclass
class ImageResult:
    """One generated image as bytes, with what Runware said about it."""

    image_uuid: str
    data: bytes
    ext: str  # "jpg" | "png" | "webp"
    seed: int | None
    cost: float | None
    nsfw: bool | None
    url: str | None


@dataclass
class Generation:
    """The outcome of one inference task: its images and any partial-failure errors."""

    task_uuid: str
    images: list[ImageResult]
    errors: list[ApiError]
    attempts: int  # submits (POSTs of the inference task), not polls
    submitted_at: str  # UTC ISO 8601
    finished_at: str  # UTC ISO 8601
    latency_s: float
    request: dict[str, Any]  # the task exactly as sent (never the key)


def _maybe_sent(exc: requests.RequestException) -> bool:
    """False only when the request certainly never left (refused / connect timeout)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason: Any = exc.args[0] if exc.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        if isinstance(reason, ConnectTimeoutError):  # includes NewConnectionError (refused, DNS)
            return False
    return True


def _transport_error(exc: requests.RequestException, what: str) -> TransientError:
    code = "timeout" if isinstance(exc, requests.exceptions.Timeout) else "connectionError"
    detail = snippet(f"{type(exc).__name__}: {exc}", 240)
    return TransientError(f"{code}: {what}: {detail}", code=code)


def _duration(seconds: float) -> float:
    """A duration clamped to [0, MAX_DURATION_S] (threading and sockets overflow on huge ones)."""
    if not seconds >= 0:  # NaN too
        return 0.0
    return min(float(seconds), MAX_DURATION_S)


# ---------------------------------------------------------------------------------------------
# The client


class Client:
    """A thread-safe Runware client for one API key: prepare, generate, recover (see module doc).

    ``session``: use this `requests.Session` (its owner closes it; ``close()`` does not).
    ``transport``: mount this adapter for http:// and https:// (on ``session`` if given). With
    neither, a pooled session of ``pool_size`` connections is built and closed by ``close()``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        delivery: str = "async",
        output_type: str = "base64Data",
        upload_refs: bool = True,
        batch_polls: bool = False,
        connect_timeout_s: float = 10.0,
        poll_timeout_s: float = 1200.0,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        pool_size: int = 32,
        first_poll_s: float = FIRST_POLL_S,
        settle_s: float = 2.0,
        session: requests.Session | None = None,
        transport: BaseAdapter | None = None,
    ) -> None:
        if delivery not in DELIVERY_METHODS:
            raise ConfigError(f"delivery must be one of {DELIVERY_METHODS}, not {delivery!r}")
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type must be one of {OUTPUT_TYPES}, not {output_type!r}")
        if max_retries < 0:
            raise ConfigError("max_retries must be >= 0")
        self.base_url = base_url
        self._auth = f"Bearer {api_key}"
        # Every duration is clamped: an absurd value (1e10 s) must never crash a paid cell.
        timeout_s, connect_timeout_s, poll_timeout_s, backoff_base_s, backoff_cap_s = (
            _duration(v)
            for v in (timeout_s, connect_timeout_s, poll_timeout_s, backoff_base_s, backoff_cap_s)
        )
        self.first_poll_s = _duration(first_poll_s)
        self.settle_s = _duration(settle_s)
        self._details_supported = True  # until the server refuses getTaskDetails
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max_retries
        self.delivery = delivery
        self.output_type = output_type
        self.upload_refs = upload_refs
        self.batch_polls = batch_polls
        self.poll_timeout_s = poll_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.poll_failure_limit = max(5, max_retries)
        self._rng = random.Random()
        self._closed = threading.Event()
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._uploads: dict[str, Future[str]] = {}
        self._uploads_lock = threading.Lock()
        # A session passed in stays the caller's to close; one built here is closed by close().
        self._owns_session = session is None
        self._session = requests.Session() if session is None else session
        if transport is None and session is None:
            transport = HTTPAdapter(
                pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0
            )
        if transport is not None:
            self._session.mount("http://", transport)
            self._session.mount("https://", transport)
        self._poller = Poller(
            _PollLink(self),
            first_poll_s=self.first_poll_s,
            failure_limit=self.poll_failure_limit,
            workers=max(2, min(8, pool_size // 4)),
            batch=batch_polls,
        )

    # public API ------------------------------------------------------------------------------
    def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        """A copy of `request` with local reference files uploaded (UUID) or inlined (data URI)."""
        out = copy.deepcopy(request)
        inputs = out.get("inputs")
        if isinstance(inputs, dict | list):
            out["inputs"] = self._prepare_value(inputs)
        return out

    def generate(self, request: dict[str, Any], task_uuid: str) -> Generation:
        """Run one inference task to completion; raises ApiError subclasses if it fails wholly."""
        self._check_open()
        task = self._task_for(self.prepare(request), task_uuid)
        billed = [False]  # whether any submit may have been accepted (and billed)
        try:
            return self._generate(task, task_uuid, billed)
        except ApiError as err:
            err.maybe_billed = billed[0]  # type: ignore[attr-defined]
            raise

    def _generate(self, task: dict[str, Any], task_uuid: str, billed: list[bool]) -> Generation:
        n = int(task.get("numberResults") or 1)
        submitted_at = utc_now()
        t0 = time.monotonic()
        deadline = t0 + self.poll_timeout_s
        attempts = 0
        sync = task.get("deliveryMethod") == "sync"
        while True:
            state = Pending(task_uuid, n, deadline, sync=sync)
            attempts, conflicted = self._submit(task, state, attempts, billed)
            self._await(state)
            images, fetch_errors = self._collect(state, task)
            errors = state.task_errors() + fetch_errors
            if state.fatal is not None:
                errors.append(state.fatal)
            if images or not errors:
                break
            first = state.fatal or (state.task_errors() or fetch_errors)[0]
            retry_task = (
                state.fatal is None
                and not fetch_errors
                and first.retryable
                and not conflicted
                and attempts <= self.max_retries
            )
            if not retry_task:
                raise _with_task(first, task_uuid)
            self._count("task_retries")
            log.info("task %s failed (%s); re-submitting the same taskUUID", task_uuid, first)
            self._sleep(self._retry_delay(attempts - 1, None))
        return Generation(
            task_uuid=task_uuid,
            images=images,
            errors=errors,
            attempts=attempts,
            submitted_at=submitted_at,
            finished_at=utc_now(),
            latency_s=time.monotonic() - t0,
            request=task,
        )

    def recover(self, task_uuid: str, number_results: int = 1) -> Generation | None:
        """After a crash: None if the server does not know `task_uuid`, else its finished result."""
        try:
            return self._recover(task_uuid, number_results)
        except ApiError as err:
            err.maybe_billed = True  # type: ignore[attr-defined]  # it was submitted before
            raise

    def _recover(self, task_uuid: str, number_results: int) -> Generation | None:
        self._check_open()
        submitted_at = utc_now()
        t0 = time.monotonic()
        state = Pending(
            task_uuid, number_results, t0 + self.poll_timeout_s, sync=self.delivery == "sync"
        )
        state.learn = False
        if not self._settle(state):
            return None  # not known after the settle wait: submit it again, same taskUUID
        self._await(state)
        images, fetch_errors = self._collect(state, {})
        errors = state.task_errors() + fetch_errors + ([state.fatal] if state.fatal else [])
        if not images and errors:
            raise _with_task(errors[0] if state.fatal is None else state.fatal, task_uuid)
        return Generation(
            task_uuid=task_uuid,
            images=images,
            errors=errors,
            attempts=0,
            submitted_at=submitted_at,
            finished_at=utc_now(),
            latency_s=time.monotonic() - t0,
            request={
                "taskType": "imageInference",
                "taskUUID": task_uuid,
                "numberResults": number_results,
            },
        )

    def stats(self) -> dict[str, int]:
        """Counters: submits, resubmits, checks, polls, retries of each kind, uploads, downloads."""
        with self._stats_lock:
            return dict(self._stats)

    def close(self) -> None:
        """Stop polling, fail waiting callers with TransientError, close the connection pool."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._poller.stop()
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # submit and recovery --------------------------------------------------------------------
    def _task_for(self, prepared: dict[str, Any], task_uuid: str) -> dict[str, Any]:
        return inference_task(
            prepared, task_uuid, delivery=self.delivery, output_type=self.output_type
        )

    def _submit(
        self, task: dict[str, Any], state: Pending, attempts: int, billed: list[bool]
    ) -> tuple[int, bool]:
        """POST the task until the server holds it; returns (submits so far, got a conflict).

        On return `state` holds what the server said (sync results, an ack, or a known task).
        A maybe-sent failure is followed by getResponse lookups over the settle wait; only an
        answer of "not known" lasting that long re-submits (same taskUUID). `billed[0]` becomes
        True once any submit may have been accepted.
        """
        task_uuid = str(task["taskUUID"])
        payload = [task]
        unknown = False  # the last submit may have reached the server
        last: ApiError | None = None
        wait: float | None = None
        first_try = True
        while True:
            if not first_try:
                assert last is not None
                self._sleep(wait if wait is not None else self._retry_delay(attempts - 1, None))
                if unknown:
                    if self._settle(state):
                        log.info("task %s is known to the server; polling it", task_uuid)
                        state.learn = False
                        return attempts, False
                    unknown = False
                if attempts > self.max_retries:
                    raise _with_task(last, task_uuid)
                self._count("resubmits")
            first_try = False
            attempts += 1
            self._count("submits")
            state.accepted_at = time.monotonic()
            try:
                resp = self._post(payload)
            except SendFailed as failed:
                self._count("retries_transport")
                last, wait, unknown = failed.error, None, failed.maybe_sent
                billed[0] = billed[0] or unknown
                log.info("submit %s failed (%s); sent=%s", task_uuid, last, unknown)
                continue
            except Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if resp.ok and resp.body is not None:
                per_task, _ = by_task(resp.body, [task_uuid])
                items, errors = per_task[task_uuid]
                billed[0] = True
                if not items and any(e.get("code") == "conflictTaskUUID" for e in errors):
                    return attempts, self._after_conflict(state)
                if not items and errors and not any(is_error(e) for e in errors):
                    billed[0] = False  # rejected before acceptance (e.g. validation): not billed
                state.accepted_at = time.monotonic()
                state.absorb(items, errors)
                return attempts, False
            self._count("retries_status")
            if resp.ok:  # a 2xx we cannot read: the server may have accepted (and billed) it
                last = TransientError(
                    f"badResponse: unreadable submit answer: {snippet(resp.text)}",
                    code="badResponse",
                    task_uuid=task_uuid,
                )
                wait, unknown = None, True
                billed[0] = True
                continue
            err = resp.error(task_uuid)
            if err.code == "conflictTaskUUID":
                billed[0] = True
                return attempts, self._after_conflict(state)
            if not err.retryable:
                raise _with_task(err, task_uuid)
            # 5xx: the server may have accepted (and billed) the task; 408/429: it refused it.
            unknown = resp.status >= 500
            billed[0] = billed[0] or unknown
            last, wait = err, self._retry_delay(attempts - 1, resp.retry_after)
            log.info("submit %s answered %s; retrying", task_uuid, err)

    def _after_conflict(self, state: Pending) -> bool:
        """conflictTaskUUID: the task exists; fetch it (never re-submit). Returns True.

        getResponse knows it: polled. It answers nothing: a sync task is asked with
        getTaskDetails (else ``resultLost``); an async one is still queued and is polled until
        ``poll_timeout_s``. It says "not found" by code: the task is gone (failed or expired),
        ApiError ``taskGone`` — its taskUUID cannot be used again (the runner takes a new one).
        """
        log.info("task %s already exists on the server; polling it", state.task_uuid)
        state.learn = False
        found = self._lookup(state)
        if found == "known":
            return True
        if state.sync:
            if self._details(state):
                state.via_details = not state.finished
                return True
            raise result_lost(state.task_uuid)
        if found == "gone":
            raise ApiError(
                f"taskGone: task {state.task_uuid} exists (conflictTaskUUID) but getResponse"
                " says it is not found; a new taskUUID is needed",
                code="taskGone",
                task_uuid=state.task_uuid,
            )
        return True  # answers nothing yet: queued; polled (empty answers are fine) until timeout

    def _settle(self, state: Pending) -> bool:
        """Look the task up until it is known, or "not known" has lasted `settle_s`: True if known.

        An accepted task can answer nothing (queued, or a finished sync task) or even "not
        found" for a while; only an answer that stays so for the whole settle wait — at least
        `settle_s` AND at least 1 + SETTLE_LOOKUPS answered lookups — lets the caller
        re-submit (with the same taskUUID). A sync task is also asked getTaskDetails.
        """
        deadline = time.monotonic() + self.settle_s
        step = max(self.settle_s / SETTLE_LOOKUPS, 0.01)
        # Both a time and a count: a server may hide a queued task for N polls, not N seconds,
        # and a lookup that needed retries (a 429's Retry-After, a dropped connection) must not
        # use up the wait in time. settle_s=0 means one lookup.
        needed = 1 + SETTLE_LOOKUPS if self.settle_s > 0 else 1
        answered = 0
        asked_details = False
        while True:
            if self._lookup(state) == "known":
                return True
            answered += 1
            if state.sync and not asked_details:
                asked_details = True
                if self._details(state):
                    state.via_details = not state.finished
                    return True
            left = deadline - time.monotonic()
            if left <= 0 and answered >= needed:
                return False
            self._count("settle_waits")
            self._sleep(min(step, left) if left > 0 else step)

    def _details(self, state: Pending) -> bool:
        """getTaskDetails for `state`'s task: True (and absorbed) if it tells the task's result.

        False when the server does not support it (remembered), does not know the task, or has
        nothing for it. Raises TransientError when it cannot get an answer.
        """
        if not self._details_supported:
            return False
        self._count("task_details")
        task_uuid = state.task_uuid
        last: ApiError | None = None
        for k in range(self.poll_failure_limit + 1):
            if k:
                self._sleep(self._retry_delay(k - 1, None))
            try:
                resp = self._post([{"taskType": "getTaskDetails", "taskUUID": task_uuid}])
            except SendFailed as failed:
                last = failed.error
                continue
            except Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if (resp.ok and resp.body is None) or (not resp.ok and resp.error().retryable):
                last = resp.error(task_uuid)
                continue
            if not resp.ok:
                err = resp.error(task_uuid)
                if err.code in ("unsupportedTaskType", "invalidTaskType") or resp.status == 404:
                    self._details_supported = False
                return False
            per_task, _ = by_task(resp.body, [task_uuid])
            items: list[dict[str, Any]] = []
            errors: list[dict[str, Any]] = []
            for entry in per_task[task_uuid][0]:
                response = entry.get("response")
                inner, inner_errors = by_task(
                    response if isinstance(response, Mapping) else None, [task_uuid]
                )[0][task_uuid]
                items.extend(inner)
                errors.extend(inner_errors)
            if not items and not errors:
                return False
            state.absorb(items, errors)
            return True
        raise TransientError(
            f"outcomeUnknown: getTaskDetails for task {task_uuid} got no answer ({last})",
            code="outcomeUnknown",
            task_uuid=task_uuid,
        )

    def _lookup(self, state: Pending) -> str:
        """getResponse for `state`'s task: "known" (and absorbed), "absent" or "gone".

        "absent": the answer says nothing ({"data": []}: not accepted, still queued, or a
        finished sync task). "gone": a not-found code (any form Runware's SDK reads as not
        found). Retries its own transport/5xx failures and raises TransientError
        ``outcomeUnknown`` if it cannot tell, so an unknown outcome never becomes a re-submit.
        """
        self._count("checks")
        task_uuid = state.task_uuid
        last: ApiError | None = None
        hint: float | None = None
        for k in range(self.poll_failure_limit + 1):
            if k:
                self._count("check_retries")
                self._sleep(self._retry_delay(k - 1, hint))
            hint = None
            try:
                resp = self._post([{"taskType": "getResponse", "taskUUID": task_uuid}])
            except SendFailed as failed:
                last = failed.error
                continue
            except Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if resp.ok and resp.body is None:
                last = TransientError(f"badResponse: {snippet(resp.text)}", code="badResponse")
                continue
            if not resp.ok and resp.error().retryable:
                last, hint = resp.error(task_uuid), resp.retry_after
                continue
            per_task, _ = by_task(resp.body, [task_uuid])
            items, errors = per_task[task_uuid]
            if not items:
                if not resp.ok and not errors:
                    err = resp.error(task_uuid)
                    if is_not_found(err.code or ""):
                        return "gone"
                    raise _with_task(err, task_uuid)
                codes = [str(flatten_error(e).get("code") or "") for e in errors]
                if not errors:
                    return "absent"
                if all(is_not_found(c) for c in codes):
                    return "gone"
            state.absorb(items, errors, None if resp.ok else resp.status)
            return "known"
        raise TransientError(
            f"outcomeUnknown: cannot tell whether task {task_uuid} was accepted; not re-submitted"
            f" ({last})",
            code="outcomeUnknown",
            task_uuid=task_uuid,
        )

    def _await(self, state: Pending) -> None:
        if state.finished:
            return
        self._poller.track(state)
        grace = self.timeout_s + self.connect_timeout_s + 5.0
        remaining = max(0.0, state.deadline - time.monotonic()) + grace
        if not state.done.wait(_duration(remaining)):
            self._poller.cancel(state)
            state.fatal = TransientError(
                f"pollTimeout: timed out waiting for task {state.task_uuid}",
                code="pollTimeout",
                task_uuid=state.task_uuid,
            )

    # results ---------------------------------------------------------------------------------
    def _collect(
        self, state: Pending, task: Mapping[str, Any]
    ) -> tuple[list[ImageResult], list[ApiError]]:
        """Decode or download every finished item; errors for the ones that cannot be had."""
        images: list[ImageResult] = []
        errors: list[ApiError] = []
        fmt = FORMAT_EXT.get(str(task.get("outputFormat") or "").upper())
        items = sorted(state.items.values(), key=result_index)
        for item in items:
            try:
                images.append(self._image(item, state.task_uuid, fmt))
            except ApiError as err:
                errors.append(err)
        return images, errors

    def _image(self, item: dict[str, Any], task_uuid: str, fmt: str | None) -> ImageResult:
        image_uuid = str(item.get("imageUUID") or "")
        data, hint = self._image_bytes(item, task_uuid)
        ext = sniff_ext(data) or hint or fmt or "jpg"
        nsfw = item.get("NSFWContent")
        return ImageResult(
            image_uuid=image_uuid,
            data=data,
            ext=ext,
            seed=as_int(item.get("seed")),
            cost=as_float(item.get("cost")),
            nsfw=nsfw if isinstance(nsfw, bool) else None,
            url=item.get("imageURL") if isinstance(item.get("imageURL"), str) else None,
        )

    def _image_bytes(self, item: dict[str, Any], task_uuid: str) -> tuple[bytes, str | None]:
        try:
            if isinstance(item.get("imageBase64Data"), str):
                return base64.b64decode(item["imageBase64Data"]), None
            if isinstance(item.get("imageDataURI"), str):
                return decode_data_uri(item["imageDataURI"])
        except (binascii.Error, ValueError) as exc:
            raise TransientError(
                f"badImageData: cannot decode image {item.get('imageUUID')}: {exc}",
                code="badImageData",
                task_uuid=task_uuid,
            ) from exc
        url = item.get("imageURL")
        if not isinstance(url, str):
            raise ApiError(
                f"noImageData: finished item {item.get('imageUUID')} carries no image",
                code="noImageData",
                task_uuid=task_uuid,
            )
        try:
            return self._download(url), url_ext(url)
        except ApiError as first:
            # The task succeeded: never re-submit. Ask getResponse for a fresh copy of the item.
            log.info("download of %s failed (%s); asking getResponse", url, first)
            fresh = self._refetch_item(task_uuid, str(item.get("imageUUID") or ""))
            if fresh is not None and has_image(fresh, ("imageBase64Data", "imageDataURI")):
                return self._image_bytes(
                    {k: v for k, v in fresh.items() if k != "imageURL"}, task_uuid
                )
            new_url = None if fresh is None else fresh.get("imageURL")
            if isinstance(new_url, str):
                try:
                    return self._download(new_url), url_ext(new_url)
                except ApiError:
                    pass
            raise _with_task(first, task_uuid) from None

    def _refetch_item(self, task_uuid: str, image_uuid: str) -> dict[str, Any] | None:
        probe = Pending(task_uuid, 1, time.monotonic() + self.timeout_s)
        try:
            if self._lookup(probe) != "known":
                return None
        except ApiError:
            return None
        for item in probe.items.values():
            if not image_uuid or item.get("imageUUID") == image_uuid:
                return item
        return None

    def _download(self, url: str) -> bytes:
        """GET an image URL (no API key sent) with bounded retries on transient failures."""
        last: ApiError | None = None
        hint: float | None = None
        for k in range(self.max_retries + 1):
            if k:
                self._count("download_retries")
                self._sleep(self._retry_delay(k - 1, hint))
            self._check_open()
            self._count("downloads")
            try:
                resp = self._session.get(url, timeout=(self.connect_timeout_s, self.timeout_s))
            except requests.RequestException as exc:
                last, hint = _transport_error(exc, f"GET {url}"), None
                continue
            status = resp.status_code
            if 200 <= status < 300 and resp.content:
                return resp.content
            if status in (404, 410):
                raise NotFoundError(
                    f"imageGone: image URL answered HTTP {status}: {url}",
                    code="imageGone",
                    status=status,
                )
            if status == 408 or status == 429 or status >= 500 or 200 <= status < 300:
                hint = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                last = TransientError(
                    f"downloadFailed: HTTP {status} for {url}", code="downloadFailed", status=status
                )
                continue
            raise RequestRejected(
                f"downloadFailed: HTTP {resp.status_code} for {url}",
                code="downloadFailed",
                status=resp.status_code,
            )
        assert last is not None
        raise last

    # uploads ---------------------------------------------------------------------------------
    def _prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._prepare_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._prepare_value(v) for v in value]
        if is_local_file(value):
            return self._reference(Path(value))
        return value

    def _reference(self, path: Path) -> str:
        # Read safely: the file may have been swapped since planning (a FIFO would hang a read).
        try:
            data = read_reference(path)
        except ValueError as exc:
            raise ConfigError(f"cannot read reference image {path}: {exc}") from exc
        uri = encode_data_uri(data, path.suffix.lower().lstrip("."))
        if not self.upload_refs:
            return uri
        digest = hashlib.sha256(data).hexdigest()
        with self._uploads_lock:
            future = self._uploads.get(digest)
            owner = future is None
            if future is None:
                future = Future()
                self._uploads[digest] = future
        if not owner:
            return future.result()
        try:
            image_uuid = self._upload(uri)
        except BaseException as exc:
            with self._uploads_lock:
                self._uploads.pop(digest, None)
            future.set_exception(exc)
            raise
        future.set_result(image_uuid)
        return image_uuid

    def _upload(self, data_uri: str) -> str:
        """imageUpload one image (retried on transient failures; uploads are free)."""
        task = {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": data_uri}
        last: ApiError | None = None
        hint: float | None = None
        for k in range(self.max_retries + 1):
            if k:
                self._count("upload_retries")
                self._sleep(self._retry_delay(k - 1, hint))
            hint = None
            self._count("uploads")
            try:
                resp = self._post([task])
            except SendFailed as failed:
                last = failed.error
                continue
            except Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if resp.ok and resp.body is not None:
                per_task, _ = by_task(resp.body, [task["taskUUID"]])
                items, errors = per_task[task["taskUUID"]]
                for item in items:
                    if isinstance(item.get("imageUUID"), str):
                        return str(item["imageUUID"])
                if errors:
                    raise classify(resp.status, {"errors": errors}, task_uuid=task["taskUUID"])
                last = TransientError("badResponse: imageUpload answer has no imageUUID")
                continue
            err = resp.error(task["taskUUID"])
            if not err.retryable and not resp.ok:
                raise err
            last, hint = err, resp.retry_after
        assert last is not None
        raise last

    # transport -------------------------------------------------------------------------------
    def _post(self, tasks: list[dict[str, Any]]) -> Answer:
        """One POST of a JSON array of tasks; raises SendFailed on transport failure."""
        if self._closed.is_set():
            raise Closed()
        self._count("posts")
        try:
            resp = self._session.post(
                self.base_url,
                data=json.dumps(tasks, separators=(",", ":")),
                headers={
                    "Authorization": self._auth,
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
                timeout=(self.connect_timeout_s, self.timeout_s),
            )
        except requests.RequestException as exc:
            if self._closed.is_set():
                raise Closed() from exc
            kinds = ",".join(sorted({str(t.get("taskType")) for t in tasks}))
            raise SendFailed(_transport_error(exc, f"POST {kinds}"), _maybe_sent(exc)) from exc
        text = resp.text
        retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
        return Answer(resp.status_code, parse_body(text), text, retry_after)

    def _retry_delay(self, k: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff for retry k (0-based), or the server's Retry-After."""
        if retry_after is not None:
            return min(retry_after, max(RETRY_AFTER_CAP, self.backoff_cap_s))
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * (2 ** max(0, k)))
        return self._rng.uniform(0.0, ceiling)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._closed.wait(seconds):
            raise TransientError("client closed", code="clientClosed")
        self._check_open()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise TransientError("client closed", code="clientClosed")

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n


def _with_task(err: ApiError, task_uuid: str) -> ApiError:
    if err.task_uuid is None:
        err.task_uuid = task_uuid
    return err


class _PollLink:
    """The client as the poller's `Sender`: the four things the poller may ask of it."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get_responses(self, task_uuids: list[str]) -> Answer:
        """One POST of getResponse for each task."""
        return self._client._post([{"taskType": "getResponse", "taskUUID": u} for u in task_uuids])

    def task_details(self, pending: Pending) -> bool:
        """getTaskDetails for a task whose getResponse keeps nothing."""
        return self._client._details(pending)

    def retry_delay(self, k: int, retry_after: float | None) -> float:
        """The client's backoff for retry `k`."""
        return self._client._retry_delay(k, retry_after)

    def count(self, key: str, n: int = 1) -> None:
        """Add to the client's stats."""
        self._client._count(key, n)
