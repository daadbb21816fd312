"""Price table lookup and per-request cost estimates (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline import models
from pipeline.errors import ConfigError
from pipeline.resources import CONF_DIR

PRICE_TABLE_PATH = CONF_DIR / "pricing" / "runware.yaml"


def load_price_table(path: Path = PRICE_TABLE_PATH) -> dict[str, Any]:
    """Read a price table YAML file into plain data."""
    try:
        table = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read price table {path}: {exc}") from exc
    if not isinstance(table, dict) or not isinstance(table.get("models"), dict):
        raise ConfigError(f"price table {path} has no `models` mapping")
    return table


def unit_price(request: dict[str, Any], table: dict[str, Any]) -> float:
    """Price of one image of `request`: its model's entry picks the tier of the price table."""
    return models.get(request.get("model")).unit_price(request, table)


def estimate(request: dict[str, Any], table: dict[str, Any]) -> float:
    """Estimated USD for a whole request: unit price × numberResults."""
    return unit_price(request, table) * int(request.get("numberResults", 1))


def usd(amount: float) -> str:
    """Dollars as people read them: cents, or tenths of a cent where prices need them ($2.205)."""
    cents = round(amount * 100, 6)
    return f"${amount:,.2f}" if cents == int(cents) else f"${amount:,.3f}"
