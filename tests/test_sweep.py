"""Sweep grammar and expansion: order, determinism, ids, seeds, filters, files, mistakes, memory."""

from __future__ import annotations

import copy
import itertools
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from PIL import Image

from pipeline import models
from pipeline.canonical import canonical_json
from pipeline.errors import ConfigError
from pipeline.sweep import (
    PER_ATTEMPT_FIELDS,
    Cell,
    Sweep,
    cell_id_of,
    count_cells,
    expand,
    is_local_file,
    load_sweep,
    sweep_schema,
)

REPO = Path(__file__).resolve().parent.parent
SWEEP_DIR = REPO / "conf" / "sweep"
REQUEST_SCHEMA = json.loads((REPO / "schemas" / "krea-2-large.request.json").read_text())
ATTEMPT = {"taskType": "imageInference", "taskUUID": "00000000-0000-4000-8000-000000000000"}
FORBIDDEN = {"taskType", "taskUUID", "includeCost", "deliveryMethod", "vars"}
STRENGTH = "inputs.referenceImages[0].strength"


@pytest.fixture
def where(tmp_path: Path) -> Path:
    """A sweep folder with two reference images and value files."""
    Image.new("RGB", (8, 8), (200, 40, 40)).save(tmp_path / "ref.png")
    Image.new("RGB", (8, 8), (40, 40, 200)).save(tmp_path / "ref2.png")
    (tmp_path / "subjects.txt").write_text("# subjects\n\na fox\n  an owl  \n# done\na whale\n")
    (tmp_path / "rows.csv").write_text(
        "positivePrompt,vars.tag,width,height,seed\n"
        "a fox {tag},001,1024,1024,5\n"
        "an owl {tag},2.5,1376,768,\n"
    )
    (tmp_path / "styles.csv").write_text("name,strength\nfilm,0.5\nblur,-1\n")
    return tmp_path


def _spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "seed": 3,
        "vars": {"style": "film grain"},
        "base": {
            "model": "krea:krea@2-large",
            "positivePrompt": "a lighthouse, {style}",
            "width": 1024,
            "height": 1024,
            "settings": {"creativity": "medium"},
            "inputs": {"referenceImages": [{"image": "ref.png", "strength": 0.7}]},
        },
    }
    spec.update(over)
    return spec


def _load(where: Path, **over: Any) -> Sweep:
    return load_sweep(_spec(**over), where)


def _cells(sweep: Sweep) -> list[Cell]:
    return list(expand(sweep))


def _rows(sweep: Sweep) -> list[tuple[int, str, int, str]]:
    return [(c.index, c.cell_id, c.seed, canonical_json(c.request)) for c in expand(sweep)]


