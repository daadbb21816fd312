"""krea-reproduce against the emulator: ids, queries, recipes, differences, bad selects."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import cli_env, compose_config, run_cli
from PIL import Image
from runs import charges_by_seed, ledger, read_manifest, run_sweep_inprocess, set_path

from pipeline import images, manifest
from pipeline.emulator import Emulator
from pipeline.entry import JobContext
from pipeline.errors import BudgetExceeded, ConfigError, PipelineError, SelectError
from pipeline.reproduce import reproduce_job
from pipeline.reproduction import compare, pixel_difference, rebuild_cell
from pipeline.rundir import REPRODUCE_CSV
from pipeline.selection import Recorded, Select, load_selection, parse_select
from pipeline.sweep import cell_id_of

ID_A = "0123456789abcdef0123"
ID_B = "fedcba9876543210fedc"

# 2 creativities with a local reference image, plus one text-only cell: 3 cells of 2 images each,
# PNG (so a pixel measure is exact). (numberResults is not swept: plan.parquet cannot take it as
# an axis yet.)
SWEEP: dict[str, Any] = {
    "name": "repro",
    "base": {
        "model": "krea:krea@2-large",
        "positivePrompt": "a red fox in the snow",
        "width": 1024,
        "height": 1024,
        "outputFormat": "PNG",
        "numberResults": 2,
        "inputs": {"referenceImages": [{"image": "refs/fox.png", "strength": 0.5}]},
    },
    "grid": {"settings.creativity": ["raw", "high"]},
    "seeds": [7],
    "include": [{"inputs": None, "settings.creativity": "low", "seed": 9}],
}


def _write_ref(folder: Path) -> None:
    """A small reference image whose content is this test's own (not the demo's palette)."""
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 60, 20)).save(folder / "refs" / "fox.png")


def _edits(emu: Emulator, workdir: Path) -> dict[str, Any]:
    return {
        "api.backend": "emulator",
        "api.base_url": emu.base_url,
        "store.dir": str(workdir / "outputs" / ".store"),
    }


def _original(workdir: Path, emu: Emulator, name: str = "run", **edits: Any) -> Path:
    """A real krea-run of SWEEP in `workdir/name`; its images are in the shared store too."""
    _write_ref(workdir)
    run_dir = workdir / name
    assert run_sweep_inprocess(workdir, SWEEP, run_dir, **_edits(emu, workdir), **edits) == 0
    return run_dir


def _reproduce(
    emu: Emulator | None, out: Path, *overrides: str, **edits: Any
) -> tuple[int, pd.DataFrame | None]:
    """krea-reproduce's job in this process; the exit code and reproduce.csv (if written)."""
    cfg = compose_config("reproduce", list(overrides))
    cfg.pop("hydra", None)
    cfg["runner"]["progress"] = "none"
    if emu is not None:
        cfg["api"]["backend"], cfg["api"]["base_url"] = "emulator", emu.base_url
    for key, value in edits.items():
        set_path(cfg, key, value)
    code = reproduce_job(cfg, JobContext(run_dir=out, multirun=False, sweep_dir=None, overrides=[]))
    report = out / REPRODUCE_CSV
    return code, pd.read_csv(report) if report.exists() else None


def _ids(frame: pd.DataFrame) -> str:
    return "[" + ",".join(dict.fromkeys(frame["cell_id"])) + "]"


