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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD_NAME = "record.json"
TMP_DIR = ".tmp"
INTENTS_DIR = ".intents"
_CELL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{2,128}$")
_EXT_RE = re.compile(r"^[A-Za-z0-9]{1,8}$")
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
    ) -> None:
        """Use (and create) `root`; remove temp dirs of writers that are certainly gone.

        `serve=False` (krea-reproduce): finished cells are never served (`has`/`get` miss), while
        submit intents and new cells are shared like any run's.
        """
        self.root = Path(root)
        self.fsync = fsync
        self.serve = serve
        self.stale_after_s = stale_after_s
        self._tmp = self.root / TMP_DIR
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.clean_temp()

    def cell_dir(self, cell_id: str) -> Path:
        """Where a cell lives (whether or not it is there)."""
        return self.root / cell_id[:2] / _check_id(cell_id)

    def has(self, cell_id: str, *, backend: str | None = None) -> bool:
        """Whether the cell is stored (and, if `backend` is given, was made by that backend)."""
        if not self.serve:
            return False
        if backend is not None:
            return self.get(cell_id, backend=backend) is not None
        return os.path.exists(os.path.join(self.cell_dir(cell_id), RECORD_NAME))

    def get(self, cell_id: str, *, backend: str | None = None) -> StoredCell | None:
        """The stored cell, or None (also when `backend` is given and differs)."""
        if not self.serve:
            return None
        path = self.cell_dir(cell_id)
        try:
            with open(os.path.join(path, RECORD_NAME), "rb") as fh:
                record = json.loads(fh.read())
        except FileNotFoundError:
            return None
        if backend is not None and record.get("backend") != backend:
            return None
        files = record.get("files") or []
        return StoredCell(cell_id, path, record, [path / name for name in files])

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
            body = json.dumps({**record, "files": names}, ensure_ascii=False, sort_keys=True)
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
            return (self.root / INTENTS_DIR / _check_id(cell_id)).read_text().strip() or None
        except FileNotFoundError:
            return None

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