def _error(where: Path, spec: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_sweep(spec, where)
    return str(caught.value)


# ---------------------------------------------------------------- order and identity


def test_same_spec_expands_byte_identically(where: Path) -> None:
    over = {
        "grid": {"settings.creativity": ["raw", "high"], STRENGTH: [-1.0, 1]},
        "zip": [{"width": [1024, 1376], "height": [1024, 768]}],
        "include": [{"vars.style": "tilt-shift"}],
    }
    first, second = _rows(_load(where, **over)), _rows(_load(where, **copy.deepcopy(over)))
    assert first == second
    assert len(first) == count_cells(_load(where, **over)) == 2 * 2 * 2 + 1
    assert [r[0] for r in first] == list(range(len(first)))
    assert len({r[1] for r in first}) == len(first)


def test_every_cell_is_well_formed(where: Path) -> None:
    sweep = _load(where, grid={"settings.creativity": ["raw", "high"]}, seeds=[1, 2])
    validator = jsonschema.Draft202012Validator(REQUEST_SCHEMA)
    for cell in expand(sweep):
        assert not FORBIDDEN & cell.request.keys()
        assert cell.request["seed"] == cell.seed
        assert len(cell.cell_id) == 20 and int(cell.cell_id, 16) >= 0
        assert cell.cell_id == cell_id_of(cell.request)
        assert not list(validator.iter_errors({**cell.request, **ATTEMPT}))
        assert list(cell.axes) == sweep.axis_names


@pytest.mark.parametrize("seeds", [None, [1, 2]], ids=["derived-seeds", "seed-list"])
def test_editing_one_value_changes_only_its_cells(where: Path, seeds: list[int] | None) -> None:
    def ids(creativity: list[str]) -> dict[tuple[Any, ...], str]:
        over: dict[str, Any] = {"grid": {"settings.creativity": creativity, STRENGTH: [-1, 1]}}
        if seeds is not None:
            over["seeds"] = seeds
        return {(*c.axes.values(), c.seed): c.cell_id for c in expand(_load(where, **over))}

    before, after = ids(["raw", "low", "high"]), ids(["raw", "medium", "high"])
    assert len(before) == len(after) == 6 * (len(seeds) if seeds else 1)
    unchanged = {k for k in before if k[0] != "low"}
    assert unchanged == {k for k in after if k[0] != "medium"}
    assert all(before[k] == after[k] for k in unchanged)
    new_ids = {v for k, v in after.items() if k[0] == "medium"}
    assert len(new_ids) == len(after) - len(unchanged) and not new_ids & set(before.values())


def test_order_grid_slowest_then_zip_then_seeds(where: Path) -> None:
    sweep = _load(
        where,
        grid={"settings.creativity": ["raw", "high"], STRENGTH: [-1, 1]},
        zip=[{"width": [1024, 1376], "height": [1024, 768]}],
        seeds=[7, 8],
    )
    got = [
        (c.axes["settings.creativity"], c.axes[STRENGTH], c.axes["width"], c.seed)
        for c in expand(sweep)
    ]
    assert got == list(itertools.product(["raw", "high"], [-1, 1], [1024, 1376], [7, 8]))
    assert sweep.axis_names == ["settings.creativity", STRENGTH, "width", "height"]


# ---------------------------------------------------------------- grid, zip, seeds


def test_zip_varies_together(where: Path) -> None:
    sweep = _load(where, zip=[{"width": [1024, 1376, 768], "height": [1024, 768, 1376]}])
    sizes = [(c.request["width"], c.request["height"]) for c in expand(sweep)]
    assert sizes == [(1024, 1024), (1376, 768), (768, 1376)]


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [
        ([5, 1, 9], [5, 1, 9]),
        ({"count": 3, "start": 1000}, [1000, 1001, 1002]),
        ({"count": 2}, [0, 1]),
    ],
)
def test_seeds_are_the_fastest_dimension(where: Path, seeds: Any, expected: list[int]) -> None:
    sweep = _load(where, grid={"settings.creativity": ["raw", "high"]}, seeds=seeds)
    assert [c.seed for c in expand(sweep)] == expected * 2
    assert "seed" not in sweep.axis_names


def test_derived_seeds_are_stable_and_in_uint32(where: Path) -> None:
    grid = {"settings.creativity": ["raw", "low", "high"]}
    one = {c.axes["settings.creativity"]: c.seed for c in expand(_load(where, grid=grid))}
    grid2 = {"settings.creativity": ["high", "raw"]}  # reordered and shortened
    two = {c.axes["settings.creativity"]: c.seed for c in expand(_load(where, grid=grid2))}
    assert one["raw"] == two["raw"] and one["high"] == two["high"]
    assert len(set(one.values())) == 3 and all(0 <= s < 2**32 for s in one.values())
    other = {c.axes["settings.creativity"]: c.seed for c in expand(_load(where, grid=grid, seed=4))}
    assert other["raw"] != one["raw"]


@pytest.mark.parametrize(
    ("over", "base_seed", "expected"),
    [
        ({"grid": {"numberResults": [1, 2]}}, 77, [77, 77]),
        ({"grid": {"seed": [11, 12]}}, None, [11, 12]),
        ({"include": [{"seed": 99, "settings.creativity": "raw"}]}, 5, [5, 99]),
    ],
    ids=["base-seed", "seed-axis", "include-seed"],
)
def test_given_seed_wins_over_derivation(
    where: Path, over: dict[str, Any], base_seed: int | None, expected: list[int]
) -> None:
    spec = _spec(**over)
    if base_seed is not None:
        spec["base"]["seed"] = base_seed
    assert [c.seed for c in expand(load_sweep(spec, where))] == expected