def test_reproduce_by_cell_ids_is_byte_identical_and_never_uses_the_store(
    isolated: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _original(isolated, emulator)
    before = len(emulator.ledger_entries())
    original = read_manifest(run)
    assert len(original) == 6 and (isolated / "outputs" / ".store").is_dir()

    code, report = _reproduce(
        emulator, isolated / "rep", f"run_dir={run}", f"select={_ids(original)}"
    )

    assert code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("backend: emulator")
    assert "6 identical, 0 different, 0 failed" in out
    assert report is not None and len(report) == 6 and set(report["result"]) == {"identical"}
    # the store was not used: every image was made (and billed) again, exactly once
    assert len(emulator.ledger_entries()) - before == 6
    new = read_manifest(isolated / "rep")
    assert set(new["status"]) == {"ok"} and (new["cost_usd"] > 0).all()
    key = ["cell_id", "result_index"]
    both = original.merge(new, on=key, suffixes=("", "_new"))
    assert len(both) == 6
    assert (both["seed"] == both["seed_new"]).all()
    assert (both["cell_index"] == both["cell_index_new"]).all()
    assert (both["image_sha256"] == both["image_sha256_new"]).all()
    for row in both.itertuples():
        old_bytes = images.strip_recipe((run / str(row.image_path)).read_bytes())
        new_file = (isolated / "rep" / str(row.image_path_new)).read_bytes()
        assert images.strip_recipe(new_file) == old_bytes  # the API bytes, byte for byte
        recipe = images.read_recipe(new_file)
        assert recipe is not None and recipe["cell_id"] == row.cell_id
        assert recipe["sweep"] == "repro" and recipe["seed"] == row.seed
    assert (isolated / "rep" / "manifest.csv").exists()
    assert (isolated / "rep" / "plan.parquet").exists()


def test_reproduce_by_query_reissues_whole_cells_and_compares_the_rows_it_names(
    isolated: Path, emulator: Emulator
) -> None:
    run = _original(isolated, emulator)
    before = len(emulator.ledger_entries())
    query = (
        "`settings.creativity` == 'high' or (`settings.creativity` == 'low' and result_index == 1)"
    )

    code, report = _reproduce(emulator, isolated / "rep", f"run_dir={run}", f'select="{query}"')

    assert code == 0 and report is not None
    original = read_manifest(run).query(query)
    assert sorted(zip(report["cell_id"], report["result_index"], strict=True)) == sorted(
        zip(original["cell_id"], original["result_index"], strict=True)
    )
    assert set(report["result"]) == {"identical"}
    # two single-image cells plus the whole two-image cell, of which one image is compared
    assert len(emulator.ledger_entries()) - before == 4
    assert len(report) == 3


def test_reproduce_from_an_image_recipe_needs_no_run_dir(
    isolated: Path, emulator: Emulator
) -> None:
    run = _original(isolated, emulator)
    row = read_manifest(run).query("`settings.creativity` == 'low' and result_index == 1").iloc[0]
    path = run / str(row["image_path"])

    code, report = _reproduce(emulator, isolated / "rep", f"image={path}")

    assert code == 0 and report is not None
    assert report[["cell_id", "result_index", "result"]].values.tolist() == [
        [row["cell_id"], 1, "identical"]
    ]
    assert int(report["seed"].iloc[0]) == int(row["seed"])


def test_a_changed_image_is_reported_different_with_its_pixel_measure(
    isolated: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _original(isolated, emulator)
    frame = read_manifest(run)
    target = frame.query("`settings.creativity` == 'low'").iloc[0]
    path = run / str(target["image_path"])
    # Alter a 10×10 block of the recorded image and record the altered bytes as the API's.
    data = path.read_bytes()
    recipe = images.read_recipe(data)
    assert recipe is not None
    with Image.open(io.BytesIO(data)) as im:
        before = np.asarray(im.convert("RGB"), dtype=np.int16)
    after = before.copy()
    after[100:110, 200:210] = (after[100:110, 200:210] + 37) % 256
    buf = io.BytesIO()
    Image.fromarray(after.astype(np.uint8)).save(buf, format="PNG")
    path.write_bytes(images.embed_recipe(buf.getvalue(), "png", recipe))
    mask = (frame["cell_id"] == target["cell_id"]) & (frame["result_index"] == 0)
    frame.loc[mask, "image_sha256"] = images.sha256_hex(buf.getvalue())
    manifest.write(frame, run)

    code, report = _reproduce(
        emulator, isolated / "rep", f"run_dir={run}", f"select={target['cell_id']}"
    )

    assert code == 1 and report is not None
    result = report.set_index("result_index")
    assert result.loc[1, "result"] == "identical"
    assert result.loc[0, "result"] == "different"
    assert result.loc[0, "differing_pixels"] == pytest.approx(100 / (1024 * 1024))
    assert result.loc[0, "mean_abs_diff"] == pytest.approx(np.abs(after - before).mean())
    assert 0 < result["mean_abs_diff"].loc[0] < 1
    assert "1 identical, 1 different, 0 failed" in capsys.readouterr().out


def test_a_reproduction_never_writes_into_the_run_it_reproduces(
    isolated: Path, emulator: Emulator
) -> None:
    run = _original(isolated, emulator)
    posts = emulator.stats()["posts"]
    ids = _ids(read_manifest(run))
    with pytest.raises(ConfigError, match="is the run being reproduced"):
        _reproduce(emulator, run, f"run_dir={run}", f"select={ids}")
    image = run / str(read_manifest(run)["image_path"].iloc[0])
    with pytest.raises(ConfigError, match="is the run being reproduced"):
        _reproduce(emulator, run, f"image={image}")
    assert emulator.stats()["posts"] == posts


def test_pixel_difference_measures_and_names_a_size_change() -> None:
    def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, colour).save(buf, format="PNG")
        return buf.getvalue()

    same = pixel_difference(png((4, 4), (10, 10, 10)), png((4, 4), (10, 10, 10)))
    assert (same.mean_abs, same.share) == (0.0, 0.0)
    apart = pixel_difference(png((4, 4), (10, 10, 10)), png((4, 4), (13, 10, 10)))
    assert apart.mean_abs == pytest.approx(1.0) and apart.share == 1.0
    sized = pixel_difference(png((4, 4), (0, 0, 0)), png((8, 2), (0, 0, 0)))
    assert (sized.mean_abs, sized.share) == (None, None)
    assert sized.note == "size 8x2, recorded 4x4"


@pytest.mark.parametrize(
    ("change", "note"),
    [
        ("delete", "fox.png no longer exists; re-sending the copy the run uploaded"),
        ("repaint", "a reference file changed since the run; re-sending the copy the run uploaded"),
    ],
)
def test_a_lost_or_changed_reference_file_falls_back_to_the_uploaded_copy(
    isolated: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str], change: str, note: str
) -> None:
    run = _original(isolated, emulator)
    ref = isolated / "refs" / "fox.png"
    if change == "delete":
        ref.unlink()
    else:
        Image.new("RGB", (32, 32), (0, 90, 255)).save(ref)
    query = "`settings.creativity` == 'raw' and result_index == 0"

    code, report = _reproduce(emulator, isolated / "rep", f"run_dir={run}", f'select="{query}"')

    assert code == 0 and report is not None and list(report["result"]) == ["identical"]
    assert note in capsys.readouterr().out
    sent = json.loads(read_manifest(isolated / "rep")["request_json"].iloc[0])
    assert not sent["inputs"]["referenceImages"][0]["image"].endswith(".png")


