"""pipeline.client against real loopback HTTP: a scripted server, a small fake, the emulator."""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from requests.adapters import HTTPAdapter
from scripted_server import Recorded, Reply, ScriptedServer, ack, error_body, ok

from pipeline.client import Client, Generation
from pipeline.errors import (
    ApiError,
    AuthError,
    ConfigError,
    CreditsError,
    RequestRejected,
    SafetyError,
    TransientError,
)

KEY = "test-key-123"
REQUEST: dict[str, Any] = {
    "model": "krea:krea@2-large",
    "positivePrompt": "a lighthouse on a cliff at dusk",
    "width": 1024,
    "height": 1024,
    "seed": 42,
    "settings": {"creativity": "medium"},
}


def _image(fmt: str, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format=fmt)
    return buf.getvalue()


PNG = _image("PNG")
JPG = _image("JPEG", (10, 120, 200))
PNG_B64 = base64.b64encode(PNG).decode()


def tid() -> str:
    return str(uuid.uuid4())


def item(task_uuid: str, image_uuid: str | None = None, **extra: Any) -> dict[str, Any]:
    """A finished imageInference item with base64 PNG data."""
    base = {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "imageUUID": image_uuid or tid(),
        "imageBase64Data": PNG_B64,
        "seed": 42,
        "cost": 0.06,
    }
    return {**base, **extra}


def not_found(task_uuid: str) -> Reply:
    return Reply(
        400,
        error_body(
            "taskFailedOrNotFound",
            "Task not found",
            taskType="getResponse",
            taskUUID=task_uuid,
            data=True,
        ),
    )


def processing(task_uuid: str) -> Reply:
    return Reply(200, ok({"taskUUID": task_uuid, "status": "processing", "progress": 10}))


@pytest.fixture
def srv() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


def make_client(base_url: str, **kw: Any) -> Client:
    opts: dict[str, Any] = {
        "timeout_s": 5.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "connect_timeout_s": 2.0,
        "settle_s": 0.0,  # one lookup before a re-submit (scripts below); settle tests set it
    }
    opts.update(kw)
    return Client(base_url, KEY, **opts)


@pytest.fixture
def client(srv: ScriptedServer) -> Iterator[Client]:
    c = make_client(srv.base_url)
    yield c
    c.close()


@pytest.fixture
def sync_client(srv: ScriptedServer) -> Iterator[Client]:
    c = make_client(srv.base_url, delivery="sync")
    yield c
    c.close()


def inference_uuids(srv: ScriptedServer) -> list[str]:
    return [
        str(t["taskUUID"])
        for r in srv.posts()
        for t in r.tasks
        if t.get("taskType") == "imageInference"
    ]


# ------------------------------------------------------------------------------------------
# exact error bodies through the client


def test_401_auth_error_not_retried(srv: ScriptedServer, client: Client) -> None:
    srv.reply(Reply(401, error_body("invalidApiKey", "Invalid API key", data=True)))
    with pytest.raises(AuthError) as info:
        client.generate(REQUEST, tid())
    assert info.value.status == 401 and info.value.code == "invalidApiKey"
    assert len(srv.requests) == 1
    assert srv.requests[0].headers["Authorization"] == f"Bearer {KEY}"


def test_402_credits_error(srv: ScriptedServer, client: Client) -> None:
    srv.reply(Reply(402, error_body("insufficientCredits", "Insufficient credits")))
    with pytest.raises(CreditsError) as info:
        client.generate(REQUEST, tid())
    assert info.value.status == 402
    assert len(srv.requests) == 1


def test_400_insufficient_credits_is_credits(srv: ScriptedServer, client: Client) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(
            400,
            error_body(
                "insufficientCredits", "Insufficient credits, please top up", taskUUID=task_uuid
            ),
        )
    )
    with pytest.raises(CreditsError) as info:
        client.generate(REQUEST, task_uuid)
    assert (info.value.status, info.value.code, info.value.task_uuid) == (
        400,
        "insufficientCredits",
        task_uuid,
    )
    assert len(srv.requests) == 1


def test_400_validation_list_parameter_and_object_allowed_values(
    srv: ScriptedServer, client: Client
) -> None:
    srv.reply(
        Reply(
            400,
            error_body(
                "invalidDimensions",
                "Unsupported size",
                parameter=["width", "height"],
                allowedValues={"0": "1024x1024", "1": "1184x896"},
                data=True,
            ),
        )
    )
    with pytest.raises(RequestRejected) as info:
        client.generate(REQUEST, tid())
    err = info.value
    assert err.parameter == ["width", "height"]
    assert err.body["allowedValues"] == ["1024x1024", "1184x896"]
    assert str(err) == "invalidDimensions: Unsupported size [width, height] (HTTP 400)"
    assert len(srv.requests) == 1  # never retried