def test_null_seed_axis_value_derives(where: Path) -> None:
    cells = _cells(_load(where, grid={"seed": [3, None]}))
    derived = _cells(_load(where))[0].seed
    assert [c.seed for c in cells] == [3, derived]


# ---------------------------------------------------------------- exclude, include, sample


def test_exclude_drops_matching_cells_numbers_by_value(where: Path) -> None:
    sweep = _load(
        where,
        grid={"settings.creativity": ["raw", "high"], STRENGTH: [-1.0, 0.5, 1]},
        seeds=[1, 2],
        exclude=[{"settings.creativity": "raw", STRENGTH: -1}, {STRENGTH: 1.0, "seed": 2}],
    )
    got = [(c.axes["settings.creativity"], c.axes[STRENGTH], c.seed) for c in expand(sweep)]
    full = list(itertools.product(["raw", "high"], [-1.0, 0.5, 1], [1, 2]))
    kept = [t for t in full if not (t[0] == "raw" and t[1] == -1) and not (t[1] == 1 and t[2] == 2)]
    assert got == kept and count_cells(sweep) == len(kept) == 12 - 2 - 2 + 0


def test_include_cells_come_last_crossed_with_seeds(where: Path) -> None:
    sweep = _load(
        where,
        grid={"settings.creativity": ["raw", "high"]},
        seeds=[1, 2],
        include=[
            {"vars.style": "tilt-shift", "numberResults": 2},
            {"seed": 50, "inputs": None},
        ],
    )
    cells = _cells(sweep)
    assert sweep.axis_names == ["settings.creativity", "vars.style", "numberResults", "inputs"]
    assert [c.seed for c in cells] == [1, 2, 1, 2, 1, 2, 50] and count_cells(sweep) == 7
    product, (inc1, inc2, inc3) = cells[:4], cells[4:]
    assert all(
        c.axes["numberResults"] is None and c.axes["vars.style"] == "film grain" for c in product
    )
    assert product[0].axes["inputs"] == '{"referenceImages":[{"image":"ref.png","strength":0.7}]}'
    assert inc1.axes == {
        "settings.creativity": "medium",
        "vars.style": "tilt-shift",
        "numberResults": 2,
        "inputs": '{"referenceImages":[{"image":"ref.png","strength":0.7}]}',
    }
    assert inc1.request["positivePrompt"] == "a lighthouse, tilt-shift" and inc2.seed == 2
    assert "inputs" not in inc3.request and inc3.axes["inputs"] is None


def test_sample_is_a_deterministic_ordered_subset(where: Path) -> None:
    over = {
        "grid": {"settings.creativity": ["raw", "low", "medium", "high"], STRENGTH: [-1, 0, 1]},
        "seeds": {"count": 10, "start": 0},
        "exclude": [{"settings.creativity": "low"}],
        "include": [{"vars.style": "tilt-shift"}],
    }
    full = _rows(_load(where, **over))
    sampled = _rows(_load(where, **over, sample={"n": 25, "seed": 7}))
    again = _rows(_load(where, **over, sample={"n": 25, "seed": 7}))
    other = _rows(_load(where, **over, sample={"n": 25, "seed": 8}))
    assert sampled == again and sampled != other
    assert len(sampled) == 25 + 10 and count_cells(_load(where, **over, sample={"n": 25})) == 35
    product_ids = [r[1] for r in full[:-10]]
    picked = [r[1] for r in sampled[:-10]]
    assert set(picked) <= set(product_ids)
    assert picked == sorted(picked, key=product_ids.index)  # kept in expansion order
    assert [r[1] for r in sampled[-10:]] == [r[1] for r in full[-10:]]  # includes appended
    assert [r[0] for r in sampled] == list(range(35))


def test_sample_larger_than_product_keeps_everything(where: Path) -> None:
    over = {"grid": {"settings.creativity": ["raw", "high"]}}
    assert _rows(_load(where, **over, sample={"n": 50})) == _rows(_load(where, **over))