def test_the_budget_still_gates_a_reproduction(isolated: Path, emulator: Emulator) -> None:
    run = _original(isolated, emulator)
    posts = emulator.stats()["posts"]
    ids = _ids(read_manifest(run))  # 6 images at $0.06-0.065: about $0.38
    with pytest.raises(BudgetExceeded, match="over the budget"):
        _reproduce(
            emulator, isolated / "rep", f"run_dir={run}", f"select={ids}", "budget.max_usd=0.3"
        )
    assert emulator.stats()["posts"] == posts


def test_dry_run_sends_nothing(isolated: Path, emulator: Emulator) -> None:
    run = _original(isolated, emulator)
    posts = emulator.stats()["posts"]
    ids = _ids(read_manifest(run))

    code, report = _reproduce(
        emulator, isolated / "rep", f"run_dir={run}", f"select={ids}", "dry_run=true"
    )

    assert code == 0 and report is None
    assert emulator.stats()["posts"] == posts
    assert (isolated / "rep" / "plan.parquet").exists()
    assert not (isolated / "rep" / "manifest.parquet").exists()


def test_a_multirun_dir_is_merged(isolated: Path, emulator: Emulator) -> None:
    parent = isolated / "multi"
    for index in (0, 1):
        _original(isolated, emulator, f"multi/{index}", **{"shard.index": index, "shard.count": 2})
    shutil.copytree(parent / "0", parent / "2")  # a job dir twice: its rows count once
    merged = pd.concat([read_manifest(parent / "0"), read_manifest(parent / "1")])
    assert len(merged) == 6 and len(read_manifest(parent / "0")) < 6

    code, report = _reproduce(
        emulator, isolated / "rep", f"run_dir={parent}", f"select={_ids(merged)}"
    )

    assert code == 0 and report is not None
    assert len(report) == 6 and set(report["result"]) == {"identical"}


RUN = Path("some/run")


