"""The model registry: one entry per model AIR, owning everything krea-sweep knows of that model.

An entry (`Model`) holds the model's facts (AIR, display name, slug — hence its docs URL —, the
source of each fact, the constraints that are unconfirmed), its request schema
(`schemas/<slug>.request.json`), its price rule (which tier of the price table applies to a
request), its extra manifest columns and how the emulator paints it. Each model module has a
`register_models(register)` hook, the shape of simonw/llm's plugin hook; `BUILTIN` lists the
modules whose hooks run at import.

Adding a model: one module here (with its `register_models`), one schema file in `schemas/` and
one entry under `models:` in `conf/pricing/runware.yaml`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.errors import ConfigError, UnknownModel
from pipeline.resources import SCHEMA_DIR

DEFAULT_AIR = "krea:krea@2-large"
PER_IMAGE = "per_image"  # the price-table keys of one model: text to image,
WITH_REFERENCE_IMAGES = "with_reference_images"  # any inputs.referenceImages present,
WITH_MOODBOARDS = "with_moodboards"  # any settings.moodboards present (wins over references)


@dataclass(frozen=True, slots=True)
class Column:
    """An extra manifest column a model declares: a request field shown on its own."""

    name: str  # the column, named by its request path (`settings.creativity`)
    dtype: str  # its pandas dtype in the manifest
    label: str  # its name in an image's short recipe (`Creativity: high`)

    def read(self, request: Mapping[str, Any]) -> Any:
        """The column's value in `request` (None when absent)."""
        value: Any = request
        for key in self.name.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        return value


def price_tier(request: Mapping[str, Any]) -> str:
    """The Krea 2 price tier of a request: moodboards beat reference images beat plain text."""
    if (request.get("settings") or {}).get("moodboards"):
        return WITH_MOODBOARDS
    if (request.get("inputs") or {}).get("referenceImages"):
        return WITH_REFERENCE_IMAGES
    return PER_IMAGE


@dataclass(frozen=True)
class Model:
    """One model: its facts, request schema, price rule, manifest columns and emulator card."""

    air: str  # Runware's model AIR, the `model` field of a request
    name: str  # display name, e.g. "Krea 2 Large"
    slug: str  # Runware's slug: names its docs page and krea-sweep's schema file
    sources: Mapping[str, str]  # fact → where it comes from
    unconfirmed: Mapping[str, str] = field(default_factory=dict)  # constraint → why unconfirmed
    columns: tuple[Column, ...] = ()  # extra manifest columns (request fields shown on their own)
    tier: Callable[[Mapping[str, Any]], str] = price_tier  # request → its price-table key
    card_tag: str = ""  # the emulator's label on each test card

    @property
    def docs_url(self) -> str:
        """The model's page in Runware's docs."""
        return f"https://runware.ai/docs/models/{self.slug}"

    @property
    def schema_path(self) -> Path:
        """The request schema's file: `schemas/<slug>.request.json`."""
        return SCHEMA_DIR / f"{self.slug}.request.json"

    def request_schema(self) -> dict[str, Any]:
        """The JSON Schema of one imageInference request of this model (loaded once)."""
        return _load_schema(self.schema_path)

    def unit_price(self, request: Mapping[str, Any], table: Mapping[str, Any]) -> float:
        """Price of one image of `request` from the price table's `models` mapping."""
        prices = (table.get("models") or {}).get(self.air)
        if not isinstance(prices, Mapping):
            raise ConfigError(
                f"no price for model {self.air} ({self.name}) in the price table: add it under "
                "`models:` in conf/pricing/runware.yaml (or pricing.models…)"
            )
        tier = self.tier(request)
        if tier not in prices:
            raise ConfigError(f"the price table has no {tier!r} price for model {self.air}")
        return float(prices[tier])


@cache
def _load_schema(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


_REGISTRY: dict[str, Model] = {}


def register(model: Model) -> None:
    """Add a model to the registry (an AIR registered twice is a bug: ValueError)."""
    if model.air in _REGISTRY:
        raise ValueError(f"model {model.air} is registered twice")
    _REGISTRY[model.air] = model


def get(air: Any) -> Model:
    """The entry of a model AIR; UnknownModel (listing the known ones) when there is none."""
    model = _REGISTRY.get(air) if isinstance(air, str) else None
    if model is None:
        raise UnknownModel(f"unknown model {json.dumps(air)}; known models: {known_text()}")
    return model


def known() -> tuple[str, ...]:
    """Every registered AIR, in registration order (the default first)."""
    return tuple(_REGISTRY)


def known_text() -> str:
    """The known models for a message: `krea:krea@2-large (Krea 2 Large), …`."""
    return ", ".join(f"{m.air} ({m.name})" for m in _REGISTRY.values())


def entries() -> tuple[Model, ...]:
    """Every registered model, in registration order."""
    return tuple(_REGISTRY.values())


def extra_columns() -> tuple[Column, ...]:
    """The extra manifest columns of every registered model (each name once, in order)."""
    seen: dict[str, Column] = {}
    for model in _REGISTRY.values():
        for column in model.columns:
            seen.setdefault(column.name, column)
    return tuple(seen.values())


def _register_builtin(modules: tuple[ModuleType, ...]) -> None:
    for module in modules:
        module.register_models(register)


from pipeline.models import krea_2_large, krea_2_medium  # noqa: E402  (they import Model above)

BUILTIN = (krea_2_large, krea_2_medium)  # the default first
_register_builtin(BUILTIN)
