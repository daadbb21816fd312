"""The report's explorer in a real browser: Playwright driving Debian's Chromium, from file://.

Every page is watched: a console error, an uncaught exception, a dialog (an XSS `alert`) or a
request outside the report folder fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report import LEVELS, STYLES, XSS, make_row, make_run, sample_rows, write_plan
from test_report_browser import CHROMIUM

from pipeline import report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="chromium is not installed (apt-get install -y chromium)",
    ),
]

if os.environ.get("CI"):  # CI installs the test extra: a missing Playwright is a failure there
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (Debian's binary; no Playwright download)."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Watched:
    """A page with its console errors, page errors, dialogs and requests recorded."""

    def __init__(self, browser: Any, folder: Path) -> None:
        self.folder = folder.resolve().as_uri() + "/"
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", self._dialog)
        self.page.route("**/*", self._route)

    def _dialog(self, dialog: Any) -> None:
        self.errors.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        if url.startswith((self.folder, "data:")):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def open(self, fragment: str = "") -> Any:
        """Load index.html with a view fragment; wait until the explorer has drawn."""
        self.page.goto(self.folder + "index.html" + fragment)
        self.page.wait_for_selector("#kx[data-ready]")
        return self.page

    def check(self) -> None:
        """No console error, no exception, no dialog, nothing fetched outside the folder."""
        assert self.errors == []
        assert self.outside == []
        assert self.requests  # the route saw the page's own files


@pytest.fixture
def watch(browser: Any) -> Iterator[Any]:
    """`watch(report_dir)` → a Watched page; checked and closed after the test."""
    made: list[Watched] = []

    def make(folder: Path) -> Watched:
        made.append(Watched(browser, folder))
        return made[-1]

    yield make
    for w in made:
        w.context.close()
    for w in made:
        w.check()


def build(tmp_path: Path, name: str = "run", rows: list[dict[str, Any]] | None = None) -> Path:
    """sample_rows (a failed, a cached and a 2-image cell) + a not-run cell + an XSS value."""
    rows = sample_rows() if rows is None else rows
    rows = [*rows, make_row(7, axes={"vars.style": XSS, "settings.creativity": "low"})]
    run = make_run(tmp_path / name, rows)
    write_plan(
        run,
        [
            {
                "cell_id": "neverran",
                "cell_index": 8,
                "vars.style": "film grain",
                "settings.creativity": "raw",
                "request_json": '{"width": 64, "height": 48}',
            }
        ],
    )
    return run


def report_of(*runs: Path, out: Path | None = None) -> Path:
    """Run the report job; its folder."""
    cfg: dict[str, Any] = {"run_dir": [str(r) for r in runs] if len(runs) > 1 else str(runs[0])}
    cfg["report"] = {"out_dir": str(out)} if out else {}
    assert report.report_job(cfg) == 0
    return out or runs[0] / "report"


def texts(page: Any, selector: str) -> list[str]:
    """The inner texts of every match."""
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def test_view_from_the_url_tiles_and_states(tmp_path: Path, watch: Any) -> None:
    w = watch(report_of(build(tmp_path)))
    page = w.open("#x=vars.style&y=settings.creativity")
    assert texts(page, ".kx-colhead") == [*STYLES, XSS]
    assert texts(page, ".kx-rowhead") == ["low", "medium", "high", "raw"]
    tiles = page.locator(".kx-tile")
    assert tiles.count() == 9  # 8 manifest rows (a cell of 2 images) + the cell that never ran
    assert page.locator(".kx-tile[data-cell-id='cell0002']").count() == 2
    assert page.locator(".kx-tile[data-cell-id='cell0002']").first.get_attribute("data-seed") == (
        "1002"
    )
    failed = page.locator(".kx-tile[data-status='failed']")
    assert failed.count() == 1 and "failed: timeout" in failed.inner_text()
    assert failed.get_attribute("data-cell-id") == "cell0005"
    never = page.locator(".kx-tile[data-status='not run']")
    assert never.count() == 1 and "not run" in never.inner_text()
    assert page.locator(".kx-tile[data-status='cached'] .kx-badge").inner_text() == "cached"
    absent = page.locator(".kx-absent")  # motion blur × raw, XSS × medium/high/raw: no cell
    assert absent.count() == 4 and set(texts(page, ".kx-absent")) == {"not in sweep"}
    label = page.locator(".kx-tile[data-cell-id='cell0000'] .kx-label").inner_text()
    assert label == "seed 1000"
    # every thumbnail decodes
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.kx-tile img')).every(i => i.complete)"
    )
    widths = page.eval_on_selector_all(".kx-tile img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) == 7 and all(wd > 0 for wd in widths)


def test_swap_hide_reorder_zoom_are_kept_in_the_url(tmp_path: Path, watch: Any) -> None:
    out = report_of(build(tmp_path))
    w = watch(out)
    page = w.open()
    assert texts(page, ".kx-rowhead")[:2] == STYLES  # defaults: first axis down, next across
    page.click("button[data-act=swap]")
    assert texts(page, ".kx-colhead")[:2] == STYLES
    assert page.evaluate("location.hash").startswith("#x=vars.style&y=settings.creativity")
    page.click(".kx-values summary")
    page.uncheck("input[data-axis='vars.style'][data-val='motion blur']")
    assert "motion blur" not in texts(page, ".kx-colhead")
    assert page.locator(".kx-tile").count() == 6
    assert "hide.vars.style=motion%20blur" in page.evaluate("location.hash")
    page.click("button[data-act=down][data-axis='settings.creativity'][data-pos='0']")
    assert texts(page, ".kx-rowhead") == ["medium", "low", "high", "raw"]
    page.locator("select[data-k=facet]").select_option("seed")
    assert page.locator(".kx-facet h3").count() == 5  # seeds 1000-1002, 1007, none (not run)
    page.locator("select[data-k=facet]").select_option("")
    page.locator("input[data-k=zoom]").fill("320")
    box = page.locator(".kx-tile").first.bounding_box()
    assert abs(box["width"] - 320) <= 2
    # the same fragment opened in another page gives the same view
    hash_ = page.evaluate("location.hash")
    assert "zoom=320" in hash_ and "order.settings.creativity=medium" in hash_
    again = watch(out).open(hash_)
    assert texts(again, ".kx-rowhead") == ["medium", "low", "high", "raw"]
    assert again.locator(".kx-tile").count() == 6
    assert abs(again.locator(".kx-tile").first.bounding_box()["width"] - 320) <= 2
    # an unknown axis in a shared link falls back to the defaults with a note, no error
    odd = watch(out).open("#x=nope&y=settings.creativity")
    assert "no axis nope in this report" in odd.locator(".kx-note").first.inner_text()


def test_click_a_tile_for_its_detail(tmp_path: Path, watch: Any) -> None:
    run = build(tmp_path)
    w = watch(report_of(run))
    page = w.open("#x=vars.style&y=settings.creativity")
    page.click(".kx-tile[data-cell-id='cell0001']")
    panel = page.locator(".kx-detail:not([hidden])")
    panel.wait_for()
    assert panel.locator(".kx-cell-id").inner_text() == "cell0001"
    assert panel.locator(".kx-seed").inner_text() == "1001"
    assert panel.locator(".kx-prompt").inner_text() == "a lighthouse"
    assert panel.locator(".kx-billed").inner_text() == "$0.066"
    assert panel.locator(".kx-estimated").inner_text() == "$0.065"
    assert panel.locator(".kx-latency").inner_text() == "0.87 s"
    assert panel.locator(".kx-attempts").inner_text() == "1"
    assert panel.locator(".kx-reproduce").inner_text() == (
        f"krea-reproduce run_dir={run} 'select=[cell0001]'"
    )
    assert '"positivePrompt": "a lighthouse"' in panel.locator(".kx-request").inner_text()
    full = panel.locator("img.kx-full")
    full.wait_for()
    page.wait_for_function("document.querySelector('img.kx-full').naturalWidth > 0")
    assert full.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [64, 48]
    assert "cell=cell0001" in page.evaluate("location.hash")
    page.keyboard.press("ArrowRight")  # the next tile of the grid, row by row: motion blur × medium
    page.locator(".kx-detail[data-cell-id='cell0004']").wait_for()
    page.keyboard.press("ArrowLeft")
    page.locator(".kx-detail[data-cell-id='cell0001']").wait_for()
    page.keyboard.press("Escape")
    assert page.locator(".kx-detail").is_hidden()
    assert "cell=" not in page.evaluate("location.hash")
    # a failed cell: its error; a link with cell= opens the panel directly
    page = watch(report_of(run)).open("#x=vars.style&y=settings.creativity&cell=cell0005")
    page.locator(".kx-detail:not([hidden])").wait_for()
    assert page.locator(".kx-error").inner_text() == "timeout: read timed out after 30 s"
    assert page.locator(".kx-billed").inner_text() == "—"
    page.click(".kx-tile[data-cell-id='neverran']")
    page.locator(".kx-detail[data-cell-id='neverran']").wait_for()
    assert page.locator(".kx-status").inner_text() == "not run"
    assert "not run yet" in page.locator(".kx-detail").inner_text()
    assert page.locator(".kx-detail .kx-reproduce").count() == 0


def test_overlay_colours_tiles_by_cost_latency_failure(tmp_path: Path, watch: Any) -> None:
    w = watch(report_of(build(tmp_path)))
    page = w.open("#x=vars.style&y=settings.creativity&overlay=latency")
    overlays = page.locator(".kx-ov")
    assert overlays.count() == 7  # every tile with a latency (cached and not run have none)
    colours = set(page.eval_on_selector_all(".kx-ov", "els => els.map(e => e.style.background)"))
    assert len(colours) >= 4  # different latencies, different colours
    page.locator("select[data-k=overlay]").select_option("failed")
    failed = page.locator(".kx-tile[data-status='failed'] .kx-ov")
    ok = page.locator(".kx-tile[data-cell-id='cell0001'] .kx-ov")
    assert failed.inner_text() == "failed" and ok.inner_text() == "ok"
    assert failed.evaluate("e => e.style.background") != ok.evaluate("e => e.style.background")
    page.locator("select[data-k=overlay]").select_option("cost")
    assert "overlay=cost" in page.evaluate("location.hash")
    assert "billed cost" in page.locator(".kx-scale").inner_text()


def test_compare_two_runs_side_by_side_and_with_a_slider(tmp_path: Path, watch: Any) -> None:
    a = build(tmp_path, "a")
    rows_b = [r for r in sample_rows() if r["cell_index"] != 3]  # motion blur/low only in a
    rows_b.append(make_row(12, axes={"vars.style": "tilt-shift", "settings.creativity": "low"}))
    b = make_run(tmp_path / "b", rows_b)
    out = report_of(a, b, out=tmp_path / "cmp")
    w = watch(out)
    page = w.open("#x=vars.style&y=settings.creativity")
    side = page.locator(".kx-tile.kx-side")
    assert side.count() == page.locator(".kx-tile").count() == 10  # the union, by cell_id
    assert page.locator(".kx-tile[data-cell-id='cell0001'] .kx-part img").count() == 2
    only_a = page.locator(".kx-tile[data-cell-id='cell0003']")
    assert only_a.get_attribute("data-only") == "a" and "only a" in only_a.inner_text()
    assert "not in this run" in only_a.inner_text()
    assert page.locator(".kx-tile[data-cell-id='cell0012']").get_attribute("data-only") == "b"
    assert page.locator(".kx-only").count() == 4  # cell0003, XSS, not-run (a) · cell0012 (b)
    page.locator("select[data-k=cmp]").select_option("slider")
    assert page.locator(".kx-tile.kx-slider").count() == 10
    page.locator("input[data-k=split]").fill("30")
    over = page.locator(".kx-tile[data-cell-id='cell0001'] .kx-over")
    assert over.evaluate("e => getComputedStyle(e).clipPath") == "inset(0px 70% 0px 0px)"
    page.locator("select[data-k=cmp]").select_option("b")
    assert page.locator(".kx-tile").count() == 7  # b's own tiles
    page.locator("select[data-k=cmp]").select_option("side")
    page.click(".kx-tile[data-cell-id='cell0001']")
    panel = page.locator(".kx-detail:not([hidden])")
    panel.wait_for()
    assert texts(page, ".kx-detail h4") == ["run a", "run b"]
    assert page.locator(".kx-detail .kx-dslider img").count() == 2
    assert texts(page, ".kx-detail .kx-reproduce") == [
        f"krea-reproduce run_dir={a} 'select=[cell0001]'",
        f"krea-reproduce run_dir={b} 'select=[cell0001]'",
    ]


def test_screenshot_of_the_explorer(tmp_path: Path, watch: Any) -> None:
    w = watch(report_of(build(tmp_path)))
    page = w.open("#x=settings.creativity&y=vars.style&overlay=latency&zoom=200")
    page.evaluate("document.getElementById('explorer').scrollIntoView()")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.kx-tile img')).every(i => i.complete)"
    )
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot))
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").resize((140, 100)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # tiles, labels and colours, not a blank
    assert LEVELS[0] in texts(page, ".kx-colhead")


def test_a_crowded_cell_shows_its_first_tiles_and_a_more_button(tmp_path: Path, watch: Any) -> None:
    axes = {"vars.style": "one", "settings.creativity": "low"}
    rows = [make_row(i, axes=axes) for i in range(60)]
    w = watch(report_of(make_run(tmp_path / "run", rows)))
    page = w.open("#x=vars.style&y=settings.creativity")
    assert page.locator(".kx-tile").count() == 48
    assert page.locator(".kx-more").inner_text() == "+12 more"
    assert "12 more behind" in page.locator(".kx-count").inner_text()
    page.click(".kx-more")
    assert page.locator(".kx-tile").count() == 60 and page.locator(".kx-more").count() == 0
    seeds = page.eval_on_selector_all(".kx-tile", "els => els.map(e => e.dataset.seed)")
    assert seeds == [str(1000 + i) for i in range(60)]  # in cell order, every seed once


def test_a_tall_row_has_its_label_at_its_top(tmp_path: Path, watch: Any) -> None:
    # Walk-through: a sampled sweep's rows were ~1,200 px tall and their labels sat mid-row, so
    # the first screenful of the grid showed tiles with no row label at all.
    low, high = ({"vars.style": "one", "settings.creativity": c} for c in ("low", "high"))
    rows = [make_row(i, axes=low) for i in range(40)] + [make_row(40, axes=high)]
    w = watch(report_of(make_run(tmp_path / "run", rows)))
    page = w.open("#x=vars.style&y=settings.creativity")
    head = page.locator(".kx-rowhead", has_text="low").bounding_box()
    cell = page.locator(".kx-cell").first.bounding_box()
    assert cell["height"] > 4 * head["height"] + 200  # a tall row: its tiles wrap
    assert abs(head["y"] - cell["y"]) < 24, (head, cell)
