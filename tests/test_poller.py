"""pipeline.poller alone: a fake sender and a fake clock, no thread, no HTTP, no sleeping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from pipeline.errors import TransientError
from pipeline.poller import (
    EMPTY_ANSWERS_SYNC,
    FIRST_POLL_FACTOR,
    FIRST_POLL_MARGIN,
    POLL_BATCH_MAX,
    PREDICT_MARGIN_S,
    PROBE_AT,
    PROBE_EVERY,
    Closed,
    Pending,
    Poller,
    SendFailed,
)
from pipeline.protocol import Answer


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRunware:
    """The Sender: tasks finish at a set clock time; every POST is recorded with its time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.done_at: dict[str, float] = {}
        self.progress = False  # report `progress` on processing items
        self.accepted_at: dict[str, float] = {}
        self.posts: list[tuple[float, list[str]]] = []
        self.details: list[str] = []
        self.counts: Counter[str] = Counter()
        self.answer: Callable[[list[str]], Answer] | None = None  # overrides the default answer
        self.fail: Exception | None = None  # raised by every getResponse POST

    def get_responses(self, task_uuids: list[str]) -> Answer:
        self.posts.append((self.clock.now, list(task_uuids)))
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return self.answer(task_uuids)
        data: list[dict[str, object]] = []
        for u in task_uuids:
            if self.clock.now >= self.done_at[u]:
                data.append({"taskUUID": u, "imageUUID": f"img-{u}", "imageBase64Data": "AA=="})
            else:
                item: dict[str, object] = {"taskUUID": u, "status": "processing"}
                if self.progress:
                    start, end = self.accepted_at[u], self.done_at[u]
                    item["progress"] = int(100 * (self.clock.now - start) / (end - start))
                data.append(item)
        return Answer(200, {"data": data}, "")

    def task_details(self, pending: Pending) -> bool:
        self.details.append(pending.task_uuid)
        return False

    def retry_delay(self, k: int, retry_after: float | None) -> float:
        return retry_after if retry_after is not None else 0.25 * (k + 1)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def submit(self, poller: Poller, name: str, latency: float, *, sync: bool = False) -> Pending:
        """A task accepted now, finishing `latency` later; tracked by the poller."""
        now = self.clock.now
        self.accepted_at[name], self.done_at[name] = now, now + latency
        p = Pending(name, 1, now + 600.0, accepted_at=now, sync=sync)
        poller.track(p)
        return p

    def polls_of(self, name: str) -> list[float]:
        """The clock times `name` was polled at, relative to its accept."""
        start = self.accepted_at[name]
        return [round(at - start, 6) for at, uuids in self.posts if name in uuids]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> FakeRunware:
    return FakeRunware(clock)


def make(server: FakeRunware, *, failure_limit: int = 3, batch: bool = False) -> Poller:
    """A poller without threads on the fake clock (first_poll_s 1 s)."""
    return Poller(
        server,
        first_poll_s=1.0,
        failure_limit=failure_limit,
        batch=batch,
        clock=server.clock,
        threaded=False,
    )


def drive(poller: Poller, clock: Clock, until: float = 1e9) -> None:
    """Jump the clock from one due poll to the next and run it, until nothing is scheduled."""
    while (at := poller.next_due()) is not None and at <= until:
        clock.now = max(clock.now, at)
        poller.run_due()


def test_before_any_completion_first_poll_s_then_half_a_second_times_1_5(
    clock: Clock, server: FakeRunware
) -> None:
    poller = make(server)
    p = server.submit(poller, "a", latency=2.0)
    drive(poller, clock)
    assert server.polls_of("a") == [1.0, 1.5, 2.25]  # first_poll_s, then 0.5 s ×1.5
    assert p.done.is_set() and p.fatal is None and len(p.items) == 1 and p.canary
    assert server.counts["polls"] == 3


def test_after_a_completion_the_first_poll_aims_just_after_the_learnt_time(
    clock: Clock, server: FakeRunware
) -> None:
    poller = make(server)
    server.submit(poller, "canary", latency=2.0)
    drive(poller, clock)  # seen pending at 1.5, done at 2.25: learnt (1.5 + 2.25) / 2
    assert poller.seen_completion
    learnt = (1.5 + 2.25) / 2
    p = server.submit(poller, "next", latency=learnt)
    drive(poller, clock)
    assert server.polls_of("next") == [round(FIRST_POLL_FACTOR * learnt + FIRST_POLL_MARGIN, 6)]
    assert not p.probe and not p.canary and p.done.is_set()


def test_one_task_in_eight_is_a_probe_polled_at_half_the_target(
    clock: Clock, server: FakeRunware
) -> None:
    poller = make(server)
    server.submit(poller, "canary", latency=2.0)
    drive(poller, clock)
    learnt = (1.5 + 2.25) / 2
    tasks = [server.submit(poller, f"t{i}", latency=learnt) for i in range(1, PROBE_EVERY + 1)]
    drive(poller, clock)
    probes = [p.task_uuid for p in tasks if p.probe]
    assert probes == [f"t{PROBE_EVERY}"]
    first = server.polls_of(f"t{PROBE_EVERY}")[0]
    assert first == round(PROBE_AT * learnt + FIRST_POLL_MARGIN, 6)


