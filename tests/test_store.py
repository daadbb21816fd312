"""The content-addressed store: atomic puts, first writer wins, many processes at once."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import store as store_mod
from pipeline.store import RECORD_NAME, TMP_DIR, Store


def _cell_id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()[:20]


def _record(
    cell_id: str, blobs: list[bytes], writer: str = "w", backend: str = "emulator"
) -> dict[str, Any]:
    return {
        "cell_id": cell_id,
        "backend": backend,
        "writer": writer,
        "request_json": "{}",
        "finished_at": "2025-01-01T00:00:00.000Z",
        "images": [
            {
                "result_index": i,
                "seed": 1 + i,
                "image_uuid": f"u{i}",
                "task_uuid": "t",
                "sha256": hashlib.sha256(b).hexdigest(),
                "cost": 0.06,
                "ext": "png",
                "nsfw": None,
            }
            for i, b in enumerate(blobs)
        ],
    }


def _assert_whole(cell: store_mod.StoredCell) -> None:
    """Every image listed is there with the bytes the record promises."""
    assert len(cell.images) == len(cell.record["images"])
    for path, meta in zip(cell.images, cell.record["images"], strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]


def test_put_get_round_trip(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    cid = _cell_id(1)
    blobs = [b"png-0", b"png-1"]
    assert s.get(cid) is None and not s.has(cid)
    assert s.put(cid, _record(cid, blobs), [(b, "png") for b in blobs]) is True
    got = s.get(cid)
    assert got is not None and s.has(cid)
    assert got.path == tmp_path / "store" / cid[:2] / cid
    assert [p.name for p in got.images] == ["0.png", "1.png"]
    assert got.record["files"] == ["0.png", "1.png"]
    assert got.record["images"][1]["seed"] == 2
    _assert_whole(got)
    assert sorted(os.listdir(tmp_path / "store" / TMP_DIR)) == []


def test_first_writer_wins(tmp_path: Path) -> None:
    s = Store(tmp_path)
    cid = _cell_id(2)
    assert s.put(cid, _record(cid, [b"first"], "one"), [(b"first", "png")])
    assert not s.put(cid, _record(cid, [b"second"], "two"), [(b"second", "png")])
    got = s.get(cid)
    assert got is not None and got.record["writer"] == "one"
    _assert_whole(got)


def test_lost_race_at_rename_keeps_theirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other writer renames between our exists() check and our rename."""
    s = Store(tmp_path)
    cid = _cell_id(3)
    real_rename = os.rename

    def racing_rename(src: Any, dst: Any) -> None:
        other = Store(tmp_path)
        monkeypatch.setattr(os, "rename", real_rename)
        assert other.put(cid, _record(cid, [b"theirs"], "them"), [(b"theirs", "png")])
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", racing_rename)
    assert s.put(cid, _record(cid, [b"ours"], "us"), [(b"ours", "png")]) is False
    got = s.get(cid)
    assert got is not None and got.record["writer"] == "them"
    _assert_whole(got)
    assert os.listdir(tmp_path / TMP_DIR) == []


def test_failed_put_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(tmp_path)
    cid = _cell_id(4)

    def broken_rename(src: Any, dst: Any) -> None:
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError):
        s.put(cid, _record(cid, [b"x"]), [(b"x", "png")])
    monkeypatch.undo()
    assert s.get(cid) is None
    assert os.listdir(tmp_path / TMP_DIR) == []


@pytest.mark.parametrize("bad", ["", "a", "../etc", "ab/cd", ".tmp", "a b", "x" * 200])
def test_bad_cell_ids_rejected(tmp_path: Path, bad: str) -> None:
    s = Store(tmp_path)
    with pytest.raises(ValueError):
        s.get(bad)
    with pytest.raises(ValueError):
        s.put(bad, {}, [])


def test_backend_filter(tmp_path: Path) -> None:
    s = Store(tmp_path)
    cid = _cell_id(5)
    s.put(cid, _record(cid, [b"x"], backend="emulator"), [(b"x", "png")])
    assert s.has(cid, backend="emulator") and s.get(cid, backend="emulator") is not None
    assert not s.has(cid, backend="runware") and s.get(cid, backend="runware") is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_temp_dir_ignored_and_cleaned(tmp_path: Path) -> None:
    s = Store(tmp_path)
    cid = _cell_id(6)
    host = store_mod._HOST
    crashed = tmp_path / TMP_DIR / f"{cid}~{host}~{_dead_pid()}~dead"
    crashed.mkdir()
    (crashed / "0.png").write_bytes(b"half")
    (crashed / RECORD_NAME).write_text('{"cell_id": "')  # a torn record
    alive = tmp_path / TMP_DIR / f"{cid}~{host}~{os.getppid()}~live"  # a live writer's
    alive.mkdir()
    other_host = tmp_path / TMP_DIR / f"{cid}~elsewhere~1~far"  # cannot tell: wait for age
    other_host.mkdir()

    assert s.get(cid) is None and not s.has(cid)
    Store(tmp_path)  # opening cleans what is certainly dead
    assert not crashed.exists() and alive.exists() and other_host.exists()
    assert s.clean_temp(now=time.time() + 2 * 86400) == 2  # stale after a day
    assert os.listdir(tmp_path / TMP_DIR) == []
    assert s.put(cid, _record(cid, [b"x"]), [(b"x", "png")])


