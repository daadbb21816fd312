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
* Async delivery (default): one shared poll scheduler per Client (a thread with a heap of
  next-poll times over every in-flight task; polls run on a small worker pool, one getResponse
  per POST, or up to 50 per POST with ``batch_polls``). Cadence: until this client has seen a
  completion, no task is polled sooner than ``first_poll_s`` (1 s) after its submit, then every
  0.5 s ×1.5. After that, the first poll comes at 1.02 × the learnt *target*: the median of
  the last 32 accept→done times, or — once the server reports ``progress`` — their 10th
  percentile, learnt only from canaries (tasks polled before the first completion) and probes,
  so that a first poll can tell when a slow task will end. One task in eight (and every task
  after a probe found its task already done) is a *probe*, first polled at half the target, so
  a falling latency is learnt. A task still processing is polled next when its ``progress``
  predicts completion (else ×1.5 backoff up to 5 s). An accepted task answering
  ``{"data": []}`` is still queued: it is polled on until ``poll_timeout_s``, never given up.
* Sync delivery: results come in the POST response. Runware may keep no sync results for
  getResponse; a lost sync response is recovered with ``getTaskDetails`` where the server
  supports it. Where it does not, the settle wait ends in a re-submit with the same taskUUID: a
  ``conflictTaskUUID`` then ends the cell as ``resultLost`` (paid once, no image), a replaying
  server returns the result. Use async delivery when that matters.
* URL outputs are downloaded (without the API key) with their own retries; a failed download
  never re-submits the task: the client asks getResponse for a fresh copy of the item instead.
