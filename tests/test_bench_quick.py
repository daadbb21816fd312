"""`python -m bench --quick` never touches the tracked bench/results.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as table_cmd


def test_quick_mode_writes_no_file_unless_asked(tmp_path: Path) -> None:
    assert table_cmd.output_path(None, quick=True) is None
    assert table_cmd.output_path(None, quick=False) == table_cmd.RESULTS
    assert table_cmd.output_path(tmp_path / "t.md", quick=True) == tmp_path / "t.md"


def test_a_quick_run_leaves_the_tracked_table_alone(capsys: pytest.CaptureFixture[str]) -> None:
    before = table_cmd.RESULTS.read_bytes()
    assert table_cmd.main(["--quick", "--only", "latency"]) == 0
    assert table_cmd.RESULTS.read_bytes() == before
    assert "| latency-bound" in capsys.readouterr().out  # the table is printed instead
