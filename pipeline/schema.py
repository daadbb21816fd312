"""Validate each expanded request against its model's JSON Schema, reporting every problem at once.

Each request is checked against the schema of the model it names (`pipeline.models`); a request
without `model` against the default model's (which reports the missing field); a model the
registry does not know is one `UnknownModel` error naming the cell and listing the known models.

Speed: a full jsonschema check costs ~100 µs, too slow for 100,000 cells. Cells of a sweep differ
mostly in prompt text and seed, whose rules do not interact with the rest of the schema, so those
two fields are checked with their own small validators and the rest of the request is checked once
per distinct shape (memoised on its canonical JSON). The result is exactly the full schema's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jsonschema

from pipeline import models
from pipeline.canonical import canonical_json
from pipeline.errors import UnknownModel, ValidationFailed
from pipeline.images import image_input_problem
from pipeline.models import Model
from pipeline.protocol import CLIENT_FIELDS
from pipeline.sweep import Cell, format_path, is_local_file

# Placeholders for the per-attempt fields the client adds at send time.
_ATTEMPT_FIELDS = {"taskType": "imageInference", "taskUUID": "00000000-0000-4000-8000-000000000000"}
_FREE_FIELDS = ("positivePrompt", "seed")  # checked alone, left out of the memo key
_EXAMPLES_PER_PROBLEM = 5


def model_of(request: dict[str, Any]) -> Model:
    """The entry of the request's model (the default's when it names none); UnknownModel."""
    return models.get(request.get("model", models.DEFAULT_AIR))


@cache
def _validators(
    air: str,
) -> tuple[jsonschema.Draft202012Validator, dict[str, jsonschema.Draft202012Validator]]:
    schema = models.get(air).request_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    full = jsonschema.Draft202012Validator(schema)
    free = {f: jsonschema.Draft202012Validator(schema["properties"][f]) for f in _FREE_FIELDS}
    return full, free


def _allowed(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return ", ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    return ""


def describe(error: jsonschema.ValidationError, model: Model) -> tuple[str, str]:
    """One jsonschema error of `model`'s schema → (request path, what is wrong and allowed)."""
    path = format_path(error.absolute_path) or "(request)"
    value: Any = error.instance
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    shown = json.dumps(value, ensure_ascii=False)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if kind in ("enum", "const"):
        return path, f"{shown} is not allowed; allowed: {_allowed(schema)}"
    if kind in ("minimum", "maximum"):
        lo, hi = schema.get("minimum", "-inf"), schema.get("maximum", "inf")
        return path, f"{shown} is out of range; allowed: {lo} to {hi}"
    if kind == "type":
        return path, f"{shown} has the wrong type; expected {schema['type']}"
    if kind == "required":
        missing = [k for k in schema["required"] if k not in value]
        where = f"{path}." if error.absolute_path else ""
        return f"{where}{missing[0]}", "is required but missing"
    if kind == "additionalProperties":
        extra = sorted(set(value) - set(schema.get("properties", {})))
        allowed = ", ".join(sorted(set(schema.get("properties", {})) - CLIENT_FIELDS.keys()))
        where = f"{path}." if error.absolute_path else ""
        return (
            f"{where}{extra[0]}",
            f"unknown key ({model.name} does not take it); allowed: {allowed}",
        )
    if kind in ("minItems", "maxItems"):
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", "any")
        return path, f"has {len(value)} items; allowed: {lo} to {hi}"
    if kind == "minLength":
        return path, "must not be empty"
    if kind == "pattern":
        return path, f"{shown} must be an http(s) URL"
    if kind == "anyOf" and not error.absolute_path:
        w, h = value.get("width"), value.get("height")
        sizes = ", ".join(model.request_schema()["x-allowedSizes"])
        return "width,height", f"{w}x{h} is not an allowed size pair; allowed: {sizes}"
    if kind == "anyOf" and error.context:
        # A reference image: explain the object branch, which is what people write.
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        return describe(deepest, model)
    return path, error.message


