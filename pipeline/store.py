"""The content-addressed store of finished cells, shared by runs, shards and processes.

Layout: `<root>/<cell_id[:2]>/<cell_id>/record.json` plus the image files `<result_index>.<ext>`.
A cell is written whole into `<root>/.tmp/<cell_id>~<host>~<pid>~<random>/` and then renamed into
place with one `os.rename`, so a reader sees a whole cell or nothing. When two writers race on the
same cell the first rename wins and the other discards its copy (both were paid; either is right).

Only cells whose every image succeeded belong here (the runner's rule: a partial failure is not
stored, so a rerun finishes it). `record` is the caller's JSON-able dict; for cached manifest rows
it holds `request_json`, `backend`, `finished_at` and `images`: one entry per image with
`result_index, seed, image_uuid, task_uuid, sha256, cost, ext, nsfw`. The store adds `files`
(the image file names, in the order given to `put`).

Submit intents: before a task is submitted, `<root>/.intents/<cell_id>` records its taskUUID (and
is removed once the cell is stored), so any later run, in any run dir, recovers that task by its
taskUUID instead of paying for the cell again after a crash.

Temp dirs left by a crashed writer are never read; they are removed when their writer is known to
be dead (same host, pid gone) or when older than `stale_after_s`.

A damaged cell (record.json missing, unreadable or of the wrong shape, or an image file gone) is
reported once on stderr and moved whole to `<root>/.damaged/`, so it never blocks a run again.
When its record names a taskUUID, an intent is left for it: the next run recovers that task by
its taskUUID (free while the server keeps it) before it would pay for the cell again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

RECORD_NAME = "record.json"
TMP_DIR = ".tmp"
INTENTS_DIR = ".intents"
DAMAGED_DIR = ".damaged"
_CELL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{2,128}$")
_EXT_RE = re.compile(r"^[A-Za-z0-9]{1,8}$")
_UUID_RE = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\Z"
)
_TASK_RE = re.compile(rb'"task_uuid"\s*:\s*"([0-9A-Fa-f-]{36})"')
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


@dataclass(frozen=True, slots=True)
class StoredCell:
    """A finished cell in the store: its record and its image files (in record order)."""

    cell_id: str
    path: Path
    record: dict[str, Any]
    images: list[Path]


def _check_id(cell_id: str) -> str:
    if not _CELL_ID_RE.match(cell_id):
        raise ValueError(f"not a valid cell id: {cell_id!r}")
    return cell_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _record_problem(record: Any, path: Path) -> str:
    """What is wrong with a stored record and its files ("" when it is whole)."""
    if not isinstance(record, dict):
        return f"{RECORD_NAME} is not a JSON object"
    files, entries = record.get("files"), record.get("images")
    if not isinstance(files, list) or not isinstance(entries, list) or len(files) != len(entries):
        return f"{RECORD_NAME} lists no images or files"
    sizes = record.get("sizes")  # absent in records written before sizes were kept
    if not isinstance(sizes, list) or len(sizes) != len(files):
        sizes = [None] * len(files)
    for name, entry, size in zip(files, entries, sizes, strict=True):
        if (
            not isinstance(name, str)
            or not isinstance(entry, dict)
            or not isinstance(entry.get("result_index"), int)
            or not isinstance(entry.get("ext"), str)
        ):
            return f"{RECORD_NAME} has a malformed image entry"
        if os.sep in name or name.startswith("."):
            return f"{RECORD_NAME} names a file outside the cell: {name!r}"
        try:
            found = os.stat(path / name)
        except OSError:
            return f"the stored image {name} is missing"
        if not stat.S_ISREG(found.st_mode):
            return f"the stored image {name} is not a file"
        if isinstance(size, int) and found.st_size != size:
            return f"the stored image {name} has {found.st_size} bytes, {size} were stored"
    return ""


def _task_on_record(path: Path, raw: bytes) -> str | None:
    """The taskUUID a damaged cell still names: in its record, else in an image's recipe."""
    found = _TASK_RE.search(raw)
    if found:
        return found[1].decode()
    from pipeline.images import read_recipe  # only for a damaged cell

    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.name == RECORD_NAME or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError, ValueError):
                recipe = read_recipe(entry.path)
                request = recipe.get("request") if recipe else None
                task = request.get("taskUUID") if isinstance(request, dict) else None
                if isinstance(task, str) and _UUID_RE.match(task):
                    return task
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Content-addressed finished cells under `root` (safe for many threads and processes)."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        stale_after_s: float = 24 * 3600.0,
        serve: bool = True,
        report: Callable[[str], None] | None = None,
    ) -> None:
        """Use (and create) `root`; remove temp dirs of writers that are certainly gone.

        `serve=False`: finished cells are never served (`has`/`get` miss), while submit intents
        and new cells are shared like any run's. `report` gets one line per damaged cell set
        aside (default: stderr).
        """
        self.root = Path(root)
        self.fsync = fsync
        self.serve = serve
        self.stale_after_s = stale_after_s
        self.report = report or _to_stderr
        self._reported: set[str] = set()  # damaged cells that could not be moved aside
        self._tmp = self.root / TMP_DIR
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"store.dir: cannot use {self.root} for the store: {_reason(exc)}"
            ) from exc
        self.clean_temp()

    def cell_dir(self, cell_id: str) -> Path:
        """Where a cell lives (whether or not it is there)."""
        return self.root / cell_id[:2] / _check_id(cell_id)

    def has(self, cell_id: str, *, backend: str | None = None) -> bool:
        """Whether the cell is stored (and, if `backend` is given, was made by that backend)."""
        return self.get(cell_id, backend=backend) is not None  # a damaged cell is not stored

    def get(self, cell_id: str, *, backend: str | None = None) -> StoredCell | None:
        """The stored cell, or None (also when `backend` is given and differs)."""
        if not self.serve:
            return None
        path = self.cell_dir(cell_id)
        raw = b""
        try:
            with open(os.path.join(path, RECORD_NAME), "rb") as fh:
                raw = fh.read()
            record = json.loads(raw)
            why = _record_problem(record, path)
        except FileNotFoundError:
            if not os.path.isdir(path):
                return None
            why = f"{RECORD_NAME} is missing"
        except OSError as exc:
            why = f"{RECORD_NAME} cannot be read ({_reason(exc)})"
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            why = f"{RECORD_NAME} is not readable JSON ({type(exc).__name__}: {exc})"
        if why:
            self._set_aside(cell_id, path, why, raw)
            return None
        if backend is not None and record.get("backend") != backend:
            return None
        return StoredCell(cell_id, path, record, [path / name for name in record["files"]])

    def _set_aside(self, cell_id: str, path: Path, why: str, raw: bytes) -> None:
        """Move a damaged cell to .damaged/, report it once, leave an intent for its task."""
        task_uuid = _task_on_record(path, raw)
        folder = self.root / DAMAGED_DIR
        dest = folder / f"{cell_id}~{time.strftime('%Y%m%dT%H%M%S')}~{secrets.token_hex(3)}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)
        except FileNotFoundError:
            return  # another run set it aside first (and reported it)
        except OSError as exc:
            if cell_id not in self._reported:  # it stays in place: say so once per process
                self._reported.add(cell_id)
                self.report(
                    f"store: cell {cell_id} is damaged ({why}) and cannot be moved aside "
                    f"({_reason(exc)}); it is treated as not stored"
                )
            dest = path
        if task_uuid and self.intent(cell_id) is None:
            with contextlib.suppress(OSError):
                self.claim_intent(cell_id, task_uuid)
        then = (
            f"its task {task_uuid} is recovered by taskUUID before anything is paid again"
            if task_uuid
            else "no taskUUID is on record, so the cell is run again"
        )
        if dest != path:
            self.report(f"store: cell {cell_id} was damaged ({why}); set aside in {dest}; {then}")

    def remove(self, cell_id: str) -> bool:
        """Take a finished cell out of the store (atomically: whole or not at all)."""
        tmp = self._tmp / f"{_check_id(cell_id)}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}"
        try:
            os.rename(self.cell_dir(cell_id), tmp)
        except FileNotFoundError:
            return False
        shutil.rmtree(tmp, ignore_errors=True)
        return True

    def count(self) -> int:
        """How many cells are stored (cell folders, without reading them)."""
        total = 0
        try:
            shelves = [e for e in os.scandir(self.root) if len(e.name) == 2 and e.is_dir()]
        except OSError:
            return 0
        for shelf in shelves:
            with contextlib.suppress(OSError):
                total += sum(1 for e in os.scandir(shelf.path) if _CELL_ID_RE.match(e.name))
        return total

    def put(
        self, cell_id: str, record: dict[str, Any], images: Sequence[tuple[bytes | Path, str]]
    ) -> bool:
        """Store a finished cell atomically; False if it was already there (theirs is kept).

        An image given as a Path (a file already written and synced, e.g. in the run dir) is
        hard-linked rather than copied, so the store costs no second write of the bytes.
        """
        final = self.cell_dir(cell_id)
        if os.path.exists(final):
            return False
        names = [self._file_name(record, i, ext) for i, (_, ext) in enumerate(images)]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate image names for cell {cell_id}: {names}")
        tmp = self._tmp / f"{cell_id}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}"
        tmp.mkdir(parents=True)
        try:
            for name, (data, _) in zip(names, images, strict=True):
                if isinstance(data, Path):
                    try:
                        os.link(data, tmp / name)
                        continue
                    except OSError:  # another filesystem, or no hard links: copy instead
                        data = data.read_bytes()
                self._write(tmp / name, data)
            sizes = [os.stat(tmp / name).st_size for name in names]  # checked when served
            body = json.dumps(
                {**record, "files": names, "sizes": sizes}, ensure_ascii=False, sort_keys=True
            )
            self._write(tmp / RECORD_NAME, body.encode("utf-8"))
            if self.fsync:
                _fsync_dir(tmp)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and os.path.exists(final):
                    return False  # another writer won the race: keep theirs
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if self.fsync:
            _fsync_dir(final.parent)
        return True

    @staticmethod
    def _file_name(record: dict[str, Any], i: int, ext: str) -> str:
        entries = record.get("images")
        index = i
        if isinstance(entries, list) and i < len(entries) and isinstance(entries[i], dict):
            index = int(entries[i].get("result_index", i))
        ext = ext.lower().lstrip(".")
        if not _EXT_RE.match(ext):
            raise ValueError(f"bad image extension {ext!r}")
        return f"{index}.{ext}"

    def _write(self, path: Path, data: bytes) -> None:
        with open(path, "xb") as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())

    def record_intent(self, cell_id: str, task_uuid: str) -> None:
        """Note that `task_uuid` is about to be submitted for this cell.

        Written without fsync: it survives a killed process (the page cache outlives it), not a
        power cut. The run dir's journal is fsync'd before every submit and covers that case.
        """
        folder = self.root / INTENTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _check_id(cell_id)
        tmp = folder / f".{cell_id}~{os.getpid()}~{secrets.token_hex(4)}"
        tmp.write_bytes(task_uuid.encode())
        os.replace(tmp, path)

    def claim_intent(self, cell_id: str, task_uuid: str) -> bool:
        """Record an intent only if none exists (atomic across processes); False if one did."""
        folder = self.root / INTENTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_check_id(cell_id)}~{os.getpid()}~{secrets.token_hex(4)}"
        tmp.write_bytes(task_uuid.encode())
        try:
            os.link(tmp, folder / cell_id)  # fails if an intent exists; readers never see it half
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def intent(self, cell_id: str) -> str | None:
        """The taskUUID of an earlier submit of this cell that never reached the store, if any."""
        try:
            with open(self.root / INTENTS_DIR / _check_id(cell_id), "rb") as fh:
                text = fh.read(256).decode("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            text = ""
        if not _UUID_RE.match(text):  # a damaged intent names no task: keep it, but out of the way
            self._set_aside_intent(cell_id)
            return None
        return text

    def _set_aside_intent(self, cell_id: str) -> None:
        folder = self.root / DAMAGED_DIR
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            os.rename(
                self.root / INTENTS_DIR / cell_id,
                folder / f"intent-{cell_id}~{secrets.token_hex(3)}",
            )
            self.report(f"store: the submit intent of cell {cell_id} was damaged; set aside")

    def clear_intent(self, cell_id: str) -> None:
        """Forget the intent of a cell (it is stored, or its task failed for good)."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / INTENTS_DIR / _check_id(cell_id)).unlink()

    def link_images(self, cell_id: str, dest_dir: Path, names: Sequence[str]) -> list[Path]:
        """Hardlink (else copy) the cell's images to `dest_dir/names[i]`, each atomically."""
        stored = self.get(cell_id)
        if stored is None:
            raise KeyError(f"cell {cell_id} is not in the store")
        if len(names) != len(stored.images):
            raise ValueError(f"{len(stored.images)} stored images but {len(names)} names")
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for src, name in zip(stored.images, names, strict=True):
            dest = dest_dir / name
            out.append(dest)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(src, dest):
                    continue
            tmp = dest_dir / f".{name}.{secrets.token_hex(4)}.tmp"
            try:
                try:
                    os.link(src, tmp)
                except OSError:  # other filesystem, or links not allowed: copy
                    shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return out

    def clean_temp(self, now: float | None = None) -> int:
        """Remove temp dirs of crashed writers (dead pid on this host, or stale); returns count."""
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            parts = entry.name.split("~")
            dead = False
            if len(parts) == 4 and parts[1] == _HOST and parts[2].isdigit():
                dead = int(parts[2]) != os.getpid() and not _pid_alive(int(parts[2]))
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > self.stale_after_s
            except FileNotFoundError:
                continue
            if dead or stale:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed
