"""The Runware-compatible emulator over real loopback HTTP (requests), and its standalone CLI."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from pipeline.emulator import Emulator, parse_faults
from pipeline.settings import FAULT_NAMES

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key"
SIZES = [
    (1024, 1024),
    (1184, 896),
    (1248, 832),
    (1376, 768),
    (1568, 672),
    (928, 1152),
    (832, 1248),
    (768, 1376),
]


def png_data_uri(colour: tuple[int, int, int] = (200, 40, 40), size: int = 32) -> str:
    """A small PNG as a data URI."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def task(**over: Any) -> dict[str, Any]:
    """A valid imageInference task with a fresh taskUUID, updated with `over`."""
    base: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "krea:krea@2-large",
        "positivePrompt": "a lighthouse on a cliff at dusk, film grain",
        "width": 1024,
        "height": 1024,
        "seed": 7,
    }
    base.update(over)
    return base


def poll(uuid_: str) -> dict[str, Any]:
    """A getResponse task."""
    return {"taskType": "getResponse", "taskUUID": uuid_}


class Api:
    """A keep-alive requests session against one emulator (environment proxies ignored)."""

    def __init__(self, emu: Emulator, key: str | None = KEY) -> None:
        self.emu = emu
        self.session = requests.Session()
        self.session.trust_env = False
        if key is not None:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def post(self, tasks: Any, timeout: float = 30, **kw: Any) -> requests.Response:
        return self.session.post(self.emu.base_url, json=tasks, timeout=timeout, **kw)

    def one(self, tasks: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        """POST one task (or a list of tasks), expect 200, return the body."""
        r = self.post(tasks if isinstance(tasks, list) else [tasks])
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def error(self, tasks: Any, status: int) -> dict[str, Any]:
        """POST tasks, expect `status` and a body with exactly one error; return that error."""
        r = self.post(tasks)
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"errors"} and len(body["errors"]) == 1
        err: dict[str, Any] = body["errors"][0]
        return err

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Iterator[Api]:
    client = Api(emu)
    yield client
    client.close()


def decode(item: dict[str, Any], api: Api) -> tuple[bytes, Image.Image]:
    """The bytes and decoded image of a result item, whatever its output type."""
    if "imageBase64Data" in item:
        data = base64.b64decode(item["imageBase64Data"])
    elif "imageDataURI" in item:
        data = base64.b64decode(item["imageDataURI"].split(",", 1)[1])
    else:
        r = api.session.get(item["imageURL"], timeout=10)
        assert r.status_code == 200
        data = r.content
    image = Image.open(io.BytesIO(data))
    image.load()
    return data, image


# ---------------------------------------------------------------------------- delivery


def test_sync_default_returns_url_items_and_serves_the_image(api: Api) -> None:
    r = api.post([task(includeCost=True)])
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"data"}  # no `errors` key at all on success
    (item,) = body["data"]
    assert item["taskType"] == "imageInference" and item["seed"] == 7 and item["cost"] == 0.06
    assert "status" not in item and item["imageUUID"] != item["taskUUID"]
    assert item["imageURL"].endswith(f"/images/{item['imageUUID']}.jpg")
    image = api.session.get(item["imageURL"], timeout=10)
    assert image.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)


def test_async_is_processing_then_success_and_stays_retrievable() -> None:
    with Emulator(latency_s=0.6) as emu:
        api = Api(emu)
        t = task(deliveryMethod="async", outputType="base64Data", numberResults=2)
        ack = api.one(t)
        assert ack == {"data": [{"taskType": "imageInference", "taskUUID": t["taskUUID"]}]}
        early = api.one(poll(t["taskUUID"]))["data"]
        assert len(early) == 2
        for item in early:
            assert item["status"] == "processing" and 0 <= item["progress"] < 100
            assert not any(k.startswith("image") for k in item)
        time.sleep(0.7)
        done = api.one(poll(t["taskUUID"]))["data"]
        assert [i["status"] for i in done] == ["success", "success"]
        assert len({i["imageUUID"] for i in done}) == 2
        assert {i["seed"] for i in done} == {7, 8}
        again = api.one(poll(t["taskUUID"]))["data"]
        assert [i["imageUUID"] for i in again] == [i["imageUUID"] for i in done]
        assert again[0]["imageBase64Data"] == done[0]["imageBase64Data"]
        assert len(emu.ledger_entries()) == 2
        api.close()


