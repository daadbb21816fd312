"""The crash-safe journal: pending submits, torn lines, later outcomes replacing earlier ones."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.journal import Journal, read_journal
from pipeline.rundir import JOURNAL_NAME

HEADER = {"axis_names": ["vars.style"], "sweep": "demo", "backend": "emulator"}


def _row(cell_id: str, result_index: int = 0, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"cell_id": cell_id, "result_index": result_index, "status": status, **extra}


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / JOURNAL_NAME).read_text().splitlines()]


def test_header_written_once(tmp_path: Path) -> None:
    with Journal(tmp_path, header=HEADER) as j:
        j.submit("c1", "t1")
    with Journal(tmp_path, header={"axis_names": ["other"]}) as j:
        j.stop("done")
    lines = _lines(tmp_path)
    assert [x["event"] for x in lines] == ["header", "submit", "stop"]
    assert lines[0] == {"event": "header", "version": 1, **HEADER}
    state = read_journal(tmp_path)
    assert state.axis_names == ["vars.style"]
    assert state.stops == ["done"]


def test_missing_file_is_empty_state(tmp_path: Path) -> None:
    state = read_journal(tmp_path / "nowhere")
    assert state.header is None and state.rows == {} and state.pending == {}


# events: ("submit", cell, task) | ("results", [(cell, result_index, status), ...])
PENDING_CASES = [
    ("submitted, never answered", [("submit", "a", "t1")], {"a": "t1"}),
    ("answered", [("submit", "a", "t1"), ("results", [("a", 0, "ok")])], {}),
    ("failed counts as answered", [("submit", "a", "t1"), ("results", [("a", 0, "failed")])], {}),
    (
        "resubmitted after a failure",
        [("submit", "a", "t1"), ("results", [("a", 0, "failed")]), ("submit", "a", "t2")],
        {"a": "t2"},
    ),
    (
        "other cells do not answer it",
        [("submit", "a", "t1"), ("submit", "b", "t2"), ("results", [("b", 0, "ok")])],
        {"a": "t1"},
    ),
    ("cached rows answer it", [("submit", "a", "t1"), ("results", [("a", 0, "cached")])], {}),
]


@pytest.mark.parametrize(("events", "pending"), [c[1:] for c in PENDING_CASES],
                         ids=[c[0] for c in PENDING_CASES])  # fmt: skip
def test_pending(tmp_path: Path, events: list[Any], pending: dict[str, str]) -> None:
    with Journal(tmp_path, header=HEADER) as j:
        for kind, *args in events:
            if kind == "submit":
                j.submit(*args)
            else:
                j.results([_row(c, i, s) for c, i, s in args[0]])
    assert read_journal(tmp_path).pending == pending


def test_later_outcome_replaces_earlier(tmp_path: Path) -> None:
    with Journal(tmp_path, header=HEADER) as j:
        j.results([_row("a", 0, "failed", error_code="timeout")])
        j.results([_row("b", 0, "ok"), _row("b", 1, "ok")])
        j.results([_row("a", 0, "ok", seed=1), _row("a", 1, "ok", seed=2)])  # rerun: 2 images
        j.results([_row("c", 0, "ok"), _row("c", 1, "failed")])
    state = read_journal(tmp_path)
    assert set(state.rows) == {("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("c", 1)}
    assert state.rows["a", 0]["status"] == "ok" and state.rows["a", 1]["seed"] == 2
    assert "error_code" not in state.rows["a", 0]
    assert state.complete == {"a", "b"}
    assert [r["result_index"] for r in state.cells["a"]] == [0, 1]
    assert all("event" not in r and "part" not in r for r in state.rows.values())


def test_rerun_with_fewer_rows_drops_stale_ones(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        j.results([_row("a", 0, "ok"), _row("a", 1, "failed")])  # partial failure
        j.results([_row("a", 0, "failed")])  # the rerun failed as a whole
    state = read_journal(tmp_path)
    assert list(state.rows) == [("a", 0)]
    assert state.rows["a", 0]["status"] == "failed"


TORN_TAILS = [
    ("half a result line", b'{"event":"result","part":[0,1],"cell_id":"x","res'),
    ("half a submit line", b'{"event":"submit","cell_id":"x","task'),
    ("garbage", b"\x00\x00\x00"),
]


@pytest.mark.parametrize("tail", [t[1] for t in TORN_TAILS], ids=[t[0] for t in TORN_TAILS])
def test_torn_last_line_ignored_and_repaired(tmp_path: Path, tail: bytes) -> None:
    with Journal(tmp_path, header=HEADER) as j:
        j.submit("a", "t1")
        j.results([_row("a", 0, "ok")])
        j.submit("b", "t2")
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:
        fh.write(tail)
    state = read_journal(tmp_path)
    assert state.bad_lines == 1
    assert list(state.rows) == [("a", 0)] and state.pending == {"b": "t2"}

    with Journal(tmp_path, header=HEADER) as j:  # reopen: the torn tail is cut, appends stay whole
        j.results([_row("b", 0, "ok")])
    state = read_journal(tmp_path)
    assert state.bad_lines == 0
    assert set(state.rows) == {("a", 0), ("b", 0)} and state.pending == {}


def test_whole_line_without_newline_is_kept(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        j.submit("a", "t1")
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert read_journal(tmp_path).pending == {}  # unterminated: not trusted on read
    with Journal(tmp_path) as j:
        j.submit("b", "t2")
    assert read_journal(tmp_path).pending == {"a": "t1", "b": "t2"}


def test_torn_results_call_keeps_cell_pending(tmp_path: Path) -> None:
    """A results() call cut short by kill -9 is ignored whole: recover by taskUUID, never re-pay."""
    with Journal(tmp_path) as j:
        j.submit("a", "t1")
        j.results([_row("a", i, "ok") for i in range(4)])
    path = tmp_path / JOURNAL_NAME
    data = path.read_bytes()
    cut = data.rindex(b'{"event":"result"') + 20  # inside the 4th row
    path.write_bytes(data[:cut])
    state = read_journal(tmp_path)
    assert state.rows == {}
    assert state.pending == {"a": "t1"}
    assert state.bad_lines == 4  # three whole rows of an unfinished call + the torn line

    with Journal(tmp_path) as j:  # reopened, then the rerun recovers the task
        j.results([_row("a", i, "ok") for i in range(4)])
    state = read_journal(tmp_path)
    assert len(state.rows) == 4 and state.pending == {}


def test_bad_line_in_middle_is_skipped(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        j.submit("a", "t1")
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:
        fh.write(b"not json\n[1, 2]\n")
    with Journal(tmp_path) as j:
        j.results([_row("a", 0, "ok")])
    state = read_journal(tmp_path)
    assert state.bad_lines == 2 and list(state.rows) == [("a", 0)]


def test_reserved_keys_and_closed(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    with pytest.raises(ValueError):
        j.results([{"cell_id": "a", "event": "x"}])
    with pytest.raises(ValueError):
        j.results([{"result_index": 0}])
    j.close()
    j.close()
    with pytest.raises(ValueError):
        j.submit("a", "t")


def test_non_ascii_survives(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        j.results([_row("a", 0, "ok", positivePrompt="灯台 «dusk» 🌅\nline two")])
    assert read_journal(tmp_path).rows["a", 0]["positivePrompt"] == "灯台 «dusk» 🌅\nline two"


def test_concurrent_writers_keep_lines_whole(tmp_path: Path) -> None:
    threads_n, per_thread = 8, 60
    big = "x" * 5000  # long lines make interleaving visible if writes were not atomic
    with Journal(tmp_path, header=HEADER) as j:

        def work(t: int) -> None:
            for k in range(per_thread):
                cell = f"c{t}_{k}"
                j.submit(cell, f"task-{t}-{k}")
                j.results([_row(cell, i, "ok", request_json=big) for i in range(3)])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    assert len(lines) == 1 + threads_n * per_thread * 4
    for line in lines:
        json.loads(line)
    state = read_journal(tmp_path)
    assert state.bad_lines == 0 and state.pending == {}
    assert len(state.rows) == threads_n * per_thread * 3


def test_unsynced_results_are_written(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        j.results([_row("a", 0, "cached"), _row("b", 0, "cached")], sync=False)
        j.results([])
    assert set(read_journal(tmp_path).rows) == {("a", 0), ("b", 0)}
