"""Hostile input (issue 11): huge sweeps, bad references, odd files, full disks: one clear line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_config, run_cli
from runs import set_path

from pipeline.entry import JobContext
from pipeline.errors import BudgetExceeded, ConfigError
from pipeline.run import run_job

BASE: dict[str, Any] = {
    "model": "krea:krea@2-large",
    "positivePrompt": "a lighthouse",
    "width": 1024,
    "height": 1024,
}


def _sweep(**over: Any) -> dict[str, Any]:
    return {"name": "t", "base": copy.deepcopy(BASE), **over}


def _run(workdir: Path, sweep: dict[str, Any], **edits: Any) -> int:
    """krea-run's job in this process, a dry run unless `dry_run=False` is given."""
    cfg = compose_config("run", ["dry_run=true"])
    cfg.pop("hydra", None)
    cfg["sweep"] = sweep
    cfg["runner"]["progress"] = "none"
    cfg["store"]["dir"] = str(workdir / "store")
    for key, value in edits.items():
        set_path(cfg, key, value)
    ctx = JobContext(run_dir=workdir / "run", multirun=False, sweep_dir=workdir, overrides=[])
    return run_job(cfg, ctx)


def _one_line_exit_1(done: Any, expected: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) >= 1 and expected in done.stderr, done.stderr


# ---------------------------------------------------------------- item 6: huge sweeps


@pytest.mark.parametrize(
    "sweep",
    [
        pytest.param(_sweep(seeds={"count": 10**12}), id="seeds-count-1e12"),
        pytest.param(
            _sweep(
                base={**BASE, "positivePrompt": " ".join(f"{{v{i}}}" for i in range(12))},
                grid={f"vars.v{i}": list(range(10)) for i in range(12)},
            ),
            id="12-axis-grid-1e12",
        ),
        pytest.param(_sweep(seeds={"count": 10**12}, sample={"n": 10**30}), id="sample-n-1e30-int"),
    ],
)
def test_a_huge_sweep_is_refused_from_its_shape(isolated: Path, sweep: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"1,000,000,000,000 cells .*at most 1,000,000"):
        _run(isolated, sweep)
    assert not (isolated / "run" / "plan.parquet").exists()


def test_sample_n_1e30_as_a_float_is_one_clear_error(isolated: Path) -> None:
    with pytest.raises(ConfigError, match=r"sample.n must be a positive integer, got 1e\+30"):
        _run(isolated, _sweep(seeds={"count": 10**12}, sample={"n": 1e30}))


def test_a_million_cells_over_budget_are_refused_before_the_plan_is_written(
    isolated: Path,
) -> None:
    # Was: refused only after 27 s of planning and a 44 MB plan.parquet.
    with pytest.raises(BudgetExceeded, match=r"at least \$60,000.00 .*budget.max_usd=60000.01"):
        _run(isolated, _sweep(seeds={"count": 10**6}))
    assert not (isolated / "run").exists()


def test_the_cli_answers_a_trillion_seeds_at_once(tmp_path: Path) -> None:
    done = run_cli(
        "run",
        "sweep=seed_study",
        "sweep.seeds.count=1000000000000",
        "dry_run=true",
        cwd=tmp_path,
        timeout=60,
    )
    _one_line_exit_1(done, "one run plans at most 1,000,000")


def test_many_excludes_over_a_huge_product_are_not_walked(isolated: Path) -> None:
    sweep = _sweep(
        base={**BASE, "positivePrompt": " ".join(f"{{v{i}}}" for i in range(12))},
        grid={f"vars.v{i}": list(range(10)) for i in range(12)},
        exclude=[{"vars.v0": i} for i in range(10)] + [{"vars.v1": i} for i in range(3)],
    )
    with pytest.raises(ConfigError, match="13 entries over a product of 1,000,000,000,000"):
        _run(isolated, sweep)


# ---------------------------------------------------------------- item 9: one line, not a traceback


def _cli(tmp_path: Path, *args: str | bytes, **popen: Any) -> Any:
    """A console script run with raw argv (bytes allowed), output as text."""
    import subprocess
    import sys

    from conftest import cli_env

    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        timeout=60,
        **popen,
    )
    done.stdout = done.stdout.decode("utf-8", "replace")
    done.stderr = done.stderr.decode("utf-8", "replace")
    return done


