"""Krea 2 Medium (`krea:krea@2-medium`): the same request fields as Large, at half the price.

Runware's SDK lists the same request fields for Medium as for Large, and Runware's Medium page
shows the same 8 sizes and 4 creativity values; every other constraint is not published for
Medium and is taken from Large (listed in `unconfirmed`). The entry is Large's with its own
facts: the same manifest columns and price tiers (at Medium's prices in the table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from pipeline.models import Model, krea_2_large

_PROTOCOL = "shared/reference/runware-protocol.md"
_SDK = "Runware Python SDK 1.8.0, runware/types/task_map.py `Krea2MediumParams`"
_K2M = "runware.ai/docs/models/krea-2-medium ([K2M])"
_FROM_LARGE = "not published for Medium: Krea 2 Large's (shared/spec/krea-2-large-api-spec.txt)"

MODEL: Model = replace(
    krea_2_large.MODEL,
    air="krea:krea@2-medium",
    name="Krea 2 Medium",
    slug="krea-2-medium",  # names its Runware docs page and its schema file
    sources={
        "air": f"{_SDK} (`model: Literal['krea:krea@2-medium']`)",
        "request fields (the same as Large's)": _SDK,
        "sizes (8 width x height pairs)": f"{_PROTOCOL} §5 ('Same table on [K2M]'); {_K2M}",
        "settings.creativity raw|low|medium|high": f"{_PROTOCOL} §5 creativity ([K2M] guide)",
        "prices $0.030 / $0.035 / $0.040": "Krea's published prices (issue 13); conf/pricing",
    },
    unconfirmed={
        "inputs.referenceImages: up to 10, strength -2..2": _FROM_LARGE,
        "settings.moodboards shape": _FROM_LARGE,
        "numberResults 1-20": _FROM_LARGE,
        "outputQuality 20-99, ttl >= 60": _FROM_LARGE,
        "seed 0..2**63-1": _FROM_LARGE,
        "Runware's own price (Krea's are used)": "no Runware pricing metadata for Medium seen",
    },
    card_tag="KREA 2 MEDIUM · RUNWARE EMULATOR",
)


def register_models(register: Callable[[Model], None]) -> None:
    """Add Krea 2 Medium to the registry."""
    register(MODEL)