def test_sample_of_a_million_uses_the_index_space(where: Path) -> None:
    grid = {f"vars.v{i}": [f"x{j}" for j in range(10)] for i in range(6)}
    prompt = "p " + " ".join(f"{{v{i}}}" for i in range(6))
    spec = _spec(grid=grid, sample={"n": 200, "seed": 7})
    spec["base"]["positivePrompt"] = prompt
    cells = _cells(load_sweep(spec, where))
    assert len(cells) == 200 and len({c.cell_id for c in cells}) == 200


# ---------------------------------------------------------------- values and paths


@pytest.mark.parametrize(
    ("prompt", "vars_", "expected"),
    [
        ("a {style} lighthouse", {"style": "foggy"}, "a foggy lighthouse"),
        ("{{literal}} and {style}", {"style": "x"}, "{literal} and x"),
        ('json {{"a": {n}}}', {"n": 3, "style": "s"}, 'json {"a": 3}'),
        ("no variables {{}}", {}, "no variables {}"),
    ],
)
def test_templates_fill_and_escape(
    where: Path, prompt: str, vars_: dict[str, Any], expected: str
) -> None:
    spec = _spec(vars=vars_)
    spec["base"]["positivePrompt"] = prompt
    (cell,) = _cells(load_sweep(spec, where))
    assert cell.request["positivePrompt"] == expected and "vars" not in cell.request


def test_index_paths_null_deletes_and_sub_object_axes(where: Path) -> None:
    sets = [[{"image": "ref.png"}], [{"image": "ref2.png", "strength": 0.1}, "ref.png"]]
    sweep = _load(
        where,
        grid={
            STRENGTH: [-2, 2],  # applied after the whole-list axis, whatever the key order
            "inputs.referenceImages": sets,
            "settings": [None, {"creativity": "raw"}],
        },
    )
    cells = _cells(sweep)
    refs = [c.request["inputs"]["referenceImages"] for c in cells]
    assert refs[0] == [{"image": str(where / "ref.png"), "strength": -2}]
    assert refs[2] == [{"image": str(where / "ref2.png"), "strength": -2}, str(where / "ref.png")]
    assert "settings" not in cells[0].request and cells[1].request["settings"] == {
        "creativity": "raw"
    }
    assert cells[0].axes["inputs.referenceImages"] == '[{"image":"ref.png"}]'
    assert cells[0].axes["settings"] is None and cells[1].axes["settings"] == '{"creativity":"raw"}'
    assert sets[0] == [{"image": "ref.png"}]  # the sweep's own values are never changed


def test_expansion_leaves_base_untouched(where: Path) -> None:
    sweep = _load(where, grid={STRENGTH: [-1, 1], "settings.creativity": ["raw", "low"]})
    before = copy.deepcopy(sweep.base)
    cells = _cells(sweep)
    cells[0].request["inputs"] = None  # a consumer changing its own top-level dict
    assert sweep.base == before and _rows(sweep)[1:] == [
        (c.index, c.cell_id, c.seed, canonical_json(c.request)) for c in cells[1:]
    ]


def test_no_reference_variant_via_exclude_and_include(where: Path) -> None:
    grid = {"inputs": [None, {"referenceImages": [{"image": "ref.png"}]}], STRENGTH: [-1, 1]}
    assert "where inputs=null" in _error(where, _spec(grid=grid))
    sweep = _load(where, grid=grid, exclude=[{"inputs": None}], include=[{"inputs": None}])
    cells = _cells(sweep)
    assert [c.axes[STRENGTH] for c in cells] == [-1, 1, None]
    assert "inputs" not in cells[-1].request and cells[-1].axes["inputs"] is None


def test_text_file_in_a_zip_group(where: Path) -> None:
    spec = _spec(zip=[{"vars.subject": {"file": "subjects.txt"}, "seed": [1, 2, 3]}])
    spec["base"]["positivePrompt"] = "{subject}"
    cells = _cells(load_sweep(spec, where))
    assert [(c.request["positivePrompt"], c.seed) for c in cells] == [
        ("a fox", 1),
        ("an owl", 2),
        ("a whale", 3),
    ]
    spec["zip"][0]["seed"] = [1, 2]
    assert "got vars.subject 3, seed 2" in _error(where, spec)


def test_text_file_values(where: Path) -> None:
    spec = _spec(grid={"vars.subject": {"file": "subjects.txt"}})
    spec["base"]["positivePrompt"] = "{subject}, {style}"
    prompts = [c.request["positivePrompt"] for c in expand(load_sweep(spec, where))]
    assert prompts == ["a fox, film grain", "an owl, film grain", "a whale, film grain"]