def test_429_retry_after_honoured(srv: ScriptedServer, sync_client: Client) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(429, error_body("rateLimitExceeded", "slow down"), headers={"Retry-After": "1"}),
        Reply(200, ok(item(task_uuid))),
    )
    gen = sync_client.generate(REQUEST, task_uuid)
    assert len(gen.images) == 1 and gen.attempts == 2
    gap = srv.requests[1].at - srv.requests[0].at
    assert 0.9 <= gap < 2.0
    assert srv.task_types() == ["imageInference", "imageInference"]  # 429 = refused: no check


def test_503_retry_after_http_date(srv: ScriptedServer, sync_client: Client) -> None:
    task_uuid = tid()
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    srv.reply(
        Reply(503, "busy", headers={"Retry-After": when}),
        not_found(task_uuid),
        not_found(task_uuid),  # getTaskDetails (a sync task: getResponse keeps nothing)
        Reply(200, ok(item(task_uuid))),
    )
    gen = sync_client.generate(REQUEST, task_uuid)
    assert gen.attempts == 2
    assert srv.requests[1].at - srv.requests[0].at >= 0.9  # an HTTP date has 1 s resolution
    assert srv.task_types() == [
        "imageInference",
        "getResponse",
        "getTaskDetails",
        "imageInference",
    ]


def test_500_empty_body_then_success(srv: ScriptedServer, sync_client: Client) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(500), not_found(task_uuid), not_found(task_uuid), Reply(200, ok(item(task_uuid)))
    )
    gen = sync_client.generate(REQUEST, task_uuid)
    assert gen.attempts == 2 and len(gen.images) == 1
    # a 5xx may have been accepted: ask before re-submitting, with the same taskUUID
    assert srv.task_types() == [
        "imageInference",
        "getResponse",
        "getTaskDetails",
        "imageInference",
    ]
    assert inference_uuids(srv) == [task_uuid, task_uuid]


def test_500_html_body_gives_up_after_checking(srv: ScriptedServer) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(500, "<html>internal error</html>", content_type="text/html"),
        not_found(task_uuid),
    )
    with make_client(srv.base_url, max_retries=0) as c, pytest.raises(TransientError) as info:
        c.generate(REQUEST, task_uuid)
    assert info.value.status == 500 and info.value.code == "serverError"
    assert "<html>internal error</html>" in str(info.value)
    assert srv.task_types() == ["imageInference", "getResponse"]


def test_400_validation_not_retried(srv: ScriptedServer, client: Client) -> None:
    srv.reply(
        Reply(
            400, error_body("invalidPositivePrompt", "Prompt too long", parameter="positivePrompt")
        )
    )
    with pytest.raises(RequestRejected) as info:
        client.generate(REQUEST, tid())
    assert info.value.parameter == "positivePrompt"
    assert len(srv.requests) == 1


# ------------------------------------------------------------------------------------------
# never pay twice


def test_dropped_connection_checks_then_polls_known_task(
    srv: ScriptedServer, client: Client
) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(drop=True), processing(task_uuid), Reply(200, ok(item(task_uuid, status="success")))
    )
    gen = client.generate(REQUEST, task_uuid)
    assert gen.attempts == 1 and len(gen.images) == 1
    assert srv.task_types() == ["imageInference", "getResponse", "getResponse"]


def test_dropped_connection_not_found_resubmits_same_uuid(
    srv: ScriptedServer, client: Client
) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(drop=True),
        not_found(task_uuid),
        Reply(200, ack(task_uuid)),
        Reply(200, ok(item(task_uuid, status="success"))),
    )
    gen = client.generate(REQUEST, task_uuid)
    assert gen.attempts == 2
    assert srv.task_types() == ["imageInference", "getResponse", "imageInference", "getResponse"]
    assert inference_uuids(srv) == [task_uuid, task_uuid]
    assert srv.posts()[0].body == srv.posts()[2].body  # the identical task


def test_read_timeout_checks_then_resubmits(srv: ScriptedServer) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(200, ack(task_uuid), delay_s=1.5),
        not_found(task_uuid),
        Reply(200, ack(task_uuid)),
        Reply(200, ok(item(task_uuid, status="success"))),
    )
    with make_client(srv.base_url, timeout_s=0.3) as c:
        gen = c.generate(REQUEST, task_uuid)
        assert c.stats()["checks"] == 1
    assert gen.attempts == 2
    assert srv.task_types() == ["imageInference", "getResponse", "imageInference", "getResponse"]
    assert inference_uuids(srv) == [task_uuid, task_uuid]


def test_conflict_on_resubmit_polls(srv: ScriptedServer, client: Client) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(drop=True),
        not_found(task_uuid),  # not yet registered when asked ...
        Reply(400, error_body("conflictTaskUUID", "Task UUID already exists", taskUUID=task_uuid)),
        Reply(200, ok(item(task_uuid, status="success"))),  # ... but it was: just poll it
    )
    gen = client.generate(REQUEST, task_uuid)
    assert gen.attempts == 2 and len(gen.images) == 1
    assert srv.task_types() == ["imageInference", "getResponse", "imageInference", "getResponse"]


