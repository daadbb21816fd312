"""Krea 2 Large (`krea:krea@2-large`): the default model and the product's focus."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.models import Column, Model

_PROTOCOL = "shared/reference/runware-protocol.md"
_SPEC = "shared/spec/krea-2-large-api-spec.txt"
_SDK = "Runware Python SDK 1.8.0, runware/types/task_map.py `Krea2LargeParams`"

MODEL: Model = Model(
    air="krea:krea@2-large",
    name="Krea 2 Large",
    slug="krea-2-large",  # names its Runware docs page and its schema file
    sources={
        "air": f"{_PROTOCOL} §5 ([K2L] schema.json `x-air-id`)",
        "request fields": f"{_SDK}; {_SPEC}",
        "sizes (8 width x height pairs)": f"{_PROTOCOL} §5 dimensions table ([K2L] .md); {_SPEC}",
        "settings.creativity raw|low|medium|high": f"{_PROTOCOL} §5 creativity; {_SPEC}",
        "inputs.referenceImages: up to 10, strength -2..2": f"{_SPEC}; {_PROTOCOL} §5",
        "numberResults 1-20, outputQuality 20-99, ttl >= 60": f"{_PROTOCOL} §4 ([IIREF])",
        "prices $0.06 / $0.065 / $0.07": "conf/pricing/runware.yaml (its comments say where from)",
    },
    columns=(Column("settings.creativity", "string", "Creativity"),),
    card_tag="KREA 2 LARGE · RUNWARE EMULATOR",
)


def register_models(register: Callable[[Model], None]) -> None:
    """Add Krea 2 Large to the registry."""
    register(MODEL)