@pytest.mark.parametrize(
    ("select", "image", "run_dir", "expected"),
    [
        ([ID_A, ID_B], None, "some/run", Select(ids=(ID_A, ID_B), run_dir=RUN)),
        ([ID_A, ID_A.upper()], None, "some/run", Select(ids=(ID_A,), run_dir=RUN)),
        (ID_B, None, "some/run", Select(ids=(ID_B,), run_dir=RUN)),
        (
            [12345678901234567890],
            None,
            "r",
            Select(ids=("12345678901234567890",), run_dir=Path("r")),
        ),
        ([123], None, "r", Select(ids=("00000000000000000123",), run_dir=Path("r"))),
        ("seed == 7", None, "some/run", Select(query="seed == 7", run_dir=RUN)),
        (
            "  `settings.creativity` == 'raw'  ",
            None,
            "r",
            Select(query="`settings.creativity` == 'raw'", run_dir=Path("r")),
        ),
        (None, "a/b.png", None, Select(images=(Path("a/b.png"),))),
        (None, ["a.png", "b.png"], None, Select(images=(Path("a.png"), Path("b.png")))),
        ("image:a/b.png", None, None, Select(images=(Path("a/b.png"),))),
        ("image=a/b.png", None, None, Select(images=(Path("a/b.png"),))),
        (["image:a.png", "image:b.png"], None, None, Select(images=(Path("a.png"), Path("b.png")))),
        (None, None, None, "nothing to reproduce"),
        ("seed == 7", None, None, "nothing to reproduce"),
        (None, None, "some/run", "needs select="),
        ([], None, "r", "names no cell"),
        ([ID_A, "xyz"], None, "r", "'xyz' is not a cell id"),
        ([ID_A, 120000.0], None, "r", "Hydra read it as a number"),
        ({"a": 1}, None, "r", "neither cell ids"),
        ("   ", None, "r", "select is empty"),
        (None, "a.png", "some/run", "not both"),
        ("image:a.png", None, "some/run", "not both"),
        (ID_A, "a.png", None, "not both"),
        (["image:a.png", ID_A], None, None, "mixes image:"),
        ("image:", None, None, "is not a file name"),
    ],
)
def test_select_forms(select: Any, image: Any, run_dir: Any, expected: Select | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(SelectError, match=expected):
            parse_select(select, image, run_dir)
    else:
        assert parse_select(select, image, run_dir) == expected


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run shared by the bad-select cases (read only)."""
    workdir = tmp_path_factory.mktemp("shared")
    with Emulator(0) as emu:
        return _original(workdir, emu)


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ([ID_A], rf"unknown cell id\(s\), not in .*: {ID_A}"),
        ("seed ==", "cannot read the query 'seed ==': SyntaxError"),
        ("nope == 1", "cannot read the query 'nope == 1': UndefinedVariableError"),
        ("seed == 12345", "matches none of the 6 rows"),
        ("seed + 1", "is not a condition on the manifest's rows"),
        ("x = seed", "is not a condition"),
        ("__import__('os')", "cannot read the query .*: ValueError"),
        ("image:{run}/manifest.csv", "has no krea-sweep recipe"),
        ("image:{run}/missing.png", "missing.png: No such file"),
        ("run_dir:{run}/images", "has no manifest or journal"),
    ],
)
def test_bad_selects_are_one_clear_error(finished_run: Path, select: str, message: str) -> None:
    run_dir: Any = finished_run
    if isinstance(select, str) and select.startswith("run_dir:"):
        run_dir, select = select[len("run_dir:") :].format(run=finished_run), ID_A
    elif isinstance(select, str) and select.startswith("image:"):
        select, run_dir = select.format(run=finished_run), None
    with pytest.raises(SelectError, match=message):
        load_selection(parse_select(select, None, run_dir))


def test_a_failed_cell_cannot_be_reproduced(isolated: Path, finished_run: Path) -> None:
    run = shutil.copytree(finished_run, isolated / "run")
    frame = read_manifest(run)
    failed = frame["cell_id"] == frame["cell_id"].iloc[0]
    for column in ("status", "error_code"):  # categorical: edit as text (write types it again)
        frame[column] = frame[column].astype("string")
    frame.loc[failed, ["status", "error_code", "image_sha256"]] = ["failed", "invalidSeed", None]
    manifest.write(frame, run)
    with pytest.raises(SelectError, match=r"has no image in run \(it failed: invalidSeed\)"):
        load_selection(parse_select([frame["cell_id"].iloc[0]], None, run))
    with pytest.raises(SelectError, match="none with an image"):
        load_selection(parse_select("status == 'failed'", None, run))


def test_the_recorded_request_and_seed_are_checked_before_anything_is_sent() -> None:
    request = {k: v for k, v in SWEEP["base"].items() if k != "inputs"} | {"seed": 3}
    cell_id = cell_id_of(request)
    cell, note = rebuild_cell(Recorded(cell_id, 4, {"a": 1}, request, {**request, "taskUUID": "x"}))
    assert (cell.cell_id, cell.index, cell.seed, note) == (cell_id, 4, 3, None)
    assert cell.request == request and cell.axes == {"a": 1}
    # without a plan: the request as sent, less what the client adds
    sent = {**request, "taskType": "imageInference", "taskUUID": "x", "includeCost": True}
    assert rebuild_cell(Recorded(cell_id, 0, {}, None, sent))[0].request == request
    with pytest.raises(PipelineError, match=r"hashes to cell id .* bug in krea-sweep"):
        rebuild_cell(Recorded(ID_A, 0, {}, request, request))
    with pytest.raises(PipelineError, match=r"not the recorded seed .* bug in krea-sweep"):
        rebuild_cell(Recorded(cell_id, 0, {}, request, {**request, "seed": 4}))
    recovered = {"taskType": "imageInference", "taskUUID": "x", "numberResults": 2}
    assert rebuild_cell(Recorded(cell_id, 0, {}, request, recovered, seed=3))[0].seed == 3
    with pytest.raises(PipelineError, match="recorded only its taskUUID"):
        rebuild_cell(Recorded(cell_id, 0, {}, None, recovered))


def test_console_script_reproduces_and_fails_cleanly_on_a_bad_select(
    isolated: Path, emulator: Emulator
) -> None:
    run = _original(isolated, emulator)
    row = read_manifest(run).iloc[0]
    done = run_cli(
        "reproduce", f"image={run / str(row['image_path'])}", "hydra.run.dir=rep", cwd=isolated
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("backend: emulator")
    assert "1 identical, 0 different, 0 failed" in done.stdout
    assert (isolated / "rep" / REPRODUCE_CSV).exists()

    bad = run_cli("reproduce", f"run_dir={run}", f"select=[{ID_A}]", cwd=isolated)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"krea-reproduce: error: unknown cell id(s), not in run's manifest: {ID_A}"
    ]


def test_rerunning_a_saved_hydra_config_gives_the_same_cells_seeds_and_ids(
    isolated: Path,
) -> None:
    conf = isolated / "myconf"
    (conf / "sweep").mkdir(parents=True)
    _write_ref(conf / "sweep")  # relative to the sweep file, not to conf/sweep of the package
    spec = {**SWEEP, "name": "mine"}
    (conf / "sweep" / "mine.yaml").write_text(json.dumps(spec))  # JSON is YAML
    first = run_cli("run", f"--config-dir={conf}", "sweep=mine", "hydra.run.dir=a", cwd=isolated)
    assert first.returncode == 0, first.stderr
    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    again = run_cli(
        "run",
        f"--config-path={isolated / 'a' / '.hydra'}",
        "--config-name=config",
        f"hydra.run.dir={isolated / 'b'}",
        cwd=elsewhere,
    )
    assert again.returncode == 0, again.stderr
    columns = ["cell_id", "cell_index", "seed", "request_json"]
    a = pd.read_parquet(isolated / "a" / "plan.parquet")[columns]
    b = pd.read_parquet(isolated / "b" / "plan.parquet")[columns]
    assert len(a) == 3 and a.equals(b)


# ---------------------------------------------------------------- issue 11 items 1 and 2


def test_a_stopped_reproduction_run_again_elsewhere_pays_nothing_twice(
    isolated: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was: the rerun got a new run dir and paid again for every reproduction already finished.
    run = _original(isolated, emulator)
    ids = _ids(read_manifest(run))
    with Emulator(0, credits=0.13) as poor:  # enough for one two-image cell: then 402 stops it
        code, _ = _reproduce(poor, isolated / "rep1", f"run_dir={run}", f"select={ids}")
        first = len(poor.ledger_entries())
    assert code == 2 and 0 < first < 6
    capsys.readouterr()
    # A kill between storing a reproduction and dropping its intent leaves both behind.
    area = isolated / "outputs" / ".store" / "emulator" / "reproductions"
    (area / ".intents").mkdir(exist_ok=True)
    for record in area.glob("??/*/record.json"):
        task = json.loads(record.read_text())["images"][0]["task_uuid"]
        (area / ".intents" / record.parent.name).write_text(task)
    with Emulator(0) as rich:
        code, report = _reproduce(rich, isolated / "rep2", f"run_dir={run}", f"select={ids}")
        second = len(rich.ledger_entries())
        out = capsys.readouterr().out
        assert code == 0, out
        assert first + second == 6  # every image reproduced exactly once over the two runs
        assert "reproduced by an earlier krea-reproduce that stopped" in out
        assert report is not None and set(report["result"]) == {"identical"} and len(report) == 6
        new = read_manifest(isolated / "rep2")
        assert (new["status"] == "cached").sum() == first
        # the finished reproduction was reported in full: a later one asks the API again, and is
        # not answered by a task of an earlier reproduction either
        assert not list(area.glob("??/*")) and not list((area / ".intents").glob("*"))
        code, _ = _reproduce(rich, isolated / "rep3", f"run_dir={run}", f"select={ids}")
        assert code == 0 and len(rich.ledger_entries()) == second + 6


@pytest.mark.parametrize("where", ["krea-run intents", "reproductions intents"])
def test_a_leftover_intent_naming_the_stored_task_never_answers_a_reproduction(
    isolated: Path, emulator: Emulator, where: str
) -> None:
    # Was: with such an intent krea-reproduce billed nothing, got the original task back and
    # reported "identical".
    run = _original(isolated, emulator)
    original = read_manifest(run)
    folder = isolated / "outputs" / ".store" / "emulator"
    if where == "reproductions intents":
        folder = folder / "reproductions"
    (folder / ".intents").mkdir(parents=True, exist_ok=True)
    for cell_id, task in original.groupby("cell_id")["task_uuid"].first().items():
        (folder / ".intents" / str(cell_id)).write_text(str(task))
    before = len(emulator.ledger_entries())

    code, report = _reproduce(
        emulator, isolated / "rep", f"run_dir={run}", f"select={_ids(original)}"
    )

    assert code == 0 and report is not None and set(report["result"]) == {"identical"}
    assert len(emulator.ledger_entries()) - before == 6  # each image really made again
    new = read_manifest(isolated / "rep")
    assert not set(new["task_uuid"]) & set(original["task_uuid"])


def test_a_row_answered_by_the_recorded_task_is_reported_failed(
    isolated: Path, emulator: Emulator
) -> None:
    run = _original(isolated, emulator)
    frame = read_manifest(run)
    targets = load_selection(parse_select(_ids(frame).strip("[]").split(","), None, run)).targets
    rows = compare(targets, run, frozenset(frame["task_uuid"]))  # the run compared with itself
    assert rows and all(r.result == "failed" for r in rows)
    assert all("answered by the recorded task" in r.note for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_the_same_reproduce_command_run_again_after_a_stop_pays_each_image_once(
    tmp_path: Path, standalone_emulator: Any, stop: signal.Signals
) -> None:
    # issue 11 item 1, from its steps: stop krea-reproduce, rerun the same command (a new
    # outputs/reproduce/<ts>): the reproductions already finished are not paid again.
    cells = 16
    first = run_cli(
        "run", "sweep=seed_study", f"sweep.seeds.count={cells}", "hydra.run.dir=orig", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    url, ledger_path = standalone_emulator(0.4)
    command = [
        sys.executable,
        "-m",
        "pipeline.reproduce",
        "run_dir=orig",
        'select="seed >= 0"',
        "api=emulator",
        f"api.base_url={url}",
        "runner.concurrency=2",
        "runner.progress=none",
    ]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while len(ledger(ledger_path)) < cells // 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(stop)
    proc.communicate(timeout=60)
    assert proc.returncode == (130 if stop == signal.SIGINT else -signal.SIGKILL)
    time.sleep(1.1)  # the rerun gets its own outputs/reproduce/<timestamp>
    again = subprocess.run(
        command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{cells} identical, 0 different, 0 failed" in again.stdout
    assert len(list((tmp_path / "outputs" / "reproduce").iterdir())) == 2
    charges = charges_by_seed(ledger_path)
    assert len(charges) == cells and set(charges.values()) == {1}, charges


def test_an_image_that_is_a_fifo_is_refused_not_read(isolated: Path) -> None:
    os.mkfifo(isolated / "fifo.png")  # was a hang: the recipe was read with a blocking open
    with pytest.raises(SelectError, match=r"fifo.png: is not a regular file \(a FIFO\)"):
        load_selection(parse_select(None, str(isolated / "fifo.png")))