def test_a_lone_surrogate_in_a_prompt_is_one_clear_line(tmp_path: Path) -> None:
    done = _cli(
        tmp_path,
        "pipeline.run",
        "sweep=seed_study",
        "dry_run=true",
        b"sweep.base.positivePrompt='a \xed\xa0\x80 castle'",  # argv bytes that are not UTF-8
    )
    _one_line_exit_1(done, "base.positivePrompt: holds \\udced at character 2")


def test_a_lone_surrogate_in_an_unquoted_override_is_one_clear_line(tmp_path: Path) -> None:
    done = _cli(
        tmp_path,
        "pipeline.run",
        "sweep=seed_study",
        "dry_run=true",
        b"sweep.base.positivePrompt=a\xed\xa0\x80castle",  # unquoted: Hydra's lexer refuses it
    )
    _one_line_exit_1(
        done,
        "the override 'sweep.base.positivePrompt=a\\udced\\udca0\\udc80castle' holds \\udced "
        "at character 27, which is not valid Unicode text",
    )
    assert "Lexer" not in done.stderr


def test_a_lone_surrogate_anywhere_in_a_sweep_is_named(isolated: Path) -> None:
    sweep = _sweep(vars={"style": "oil \ud800"}, grid={"vars.x\udc80": ["a"]})
    with pytest.raises(ConfigError) as caught:
        _run(isolated, sweep)
    assert "vars.style: holds \\ud800 at character 4" in str(caught.value)
    assert "grid: key: holds \\udc80 at character 6" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00k\x00e\x00y", "is not UTF-8 text"),
        (b"k" * 5000, "is over 4096 bytes"),
        (None, "is not a regular file"),  # a FIFO: was a hang
    ],
    ids=["not-utf8", "huge", "fifo"],
)
def test_a_bad_api_key_file_is_one_clear_line(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    import os

    key = tmp_path / "key.txt"
    if content is None:
        os.mkfifo(key)
    else:
        key.write_bytes(content)
    done = _cli(tmp_path, "pipeline.run", "sweep=seed_study", "api=runware", f"api.key_file={key}")
    _one_line_exit_1(done, f"api.key_file {key} {expected}")
    assert "\xff" not in done.stderr and "kkkk" not in done.stderr  # the content is never shown


def test_store_dir_under_a_file_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    done = _cli(tmp_path, "pipeline.run", "sweep=seed_study", "dry_run=true", "store.dir=plain/s")
    _one_line_exit_1(done, "store.dir: cannot use plain/s/emulator for the store: Not a directory")


def test_report_out_dir_under_a_file_is_one_clear_line(tmp_path: Path) -> None:
    first = run_cli(
        "run", "sweep=seed_study", "sweep.seeds.count=2", "hydra.run.dir=r", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    (tmp_path / "plain").write_text("x")
    done = _cli(tmp_path, "pipeline.report", "run_dir=r", "report.out_dir=plain/rep")
    _one_line_exit_1(
        done, "cannot write the report to plain/rep: Not a directory; set report.out_dir"
    )


def test_a_full_disk_while_writing_the_manifest_is_one_clear_line(tmp_path: Path) -> None:
    import resource
    import signal

    run = ["pipeline.run", "sweep=seed_study", "sweep.seeds.count=3", "hydra.run.dir=r"]
    assert _cli(tmp_path, *run).returncode == 0
    manifest_size = (tmp_path / "r" / "manifest.parquet").stat().st_size
    others = max(p.stat().st_size for p in (tmp_path / "r").glob("[!m]*") if p.is_file())
    assert others < manifest_size  # the limit below lets every file but the manifest be written
    for name in ("manifest.parquet", "manifest.csv"):
        (tmp_path / "r" / name).unlink()
    limit = (others + manifest_size) // 2

    def small_files() -> None:  # the file size limit stands in for a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = _cli(tmp_path, *run, preexec_fn=small_files)
    _one_line_exit_1(done, "cannot write the manifest in")
    assert "File too large; every result is kept in journal.jsonl" in done.stderr
    assert _cli(tmp_path, *run).returncode == 0  # space again: the same command finishes
    assert (tmp_path / "r" / "manifest.parquet").exists()


# ---------------------------------------------------------------- item 11: bad references


def _with_ref(image: str) -> dict[str, Any]:
    return _sweep(base={**BASE, "inputs": {"referenceImages": [{"image": image, "strength": 0.5}]}})


def _bad_file(folder: Path, kind: str) -> Path:
    import os

    path = folder / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("empty", "is empty (0 bytes)"),
        ("text", "is not an image (its bytes start like no PNG, JPEG, WEBP, GIF or BMP file)"),
        ("fifo", "is not a regular file (a FIFO)"),  # was a hang
        ("dev-zero", "is not a regular file (a character device)"),  # was a hang
        ("directory", "is not a regular file (a directory)"),
    ],
)
def test_a_local_reference_that_is_no_image_file_is_refused_before_anything_is_sent(
    isolated: Path, kind: str, expected: str
) -> None:
    path = _bad_file(isolated, kind)
    with pytest.raises(ConfigError) as caught:
        _run(isolated, _with_ref(path.name), dry_run=False)
    assert f"reference image '{path.name}' ({path}) {expected}" in str(caught.value)


