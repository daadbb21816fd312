"""Config composition and the pipeline's own settings (backend choice, key handling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONF, SWEEPS, compose_config
from omegaconf import OmegaConf

from pipeline.config import EmulatorConfig, RunConfig, check_keys
from pipeline.errors import ConfigError
from pipeline.job import backend_line
from pipeline.settings import (
    FAULT_NAMES,
    ApiSettings,
    EmulatorBehaviour,
    api_key,
    api_settings,
    is_loopback,
)


def _api(name: str, **overrides: Any) -> dict[str, Any]:
    api = compose_config("run", [f"api={name}"])["api"]
    assert isinstance(api, dict)
    api.update(overrides)
    return api


@pytest.mark.parametrize(
    ("group", "env", "backend", "url"),
    [
        ("auto", {}, "emulator", None),
        ("auto", {"RUNWARE_API_KEY": "k"}, "runware", "https://api.runware.ai/v1"),
        ("emulator", {"RUNWARE_API_KEY": "k"}, "emulator", None),
        ("runware", {}, "runware", "https://api.runware.ai/v1"),
    ],
)
def test_backend_resolution(group: str, env: dict[str, str], backend: str, url: str | None) -> None:
    api = api_settings(_api(group), env)
    assert (api.backend, api.base_url) == (backend, url)


def test_key_comes_from_environment_or_file(tmp_path: Path) -> None:
    assert (
        api_key(
            api_settings(_api("runware"), {"RUNWARE_API_KEY": "env-key"}),
            {"RUNWARE_API_KEY": "env-key"},
        )
        == "env-key"
    )
    (tmp_path / "key").write_text("file-key\n")
    api = api_settings(_api("runware", key_file=str(tmp_path / "key")), {})
    assert api_key(api, {}) == "file-key"
    with pytest.raises(ConfigError, match="RUNWARE_API_KEY"):
        api_key(api_settings(_api("runware"), {}), {})


def test_emulator_backend_refuses_a_remote_url() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        api_settings(_api("emulator", base_url="http://10.1.2.3/v1"), {})


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:9/v1", True),
        ("http://127.8.0.1/v1", True),
        ("http://localhost/v1", True),
        ("http://[::1]:80/v1", True),
        ("https://api.runware.ai/v1", False),
        ("http://192.168.1.2/v1", False),
    ],
)
def test_is_loopback(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_file_composes(name: str) -> None:
    cfg = compose_config("run", [f"sweep={name}"])
    assert cfg["sweep"]["name"]


@pytest.mark.parametrize("name", ["run", "report", "reproduce"])
def test_every_primary_config_composes(name: str) -> None:
    overrides = {"report": ["run_dir=x"], "reproduce": ["select=[a]"]}.get(name, [])
    assert compose_config(name, overrides)


def test_every_conf_key_has_a_comment() -> None:
    root = Path(__file__).resolve().parent.parent / "conf"
    missing = []
    for path in root.rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
                continue
            if "#" not in stripped:
                missing.append(f"{path.relative_to(root)}:{number}: {stripped}")
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


def test_a_sweep_key_can_be_overridden_like_any_config() -> None:
    from pipeline.sweep import count_cells, load_sweep

    spec = compose_config("run", ["sweep=demo", "sweep.seeds=[7,8]"])["sweep"]
    assert spec["seeds"] == [7, 8]
    assert count_cells(load_sweep(spec, CONF / "sweep")) == 2 * 34


@pytest.mark.parametrize(
    ("group", "env", "dry_run", "line"),
    [
        (
            "auto",
            {},
            False,
            "backend: emulator (no RUNWARE_API_KEY set; built-in, offline, nothing is billed)",
        ),
        ("emulator", {"RUNWARE_API_KEY": "k"}, True, "backend: emulator (dry run, not started)"),
        ("auto", {"RUNWARE_API_KEY": "k"}, False, "backend: runware (https://api.runware.ai/v1)"),
        (
            "runware",
            {},
            True,
            "backend: runware (https://api.runware.ai/v1) — dry run, nothing sent",
        ),
    ],
)
def test_the_first_line_names_the_backend(
    group: str, env: dict[str, str], dry_run: bool, line: str
) -> None:
    assert backend_line(api_settings(_api(group), env), dry_run) == line


@pytest.mark.parametrize("bad", ["sk-live-1234\r\nX-Evil: 1", "sk live", "sk-\x00-1"])
def test_a_key_with_stray_characters_is_refused_without_being_shown(bad: str) -> None:
    api = api_settings(_api("runware"), {"RUNWARE_API_KEY": bad})
    with pytest.raises(ConfigError) as caught:
        api_key(api, {"RUNWARE_API_KEY": bad})
    assert "sk" not in str(caught.value).replace("RUNWARE", "")


def test_a_key_is_stripped() -> None:
    env = {"RUNWARE_API_KEY": "  sk-live-1234\r\n"}
    assert api_key(api_settings(_api("runware"), env), env) == "sk-live-1234"


def test_every_number_in_the_schema_has_a_range() -> None:
    """A new numeric key cannot be added without bounds (a 1e10 timeout fails paid cells)."""
    import dataclasses
    import typing

    from pipeline import config

    unbounded = []
    for schema in config.SCHEMAS.values():
        todo: list[tuple[str, type]] = [("", schema)]
        while todo:
            prefix, kind = todo.pop()
            hints = typing.get_type_hints(kind)
            for f in dataclasses.fields(kind):
                hint = hints[f.name]
                if dataclasses.is_dataclass(hint):
                    todo.append((f"{prefix}{f.name}.", hint))  # type: ignore[arg-type]
                elif typing.get_origin(hint) is dict:
                    value = typing.get_args(hint)[1]
                    if dataclasses.is_dataclass(value):
                        todo.append((f"{prefix}{f.name}.*.", value))  # type: ignore[arg-type]
                elif {int, float} & {hint, *typing.get_args(hint)} and not (
                    "range" in f.metadata or "choices" in f.metadata
                ):
                    unbounded.append(prefix + f.name)
    assert not unbounded, unbounded


def test_the_schema_knows_the_keys_added_for_the_real_api() -> None:
    cfg = compose_config("run")
    api, budget = cfg["api"], cfg["budget"]
    assert (api["first_poll_s"], api["latency_sigma"]) == (1.0, 0.0)
    assert (budget["price_tolerance"], budget["price_check"]) == (0.1, "auto")
    assert api["emulator"] == {
        "unknown_task": "taskFailedOrNotFound", "queued_polls": 0, "repeated_task": "conflict",
        "sync_pollable": False, "task_details": True, "credits_status": 402, "price_factor": 1.0,
    }  # fmt: skip
    assert {"http_504", "accepted_500", "accepted_disconnect"} <= set(api["faults"])
    settings = api_settings(api, {})
    assert settings.first_poll_s == 1.0 and settings.emulator.repeated_task == "conflict"


def test_each_fault_name_is_one_typed_key_with_its_range_and_documented() -> None:
    # issue 13 item 6: the fault names are defined once (settings.FAULT_NAMES); the typed
    # schema's `api.faults` fields are made from them, and conf/api/emulator.yaml documents each.
    composed = compose_config("run", ["api=emulator"])["api"]["faults"]
    assert list(composed) == list(FAULT_NAMES)
    node = OmegaConf.structured(RunConfig)
    for name in FAULT_NAMES:
        node.api.faults[name] = 1.5
        with pytest.raises(ConfigError, match=rf"api\.faults\.{name} must be between 0 and 1"):
            check_keys(node, RunConfig)
        node.api.faults[name] = 0.0
    documented = yaml.safe_load((CONF / "api" / "emulator.yaml").read_text())["faults"]
    assert set(documented) == set(FAULT_NAMES)


def test_the_emulator_behaviours_and_their_defaults_agree_in_schema_yaml_and_settings() -> None:
    # The typed schema (config.EmulatorConfig), conf/api/emulator.yaml and the pure settings
    # (settings.EmulatorBehaviour) each list the emulator's behaviours: same names, same defaults.
    defaults = EmulatorBehaviour().kwargs()
    schema = OmegaConf.to_container(OmegaConf.structured(EmulatorConfig), enum_to_str=True)
    assert schema == defaults
    composed = compose_config("run", ["api=emulator"])["api"]
    assert composed["emulator"] == defaults
    assert api_settings(composed, {}).emulator == EmulatorBehaviour()
    for name in ("first_poll_s", "settle_s", "latency_sigma"):  # ApiSettings' own defaults
        assert composed[name] == getattr(ApiSettings, name), name