def test_csv_zipped_columns_are_typed(where: Path) -> None:
    cells = _cells(load_sweep(_spec(zip=[{"file": "rows.csv"}]), where))
    assert [c.request["positivePrompt"] for c in cells] == ["a fox 001", "an owl 2.5"]
    assert [(c.request["width"], c.request["height"]) for c in cells] == [(1024, 1024), (1376, 768)]
    assert cells[0].axes == {
        "positivePrompt": "a fox {tag}",
        "vars.tag": "001",
        "width": 1024,
        "height": 1024,
    }
    columns = {p: p for p in ("positivePrompt", "vars.tag", "width", "height")}
    unseeded = _cells(load_sweep(_spec(zip=[{"file": "rows.csv", "columns": columns}]), where))
    assert cells[0].seed == 5 and cells[1].seed == unseeded[1].seed  # an empty field: derived
    assert cells[1].cell_id == unseeded[1].cell_id and cells[0].cell_id != unseeded[0].cell_id


def test_csv_mapped_columns_and_single_column(where: Path) -> None:
    spec = _spec(
        grid={"vars.n": {"file": "styles.csv", "column": "strength"}},
        zip=[{"file": "styles.csv", "columns": {"vars.style": "name", STRENGTH: "strength"}}],
    )
    spec["base"]["positivePrompt"] = "{style} {n}"
    cells = _cells(load_sweep(spec, where))
    prompts = [c.request["positivePrompt"] for c in cells]
    assert prompts == ["film 0.5", "blur 0.5", "film -1", "blur -1"]  # vars stay text
    assert [c.request["inputs"]["referenceImages"][0]["strength"] for c in cells] == [0.5, -1] * 2


# ---------------------------------------------------------------- local files and ids


def test_local_reference_is_hashed_by_content(where: Path) -> None:
    (where / "copy").mkdir()
    (where / "copy" / "same.png").write_bytes((where / "ref.png").read_bytes())
    one = _cells(_load(where, seeds=[1]))[0]
    spec = _spec(seeds=[1])
    spec["base"]["inputs"]["referenceImages"][0]["image"] = "copy/same.png"
    moved = _cells(load_sweep(spec, where))[0]
    assert moved.request != one.request and moved.cell_id == one.cell_id
    assert moved.request["inputs"]["referenceImages"][0]["image"] == str(
        where / "copy" / "same.png"
    )
    Image.new("RGB", (8, 8), (1, 2, 3)).save(where / "copy" / "same.png")
    changed = _cells(load_sweep(spec, where))[0]
    assert changed.cell_id != one.cell_id and changed.request == moved.request


def test_cell_id_ignores_per_attempt_fields(where: Path) -> None:
    cell = _cells(_load(where))[0]
    extra = {
        "taskType": "imageInference",
        "taskUUID": ATTEMPT["taskUUID"],
        "includeCost": True,
        "deliveryMethod": "async",
        "webhookURL": "http://127.0.0.1/hook",
        "uploadEndpoint": "http://127.0.0.1/put",
        "ttl": 120,
        "outputType": "URL",
    }
    assert set(extra) == PER_ATTEMPT_FIELDS
    assert cell_id_of({**cell.request, **extra}) == cell.cell_id
    assert cell_id_of({**cell.request, "outputFormat": "PNG"}) != cell.cell_id


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("refs/a.png", True),
        ("/abs/B.JPEG", True),
        ("x.webp", True),
        ("https://example.com/a.png", False),
        ("data:image/png;base64,AAAA.png", False),
        ("aac49721-1964-481a-ae78-8a4e29b91402", False),
        ("iVBORw0KGgoAAAANSUhEUg", False),
        ("a" * 1020 + ".png", False),
        ("notes.txt", False),
    ],
)
def test_is_local_file(value: str, local: bool) -> None:
    assert is_local_file(value) is local


# ---------------------------------------------------------------- grammar mistakes

