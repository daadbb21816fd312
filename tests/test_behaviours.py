"""Correct under every plausible Runware (runware-protocol.md §11): emulator behaviours, the
client under each, the matrix from the ledger, the price check and what "billed" counts."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from runs import ledger, read_manifest, run_sweep_inprocess, seed_sweep

from pipeline.client import Client
from pipeline.emulator import Emulator
from pipeline.protocol import CLIENT_DEFAULTS, CLIENT_FIELDS

KEY = "test-key"


def task(**over: Any) -> dict[str, Any]:
    """A valid async imageInference task with a fresh taskUUID."""
    base: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "krea:krea@2-large",
        "positivePrompt": "a lighthouse",
        "width": 1024,
        "height": 1024,
        "seed": 7,
        "deliveryMethod": "async",
        "includeCost": True,
        "outputType": "base64Data",
    }
    base.update(over)
    return base


def post(emu: Emulator, tasks: list[dict[str, Any]]) -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        return s.post(emu.base_url, json=tasks, headers={"Authorization": f"Bearer {KEY}"})


PER_ATTEMPT = (*CLIENT_FIELDS, *CLIENT_DEFAULTS)
REQUEST = {k: v for k, v in task().items() if k not in PER_ATTEMPT}


def client(emu: Emulator, **kw: Any) -> Client:
    opts: dict[str, Any] = {
        "timeout_s": 5.0,
        "max_retries": 4,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "first_poll_s": 0.05,
        "settle_s": 0.2,
    }
    opts.update(kw)
    return Client(emu.base_url, KEY, **opts)


# ------------------------------------------------------------------------------------------
# emulator behaviours


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("empty", 200, None),
        ("taskFailedOrNotFound", 400, "taskFailedOrNotFound"),
        ("taskNotFound", 400, "taskNotFound"),
        ("taskExpired", 400, "taskExpired"),
    ],
)
def test_emulator_unknown_task(mode: str, status: int, code: str | None) -> None:
    with Emulator(unknown_task=mode) as emu:
        r = post(emu, [{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}])
    assert r.status_code == status
    body = r.json()
    if code is None:
        assert body == {"data": []}
    else:
        assert body["errors"][0]["code"] == code


def test_emulator_queued_polls_then_processing() -> None:
    with Emulator(queued_polls=2, latency_s=0.5) as emu:
        t = task()
        post(emu, [t])
        answers = [
            post(emu, [{"taskType": "getResponse", "taskUUID": t["taskUUID"]}]).json()["data"]
            for _ in range(3)
        ]
    assert answers[0] == [] and answers[1] == []
    assert answers[2][0]["status"] == "processing"


@pytest.mark.parametrize(("mode", "charges"), [("conflict", 1), ("replay", 1), ("charge", 2)])
def test_emulator_repeated_task(mode: str, charges: int) -> None:
    with Emulator(repeated_task=mode) as emu:
        t = task(deliveryMethod="sync")
        first = post(emu, [t])
        again = post(emu, [t])
        billed = len(emu.ledger_entries())
    assert first.status_code == 200 and billed == charges
    if mode == "conflict":
        assert again.status_code == 400 and again.json()["errors"][0]["code"] == "conflictTaskUUID"
    else:
        assert again.status_code == 200 and again.json()["data"][0]["imageBase64Data"]
    if mode == "replay":
        assert again.json()["data"][0]["imageUUID"] == first.json()["data"][0]["imageUUID"]


@pytest.mark.parametrize("pollable", [False, True])
def test_emulator_sync_pollable_and_task_details(pollable: bool) -> None:
    with Emulator(sync_pollable=pollable) as emu:
        t = task(deliveryMethod="sync")
        post(emu, [t])
        got = post(emu, [{"taskType": "getResponse", "taskUUID": t["taskUUID"]}]).json()["data"]
        details = post(emu, [{"taskType": "getTaskDetails", "taskUUID": t["taskUUID"]}]).json()
    assert bool(got) == pollable
    inner = details["data"][0]["response"]["data"]
    assert inner[0]["status"] == "success" and inner[0]["imageBase64Data"]


def test_emulator_without_task_details_refuses_it() -> None:
    with Emulator(task_details=False) as emu:
        r = post(emu, [{"taskType": "getTaskDetails", "taskUUID": str(uuid.uuid4())}])
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "unsupportedTaskType"


@pytest.mark.parametrize("status", [402, 400])
def test_emulator_credits_status(status: int) -> None:
    with Emulator(credits=0.01, credits_status=status) as emu:
        r = post(emu, [task()])
    assert r.status_code == status and r.json()["errors"][0]["code"] == "insufficientCredits"


def test_emulator_price_factor_and_lognormal_latency() -> None:
    with Emulator(price_factor=2.0, latency_s=0.2, latency_sigma=0.5, fault_seed=3) as emu:
        for _ in range(12):
            post(emu, [task()])
        entries = emu.ledger_entries()
    assert {e["cost"] for e in entries} == {0.12}
    lat = sorted(e["latency_s"] for e in entries)
    assert lat[0] < 0.2 < lat[-1] and len(set(lat)) == len(lat)


@pytest.mark.parametrize("kind", ["accepted_500", "accepted_disconnect"])
def test_emulator_accepted_then_failed_is_billed(kind: str) -> None:
    with Emulator(faults={kind: 1.0}) as emu:
        t = task()
        with pytest.raises(requests.ConnectionError) if kind == "accepted_disconnect" else _ok():
            r = post(emu, [t])
            assert r.status_code == 500
        emu.set_faults({})
        known = post(emu, [{"taskType": "getResponse", "taskUUID": t["taskUUID"]}]).json()
        assert len(emu.ledger_entries()) == 1
    assert known["data"][0]["taskUUID"] == t["taskUUID"]


class _ok:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Redirector(http.server.BaseHTTPRequestHandler):
    """Answers every request with a 302 to `target` (a class attribute set per test)."""

    target = ""
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self._redirect()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._redirect()

    def _redirect(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", type(self).target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def redirector() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_emulator_refuses_redirects_off_loopback(redirector: str) -> None:
    """Issue 11.12: a 302 from a loopback server to http://2130706433:… is not followed."""
    from pipeline.emulator import media

    _Redirector.target = "http://2130706433:9/x.png"  # 127.0.0.1 as one number: not allowed
    _Redirector.hits = []
    with pytest.raises(media.BadImage):
        media.fetch_loopback(f"{redirector}/ref.png")
    assert _Redirector.hits == ["/ref.png"]
    # webhooks use the same opener: the redirect is refused, nothing else is called
    with Emulator() as emu:
        post(emu, [task(webhookURL=f"{redirector}/hook")])
        deadline = time.monotonic() + 5
        while emu.stats()["deliveries_failed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert emu.stats()["deliveries_failed"] == 1 and emu.stats()["webhooks"] == 0


def test_emulator_follows_a_loopback_redirect(redirector: str) -> None:
    with Emulator() as emu:
        t = task(deliveryMethod="sync", outputType="URL")
        url = post(emu, [t]).json()["data"][0]["imageURL"]
        _Redirector.target = url
        from pipeline.emulator import media

        assert media.fetch_loopback(f"{redirector}/ref.png")[:3] == b"\xff\xd8\xff"


# ------------------------------------------------------------------------------------------
# the client under each behaviour


def test_queued_async_task_is_polled_not_abandoned() -> None:
    """Issue 10: three empty answers used to end a billed task as resultLost after ~0.1 s."""
    with Emulator(queued_polls=4, latency_s=0.1) as emu, client(emu) as c:
        gen = c.generate(REQUEST, str(uuid.uuid4()))
        assert len(gen.images) == 1 and len(emu.ledger_entries()) == 1
        assert c.stats()["empty_polls"] >= 4


@pytest.mark.parametrize("mode", ["empty", "taskFailedOrNotFound", "taskNotFound", "taskExpired"])
@pytest.mark.parametrize("status", ["http_500", "http_503", "http_504"])
def test_unknown_outcome_not_known_resubmits_same_uuid(mode: str, status: str) -> None:
    """Issue 10: a 5xx before acceptance, then "not known" in any form: re-submitted, once paid."""
    with Emulator(unknown_task=mode) as emu, client(emu) as c:
        task_uuid = str(uuid.uuid4())
        result: dict[str, Any] = {}
        emu.queue_faults([status])  # refused before acceptance
        result["gen"] = c.generate(REQUEST, task_uuid)
        entries = emu.ledger_entries()
    assert [e["taskUUID"] for e in entries] == [task_uuid]
    assert len(result["gen"].images) == 1


@pytest.mark.parametrize("repeated", ["conflict", "replay", "charge"])
@pytest.mark.parametrize("mode", ["empty", "taskNotFound"])
def test_accepted_then_failed_is_paid_once(repeated: str, mode: str) -> None:
    """Accepted and billed, answer lost (500 / dropped), queued for 2 polls: one charge."""
    for kind in ("accepted_500", "accepted_disconnect"):
        emu = Emulator(unknown_task=mode, repeated_task=repeated, queued_polls=2)
        with emu, client(emu) as c:
            emu.queue_faults([kind])  # the submit is accepted and billed, its answer lost
            task_uuid = str(uuid.uuid4())
            gen = c.generate(REQUEST, task_uuid)
            assert len(gen.images) == 1
            assert [e["taskUUID"] for e in emu.ledger_entries()] == [task_uuid], kind


@pytest.mark.parametrize("slow", ["http_429", "http_503", "disconnect"])
def test_slow_lookups_do_not_shorten_the_settle_wait(slow: str) -> None:
    """The matrix flake: a settle lookup that needed retries used up the settle wait in time.

    Accepted and billed, answer lost, queued for 2 polls, repeated taskUUID charged again; the
    first settle lookup fails once (Retry-After 1 s, longer than settle_s=0.2). It used to
    re-submit after one answered lookup — paid twice. The settle wait counts answered lookups.
    """
    emu = Emulator(unknown_task="empty", repeated_task="charge", queued_polls=2)
    with emu, client(emu) as c:
        emu.queue_faults(["accepted_500", slow])
        task_uuid = str(uuid.uuid4())
        gen = c.generate(REQUEST, task_uuid)
        assert len(gen.images) == 1
        assert [e["taskUUID"] for e in emu.ledger_entries()] == [task_uuid]
        assert emu.stats().get("charged_again", 0) == 0 and c.stats().get("resubmits", 0) == 0


def test_charge_again_bound_is_the_settle_wait() -> None:
    """The README's bound: an accepted task invisible for the whole settle wait is paid twice."""
    emu = Emulator(unknown_task="empty", repeated_task="charge", queued_polls=6)
    with emu, client(emu, settle_s=0.1) as c:
        emu.queue_faults(["accepted_500"])
        c.generate(REQUEST, str(uuid.uuid4()))
        assert len(emu.ledger_entries()) == 2  # exactly one extra charge, not more


@pytest.mark.parametrize(
    ("opts", "ok"),
    [
        ({"task_details": True}, True),
        ({"task_details": False, "repeated_task": "replay"}, True),
        ({"task_details": False, "sync_pollable": True}, True),
        ({"task_details": False}, False),  # conflict, nothing kept: paid once, result lost
    ],
)
def test_sync_lost_response(opts: dict[str, Any], ok: bool) -> None:
    """api.delivery=sync: a lost response is recovered with getTaskDetails where supported."""
    emu = Emulator(**opts)
    with emu, client(emu, delivery="sync") as c:
        emu.queue_faults(["accepted_disconnect"])
        task_uuid = str(uuid.uuid4())
        if ok:
            assert len(c.generate(REQUEST, task_uuid).images) == 1
        else:
            with pytest.raises(Exception, match="resultLost"):
                c.generate(REQUEST, task_uuid)
        assert len(emu.ledger_entries()) == 1


def test_huge_poll_timeout_never_overflows() -> None:
    """Issue 11.8: api.poll_timeout_s=1e10 billed cells then OverflowError × 3."""
    with Emulator(latency_s=0.05) as emu, client(emu, poll_timeout_s=1e10, timeout_s=1e10) as c:
        assert len(c.generate(REQUEST, str(uuid.uuid4())).images) == 1


def test_first_poll_waits_first_poll_s_until_a_completion() -> None:
    with Emulator(latency_s=0.05) as emu, client(emu, first_poll_s=1.0) as c:
        t0 = time.monotonic()
        c.generate(REQUEST, str(uuid.uuid4()))
        first = time.monotonic() - t0
        t1 = time.monotonic()
        for _ in range(10):
            c.generate(REQUEST, str(uuid.uuid4()))
        later = (time.monotonic() - t1) / 10
    assert first >= 1.0  # nothing polled sooner before a completion was seen
    # Then the cadence follows the observed latency (0.05 s): a wait of first_poll_s would make
    # each ≥ 1 s; half of that leaves room for a loaded machine (was < 0.3 at 0.6: a flake risk).
    assert later < 0.5


def test_polls_per_image_at_fixed_latency() -> None:
    """The cadence follows the latency: a few getResponse per image, not a poll every few ms.

    The ≤ 1.5 target at 6 s is the benchmark's (bench.polling); on this shared machine a 0.6 s
    emulator sleep overshoots under load (1.7 seen), so the test guards the mechanism with room:
    a cadence that ignored the learnt latency would poll ~15 times per image here.
    """
    with Emulator(latency_s=0.6) as emu, client(emu, first_poll_s=1.0, pool_size=24) as c:
        threads = [
            threading.Thread(
                target=lambda: [c.generate(REQUEST, str(uuid.uuid4())) for _ in range(6)]
            )
            for _ in range(16)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        polls = emu.stats()["tasks.getResponse"]
    assert polls / 96 <= 3.0, polls


# ------------------------------------------------------------------------------------------
# whole sweeps: the matrix, from the ledger

FAULT_MIX = {
    "http_429": 0.04,
    "http_500": 0.04,
    "http_503": 0.04,
    "http_504": 0.04,
    "disconnect": 0.04,
    "accepted_500": 0.05,
    "accepted_disconnect": 0.05,
}
BEHAVIOURS: list[dict[str, Any]] = [
    {},
    {"unknown_task": "empty"},
    {"unknown_task": "taskNotFound", "queued_polls": 2},
    {"unknown_task": "taskExpired", "repeated_task": "replay"},
    {"unknown_task": "empty", "queued_polls": 2, "repeated_task": "charge"},
    {"repeated_task": "charge"},
    {"credits_status": 400},
]
SLOW_BEHAVIOURS: list[dict[str, Any]] = [
    {"unknown_task": u, "queued_polls": q, "repeated_task": r}
    for u in ("empty", "taskFailedOrNotFound", "taskNotFound", "taskExpired")
    for q in (0, 2)
    for r in ("conflict", "replay", "charge")
]


def run_matrix(tmp_path: Path, behaviour: dict[str, Any], *, delivery: str = "async") -> None:
    n = 16
    sweep = seed_sweep(n, name="matrix")
    store = tmp_path / "store"
    budget = 5.0
    with Emulator(faults=FAULT_MIX, fault_seed=5, latency_s=0.05, **behaviour) as emu:
        edits = {
            "api.backend": "emulator",
            "api.base_url": emu.base_url,
            "api.delivery": delivery,
            "api.first_poll_s": 0.05,
            "api.settle_s": 0.2,
            "api.timeout_s": 5,
            "api.backoff_base_s": 0.01,  # retries need not sleep through the real backoff
            "runner.concurrency": 4,
            "runner.max_retries": 6,
            "budget.max_usd": budget,
            "store.dir": str(store),
        }
        codes = [run_sweep_inprocess(tmp_path, sweep, tmp_path / "r1", **edits)]
        if codes[0] != 0:  # one rerun resolves whatever the first run left
            emu.set_faults({})
            codes.append(run_sweep_inprocess(tmp_path, sweep, tmp_path / "r2", **edits))
        entries = emu.ledger_entries()
    final = read_manifest(tmp_path / ("r2" if len(codes) > 1 else "r1"))
    assert codes[-1] == 0, (behaviour, codes)
    assert set(final["status"]) <= {"ok", "cached"} and len(final) == n
    per_task = Counter(e["taskUUID"] for e in entries)
    per_seed = Counter(e["seed"] for e in entries)
    # The README's bound under repeated_task=charge: a task is paid twice only if the server hid
    # it for the whole settle wait (≥ five answered lookups); every row hides it ≤ 2 polls: none.
    assert behaviour.get("queued_polls", 0) < 5
    assert set(per_task.values()) == {1}, per_task  # no task billed twice
    assert set(per_seed.values()) == {1}, per_seed  # no cell paid twice
    assert sum(e["cost"] for e in entries) <= budget


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: json.dumps(b) or "{}")
def test_matrix(tmp_path: Path, behaviour: dict[str, Any]) -> None:
    run_matrix(tmp_path, behaviour)


def test_matrix_sync_with_task_details(tmp_path: Path) -> None:
    run_matrix(tmp_path, {"task_details": True}, delivery="sync")


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", SLOW_BEHAVIOURS, ids=lambda b: json.dumps(b))
def test_matrix_full(tmp_path: Path, behaviour: dict[str, Any]) -> None:
    run_matrix(tmp_path, behaviour)


# ------------------------------------------------------------------------------------------
# the price check before fan-out, and the budget (issue 11.4's numbers)

STALE = {
    "pricing.models": {
        "krea:krea@2-large": {
            "per_image": 0.01,
            "with_reference_images": 0.01,
            "with_moodboards": 0.01,
        }
    }
}


def stale_run(
    tmp_path: Path, emu: Emulator, *, concurrency: int, shard: tuple[int, int] = (0, 1), **more: Any
) -> int:
    edits = {
        "api.backend": "emulator",
        "api.base_url": emu.base_url,
        "api.first_poll_s": 0.05,
        "runner.concurrency": concurrency,
        "budget.max_usd": 1.0,
        "budget.price_check": "on",
        "store.dir": str(tmp_path / "store"),
        "shard.index": shard[0],
        "shard.count": shard[1],
        **STALE,
        **more,
    }
    return run_sweep_inprocess(
        tmp_path, seed_sweep(60, name="stale"), tmp_path / f"run-{shard[0]}-{concurrency}", **edits
    )


@pytest.mark.parametrize("concurrency", [32, 64])
def test_stale_price_table_stops_after_the_first_image(
    tmp_path: Path, concurrency: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11.4: table $0.01, billed $0.06, budget $1: $2.28 at C=32, $4.02 at C=64."""
    with Emulator(latency_s=0.05) as emu:
        code = stale_run(tmp_path, emu, concurrency=concurrency)
        billed = sum(e["cost"] for e in emu.ledger_entries())
    out = capsys.readouterr().out
    assert code == 2
    assert billed == pytest.approx(0.06)  # one image, then nothing else submitted
    assert "billed $0.06 vs $0.01 estimated (+500%)" in out
    assert "budget.price_tolerance=5.01" in out and "conf/pricing" in out


def test_stale_price_table_over_four_shards(tmp_path: Path) -> None:
    """Issue 11.4: $2.22 billed over 4 shards; now each shard's first image alone."""
    with Emulator(latency_s=0.05) as emu:
        codes = [stale_run(tmp_path, emu, concurrency=16, shard=(i, 4)) for i in range(4)]
        billed = sum(e["cost"] for e in emu.ledger_entries())
    assert codes == [2, 2, 2, 2] and billed == pytest.approx(0.24) and billed <= 1.0


def test_half_price_table_stops_and_correct_table_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10: a table half the live price stops after the first billed image, exit 2."""
    sweep = seed_sweep(20, name="half")
    base = {
        "api.backend": "emulator",
        "api.first_poll_s": 0.05,
        "budget.price_check": "on",
        "runner.concurrency": 8,
    }
    with Emulator(price_factor=2.0) as emu:
        code = run_sweep_inprocess(
            tmp_path,
            sweep,
            tmp_path / "a",
            **base,
            **{"api.base_url": emu.base_url, "store.dir": str(tmp_path / "s1")},
        )
        assert code == 2 and len(emu.ledger_entries()) == 1
    assert "$0.12 vs $0.06 estimated (+100%)" in capsys.readouterr().out
    with Emulator() as emu:
        code = run_sweep_inprocess(
            tmp_path,
            sweep,
            tmp_path / "b",
            **base,
            **{"api.base_url": emu.base_url, "store.dir": str(tmp_path / "s2")},
        )
        assert code == 0 and len(emu.ledger_entries()) == 20
    assert (
        "price check: the first image billed $0.06 vs $0.06 estimated (+0%)"
        in capsys.readouterr().out
    )


def test_billed_but_failed_cells_count_toward_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Poll-timeout cells were paid: they count at their estimate; billed stays in the budget."""
    with Emulator(latency_s=3.0) as emu:
        code = run_sweep_inprocess(
            tmp_path,
            seed_sweep(20, name="timeouts"),
            tmp_path / "r",
            **{
                "api.backend": "emulator",
                "api.base_url": emu.base_url,
                "api.poll_timeout_s": 0.3,
                "runner.concurrency": 8,
                "budget.max_usd": 1.5,  # the plan ($1.20) passes; the running budget must hold
                "store.dir": str(tmp_path / "store"),
            },
        )
        billed = sum(e["cost"] for e in emu.ledger_entries())
    out = capsys.readouterr().out
    assert code == 1 and billed == pytest.approx(1.20) and billed <= 1.5
    # issue 11.5: "20 poll-timeout cells report $0.00 for $1.20 paid"
    assert "$0.00 billed vs $0.00 estimated for the 0 image(s) paid for here" in out
    assert "unsettled $1.20 at estimate: 20 task(s)" in out
    assert "a rerun recovers them by taskUUID" in out


# ------------------------------------------------------------------------------------------
# what "billed" counts (issue 11.5) and the resume summary (issue 12)


def test_two_concurrent_runs_bill_once_between_them(tmp_path: Path) -> None:
    """Two runs of one sweep at once each reported $2.40 for $2.40 paid."""
    sweep = seed_sweep(12, name="twin")
    with Emulator(latency_s=0.3) as emu:
        edits = {
            "api.backend": "emulator",
            "api.base_url": emu.base_url,
            "api.first_poll_s": 0.05,
            "runner.concurrency": 6,
            "store.dir": str(tmp_path / "store"),
        }
        codes: list[int] = []
        runs = [
            threading.Thread(
                target=lambda d=d: codes.append(
                    run_sweep_inprocess(tmp_path, sweep, tmp_path / d, **edits)
                )
            )
            for d in ("a", "b")
        ]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        paid = sum(e["cost"] for e in emu.ledger_entries())
    reported = sum(
        float(read_manifest(tmp_path / d)["cost_usd"].fillna(0).sum()) for d in ("a", "b")
    )
    assert codes == [0, 0]
    assert reported == pytest.approx(paid) and paid == pytest.approx(0.72)


def test_changed_sweep_resumed_in_a_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 manifest rows for a 3-cell plan and "$0.48 billed vs $0.18 estimated"."""
    run_dir = tmp_path / "r"
    store = str(tmp_path / "store")
    with Emulator() as emu:
        edits = {
            "api.backend": "emulator",
            "api.base_url": emu.base_url,
            "api.first_poll_s": 0.05,
            "store.dir": store,
        }
        assert run_sweep_inprocess(tmp_path, seed_sweep(8, name="x"), run_dir, **edits) == 0
        capsys.readouterr()
        changed = seed_sweep(3, name="x", positivePrompt="another prompt")
        assert run_sweep_inprocess(tmp_path, changed, run_dir, **edits) == 0
    out = capsys.readouterr().out
    frame = read_manifest(run_dir)
    assert len(frame) == 3
    assert "$0.18 billed vs $0.18 estimated for the 3 image(s) paid for here" in out
    assert "8 row(s) of cells not in this plan" in out


def test_resume_summary_compares_the_same_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: after a resume, "$3.12 billed vs $2.34 estimated" (two different sets of cells)."""
    run_dir = tmp_path / "r"
    with Emulator() as emu:
        edits = {
            "api.backend": "emulator",
            "api.base_url": emu.base_url,
            "api.first_poll_s": 0.05,
            "store.dir": str(tmp_path / "store"),
            "budget.max_usd": 0.3,
        }
        sweep = seed_sweep(10, name="resume")
        assert (
            run_sweep_inprocess(
                tmp_path, sweep, run_dir, **{**edits, "budget.max_usd": 5, "shard.count": 2}
            )
            == 0
        )
        capsys.readouterr()
        assert run_sweep_inprocess(tmp_path, sweep, run_dir, **{**edits, "budget.max_usd": 5}) == 0
        paid = sum(e["cost"] for e in emu.ledger_entries())
    out = capsys.readouterr().out
    assert paid == pytest.approx(0.60)
    assert "$0.60 billed vs $0.60 estimated for the 10 image(s) paid for here" in out
    assert len(ledger(tmp_path / "none.jsonl")) == 0


# ------------------------------------------------------------------------------------------
# no stranded cell: pollTimeout and outcomeUnknown are resolved by the next run


def test_poll_timeout_cells_are_recovered_by_the_next_run(tmp_path: Path) -> None:
    sweep = seed_sweep(6, name="pt")
    with Emulator(latency_s=1.0) as emu:
        edits = {
            "api.backend": "emulator",
            "api.base_url": emu.base_url,
            "api.first_poll_s": 0.05,
            "store.dir": str(tmp_path / "store"),
        }
        first = run_sweep_inprocess(
            tmp_path, sweep, tmp_path / "a", **edits, **{"api.poll_timeout_s": 0.2}
        )
        assert first == 1 and set(read_manifest(tmp_path / "a")["error_code"]) == {"pollTimeout"}
        second = run_sweep_inprocess(tmp_path, sweep, tmp_path / "b", **edits)
        entries = emu.ledger_entries()
    assert second == 0 and set(read_manifest(tmp_path / "b")["status"]) == {"ok"}
    assert len(entries) == 6  # recovered by taskUUID: nothing paid again
    billed = float(read_manifest(tmp_path / "b")["cost_usd"].sum())
    assert billed == pytest.approx(0.36)  # the rerun reports what the first run's tasks cost


def test_outcome_unknown_cells_are_resolved_by_the_next_run(tmp_path: Path) -> None:
    """Every POST after the submit fails (accepted, answer lost, lookups 5xx): outcomeUnknown."""
    sweep = seed_sweep(4, name="ou")
    with Emulator() as emu:
        edits = {
            "api.backend": "emulator",
            "api.base_url": emu.base_url,
            "api.first_poll_s": 0.05,
            "api.settle_s": 0.1,
            "runner.max_retries": 1,
            "api.backoff_base_s": 0.01,  # retries need not sleep through the real backoff
            "store.dir": str(tmp_path / "store"),
        }
        emu.set_faults({"accepted_500": 0.5, "http_503": 0.5})
        first = run_sweep_inprocess(tmp_path, sweep, tmp_path / "a", **edits)
        emu.set_faults({})
        second = run_sweep_inprocess(tmp_path, sweep, tmp_path / "b", **edits)
        entries = emu.ledger_entries()
    assert first != 0
    assert second == 0 and len(read_manifest(tmp_path / "b")) == 4
    assert sorted(Counter(e["seed"] for e in entries).values()) == [1, 1, 1, 1]