def request_problems(request: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (path, message) problem of one cell request; [] when valid (UnknownModel)."""
    model = model_of(request)
    _, free = _validators(model.air)
    shape = {k: v for k, v in request.items() if k not in _FREE_FIELDS}
    problems = list(_shape_problems(model.air, canonical_json(shape)))
    for name in _FREE_FIELDS:
        if name in request and not free[name].is_valid(request[name]):
            problems += [
                (name, describe(e, model)[1]) for e in free[name].iter_errors(request[name])
            ]
    if "positivePrompt" not in request:
        problems.append(("positivePrompt", "is required but missing"))
    return problems


@cache
def _shape_problems(air: str, shape_json: str) -> tuple[tuple[str, str], ...]:
    model = models.get(air)
    full, _ = _validators(air)
    task = {**_ATTEMPT_FIELDS, "positivePrompt": "x", **json.loads(shape_json)}
    errors = list(full.iter_errors(task))
    own_size_error = any(
        e.absolute_path and e.absolute_path[0] in ("width", "height") for e in errors
    )
    found: list[tuple[str, str]] = []
    for error in errors:
        if error.validator == "anyOf" and not error.absolute_path and own_size_error:
            continue  # width or height is already reported on its own
        found.append(describe(error, model))
    return tuple(found) + tuple(_image_input_problems(task))


def _image_input_problems(task: dict[str, Any]) -> list[tuple[str, str]]:
    """Reference images that are neither a local file nor something Runware takes as an image."""
    inputs = task.get("inputs")
    refs = inputs.get("referenceImages") if isinstance(inputs, dict) else None
    found: list[tuple[str, str]] = []
    for i, ref in enumerate(refs if isinstance(refs, list) else []):
        value, path = ref, f"inputs.referenceImages[{i}]"
        if isinstance(ref, dict):
            value, path = ref.get("image"), path + ".image"
        if isinstance(value, str) and value and not is_local_file(value):
            why = image_input_problem(value)
            if why:
                found.append((path, f"{_clip(value)} {why}"))
    return found


def _clip(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def cell_text(cell: Cell) -> str:
    """A cell as problems name it: `cell 3 (settings.creativity=raw, seed=42)`."""
    axes = ", ".join([*(f"{k}={v}" for k, v in cell.axes.items()), f"seed={cell.seed}"])
    return f"cell {cell.index} ({axes})"


@dataclass
class ProblemLog:
    """Problems grouped by (path, message): 4,000 cells sharing one mistake say it once."""

    groups: dict[tuple[str, str], list[Cell]] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, cell: Cell, problems: list[tuple[str, str]]) -> None:
        """Record a cell's problems."""
        for key in problems:
            self.counts[key] = self.counts.get(key, 0) + 1
            examples = self.groups.setdefault(key, [])
            if len(examples) < _EXAMPLES_PER_PROBLEM:
                examples.append(cell)

    def lines(self) -> list[str]:
        """One line per example cell, then a count of the rest."""
        out: list[str] = []
        for key, cells in self.groups.items():
            path, message = key
            for cell in cells:
                out.append(f"  {cell_text(cell)}: {path}: {message}")
            rest = self.counts[key] - len(cells)
            if rest:
                out.append(f"  … and {rest} more cell(s) with {path}: {message}")
        return out

    def raise_if_any(self) -> None:
        """Raise ValidationFailed with every problem when there are any."""
        if self.groups:
            raise ValidationFailed(self.lines(), total=sum(self.counts.values()))


def validate_cells(cells: Iterable[Cell], log: ProblemLog | None = None) -> Iterator[Cell]:
    """Yield every cell; valid or not, problems are collected and raised once the stream ends."""
    log = log if log is not None else ProblemLog()
    for cell in cells:
        try:
            problems = request_problems(cell.request)
        except UnknownModel as exc:
            raise UnknownModel(f"{cell_text(cell)}: {exc}; nothing was sent") from None
        if problems:
            log.add(cell, problems)
        yield cell
    log.raise_if_any()