GOOD_GRID = {"settings.creativity": ["raw", "high"]}
# (id, edits to the spec: top-level keys, or "base.X" keys, None deletes; expected text)
MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    (
        "unknown-top-level-key",
        {"grdi": {"width": [1024]}},
        "unknown top-level key 'grdi' (did you mean 'grid'?)",
    ),
    ("missing-name", {"name": None}, "'name' is a required property"),
    ("bad-name", {"name": "my sweep/1"}, "name: 'my sweep/1'"),
    ("grid-not-a-mapping", {"grid": ["width"]}, "grid: must be object"),
    (
        "zip-lengths",
        {"zip": [{"width": [1024, 1376], "height": [1024]}]},
        "same length, got width 2, height 1",
    ),
    (
        "template-var",
        {"base.positivePrompt": "a {subject}"},
        "uses {subject} but vars.subject has no value",
    ),
    ("template-brace", {"base.positivePrompt": "a {bad brace}"}, "stray '{'"),
    ("missing-ref", {"base.inputs": {"referenceImages": [{"image": "nope.png"}]}}, "'nope.png'"),
    ("missing-value-file", {"grid": {"vars.style": {"file": "nope.txt"}}}, "value file 'nope.txt'"),
    ("csv-column", {"grid": {"width": {"file": "styles.csv", "column": "w"}}}, "needs `column:`"),
    ("csv-group-file", {"zip": [{"file": "nope.csv"}]}, "value file 'nope.csv'"),
    (
        "exclude-unknown-axis",
        {"exclude": [{"settings.nope": 1}]},
        "'settings.nope' is not a swept axis",
    ),
    ("exclude-no-value", {"exclude": [{"settings.creativity": "hihg"}]}, "matches no value"),
    ("seeds-negative", {"seeds": [-1]}, "seeds: [-1] must be integers in 0..2**63-1"),
    ("seeds-too-big", {"seeds": [2**63]}, "must be integers in 0..2**63-1"),
    ("seeds-shape", {"seeds": {"cnt": 4}}, "seeds: unknown key(s) ['cnt']"),
    ("seeds-count", {"seeds": {"count": 0}}, "seeds.count must be a positive integer"),
    ("seeds-repeat", {"seeds": [1, 1]}, "repeats a seed"),
    ("seeds-and-base-seed", {"seeds": [1], "base.seed": 4}, "base.seed is set too"),
    ("base-seed-range", {"base.seed": 2**63}, "must be an integer in 0..2**63-1"),
    ("taskUUID-base", {"base.taskUUID": ATTEMPT["taskUUID"]}, "taskUUID"),
    ("taskUUID-axis", {"grid": {"taskUUID": ["a"]}}, "taskUUID cannot be set in a sweep"),
    ("taskType-other", {"base.taskType": "upscale"}, "base.taskType"),
    ("includeCost", {"base.includeCost": False}, "includeCost"),
    ("deliveryMethod", {"base.deliveryMethod": "later"}, '"later" is not allowed'),
    (
        "index-out-of-range",
        {"grid": {"inputs.referenceImages[3].strength": [1]}},
        "index [3] is past the end",
    ),
    ("index-under-null", {"grid": {"inputs": [None], STRENGTH: [1]}}, "where inputs=null"),
    (
        "null-list-item",
        {"grid": {"inputs.referenceImages[0]": [None]}},
        "cannot be deleted by index",
    ),
    ("sample-n-not-int", {"sample": {"n": "ten"}}, "sample.n must be a positive integer"),
    ("sample-key", {"sample": {"n": 3, "sed": 1}}, "sample: unknown key(s) ['sed']"),
    ("axis-not-a-list", {"grid": {"width": 1024}}, "must be a list of values"),
    ("axis-empty-list", {"grid": {"width": []}}, "the list of values is empty"),
    ("axis-repeated-value", {"grid": {"width": [1024, 1024.0]}}, "values #0 and #1 are the same"),
    ("bad-path", {"grid": {"settings..creativity": ["raw"]}}, "is not a request path"),
    ("path-twice", {"zip": [{"settings.creativity": ["raw"]}]}, "is already swept in grid"),
    ("vars-path", {"grid": {"vars.a.b": ["x"]}}, "vars.NAME"),
    ("unused-var-axis", {"grid": {"vars.mood": ["calm", "wild"]}}, "no positivePrompt uses {mood}"),
    ("var-null", {"grid": {"vars.style": [None]}}, "a template variable must be text"),
    (
        "include-repeats-product",
        {"include": [{"settings.creativity": "raw"}]},
        "repeats the product cell",
    ),
    (
        "include-repeats-include",
        {"include": [{"numberResults": 2}, {"numberResults": 2}]},
        "repeats include[0]",
    ),
    (
        "exclude-everything",
        {"exclude": [{"settings.creativity": "raw"}, {"settings.creativity": "high"}]},
        "nothing to run",
    ),
    ("nan", {"base.outputQuality": float("nan")}, "not a finite number"),
]


