"""The Runware-compatible HTTP server: routing, tasks, delivery, billing and fault injection.

State lives in `Emulator`; `_Handler` only speaks HTTP. A POST is a JSON array of tasks, each
answered on its own (errors are scoped per task). Accepted `imageInference` tasks are billed at
acceptance (ledger line written then), keep their taskUUID forever (a second submission is a
`conflictTaskUUID`), and become finished `latency_s` after acceptance. Images are not stored:
each result keeps a small `RenderSpec`, and bytes are rendered on demand through a bounded LRU, so
the same result is always the same bytes and memory stays flat over long runs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import math
import random
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from pipeline import models
from pipeline.emulator import media
from pipeline.emulator.faults import Fault, FaultInjector
from pipeline.emulator.ledger import Ledger
from pipeline.emulator.painter import (
    RGB,
    ImageCache,
    RenderSpec,
    average_colour,
    content_type,
    extension,
)
from pipeline.emulator.rules import TaskError, task_error, validate_inference
from pipeline.pricing import load_price_table, unit_price
from pipeline.settings import CREDITS_STATUS, FAULT_NAMES, REPEATED_TASK, UNKNOWN_TASK

log = logging.getLogger("pipeline.emulator")

DEFAULT_STRENGTH = 0.7
DEFAULT_CREATIVITY = "medium"
MAX_BODY_BYTES = 64 * 1024 * 1024
SEED_LIMIT = 2**63
DELIVERY_TIMEOUT_S = 5.0
_IMAGE_PATH = re.compile(r"^/images/([0-9a-fA-F-]{36})\.([a-z]{3,4})$")
_TASK_TYPES = ("imageInference", "getResponse", "getTaskDetails", "imageUpload", "authentication")
_sysrand = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class _Image:
    image_uuid: str
    seed: int
    spec: RenderSpec


@dataclass(slots=True)
class _Inference:
    task_uuid: str
    delivery: str  # "sync" | "async"
    accepted_at: float
    ready_at: float
    images: list[_Image]
    unit_cost: float
    include_cost: bool
    nsfw_check: bool
    output_type: str
    webhook_url: str | None = None
    upload_endpoint: str | None = None
    polls: int = 0  # getResponse calls answered so far (the first `queued_polls` say nothing)
    request: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Upload:
    task_uuid: str
    image_uuid: str
    data: bytes
    digest: str
    colour: RGB
    ext: str
    mime: str


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes = b""
    ctype: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, payload: dict[str, Any], **headers: str) -> _Reply:
    return _Reply(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)


def _plain_error(status: int, code: str, message: str) -> _Reply:
    return _json_reply(status, {"errors": [{"code": code, "message": message}]})


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Emulator:
    """A Runware-compatible server for every registered model, on loopback (see the package doc)."""

    def __init__(
        self,
        port: int = 0,
        *,
        latency_s: float = 0.0,
        faults: dict[str, float] | None = None,
        ledger: Path | None = None,
        api_key: str | None = None,
        credits: float | None = None,
        fault_seed: int | None = None,
        host: str = "127.0.0.1",
        stall_s: float = 30.0,
        fault_accept: float = 0.5,
        latency_sigma: float = 0.0,
        unknown_task: str = "taskFailedOrNotFound",
        queued_polls: int = 0,
        repeated_task: str = "conflict",
        sync_pollable: bool = False,
        task_details: bool = True,
        credits_status: int = 402,
        price_factor: float = 1.0,
    ) -> None:
        if not media.is_loopback_host(host):
            raise ValueError(f"the emulator only binds loopback addresses, not {host!r}")
        if latency_s < 0 or latency_sigma < 0:
            raise ValueError("latency_s and latency_sigma must be ≥ 0")
        if unknown_task not in UNKNOWN_TASK:
            raise ValueError(f"unknown_task must be one of {', '.join(UNKNOWN_TASK)}")
        if repeated_task not in REPEATED_TASK:
            raise ValueError(f"repeated_task must be one of {', '.join(REPEATED_TASK)}")
        if credits_status not in CREDITS_STATUS:
            raise ValueError("credits_status must be 402 or 400")
        if queued_polls < 0 or not price_factor > 0:
            raise ValueError("queued_polls must be ≥ 0 and price_factor > 0")
        self.latency_sigma = float(latency_sigma)
        self.unknown_task = unknown_task
        self.queued_polls = int(queued_polls)
        self.repeated_task = repeated_task
        self.sync_pollable = bool(sync_pollable)
        self.task_details = bool(task_details)
        self.credits_status = int(credits_status)
        self.price_factor = float(price_factor)
        self._latency_rng = random.Random(None if fault_seed is None else fault_seed + 2)
        self.host = "127.0.0.1" if host.lower().startswith("localhost") else host.strip("[]")
        self.port = port
        self.latency_s = float(latency_s)
        self.api_key = api_key
        self.stall_s = float(stall_s)
        self._faults = FaultInjector(faults, fault_seed)
        self._fault_accept = fault_accept
        self._accept_rng = random.Random(None if fault_seed is None else fault_seed + 1)
        self._ledger = Ledger(ledger, credits)
        self._prices = load_price_table()
        self._cache = ImageCache()
        self._lock = threading.Lock()
        self._tasks: dict[str, _Inference | _Upload] = {}
        self._images: dict[str, _Image] = {}
        self._uploads: dict[str, _Upload] = {}
        self._colours: dict[str, RGB] = {}
        self._stats: Counter[str] = Counter()
        for key in (
            "posts",
            "gets",
            "accepted",
            "rejected",
            "images_billed",
            "webhooks",
            "uploads",
            "deliveries_skipped",
            "deliveries_failed",
            "charged_again",
            "replayed",
        ):
            self._stats[key] = 0
        for task_type in (*_TASK_TYPES, "other"):
            self._stats[f"tasks.{task_type}"] = 0
        for kind in FAULT_NAMES:
            self._stats[f"faults.{kind}"] = 0
        self._stats["faults.disconnect.accepted"] = 0
        self._stats["faults.stall.accepted"] = 0
        self._stats["polls_queued"] = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._deliverer = _Deliverer(self._stopping)
        self._origin = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Serve in a daemon thread; return the base URL "http://127.0.0.1:PORT/v1"."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _Server((self.host, self.port), self)
        self.port = int(self._server.server_address[1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self._origin = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._deliverer.start()
        log.info("emulator serving %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        """Stop serving: close every connection, abort stalls and waits, end the threads."""
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._deliverer.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("emulator stopped")

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The API endpoint, "http://127.0.0.1:PORT/v1" (after start)."""
        if not self._origin:
            raise RuntimeError("emulator not started")
        return f"{self._origin}/v1"

    # ------------------------------------------------------------------ inspection

    def set_faults(self, faults: dict[str, float] | None) -> None:
        """Change the fault rates of a running emulator (e.g. {} to heal it)."""
        self._faults.set_rates(faults)

    def queue_faults(self, kinds: list[str]) -> None:
        """Inject exactly these faults on the next POSTs, in order (deterministic tests)."""
        self._faults.queue(kinds)

    def ledger_entries(self) -> list[dict[str, Any]]:
        """Every billed image so far (one dict per image, as written to the ledger file)."""
        return self._ledger.entries()

    def stats(self) -> dict[str, int]:
        """Counters: posts, gets, tasks.<taskType>, faults.<kind>, accepted, images_billed, …"""
        with self._lock:
            return dict(self._stats)

    def credits_left(self) -> float | None:
        """Remaining credits in USD (None when unlimited)."""
        return self._ledger.balance()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    # ------------------------------------------------------------------ POST

    def serve_post(self, body: bytes, authorization: str | None) -> _Reply | None:
        """Answer one POST to /v1; None means: close the connection without a response."""
        self._count("posts")
        fault = self._faults.draw()
        if fault is None:
            return self._process(body, authorization, wait=True)
        self._count(f"faults.{fault.kind}")
        if fault.kind in ("accepted_500", "accepted_disconnect"):
            log.info("injected fault %s (tasks accepted first)", fault.kind)
            self._process(body, authorization, wait=False)
            if fault.kind == "accepted_disconnect":
                return None
            return _plain_error(500, "internalServerError", "An internal server error occurred.")
        if fault.kind in ("disconnect", "stall"):
            accepted = self._accept_rng.random() < self._fault_accept
            return self._drop_or_stall(fault, accepted, body, authorization)
        log.info("injected fault %s", fault.kind)
        return _fault_reply(fault)

    def _drop_or_stall(
        self, fault: Fault, accepted: bool, body: bytes, authorization: str | None
    ) -> _Reply | None:
        if accepted:
            self._count(f"faults.{fault.kind}.accepted")
        log.info("injected fault %s (tasks accepted: %s)", fault.kind, accepted)
        if fault.kind == "disconnect":
            if accepted:
                self._process(body, authorization, wait=False)
            return None
        reply = self._process(body, authorization, wait=True) if accepted else None
        if self._stopping.wait(self.stall_s):
            return None
        return reply

    def _process(self, body: bytes, authorization: str | None, *, wait: bool) -> _Reply | None:
        try:
            tasks = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error_reply(task_error(400, "invalidPayload", "The body is not valid JSON."))
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            return _error_reply(
                task_error(
                    400,
                    "invalidPayload",
                    "The body must be a non-empty JSON array of task objects.",
                )
            )
        auth_failure = self._check_auth(tasks, authorization)
        if auth_failure is not None:
            return _error_reply(auth_failure)

        slots: list[list[dict[str, Any]] | _Inference] = []
        errors: list[TaskError] = []
        for task in tasks:
            task_type = task.get("taskType")
            known = task_type if task_type in _TASK_TYPES else "other"
            self._count(f"tasks.{known}")
            try:
                slots.append(self._run_task(task, alone=len(tasks) == 1))
            except TaskError as exc:
                self._count("rejected")
                errors.append(exc)
        pending = [s for s in slots if isinstance(s, _Inference)]
        if pending and wait:
            delay = max(s.ready_at for s in pending) - time.monotonic()
            if delay > 0 and self._stopping.wait(delay):
                return None
        data: list[dict[str, Any]] = []
        for slot in slots:
            if isinstance(slot, _Inference):
                data.extend(self._result_item(slot, image, status=False) for image in slot.images)
            else:
                data.extend(slot)
        if errors and not slots:
            first = errors[0]
            return _json_reply(first.status, {"errors": [e.error for e in errors]})
        payload: dict[str, Any] = {"data": data}
        if errors:
            payload["errors"] = [e.error for e in errors]
        return _json_reply(200, payload)

    def _check_auth(
        self, tasks: list[dict[str, Any]], authorization: str | None
    ) -> TaskError | None:
        keys: list[str] = []
        if authorization and authorization.lower().startswith("bearer "):
            keys.append(authorization[7:].strip())
        if tasks[0].get("taskType") == "authentication" and isinstance(tasks[0].get("apiKey"), str):
            keys.append(tasks[0]["apiKey"])
        keys = [k for k in keys if k]
        if not keys:
            return task_error(
                401,
                "missingApiKey",
                "Missing API key: send 'Authorization: Bearer <key>' or an "
                "authentication task first.",
            )
        if self.api_key is not None and self.api_key not in keys:
            message = "Invalid API key. Get one at https://my.runware.ai/signup."
            return task_error(401, "invalidApiKey", message)
        return None

    def _run_task(self, task: dict[str, Any], *, alone: bool) -> list[dict[str, Any]] | _Inference:
        task_type = task.get("taskType")
        if task_type == "imageInference":
            job = self._accept_inference(task)
            if job.delivery == "async":
                return [{"taskType": "imageInference", "taskUUID": job.task_uuid}]
            return job
        if task_type == "getResponse":
            return self._get_response(task)
        if task_type == "getTaskDetails" and self.task_details:
            return self._get_task_details(task)
        if task_type == "imageUpload":
            return self._upload(task)
        if task_type == "authentication":
            if alone:
                return [{"taskType": "authentication", "connectionSessionUUID": str(uuid.uuid4())}]
            return []
        raise task_error(
            400,
            "unsupportedTaskType",
            f"Unsupported taskType {task_type!r} on this server.",
            task,
            parameter="taskType",
            allowedValues=list(_TASK_TYPES),
        )

    # ------------------------------------------------------------------ imageInference

    def _accept_inference(self, task: dict[str, Any]) -> _Inference:
        validate_inference(task)
        task_uuid = str(task["taskUUID"])
        with self._lock:
            earlier = self._tasks.get(task_uuid)
        if earlier is not None and self.repeated_task != "charge":
            if self.repeated_task == "conflict" or not isinstance(earlier, _Inference):
                raise _conflict(task)
            self._count("replayed")  # replay: answered as the first submit was, billed once
            return earlier
        refs = self._resolve_refs(task)
        count = int(task.get("numberResults", 1))
        base_seed = int(task["seed"]) if "seed" in task else _sysrand.getrandbits(32)
        settings = task.get("settings") or {}
        creativity = str(settings.get("creativity", DEFAULT_CREATIVITY))
        unit = round(unit_price(task, self._prices) * self.price_factor, 6)
        images: list[_Image] = []
        for i in range(count):
            seed = (base_seed + i) % SEED_LIMIT
            spec = RenderSpec(
                width=int(task["width"]),
                height=int(task["height"]),
                prompt=str(task["positivePrompt"]),
                seed=seed,
                creativity=creativity,
                tag=models.get(task["model"]).card_tag,
                refs=refs,
                moodboards=len(settings.get("moodboards") or []),
                fmt=str(task.get("outputFormat", "JPG")),
                quality=int(task.get("outputQuality", 95)),
            )
            images.append(_Image(str(uuid.uuid4()), seed, spec))
        now = time.monotonic()
        latency = self.latency_s
        if self.latency_sigma > 0 and latency > 0:
            with self._lock:
                latency *= math.exp(self._latency_rng.gauss(0.0, self.latency_sigma))
        inference = _Inference(
            task_uuid=task_uuid,
            delivery=str(task.get("deliveryMethod", "sync")),
            accepted_at=now,
            ready_at=now + latency,
            request={k: v for k, v in task.items() if k not in ("inputs",)},
            images=images,
            unit_cost=unit,
            include_cost=task.get("includeCost") is True,
            nsfw_check=(task.get("safety") or {}).get("checkContent") is True,
            output_type=str(task.get("outputType", "URL")),
            webhook_url=self._delivery_target(task, "webhookURL"),
            upload_endpoint=self._delivery_target(task, "uploadEndpoint"),
        )
        at = _utc_now()
        entries = [
            {
                "taskUUID": task_uuid,
                "imageUUID": img.image_uuid,
                "positivePrompt": img.spec.prompt,
                "seed": img.seed,
                "width": img.spec.width,
                "height": img.spec.height,
                "creativity": creativity,
                "reference_count": len(refs),
                "cost": unit,
                "at": at,
                "latency_s": round(latency, 6),
            }
            for img in images
        ]
        with self._lock:
            again = task_uuid in self._tasks
            if again and self.repeated_task != "charge":
                raise _conflict(task)
            if not self._ledger.charge(entries):
                raise task_error(
                    self.credits_status,
                    "insufficientCredits",
                    "Insufficient credits, please add your credit card and top-up your balance.",
                    task,
                )
            self._tasks[task_uuid] = inference
            for img in images:
                self._images[img.image_uuid] = img
            self._stats["accepted"] += 1
            self._stats["images_billed"] += count
            if again:
                self._stats["charged_again"] += 1
        if inference.webhook_url or inference.upload_endpoint:
            self._deliverer.schedule(inference.ready_at, lambda: self._deliver(inference))
        return inference

    def _delivery_target(self, task: dict[str, Any], key: str) -> str | None:
        url = task.get(key)
        if not isinstance(url, str):
            return None
        if media.is_loopback_url(url):
            return url
        log.warning("%s %s is not a loopback address: the emulator does not call it", key, url)
        self._count("deliveries_skipped")
        return None

    def _resolve_refs(self, task: dict[str, Any]) -> tuple[tuple[float, RGB], ...]:
        refs = (task.get("inputs") or {}).get("referenceImages") or []
        resolved: list[tuple[float, RGB]] = []
        for i, ref in enumerate(refs):
            if isinstance(ref, str):
                value, strength, where = ref, DEFAULT_STRENGTH, f"inputs.referenceImages[{i}]"
            else:
                value = ref["image"]
                strength = float(ref.get("strength", DEFAULT_STRENGTH))
                where = f"inputs.referenceImages[{i}].image"
            try:
                colour = self._image_colour(value)
            except media.BadImage as exc:
                raise task_error(
                    400,
                    "invalidReferenceImage",
                    f"Invalid value for 'referenceImages' parameter. Reference image {i}: {exc}.",
                    task,
                    parameter=where,
                ) from None
            resolved.append((strength, colour))
        return tuple(resolved)

    def _image_colour(self, value: str) -> RGB:
        """Average colour of an image input; raises media.BadImage when it cannot be used."""
        if media.UUID_RE.match(value):
            upload = self._uploads.get(value)
            if upload is not None:
                return upload.colour
            image = self._images.get(value)
            if image is None:
                raise media.BadImage(f"image UUID {value} is unknown (upload it with imageUpload)")
            value = f"{self._origin}/images/{value}.{extension(image.spec.fmt)}"
        key = hashlib.sha256(value.encode()).hexdigest()
        cached = self._colours.get(key)
        if cached is not None:
            return cached
        if media.is_url(value) and not media.is_loopback_url(value):
            log.info("reference URL %s is not loopback: not fetched", value[:80])
            digest = bytes.fromhex(key)
            colour: RGB = (digest[0], digest[1], digest[2])
        else:
            data = self._fetch_input(value)
            colour = average_colour(media.open_image(data))
        with self._lock:
            if len(self._colours) > 4096:
                self._colours.clear()
            self._colours[key] = colour
        return colour

    def _fetch_input(self, value: str) -> bytes:
        """Bytes of an image input: own URLs read directly, loopback URLs fetched, else inline."""
        if not media.is_url(value):
            return media.decode_inline(value)
        own = self._own_image(value)
        return own if own is not None else media.fetch_loopback(value)

    def _own_image(self, url: str) -> bytes | None:
        parts = urlsplit(url)
        match = _IMAGE_PATH.match(parts.path)
        if not match or parts.port != self.port or not media.is_loopback_host(parts.hostname):
            return None
        found = self.image_bytes(match.group(1), match.group(2))
        return None if found is None else found[0]

    def _result_item(self, job: _Inference, image: _Image, *, status: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"taskType": "imageInference", "taskUUID": job.task_uuid}
        if status:
            item["status"] = "success"
        item["imageUUID"] = image.image_uuid
        fmt = image.spec.fmt
        if job.output_type == "URL":
            item["imageURL"] = f"{self._origin}/images/{image.image_uuid}.{extension(fmt)}"
        else:
            b64 = base64.b64encode(self._cache.get(image.spec)).decode("ascii")
            if job.output_type == "dataURI":
                item["imageDataURI"] = f"data:{content_type(fmt)};base64,{b64}"
            else:
                item["imageBase64Data"] = b64
        item["seed"] = image.seed
        if job.include_cost:
            item["cost"] = job.unit_cost
        if job.nsfw_check:
            item["NSFWContent"] = False
        return item

    # ------------------------------------------------------------------ getResponse

    def _get_response(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        task_uuid = _task_uuid(task)
        with self._lock:
            record = self._tasks.get(task_uuid)
        if record is None:
            return self._unknown_task(task, task_uuid)
        if isinstance(record, _Upload):
            return [
                {
                    "taskType": "imageUpload",
                    "taskUUID": task_uuid,
                    "status": "success",
                    "imageUUID": record.image_uuid,
                }
            ]
        if record.delivery != "async" and not self.sync_pollable:
            return []  # like Runware (a live note): results of sync tasks are not kept for polling
        with self._lock:
            record.polls += 1
            queued = record.polls <= self.queued_polls
            if queued:
                self._stats["polls_queued"] += 1
        if queued:
            return []  # still queued: some servers say nothing about a task until it starts
        return self._status_items(record)

    def _status_items(self, record: _Inference) -> list[dict[str, Any]]:
        """getResponse items of a task: its finished images, else one processing item each."""
        task_uuid = record.task_uuid
        now = time.monotonic()
        if now >= record.ready_at:
            return [self._result_item(record, image, status=True) for image in record.images]
        span = max(record.ready_at - record.accepted_at, 1e-9)
        progress = min(99, int(100 * (now - record.accepted_at) / span))
        return [
            {
                "taskType": "imageInference",
                "taskUUID": task_uuid,
                "status": "processing",
                "progress": progress,
            }
            for _ in record.images
        ]

    def _unknown_task(self, task: dict[str, Any], task_uuid: str) -> list[dict[str, Any]]:
        """The answer about a taskUUID this server never accepted (`unknown_task` decides)."""
        if self.unknown_task == "empty":
            return []
        messages = {
            "taskFailedOrNotFound": "it was never accepted, or it failed",
            "taskNotFound": "no such task",
            "taskExpired": "the task is unknown or its results expired",
        }
        raise task_error(
            400,
            self.unknown_task,
            f"No task found for taskUUID {task_uuid}: {messages[self.unknown_task]}.",
            task,
            parameter="taskUUID",
        )

    def _get_task_details(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """Runware's documented getTaskDetails: the task's request and its response so far."""
        task_uuid = _task_uuid(task)
        with self._lock:
            record = self._tasks.get(task_uuid)
        if not isinstance(record, _Inference):
            self._unknown_task(task, task_uuid)
            return []
        return [
            {
                "taskType": "getTaskDetails",
                "taskUUID": task_uuid,
                "request": [record.request],
                "response": {"data": self._status_items(record)},
            }
        ]

    # ------------------------------------------------------------------ imageUpload

    def _upload(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        task_uuid = _task_uuid(task)
        value = task.get("image")
        if not isinstance(value, str) or not value:
            raise task_error(
                400, "missingImage", "Missing required parameter 'image'.", task, parameter="image"
            )
        try:
            if media.is_url(value) and not media.is_loopback_url(value):
                raise media.BadImage("the emulator only downloads loopback URLs")
            data = self._fetch_input(value)
            image = media.open_image(data)
        except media.BadImage as exc:
            raise task_error(
                400,
                "invalidImage",
                f"Invalid value for 'image' parameter: {exc}.",
                task,
                parameter="image",
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        fmt = (image.format or "PNG").upper()
        ext = {"JPEG": "jpg"}.get(fmt, fmt.lower())
        with self._lock:
            earlier = self._tasks.get(task_uuid)
            if earlier is not None:
                if isinstance(earlier, _Upload) and earlier.digest == digest:
                    upload = earlier  # the same upload resent: answer as before
                else:
                    raise _conflict(task)
            else:
                upload = _Upload(
                    task_uuid,
                    str(uuid.uuid4()),
                    data,
                    digest,
                    average_colour(image),
                    ext,
                    _mime(fmt),
                )
                self._tasks[task_uuid] = upload
                self._uploads[upload.image_uuid] = upload
                self._stats["accepted"] += 1
        return [{"taskType": "imageUpload", "taskUUID": task_uuid, "imageUUID": upload.image_uuid}]

    # ------------------------------------------------------------------ GET, delivery

    def serve_get(self, path: str) -> _Reply:
        """Answer a GET: the bytes of /images/<imageUUID>.<ext>, else 404."""
        self._count("gets")
        match = _IMAGE_PATH.match(path)
        found = self.image_bytes(match.group(1), match.group(2)) if match else None
        if found is None:
            return _plain_error(404, "notFound", f"Nothing at {path}.")
        return _Reply(200, found[0], ctype=found[1])

    def image_bytes(self, image_uuid: str, ext: str) -> tuple[bytes, str] | None:
        """Bytes and content type of a generated or uploaded image, or None."""
        image = self._images.get(image_uuid)
        if image is not None:
            if ext != extension(image.spec.fmt):
                return None
            return self._cache.get(image.spec), content_type(image.spec.fmt)
        upload = self._uploads.get(image_uuid)
        if upload is not None and ext in (upload.ext, "jpeg" if upload.ext == "jpg" else ""):
            return upload.data, upload.mime
        return None

    def _deliver(self, job: _Inference) -> None:
        for image in job.images:
            if self._stopping.is_set():
                return
            if job.webhook_url:
                body = json.dumps({"data": [self._result_item(job, image, status=True)]}).encode()
                self._send(job.webhook_url, "POST", body, "application/json", "webhooks")
            if job.upload_endpoint:
                data = self._cache.get(image.spec)
                self._send(
                    job.upload_endpoint, "PUT", data, content_type(image.spec.fmt), "uploads"
                )

    def _send(self, url: str, method: str, body: bytes, ctype: str, counter: str) -> None:
        request = urllib.request.Request(
            url, data=body, method=method, headers={"Content-Type": ctype}
        )
        try:
            with media.OPENER.open(request, timeout=DELIVERY_TIMEOUT_S) as response:
                response.read()
            self._count(counter)
        except OSError as exc:
            self._count("deliveries_failed")
            log.warning("%s %s failed: %s", method, url, exc)


def _mime(fmt: str) -> str:
    """MIME type of a Pillow format name."""
    return {
        "JPEG": "image/jpeg",
        "PNG": "image/png",
        "WEBP": "image/webp",
        "GIF": "image/gif",
        "BMP": "image/bmp",
    }.get(fmt, "application/octet-stream")


def _conflict(task: dict[str, Any]) -> TaskError:
    return task_error(
        400,
        "conflictTaskUUID",
        f"Task UUID {task.get('taskUUID')} was already used by an accepted task; "
        "send a new UUID v4 for each task.",
        task,
        parameter="taskUUID",
    )


def _error_reply(error: TaskError) -> _Reply:
    return _json_reply(error.status, {"errors": [error.error]})


def _fault_reply(fault: Fault) -> _Reply:
    if fault.kind == "http_429":
        reply = _plain_error(429, "rateLimitExceeded", "Too many requests: retry later.")
        reply.headers["Retry-After"] = str(fault.retry_after)
        return reply
    if fault.kind == "http_503":
        return _plain_error(503, "serviceUnavailable", "Temporarily unavailable: retry later.")
    if fault.kind == "http_504":
        return _plain_error(504, "timeoutProvider", "The task exceeded the maximum queue wait.")
    if fault.body == "empty":
        return _Reply(500, b"", ctype="")
    if fault.body == "html":
        return _Reply(500, b"<html>internal error</html>", ctype="text/html")
    return _plain_error(500, "internalServerError", "An internal server error occurred.")


class _Deliverer:
    """One thread running scheduled jobs (webhook POSTs, upload PUTs) at their due time."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="emulator-deliver", daemon=True)
        self._thread.start()

    def schedule(self, when: float, job: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), job))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=DELIVERY_TIMEOUT_S + 1)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping.is_set():
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping.is_set():
                    return
                _, _, job = heapq.heappop(self._heap)
            try:
                job()
            except Exception:  # a broken delivery must never kill the thread
                log.exception("delivery job failed")


class _Server(ThreadingHTTPServer):
    """Threading HTTP/1.1 server that remembers its open connections so stop() can close them."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RunwareEmulator/1.0"
    sys_version = ""
    wbufsize = 1 << 16  # headers and small bodies leave in one send
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info("%s %s %s", self.command, self.path, code)

    def handle_expect_100(self) -> bool:
        ok = super().handle_expect_100()
        self.wfile.flush()
        return ok

    def _reply(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        if reply.ctype:
            self.send_header("Content-Type", reply.ctype)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering an error."""
        body: bytes | None = None
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = self._read_chunked()
            elif self.headers.get("Content-Length") is None:
                self._refuse(411, "Content-Length is required.")
                return None
            else:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length) if 0 <= length <= MAX_BODY_BYTES else None
        except ValueError:
            self._refuse(400, "Malformed Content-Length or chunk size.")
            return None
        if body is None:
            self._refuse(413, "The body is too large.")
        return body

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self._reply(_plain_error(status, "invalidPayload", message))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if body is None:
            return
        if path not in ("/v1", "/v1/"):
            self._reply(_plain_error(404, "notFound", f"No endpoint at {path}; POST to /v1."))
            return
        reply = self.server.emulator.serve_post(body, self.headers.get("Authorization"))
        if reply is None:
            self.close_connection = True  # dropped: nothing is written
            return
        self._reply(reply)

    def do_GET(self) -> None:
        self._reply(self.server.emulator.serve_get(urlsplit(self.path).path))


def _task_uuid(task: dict[str, Any]) -> str:
    """The task's taskUUID, or Runware's 400 `missingTaskUUID` error."""
    task_uuid = task.get("taskUUID")
    if not isinstance(task_uuid, str) or not task_uuid:
        raise task_error(
            400,
            "missingTaskUUID",
            "Missing required parameter 'taskUUID'.",
            task,
            parameter="taskUUID",
        )
    return task_uuid
