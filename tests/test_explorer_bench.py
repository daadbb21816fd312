"""bench.explorer at a small size: it runs, its figures become a row, and the page stays clean."""

from __future__ import annotations

import os

import pytest
from test_report_browser import CHROMIUM

from bench import __main__ as table_cmd
from bench.common import child

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # ~6-12 s: a child process, 60 JPEGs, Chromium
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="chromium is not installed (apt-get install -y chromium)",
    ),
]


def test_explorer_benchmark_runs() -> None:
    result = child("explorer", "--images", "60", timeout=600)
    (size,) = result["sizes"]
    assert size["images"] == 60 and size["tiles"] == 60
    assert size["thumbs"] == size["files"] > 50  # one thumbnail per image file, ~3% failed
    assert size["console_errors"] == 0 and size["outside_requests"] == 0
    assert size["rerun_s"] > 0 and size["page_ready_ms"] > 0
    (row,) = table_cmd.explorer_rows(result, quick=True)
    assert row[0] == "report + explorer: 60 images" and "console errors" in row[1]