def test_sync_response_waits_for_latency() -> None:
    with Emulator(latency_s=0.4) as emu:
        api = Api(emu)
        start = time.monotonic()
        api.one(task())
        assert time.monotonic() - start >= 0.4
        api.close()


def test_several_get_responses_in_one_post_and_partial_failure(api: Api) -> None:
    a, b = task(deliveryMethod="async"), task(deliveryMethod="async", numberResults=2)
    api.one(a)
    api.one(b)
    unknown = str(uuid.uuid4())
    r = api.post([poll(a["taskUUID"]), poll(b["taskUUID"]), poll(unknown)])
    assert r.status_code == 200
    body = r.json()
    assert [i["taskUUID"] for i in body["data"]] == [a["taskUUID"]] + [b["taskUUID"]] * 2
    assert all(i["status"] == "success" and "imageURL" in i for i in body["data"])
    (err,) = body["errors"]
    assert err["code"] == "taskFailedOrNotFound" and err["taskUUID"] == unknown
    alone = api.error([poll(unknown)], 400)
    assert alone["code"] == "taskFailedOrNotFound"


def test_partial_failure_of_a_submit_scopes_the_error_to_its_task(emu: Emulator, api: Api) -> None:
    good, bad = task(), task(width=1000)
    body = api.one([good, bad])
    assert [i["taskUUID"] for i in body["data"]] == [good["taskUUID"]]
    assert [e["taskUUID"] for e in body["errors"]] == [bad["taskUUID"]]
    assert len(emu.ledger_entries()) == 1


def test_sync_results_are_not_pollable(api: Api) -> None:
    t = task()
    api.one(t)
    assert api.one(poll(t["taskUUID"])) == {"data": []}