def test_5xx_after_acceptance_is_polled_not_resubmitted(
    srv: ScriptedServer, client: Client
) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(502, error_body("serverError", "bad gateway")),
        processing(task_uuid),  # the check: the server has it
        Reply(200, ok(item(task_uuid, status="success"))),
    )
    gen = client.generate(REQUEST, task_uuid)
    assert gen.attempts == 1
    assert srv.task_types() == ["imageInference", "getResponse", "getResponse"]


def test_close_wakes_waiting_callers(srv: ScriptedServer) -> None:
    task_uuid = tid()
    srv.reply(Reply(200, ack(task_uuid)))
    srv.fallback = lambda rec: processing(task_uuid)
    c = make_client(srv.base_url)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(c.generate, REQUEST, task_uuid)
        time.sleep(0.3)
        started = time.monotonic()
        c.close()
        with pytest.raises(TransientError) as info:
            future.result(timeout=5)
    assert info.value.code == "clientClosed" and time.monotonic() - started < 2


def test_check_that_cannot_answer_never_resubmits(srv: ScriptedServer) -> None:
    task_uuid = tid()
    srv.reply(Reply(drop=True))
    srv.fallback = lambda rec: Reply(503, "down")
    with make_client(srv.base_url, max_retries=1) as c, pytest.raises(TransientError) as info:
        c.generate(REQUEST, task_uuid)
    assert info.value.code == "outcomeUnknown"
    assert srv.task_types().count("imageInference") == 1


def test_connect_refused_resubmits_without_check() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with make_client(f"http://127.0.0.1:{port}/v1", max_retries=2) as c:
        with pytest.raises(TransientError) as info:
            c.generate(REQUEST, tid())
        stats = c.stats()
    assert info.value.code == "connectionError"
    assert stats["submits"] == 3 and stats.get("checks", 0) == 0


def test_task_failure_with_transient_code_resubmits_same_uuid(
    srv: ScriptedServer, client: Client
) -> None:
    task_uuid = tid()
    failed = {
        "taskUUID": task_uuid,
        "status": "error",
        "code": "timeoutProvider",
        "message": "provider timed out",
    }
    srv.reply(
        Reply(200, ack(task_uuid)),
        Reply(200, {"data": [], "errors": [failed]}),
        Reply(200, ack(task_uuid)),
        Reply(200, ok(item(task_uuid, status="success"))),
    )
    gen = client.generate(REQUEST, task_uuid)
    assert gen.attempts == 2 and len(gen.images) == 1 and gen.errors == []
    assert inference_uuids(srv) == [task_uuid, task_uuid]


def test_safety_failure_in_poll_raises(srv: ScriptedServer, client: Client) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(200, ack(task_uuid)),
        Reply(
            200,
            ok(
                {
                    "taskUUID": task_uuid,
                    "status": "error",
                    "error": {"code": "nsfwContentDetected", "message": "blocked"},
                }
            ),
        ),
    )
    with pytest.raises(SafetyError) as info:
        client.generate(REQUEST, task_uuid)
    assert info.value.task_uuid == task_uuid
    assert srv.task_types() == ["imageInference", "getResponse"]


# ------------------------------------------------------------------------------------------
# results


def test_request_as_sent(srv: ScriptedServer, client: Client) -> None:
    task_uuid = tid()
    srv.reply(Reply(200, ack(task_uuid)), Reply(200, ok(item(task_uuid, status="success"))))
    gen = client.generate(REQUEST, task_uuid)
    sent = srv.posts()[0].json
    assert isinstance(sent, list) and len(sent) == 1
    assert sent[0] == gen.request
    assert gen.request == {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        **REQUEST,
        "includeCost": True,
        "deliveryMethod": "async",
        "outputType": "base64Data",
    }
    assert KEY not in str(gen.request)
    assert srv.posts()[1].tasks == [{"taskType": "getResponse", "taskUUID": task_uuid}]
    image = gen.images[0]
    assert (image.data, image.ext, image.seed, image.cost) == (PNG, "png", 42, 0.06)
    assert gen.submitted_at.endswith("Z") and gen.finished_at >= gen.submitted_at
    assert gen.latency_s > 0 and "includeCost" not in REQUEST


def test_partial_failure_keeps_images(srv: ScriptedServer, client: Client) -> None:
    task_uuid = tid()
    good = item(task_uuid, status="success", resultIndex=0)
    bad = {
        "taskUUID": task_uuid,
        "status": "error",
        "code": "inferenceError",
        "message": "generation failed",
    }
    srv.reply(Reply(200, ack(task_uuid)), Reply(200, {"data": [good], "errors": [bad]}))
    gen = client.generate({**REQUEST, "numberResults": 2}, task_uuid)
    assert [i.image_uuid for i in gen.images] == [good["imageUUID"]]
    assert len(gen.errors) == 1 and isinstance(gen.errors[0], TransientError)
    assert gen.errors[0].code == "inferenceError"
    assert gen.attempts == 1  # an image arrived: the task is not re-submitted


