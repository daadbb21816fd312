"""Typed configuration: the structured-config schema of every command, and its checks.

The dataclasses below are registered in Hydra's ConfigStore and listed first in the defaults of
`run.yaml`, `report.yaml` and `reproduce.yaml`, so the YAML files and every override are merged
onto typed nodes: a value of the wrong type is refused and `dry_run=yes` becomes `True` while
Hydra composes. Hydra lets a `+key=value` add keys even to a typed node, so `check_keys` walks the
composed config and refuses any key the schema does not know (with the nearest known key); it
runs from a Hydra callback before the run dir is made, and again in each job.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline import helptext, yamlsafe
from pipeline.errors import ConfigError
from pipeline.settings import (
    CREDITS_STATUS,
    FAULT_NAMES,
    Backend,
    OutputType,
    PriceCheck,
    Progress,
    RepeatedTask,
    UnknownTask,
)

# ---------------------------------------------------------------------------------------------
# Schema. Every number has a range (checked when the config is composed, before anything runs).


def num(default: float | None, low: float, high: float) -> Any:
    """A numeric field with its allowed range."""
    return field(default=default, metadata={"range": (low, high)})


MAX_SEED = 2**63 - 1


if typing.TYPE_CHECKING:
    FaultsConfig = Any  # its fields are made at run time, which mypy cannot follow
else:
    FaultsConfig = dataclasses.make_dataclass(
        "FaultsConfig",
        [(name, float, num(0.0, 0, 1)) for name in FAULT_NAMES],  # one field per fault name
        namespace={
            "__doc__": "`api.faults`: probability of each injected fault per POST.",
            "__module__": __name__,
        },
    )


@dataclass
class EmulatorConfig:
    """`api.emulator`: how the emulator answers the protocol's open behaviours."""

    unknown_task: UnknownTask = UnknownTask.taskFailedOrNotFound
    queued_polls: int = num(0, 0, 1000)
    repeated_task: RepeatedTask = RepeatedTask.conflict
    sync_pollable: bool = False
    task_details: bool = True
    credits_status: int = field(default=402, metadata={"choices": CREDITS_STATUS})
    price_factor: float = num(1.0, 0, 100)


@dataclass
class ApiConfig:
    """`api`: where requests go and how the client talks to it."""

    backend: Backend = Backend.auto
    base_url: str | None = None
    key_env: str = "RUNWARE_API_KEY"
    key_file: str | None = None
    timeout_s: float = num(60.0, 0.001, 3600)
    connect_timeout_s: float = num(10.0, 0.001, 600)
    delivery: str = "async"  # async | sync (`async` cannot be an Enum name)
    output_type: OutputType = OutputType.base64Data
    upload_refs: bool = True
    batch_polls: bool = False
    poll_timeout_s: float = num(1200.0, 0.001, 86400)
    first_poll_s: float = num(1.0, 0, 3600)
    settle_s: float = num(2.0, 0, 3600)
    backoff_base_s: float = num(0.5, 0, 60)
    backoff_cap_s: float = num(30.0, 0, 3600)
    latency_s: float = num(0.0, 0, 3600)
    latency_sigma: float = num(0.0, 0, 10)
    fault_seed: int | None = num(None, 0, MAX_SEED)
    ledger: str | None = None
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)


@dataclass
class RunnerConfig:
    """`runner`: concurrency, retries and progress display."""

    concurrency: int = num(8, 1, 1024)
    max_retries: int = num(5, 0, 100)
    progress: Progress = Progress.auto
    log_every: int = num(25, 1, 10**9)
    stop_grace_s: float = num(10.0, 0, 3600)


@dataclass
class ModelPrice:
    """One model's prices per image, in USD."""

    per_image: float = num(0.0, 0, 1000)
    with_reference_images: float = num(0.0, 0, 1000)
    with_moodboards: float = num(0.0, 0, 1000)


@dataclass
class PricingConfig:
    """`pricing`: the dated price table used for estimates."""

    date: str = ""
    source: str = ""
    currency: str = "USD"
    models: dict[str, ModelPrice] = field(default_factory=dict)


