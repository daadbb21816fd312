"""Contact sheets: what goes where (labels, facets, filter), sizes, and pixels of blank cells."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_report import (
    AXES,
    COLORS,
    LEVELS,
    STYLES,
    make_row,
    make_run,
    png_bytes,
    sample_rows,
    write_plan,
)

from pipeline import charts, sheets
from pipeline.config import ReportOptions
from pipeline.errors import ConfigError
from pipeline.reporting.data import ReportData, load
from pipeline.reporting.sheetfiles import sheet_frame
from pipeline.reporting.text import money

THUMB_PX = ReportOptions().thumb_px  # the typed config's default: the only one


def frame_of(run: Path | Sequence[Path]) -> tuple[pd.DataFrame, list[str], ReportData]:
    """The rows a report draws (manifest + not-run cells) and the swept axes."""
    data = load([run] if isinstance(run, Path) else list(run))
    return sheet_frame(data), data.axes, data


def one_sheet(run: Path, **options: Any) -> sheets.SheetLayout:
    """The only sheet of a run."""
    frame, axes, _ = frame_of(run)
    options.setdefault("thumb_px", THUMB_PX)
    layouts, skipped = sheets.contact_sheets(frame, axes, sheets.SheetOptions(**options))
    assert len(layouts) == 1 and skipped == 0
    return layouts[0]


def texts(layout: sheets.SheetLayout, role: str) -> list[str]:
    """The full texts of one role."""
    return [t.text for t in layout.texts_of(role)]


def corners(box: sheets.Box, inset: int = 3) -> list[tuple[int, int]]:
    """Four points just inside a box's corners (clear of borders and centred text)."""
    return [
        (box.left + inset, box.top + inset),
        (box.right - 1 - inset, box.top + inset),
        (box.left + inset, box.bottom - 1 - inset),
        (box.right - 1 - inset, box.bottom - 1 - inset),
    ]


# --- layout ------------------------------------------------------------------------------------


def test_axis_names_and_values_on_the_margins(tmp_path: Path) -> None:
    layout = one_sheet(make_run(tmp_path / "run"), thumb_px=96)
    assert texts(layout, "row") == STYLES
    assert texts(layout, "col") == LEVELS
    assert texts(layout, "axis") == ["settings.creativity", "vars.style"]
    assert (layout.spec.row_axis, layout.spec.col_axis) == ("vars.style", "settings.creativity")
    canvas = sheets.Box(0, 0, layout.width, layout.height)
    rows, cols = layout.texts_of("row"), layout.texts_of("col")
    for t in layout.texts:
        assert canvas.contains(t.box), t
    grid = [s.box for s in layout.slots]
    for label in [*rows, *cols, *layout.texts_of("axis"), *layout.texts_of("title")]:
        assert not any(label.box.overlaps(b) for b in grid), label.text
    for i, label in enumerate(rows):  # row labels sit left of their row, level with it
        slot = layout.slot(i, 0).box
        assert label.box.right <= slot.left and label.box.top == slot.top
    for j, label in enumerate(cols):  # column labels sit above their column
        slot = layout.slot(0, j).box
        assert label.box.bottom <= slot.top and label.box.left == slot.left
    labels = [*rows, *cols, *layout.texts_of("axis"), *layout.texts_of("title")]
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            assert not labels[a].box.overlaps(labels[b].box), (labels[a].text, labels[b].text)


