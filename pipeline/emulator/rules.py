"""Request validation with each registered model's JSON Schema, answered as Runware errors.

Runware reports one error per failed task: `code` (`invalidWidth`, `missingPositivePrompt`,
`unsupportedParameter`, …), a human `message` in Runware's wording ("Invalid value for 'width'
parameter. …"), the `parameter` (a request path, or a list for the width×height pair), bounds
(`min`/`max`, `allowedValues`, `type`) and the task's `taskType`/`taskUUID`. The schema decides
what is valid; this module only picks the most useful violation and phrases it.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from pipeline import models
from pipeline.models import Model
from pipeline.sweep import format_path

_ASPECTS = {
    "1024x1024": "1:1",
    "1184x896": "4:3",
    "1248x832": "3:2",
    "1376x768": "16:9",
    "1568x672": "2.35:1",
    "928x1152": "4:5",
    "832x1248": "2:3",
    "768x1376": "9:16",
}
_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
}


class TaskError(Exception):
    """One task's failure: the HTTP status it implies and its Runware error object."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        self.status = status
        self.error = error
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")


def task_error(
    status: int, code: str, message: str, task: dict[str, Any] | None = None, **extra: Any
) -> TaskError:
    """Build a TaskError with Runware's field names (None-valued extras are left out)."""
    error: dict[str, Any] = {"code": code, "message": message}
    error.update({k: v for k, v in extra.items() if v is not None})
    if task is not None:
        for key in ("taskType", "taskUUID"):
            if isinstance(task.get(key), str):
                error[key] = task[key]
    return TaskError(status, error)