"""

from __future__ import annotations

import base64
import binascii
import copy
import email.utils
import hashlib
import heapq
import itertools
import json
import logging
import random
import re
import statistics
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from pipeline.errors import (
    ApiError,
    AuthError,
    ConfigError,
    CreditsError,
    NotFoundError,
    RateLimited,
    RequestRejected,
    SafetyError,
    TransientError,
)
from pipeline.images import read_reference
from pipeline.journal import utc_now
from pipeline.sweep import is_local_file

__all__ = ["Client", "Generation", "ImageResult", "classify", "is_not_found"]

log = logging.getLogger(__name__)

DELIVERY_METHODS = ("async", "sync")
OUTPUT_TYPES = ("base64Data", "dataURI", "URL")
IMAGE_FIELDS = ("imageBase64Data", "imageDataURI", "imageURL")

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
SETTLE_LOOKUPS = 4  # answered lookups the settle wait needs after the first (settle_s > 0)
MAX_DURATION_S = 30 * 24 * 3600.0  # every duration is clamped to this (no wait may overflow)
POLL_BACKOFF = 1.5
POLL_BATCH_MAX = 50  # getResponse tasks per POST with batch_polls
RETRY_AFTER_CAP = 120.0

_SAFETY_CODES = frozenset(
    {
        "contentPolicyViolation",
        "providerContentPolicyViolation",
        "sensitiveContentDetected",
        "unsafeContentDetected",
        "nsfwContentDetected",
        "promptBlocked",
        "imageBlocked",
        "moderationFailed",
    }
)
_NOT_FOUND_CODES = frozenset({"taskFailedOrNotFound", "taskCancelled", "unknownModel"})
# Codes Runware's SDK classifies before "not found" (runware.errors.derive_code), so a code such
# as `tokenExpired` (auth) is never read as "this task is unknown".
_SDK_AUTH_CODES = frozenset(
    {
        "unauthorized",
        "forbidden",
        "permissionDenied",
        "insufficientPermissions",
        "authenticationFailed",
        "authFailed",
        "authTimeout",
        "invalidAuthentication",
        "invalidCredentials",
        "missingAuthentication",
        "tokenExpired",
        "tokenInvalid",
        "tokenMissing",
        "tokenRevoked",
        "accountSuspended",
        "accountDisabled",
        "organizationSuspended",
        "organizationDisabled",
        "workspaceSuspended",
        "workspaceDisabled",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "inferenceError",
        "processingFailed",
        "downloadFailed",
        "uploadFailed",
        "noAvailableServer",
        "modelUnavailable",
        "modelDisabled",
        "modelNotReady",
        "internalServerError",
        "serviceUnavailable",
        "serverError",
        "unknownError",
        "connectionError",
    }
)
_VALIDATION_PREFIXES = (
    "invalid",
    "missing",
    "unsupported",
    "conflict",
    "duplicate",
    "value",
    "array",
    "max",
)
_AUTH_CODES = frozenset({"unauthorized", "forbidden", "authenticationFailed"})
_STATUS_CODES = {
    401: "unauthorized",
    402: "paymentRequired",
    403: "forbidden",
    404: "notFound",
    408: "requestTimeout",
    429: "rateLimitExceeded",
}
_DATA_URI_RE = re.compile(r"^data:([\w/+.-]+)?(;[^,]*)?,", re.IGNORECASE)
_MIME_EXT = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
}
_EXT_MIME = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
}
_FORMAT_EXT = {"JPG": "jpg", "JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


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


# ---------------------------------------------------------------------------------------------
# Error classification (pure)


def classify(
    status: int | None,
    body: Mapping[str, Any] | None,
    *,
    task_uuid: str | None = None,
    retry_after: float | None = None,
    text: str | None = None,
) -> ApiError:
    """Map a Runware status and error body (or one error item) to the right ApiError subclass."""
    err = _pick_error(body, task_uuid)
    if err is None:
        code = _status_code(status)
        snippet = _snippet(text or "")
        message = f"non-JSON response: {snippet}" if snippet else "empty response body"
        if status is not None and 200 <= status < 300 and body is not None:
            message = "response without data or errors"
        cls = _class_for(code, status)
        extra: dict[str, Any] = {"text": snippet} if snippet else {}
        return _make(
            cls,
            _one_line(code, message, None, status),
            code,
            status,
            task_uuid,
            None,
            extra,
            retry_after,
        )
    code = str(err.get("code") or "") or _status_code(status)
    raw_message = err.get("message")
    if not isinstance(raw_message, str):
        raw_message = err.get("error") if isinstance(err.get("error"), str) else ""
    parameter = _parameter(err.get("parameter"))
    normalized = dict(err)
    if "allowedValues" in normalized:
        normalized["allowedValues"] = _allowed_values(normalized["allowedValues"])
    cls = _class_for(code, status)
    owner = err.get("taskUUID") if isinstance(err.get("taskUUID"), str) else task_uuid
    message = _one_line(code, str(raw_message or ""), parameter, status)
    return _make(cls, message, code, status, owner, parameter, normalized, retry_after)


def _make(
    cls: type[ApiError],
    message: str,
    code: str,
    status: int | None,
    task_uuid: str | None,
    parameter: str | list[str] | None,
    body: dict[str, Any],
    retry_after: float | None,
) -> ApiError:
    if issubclass(cls, RateLimited):
        return cls(
            message,
            retry_after=retry_after,
            code=code,
            status=status,
            task_uuid=task_uuid,
            parameter=parameter,
            body=body,
        )
    return cls(
        message, code=code, status=status, task_uuid=task_uuid, parameter=parameter, body=body
    )


def _pick_error(body: Mapping[str, Any] | None, task_uuid: str | None) -> dict[str, Any] | None:
    """The error entry of a body: the one for `task_uuid` if present, else the first."""
    if not isinstance(body, Mapping):
        return None
    errors = body.get("errors")
    if isinstance(errors, dict):
        errors = [errors]
    if not isinstance(errors, list) or not errors:
        if "code" in body or isinstance(body.get("error"), dict):
            return _flatten_error(body)
        return None
    entries = [_flatten_error(e) for e in errors if isinstance(e, Mapping)]
    if not entries:
        return None
    for entry in entries:
        if task_uuid is not None and entry.get("taskUUID") == task_uuid:
            return entry
    return entries[0]


def _flatten_error(item: Mapping[str, Any]) -> dict[str, Any]:
    """A poll item `{status: error, error: {...}}` or an error entry as one flat dict."""
    flat = dict(item)
    nested = flat.pop("error", None)
    if isinstance(nested, Mapping):
        flat = {**flat, **nested}
    elif isinstance(nested, str) and "message" not in flat:
        flat["message"] = nested
    return flat


def is_not_found(code: str) -> bool:
    """Whether a `getResponse` error code says "no such task", exactly as Runware's SDK reads it.

    The SDK (runware-sdk 1.8, `derive_code`) maps `taskFailedOrNotFound`, `taskCancelled`,
    `unknownModel` and any code ending in `NotFound` or `Expired` to not-found, after its quota,
    rate-limit, safety, auth and timeout rules.
    """
    if not code or code in ("aborted", "paymentRequired", "quotaExceeded", "environmentPaused"):
        return False
    if any(w in code for w in ("Credits", "Quota", "Balance", "RateLimit")):
        return False
    if code == "rateLimitExceeded" or code in _SAFETY_CODES or code == "invalidProviderContent":
        return False
    if code in _SDK_AUTH_CODES or "ApiKey" in code or "Timeout" in code or code == "timeout":
        return False
    return code in _NOT_FOUND_CODES or code.endswith(("NotFound", "Expired"))


def _class_for(code: str, status: int | None) -> type[ApiError]:
    """By code first (as the official SDKs do), then by HTTP status."""
    low = code.lower()
    if "apikey" in low or code in _AUTH_CODES:
        return AuthError
    if any(w in low for w in ("credit", "balance", "quota")) or low == "paymentrequired":
        return CreditsError
    if code in _SAFETY_CODES:
        return SafetyError
    if code == "unknownModel" or low.startswith(_VALIDATION_PREFIXES):
        return RequestRejected
    if is_not_found(code):
        return NotFoundError
    if "ratelimit" in low:
        return RateLimited
    if "timeout" in low or code in _TRANSIENT_CODES:
        return TransientError
    if status is None or 200 <= status < 300:
        return ApiError
    if status in (401, 403):
        return AuthError
    if status == 402:
        return CreditsError
    if status == 429:
        return RateLimited
    if status == 408 or status >= 500:
        return TransientError
    if 400 <= status < 500:
        # A bare 404 (wrong URL) is NOT "task not found": that would license a re-submit.
        return RequestRejected
    return ApiError


def _status_code(status: int | None) -> str:
    if status is None:
        return "unknownError"
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    if status >= 500:
        return "serverError"
    return f"http{status}"


def _parameter(value: Any) -> str | list[str] | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        return [str(v) for v in value] or None
    return None


def _allowed_values(value: Any) -> Any:
    """Object keyed "0","1",… → list in numeric order; other objects and lists unchanged."""
    if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
        return [value[k] for k in sorted(value, key=lambda k: int(k))]
    return value


def _one_line(
    code: str, message: str, parameter: str | list[str] | None, status: int | None
) -> str:
    text = f"{code}: {message}" if message else code
    if parameter:
        text += f" [{', '.join(parameter) if isinstance(parameter, list) else parameter}]"
    if status is not None and not 200 <= status < 300:
        text += f" (HTTP {status})"
    return _snippet(text, 400)


def _snippet(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    base = time.time() if now is None else now
    return max(0.0, when.timestamp() - base)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _sniff_ext(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def _decode_data_uri(uri: str) -> tuple[bytes, str | None]:
    match = _DATA_URI_RE.match(uri)
    if match is None:
        raise ValueError("not a data URI")
    mime = (match.group(1) or "").lower()
    payload = uri[match.end() :]
    return base64.b64decode(payload, validate=False), _MIME_EXT.get(mime)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


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
    detail = _snippet(f"{type(exc).__name__}: {exc}", 240)
    return TransientError(f"{code}: {what}: {detail}", code=code)


def _by_task(
    body: Mapping[str, Any] | None, uuids: Sequence[str]
) -> tuple[dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]], list[dict[str, Any]]]:
    """Split a response into (items, errors) per taskUUID, plus errors owned by no listed task."""
    out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {u: ([], []) for u in uuids}
    unowned: list[dict[str, Any]] = []
    if not isinstance(body, Mapping):
        return out, unowned
    only = uuids[0] if len(uuids) == 1 else None
    data = body.get("data")
    if isinstance(data, dict):
        data = [data]
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        owner = item.get("taskUUID")
        if owner in out:
            out[owner][0].append(item)
        elif owner is None and only is not None:
            out[only][0].append(item)
    errors = body.get("errors")
    if isinstance(errors, dict):
        errors = [errors]
    for entry in errors if isinstance(errors, list) else []:
        if not isinstance(entry, dict):
            continue
        owner = entry.get("taskUUID")
        if owner in out:
            out[owner][1].append(entry)
        elif only is not None:
            out[only][1].append(entry)
        else:
            unowned.append(entry)
    return out, unowned


def _is_success(item: Mapping[str, Any]) -> bool:
    status = str(item.get("status") or "").lower()
    if status == "processing" or status == "pending":
        return False
    return status in ("success", "completed") or _has_image(item)


def _has_image(item: Mapping[str, Any], fields: Sequence[str] = IMAGE_FIELDS) -> bool:
    return any(isinstance(item.get(k), str) and item.get(k) for k in fields)


def _is_error(item: Mapping[str, Any]) -> bool:
    return str(item.get("status") or "").lower() == "error" or isinstance(item.get("error"), dict)


# ---------------------------------------------------------------------------------------------
# Transport


@dataclass
class _Response:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any] | None  # parsed JSON object; None when the body is not JSON
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))

    def error(self, task_uuid: str | None = None) -> ApiError:
        return classify(
            self.status,
            self.body,
            task_uuid=task_uuid,
            retry_after=self.retry_after,
            text=self.text,
        )


class _SendFailed(Exception):
    """A transport failure; `maybe_sent` says whether the server may have seen the request."""

    def __init__(self, error: TransientError, maybe_sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.maybe_sent = maybe_sent


class _Closed(Exception):
    """The client was closed while waiting."""


# ---------------------------------------------------------------------------------------------
# In-flight task state and the shared poll scheduler


class _Pending:
    """What is known so far about one task: finished items, errors, and poll bookkeeping."""

    def __init__(
        self, task_uuid: str, number_results: int, deadline: float, *, sync: bool = False
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
        self.accepted_at = time.monotonic()
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
            if _is_error(item):
                errs.append(item)
            elif _is_success(item):
                key = item.get("imageUUID") or item.get("resultIndex")
                if key is None:
                    key = json.dumps(item, sort_keys=True, default=str)
                self.items.setdefault(str(key), item)
            else:
                processing += 1
                value = _as_float(item.get("progress"))
                if value is not None:
                    progress = value if progress is None else max(progress, value)
        self.processing = processing
        self.progress = progress
        for entry in errs:
            err = classify(status, {"errors": [entry]}, task_uuid=self.task_uuid)
            key = json.dumps(_flatten_error(entry), sort_keys=True, default=str)
            self.errors.setdefault(key, err)

    @property
    def finished(self) -> bool:
        if self.fatal is not None or len(self.items) >= self.n:
            return True
        return bool(self.errors) and self.processing == 0

    def task_errors(self) -> list[ApiError]:
        return list(self.errors.values())


class _Poller:
    """One scheduler thread + a small worker pool polling every in-flight task of a Client."""

    def __init__(self, client: Client, workers: int, batch: bool) -> None:
        self._client = client
        self._batch = batch
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Pending]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._durations: deque[float] = deque(maxlen=32)
        self._tracked = 0
        self._probe_next = False  # the last probe found its task done: probe again
        self._progress_seen = False  # the server reports `progress` on processing items
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="krea-poll")
        self._thread = threading.Thread(target=self._run, name="krea-poll-scheduler", daemon=True)
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

    def first_delay(self, p: _Pending) -> float:
        """Submit → first poll: `first_poll_s` until a completion is seen, then ~the target.

        Every PROBE_EVERY-th task (and every task after a probe that found its task already
        done) is a probe, first polled at PROBE_AT × the target, so a falling latency is seen.
        """
        target = self._target()
        if target is None:
            p.canary = True
            return self._client.first_poll_s
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

    def _observe(self, p: _Pending, sent: float) -> None:
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
    def track(self, p: _Pending) -> None:
        """Start polling `p` (its first poll comes after the adaptive delay)."""
        p.interval = self.first_interval()
        self._schedule(p, max(time.monotonic(), p.accepted_at + self.first_delay(p)))

    def _schedule(self, p: _Pending, at: float) -> None:
        with self._cond:
            if self._stopped:
                p.fatal = p.fatal or TransientError("client closed", code="clientClosed")
                p.done.set()
                return
            heapq.heappush(self._heap, (at, next(self._seq), p))
            self._cond.notify()

    def _reschedule(self, p: _Pending, delay: float) -> None:
        now = time.monotonic()
        if now >= p.deadline:
            self._timeout(p)
            return
        self._schedule(p, min(now + delay, p.deadline))

    def _timeout(self, p: _Pending) -> None:
        waited = time.monotonic() - p.accepted_at
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
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if self._stopped:
                    return
                limit = time.monotonic() + 0.001
                due: list[_Pending] = []
                while self._heap and self._heap[0][0] <= limit:
                    p = heapq.heappop(self._heap)[2]
                    if not p.cancelled:
                        due.append(p)
            self._dispatch(due)

    def _dispatch(self, due: list[_Pending]) -> None:
        if self._batch:
            solo = [p for p in due if p.solo]
            grouped = [p for p in due if not p.solo]
            chunks = [[p] for p in solo] + [
                grouped[i : i + POLL_BATCH_MAX] for i in range(0, len(grouped), POLL_BATCH_MAX)
            ]
        else:
            chunks = [[p] for p in due]
        for chunk in chunks:
            try:
                self._executor.submit(self._poll_safely, chunk)
            except RuntimeError:  # executor shut down: the client is closing
                for p in chunk:
                    p.fatal = p.fatal or TransientError("client closed", code="clientClosed")
                    p.done.set()

    # polling -------------------------------------------------------------------------------
    def _poll_safely(self, batch: list[_Pending]) -> None:
        try:
            self._poll(batch)
        except Exception as exc:  # never leave a caller waiting forever
            log.exception("poll failed")
            for p in batch:
                if not p.done.is_set():
                    p.fatal = TransientError(f"pollFailed: {exc}", code="pollFailed")
                    p.done.set()

    def _poll(self, batch: list[_Pending]) -> None:
        if batch[0].via_details:
            self._poll_details(batch[0])
            return
        uuids = [p.task_uuid for p in batch]
        sent = time.monotonic()
        try:
            resp = self._client._post([{"taskType": "getResponse", "taskUUID": u} for u in uuids])
        except _SendFailed as failed:
            for p in batch:
                self._failed(p, failed.error, None)
            return
        except _Closed:
            for p in batch:
                p.fatal = TransientError("client closed", code="clientClosed")
                p.done.set()
            return
        self._client._count("polls", len(batch))
        if resp.ok and resp.body is None:
            err: ApiError = TransientError(
                f"badResponse: unreadable poll answer: {_snippet(resp.text)}", code="badResponse"
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
        per_task, _unowned = _by_task(resp.body, uuids)
        for p in batch:
            items, errors = per_task[p.task_uuid]
            if not resp.ok and not items and not errors:
                if len(batch) > 1:  # an error we cannot attribute: ask for this one alone
                    p.solo = True
                    self._reschedule(p, 0.0)
                    continue
                errors = [_error_entry(resp.error(p.task_uuid))]
            p.failures = 0
            p.empty_answers = 0 if items or errors else p.empty_answers + 1
            if not items and not errors:
                self._client._count("empty_polls")
            if p.sync and p.empty_answers >= EMPTY_ANSWERS_SYNC:
                # A known sync task whose result getResponse does not keep: getTaskDetails may.
                if self._client._details(p):
                    p.via_details = True
                    self._after_answer(p, sent)
                else:
                    p.fatal = _result_lost(p.task_uuid)
                    p.done.set()
                continue
            # An accepted async task answering nothing is still queued: it is polled on, with
            # backoff, until poll_timeout_s (never given up as lost).
            p.absorb(items, errors, None if resp.ok else resp.status)
            self._after_answer(p, sent)

    def _poll_details(self, p: _Pending) -> None:
        """One getTaskDetails poll of a task whose getResponse answers nothing."""
        sent = time.monotonic()
        try:
            found = self._client._details(p)
        except ApiError as err:
            self._failed(p, err, None)
            return
        if not found:
            p.fatal = _result_lost(p.task_uuid)
            p.done.set()
            return
        p.failures = 0
        self._after_answer(p, sent)

    def _after_answer(self, p: _Pending, sent: float) -> None:
        """After an answer was absorbed: wake the caller if finished, else schedule a poll."""
        if p.finished:
            if p.learn and p.items and not p.errors:
                self._observe(p, sent)
            p.done.set()
        else:
            p.last_pending_at = sent
            self._reschedule(p, self._next_delay(p, sent))

    def _next_delay(self, p: _Pending, sent: float) -> float:
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
            remaining = p.accepted_at + p.est_total - time.monotonic()
            delay = min(PREDICT_CAP_S, max(POLL_INTERVAL_MIN, remaining))
        else:
            p.est_total = None
        p.prev_progress = max(p.prev_progress, progress or 0.0)
        return delay

    def _failed(self, p: _Pending, err: ApiError, retry_after: float | None) -> None:
        p.failures += 1
        self._client._count("poll_retries")
        if p.failures > self._client.poll_failure_limit:
            p.fatal = TransientError(
                f"pollFailed: {p.failures} consecutive poll failures for task {p.task_uuid}: {err}",
                code=err.code or "pollFailed",
                task_uuid=p.task_uuid,
            )
            p.done.set()
            return
        delay = self._client._retry_delay(p.failures - 1, retry_after)
        self._reschedule(p, delay)

    def cancel(self, p: _Pending) -> None:
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
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._thread.join(timeout=5)


def _duration(seconds: float) -> float:
    """A duration clamped to [0, MAX_DURATION_S] (threading and sockets overflow on huge ones)."""
    if not seconds >= 0:  # NaN too
        return 0.0
    return min(float(seconds), MAX_DURATION_S)


def _result_lost(task_uuid: str) -> ApiError:
    return ApiError(
        f"resultLost: the server knows task {task_uuid} but returns no result (sync results are"
        " not kept); not re-submitted",
        code="resultLost",
        task_uuid=task_uuid,
    )


def _error_entry(err: ApiError) -> dict[str, Any]:
    entry = dict(err.body)
    entry.setdefault("code", err.code)
    entry.setdefault("message", str(err))
    if err.task_uuid:
        entry.setdefault("taskUUID", err.task_uuid)
    return entry


# ---------------------------------------------------------------------------------------------
# The client


class Client:
    """A thread-safe Runware client for one API key: prepare, generate, recover (see module doc)."""

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
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        pool_size: int = 32,
        first_poll_s: float = FIRST_POLL_S,
        settle_s: float = 2.0,
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
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        workers = max(2, min(8, pool_size // 4))
        self._poller = _Poller(self, workers, batch_polls)

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
            state = _Pending(task_uuid, n, deadline, sync=sync)
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
        state = _Pending(
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
        body = {k: v for k, v in prepared.items() if k not in ("taskType", "taskUUID")}
        task: dict[str, Any] = {"taskType": "imageInference", "taskUUID": task_uuid, **body}
        task["includeCost"] = True
        task.setdefault("deliveryMethod", self.delivery)
        task.setdefault("outputType", self.output_type)
        return task

    def _submit(
        self, task: dict[str, Any], state: _Pending, attempts: int, billed: list[bool]
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
            except _SendFailed as failed:
                self._count("retries_transport")
                last, wait, unknown = failed.error, None, failed.maybe_sent
                billed[0] = billed[0] or unknown
                log.info("submit %s failed (%s); sent=%s", task_uuid, last, unknown)
                continue
            except _Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if resp.ok and resp.body is not None:
                per_task, _ = _by_task(resp.body, [task_uuid])
                items, errors = per_task[task_uuid]
                billed[0] = True
                if not items and any(e.get("code") == "conflictTaskUUID" for e in errors):
                    return attempts, self._after_conflict(state)
                if not items and errors and not any(_is_error(e) for e in errors):
                    billed[0] = False  # rejected before acceptance (e.g. validation): not billed
                state.accepted_at = time.monotonic()
                state.absorb(items, errors)
                return attempts, False
            self._count("retries_status")
            if resp.ok:  # a 2xx we cannot read: the server may have accepted (and billed) it
                last = TransientError(
                    f"badResponse: unreadable submit answer: {_snippet(resp.text)}",
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

    def _after_conflict(self, state: _Pending) -> bool:
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
            raise _result_lost(state.task_uuid)
        if found == "gone":
            raise ApiError(
                f"taskGone: task {state.task_uuid} exists (conflictTaskUUID) but getResponse"
                " says it is not found; a new taskUUID is needed",
                code="taskGone",
                task_uuid=state.task_uuid,
            )
        return True  # answers nothing yet: queued; polled (empty answers are fine) until timeout

    def _settle(self, state: _Pending) -> bool:
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

    def _details(self, state: _Pending) -> bool:
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
            except _SendFailed as failed:
                last = failed.error
                continue
            except _Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if (resp.ok and resp.body is None) or (not resp.ok and resp.error().retryable):
                last = resp.error(task_uuid)
                continue
            if not resp.ok:
                err = resp.error(task_uuid)
                if err.code in ("unsupportedTaskType", "invalidTaskType") or resp.status == 404:
                    self._details_supported = False
                return False
            per_task, _ = _by_task(resp.body, [task_uuid])
            items: list[dict[str, Any]] = []
            errors: list[dict[str, Any]] = []
            for entry in per_task[task_uuid][0]:
                response = entry.get("response")
                inner, inner_errors = _by_task(
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

    def _lookup(self, state: _Pending) -> str:
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
            except _SendFailed as failed:
                last = failed.error
                continue
            except _Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if resp.ok and resp.body is None:
                last = TransientError(f"badResponse: {_snippet(resp.text)}", code="badResponse")
                continue
            if not resp.ok and resp.error().retryable:
                last, hint = resp.error(task_uuid), resp.retry_after
                continue
            per_task, _ = _by_task(resp.body, [task_uuid])
            items, errors = per_task[task_uuid]
            if not items:
                if not resp.ok and not errors:
                    err = resp.error(task_uuid)
                    if is_not_found(err.code or ""):
                        return "gone"
                    raise _with_task(err, task_uuid)
                codes = [str(_flatten_error(e).get("code") or "") for e in errors]
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

    def _await(self, state: _Pending) -> None:
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
        self, state: _Pending, task: Mapping[str, Any]
    ) -> tuple[list[ImageResult], list[ApiError]]:
        """Decode or download every finished item; errors for the ones that cannot be had."""
        images: list[ImageResult] = []
        errors: list[ApiError] = []
        fmt = _FORMAT_EXT.get(str(task.get("outputFormat") or "").upper())
        items = sorted(state.items.values(), key=_result_index)
        for item in items:
            try:
                images.append(self._image(item, state.task_uuid, fmt))
            except ApiError as err:
                errors.append(err)
        return images, errors

    def _image(self, item: dict[str, Any], task_uuid: str, fmt: str | None) -> ImageResult:
        image_uuid = str(item.get("imageUUID") or "")
        data, hint = self._image_bytes(item, task_uuid)
        ext = _sniff_ext(data) or hint or fmt or "jpg"
        nsfw = item.get("NSFWContent")
        return ImageResult(
            image_uuid=image_uuid,
            data=data,
            ext=ext,
            seed=_as_int(item.get("seed")),
            cost=_as_float(item.get("cost")),
            nsfw=nsfw if isinstance(nsfw, bool) else None,
            url=item.get("imageURL") if isinstance(item.get("imageURL"), str) else None,
        )

    def _image_bytes(self, item: dict[str, Any], task_uuid: str) -> tuple[bytes, str | None]:
        try:
            if isinstance(item.get("imageBase64Data"), str):
                return base64.b64decode(item["imageBase64Data"]), None
            if isinstance(item.get("imageDataURI"), str):
                return _decode_data_uri(item["imageDataURI"])
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
            return self._download(url), _url_ext(url)
        except ApiError as first:
            # The task succeeded: never re-submit. Ask getResponse for a fresh copy of the item.
            log.info("download of %s failed (%s); asking getResponse", url, first)
            fresh = self._refetch_item(task_uuid, str(item.get("imageUUID") or ""))
            if fresh is not None and _has_image(fresh, ("imageBase64Data", "imageDataURI")):
                return self._image_bytes(
                    {k: v for k, v in fresh.items() if k != "imageURL"}, task_uuid
                )
            new_url = None if fresh is None else fresh.get("imageURL")
            if isinstance(new_url, str):
                try:
                    return self._download(new_url), _url_ext(new_url)
                except ApiError:
                    pass
            raise _with_task(first, task_uuid) from None

    def _refetch_item(self, task_uuid: str, image_uuid: str) -> dict[str, Any] | None:
        probe = _Pending(task_uuid, 1, time.monotonic() + self.timeout_s)
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
                hint = parse_retry_after(resp.headers.get("Retry-After"))
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
        ext = _sniff_ext(data) or path.suffix.lower().lstrip(".")
        uri = f"data:{_EXT_MIME.get(ext, 'image/png')};base64,{base64.b64encode(data).decode()}"
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
            except _SendFailed as failed:
                last = failed.error
                continue
            except _Closed:
                raise TransientError("client closed", code="clientClosed") from None
            if resp.ok and resp.body is not None:
                per_task, _ = _by_task(resp.body, [task["taskUUID"]])
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
    def _post(self, tasks: list[dict[str, Any]]) -> _Response:
        """One POST of a JSON array of tasks; raises _SendFailed on transport failure."""
        if self._closed.is_set():
            raise _Closed()
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
                raise _Closed() from exc
            kinds = ",".join(sorted({str(t.get("taskType")) for t in tasks}))
            raise _SendFailed(_transport_error(exc, f"POST {kinds}"), _maybe_sent(exc)) from exc
        text = resp.text
        body: dict[str, Any] | None = None
        if text.strip():
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
            elif isinstance(parsed, list):
                body = {"data": parsed}
        return _Response(resp.status_code, resp.headers, body, text)

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


def _result_index(item: Mapping[str, Any]) -> int:
    index = _as_int(item.get("resultIndex"))
    return index if index is not None else 1 << 30


def _url_ext(url: str) -> str | None:
    tail = url.split("?", 1)[0].rsplit("/", 1)[-1]
    ext = tail.rsplit(".", 1)[-1].lower() if "." in tail else ""
    return {"jpeg": "jpg"}.get(ext, ext) if ext in ("jpg", "jpeg", "png", "webp") else None


def _with_task(err: ApiError, task_uuid: str) -> ApiError:
    if err.task_uuid is None:
        err.task_uuid = task_uuid
    return err