def test_failed_cell_is_a_labelled_blank(tmp_path: Path) -> None:
    layout = one_sheet(make_run(tmp_path / "run"), thumb_px=96)
    slot = layout.slot(STYLES.index("motion blur"), LEVELS.index("high"))
    assert slot.state == "failed"
    words = [t for t in layout.texts_of("cell") if slot.box.contains(t.box)]
    assert [t.text for t in words] == ["failed: timeout"]
    image = sheets.render(layout)
    for point in corners(slot.box):
        assert image.getpixel(point) == sheets.FAILED_BG
    ok = layout.slot(0, 1)  # film grain / medium: a solid-colour image
    assert ok.state == "ok"
    center = ((ok.box.left + ok.box.right) // 2, (ok.box.top + ok.box.bottom) // 2)
    assert image.getpixel(center) in COLORS


def test_a_position_no_cell_has_is_marked_not_in_sweep(tmp_path: Path) -> None:
    rows = [r for r in sample_rows() if r["cell_index"] != 4]  # motion blur / medium: no cell
    run = make_run(tmp_path / "run", rows)
    layout = one_sheet(run, thumb_px=96)
    slot = layout.slot(1, 1)
    assert slot.state == sheets.ABSENT
    texts = [t.text for t in layout.texts_of("cell") if slot.box.contains(t.box)]
    assert texts == [sheets.ABSENT]
    image = sheets.render(layout)
    assert all(image.getpixel(p) == sheets.STATE_FILL[sheets.ABSENT] for p in corners(slot.box))


def test_planned_cells_of_a_crashed_run_are_not_run(tmp_path: Path) -> None:
    rows = sample_rows()
    run = make_run(tmp_path / "run", rows[:2], manifest_file=False)
    write_plan(
        run,
        [
            {
                "cell_id": "later",
                "cell_index": 9,
                "vars.style": "tilt-shift",
                "settings.creativity": "low",
                "request_json": '{"width": 64, "height": 48}',
            },
        ],
    )
    layout = one_sheet(run, thumb_px=64)
    assert texts(layout, "row") == ["film grain", "tilt-shift"]
    assert layout.slot(1, 0).state == "not run"


def test_several_images_in_one_cell(tmp_path: Path) -> None:
    ax = {"vars.style": "a", "settings.creativity": "low"}
    rows = [make_row(0, r, axes=ax, n=6, task="t") for r in range(6)]
    rows += [
        make_row(1, 0, axes={**ax, "settings.creativity": "high"}, n=2, task="u"),
        make_row(
            1,
            1,
            status="failed",
            axes={**ax, "settings.creativity": "high"},
            n=2,
            task="u",
            code="missingResults",
        ),
    ]
    layout = one_sheet(make_run(tmp_path / "run", rows), thumb_px=128)
    six = layout.slot(0, 0)
    assert six.cell.total == 6 and len(six.cell.images) == 6
    assert len(sheets.tile_boxes(six.box, 6)) == 4
    assert any(t.text == "+2 more" and six.box.contains(t.box) for t in layout.texts_of("badge"))
    partial = layout.slot(0, 1)
    assert partial.state == "partial"
    assert any(t.text == "1 failed" and partial.box.contains(t.box) for t in layout.texts)
    sheets.render(layout)


def test_missing_image_file(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    for p in (run / "images").glob("cell0001-*"):
        p.unlink()
    layout = one_sheet(run, thumb_px=64)
    assert layout.slot(0, 1).state == "missing"
    assert "image missing" in texts(layout, "cell")


def test_facets_make_one_sheet_each(tmp_path: Path) -> None:
    rows = []
    for i, (style, level, size) in enumerate(
        (s, lv, z) for z in (512, 1024) for s in STYLES for lv in LEVELS
    ):
        rows.append(
            make_row(i, axes={"vars.style": style, "settings.creativity": level, "size": size})
        )
    run = make_run(tmp_path / "run", rows, [*AXES, "size"])
    frame, axes, _ = frame_of(run)
    layouts, _ = sheets.contact_sheets(frame, axes, sheets.SheetOptions(thumb_px=64))
    assert [lay.spec.facet for lay in layouts] == [(("size", "512"),), (("size", "1024"),)]
    assert [lay.spec.title for lay in layouts] == ["size = 512", "size = 1024"]
    assert texts(layouts[0], "title") == ["size = 512"]
    # rows/cols chosen by the user; the third axis becomes the facet
    layouts, _ = sheets.contact_sheets(
        frame, axes, sheets.SheetOptions(rows="size", cols="vars.style", thumb_px=64)
    )
    assert len(layouts) == 3 and texts(layouts[0], "row") == ["512", "1024"]
    assert layouts[0].spec.facet == (("settings.creativity", "low"),)


def test_filter_limits_the_sheets(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    layout = one_sheet(run, query="`vars.style` == 'film grain' and status != 'failed'")
    assert texts(layout, "row") == ["film grain"]
    frame, axes, _ = frame_of(run)
    empty, _ = sheets.contact_sheets(
        frame, axes, sheets.SheetOptions(query="cell_index > 99", thumb_px=THUMB_PX)
    )
    assert empty == []
    with pytest.raises(ConfigError, match=r"report\.filter"):
        sheets.contact_sheets(
            frame, axes, sheets.SheetOptions(query="nope ==== 1", thumb_px=THUMB_PX)
        )


def test_defaults_with_one_axis_and_with_none(tmp_path: Path) -> None:
    rows = [make_row(i, axes={"vars.style": s}) for i, s in enumerate(["a", "b", "c"])]
    layout = one_sheet(make_run(tmp_path / "one", rows, ["vars.style"]), thumb_px=64)
    assert len(layout.spec.row_labels) == 1 and texts(layout, "col") == ["a", "b", "c"]
    assert texts(layout, "row") == []
    rows = [make_row(i) for i in range(5)]
    layout = one_sheet(make_run(tmp_path / "none", rows, []), thumb_px=64)
    assert texts(layout, "row") == ["0", "3"] and texts(layout, "col") == ["+0", "+1", "+2"]
    assert [s.state for s in layout.slots].count("ok") == 5
    assert layout.slot(1, 2).state == sheets.ABSENT


def test_bad_axis_choices(tmp_path: Path) -> None:
    frame, axes, _ = frame_of(make_run(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"report\.rows='nope'"):
        sheets.contact_sheets(frame, axes, sheets.SheetOptions(rows="nope", thumb_px=THUMB_PX))
    with pytest.raises(ConfigError, match="both"):
        sheets.contact_sheets(
            frame,
            axes,
            sheets.SheetOptions(rows="vars.style", cols="vars.style", thumb_px=THUMB_PX),
        )
    layouts, _ = sheets.contact_sheets(frame, axes, sheets.SheetOptions(rows="seed", thumb_px=64))
    assert layouts[0].spec.row_axis == "seed"


def test_compared_runs_are_facets(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    frame, axes, _ = frame_of([a, b])
    options = sheets.SheetOptions(thumb_px=64, compare=True)
    layouts, _ = sheets.contact_sheets(frame, axes, options)
    assert [lay.spec.facet for lay in layouts] == [(("run", "a"),), (("run", "b"),)]
    image = sheets.render(layouts[1])  # images resolve against each run's own folder
    slot = layouts[1].slot(0, 1)
    assert image.getpixel(((slot.box.left + slot.box.right) // 2, slot.box.top + 30)) in COLORS


def test_wide_grids_shrink_then_split(tmp_path: Path) -> None:
    rows = [make_row(i, axes={"vars.style": f"prompt number {i}"}) for i in range(40)]
    run = make_run(tmp_path / "run", rows, ["vars.style"])
    frame, axes, _ = frame_of(run)
    options = sheets.SheetOptions(thumb_px=256, min_thumb_px=96, max_px=2000)
    layouts, skipped = sheets.contact_sheets(frame, axes, options)
    assert len(layouts) > 1 and skipped == 0
    assert all(lay.width <= 2000 and lay.height <= 2000 for lay in layouts)
    assert all(lay.thumb_px == 96 for lay in layouts)
    seen = [label for lay in layouts for label in texts(lay, "col")]
    assert seen == [f"prompt number {i}" for i in range(40)]
    assert layouts[0].spec.part == (1, len(layouts))
    assert "(part 1 of" in layouts[0].texts_of("title")[0].lines[-1]
    # a moderately wide grid only shrinks
    few = sheets.contact_sheets(frame[frame["cell_index"] < 12], axes, options)[0]
    assert len(few) == 1 and 96 <= few[0].thumb_px < 256 and few[0].width <= 2000
    capped, skipped = sheets.contact_sheets(
        frame, axes, sheets.SheetOptions(max_px=2000, max_sheets=1, thumb_px=THUMB_PX)
    )
    assert len(capped) == 1 and skipped == len(layouts) - 1


def test_landscape_images_get_landscape_cells(tmp_path: Path) -> None:
    rows = [make_row(i, axes={"vars.style": s}, width=96, height=48) for i, s in enumerate("ab")]
    layout = one_sheet(make_run(tmp_path / "run", rows, ["vars.style"]), thumb_px=100)
    box = layout.slot(0, 0).box
    assert (box.width, box.height) == (100, 50)


def test_long_labels_are_wrapped_and_cut(tmp_path: Path) -> None:
    long = "a very long prompt " * 30
    rows = [
        make_row(i, axes={"vars.style": s, "settings.creativity": "low"})
        for i, s in enumerate([long, "short"])
    ]
    rows.append(make_row(2, axes={"vars.style": "short", "settings.creativity": long}))
    layout = one_sheet(make_run(tmp_path / "run", rows), thumb_px=96)
    for t in layout.texts:
        if t.role in ("row", "col"):
            assert all(sheets.text_width(line, t.size) <= max(t.box.width, 1) for line in t.lines)
    row = next(t for t in layout.texts_of("row") if t.text == long)
    assert len(row.lines) > 1 and row.lines[-1].endswith("…")
    col = next(t for t in layout.texts_of("col") if t.text == long)
    assert len(col.lines) <= 3 and col.lines[-1].endswith("…")


def test_wrap() -> None:
    assert sheets.wrap("short", 12, 200, 3) == ["short"]
    lines = sheets.wrap("x" * 200, 12, 60, 2)
    assert len(lines) == 1 and "…" in lines[0]  # one word: cut in its middle, never split
    assert all(sheets.text_width(line, 12) <= 60 for line in lines)
    assert sheets.wrap("", 12, 50, 2) == [""]


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (-1.0, "-1.0"),
        (0.7, "0.7"),
        (3, "3"),
        (None, "(none)"),
        (float("nan"), "(none)"),
        (pd.NA, "(none)"),
        (True, "true"),
        ("film grain", "film grain"),
    ],
)
def test_value_labels(value: Any, label: str) -> None:
    assert sheets.value_label(value) == label


REF_SETS = [
    '[{"image":"refs/palette.png"}]',
    '[{"image":"refs/gradient.png"}]',
    '[{"image":"refs/palette.png"},{"image":"refs/gradient.png","strength":0.5}]',
]


@pytest.mark.parametrize("width", [40, 60, 90, 120, 200])
def test_wrap_never_breaks_inside_a_word(width: int) -> None:
    text = "a portrait of an old fisherman " + REF_SETS[2] + " by a window, softdaylightforever"
    words = set(text.split())
    for lines in (sheets.wrap(text, 12, width, 9), sheets.wrap(text, 12, width, 2)):
        for line in lines:
            assert sheets.text_width(line, 12) <= max(width, sheets.text_width("W…", 12))
            for token in line.split(" "):
                assert token in words or "…" in token, (token, lines)


def test_list_valued_axis_gets_short_labels_and_a_legend(tmp_path: Path) -> None:
    # Observed: list-valued axes showed raw JSON broken mid-word.
    axis = "inputs.referenceImages"
    rows = [
        make_row(i, axes={axis: ref, "settings.creativity": level})
        for i, (ref, level) in enumerate((r, lv) for r in REF_SETS for lv in ("low", "high"))
    ]
    layout = one_sheet(make_run(tmp_path / "run", rows, [axis, "settings.creativity"]), thumb_px=96)
    assert texts(layout, "row") == ["#1", "#2", "#3"]
    legend = layout.texts_of("legend")
    assert [t.text for t in legend] == [
        f"{axis} #1 = image: refs/palette.png",
        f"{axis} #2 = image: refs/gradient.png",
        f"{axis} #3 = image: refs/palette.png; image: refs/gradient.png, strength: 0.5",
    ]
    canvas = sheets.Box(0, 0, layout.width, layout.height)
    grid_bottom = max(slot.box.bottom for slot in layout.slots)
    for t in legend:
        assert canvas.contains(t.box) and t.box.top > grid_bottom
        assert "".join(t.lines).replace(" ", "") == t.text.split(" ", 1)[1].replace(" ", "")
    sheets.render(layout)


def test_sampled_sweep_defaults_are_not_one_image_facets(tmp_path: Path) -> None:
    # Observed: a sampled sweep's defaults gave 124 one-image facets.

    rng = random.Random(7)
    axes = ["vars.subject", "settings.creativity", "strength", "vars.style"]
    rows = []
    for i in range(120):
        values = {
            "vars.subject": f"subject {rng.randrange(1000)}",
            "settings.creativity": rng.choice(["raw", "low", "medium", "high"]),
            "strength": rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0]),
            "vars.style": rng.choice(["oil", "ink", "film", "clay", "pixel"]),
        }
        rows.append(make_row(i, axes=values))
    frame, names, _ = frame_of(make_run(tmp_path / "run", rows, axes, images=False))
    rows_axis, cols_axis, facets = sheets.choose_axes(frame, names)
    assert (rows_axis, cols_axis, facets) == ("settings.creativity", "strength", [])
    layouts, skipped = sheets.contact_sheets(frame, names, sheets.SheetOptions(thumb_px=64))
    assert len(layouts) == 1 and skipped == 0
    assert sum(s.cell.total for s in layouts[0].slots) == 120
    # a full grid keeps its facets
    grid = [
        make_row(i, axes={"a": a, "b": b, "c": c})
        for i, (a, b, c) in enumerate((a, b, c) for a in "xy" for b in "pq" for c in "mn")
    ]
    frame, names, _ = frame_of(make_run(tmp_path / "grid", grid, ["a", "b", "c"], images=False))
    assert sheets.choose_axes(frame, names) == ("a", "b", ["c"])


@pytest.mark.parametrize(
    ("lo", "hi"), [(0, 2.21), (0, 1.82), (0, 0.43), (-3.7, 0.0001), (0, 34), (0.2, 0.2), (5, 95.5)]
)
def test_nice_ticks_cover_the_data(lo: float, hi: float) -> None:
    ticks = charts.nice_ticks(lo, hi, 4)
    assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) <= 7
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1


def test_cumulative_cost_chart_reaches_the_total() -> None:
    # Observed: the cumulative-cost chart stopped at $1.82 for a $2.21 run (34 × $0.065).

    xs = [0.0125 * (i + 1) for i in range(34)]  # the last image at 0.425 s
    ys = [round(0.065 * (i + 1), 9) for i in range(34)]
    svg = charts.line_chart(
        [charts.Series("billed", xs, ys)],
        title="cumulative billed cost over time",
        x_label="seconds",
        y_label="USD",
        fmt_y=lambda v: money(v, 2),
    )
    left, top, width, height, bottom = 64, 40, 640, 280, 42
    right_edge, base = width - 16, height - bottom
    path = re.search(r'<path d="([^"]+)"', svg)
    assert path
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", path.group(1))]
    assert all(left - 0.05 <= x <= right_edge + 0.05 for x in nums[0::2][:1])
    coords = re.findall(r"([HV])(-?\d+(?:\.\d+)?)", path.group(1))
    hs = [float(v) for k, v in coords if k == "H"]
    vs = [float(v) for k, v in coords if k == "V"]
    assert max(hs) <= right_edge + 0.05 and min(vs) >= top - 0.05 and max(vs) <= base + 0.05
    labels = [float(v.replace(",", "")) for v in re.findall(r">\$([\d.,]+)<", svg)]
    assert max(labels) >= 2.21


def test_sheets_draw_previews_when_given(tmp_path: Path) -> None:
    layout = one_sheet(make_run(tmp_path / "run"), thumb_px=96)
    ok = layout.slot(0, 1)
    (path,) = ok.cell.images
    preview = tmp_path / "preview.png"
    preview.write_bytes(png_bytes((1, 2, 250), (64, 48)))
    center = ((ok.box.left + ok.box.right) // 2, (ok.box.top + ok.box.bottom) // 2)
    assert sheets.render(layout, {path: preview}).getpixel(center) == (1, 2, 250)
    gone = {path: tmp_path / "missing.jpg"}  # an unreadable preview: the image itself is drawn
    assert sheets.render(layout, gone).getpixel(center) in COLORS
    assert sheets.render(layout).getpixel(center) in COLORS
