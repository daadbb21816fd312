"""The HTML report in headless Chromium: contact sheets decode, tables and plots show, offline."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report import XSS, make_row, make_run, sample_rows

from pipeline import report


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.browser,
    # Skipped on a machine without Chromium; never in CI, where .ci/run installs it.
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="chromium is not installed (apt-get install -y chromium)",
    ),
]

# After load: how wide each <img> decoded (0 = broken), how many tables and SVG plots there are.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images).filter(function (i) {
    return i.closest("figure");  // the contact sheets (explorer thumbnails load lazily)
  });
  document.body.setAttribute("data-img-widths",
    imgs.map(function (i) { return i.complete ? i.naturalWidth : -1; }).join(","));
  document.body.setAttribute("data-tables", document.querySelectorAll("table").length);
  document.body.setAttribute("data-svgs", document.querySelectorAll("svg").length);
  document.body.setAttribute("data-scripts", document.scripts.length);
});
</script>"""


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a local page (no network, throwaway profile)."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,2000",
        "--virtual-time-budget=10000",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def build_report(tmp_path: Path, embed_max_mb: float) -> Path:
    """A run with failures, a cell not run and a hostile prompt, and its report dir."""
    rows = [r for r in sample_rows() if r["cell_index"] != 4]
    rows.append(make_row(9, axes={"vars.style": XSS, "settings.creativity": "low"}, prompt=XSS))
    run = make_run(tmp_path / "run", rows)
    assert report.report_job({"run_dir": str(run), "report": {"embed_max_mb": embed_max_mb}}) == 0
    return run / "report"


def probe_page(out: Path) -> Path:
    """A copy of index.html, next to it, with the probe script added."""
    page = (out / "index.html").read_text()
    assert page.count("<script") == 2  # the explorer's data and viewer, nothing else
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    return probe


@pytest.mark.parametrize("embed_max_mb", [4.0, 0.0], ids=["data-uri", "linked-files"])
def test_sheets_decode_and_tables_show(tmp_path: Path, embed_max_mb: float) -> None:
    out = build_report(tmp_path, embed_max_mb)
    page = (out / "index.html").read_text()
    expected = [int(w) for w in re.findall(r'<img src="[^"]*" width="(\d+)"', page)]
    assert expected
    done = chromium(probe_page(out), tmp_path / "profile", "--dump-dom")
    dom = done.stdout
    assert done.returncode == 0 and "<body" in dom, done.stderr[-2000:]
    widths = re.search(r'data-img-widths="([^"]*)"', dom)
    assert widths, dom[-2000:]
    assert [int(w) for w in widths.group(1).split(",")] == expected  # every sheet decoded
    assert int(re.search(r'data-tables="(\d+)"', dom).group(1)) >= 6  # type: ignore[union-attr]
    assert int(re.search(r'data-svgs="(\d+)"', dom).group(1)) >= 3  # type: ignore[union-attr]
    assert re.search(r'data-scripts="3"', dom)  # explorer + probe: the XSS prompt stayed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    for heading in ("Totals", "Billed vs estimated", "By axis", "Contact sheets"):
        assert f">{heading}</h2>" in dom


def test_screenshot_shows_the_page(tmp_path: Path) -> None:
    out = build_report(tmp_path, 4.0)
    shot = tmp_path / "shot.png"
    done = chromium(out / "index.html", tmp_path / "profile", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 2000)
        colours = im.convert("RGB").resize((140, 200)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 20  # text, tables and plots, not a blank page