@cache
def _validator(air: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(models.get(air).request_schema())


def allowed_sizes(model: Model) -> dict[str, str]:
    """Aspect label → "WxH" for every size the model's schema allows, e.g. {"1:1": "1024x1024"}."""
    sizes = model.request_schema()["x-allowedSizes"]
    return {_ASPECTS.get(size, size): size for size in sizes}


def _leaf(parts: list[str | int]) -> str:
    names = [p for p in parts if isinstance(p, str)]
    return names[-1] if names else "request"


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def validate_inference(task: dict[str, Any]) -> None:
    """Raise a 400 TaskError for the first problem of an imageInference task, if any.

    Every registered model is served, each checked against its own schema; any other model is
    Runware's `unknownModel`, listing the ones this server runs.
    """
    air = task.get("model")
    if air is None:
        raise task_error(
            400, "missingModel", "Missing required parameter 'model'.", task, parameter="model"
        )
    if not isinstance(air, str) or air not in models.known():
        raise task_error(
            400,
            "unknownModel",
            f"Unknown model {_fmt(air)}. This server only runs {', '.join(models.known())}.",
            task,
            parameter="model",
            allowedValues=list(models.known()),
        )
    model = models.get(air)
    errors = list(_validator(air).iter_errors(task))
    if errors:
        raise _describe(min(errors, key=_rank), task, model)


def _rank(error: ValidationError) -> tuple[int, int, str]:
    """Missing fields first, then unknown keys, then field values; the size pair last."""
    order = {"required": 0, "additionalProperties": 1}
    root_any_of = error.validator == "anyOf" and not error.absolute_path
    rank = 3 if root_any_of else order.get(str(error.validator), 2)
    return (rank, len(error.absolute_path), format_path(error.absolute_path))


def _describe(error: ValidationError, task: dict[str, Any], model: Model) -> TaskError:
    path = list(error.absolute_path)
    validator = str(error.validator)
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance: Any = error.instance
    rule: Any = error.validator_value
    leaf = _leaf(path)
    where = format_path(path)
    invalid = f"Invalid value for '{leaf}' parameter."

    if validator == "required":
        missing = next((r for r in rule if r not in instance), "?")
        param = format_path([*path, missing])
        message = f"Missing required parameter '{missing}'."
        return task_error(400, f"missing{_cap(missing)}", message, task, parameter=param)
    if validator == "additionalProperties":
        known = set(schema.get("properties", {}))
        extra = next((k for k in instance if k not in known), "?")
        param = format_path([*path, extra])
        return task_error(
            400,
            "unsupportedParameter",
            f"Unsupported parameter '{param}': {model.air} does not accept it.",
            task,
            parameter=param,
        )
    if validator == "anyOf" and not path:
        sizes = allowed_sizes(model)
        listed = ", ".join(f"{s} ({a})" for a, s in sizes.items())
        got = f"{task.get('width')}x{task.get('height')}"
        return task_error(
            400,
            "invalidDimensions",
            f"Invalid combination of 'width' and 'height' parameters ({got}). "
            f"Supported sizes: {listed}.",
            task,
            parameter=["width", "height"],
            allowedValues=sizes,
        )
    if validator == "anyOf":
        return _describe_any_of(error, task, model)
    code = f"invalid{_cap(leaf)}"
    if leaf in ("width", "height") and validator in ("enum", "type"):
        sizes = allowed_sizes(model)
        values = sorted({int(s.split("x")[0 if leaf == "width" else 1]) for s in sizes.values()})
        listed = ", ".join(f"{s} ({a})" for a, s in sizes.items())
        return task_error(
            400,
            code,
            f"{invalid} Image {leaf} must be an integer, one of "
            f"{', '.join(map(str, values))}, paired as width x height: {listed}.",
            task,
            parameter=where,
            type="integer",
            allowedValues=values,
        )
    if validator in ("enum", "const"):
        values = schema.get("enum", [schema.get("const")])
        return task_error(
            400,
            code,
            f"{invalid} Allowed values: {', '.join(_fmt(v) for v in values)}; "
            f"got {_fmt(error.instance)}.",
            task,
            parameter=where,
            allowedValues=values,
        )
    if validator == "type":
        expected = str(schema.get("type"))
        return task_error(
            400,
            code,
            f"{invalid} Expected {_TYPE_NAMES.get(expected, expected)}, "
            f"got {_fmt(error.instance)}.",
            task,
            parameter=where,
            type=expected,
        )
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        kind = "an integer" if schema.get("type") == "integer" else "a number"
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        if lo is None:
            bounds = f"at most {hi}"
        return task_error(
            400,
            code,
            f"{invalid} Must be {kind} {bounds}; got {error.instance}.",
            task,
            parameter=where,
            min=lo,
            max=hi,
        )
    if validator in ("minItems", "maxItems"):
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        return task_error(
            400,
            code,
            f"{invalid} Expected {bounds} items, got {len(instance)}.",
            task,
            parameter=where,
            min=lo,
            max=hi,
        )
    if validator in ("minLength", "maxLength"):
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        detail = "must not be empty" if lo == 1 and hi is None else f"length must be ≥ {lo}"
        return task_error(
            400, code, f"{invalid} The value {detail}.", task, parameter=where, min=lo, max=hi
        )
    if validator == "pattern" and leaf == "taskUUID":
        return task_error(400, code, f"{invalid} Must be a UUID v4.", task, parameter=where)
    if validator == "pattern":
        return task_error(400, code, f"{invalid} Must be an http(s) URL.", task, parameter=where)
    return task_error(400, code, f"{invalid} {error.message}", task, parameter=where)


def _describe_any_of(error: ValidationError, task: dict[str, Any], model: Model) -> TaskError:
    """An item that matches no branch (a reference image): report the branch of its own type."""
    want = "object" if isinstance(error.instance, dict) else "string"
    branches: Any = error.validator_value
    branch = [
        e
        for e in error.context or []
        if e.schema_path
        and isinstance(e.schema, dict)
        and branches[e.schema_path[0]].get("type") == want
    ]
    if branch and isinstance(error.instance, (dict, str)):
        return _describe(min(branch, key=_rank), task, model)
    path = list(error.absolute_path)
    leaf = _leaf(path)
    return task_error(
        400,
        f"invalid{_cap(leaf)}",
        f"Invalid value for '{leaf}' parameter. Each item must be an image "
        "(UUID, URL, data URI or base64) or an object {image, strength}.",
        task,
        parameter=format_path(path),
    )
