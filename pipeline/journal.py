"""The run journal: append-only JSON lines, fsync'd, from which a killed run is recovered.

Lines (one JSON object each, UTF-8):

    {"event": "header", "version": 1, "axis_names": [...], ...}   first line, once
    {"event": "submit", "cell_id", "task_uuid", "at"}              fsync'd BEFORE the POST
    {"event": "result", "part": [i, n], ...manifest row...}        one per image / failed cell
    {"event": "stop", "reason", "at"}

Each `results()` call is the complete outcome of every cell it names: on read, a cell's rows from a
later call replace all of its rows from earlier calls (failed -> ok on a rerun, even when the
number of rows differs). A cell's `submit` with no later result rows is *pending*: it may have been
paid for and must be recovered by its taskUUID before anything is re-submitted.

`part` = [position, count] of the row in its `results()` call; a call whose lines are not all
there (kill -9 mid-write) is ignored as a whole, so its cells stay pending and get recovered by
taskUUID instead of being re-paid. A torn last line is cut off when the journal is reopened.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.rundir import JOURNAL_NAME

VERSION = 1


def utc_now() -> str:
    """The current time as UTC ISO 8601 with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class Journal:
    """Append-only, thread-safe writer of `journal.jsonl` in a run dir."""

    def __init__(self, run_dir: Path, header: Mapping[str, Any] | None = None) -> None:
        """Open (creating the dir and file) for append; write `header` if the file is new."""
        self.path = Path(run_dir) / JOURNAL_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # group commit: one fsync at a time covers all writes
        self._written = 0  # writes made so far
        self._synced = 0  # writes known to be on disk
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._repair_tail()
        if os.fstat(self._fd).st_size == 0:
            self._append(_dumps({"event": "header", "version": VERSION, **(header or {})}))
            dir_fd = os.open(self.path.parent, os.O_RDONLY)  # make the new file's name durable
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _repair_tail(self) -> None:
        """Cut a torn last line left by a crash (or end it, if it is whole JSON without \\n)."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return
            # find the start of the last line
            block, pos = 65536, size
            start = 0
            while pos > 0:
                pos = max(0, pos - block)
                fh.seek(pos)
                chunk = fh.read(min(block, size - pos))
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    start = pos + nl + 1
                    break
            fh.seek(start)
            tail = fh.read()
        try:
            json.loads(tail)
        except ValueError:
            os.truncate(self.path, start)
        else:
            self._append(b"\n")

    def _append(self, data: bytes, sync: bool = True) -> None:
        """Write all of `data` at the end of the file and fsync (caller holds the lock)."""
        if self._fd is None:
            raise ValueError("journal is closed")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if sync:
            os.fsync(self._fd)

    def _write(self, data: bytes, sync: bool = True) -> None:
        with self._lock:
            self._append(data, sync=False)
            self._written += 1
            ticket = self._written
        if sync:
            self._sync(ticket)

    def _sync(self, ticket: int) -> None:
        """Group commit: return once write `ticket` is on disk; one fsync serves many writers."""
        with self._sync_lock:
            if self._synced >= ticket:
                return  # another writer's fsync, started after our write, covered it
            with self._lock:
                upto, fd = self._written, self._fd
            if fd is None:
                return  # closed: close() synced everything
            os.fsync(fd)
            self._synced = upto

    def submit(self, cell_id: str, task_uuid: str) -> None:
        """Record (durably) that `task_uuid` is about to be POSTed for `cell_id`."""
        self._write(
            _dumps({"event": "submit", "cell_id": cell_id, "task_uuid": task_uuid, "at": utc_now()})
        )

    def results(self, rows: Sequence[Mapping[str, Any]], *, sync: bool = True) -> None:
        """Record manifest rows: the complete outcome of each cell named (one fsync per call).

        `sync=False` skips the fsync (the next synced write covers it): for rows that can be
        recomputed, e.g. cached rows from the store, so a rerun of 10,000 cached cells is fast.
        """
        if not rows:
            return
        for row in rows:
            if "event" in row or "part" in row or "cell_id" not in row:
                raise ValueError("a result row needs `cell_id`; `event`/`part` are reserved")
        n = len(rows)
        data = b"".join(
            _dumps({"event": "result", "part": [i, n], **r}) for i, r in enumerate(rows)
        )
        self._write(data, sync=sync)

    def stop(self, reason: str) -> None:
        """Record that the run stopped early and why."""
        self._write(_dumps({"event": "stop", "reason": reason, "at": utc_now()}))

    def close(self) -> None:
        """Flush everything to disk and close the file; later writes raise ValueError."""
        with self._sync_lock, self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


RowKey = tuple[str, int]


@dataclass
class JournalState:
    """What a journal says: header, latest rows, pending submits, stops."""

    header: dict[str, Any] | None = None
    rows: dict[RowKey, dict[str, Any]] = field(default_factory=dict)  # (cell_id, result_index)
    cells: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # latest rows per cell
    pending: dict[str, str] = field(default_factory=dict)  # cell_id -> task_uuid to recover
    stops: list[str] = field(default_factory=list)
    bad_lines: int = 0  # unparsable or torn lines, and rows of an incomplete results() call

    @property
    def axis_names(self) -> list[str] | None:
        """Axis names recorded in the header, if any."""
        names = (self.header or {}).get("axis_names")
        return list(names) if isinstance(names, list) else None

    @property
    def complete(self) -> set[str]:
        """Cells whose latest outcome has no failed row."""
        return {
            cid
            for cid, rows in self.cells.items()
            if rows and all(r.get("status") != "failed" for r in rows)
        }


def read_journal(run_dir: Path) -> JournalState:
    """Parse `journal.jsonl` in `run_dir` (missing file -> empty state; bad lines skipped)."""
    state = JournalState()
    try:
        fh = open(Path(run_dir) / JOURNAL_NAME, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return state
    call: list[dict[str, Any]] = []  # rows of the results() call being read
    loads = json.loads
    with fh:
        for line in fh:
            if not line.endswith(b"\n"):  # an unfinished last line (kill -9 mid-write)
                state.bad_lines += 1
                break
            try:
                obj = loads(line)
                event = obj["event"]
            except (ValueError, TypeError, KeyError):
                if line.strip():
                    state.bad_lines += 1
                continue
            if event == "result":
                part = obj.pop("part", None)
                del obj["event"]
                i, n = part if isinstance(part, list) and len(part) == 2 else (0, 1)
                if i == 0:
                    state.bad_lines += len(call)
                    call = []
                elif len(call) != i:  # a call whose start was lost: skip it
                    state.bad_lines += 1
                    continue
                call.append(obj)
                if len(call) == n:
                    _apply_call(state, call)
                    call = []
                continue
            state.bad_lines += len(call)  # an unfinished call, cut short by a crash
            call = []
            if event == "submit":
                cid, task = obj.get("cell_id"), obj.get("task_uuid")
                if isinstance(cid, str) and isinstance(task, str):
                    state.pending[cid] = task
                else:
                    state.bad_lines += 1
            elif event == "stop":
                state.stops.append(str(obj.get("reason", "")))
            elif event == "header" and state.header is None:
                state.header = obj
    if call:  # the last results() call did not finish: as if never written
        state.bad_lines += len(call)
    for cid, rows in state.cells.items():
        rows.sort(key=_index)
        for row in rows:
            state.rows[cid, _index(row)] = row
    return state


def _index(row: Mapping[str, Any]) -> int:
    return int(row.get("result_index") or 0)


def _apply_call(state: JournalState, call: list[dict[str, Any]]) -> None:
    """Make the rows of one whole results() call the current outcome of the cells it names."""
    fresh: dict[str, dict[Any, dict[str, Any]]] = {}
    for row in call:
        fresh.setdefault(row["cell_id"], {})[row.get("result_index")] = row
    for cid, by_index in fresh.items():
        state.cells[cid] = list(by_index.values())
        state.pending.pop(cid, None)