def test_number_results_two_in_reverse_order(srv: ScriptedServer, client: Client) -> None:
    task_uuid = tid()
    a = item(task_uuid, status="success", resultIndex=0, seed=1)
    b = item(
        task_uuid,
        status="success",
        resultIndex=1,
        seed=2,
        imageBase64Data=base64.b64encode(JPG).decode(),
    )
    srv.reply(
        Reply(200, ack(task_uuid)),
        Reply(200, ok(b, {"taskUUID": task_uuid, "status": "processing", "progress": 50})),
        Reply(200, ok(b, a)),  # cumulative: b again, then a
    )
    gen = client.generate({**REQUEST, "numberResults": 2}, task_uuid)
    assert [i.seed for i in gen.images] == [1, 2]
    assert [i.ext for i in gen.images] == ["png", "jpg"]
    assert srv.task_types().count("getResponse") == 2


def test_sync_results_in_any_order(srv: ScriptedServer, sync_client: Client) -> None:
    task_uuid, other = tid(), tid()
    a, b = item(task_uuid, seed=7), item(task_uuid, seed=8)
    srv.reply(Reply(200, ok(item(other), b, a)))
    gen = sync_client.generate({**REQUEST, "numberResults": 2}, task_uuid)
    assert sorted(i.seed or 0 for i in gen.images) == [7, 8]
    assert srv.posts()[0].tasks[0]["deliveryMethod"] == "sync"


def test_data_uri_output(srv: ScriptedServer) -> None:
    task_uuid = tid()
    uri = "data:image/jpeg;base64," + base64.b64encode(JPG).decode()
    res = {"taskUUID": task_uuid, "imageUUID": tid(), "imageDataURI": uri, "NSFWContent": False}
    srv.reply(Reply(200, ok(res)))
    with make_client(srv.base_url, delivery="sync", output_type="dataURI") as c:
        gen = c.generate(REQUEST, task_uuid)
    assert gen.images[0].data == JPG and gen.images[0].ext == "jpg"
    assert gen.images[0].nsfw is False
    assert srv.posts()[0].tasks[0]["outputType"] == "dataURI"


def test_url_output_download_retried_task_submitted_once(srv: ScriptedServer) -> None:
    task_uuid = tid()
    url = f"{srv.url}/img/abc.png"
    srv.route("GET", "/img/abc.png", Reply(503, "busy"), Reply(200, PNG, content_type="image/png"))
    srv.reply(
        Reply(200, ack(task_uuid)),
        Reply(200, ok(item(task_uuid, status="success", imageBase64Data=None, imageURL=url))),
    )
    with make_client(srv.base_url, output_type="URL") as c:
        gen = c.generate(REQUEST, task_uuid)
    assert gen.images[0].data == PNG and gen.images[0].url == url and gen.attempts == 1
    assert srv.task_types() == ["imageInference", "getResponse"]
    gets = [r for r in srv.requests if r.method == "GET"]
    assert len(gets) == 2 and "Authorization" not in gets[0].headers  # the key stays home


def test_url_gone_recovers_by_get_response(srv: ScriptedServer) -> None:
    task_uuid, image_uuid = tid(), tid()
    old, new = f"{srv.url}/img/old.png", f"{srv.url}/img/new.png"
    srv.route("GET", "/img/old.png", Reply(404, "gone"))
    srv.route("GET", "/img/new.png", Reply(200, PNG, content_type="image/png"))
    srv.reply(
        Reply(200, ok(item(task_uuid, image_uuid, imageBase64Data=None, imageURL=old))),
        Reply(
            200,
            ok(item(task_uuid, image_uuid, status="success", imageBase64Data=None, imageURL=new)),
        ),
    )
    with make_client(srv.base_url, output_type="URL", delivery="sync") as c:
        gen = c.generate(REQUEST, task_uuid)
    assert gen.images[0].data == PNG and gen.attempts == 1
    assert srv.task_types() == ["imageInference", "getResponse"]


def test_poll_transient_failures_are_retried(srv: ScriptedServer, client: Client) -> None:
    task_uuid = tid()
    srv.reply(
        Reply(200, ack(task_uuid)),
        Reply(503, "busy"),
        Reply(drop=True),
        Reply(429, error_body("rateLimitExceeded"), headers={"Retry-After": "0.1"}),
        Reply(200, ok(item(task_uuid, status="success"))),
    )
    gen = client.generate(REQUEST, task_uuid)
    assert gen.attempts == 1 and len(gen.images) == 1
    assert srv.task_types() == ["imageInference"] + ["getResponse"] * 4


