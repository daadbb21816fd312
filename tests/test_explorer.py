"""The explorer's data (axes, tiles, defaults), its thumbnails (parallel, reused) and its files."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from test_report import AXES, make_row, make_run, sample_rows, write_plan

from pipeline import explorer, report
from pipeline.errors import ConfigError
from pipeline.reporting.options import parse_options


def data_of(out: Path) -> dict[str, Any]:
    """window.KREA_EXPLORER as written."""
    text = (out / explorer.DATA_NAME).read_text()
    assert text.startswith("window.KREA_EXPLORER=") and text.endswith(";\n")
    value: dict[str, Any] = json.loads(text[len("window.KREA_EXPLORER=") : -2])
    return value


def details_of(out: Path) -> list[dict[str, Any]]:
    """Every detail record, in tile order."""
    rows: list[dict[str, Any]] = []
    for path in sorted((out / explorer.DETAIL_DIR).glob("detail-*.js")):
        text = path.read_text()
        rows += json.loads(text[text.index("]=") + 2 : -2])
    return rows


def run_report(run: Path, **options: Any) -> Path:
    """krea-report on one run dir; its report folder."""
    assert report.report_job({"run_dir": str(run), "report": options}) == 0
    return run / "report"


def test_tiles_axes_and_states(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    write_plan(run, [{"cell_id": "later", "cell_index": 9, "vars.style": "film grain",
                      "settings.creativity": "raw", "request_json": "{}"}])  # fmt: skip
    out = run_report(run)
    data = data_of(out)
    names = [a["name"] for a in data["axes"]]
    assert names == [*AXES, "seed", "image"]  # seeds are an axis; so are a cell's images
    axes = {a["name"]: a for a in data["axes"]}
    assert axes["settings.creativity"]["values"] == ["low", "medium", "high", "raw"]
    tiles = data["tiles"]
    assert len(tiles["cell"]) == 8  # 7 manifest rows + the planned cell that never ran
    status = dict(zip(tiles["cell"], tiles["status"], strict=False))
    assert status["cell0005"] == explorer.STATUS_CODES["failed"]
    assert status["cell0000"] == explorer.STATUS_CODES["cached"]
    assert status["later"] == explorer.STATUS_CODES["not run"]
    k = tiles["cell"].index("cell0001")
    assert tiles["seed"][k] == "1001" and tiles["cost"][k] == 0.066
    assert tiles["estimate"][k] == 0.065 and tiles["attempts"][k] == 1
    assert tiles["latency"][k] == 0.87
    failed = tiles["cell"].index("cell0005")
    assert tiles["thumb"][failed] is None and tiles["error"][failed] == "timeout"
    for rel in [t for t in tiles["thumb"] + tiles["full"] if t]:
        path = (out / rel).resolve()
        assert path.is_file() and out.resolve() in path.parents  # all inside the report folder
    assert sum(t is not None for t in tiles["thumb"]) == 6
    detail = details_of(out)[k]
    assert detail["reproduce"] == f"krea-reproduce run_dir={run} 'select=[cell0001]'"
    assert json.loads(detail["request"])["positivePrompt"] == "a lighthouse"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", detail["finished"])  # as the CSV
    assert details_of(out)[failed]["message"] == "read timed out after 30 s"
    assert details_of(out)[tiles["cell"].index("later")]["reproduce"] is None  # not run yet
    assert data["defaults"] == {"x": "settings.creativity", "y": "vars.style", "facet": None}


def test_list_valued_axis_has_short_values_and_a_legend(tmp_path: Path) -> None:
    refs = ['[{"image":"a.png"}]', '[{"image":"b.png","strength":0.5}]']
    rows = [make_row(i, axes={"inputs.referenceImages": r}) for i, r in enumerate(refs)]
    out = run_report(make_run(tmp_path / "run", rows, ["inputs.referenceImages"]))
    axis = data_of(out)["axes"][0]
    assert axis["values"] == ["#1", "#2"]
    assert axis["legend"] == ["image: a.png", "image: b.png, strength: 0.5"]


def test_reproduce_command_is_quoted_for_the_shell(tmp_path: Path) -> None:
    run = make_run(tmp_path / "my runs" / "it's", sample_rows()[:1])
    out = run_report(run)
    command = details_of(out)[0]["reproduce"]
    assert command == f"krea-reproduce run_dir='{tmp_path}/my runs/it'\"'\"'s' 'select=[cell0000]'"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("grid", {"x": "settings.creativity", "y": "vars.style", "facet": "size"}),
        ("seeds", {"x": "seed", "y": None, "facet": None}),
        ("axis+seeds", {"x": "vars.style", "y": "seed", "facet": None}),
        ("sampled", {"x": "strength", "y": "settings.creativity", "facet": None}),
    ],
)
def test_default_views(tmp_path: Path, kind: str, expected: dict[str, Any]) -> None:
    rng = random.Random(3)
    rows: list[dict[str, Any]] = []
    if kind == "grid":
        axes = [*AXES, "size"]
        for i, (s, c, z) in enumerate((s, c, z) for s in "ab" for c in "xyz" for z in (1, 2)):
            rows.append(make_row(i, axes={"vars.style": s, "settings.creativity": c, "size": z}))
    elif kind == "seeds":
        axes = []
        rows = [make_row(i) for i in range(8)]
    elif kind == "axis+seeds":
        axes = ["vars.style"]
        for i in range(8):
            row = make_row(i, axes={"vars.style": "ab"[i % 2]})
            row["seed"] = 40 + i // 2
            rows.append(row)
    else:
        axes = ["vars.subject", "settings.creativity", "strength"]
        for i in range(150):
            rows.append(
                make_row(
                    i,
                    axes={
                        "vars.subject": f"subject {rng.randrange(900)}",
                        "settings.creativity": rng.choice(["raw", "low", "medium", "high"]),
                        "strength": rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0]),
                    },
                )
            )
    out = run_report(make_run(tmp_path / "run", rows, axes, images=False), sheets=False)
    assert data_of(out)["defaults"] == expected


def test_rows_and_cols_options_are_the_default_view(tmp_path: Path) -> None:
    out = run_report(make_run(tmp_path / "run"), rows="settings.creativity", cols="vars.style")
    assert data_of(out)["defaults"]["x"] == "vars.style"
    assert data_of(out)["defaults"]["y"] == "settings.creativity"


def test_thumbnails_are_reused_on_a_rerun(tmp_path: Path, capsys: Any) -> None:
    run = make_run(tmp_path / "run")
    out = run_report(run)
    assert "thumbnails 6 made, 0 reused" in capsys.readouterr().out
    thumbs = sorted((out / explorer.THUMBS_DIR).rglob("*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in thumbs]
    assert len(thumbs) == 6
    run_report(run)
    assert "thumbnails 0 made, 6 reused" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in thumbs] == stamps
    # a bigger thumbnail size makes new files
    run_report(run, explorer_thumb_px=64)
    assert "thumbnails 6 made, 0 reused" in capsys.readouterr().out


def test_parallel_thumbnails_equal_serial_ones(tmp_path: Path) -> None:
    rows = [make_row(i, axes={"vars.style": f"s{i}"}, width=200, height=120) for i in range(12)]
    run = make_run(tmp_path / "run", rows, ["vars.style"])
    serial = run_report(run, thumb_workers=1, out_dir=str(tmp_path / "one"), sheets=False)
    parallel = run_report(run, thumb_workers=4, out_dir=str(tmp_path / "four"), sheets=False)
    del serial, parallel
    one = sorted((tmp_path / "one" / "thumbs").rglob("*.jpg"))
    four = sorted((tmp_path / "four" / "thumbs").rglob("*.jpg"))
    assert len(one) == 12 and [p.name for p in one] == [p.name for p in four]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, four, strict=True))
    jobs = [(p, tmp_path / "again" / p.name) for p in one]
    (tmp_path / "again").mkdir()
    assert explorer.make_thumbs(jobs, 32, 3) == (12, 0, 0)


def test_unreadable_image_is_a_tile_without_a_picture(tmp_path: Path, capsys: Any) -> None:
    run = make_run(tmp_path / "run")
    (run / "images" / "cell0001-0.png").write_bytes(b"not an image")
    out = run_report(run)
    assert "1 image(s) could not be read for thumbnails" in capsys.readouterr().out
    tiles = data_of(out)["tiles"]
    assert tiles["thumb"][tiles["cell"].index("cell0001")] is None


def test_explorer_off_writes_a_static_page(tmp_path: Path) -> None:
    out = run_report(make_run(tmp_path / "run"), explorer=False)
    page = (out / "index.html").read_text()
    assert "<script" not in page and 'id="kx"' not in page
    assert not (out / explorer.THUMBS_DIR).exists() and not (out / explorer.DATA_NAME).exists()


def test_page_loads_only_files_of_the_report_folder(tmp_path: Path) -> None:
    out = run_report(make_run(tmp_path / "run"))
    page = (out / "index.html").read_text()
    refs = re.findall(r'\b(?:src|href)="([^"#][^"]*)"', page)
    assert "explorer.js" in refs and "explorer-data.js" in refs and "explorer.css" in refs
    for ref in refs:
        if ref.startswith("data:"):
            continue
        assert not re.match(r"[a-z]+:", ref) and not ref.startswith(("/", ".."))
        assert (out / ref).is_file()
    js = (out / "explorer.js").read_text()
    assert "http://" not in js and "https://" not in js and "fetch(" not in js


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"explorer_thumb_px": 8}, "explorer_thumb_px"),
        ({"thumb_workers": -1}, "thumb_workers"),
        ({"explorer": "yes"}, "explorer"),
    ],
)
def test_bad_explorer_options(section: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_options(section)


def test_full_images_are_linked_and_a_stale_link_is_replaced(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    (b / "images" / "cell0001-0.png").write_bytes((a / "images" / "cell0003-0.png").read_bytes())
    out = tmp_path / "cmp"
    for runs in ([a, b], [b, a]):  # the same folder, the runs in the other order
        assert (
            report.report_job({"run_dir": [str(r) for r in runs], "report": {"out_dir": str(out)}})
            == 0
        )
        tiles = data_of(out)["tiles"]
        for k, rel in enumerate(tiles["full"]):
            if rel is None:
                continue
            source = runs[tiles["run"][k]] / "images" / Path(rel).name
            assert (out / rel).read_bytes() == source.read_bytes()
            assert (out / rel).stat().st_ino == source.stat().st_ino  # a hard link, not a copy
    stale = next(p for p in (out / explorer.FULL_DIR).rglob("cell0001-0.png"))
    stale.unlink()
    stale.write_bytes(b"old")
    report.report_job({"run_dir": [str(a), str(b)], "report": {"out_dir": str(out)}})
    assert stale.read_bytes() != b"old"