@pytest.mark.parametrize(("edits", "expected"), [pytest.param(e, x, id=i) for i, e, x in MISTAKES])
def test_grammar_mistake_is_a_config_error(
    where: Path, edits: dict[str, Any], expected: str
) -> None:
    spec = _spec(grid=dict(GOOD_GRID))
    for key, value in edits.items():
        tree, leaf = (spec["base"], key[5:]) if key.startswith("base.") else (spec, key)
        if value is None and key in ("name",):
            tree.pop(leaf)
        else:
            tree[leaf] = value
    message = _error(where, spec)
    assert expected in message, message


def test_every_problem_is_reported_at_once(where: Path) -> None:
    spec = _spec(grdi={}, seeds=[-1], exclude=[{"nope": 1}], sample={"n": 0})
    spec["base"]["positivePrompt"] = "a {subject}"
    spec["base"]["inputs"] = {"referenceImages": [{"image": "missing.png"}]}
    lines = _error(where, spec).splitlines()
    assert lines[0] == "sweep 't': 6 problem(s) in the sweep:"  # overrides count too
    assert all(line.startswith("  ") for line in lines[1:]), lines  # indented under the head
    for text in ("grdi", "seeds: [-1]", "'nope'", "sample.n", "{subject}", "missing.png"):
        assert sum(text in line for line in lines[1:]) == 1, text


def test_text_that_is_not_unicode_names_the_sweep(where: Path) -> None:
    spec = _spec()
    spec["base"]["positivePrompt"] = "a \ud800 b"
    lines = _error(where, spec).splitlines()
    assert lines[0] == "sweep 't': 1 problem(s) in the sweep:", lines
    assert lines[1].startswith("  base.positivePrompt: holds \\ud800 at character 2"), lines


def test_a_path_error_in_expansion_names_the_cell(where: Path) -> None:
    # The load-time probe skips combinations an exclude entry might remove; expansion still checks.
    sweep = _load(
        where,
        grid={
            "settings.creativity": ["raw", "high"],
            "inputs.referenceImages": [["ref.png"], [{"image": "ref.png"}]],
            STRENGTH: [1],
        },
        exclude=[{"settings.creativity": "raw", "inputs.referenceImages": ["ref.png"]}],
    )
    cells = expand(sweep)
    assert next(cells).index == 0
    with pytest.raises(ConfigError, match=r"cell 1 \(settings.creativity=high, .*\): inputs"):
        next(cells)


# ---------------------------------------------------------------- scale


def test_a_million_cells_stream_in_bounded_memory(where: Path) -> None:
    spec = _spec(
        grid={
            "vars.subject": [f"subject {i}" for i in range(1000)],
            "settings.creativity": ["raw", "low", "medium", "high"],
            "numberResults": [1, 2, 3, 4, 5],
        },
        zip=[{"width": [1024, 1376], "height": [1024, 768]}],
        seeds={"count": 25, "start": 0},
    )
    spec["base"]["positivePrompt"] = "{subject}, {style}"
    sweep = load_sweep(spec, where)
    assert count_cells(sweep) == 1_000_000
    cells = expand(sweep)
    tracemalloc.start()
    try:
        for _ in itertools.islice(cells, 30_000):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000
    blocks = sys.getallocatedblocks()
    last = list(itertools.islice(cells, 169_999, 170_000))
    assert last[0].index == 199_999
    assert sys.getallocatedblocks() - blocks < 20_000  # nothing accumulates per cell