def test_progress_predicts_the_next_poll(clock: Clock, server: FakeRunware) -> None:
    server.progress = True
    poller = make(server)
    p = server.submit(poller, "a", latency=4.0)
    drive(poller, clock)
    # Polled at 1.0 s with progress 25: done predicted at 1.0 × 100 / 25 (+ margin).
    assert server.polls_of("a") == [1.0, round(4.0 + PREDICT_MARGIN_S, 6)]
    assert p.done.is_set() and len(p.items) == 1


def test_failed_polls_back_off_then_fail_the_task(clock: Clock, server: FakeRunware) -> None:
    server.fail = SendFailed(TransientError("timeout: read", code="timeout"), maybe_sent=True)
    poller = make(server, failure_limit=3)
    p = server.submit(poller, "a", latency=1.0)
    drive(poller, clock)
    # first poll at 1 s, then the sender's retry delays 0.25, 0.5, 0.75 (retry k = 0, 1, 2)
    assert server.polls_of("a") == [1.0, 1.25, 1.75, 2.5]
    assert p.fatal is not None and p.fatal.code == "timeout" and "4 consecutive" in str(p.fatal)
    assert server.counts["poll_retries"] == 4 and p.done.is_set()


def test_a_task_still_running_at_its_deadline_times_out(clock: Clock, server: FakeRunware) -> None:
    poller = make(server)
    server.accepted_at["a"], server.done_at["a"] = 0.0, 1e9
    p = Pending("a", 1, 3.0, accepted_at=0.0)
    poller.track(p)
    drive(poller, clock)
    assert p.fatal is not None and p.fatal.code == "pollTimeout"
    assert max(server.polls_of("a")) <= 3.0 and clock.now == 3.0


def test_an_empty_answer_is_a_queued_task_polled_on(clock: Clock, server: FakeRunware) -> None:
    answers = iter([Answer(200, {"data": []}, "")] * 4)
    server.answer = lambda uuids: (
        next(answers, None)
        or Answer(200, {"data": [{"taskUUID": uuids[0], "imageBase64Data": "AA=="}]}, "")
    )
    poller = make(server)
    p = server.submit(poller, "a", latency=0.0)
    drive(poller, clock)
    assert len(server.polls_of("a")) == 5 and p.done.is_set() and p.fatal is None
    assert server.counts["empty_polls"] == 4


def test_a_sync_task_answering_nothing_asks_task_details_then_is_lost(
    clock: Clock, server: FakeRunware
) -> None:
    server.answer = lambda uuids: Answer(200, {"data": []}, "")
    poller = make(server)
    p = server.submit(poller, "a", latency=0.0, sync=True)
    drive(poller, clock)
    assert len(server.polls_of("a")) == EMPTY_ANSWERS_SYNC and server.details == ["a"]
    assert p.fatal is not None and p.fatal.code == "resultLost"


def test_batch_polls_fill_posts_up_to_the_batch_size(clock: Clock, server: FakeRunware) -> None:
    poller = make(server, batch=True)
    n = 2 * POLL_BATCH_MAX + 20
    tasks = [server.submit(poller, f"t{i}", latency=0.5) for i in range(n)]
    drive(poller, clock)
    assert [len(uuids) for _, uuids in server.posts] == [POLL_BATCH_MAX, POLL_BATCH_MAX, 20]
    assert all(p.done.is_set() and p.fatal is None for p in tasks)


def test_an_error_no_task_owns_is_asked_again_task_by_task(
    clock: Clock, server: FakeRunware
) -> None:
    def answer(uuids: list[str]) -> Answer:
        if len(uuids) > 1:
            return Answer(400, {"errors": [{"code": "invalidTaskUUID"}]}, "")
        return Answer(200, {"data": [{"taskUUID": uuids[0], "imageBase64Data": "AA=="}]}, "")

    server.answer = answer
    poller = make(server, batch=True)
    tasks = [server.submit(poller, name, latency=0.0) for name in ("a", "b")]
    drive(poller, clock)
    assert [sorted(uuids) for _, uuids in server.posts] == [["a", "b"], ["a"], ["b"]]
    assert all(p.done.is_set() and p.fatal is None and p.items for p in tasks)


def test_a_closing_client_fails_polls_and_waiting_tasks(clock: Clock, server: FakeRunware) -> None:
    server.fail = Closed()
    poller = make(server)
    polled = server.submit(poller, "a", latency=5.0)
    drive(poller, clock)
    assert polled.fatal is not None and polled.fatal.code == "clientClosed"
    server.fail = None
    waiting = server.submit(poller, "b", latency=5.0)
    poller.stop()
    assert waiting.done.is_set() and waiting.fatal is not None
    assert waiting.fatal.code == "clientClosed" and poller.next_due() is None
    late = server.submit(poller, "c", latency=1.0)  # tracked after stop: failed at once
    assert late.fatal is not None and late.fatal.code == "clientClosed"


def test_a_cancelled_task_is_not_polled(clock: Clock, server: FakeRunware) -> None:
    poller = make(server)
    p = server.submit(poller, "a", latency=1.0)
    poller.cancel(p)
    assert poller.next_due() is None and poller.run_due() == 0 and server.posts == []