@dataclass
class BudgetConfig:
    """`budget`: spending limits."""

    max_usd: float = num(5.0, 0, 1_000_000)
    price_tolerance: float = num(0.1, 0, 10)
    price_check: PriceCheck = PriceCheck.auto


@dataclass
class StoreConfig:
    """`store`: where finished cells are kept (null: see `settings.store_location`)."""

    dir: str | None = None


@dataclass
class ShardConfig:
    """`shard`: this process's share of the cells."""

    index: int = num(0, 0, 1_000_000)
    count: int = num(1, 1, 1_000_000)


@dataclass
class RunConfig:
    """The schema of `krea-run` (conf/run.yaml)."""

    sweep: Any = None  # a sweep file's content; sweep.py checks its grammar
    api: ApiConfig = field(default_factory=ApiConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    dry_run: bool = False
    confirm: bool = True
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)


@dataclass
class ReportOptions:
    """`report`: what krea-report draws and where it writes."""

    rows: str | None = None
    cols: str | None = None
    filter: str | None = None
    thumb_px: int = num(256, 16, 4096)
    min_thumb_px: int = num(96, 16, 4096)
    max_sheet_px: int = num(4096, 256, 32768)
    max_sheets: int = num(60, 0, 10_000)
    sheets: bool = True
    html: bool = True
    embed_max_mb: float = num(4.0, 0, 1024)
    print_rows: int = num(20, 1, 1_000_000)
    out_dir: str | None = None
    explorer: bool = True
    explorer_thumb_px: int = num(320, 16, 4096)
    thumb_workers: int = num(0, 0, 256)


@dataclass
class ReportConfig:
    """The schema of `krea-report` (conf/report.yaml)."""

    run_dir: Any = None  # a run dir, a multirun dir or a list of them
    report: ReportOptions = field(default_factory=ReportOptions)