@pytest.mark.parametrize("output_type", ["URL", "base64Data", "dataURI"])
@pytest.mark.parametrize("fmt", ["JPG", "PNG", "WEBP"])
def test_every_output_type_and_format(api: Api, output_type: str, fmt: str) -> None:
    (item,) = api.one(task(outputType=output_type, outputFormat=fmt, width=1248, height=832))[
        "data"
    ]
    field = {"URL": "imageURL", "base64Data": "imageBase64Data", "dataURI": "imageDataURI"}
    assert [k for k in item if k.startswith("image") and k != "imageUUID"] == [field[output_type]]
    mime = {"JPG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}[fmt]
    if output_type == "dataURI":
        assert item["imageDataURI"].startswith(f"data:{mime};base64,")
    _, image = decode(item, api)
    assert image.format == {"JPG": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}[fmt]
    assert image.size == (1248, 832)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_allowed_size(api: Api, width: int, height: int) -> None:
    (item,) = api.one(task(width=width, height=height, outputType="base64Data"))["data"]
    assert decode(item, api)[1].size == (width, height)


def test_output_quality_is_honoured(api: Api) -> None:
    low = api.one(task(outputType="base64Data", outputQuality=20))["data"][0]
    high = api.one(task(outputType="base64Data", outputQuality=99))["data"][0]
    assert len(decode(low, api)[0]) < len(decode(high, api)[0])


def test_number_results_gives_distinct_images_and_consecutive_seeds(
    emu: Emulator, api: Api
) -> None:
    items = api.one(task(numberResults=3, seed=41, outputType="base64Data"))["data"]
    assert len({i["imageUUID"] for i in items}) == 3
    assert [i["seed"] for i in items] == [41, 42, 43]
    assert len({i["imageBase64Data"] for i in items}) == 3
    assert [e["seed"] for e in emu.ledger_entries()] == [41, 42, 43]


def test_random_seed_when_absent(api: Api) -> None:
    t = task()
    del t["seed"]
    (item,) = api.one(t)["data"]
    assert isinstance(item["seed"], int) and 0 <= item["seed"] < 2**32


def test_images_are_deterministic_across_emulators() -> None:
    def image(emu: Emulator, **over: Any) -> bytes:
        api = Api(emu)
        try:
            return decode(api.one(task(outputType="base64Data", **over))["data"][0], api)[0]
        finally:
            api.close()

    refs = {"inputs": {"referenceImages": [{"image": png_data_uri(), "strength": -0.5}]}}
    with Emulator() as one, Emulator() as two:
        assert image(one) == image(two)
        assert image(one, **refs) == image(two, **refs)
        assert image(one, outputFormat="PNG") == image(two, outputFormat="PNG")
        assert image(one, seed=8) != image(one)
        assert image(one, settings={"creativity": "high"}) != image(one)
        second = Api(one)
        items = second.one(task(outputType="base64Data", numberResults=2))["data"]
        second.close()
        assert base64.b64decode(items[1]["imageBase64Data"]) == image(two, seed=8)


def test_include_cost_uses_the_price_table_and_safety_adds_nsfw_flag(api: Api) -> None:
    plain = api.one(task(includeCost=True))["data"][0]
    ref = {"referenceImages": [png_data_uri()]}
    with_refs = api.one(task(includeCost=True, inputs=ref))["data"][0]
    no_cost = api.one(task())["data"][0]
    checked = api.one(task(safety={"checkContent": True}))["data"][0]
    assert plain["cost"] == 0.06 and with_refs["cost"] == 0.065
    assert "cost" not in no_cost and "NSFWContent" not in no_cost
    assert checked["NSFWContent"] is False


# ---------------------------------------------------------------------------- validation

BAD_REQUESTS: list[tuple[str, dict[str, Any], str, Any]] = [
    ("width 1000", {"width": 1000}, "invalidWidth", "width"),
    ("pair 1024x768", {"height": 768}, "invalidDimensions", ["width", "height"]),
    (
        "creativity",
        {"settings": {"creativity": "extreme"}},
        "invalidCreativity",
        "settings.creativity",
    ),
    (
        "11 refs",
        {"inputs": {"referenceImages": ["aGVsbG8="] * 11}},
        "invalidReferenceImages",
        "inputs.referenceImages",
    ),
    (
        "strength 2.5",
        {"inputs": {"referenceImages": [{"image": "aGVsbG8=", "strength": 2.5}]}},
        "invalidStrength",
        "inputs.referenceImages[0].strength",
    ),
    ("negativePrompt", {"negativePrompt": "blurry"}, "unsupportedParameter", "negativePrompt"),
    ("missing prompt", {"positivePrompt": None}, "missingPositivePrompt", "positivePrompt"),
    ("unknown model", {"model": "runware:101@1"}, "unknownModel", "model"),
    ("numberResults 21", {"numberResults": 21}, "invalidNumberResults", "numberResults"),
    (
        "bad ref uuid",
        {"inputs": {"referenceImages": [str(uuid.uuid4())]}},
        "invalidReferenceImage",
        "inputs.referenceImages[0]",
    ),
]


@pytest.mark.parametrize(
    ("over", "code", "parameter"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_validation_errors_are_runware_shaped_and_not_billed(
    emu: Emulator, api: Api, over: dict[str, Any], code: str, parameter: Any
) -> None:
    t = task(**over)
    t = {k: v for k, v in t.items() if v is not None}
    err = api.error([t], 400)
    assert err["code"] == code and err["parameter"] == parameter
    assert err["taskType"] == "imageInference" and err["taskUUID"] == t["taskUUID"]
    assert isinstance(err["message"], str) and err["message"]
    assert emu.ledger_entries() == [] and emu.stats()["images_billed"] == 0
    fixed = task(taskUUID=t["taskUUID"])  # the refused taskUUID was not registered
    assert api.one(fixed)["data"][0]["taskUUID"] == t["taskUUID"]


def test_validation_error_details(api: Api) -> None:
    width = api.error([task(width=1000)], 400)
    assert width["message"].startswith("Invalid value for 'width' parameter.")
    assert 1024 in width["allowedValues"] and width["type"] == "integer"
    pair = api.error([task(height=768)], 400)
    assert pair["allowedValues"]["1:1"] == "1024x1024" and len(pair["allowedValues"]) == 8
    strength = api.error([task(inputs={"referenceImages": [{"image": "x", "strength": 2.5}]})], 400)
    assert (strength["min"], strength["max"]) == (-2, 2)
    refs = api.error([task(inputs={"referenceImages": ["x"] * 11})], 400)
    assert refs["max"] == 10
    creativity = api.error([task(settings={"creativity": "extreme"})], 400)
    assert creativity["allowedValues"] == ["raw", "low", "medium", "high"]


def test_malformed_bodies_and_paths(api: Api) -> None:
    not_json = api.session.post(api.emu.base_url, data=b"{", timeout=10)
    assert not_json.status_code == 400 and not_json.json()["errors"][0]["code"] == "invalidPayload"
    assert api.error({"taskType": "imageInference"}, 400)["code"] == "invalidPayload"
    assert api.error([{"taskType": "videoInference"}], 400)["code"] == "unsupportedTaskType"
    slash = api.session.post(api.emu.base_url + "/", json=[task()], timeout=10)
    assert slash.status_code == 200
    other = api.session.post(api.emu.base_url.replace("/v1", "/v2"), json=[task()], timeout=10)
    assert other.status_code == 404
    missing = api.session.get(api.emu.base_url.replace("/v1", f"/images/{uuid.uuid4()}.jpg"))
    assert missing.status_code == 404


# ---------------------------------------------------------------------------- auth, credits


def test_api_key_is_checked_by_header_or_authentication_task() -> None:
    with Emulator(api_key="right") as emu:
        wrong, none, right, anon = (
            Api(emu, "wrong"),
            Api(emu, None),
            Api(emu, "right"),
            Api(emu, None),
        )
        assert wrong.error([task()], 401)["code"] == "invalidApiKey"
        assert none.error([task()], 401)["code"] == "missingApiKey"
        assert right.one(task())["data"]
        auth = {"taskType": "authentication", "apiKey": "right"}
        body = anon.one([auth, task()])
        assert [i["taskType"] for i in body["data"]] == ["imageInference"]
        assert len(emu.ledger_entries()) == 2
        for client in (wrong, none, right, anon):
            client.close()


def test_without_api_key_any_key_works_but_a_key_is_required(emu: Emulator) -> None:
    anyone, nobody = Api(emu, "whatever"), Api(emu, None)
    assert anyone.one(task())["data"]
    assert nobody.error([task()], 401)["code"] == "missingApiKey"
    anyone.close()
    nobody.close()


def test_credits_run_out_with_402_and_no_billing() -> None:
    with Emulator(credits=0.15) as emu:
        api = Api(emu)
        api.one(task())
        api.one(task())
        err = api.error([task()], 402)
        assert err["code"] == "insufficientCredits"
        assert len(emu.ledger_entries()) == 2
        assert emu.credits_left() == pytest.approx(0.03)
        api.close()


# ---------------------------------------------------------------------------- taskUUID reuse


def test_conflict_after_accept_and_billed_once(emu: Emulator, api: Api) -> None:
    t = task(deliveryMethod="async")
    api.one(t)
    err = api.error([t], 400)
    assert err["code"] == "conflictTaskUUID" and err["taskUUID"] == t["taskUUID"]
    assert len(emu.ledger_entries()) == 1


def test_taskuuid_is_accepted_after_a_refused_attempt(emu: Emulator, api: Api) -> None:
    t = task()
    emu.set_faults({"http_503": 1.0})
    assert api.post([t]).status_code == 503
    emu.set_faults({})
    assert api.one(t)["data"][0]["taskUUID"] == t["taskUUID"]
    assert len(emu.ledger_entries()) == 1


# ---------------------------------------------------------------------------- imageUpload


def test_image_upload_then_use_as_reference(emu: Emulator, api: Api) -> None:
    up = {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": png_data_uri()}
    (item,) = api.one(up)["data"]
    assert item["taskType"] == "imageUpload" and item["taskUUID"] == up["taskUUID"]
    image_uuid = item["imageUUID"]
    assert api.one(up)["data"][0]["imageUUID"] == image_uuid  # the same upload resent
    refs = [image_uuid, {"image": image_uuid, "strength": -1.2}]
    (result,) = api.one(task(includeCost=True, inputs={"referenceImages": refs}))["data"]
    assert result["cost"] == 0.065
    assert emu.ledger_entries()[-1]["reference_count"] == 2
    served = api.session.get(api.emu.base_url.replace("/v1", f"/images/{image_uuid}.png"))
    assert served.status_code == 200 and served.headers["Content-Type"] == "image/png"
    bare = up["image"].split(",", 1)[1]
    raw = {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": bare}
    assert api.one(raw)["data"][0]["imageUUID"] != image_uuid
    broken = {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": "bm90IGFuIGltYWdl"}
    assert api.error([broken], 400)["code"] == "invalidImage"


def test_references_by_url_and_generated_uuid(api: Api) -> None:
    first = api.one(task())["data"][0]
    by_url = task(includeCost=True, inputs={"referenceImages": [first["imageURL"]]})
    assert api.one(by_url)["data"][0]["cost"] == 0.065
    by_uuid = task(inputs={"referenceImages": [{"image": first["imageUUID"], "strength": 1}]})
    assert api.one(by_uuid)["data"]
    remote = task(inputs={"referenceImages": ["https://example.invalid/style.png"]})
    assert api.one(remote)["data"]  # accepted, never fetched
    assert api.error([task(inputs={"referenceImages": ["not an image"]})], 400)["code"] == (
        "invalidReferenceImage"
    )


# ---------------------------------------------------------------------------- webhook, upload


class Receiver:
    """A loopback HTTP server recording every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.command, self.path, self.headers["Content-Type"], body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_and_upload_endpoint_reach_a_loopback_receiver(emu: Emulator, api: Api) -> None:
    rx = Receiver()
    try:
        t = task(
            numberResults=2,
            outputType="base64Data",
            webhookURL=f"{rx.url}/hook",
            uploadEndpoint=f"{rx.url}/put?sig=1",
        )
        items = api.one(t)["data"]
        rx.wait(4)
    finally:
        rx.close()
    posts = [r for r in rx.requests if r[0] == "POST"]
    puts = [r for r in rx.requests if r[0] == "PUT"]
    assert len(posts) == 2 and len(puts) == 2
    assert all(p[1] == "/hook" and p[2] == "application/json" for p in posts)
    hooked = [json.loads(p[3])["data"][0] for p in posts]
    assert sorted(h["imageUUID"] for h in hooked) == sorted(i["imageUUID"] for i in items)
    assert all(h["status"] == "success" and h["taskUUID"] == t["taskUUID"] for h in hooked)
    assert all(p[1] == "/put?sig=1" and p[2] == "image/jpeg" for p in puts)
    assert sorted(p[3] for p in puts) == sorted(
        base64.b64decode(i["imageBase64Data"]) for i in items
    )
    assert emu.stats()["webhooks"] == 2 and emu.stats()["uploads"] == 2


def test_non_loopback_delivery_targets_are_skipped(emu: Emulator, api: Api) -> None:
    t = task(webhookURL="https://hooks.example.invalid/x", uploadEndpoint="http://10.1.2.3/put")
    assert api.one(t)["data"]
    stats = emu.stats()
    assert stats["deliveries_skipped"] == 2 and stats["webhooks"] == stats["uploads"] == 0


# ---------------------------------------------------------------------------- faults


def test_http_429_has_retry_after_and_is_not_accepted() -> None:
    with Emulator(faults={"http_429": 1.0}) as emu:
        api = Api(emu)
        t = task()
        r = api.post([t])
        assert r.status_code == 429 and r.headers["Retry-After"] in ("0", "1")
        assert r.json()["errors"][0]["code"] == "rateLimitExceeded"
        emu.set_faults({})
        assert api.one(t)["data"]
        assert emu.stats()["faults.http_429"] == 1 and len(emu.ledger_entries()) == 1
        api.close()


def test_http_500_bodies_vary_and_503_is_json() -> None:
    with Emulator(faults={"http_500": 1.0}, fault_seed=3) as emu:
        api = Api(emu)
        kinds: set[str] = set()
        for _ in range(30):
            r = api.post([task()])
            assert r.status_code == 500
            kinds.add(r.headers.get("Content-Type") or "empty")
        assert kinds == {"application/json", "text/html", "empty"}
        emu.set_faults({"http_503": 1.0})
        r = api.post([task()])
        assert r.status_code == 503 and r.json()["errors"][0]["code"] == "serviceUnavailable"
        assert emu.ledger_entries() == []
        api.close()


@pytest.mark.parametrize("accepted", [True, False])
def test_disconnect_before_or_after_accepting(accepted: bool) -> None:
    with Emulator(faults={"disconnect": 1.0}, fault_accept=float(accepted)) as emu:
        api = Api(emu)
        t = task(deliveryMethod="async")
        with pytest.raises(requests.ConnectionError):
            api.post([t])
        emu.set_faults({})
        if accepted:  # billed, and recoverable by its taskUUID: never pay twice
            assert api.one(poll(t["taskUUID"]))["data"][0]["status"] == "success"
            assert api.error([t], 400)["code"] == "conflictTaskUUID"
            assert len(emu.ledger_entries()) == 1
        else:  # nothing happened: the same taskUUID may be submitted again
            assert api.error([poll(t["taskUUID"])], 400)["code"] == "taskFailedOrNotFound"
            assert emu.ledger_entries() == []
            assert api.one(t)["data"]
        stats = emu.stats()
        assert stats["faults.disconnect"] == 1
        assert stats["faults.disconnect.accepted"] == int(accepted)
        api.close()


def test_stall_outlasts_the_client_timeout_and_stop_is_prompt() -> None:
    emu = Emulator(faults={"stall": 1.0}, fault_accept=1.0, stall_s=30)
    emu.start()
    api = Api(emu)
    t = task(deliveryMethod="async")
    with pytest.raises(requests.ReadTimeout):
        api.post([t], timeout=0.5)
    emu.set_faults({})
    assert api.one(poll(t["taskUUID"]))["data"][0]["status"] == "success"
    assert emu.stats()["faults.stall"] == 1
    start = time.monotonic()
    emu.stop()
    assert time.monotonic() - start < 3
    api.close()


def test_fault_seed_makes_faults_reproducible() -> None:
    def statuses(seed: int) -> list[int]:
        dropping = ("disconnect", "stall", "accepted_disconnect")
        rates = {kind: 0.12 for kind in FAULT_NAMES if kind not in dropping}
        with Emulator(faults=rates, fault_seed=seed) as emu:
            api = Api(emu)
            out = [api.post([task()]).status_code for _ in range(25)]
            api.close()
            return out

    first = statuses(11)
    assert first == statuses(11)
    assert len(set(first)) > 1


def test_parse_faults() -> None:
    assert parse_faults("http_429=0.1, http_503=0.05,disconnect=0.02") == {
        "http_429": 0.1,
        "http_503": 0.05,
        "disconnect": 0.02,
    }
    assert parse_faults("") == {}
    for bad in ("http_418=0.1", "stall", "stall=2", "stall=x"):
        with pytest.raises(ValueError):
            parse_faults(bad)
    with pytest.raises(ValueError):
        Emulator(faults={"boom": 0.1})
    with pytest.raises(ValueError):
        Emulator(host="0.0.0.0")


# ---------------------------------------------------------------------------- ledger, CLI


def test_ledger_file_has_one_line_per_billed_image(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.jsonl"
    with Emulator(ledger=path) as emu:
        api = Api(emu)
        t = task(
            numberResults=2,
            settings={"creativity": "low"},
            inputs={"referenceImages": [png_data_uri()]},
        )
        items = api.one(t)["data"]
        api.error([task(width=1000)], 400)
        api.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == emu.ledger_entries()
    assert [e["imageUUID"] for e in lines] == [i["imageUUID"] for i in items]
    first = lines[0]
    assert set(first) == {
        "taskUUID",
        "imageUUID",
        "positivePrompt",
        "seed",
        "width",
        "height",
        "creativity",
        "reference_count",
        "cost",
        "at",
        "latency_s",
    }
    assert (first["taskUUID"], first["seed"], first["creativity"]) == (t["taskUUID"], 7, "low")
    assert (first["width"], first["height"], first["reference_count"]) == (1024, 1024, 1)
    assert first["cost"] == 0.065 and first["at"].endswith("Z")


def test_standalone_cli_prints_url_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    args = [
        sys.executable,
        "-m",
        "pipeline.emulator",
        "--port",
        "0",
        "--ledger",
        str(ledger),
        "--latency",
        "0.05",
        "--faults",
        "http_429=0,http_503=0",
        "--api-key",
        KEY,
        "--credits",
        "5.0",
        "--fault-seed",
        "1",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with requests.Session() as session:
            session.trust_env = False
            r = session.post(url, json=[task()], headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200 and r.json()["data"][0]["seed"] == 7
            bad = session.post(url, json=[task()], headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out, _ = proc.communicate()
    assert out == ""
    assert len(ledger.read_text().splitlines()) == 1


def test_standalone_cli_refuses_non_loopback_hosts() -> None:
    args = [sys.executable, "-m", "pipeline.emulator", "--host", "0.0.0.0"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "loopback" in done.stderr