def test_the_cli_refuses_a_fifo_reference_at_once(tmp_path: Path) -> None:
    path = _bad_file(tmp_path, "fifo")
    ref = f"+sweep.base.inputs={{referenceImages:[{{image:'{path}',strength:0.5}}]}}"
    done = _cli(tmp_path, "pipeline.run", "sweep=seed_study", ref)
    _one_line_exit_1(done, "is not a regular file (a FIFO)")


@pytest.mark.parametrize(
    "value",
    [
        "file:///etc/passwd",
        "file:///etc/passwd.png",
        "javascript:alert(1)",
        "ftp://example.com/a.jpg",
        "data:text/html,x",
    ],
)
def test_a_reference_that_is_no_image_input_is_never_sent(isolated: Path, value: str) -> None:
    from pipeline.emulator import Emulator
    from pipeline.errors import ValidationFailed

    with Emulator(0) as emu:
        with pytest.raises(ValidationFailed) as caught:
            _run(
                isolated,
                _with_ref(value),
                dry_run=False,
                **{"api.backend": "emulator", "api.base_url": emu.base_url},
            )
        assert emu.stats().get("posts", 0) == 0
    assert f"inputs.referenceImages[0].image: {value!r}" in str(caught.value)


def test_the_image_inputs_runware_takes_pass() -> None:
    import base64

    from pipeline.images import image_input_problem

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode()
    good = [
        "https://example.com/ref.jpg",
        "http://example.com/ref?x=1",
        "0b8d3f6e-6c2a-4e0f-9a43-5a0d2f1c7b11",
        f"data:image/png;base64,{png}",
        png,
    ]
    assert [image_input_problem(v) for v in good] == [None] * len(good)
    text = base64.b64encode(b"this is not an image at all....").decode()
    assert "not a PNG, JPEG" in str(image_input_problem(text))
    assert "not a PNG, JPEG" in str(image_input_problem(f"data:image/png;base64,{text}"))


def test_a_sample_from_a_huge_product_with_holes_is_refused_not_walked(isolated: Path) -> None:
    sweep = _sweep(
        base={**BASE, "positivePrompt": "{a} {b}"},
        grid={"vars.a": list(range(2000)), "vars.b": list(range(2000))},
        exclude=[{"vars.a": 5}],
        sample={"n": 10},
    )
    with pytest.raises(ConfigError, match="cannot be drawn without walking it"):
        _run(isolated, sweep)
    sweep = _sweep(seeds={"count": 10**12}, exclude=[{"seed": 5}], sample={"n": 10})
    with pytest.raises(ConfigError, match=r"excluding by seed needs seeds.count ≤ 2,000,000"):
        _run(isolated, sweep)


def test_a_sample_from_a_huge_product_without_holes_plans_at_once(isolated: Path) -> None:
    assert _run(isolated, _sweep(seeds={"count": 10**12}, sample={"n": 10})) == 0
