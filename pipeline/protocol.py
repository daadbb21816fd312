"""Runware's wire protocol as pure data: request fields, answer parsing and error classification.

No HTTP, no threads, no clock (a caller passes `now`): `pipeline.client` sends, `pipeline.poller`
schedules, and both read every answer through the functions here. The rules follow Runware's
docs and its SDKs (runware-protocol.md): an error is classified by its code first, then by HTTP
status; "not found" is exactly what Runware's SDK reads as not found (`is_not_found`).
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from types import MappingProxyType
from typing import Any

from pipeline.errors import (
    ApiError,
    AuthError,
    CreditsError,
    NotFoundError,
    RateLimited,
    RequestRejected,
    SafetyError,
    TransientError,
)

DELIVERY_METHODS = ("async", "sync")
OUTPUT_TYPES = ("base64Data", "dataURI", "URL")
IMAGE_FIELDS = ("imageBase64Data", "imageDataURI", "imageURL")
TASK_TYPE = "imageInference"
# The fields the client sets on every attempt of an inference task, never a sweep's to set, with
# why (the sweep loader's message): the one list the sweep, the schema and krea-reproduce use.
CLIENT_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "taskType": "krea-sweep always sends taskType imageInference",
        "taskUUID": "per-attempt: krea-sweep sets a fresh taskUUID for every attempt",
        "includeCost": "krea-sweep always sends includeCost: true",
        "deliveryMethod": "krea-sweep sets the delivery method (api.delivery), not the sweep",
    }
)
# Fields the client sets on every attempt unless the request does (a sweep may choose them).
CLIENT_DEFAULTS = ("outputType",)

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
# Codes that stop a run (the key, token or account is not usable): the SDK's auth codes but a
# timeout of the auth handshake, which is transient.
_AUTH_CODES = _SDK_AUTH_CODES - {"authTimeout"}
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
FORMAT_EXT = {"JPG": "jpg", "JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def inference_task(
    request: Mapping[str, Any], task_uuid: str, *, delivery: str, output_type: str
) -> dict[str, Any]:
    """The imageInference task of one attempt: `request` with CLIENT_FIELDS and CLIENT_DEFAULTS."""
    body = {k: v for k, v in request.items() if k not in ("taskType", "taskUUID")}
    task: dict[str, Any] = {"taskType": TASK_TYPE, "taskUUID": task_uuid, **body}
    task["includeCost"] = True
    task.setdefault("deliveryMethod", delivery)
    task.setdefault("outputType", output_type)
    return task


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
        shown = snippet(text or "")
        message = f"non-JSON response: {shown}" if shown else "empty response body"
        if status is not None and 200 <= status < 300 and body is not None:
            message = "response without data or errors"
        cls = _class_for(code, status)
        extra: dict[str, Any] = {"text": shown} if shown else {}
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
            return flatten_error(body)
        return None
    entries = [flatten_error(e) for e in errors if isinstance(e, Mapping)]
    if not entries:
        return None
    for entry in entries:
        if task_uuid is not None and entry.get("taskUUID") == task_uuid:
            return entry
    return entries[0]


def flatten_error(item: Mapping[str, Any]) -> dict[str, Any]:
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
    return snippet(text, 400)


def snippet(text: str, limit: int = 200) -> str:
    """`text` on one line, at most `limit` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds (delta-seconds, or an HTTP date seen at epoch time `now`); None
    when absent or unreadable."""
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
    return max(0.0, when.timestamp() - now)


# ---------------------------------------------------------------------------------------------
# Small helpers


def sniff_ext(data: bytes) -> str | None:
    """The image type of `data` from its magic bytes ("png", "jpg", …), or None."""
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


def decode_data_uri(uri: str) -> tuple[bytes, str | None]:
    """A data URI's bytes and the extension of its MIME type (None if unknown)."""
    match = _DATA_URI_RE.match(uri)
    if match is None:
        raise ValueError("not a data URI")
    mime = (match.group(1) or "").lower()
    payload = uri[match.end() :]
    return base64.b64decode(payload, validate=False), _MIME_EXT.get(mime)


def as_int(value: Any) -> int | None:
    """An int from an int or a digit string (never a bool); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def as_float(value: Any) -> float | None:
    """A float from a number or a numeric string (never a bool); else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def by_task(
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


def is_success(item: Mapping[str, Any]) -> bool:
    """Whether a result item is finished (status success/completed, or it carries an image)."""
    status = str(item.get("status") or "").lower()
    if status == "processing" or status == "pending":
        return False
    return status in ("success", "completed") or has_image(item)


def has_image(item: Mapping[str, Any], fields: Sequence[str] = IMAGE_FIELDS) -> bool:
    """Whether a result item carries image data in one of `fields`."""
    return any(isinstance(item.get(k), str) and item.get(k) for k in fields)


def is_error(item: Mapping[str, Any]) -> bool:
    """Whether a result item reports an error (status error, or an `error` object)."""
    return str(item.get("status") or "").lower() == "error" or isinstance(item.get("error"), dict)


@dataclass
class Answer:
    """One HTTP answer as the protocol reads it (the client parses it; the poller reads it)."""

    status: int
    body: dict[str, Any] | None  # parsed JSON object; None when the body is not JSON
    text: str
    retry_after: float | None = None  # the Retry-After header, in seconds

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self, task_uuid: str | None = None) -> ApiError:
        return classify(
            self.status,
            self.body,
            task_uuid=task_uuid,
            retry_after=self.retry_after,
            text=self.text,
        )


def parse_body(text: str) -> dict[str, Any] | None:
    """A response body as a JSON object (a bare array becomes {"data": [...]}); else None."""
    if not text.strip():
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if isinstance(parsed, dict):
        return parsed
    if isinstance(parsed, list):
        return {"data": parsed}
    return None


def result_lost(task_uuid: str) -> ApiError:
    """The error of a known sync task whose result the server does not keep."""
    return ApiError(
        f"resultLost: the server knows task {task_uuid} but returns no result (sync results are"
        " not kept); not re-submitted",
        code="resultLost",
        task_uuid=task_uuid,
    )


def error_entry(err: ApiError) -> dict[str, Any]:
    """An ApiError as an `errors` entry of an answer (for a task's error list)."""
    entry = dict(err.body)
    entry.setdefault("code", err.code)
    entry.setdefault("message", str(err))
    if err.task_uuid:
        entry.setdefault("taskUUID", err.task_uuid)
    return entry


def result_index(item: Mapping[str, Any]) -> int:
    """A result item's `resultIndex` for sorting (items without one last)."""
    index = as_int(item.get("resultIndex"))
    return index if index is not None else 1 << 30


def url_ext(url: str) -> str | None:
    """The image extension an image URL ends with ("jpg", "png", "webp"), or None."""
    tail = url.split("?", 1)[0].rsplit("/", 1)[-1]
    ext = tail.rsplit(".", 1)[-1].lower() if "." in tail else ""
    return {"jpeg": "jpg"}.get(ext, ext) if ext in ("jpg", "jpeg", "png", "webp") else None


def encode_data_uri(data: bytes, fallback_ext: str) -> str:
    """`data` as a base64 data URI, its type sniffed (else taken from `fallback_ext`)."""
    ext = sniff_ext(data) or fallback_ext
    return f"data:{_EXT_MIME.get(ext, 'image/png')};base64,{base64.b64encode(data).decode()}"
