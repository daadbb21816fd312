"""Every mistake in a sweep or an override: one clear message, exit 1, no traffic."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_config, run_cli
from PIL import Image

from pipeline.emulator import Emulator
from pipeline.entry import JobContext
from pipeline.errors import PipelineError
from pipeline.run import run_job

GOOD_SWEEP: dict[str, Any] = {
    "name": "t",
    "seed": 3,
    "base": {
        "model": "krea:krea@2-large",
        "positivePrompt": "a lighthouse, {style}",
        "width": 1024,
        "height": 1024,
        "settings": {"creativity": "medium"},
        "inputs": {"referenceImages": [{"image": "ref.png", "strength": 0.7}]},
    },
    "vars": {"style": "film grain"},
    "grid": {"settings.creativity": ["raw", "high"]},
    "seeds": [1, 2],
}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    if value is _DELETE:
        tree.pop(keys[-1], None)
    else:
        tree[keys[-1]] = value


_DELETE = object()
_ELEVEN = [{"image": "ref.png", "strength": 0.5}] * 11

# (id, edits of the sweep spec, edits of the rest of the config, expected text in the message)
MISTAKES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("width-1000", {"base.width": 1000}, {}, "width: 1000 is not allowed"),
    ("size-pair", {"base.height": 768}, {}, "1024x768 is not an allowed size pair"),
    ("creativity", {"grid": {"settings.creativity": ["extreme"]}}, {}, '"extreme" is not allowed'),
    ("11-refs", {"base.inputs.referenceImages": _ELEVEN}, {}, "has 11 items; allowed: 1 to 10"),
    (
        "strength",
        {"base.inputs.referenceImages": [{"image": "ref.png", "strength": 2.5}]},
        {},
        "strength: 2.5 is out of range",
    ),
    ("no-prompt", {"base.positivePrompt": _DELETE}, {}, "positivePrompt: is required"),
    ("empty-prompt", {"base.positivePrompt": ""}, {}, "positivePrompt: must not be empty"),
    ("negativePrompt", {"base.negativePrompt": "ugly"}, {}, "negativePrompt: unknown key"),
    ("steps", {"base.steps": 30}, {}, "steps: unknown key"),
    ("zip-lengths", {"zip": [{"width": [1024, 1376], "height": [1024]}]}, {}, "zip"),
    ("template-var", {"base.positivePrompt": "a {subject}"}, {}, "subject"),
    ("missing-ref", {"base.inputs.referenceImages": [{"image": "nope.png"}]}, {}, "nope.png"),
    ("seed-negative", {"seeds": [-1]}, {}, "seed"),
    ("seed-too-big", {"seeds": [2**63]}, {}, "seed"),
    ("numberResults-0", {"base.numberResults": 0}, {}, "numberResults: 0 is out of range"),
    ("numberResults-21", {"base.numberResults": 21}, {}, "numberResults: 21 is out of range"),
    ("outputQuality", {"base.outputQuality": 10}, {}, "outputQuality: 10 is out of range"),
    ("ttl", {"base.ttl": 30}, {}, "ttl: 30 is out of range"),
    ("outputFormat", {"base.outputFormat": "GIF"}, {}, '"GIF" is not allowed'),
    ("webhook", {"base.webhookURL": "not a url"}, {}, "webhookURL"),
    ("deliveryMethod", {"base.deliveryMethod": "later"}, {}, '"later" is not allowed'),
    ("safety-mode", {"base.safety": {"mode": "strict"}}, {}, '"strict" is not allowed'),
    ("inputs-key", {"base.inputs.masks": ["x"]}, {}, "inputs.masks: unknown key"),
    ("model", {"base.model": "krea:krea@1"}, {}, "model"),
    ("sweep-typo", {"grdi": {"width": [1024]}}, {}, "grdi"),
    ("exclude-axis", {"exclude": [{"settings.nope": 1}]}, {}, "settings.nope"),
    ("taskUUID", {"base.taskUUID": "00000000-0000-4000-8000-000000000000"}, {}, "taskUUID"),
    ("budget-nan", {}, {"budget": {"max_usd": "lots"}}, "budget.max_usd must be a number"),
    ("concurrency-0", {}, {"runner.concurrency": 0}, "runner.concurrency"),
    ("shard-index", {}, {"shard": {"index": 2, "count": 2}}, "shard.index"),
    ("fault-name", {}, {"api.faults": {"bogus": 0.1}}, "api.faults.bogus"),
    ("fault-rate", {}, {"api.faults": {"http_429": 2}}, "probability"),
    ("delivery", {}, {"api.delivery": "carrier-pigeon"}, "api.delivery"),
    ("no-key", {}, {"api.backend": "runware", "dry_run": False}, "RUNWARE_API_KEY"),
    (
        "over-budget",
        {"seeds": {"count": 200, "start": 0}},
        {"budget": {"max_usd": 1}},
        "budget.max_usd=",
    ),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    Image.new("RGB", (8, 8), (200, 40, 40)).save(tmp_path / "ref.png")
    return tmp_path


def _config(
    workdir: Path, sweep_edits: dict[str, Any], cfg_edits: dict[str, Any]
) -> dict[str, Any]:
    cfg = compose_config("run", ["dry_run=true"])
    cfg.pop("hydra", None)
    sweep = copy.deepcopy(GOOD_SWEEP)
    for key, value in sweep_edits.items():
        _set(sweep, key, value)
    cfg["sweep"] = sweep
    for key, value in cfg_edits.items():
        _set(cfg, key, value)
    return cfg


def _ctx(workdir: Path) -> JobContext:
    return JobContext(run_dir=workdir / "run", multirun=False, sweep_dir=workdir, overrides=[])


def test_the_good_sweep_plans(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_job(_config(workdir, {}, {}), _ctx(workdir)) == 0
    assert "cells" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("sweep_edits", "cfg_edits", "expected"),
    [pytest.param(s, c, e, id=i) for i, s, c, e in MISTAKES],
)
def test_mistake_is_one_clear_error(
    workdir: Path, sweep_edits: dict[str, Any], cfg_edits: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PipelineError) as caught:
        run_job(_config(workdir, sweep_edits, cfg_edits), _ctx(workdir))
    assert expected in str(caught.value)


def test_validation_problem_names_cell_axes_path_and_allowed(workdir: Path) -> None:
    cfg = _config(workdir, {"grid": {"settings.creativity": ["raw", "extreme"]}}, {})
    with pytest.raises(PipelineError) as caught:
        run_job(cfg, _ctx(workdir))
    message = str(caught.value)
    assert "settings.creativity=extreme" in message  # the axis values that made the cell
    assert "cell 2 " in message  # the cell index (seeds [1, 2] vary fastest)
    assert 'allowed: "raw", "low", "medium", "high"' in message


def test_every_problem_is_reported_at_once(workdir: Path) -> None:
    edits = {"base.width": 1000, "base.steps": 30, "base.numberResults": 0}
    with pytest.raises(PipelineError) as caught:
        run_job(_config(workdir, edits, {}), _ctx(workdir))
    for text in ("width: 1000", "steps: unknown key", "numberResults: 0"):
        assert text in str(caught.value)


def test_invalid_sweep_sends_nothing_even_without_dry_run(workdir: Path) -> None:
    with Emulator(0) as emu:
        cfg = _config(workdir, {"base.width": 1000}, {"dry_run": False, "api.backend": "emulator"})
        cfg["api"]["base_url"] = emu.base_url
        with pytest.raises(PipelineError):
            run_job(cfg, _ctx(workdir))
        assert emu.stats().get("posts", 0) == 0
    assert not (workdir / "run" / "plan.parquet").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sweep=no_such_sweep"], "no_such_sweep"),
        (["dry_run=true", "budget.max_usd=lots"], "budget.max_usd"),
        (["dry_run=true", "sweep.base.width=1000"], "width: 1000 is not allowed"),
    ],
)
def test_cli_mistakes_exit_1_without_traceback(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    done = run_cli("run", *args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