def test_count_cells_does_not_need_expansion(where: Path) -> None:
    spec = _spec(
        grid={f"vars.v{i}": [f"x{j}" for j in range(20)] for i in range(4)},
        exclude=[{"vars.v0": "x0"}, {"vars.v1": "x1", "vars.v2": "x2"}],
        include=[{"numberResults": 2}],
        seeds=[1, 2],
        vars={f"v{i}": "default" for i in range(4)},
    )
    spec["base"]["positivePrompt"] = " ".join(f"{{v{i}}}" for i in range(4))
    n = 20**4 * 2  # 320,000 product cells: under MAX_CELLS, never expanded here
    expected = n - n // 20 - n // 400 + n // 8000 + 2
    assert count_cells(load_sweep(spec, where)) == expected


# ---------------------------------------------------------------- the example sweep files

EXAMPLES = [
    ("demo", 34),
    ("seed_study", 16),
    ("creativity_x_reference", 48),
    ("sizes", 8),
    ("big_sampled", 200),
    ("bench_100k", 100_000),
    ("large_vs_medium", 16),
]


def test_every_example_is_listed() -> None:
    assert sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")) == sorted(n for n, _ in EXAMPLES)


@pytest.mark.parametrize(("name", "cells"), EXAMPLES)
def test_example_sweep(name: str, cells: int) -> None:
    path = SWEEP_DIR / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../../schemas/sweep.schema.json\n")
    spec = yaml.safe_load(text)
    assert not list(jsonschema.Draft202012Validator(sweep_schema()).iter_errors(spec))
    sweep = load_sweep(spec, path.parent)
    assert count_cells(sweep) == cells and sweep.name == name
    seen = 0
    for cell in itertools.islice(expand(sweep), 500):
        # each cell against its own model's schema (pipeline/models)
        validator = jsonschema.Draft202012Validator(
            models.get(cell.request["model"]).request_schema()
        )
        assert not list(validator.iter_errors({**cell.request, **ATTEMPT})), cell
        seen += 1
    assert seen == min(cells, 500)


@pytest.mark.parametrize("name", [n for n, _ in EXAMPLES])
def test_example_reads_the_same_through_omegaconf(name: str) -> None:
    from omegaconf import OmegaConf

    path = SWEEP_DIR / f"{name}.yaml"
    through = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert through == yaml.safe_load(path.read_text())


def test_demo_is_small_and_stable() -> None:
    spec = yaml.safe_load((SWEEP_DIR / "demo.yaml").read_text())
    cells = _cells(load_sweep(spec, SWEEP_DIR))
    assert 20 <= sum(c.request.get("numberResults", 1) for c in cells) <= 60
    assert {c.seed for c in cells} == {42}
    assert any(c.axes[STRENGTH] is not None and c.axes[STRENGTH] < 0 for c in cells)
    assert (SWEEP_DIR / "refs" / "palette.png").stat().st_size < 8192


def test_sweep_schema_rejects_unknown_keys() -> None:
    validator = jsonschema.Draft202012Validator(sweep_schema())
    assert validator.is_valid({"name": "x", "base": {}, "seeds": {"count": 2, "start": 1}})
    assert not validator.is_valid({"name": "x", "base": {}, "grdi": {}})
    assert not validator.is_valid({"name": "x", "base": {}, "grid": {"taskUUID": ["a"]}})
    assert not validator.is_valid({"name": "x", "base": {}, "zip": [{"width": [1], "h": 3}]})
    described = sweep_schema()["properties"]
    assert all(sub.get("description") for sub in described.values())


def test_an_include_with_its_own_prompt_template_is_rendered(where: Path) -> None:
    # issue 11 item 3: `a {style} castle` and `literal {{braces}} here` were sent as written
    sweep = _load(
        where,
        include=[
            {"positivePrompt": "a {style} castle"},
            {"positivePrompt": "literal {{braces}} here"},
            {"positivePrompt": "a {style} tower", "vars.style": "ink"},
        ],
    )
    prompts = [c.request["positivePrompt"] for c in expand(sweep)]
    assert prompts == [
        "a lighthouse, film grain",
        "a film grain castle",
        "literal {braces} here",
        "a ink tower",
    ]
    assert all("{" not in p or p == "literal {braces} here" for p in prompts)