def test_poll_timeout(srv: ScriptedServer) -> None:
    task_uuid = tid()
    srv.reply(Reply(200, ack(task_uuid)))
    srv.fallback = lambda rec: processing(task_uuid)
    with make_client(srv.base_url, poll_timeout_s=0.5) as c, pytest.raises(TransientError) as info:
        c.generate(REQUEST, task_uuid)
    assert info.value.code == "pollTimeout" and "timed out waiting" in str(info.value)
    assert srv.task_types().count("imageInference") == 1


def test_recover(srv: ScriptedServer, client: Client) -> None:
    known, unknown = tid(), tid()
    srv.reply(not_found(unknown), Reply(200, ok(item(known, status="success"))))
    assert client.recover(unknown) is None
    gen = client.recover(known)
    assert isinstance(gen, Generation)
    assert gen.attempts == 0 and len(gen.images) == 1 and gen.task_uuid == known
    assert srv.task_types() == ["getResponse", "getResponse"]


def test_recover_empty_answer_means_not_known(srv: ScriptedServer, client: Client) -> None:
    """{"data": []} is how some servers answer for a taskUUID they never accepted."""
    srv.reply(Reply(200, {"data": []}))
    assert client.recover(tid()) is None  # the runner re-submits with the same taskUUID


def test_sync_lost_response_is_not_paid_twice(srv: ScriptedServer, sync_client: Client) -> None:
    """No getTaskDetails: re-submitting the same taskUUID asks the server whether it exists."""
    task_uuid = tid()
    srv.reply(
        Reply(drop=True),
        Reply(200, {"data": []}),
        Reply(400, error_body("unsupportedTaskType", "no getTaskDetails here")),
        Reply(400, error_body("conflictTaskUUID", "exists", taskUUID=task_uuid)),
        Reply(200, {"data": []}),
    )
    with pytest.raises(ApiError) as info:
        sync_client.generate(REQUEST, task_uuid)
    assert info.value.code == "resultLost"
    assert getattr(info.value, "maybe_billed", None) is True
    assert srv.task_types() == [
        "imageInference",
        "getResponse",
        "getTaskDetails",
        "imageInference",
        "getResponse",
    ]


# ------------------------------------------------------------------------------------------
# a session or a transport of the caller's; the backoff from config (issue 13)


class CountingAdapter(HTTPAdapter):
    """A transport that records what goes through it (then sends it for real)."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.sent: list[str] = []

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.sent.append(f"{request.method} {request.url}")
        return super().send(request, *args, **kwargs)


def test_a_transport_carries_every_request(srv: ScriptedServer) -> None:
    task_uuid = tid()
    srv.reply(Reply(200, ack(task_uuid)), Reply(200, ok(item(task_uuid, status="success"))))
    transport = CountingAdapter()
    with make_client(srv.base_url, transport=transport) as c:
        gen = c.generate(REQUEST, task_uuid)
    assert len(gen.images) == 1
    assert (
        transport.sent
        == [f"POST {srv.base_url}"] * 2
        == [f"POST {srv.base_url}"] * len(srv.posts())
    )


class OwnSession(requests.Session):
    """A caller's session that counts its close() calls."""

    closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


def test_a_session_is_used_and_left_open(srv: ScriptedServer) -> None:
    task_uuid = tid()
    srv.reply(Reply(200, ack(task_uuid)), Reply(200, ok(item(task_uuid, status="success"))))
    session = OwnSession()
    session.headers["X-Caller"] = "tests"
    with make_client(srv.base_url, session=session) as c:
        c.generate(REQUEST, task_uuid)
    assert [r.headers.get("X-Caller") for r in srv.posts()] == ["tests", "tests"]
    assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in srv.posts())
    assert session.closes == 0  # the client's close() leaves a session it was given to its owner
    session.close()


def test_a_session_and_a_transport_together(srv: ScriptedServer) -> None:
    srv.fallback = lambda req: Reply(200, {"data": []})
    transport = CountingAdapter()
    with (
        requests.Session() as session,
        make_client(srv.base_url, session=session, transport=transport) as c,
    ):
        assert c.recover(tid()) is None  # one lookup (settle_s=0): "not known"
    assert len(transport.sent) == len(srv.posts()) == 1


def test_backoff_is_reachable_from_config() -> None:
    from conftest import compose_config

    from pipeline import client, config
    from pipeline.settings import api_settings

    defaults = api_settings(compose_config("run", ["api=emulator"])["api"])
    assert (defaults.backoff_base_s, defaults.backoff_cap_s) == (
        client.BACKOFF_BASE_S,
        client.BACKOFF_CAP_S,
    )
    short = compose_config(
        "run", ["api=emulator", "api.backoff_base_s=0.01", "api.backoff_cap_s=0.05"]
    )
    api = api_settings(short["api"])
    assert (api.backoff_base_s, api.backoff_cap_s) == (0.01, 0.05)
    ranges = {f.name: f.metadata.get("range") for f in dataclasses.fields(config.ApiConfig)}
    assert ranges["backoff_base_s"] == (0, 60) and ranges["backoff_cap_s"] == (0, 3600)
    with pytest.raises(ConfigError, match=r"api\.backoff_cap_s"):
        api_settings({**short["api"], "backoff_cap_s": -1})