@dataclass
class ReproduceConfig:
    """The schema of `krea-reproduce` (conf/reproduce.yaml)."""

    run_dir: Any = None
    select: Any = None
    image: Any = None
    api: ApiConfig = field(default_factory=ApiConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    dry_run: bool = False
    confirm: bool = True
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


SCHEMAS: dict[str, type] = {
    "run_schema": RunConfig,
    "report_schema": ReportConfig,
    "reproduce_schema": ReproduceConfig,
}
COMMAND_SCHEMA = {
    "krea-run": RunConfig,
    "krea-report": ReportConfig,
    "krea-reproduce": ReproduceConfig,
}


def register() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
    for command, template in helptext.HELP.items():
        page = {"app_name": command, "header": "", "footer": "", "template": template}
        store.store(group="hydra/help", name=command, node=page, provider="krea-sweep")


# ---------------------------------------------------------------------------------------------
# Checks


def known_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a schema dataclass (nested dataclasses included)."""
    keys: list[str] = []
    for name, kind in typing.get_type_hints(schema).items():
        path = f"{prefix}{name}"
        keys.append(path)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            keys.extend(known_keys(kind, path + "."))
    return keys


def unknown_key_message(key: str, schema: type) -> str:
    """'unknown key X (did you mean Y?)' with the nearest known key of the schema."""
    key = key.lstrip("+~")
    known = known_keys(schema)
    parent = key.rpartition(".")[0]
    siblings = [k for k in known if k.rpartition(".")[0] == parent]
    near = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, known, n=1, cutoff=0.6
    )
    if near:
        return f"unknown key {key!r} (did you mean {near[0]!r}?)"
    names = siblings or [k for k in known if "." not in k]
    return f"unknown key {key!r}; known here: {', '.join(names)}"


def check_keys(cfg: DictConfig, schema: type) -> None:
    """Refuse any key of a composed config that its schema does not know."""
    problem = _first_unknown(cfg, "")
    if problem is not None and problem.startswith("~"):
        raise ConfigError(f"{problem[1:]!r} cannot be removed; give it a value instead")
    if problem is not None:
        raise ConfigError(unknown_key_message(problem, schema))


def _first_unknown(node: DictConfig, prefix: str) -> str | None:
    """The first key (dotted) of `node` that its typed schema does not know, if any."""
    kind = OmegaConf.get_type(node)
    typed = isinstance(kind, type) and dataclasses.is_dataclass(kind)
    fields = {f.name for f in dataclasses.fields(kind)} if typed else set()  # type: ignore[arg-type]
    missing = sorted(fields - {str(k) for k in node})
    if missing:
        return f"~{prefix}{missing[0]}"
    if typed:
        _check_ranges(node, kind, prefix)  # type: ignore[arg-type]
    elif _typed_values(node):
        for key in list(node):
            child = node._get_node(str(key))
            if isinstance(child, DictConfig) and not child._is_none():
                _check_ranges(child, node._metadata.element_type, f"{prefix}{key}.")
    for key in list(node):
        name = str(key)
        if prefix == "" and name == "hydra":
            continue  # Hydra's own node has Hydra's schema
        if typed and name not in fields:
            return prefix + name
        child = node._get_node(name)
        walk = typed or _typed_values(node)
        if walk and isinstance(child, DictConfig) and not child._is_none():
            found = _first_unknown(child, f"{prefix}{name}.")
            if found is not None:
                return found
    return None


def _check_ranges(node: DictConfig, kind: type, prefix: str) -> None:
    """Refuse a number outside its field's range (or not finite)."""
    for f in dataclasses.fields(kind):
        bounds = f.metadata.get("range")
        choices = f.metadata.get("choices")
        if (bounds is None and choices is None) or f.name not in node:
            continue
        value = node[f.name]
        if value is None:
            continue
        if choices is not None:
            if value not in choices:
                allowed = " or ".join(str(c) for c in choices)
                raise ConfigError(f"{prefix}{f.name} must be {allowed}, got {_show(value)}")
            continue
        low, high = bounds or (0, 0)
        if not (isinstance(value, int | float) and low <= value <= high):
            raise ConfigError(
                f"{prefix}{f.name} must be between {_show(low)} and {_show(high)}, "
                f"got {_show(value)}"
            )


def _show(value: Any) -> str:
    """A number as a person writes it (1e+10 stays short; 86400 stays whole)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _typed_values(node: DictConfig) -> bool:
    """Whether a dict node's values are typed (e.g. `pricing.models`)."""
    value_type = node._metadata.element_type
    return isinstance(value_type, type) and dataclasses.is_dataclass(value_type)


def safe_name(sweep: Any) -> str:
    """The sweep's name, checked so it can name a run dir (before Hydra makes any folder)."""
    if isinstance(sweep, ListConfig | list):
        raise ConfigError(
            "the sweep file holds a list (its lines start with '- '); a sweep is a mapping "
            "of keys (name, base, grid, …): remove the leading dashes"
        )
    if sweep is None:
        raise ConfigError("no sweep selected: pass sweep=<name> or sweep=path/to/file.yaml")
    if not isinstance(sweep, DictConfig | dict):
        raise ConfigError(f"a sweep must be a mapping of keys, got {sweep!r}")
    name = sweep.get("name")
    if name is None or name == "":
        raise ConfigError("the sweep has no `name:` (it names the run dir outputs/<name>/)")
    text = str(name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) or ".." in text:
        raise ConfigError(
            f"sweep name {text!r} must be letters, digits, '.', '_' or '-' (it names the run dir "
            "outputs/<name>/); nothing was written"
        )
    return text


OmegaConf.register_new_resolver("krea_name", safe_name, replace=True)
OmegaConf.register_new_resolver("krea_readme", helptext.readme, replace=True)  # --help pages


class CheckConfig(Callback):
    """Hydra callback: refuse unknown keys before Hydra makes the run dir (run and multirun).

    Hydra turns an exception in a callback into a warning, so a refusal is printed here and
    ends the process with exit 1 (SystemExit passes through Hydra untouched).
    """

    def __init__(self, command: str = "krea-run") -> None:
        self.command = command
        self.schema = COMMAND_SCHEMA[command]

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the composed config of a single run."""
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the base config of a multirun (each job is checked again as it starts)."""
        self._check(config)

    def _check(self, config: DictConfig) -> None:
        try:
            check_keys(config, self.schema)
        except ConfigError as exc:
            if os.environ.get("PIPELINE_FULL_ERROR") == "1":
                raise SystemExit(f"{self.command}: error: {exc}") from exc
            print(f"{self.command}: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None


register()
yamlsafe.install()