def test_link_images_hardlink_and_idempotent(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    cid = _cell_id(7)
    s.put(cid, _record(cid, [b"a", b"b"]), [(b"a", "png"), (b"b", "png")])
    dest = tmp_path / "run" / "images"
    names = [f"{cid}-0.png", f"{cid}-1.png"]
    out = s.link_images(cid, dest, names)
    assert out == [dest / n for n in names]
    assert [p.read_bytes() for p in out] == [b"a", b"b"]
    stored = s.get(cid)
    assert stored is not None
    assert os.path.samefile(out[0], stored.images[0])  # same filesystem: a hardlink
    s.link_images(cid, dest, names)  # again (rerun into the same dir)
    assert sorted(os.listdir(dest)) == sorted(names)


def test_link_images_copies_across_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Store(tmp_path / "store")
    cid = _cell_id(8)
    s.put(cid, _record(cid, [b"a"]), [(b"a", "png")])

    def no_link(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dest = tmp_path / "run"
    (out,) = s.link_images(cid, dest, ["x.png"])
    stored = s.get(cid)
    assert stored is not None
    assert out.read_bytes() == b"a" and not os.path.samefile(out, stored.images[0])
    assert os.listdir(dest) == ["x.png"]
    with pytest.raises(KeyError):
        s.link_images(_cell_id(9), dest, ["y.png"])
    with pytest.raises(ValueError):
        s.link_images(cid, dest, ["x.png", "y.png"])


# --- many processes ---------------------------------------------------------------------------

N_CELLS = 40


def _writer(root: str, writer: int, out: Any) -> None:
    s = Store(Path(root), fsync=False)
    order = list(range(N_CELLS))
    if writer % 2:
        order.reverse()
    won = []
    for n in order:
        cid = _cell_id(1000 + n)
        blobs = [f"{writer}:{n}:{i}".encode() * (100 + n) for i in range(3)]
        if s.put(cid, _record(cid, blobs, str(writer)), [(b, "png") for b in blobs]):
            won.append(cid)
    out.put(won)


def _reader(root: str, stop: Any, out: Any) -> None:
    s = Store(Path(root), fsync=False)
    seen, problems = 0, []
    while not stop.is_set():
        for n in range(N_CELLS):
            cell = s.get(_cell_id(1000 + n))
            if cell is None:
                continue
            seen += 1
            try:
                _assert_whole(cell)
                w = cell.record["writer"]
                assert cell.images[0].read_bytes().startswith(f"{w}:{n}:0".encode())
            except (AssertionError, OSError, KeyError) as exc:
                problems.append(repr(exc))
    out.put((seen, problems))


def test_processes_put_overlapping_cells(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    root = str(tmp_path / "store")
    Store(Path(root))
    results: Any = ctx.Queue()
    reads: Any = ctx.Queue()
    stop = ctx.Event()
    reader = ctx.Process(target=_reader, args=(root, stop, reads))
    reader.start()
    writers = [ctx.Process(target=_writer, args=(root, w, results)) for w in range(4)]
    for p in writers:
        p.start()
    won = [results.get(timeout=120) for _ in writers]
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    stop.set()
    seen, problems = reads.get(timeout=60)
    reader.join(timeout=60)

    assert problems == []
    all_won = [cid for w in won for cid in w]
    assert sorted(all_won) == sorted(_cell_id(1000 + n) for n in range(N_CELLS))  # one winner each
    s = Store(Path(root))
    for n in range(N_CELLS):
        cell = s.get(_cell_id(1000 + n))
        assert cell is not None
        _assert_whole(cell)
    assert os.listdir(Path(root) / TMP_DIR) == []
    print(f"reader saw {seen} whole cells during the race")


def test_record_is_plain_json(tmp_path: Path) -> None:
    s = Store(tmp_path)
    cid = _cell_id(10)
    s.put(cid, _record(cid, [b"x"]), [(b"x", "webp")])
    raw = json.loads((s.cell_dir(cid) / RECORD_NAME).read_text())
    assert raw["files"] == ["0.webp"] and raw["cell_id"] == cid


# ---------------------------------------------------------------- damaged entries (issue 11 item 7)


def _damage_run(workdir: Path, emu: Any, name: str, capsys: pytest.CaptureFixture[str]) -> str:
    from runs import run_sweep_inprocess, seed_sweep

    edits = {
        "api.backend": "emulator",
        "api.base_url": emu.base_url,
        "store.dir": str(workdir / "store"),
    }
    code = run_sweep_inprocess(workdir, seed_sweep(4), workdir / name, **edits)
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_a_damaged_entry_is_reported_once_set_aside_and_recovered_not_repaid(
    isolated: Path, emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from runs import read_manifest

    _damage_run(isolated, emulator, "first", capsys)
    paid = len(emulator.ledger_entries())
    assert paid == 4
    root = isolated / "store" / "emulator"
    cells = sorted(p for p in root.glob("??/*") if (p / RECORD_NAME).is_file())
    assert len(cells) == 4
    truncated, no_image, empty = cells[0], cells[1], cells[2]
    record = (truncated / RECORD_NAME).read_bytes()
    (truncated / RECORD_NAME).write_bytes(record[: len(record) // 3])  # JSONDecodeError before
    for image in no_image.glob("0.*"):
        image.unlink()  # FileNotFoundError before
    (empty / RECORD_NAME).write_bytes(b"")

    err = _damage_run(isolated, emulator, "second", capsys)
    lines = [ln for ln in err.splitlines() if "was damaged" in ln]
    assert len(lines) == 3, err
    assert all("recovered by taskUUID" in ln for ln in lines), err
    assert any("not readable JSON" in ln for ln in lines)
    assert any("stored image 0." in ln and "is missing" in ln for ln in lines)
    # each damaged cell came back by its taskUUID: nothing was paid again
    assert len(emulator.ledger_entries()) == paid
    frame = read_manifest(isolated / "second")
    assert len(frame) == 4 and set(frame["status"]) <= {"ok", "cached"}
    assert len(list((root / ".damaged").iterdir())) == 3

    err = _damage_run(isolated, emulator, "third", capsys)
    assert "damaged" not in err  # reported once; the recovered cells are whole again
    assert set(read_manifest(isolated / "third")["status"]) == {"cached"}
    assert len(emulator.ledger_entries()) == paid


def test_a_stored_image_overwritten_with_other_bytes_is_damaged_not_served(
    isolated: Path, emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Walkthrough: a stored 0.jpg overwritten with garbage was served as `cached`."""
    from runs import read_manifest

    _damage_run(isolated, emulator, "first", capsys)
    paid = len(emulator.ledger_entries())
    root = isolated / "store" / "emulator"
    cell = next(p for p in root.glob("??/*") if (p / RECORD_NAME).is_file())
    image = next(cell.glob("0.*"))
    image.unlink()  # replace the file (the run dir keeps its own link to the real bytes)
    image.write_bytes(b"garbage")
    err = _damage_run(isolated, emulator, "second", capsys)
    lines = [ln for ln in err.splitlines() if "was damaged" in ln]
    assert len(lines) == 1 and "has 7 bytes" in lines[0], err
    assert len(emulator.ledger_entries()) == paid  # recovered by its taskUUID, not repaid
    frame = read_manifest(isolated / "second")
    sizes = {(isolated / "second" / p).stat().st_size for p in frame["image_path"]}
    assert 7 not in sizes and set(frame["status"]) <= {"ok", "cached"}


def test_a_damaged_entry_with_no_task_on_record_is_run_again(tmp_path: Path) -> None:
    lines: list[str] = []
    store = Store(tmp_path, report=lines.append)
    cell = store.cell_dir("c" * 20)
    cell.mkdir(parents=True)
    (cell / RECORD_NAME).write_bytes(b'{"images": [{"result_ind')
    assert store.get("c" * 20) is None and store.intent("c" * 20) is None
    assert len(lines) == 1 and "no taskUUID is on record, so the cell is run again" in lines[0]
    assert not cell.exists() and store.get("c" * 20) is None and len(lines) == 1


def test_a_damaged_intent_is_set_aside(tmp_path: Path) -> None:
    lines: list[str] = []
    store = Store(tmp_path, report=lines.append)
    (tmp_path / ".intents").mkdir()
    (tmp_path / ".intents" / ("d" * 20)).write_bytes(b"\xff\xfe garbage")
    assert store.intent("d" * 20) is None and len(lines) == 1
    assert store.claim_intent("d" * 20, "5b0c3f1e-8d2a-4c7e-9f10-123456789abc")


def test_store_dir_under_a_file_is_one_clear_error(tmp_path: Path) -> None:
    from pipeline.errors import ConfigError

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"store.dir: cannot use .*file/s.*Not a directory"):
        Store(tmp_path / "file" / "s")


def test_a_damaged_entry_that_cannot_be_moved_is_reported_once(tmp_path: Path) -> None:
    lines: list[str] = []
    store = Store(tmp_path, report=lines.append)
    cell = store.cell_dir("e" * 20)
    cell.mkdir(parents=True)
    (cell / RECORD_NAME).write_bytes(b"{")
    (tmp_path / ".damaged").write_text("a file where the folder should be")
    assert store.get("e" * 20) is None and store.get("e" * 20) is None
    assert not store.has("e" * 20)
    assert len(lines) == 1 and "cannot be moved aside" in lines[0]