def test_the_backoff_bounds_the_wait_between_retries(srv: ScriptedServer) -> None:
    """backoff_cap_s=0: re-submits after a 429 follow at once; base 30 s uncapped would wait."""
    task_uuid = tid()
    srv.reply(Reply(429), Reply(429), Reply(429), Reply(200, ok(item(task_uuid, status="success"))))
    with make_client(
        srv.base_url, delivery="sync", backoff_base_s=30.0, backoff_cap_s=0.0, max_retries=3
    ) as c:
        gen = c.generate(REQUEST, task_uuid)
    assert gen.attempts == 4 and c.stats()["resubmits"] == 3
    at = [r.at for r in srv.posts()]
    assert at[-1] - at[0] < 10.0  # even the first uncapped wait would be up to 30 s


# ------------------------------------------------------------------------------------------
# a tiny dynamic fake for concurrency, uploads and batching


class FakeRunware:
    """Answers imageInference (ack or sync), getResponse (done after latency), imageUpload."""

    def __init__(self, latency_s: float = 0.0, upload_delay_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.upload_delay_s = upload_delay_s
        self.lock = threading.Lock()
        self.tasks: dict[str, tuple[float, int]] = {}

    def __call__(self, rec: Recorded) -> Reply:
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        delay = 0.0
        for task in rec.tasks:
            kind, task_uuid = task.get("taskType"), str(task.get("taskUUID"))
            if kind == "imageUpload":
                delay = self.upload_delay_s
                data.append({"taskType": kind, "taskUUID": task_uuid, "imageUUID": tid()})
            elif kind == "imageInference":
                n = int(task.get("numberResults", 1))
                with self.lock:
                    self.tasks[task_uuid] = (time.monotonic() + self.latency_s, n)
                if task.get("deliveryMethod") == "sync":
                    data.extend(self._items(task_uuid, n, None))
                else:
                    data.append({"taskType": kind, "taskUUID": task_uuid})
            elif kind == "getResponse":
                with self.lock:
                    known = self.tasks.get(task_uuid)
                if known is None:
                    errors.append({"code": "taskFailedOrNotFound", "taskUUID": task_uuid})
                elif time.monotonic() < known[0]:
                    data.append({"taskUUID": task_uuid, "status": "processing"})
                else:
                    data.extend(self._items(task_uuid, known[1], "success"))
        body: dict[str, Any] = {"data": data}
        if errors:
            body["errors"] = errors
        return Reply(200 if data or not errors else 400, body, delay_s=delay)

    @staticmethod
    def _items(task_uuid: str, n: int, status: str | None) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            it = item(task_uuid, f"{task_uuid[:8]}-0000-4000-8000-{i:012d}", resultIndex=i)
            if status:
                it["status"] = status
            out.append(it)
        return out


def test_upload_once_for_concurrent_prepares(srv: ScriptedServer, tmp_path: Path) -> None:
    ref = tmp_path / "palette.png"
    ref.write_bytes(PNG)
    copy_ = tmp_path / "same-content.PNG"
    copy_.write_bytes(PNG)
    srv.fallback = FakeRunware(upload_delay_s=0.2)
    request = {
        **REQUEST,
        "inputs": {
            "referenceImages": [
                {"image": str(ref), "strength": 0.7},
                {"image": str(copy_)},
                {"image": "https://example.com/a.png"},
                {"image": "0b6a3c9e-6b1f-4b8e-9f3a-2d1c4e5f6a7b"},
            ]
        },
    }
    with make_client(srv.base_url) as c, ThreadPoolExecutor(10) as pool:
        prepared = list(pool.map(lambda _: c.prepare(request), range(10)))
    assert srv.task_types() == ["imageUpload"]
    upload = srv.posts()[0].tasks[0]
    assert upload["image"].startswith("data:image/png;base64,")
    refs = prepared[0]["inputs"]["referenceImages"]
    assert refs[0]["image"] == refs[1]["image"] != str(ref)
    assert refs[2:] == request["inputs"]["referenceImages"][2:]
    assert all(p == prepared[0] for p in prepared)
    assert request["inputs"]["referenceImages"][0]["image"] == str(ref)  # input untouched


def test_inline_refs_as_data_uri(srv: ScriptedServer, tmp_path: Path) -> None:
    ref = tmp_path / "ref.jpg"
    ref.write_bytes(JPG)
    with make_client(srv.base_url, upload_refs=False) as c:
        prepared = c.prepare({**REQUEST, "inputs": {"referenceImages": [{"image": str(ref)}]}})
    image = prepared["inputs"]["referenceImages"][0]["image"]
    assert image == "data:image/jpeg;base64," + base64.b64encode(JPG).decode()
    assert srv.requests == []


@pytest.mark.parametrize("batch_polls", [False, True])
def test_concurrent_generates(srv: ScriptedServer, batch_polls: bool) -> None:
    srv.fallback = FakeRunware(latency_s=0.3)
    with make_client(srv.base_url, batch_polls=batch_polls) as c, ThreadPoolExecutor(16) as pool:
        uuids = [tid() for _ in range(32)]
        gens = list(pool.map(lambda u: c.generate({**REQUEST, "numberResults": 2}, u), uuids))
    assert [g.task_uuid for g in gens] == uuids
    assert all(len(g.images) == 2 and g.attempts == 1 for g in gens)
    assert sorted(inference_uuids(srv)) == sorted(uuids)
    polls = [r for r in srv.posts() if r.tasks and r.tasks[0]["taskType"] == "getResponse"]
    widest = max(len(r.tasks) for r in polls)
    assert widest > 1 if batch_polls else widest == 1


def test_adaptive_first_poll(srv: ScriptedServer) -> None:
    """After a few tasks the first poll lands close to the observed completion time."""
    fake = FakeRunware(latency_s=0.5)
    srv.fallback = fake
    with make_client(srv.base_url) as c:
        lat = [c.generate(REQUEST, tid()).latency_s for _ in range(6)]
    assert lat[-1] < 0.5 * 1.15 + 0.05, lat


# ------------------------------------------------------------------------------------------
# against the emulator (pipeline.emulator.Emulator)

FAULTS_20 = {
    "http_429": 0.04,
    "http_500": 0.04,
    "http_503": 0.04,
    "disconnect": 0.04,
    "stall": 0.04,
}


@pytest.fixture
def emulator_cls() -> Any:
    from pipeline.emulator import Emulator

    return Emulator


@pytest.mark.parametrize("delivery", ["sync", "async"])
def test_emulator_two_results(emulator_cls: Any, delivery: str, tmp_path: Path) -> None:
    with emulator_cls(port=0, latency_s=0.0, ledger=tmp_path / "ledger.jsonl") as emu:
        with make_client(emu.base_url, delivery=delivery) as c:
            task_uuid = tid()
            gen = c.generate({**REQUEST, "numberResults": 2}, task_uuid)
        entries = emu.ledger_entries()
    assert len(gen.images) == 2 and gen.attempts == 1 and gen.errors == []
    assert len({i.image_uuid for i in gen.images}) == 2
    assert sorted(i.seed or 0 for i in gen.images) == [42, 43]
    assert all(i.ext == "jpg" and i.data[:3] == b"\xff\xd8\xff" for i in gen.images)
    assert [i.cost for i in gen.images] == [0.06, 0.06]
    assert [e["taskUUID"] for e in entries] == [task_uuid, task_uuid]


def test_emulator_url_and_data_uri_outputs(emulator_cls: Any) -> None:
    with emulator_cls(port=0, latency_s=0.0) as emu:
        for output_type in ("URL", "dataURI"):
            with make_client(emu.base_url, output_type=output_type) as c:
                gen = c.generate({**REQUEST, "outputFormat": "PNG"}, tid())
            image = gen.images[0]
            assert image.ext == "png" and image.data.startswith(b"\x89PNG")
            assert (image.url is not None) == (output_type == "URL")


def test_emulator_uploads_a_reference_once(emulator_cls: Any, tmp_path: Path) -> None:
    ref = tmp_path / "palette.png"
    Image.new("RGB", (64, 64), (20, 160, 90)).save(ref)
    request = {**REQUEST, "inputs": {"referenceImages": [{"image": str(ref), "strength": 0.7}]}}
    with emulator_cls(port=0, latency_s=0.05) as emu:
        with make_client(emu.base_url) as c, ThreadPoolExecutor(10) as pool:
            gens = list(pool.map(lambda _: c.generate(request, tid()), range(10)))
        stats, entries = emu.stats(), emu.ledger_entries()
    assert stats["tasks.imageUpload"] == 1
    sent_refs = {g.request["inputs"]["referenceImages"][0]["image"] for g in gens}
    assert len(sent_refs) == 1 and str(ref) not in sent_refs
    assert len(entries) == 10 and all(e["cost"] == 0.065 for e in entries)


@pytest.mark.parametrize("swap", ["fifo", "empty", "not_an_image"])
def test_a_reference_swapped_after_planning_is_refused_at_upload(
    emulator_cls: Any, tmp_path: Path, swap: str
) -> None:
    """harden-helper: the upload read the file with read_bytes(); a FIFO swapped in hung it."""
    import os

    ref = tmp_path / "palette.png"
    if swap == "fifo":
        os.mkfifo(ref)
    else:
        ref.write_bytes(b"" if swap == "empty" else b"plain text, no image")
    request = {**REQUEST, "inputs": {"referenceImages": [{"image": str(ref), "strength": 0.7}]}}
    outcome: dict[str, BaseException] = {}

    def run(c: Client) -> None:
        try:
            c.generate(request, tid())
        except BaseException as exc:  # handed to the test thread
            outcome["exc"] = exc

    with emulator_cls(port=0, latency_s=0.0) as emu, make_client(emu.base_url) as c:
        worker = threading.Thread(target=run, args=(c,), daemon=True)
        worker.start()
        worker.join(10)
        hung = worker.is_alive()
        if hung and swap == "fifo":  # release the blocked reader so the thread can end
            os.close(os.open(ref, os.O_WRONLY | os.O_NONBLOCK))
            worker.join(5)
        posts = emu.stats().get("posts", 0)
    assert not hung, "the upload blocked on the reference file"
    exc = outcome.get("exc")
    assert isinstance(exc, ConfigError), exc
    assert str(ref) in str(exc) and posts == 0  # refused before anything was sent or paid


def test_emulator_faults_never_pay_twice(emulator_cls: Any, tmp_path: Path) -> None:
    """20% mixed faults on every POST (polls too): all succeed, one charge per image."""
    with emulator_cls(
        port=0,
        latency_s=0.05,
        faults=FAULTS_20,
        fault_seed=20261125,
        stall_s=2.0,
        ledger=tmp_path / "ledger.jsonl",
    ) as emu:
        with (
            make_client(
                emu.base_url, timeout_s=0.5, max_retries=8, backoff_cap_s=0.2, poll_timeout_s=60
            ) as c,
            ThreadPoolExecutor(8) as pool,
        ):
            uuids = [tid() for _ in range(100)]
            gens = list(pool.map(lambda u: c.generate(REQUEST, u), uuids))
            client_stats = c.stats()
        emu_stats, entries = emu.stats(), emu.ledger_entries()
    assert all(len(g.images) == 1 and g.errors == [] for g in gens)
    billed = [e["taskUUID"] for e in entries]
    assert sorted(billed) == sorted(uuids)  # exactly one charge per image, none lost
    assert sum(emu_stats[f"faults.{k}"] for k in FAULTS_20) > 20  # the faults did happen
    assert client_stats["resubmits"] > 0 and client_stats["checks"] > 0


def test_emulator_recover(emulator_cls: Any) -> None:
    with emulator_cls(port=0, latency_s=0.3) as emu:
        with make_client(emu.base_url) as first:
            done = first.generate(REQUEST, tid())
        task_uuid = tid()
        # a task accepted by someone who then crashed before fetching its result
        task = {**done.request, "taskUUID": task_uuid}
        resp = requests.post(emu.base_url, json=[task], headers={"Authorization": "Bearer k"})
        assert resp.status_code == 200
        with make_client(emu.base_url) as after_crash:
            assert after_crash.recover(tid()) is None
            again = after_crash.recover(done.task_uuid)
            pending = after_crash.recover(task_uuid)
    assert again is not None and again.images[0].data == done.images[0].data
    assert pending is not None and pending.images[0].image_uuid and pending.attempts == 0
    assert len(emu.ledger_entries()) == 2


def test_emulator_poll_pickup(emulator_cls: Any) -> None:
    """Zero latency: done almost at once; 2 s latency: picked up within ~10%."""
    with emulator_cls(port=0, latency_s=0.0) as emu, make_client(emu.base_url) as c:
        fast = [c.generate(REQUEST, tid()).latency_s for _ in range(20)]
    assert sorted(fast[10:])[5] < 0.05, fast
    with (
        emulator_cls(port=0, latency_s=2.0) as emu,
        make_client(emu.base_url) as c,
        ThreadPoolExecutor(8) as pool,
    ):
        slow = list(pool.map(lambda _: c.generate(REQUEST, tid()).latency_s, range(16)))
    assert max(slow) < 2.2 + 0.1, slow


def test_conflict_then_not_found_is_task_gone(srv: ScriptedServer, client: Client) -> None:
    """The server holds the taskUUID but getResponse says not found: that taskUUID is spent."""
    task_uuid = tid()
    srv.reply(
        Reply(400, error_body("conflictTaskUUID", "exists", taskUUID=task_uuid)),
        Reply(400, error_body("taskNotFound", "no such task", taskUUID=task_uuid)),
    )
    with pytest.raises(ApiError) as info:
        client.generate(REQUEST, task_uuid)
    assert info.value.code == "taskGone" and getattr(info.value, "maybe_billed", None) is True
    assert srv.task_types() == ["imageInference", "getResponse"]  # never re-submitted
