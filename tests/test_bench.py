"""Smoke tests of the benchmarks: each module runs at a tiny size in a child and emits a RESULT."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as table_cmd
from bench.common import child


def test_plan_benchmark_runs() -> None:
    result = child("plan", "--sweep", "demo", "--no-parquet", timeout=120)
    assert result["cells"] > 0 and result["wall_s"] >= 0


def test_latency_benchmark_runs() -> None:
    result = child(
        "latency", "--images", "8", "--latency", "0.2", "--concurrency", "4", timeout=120
    )
    assert result["images"] == 8 and result["ideal_s"] == pytest.approx(0.4)
    assert 0 < result["efficiency"] <= 1.0


def test_polling_benchmark_runs() -> None:
    args = ("--images", "6", "--latency", "0.2", "--concurrency", "3", "--sigma", "0.3")
    result = child("polling", *args, timeout=300)
    assert [(r["sigma"], r["concurrency"]) for r in result["rows"]] == [(0.0, 3), (0.3, 3)]
    for row in result["rows"]:
        for who in ("runner", "sdk"):
            assert row[who]["billed"] == 6 and 0 < row[who]["efficiency"] <= 1.0
            assert row[who]["polls_per_image"] >= 1.0
    assert len(table_cmd.polling_rows(result, True)) == 2


def test_rerun_benchmark_sends_nothing() -> None:
    result = child("rerun", "--cells", "20", "--concurrency", "4", timeout=180)
    assert result["rerun_images"] == 20 and result["setup_billed"] == 20
    assert result["zero_requests"] is True
    assert result["new_charges"] == 0 and result["rerun2_posts"] == 0


def test_runner_benchmark_runs_every_contender() -> None:
    args = ("--images", "8", "--concurrency", "4", "--repeats", "1", "--sdk-images", "4")
    result = child("runner", *args, timeout=300)
    assert set(result["images_per_s"]) == {
        "runner-async",
        "requests-async",
        "runner-sync",
        "requests-sync",
        "sdk-sync",
        "sdk",
    }
    assert all(rate > 0 for rate in result["images_per_s"].values())
    assert result["sdk_delivery"] == "async (SDK default)"
    rows = table_cmd.runner_rows(result, True)
    assert len(rows) == 4 and all(len(row) == 4 for row in rows)


def test_baseline_requests_loop_runs() -> None:
    from bench.common import emulator_process

    for delivery in ("async", "sync"):
        with emulator_process(0.0) as url:
            args = ("--url", url, "--kind", "requests", "--delivery", delivery, "--images", "6")
            result = child("baseline", *args, timeout=120)
        assert result["images"] == 6 and result["images_per_s"] > 0


def test_baseline_loop_waits_the_first_poll_like_the_runner() -> None:
    """The loop follows the runner's rule: no first poll sooner than first_poll_s before a
    completion is seen (bench/README.md), so at zero latency 4 images at C=4 take ≥ 0.6 s."""
    from bench.common import emulator_process

    with emulator_process(0.0) as url:
        args = ("--url", url, "--kind", "requests", "--images", "4", "--concurrency", "4")
        result = child("baseline", *args, "--first-poll-s", "0.6", timeout=120)
    assert result["images"] == 4 and result["wall_s"] >= 0.6


def test_table_command_quick_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    code = table_cmd.main(["--quick", "--only", "latency", "--out", str(out)])
    text = out.read_text()
    assert code == 0
    assert text.startswith("| benchmark | figure | target | ratio/ok |")
    assert "latency-bound" in text and "Machine: " in text and "Quick run" in text


def test_missing_benchmarks_are_rows_not_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table_cmd, "REPO", tmp_path)
    rows, _ = table_cmd.run_one("shards", quick=True)
    assert rows == [("shards", "not available", "—", "—")]


def test_other_benchmark_results_become_rows() -> None:
    rows = table_cmd.other_rows("report")
    assert rows({"figure": "1.2 s", "target": "≤ 5 s", "ok": True}, False) == [
        ("report", "1.2 s", "≤ 5 s", "ok")
    ]
    assert rows({"wall_s": 1.5}, False) == [("report", "wall_s=1.5", "—", "info")]
