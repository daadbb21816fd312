"""The model registry: each entry's facts, schema, prices and columns; `model` as a swept axis."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
import requests
import yaml
from conftest import cli_env, run_cli
from PIL import Image
from runs import read_manifest, run_sweep_inprocess
from scripted_server import ScriptedServer

from pipeline import manifest, models, pricing, report
from pipeline.emulator import Emulator
from pipeline.errors import ConfigError, PipelineError, UnknownModel
from pipeline.models import Column, Model
from pipeline.schema import request_problems
from pipeline.sweep import load_sweep

LARGE = "krea:krea@2-large"
MEDIUM = "krea:krea@2-medium"
TABLE = pricing.load_price_table()
PROMPT = "a lighthouse on a cliff at dusk"
REF = [{"image": "https://example.com/ref.png", "strength": 0.5}]
MOOD = [{"id": "mb-1"}]


def _request(model: str, **over: Any) -> dict[str, Any]:
    return {"model": model, "positivePrompt": PROMPT, "width": 1024, "height": 1024, **over}


# ---------------------------------------------------------------------------- the registry


# (air, display name, docs URL, schema file)
ENTRIES = [
    (LARGE, "Krea 2 Large", "https://runware.ai/docs/models/krea-2-large", "krea-2-large"),
    (MEDIUM, "Krea 2 Medium", "https://runware.ai/docs/models/krea-2-medium", "krea-2-medium"),
]


def test_the_registry_holds_large_first_then_medium() -> None:
    assert models.known() == (LARGE, MEDIUM)
    assert models.DEFAULT_AIR == LARGE == models.entries()[0].air
    assert models.extra_columns() == (Column("settings.creativity", "string", "Creativity"),)


@pytest.mark.parametrize(("air", "name", "docs", "schema"), ENTRIES)
def test_each_entry_owns_its_facts_and_schema(air: str, name: str, docs: str, schema: str) -> None:
    entry = models.get(air)
    assert (entry.air, entry.name, entry.docs_url) == (air, name, docs)
    assert entry.schema_path.name == f"{schema}.request.json" and entry.schema_path.is_file()
    loaded = entry.request_schema()
    jsonschema.Draft202012Validator.check_schema(loaded)
    assert loaded["properties"]["model"]["const"] == air
    assert entry.sources["air"] and all(entry.sources.values())
    assert name.upper() in entry.card_tag


def test_medium_marks_what_it_takes_from_large_as_unconfirmed() -> None:
    medium, large = models.get(MEDIUM), models.get(LARGE)
    assert not large.unconfirmed
    assert "numberResults 1-20" in medium.unconfirmed
    assert all("Large" in why or "Runware" in why for why in medium.unconfirmed.values())
    # Runware's SDK (1.8.0) lists the same request fields: the schemas differ only in `model`
    # (and their own title, id and description).
    own = ("$id", "title", "description", "$comment")
    a, b = large.request_schema(), medium.request_schema()
    a_props, b_props = dict(a["properties"]), dict(b["properties"])
    assert a_props.pop("model") != b_props.pop("model")
    assert a_props == b_props
    assert {k: v for k, v in a.items() if k not in (*own, "properties")} == {
        k: v for k, v in b.items() if k not in (*own, "properties")
    }


def test_an_unknown_model_is_one_line_listing_the_known_ones() -> None:
    with pytest.raises(UnknownModel) as caught:
        models.get("krea:krea@9")
    text = str(caught.value)
    assert isinstance(caught.value, PipelineError) and "\n" not in text
    assert text == (
        'unknown model "krea:krea@9"; known models: krea:krea@2-large (Krea 2 Large), '
        "krea:krea@2-medium (Krea 2 Medium)"
    )
    with pytest.raises(UnknownModel):
        models.get(None)


def test_an_air_registered_twice_is_refused() -> None:
    twin = Model(air=LARGE, name="twin", slug="twin", sources={"air": "-"})
    with pytest.raises(ValueError, match="registered twice"):
        models.register(twin)
    assert models.get(LARGE).name == "Krea 2 Large"


def test_the_manifest_columns_are_the_fixed_ones_plus_the_models_columns() -> None:
    names = list(manifest.COLUMNS)
    at = names.index("height") + 1
    assert names[at : at + len(models.extra_columns())] == [c.name for c in models.extra_columns()]
    assert manifest.COLUMNS["settings.creativity"] == "string"


@pytest.mark.parametrize("air", models.known())
def test_every_registered_model_is_complete(air: str) -> None:
    """What a new entry must bring: sources, its own schema file, a price for each of its tiers."""
    entry = models.get(air)
    assert entry.name and entry.slug and entry.sources
    schema = entry.request_schema()
    assert schema["properties"]["model"] == {"const": air, "description": "Model AIR."}
    assert request_problems(_request(air)) == []
    shipped = TABLE["models"][air]
    for edits in ({}, {"inputs": {"referenceImages": REF}}, {"settings": {"moodboards": MOOD}}):
        assert entry.tier(_request(air, **edits)) in shipped
        assert pricing.unit_price(_request(air, **edits), TABLE) > 0


# ---------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("air", [LARGE, MEDIUM])
def test_each_model_takes_a_valid_request(air: str) -> None:
    request = _request(
        air,
        seed=7,
        numberResults=2,
        settings={"creativity": "high"},
        inputs={"referenceImages": REF},
    )
    assert request_problems(request) == []


# (air, request edits, the path and message expected)
BAD = [
    (MEDIUM, {"steps": 30}, ("steps", "unknown key (Krea 2 Medium does not take it)")),
    (LARGE, {"steps": 30}, ("steps", "unknown key (Krea 2 Large does not take it)")),
    (MEDIUM, {"width": 1000}, ("width", "1000 is not allowed")),
    (MEDIUM, {"height": 768}, ("width,height", "1024x768 is not an allowed size pair")),
    (MEDIUM, {"settings": {"creativity": "extreme"}}, ("settings.creativity", '"extreme"')),
    (MEDIUM, {"numberResults": 21}, ("numberResults", "21 is out of range")),
    (LARGE, {"negativePrompt": "ugly"}, ("negativePrompt", "Krea 2 Large does not take it")),
]


@pytest.mark.parametrize(("air", "edits", "expected"), BAD)
def test_each_model_refuses_with_its_own_wording(
    air: str, edits: dict[str, Any], expected: tuple[str, str]
) -> None:
    problems = request_problems(_request(air, **edits))
    path, says = expected
    assert any(p == path and says in m for p, m in problems), problems


def test_each_schema_refuses_the_other_models_air() -> None:
    task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), **_request(LARGE)}
    medium = jsonschema.Draft202012Validator(models.get(MEDIUM).request_schema())
    large = jsonschema.Draft202012Validator(models.get(LARGE).request_schema())
    assert large.is_valid(task) and not medium.is_valid(task)
    assert medium.is_valid({**task, "model": MEDIUM}) and not large.is_valid(
        {**task, "model": MEDIUM}
    )


def test_a_request_without_a_model_says_it_is_missing() -> None:
    request = _request(LARGE)
    del request["model"]
    assert ("model", "is required but missing") in request_problems(request)


def test_an_unknown_model_in_a_request_is_unknown_model() -> None:
    with pytest.raises(UnknownModel, match="known models: krea:krea@2-large"):
        request_problems(_request("krea:krea@1"))


# ---------------------------------------------------------------------------- prices


# (air, request edits, the price of one image)
PRICES = [
    (LARGE, {}, 0.06),
    (LARGE, {"inputs": {"referenceImages": REF}}, 0.065),
    (LARGE, {"settings": {"moodboards": MOOD}}, 0.07),
    (LARGE, {"inputs": {"referenceImages": REF}, "settings": {"moodboards": MOOD}}, 0.07),
    (MEDIUM, {}, 0.030),
    (MEDIUM, {"inputs": {"referenceImages": REF}}, 0.035),
    (MEDIUM, {"settings": {"moodboards": MOOD}}, 0.040),
    (MEDIUM, {"inputs": {"referenceImages": REF}, "settings": {"moodboards": MOOD}}, 0.040),
]


@pytest.mark.parametrize(("air", "edits", "price"), PRICES)
def test_each_model_is_priced_per_tier_from_its_entry(
    air: str, edits: dict[str, Any], price: float
) -> None:
    request = _request(air, **edits)
    assert pricing.unit_price(request, TABLE) == pytest.approx(price)
    assert pricing.estimate({**request, "numberResults": 3}, TABLE) == pytest.approx(3 * price)


def test_a_model_missing_from_the_price_table_is_one_clear_error() -> None:
    table = {**TABLE, "models": {LARGE: TABLE["models"][LARGE]}}
    with pytest.raises(ConfigError) as caught:
        pricing.unit_price(_request(MEDIUM), table)
    text = str(caught.value)
    assert "\n" not in text and "no price for model krea:krea@2-medium (Krea 2 Medium)" in text


def test_a_sweep_names_its_models_for_the_least_cost_gate(tmp_path: Path) -> None:
    spec = {
        "name": "m",
        "base": _request(LARGE),
        "grid": {"model": [LARGE, MEDIUM]},
        "include": [{"model": "krea:krea@9"}],
    }
    assert load_sweep(spec, tmp_path).models == [LARGE, MEDIUM, "krea:krea@9"]
    assert load_sweep({"name": "l", "base": _request(LARGE)}, tmp_path).models == [LARGE]


# ---------------------------------------------------------------------------- the emulator


def test_the_emulator_serves_each_model_at_its_own_price(emulator: Emulator) -> None:
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = "Bearer key"
    images: dict[str, bytes] = {}
    for air, price in ((LARGE, 0.06), (MEDIUM, 0.03)):
        task = {
            "taskType": "imageInference",
            "taskUUID": str(uuid.uuid4()),
            "includeCost": True,
            "outputType": "base64Data",
            "seed": 7,
            **_request(air),
        }
        r = session.post(emulator.base_url, json=[task], timeout=30)
        assert r.status_code == 200, r.text
        (item,) = r.json()["data"]
        assert item["cost"] == pytest.approx(price)
        images[air] = base64.b64decode(item["imageBase64Data"])
    assert images[LARGE] != images[MEDIUM]  # the same request, each model's own card
    bad = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), **_request(MEDIUM)}
    r = session.post(emulator.base_url, json=[{**bad, "steps": 30}], timeout=30)
    assert r.status_code == 400
    (err,) = r.json()["errors"]
    assert err["code"] == "unsupportedParameter" and "krea:krea@2-medium" in err["message"]
    r = session.post(emulator.base_url, json=[{**bad, "model": "krea:krea@9"}], timeout=30)
    (err,) = r.json()["errors"]
    assert err["code"] == "unknownModel" and err["allowedValues"] == [LARGE, MEDIUM]
    session.close()


# ---------------------------------------------------------------------------- model as an axis


UNKNOWN_IN_GRID = {
    "name": "unknown_model",
    "base": _request(LARGE),
    "grid": {"model": [LARGE, "krea:krea@2-small"]},
    "seeds": [1],
}


def test_an_unknown_model_on_the_axis_is_one_line_and_sends_nothing(isolated: Path) -> None:
    (isolated / "unknown.yaml").write_text(yaml.safe_dump(UNKNOWN_IN_GRID))
    with ScriptedServer() as srv:
        proc = run_cli(
            "run",
            "api=emulator",
            f"api.base_url={srv.base_url}",
            "runner.progress=none",
            "sweep=unknown.yaml",
            cwd=isolated,
            env=cli_env(RUNWARE_API_KEY="test-key"),
        )
        assert srv.requests == []
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0] == (
        "krea-run: error: cell 1 (model=krea:krea@2-small, seed=1): "
        'unknown model "krea:krea@2-small"; '
        "known models: krea:krea@2-large (Krea 2 Large), krea:krea@2-medium (Krea 2 Medium); "
        "nothing was sent"
    )


def _large_vs_medium(workdir: Path) -> dict[str, Any]:
    Image.new("RGB", (8, 8), (40, 90, 200)).save(workdir / "ref.png")
    return {
        "name": "lvm",
        "base": {**_request(LARGE), "settings": {"creativity": "medium"}},
        "grid": {
            "model": [LARGE, MEDIUM],
            "inputs.referenceImages": [None, [{"image": "ref.png", "strength": 0.5}]],
        },
        "seeds": [1, 2],
    }


def test_a_large_by_medium_sweep_plans_runs_and_reports_by_model(isolated: Path) -> None:
    run_dir = isolated / "run"
    code = run_sweep_inprocess(isolated, _large_vs_medium(isolated), run_dir)
    assert code == 0
    # model is a swept axis everywhere: the journal header, plan.parquet, the manifest's own column
    header = json.loads((run_dir / "journal.jsonl").read_text().splitlines()[0])
    assert header["axis_names"] == ["model", "inputs.referenceImages"]
    plan = pd.read_parquet(run_dir / "plan.parquet")
    assert len(plan) == 8 and plan["cell_id"].is_unique
    requests_ = [json.loads(r) for r in plan["request_json"]]
    each = [pricing.estimate(r, TABLE) for r in requests_]
    assert plan["estimated_cost_usd"].tolist() == pytest.approx(each)
    assert sum(each) == pytest.approx(2 * (0.06 + 0.065 + 0.03 + 0.035))
    assert plan["model"].tolist() == [r["model"] for r in requests_]
    frame = read_manifest(run_dir)
    assert list(frame.columns).count("model") == 1
    assert set(frame["status"]) == {"ok"} and len(frame) == 8
    assert sorted(set(frame["model"].astype(str))) == [LARGE, MEDIUM]
    for air, rows in frame.groupby("model", observed=True):
        priced = [pricing.estimate(json.loads(r), TABLE) for r in rows["request_json"]]
        assert rows["cost_usd"].sum() == pytest.approx(sum(priced)), air
        assert all(json.loads(r)["model"] == air for r in rows["request_json"])
    # krea-report on the run: a table by model, one row per model
    assert report.report_job({"run_dir": str(run_dir), "report": {"explorer": False}}) == 0
    by_model = pd.read_csv(run_dir / "report" / "by_model.csv")
    assert by_model["model"].tolist() == [LARGE, MEDIUM]
    assert by_model["cells"].tolist() == [4, 4]


def test_krea_reproduce_reissues_the_medium_cells_of_a_mixed_run(isolated: Path) -> None:
    run_dir = isolated / "run"
    assert run_sweep_inprocess(isolated, _large_vs_medium(isolated), run_dir) == 0
    proc = run_cli(
        "reproduce",
        f"run_dir={run_dir}",
        f"select=\"model == '{MEDIUM}'\"",
        "runner.progress=none",
        f"hydra.run.dir={isolated / 'again'}",
        cwd=isolated,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 identical, 0 different, 0 failed" in proc.stdout
    again = pd.read_csv(isolated / "again" / "reproduce.csv")
    medium = read_manifest(run_dir).query(f"model == '{MEDIUM}'")
    assert sorted(again["cell_id"]) == sorted(medium["cell_id"])
