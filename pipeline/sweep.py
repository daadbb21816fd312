"""Sweep files → cells: the grammar, its checks, and a pure, streaming, deterministic expansion.

A sweep (the `sweep:` config node, as plain data) is checked once by `load_sweep`, which reports
every grammar problem at once; `expand` then yields `Cell`s lazily in a fixed order. The rules:

* Axis keys are request paths (`settings.creativity`, `inputs.referenceImages[0].strength`) or
  `vars.NAME`. In one cell the assignments are applied shortest path first, so a whole-list axis
  (`inputs.referenceImages`) picks a list and a deeper axis (`…[0].strength`) then edits it.
  Setting a path creates missing dicts; a list index must exist; `null` deletes the key (not
  allowed on a list index: sweep the whole list instead).
* Order: product cells first: the first `grid` key varies slowest, then each `zip` group (one
  dimension per group), then `seeds` (fastest). Then the `include` cells, in file order.
  `Cell.index` counts the cells actually yielded (after exclude and sample).
* `exclude`: each entry is a partial assignment over swept axes (and `seed` when `seeds` is set);
  a product cell matching every pair of one entry is dropped. Values compare by canonical JSON
  with integral floats read as ints (1 == 1.0), as written in the file (relative image paths).
* `include`: each entry is a partial assignment over `base` (NOT over a product cell): the cell is
  `base` + `vars:` defaults + the entry, crossed with `seeds` unless the entry sets `seed`. Include
  cells are appended after the product cells; `exclude` and `sample` do not touch them. An include
  that repeats a product cell or an earlier include is an error. Keys that are not grid/zip axes
  become extra axis columns (after the grid and zip keys); every cell reports every axis column,
  read from its own request when the cell does not set it.
* `sample: {n, seed}`: `n` cells drawn without replacement from the product after `exclude`
  (`random.Random(seed).sample` over the index space, so a million-cell product is never built),
  kept in expansion order; `seed` defaults to the master seed. `n` at least the number of cells
  keeps them all. Includes are added after the sample.
* Seeds: `seeds: [..]` or `{count, start}` is the fastest dimension. Without it a `seed` in `base`
  or on an axis is used; otherwise each cell gets sha256(master seed, canonical request without
  seed, local files by content) mod 2**32, so reruns and edits that leave a cell alone keep its
  seed. Seeds lie in 0..2**63-1.
* Values from files: `{file: x.txt}` is one value per line (blank and `#` lines skipped);
  `{file: x.csv, column: C}` one CSV column; a zip group `{file: x.csv}` zips every column (the
  header names the axis paths) and `{file: x.csv, columns: {path: column}}` chosen ones. Text read
  from files is typed: integers and decimals become numbers and true/false booleans, except for
  `positivePrompt` and `vars.*`, which stay text; an empty CSV field is "" for those and null
  (delete the key) for the rest.
* `vars` fill `{name}` in `positivePrompt` (`{{` and `}}` are literal braces) and are never sent.
* Local reference images are made absolute against the sweep file's folder and hashed by content
  (cached per path, mtime and size); `cell_id` hashes the content, not the path.

* Numbers: integral floats are sent as ints (`strength: 1.0` → 1), so 1 and 1.0 give one id.
* Checks at load time, besides the grammar: every template variable has a value; a swept
  variable changes some prompt; no axis repeats a value and no zip row repeats another; every
  deep axis path can be set on base under each value of the axes above it (combinations an
  exclude entry might remove are left to expansion, which raises ConfigError naming the cell).
  Expansion does not de-duplicate requests beyond these checks.

`Cell.request` objects share unchanged nested dicts and lists with the sweep and with each other:
only the top-level dict is the cell's own. Copy a nested object before changing it.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import itertools
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.canonical import canonical_json
from pipeline.errors import ConfigError
from pipeline.images import read_reference
from pipeline.protocol import CLIENT_DEFAULTS, CLIENT_FIELDS
from pipeline.resources import SCHEMA_DIR

SCHEMA_PATH = SCHEMA_DIR / "sweep.schema.json"
PER_ATTEMPT_FIELDS = frozenset(
    {*CLIENT_FIELDS, *CLIENT_DEFAULTS, "webhookURL", "uploadEndpoint", "ttl"}
)
SEED_MAX = 2**63 - 1
DERIVED_SEED_RANGE = 2**32  # derived seeds stay in Runware's own default range (uint32)
CELL_ID_LENGTH = 20
MAX_CELLS = 1_000_000  # cells one sweep may expand to (counted from its shape, before expanding)
_ENUMERATE_LIMIT = 2_000_000  # product cells up to which many excludes are counted one by one

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]*://")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME_RE = re.compile(_NAME + r"\Z")
_PATH_RE = re.compile(rf"{_NAME}(?:\[\d+\])*(?:\.{_NAME}(?:\[\d+\])*)*\Z")
_TOKEN_RE = re.compile(rf"({_NAME})|\[(\d+)\]")
_TEMPLATE_RE = re.compile(r"\{\{|\}\}|\{(" + _NAME + r")\}|[{}]")
_SWEEP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_INT_RE = re.compile(r"[-+]?\d+\Z")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?\Z")
_PROBE_LIMIT = 4096  # ancestor-value combinations probed per deep axis at load time
_MAX_PER_AXIS = 3  # probe messages per axis before "… and more"
_IE_LIMIT = 12  # exclude entries up to which the excluded count uses inclusion–exclusion

Token = str | int


class _Missing:
    """Marker for a path that is not present."""


_MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Cell:
    """One expanded request: its position, axis values, request, seed and content id."""

    index: int
    axes: dict[str, Any]
    request: dict[str, Any]
    seed: int
    cell_id: str


@dataclass(frozen=True, slots=True)
class Axis:
    """One swept path with its values: as sent (`values`), as shown (`labels`), as matched."""

    path: str
    tokens: tuple[Token, ...]
    values: tuple[Any, ...]
    labels: tuple[Any, ...]
    keys: tuple[str, ...]
    where: str

    @property
    def is_var(self) -> bool:
        """Whether this axis sets a template variable rather than a request field."""
        return self.tokens[0] == "vars"


@dataclass(frozen=True, slots=True)
class Sample:
    """A seeded random subset of the product cells."""

    n: int
    seed: int


@dataclass(frozen=True, slots=True)
class _Include:
    """One include entry: its assignments (shortest path first) and what it sets."""

    where: str
    assigns: tuple[tuple[tuple[Token, ...], Any], ...]
    vars: dict[str, str]
    labels: dict[str, Any]
    sets_seed: bool


@dataclass(frozen=True)
class Sweep:
    """A parsed and checked sweep; `expand` turns it into cells."""

    name: str
    description: str
    master_seed: int
    base: dict[str, Any]
    vars: dict[str, Any]
    grid: tuple[Axis, ...]
    zip: tuple[tuple[Axis, ...], ...]
    seeds: Sequence[int] | None
    sample: Sample | None
    exclude: tuple[dict[str, Any], ...]
    include: tuple[dict[str, Any], ...]
    base_dir: Path
    axis_names: list[str]
    program: _Program = field(repr=False, compare=False)

    @property
    def models(self) -> list[str]:
        """Every model AIR a cell can name (base, axes, includes), each once, in file order."""
        found: list[Any] = [self.base.get("model")]
        for axis in (*self.grid, *(axis for group in self.zip for axis in group)):
            if axis.path == "model":
                found += axis.values
        found += [entry.get("model") for entry in self.include]
        return list(dict.fromkeys(m for m in found if isinstance(m, str)))


# --------------------------------------------------------------------------- public helpers


def is_local_file(value: str) -> bool:
    """Whether an image input names a local file (design.md rule)."""
    if not isinstance(value, str) or len(value) >= 1024 or _UUID_RE.match(value):
        return False
    low = value.lower()
    if low.startswith("data:") or _SCHEME_RE.match(low):  # a URL of any scheme is no file
        return False
    return low.endswith(_IMAGE_EXTENSIONS)


def cell_id_of(request: dict[str, Any], base_dir: Path | None = None) -> str:
    """20 hex of sha256 of the canonical request: local files by content, no attempt fields."""
    root = Path.cwd() if base_dir is None else base_dir

    def lookup(value: str) -> str | None:
        if not is_local_file(value):
            return None
        path = _absolute(value, root)
        try:
            return "sha256:" + file_sha256(path)
        except OSError as exc:
            raise ConfigError(f"reference image {value!r} ({path}): {_os_reason(exc)}") from exc
        except ValueError as exc:
            raise ConfigError(f"reference image {value!r} ({path}) {exc}") from exc

    return _digest(canonical_json(_id_view(request, lookup)))


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """Hex sha256 of a reference image file, cached per (path, mtime, size).

    OSError: the file is not there; ValueError: it cannot be a reference image (not a regular
    file, empty, too large, or not an image by its first bytes; see images.read_reference).
    """
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    digest = _HASHES.get(key)
    if digest is None:
        digest = hashlib.sha256(read_reference(path)).hexdigest()
        _HASHES[key] = digest
    return digest


def parse_path(path: str) -> tuple[Token, ...]:
    """Split `a.b[0].c` into ("a", "b", 0, "c"); ValueError when it is not a path."""
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise ValueError(f"{path!r} is not a request path (like settings.creativity or a.b[0].c)")
    return tuple(m[1] if m[1] is not None else int(m[2]) for m in _TOKEN_RE.finditer(path))


def format_path(tokens: Iterable[Token]) -> str:
    """Render path tokens (or a jsonschema error's path) as `a.b[0].c`; "" for none."""
    out = ""
    for tok in tokens:
        out += f"[{tok}]" if isinstance(tok, int) else (f".{tok}" if out else str(tok))
    return out


# --------------------------------------------------------------------------- small pure pieces


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:CELL_ID_LENGTH]


def _derive_seed(master: int, canonical: str) -> int:
    digest = hashlib.sha256(f"{master}|{canonical}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % DERIVED_SEED_RANGE


def _norm(value: Any) -> Any:
    """Integral floats as ints, recursively (so 1.0 and 1 are the same value)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


def _match_key(value: Any) -> str:
    return canonical_json(_norm(value))


def _label(value: Any) -> Any:
    return canonical_json(value) if isinstance(value, dict | list) else value


def _show(value: Any, limit: int = 60) -> str:
    text = canonical_json(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt_value(value: Any) -> str:
    return value if isinstance(value, str) else canonical_json(value)


def _fmt_axes(axes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in axes.items()) or "no axes"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _absolute(value: str, base_dir: Path) -> str:
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))


def _is_image_position(tokens: Sequence[Token]) -> bool:
    n = len(tokens)
    if n < 3 or tokens[0] != "inputs" or tokens[1] != "referenceImages":
        return False
    return isinstance(tokens[2], int) and (n == 3 or (n == 4 and tokens[3] == "image"))


def _id_view(request: dict[str, Any], lookup: Callable[[str], str | None]) -> dict[str, Any]:
    """The request as hashed: no per-attempt fields, local images replaced by their content hash."""
    view = request
    if not PER_ATTEMPT_FIELDS.isdisjoint(request):
        view = {k: v for k, v in request.items() if k not in PER_ATTEMPT_FIELDS}
    inputs = view.get("inputs")
    refs = inputs.get("referenceImages") if type(inputs) is dict else None
    if type(refs) is not list:
        return view
    changed = False
    out: list[Any] = []
    for item in refs:
        if type(item) is str:
            digest = lookup(item)
            if digest is not None:
                item, changed = digest, True
        elif type(item) is dict and type(item.get("image")) is str:
            digest = lookup(item["image"])
            if digest is not None:
                item, changed = {**item, "image": digest}, True
        out.append(item)
    if not changed:
        return view
    if view is request:
        view = dict(request)
    assert inputs is not None
    view["inputs"] = {**inputs, "referenceImages": out}
    return view


class _PathError(Exception):
    """A path that cannot be set, or a template variable without a value, in one request."""


def _set_deep(
    root: dict[str, Any], tokens: tuple[Token, ...], value: Any, fresh: set[int] | None
) -> set[int]:
    """Set (or delete, for None) `tokens` in `root`, copying shared containers on the way."""
    if fresh is None:
        fresh = set()
    cur: Any = root
    last = len(tokens) - 1
    for i in range(last):
        tok = tokens[i]
        if isinstance(tok, str):
            if type(cur) is not dict:
                raise _PathError(f"{format_path(tokens[:i]) or 'the request'} is not an object")
            child = cur.get(tok)
            if child is None:
                if type(tokens[i + 1]) is int:
                    raise _PathError(
                        f"{format_path(tokens[: i + 1])} is missing, so index "
                        f"[{tokens[i + 1]}] is past its end"
                    )
                child = {}
                cur[tok] = child
                fresh.add(id(child))
                cur = child
                continue
        else:
            if type(cur) is not list:
                raise _PathError(f"{format_path(tokens[:i])} is not a list")
            if tok >= len(cur):
                raise _PathError(
                    f"index [{tok}] is past the end of {format_path(tokens[:i])} "
                    f"({len(cur)} item(s))"
                )
            child = cur[tok]
        if id(child) not in fresh:
            if type(child) is dict:
                child = dict(child)
            elif type(child) is list:
                child = list(child)
            else:
                raise _PathError(f"{format_path(tokens[: i + 1])} is not an object or list")
            cur[tok] = child
            fresh.add(id(child))
        cur = child
    tok = tokens[last]
    if isinstance(tok, str):
        if type(cur) is not dict:
            raise _PathError(f"{format_path(tokens[:last]) or 'the request'} is not an object")
        if value is None:
            cur.pop(tok, None)
        else:
            cur[tok] = value
    else:
        if type(cur) is not list:
            raise _PathError(f"{format_path(tokens[:last])} is not a list")
        if tok >= len(cur):
            raise _PathError(
                f"index [{tok}] is past the end of {format_path(tokens[:last])} "
                f"({len(cur)} item(s))"
            )
        cur[tok] = value
    return fresh


def _unresolve(value: Any, written: dict[str, str]) -> Any:
    """A value with absolute local file paths put back as the sweep file wrote them."""
    if isinstance(value, dict):
        return {k: _unresolve(v, written) for k, v in value.items()}
    if isinstance(value, list):
        return [_unresolve(v, written) for v in value]
    if isinstance(value, str):
        return written.get(value, value)
    return value


def _get_path(root: Any, tokens: Sequence[Token]) -> Any:
    cur = root
    for tok in tokens:
        if isinstance(tok, str):
            if type(cur) is not dict or tok not in cur:
                return _MISSING
        elif type(cur) is not list or tok >= len(cur):
            return _MISSING
        cur = cur[tok]
    return cur


@dataclass(frozen=True, slots=True)
class _Template:
    """A parsed positivePrompt: literals at even positions, variable names at odd ones."""

    parts: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The variables this template uses."""
        return self.parts[1::2]

    def render(self, values: dict[str, str]) -> str:
        """Fill the template (KeyError names a variable with no value)."""
        parts = self.parts
        return "".join(p if i % 2 == 0 else values[p] for i, p in enumerate(parts))


def _parse_template(text: str) -> _Template | str:
    """A template with variables, or the plain text with `{{`/`}}` unescaped; ValueError if bad."""
    parts: list[str] = []
    literal: list[str] = []
    pos = 0
    for m in _TEMPLATE_RE.finditer(text):
        literal.append(text[pos : m.start()])
        token = m[0]
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif m[1] is not None:
            parts.append("".join(literal))
            parts.append(m[1])
            literal = []
        else:
            raise ValueError(
                f"stray {token!r} at character {m.start()}: write {{name}} for a variable, "
                "{{ or }} for a literal brace"
            )
        pos = m.end()
    literal.append(text[pos:])
    if not parts:
        return "".join(literal)
    parts.append("".join(literal))
    return _Template(tuple(parts))


def _var_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _typed(text: str, path: str) -> Any:
    """A value read from a text or CSV file, typed by the rules in the module docstring."""
    if path == "positivePrompt" or path.startswith("vars."):
        return text
    if text == "":
        return None
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


# --------------------------------------------------------------------------- the sweep file schema


@cache
def sweep_schema() -> dict[str, Any]:
    """The JSON Schema of a sweep file (schemas/sweep.schema.json)."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


@cache
def _top_validator() -> jsonschema.Draft202012Validator:
    """The sweep schema cut to its top level: allowed keys, their types, required keys."""
    schema = sweep_schema()
    props = {
        key: {"type": sub["type"]} if "type" in sub else {}
        for key, sub in schema["properties"].items()
    }
    top = {
        "type": "object",
        "additionalProperties": False,
        "required": schema.get("required", []),
        "properties": props,
    }
    return jsonschema.Draft202012Validator(top)


def _schema_problems(spec: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Top-level problems from the sweep schema, and the keys whose value has the wrong type."""
    problems: list[str] = []
    bad: set[str] = set()
    allowed = list(sweep_schema()["properties"])
    for err in sorted(_top_validator().iter_errors(spec), key=lambda e: str(e.path)):
        if err.validator == "additionalProperties":
            for key in sorted(set(spec) - set(allowed), key=str):
                near = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append(
                    f"unknown top-level key {key!r}{hint}; allowed: {', '.join(allowed)}"
                )
        elif err.validator == "type" and err.path:
            key = str(err.path[0])
            bad.add(key)
            want = err.validator_value
            want = " or ".join(want) if isinstance(want, list) else want
            problems.append(f"{key}: must be {want}, got {_show(err.instance)}")
        elif err.validator == "required":
            problems.append(f"missing top-level key: {err.message}")
        else:
            problems.append(f"{format_path(list(err.path)) or 'sweep'}: {err.message}")
    return problems, bad


# --------------------------------------------------------------------------- loading


class _Loader:
    """Collects problems while turning the sweep's raw values into prepared ones."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.local: dict[str, str] = {}  # absolute path -> "sha256:<hex>"
        self.written: dict[str, str] = {}  # absolute path -> the path as first written
        self.templates: dict[str, _Template | str] = {}
        self.template_where: dict[str, str] = {}

    def problem(self, text: str) -> None:
        """Record one problem."""
        self.problems.append(text)

    def prepare(self, value: Any, tokens: tuple[Token, ...], where: str) -> Any:
        """Normalize numbers, resolve local images, parse prompts; record what is wrong."""
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.problem(f"{where}: key {k!r} must be text")
                    continue
                out[k] = self.prepare(v, (*tokens, k), where)
            return out
        if isinstance(value, list):
            return [self.prepare(v, (*tokens, i), where) for i, v in enumerate(value)]
        if type(value) is float:
            if value != value or value in (float("inf"), float("-inf")):
                self.problem(f"{where}: {format_path(tokens)}: {value} is not a finite number")
                return value
            return int(value) if value.is_integer() else value
        if isinstance(value, str):
            if tokens == ("positivePrompt",):
                self.template(value, where)
            elif _is_image_position(tokens) and is_local_file(value):
                return self.resolve(value, f"{where}: {format_path(tokens)}")
        elif value is not None and not isinstance(value, bool | int):
            self.problem(f"{where}: {format_path(tokens)}: {_show(value)} is not a JSON value")
        return value

    def template(self, text: str, where: str) -> None:
        """Parse a positivePrompt once."""
        if text in self.templates:
            return
        try:
            self.templates[text] = _parse_template(text)
            self.template_where[text] = where
        except ValueError as exc:
            self.problem(f"{where}: positivePrompt {_show(text)}: {exc}")
            self.templates[text] = text

    def resolve(self, value: str, where: str) -> str:
        """A local reference image as an absolute path, hashed by content."""
        path = _absolute(value, self.base_dir)
        self.written.setdefault(path, value)
        if path not in self.local:
            try:
                self.local[path] = "sha256:" + file_sha256(path)
            except OSError as exc:
                self.problem(f"{where}: reference image {value!r} ({path}): {_os_reason(exc)}")
                self.local[path] = "sha256:" + "0" * 64
            except ValueError as exc:
                self.problem(f"{where}: reference image {value!r} ({path}) {exc}")
                self.local[path] = "sha256:" + "0" * 64
        return path

    def file_path(self, raw: Any, where: str) -> Path | None:
        """A value file named in the sweep, relative to its folder."""
        if not isinstance(raw, str) or not raw:
            self.problem(f"{where}: `file` must be a file name, got {_show(raw)}")
            return None
        path = Path(_absolute(raw, self.base_dir))
        if not path.is_file():
            reason = "is not a file" if path.exists() else "file not found"
            self.problem(f"{where}: value file {raw!r} ({path}): {reason}")
            return None
        return path

    def read_lines(self, path: Path, where: str) -> list[str] | None:
        """One value per line; blank lines and `#` comment lines skipped."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(f"{where}: cannot read {path}: {exc}")
            return None
        lines = [ln.strip() for ln in text.splitlines()]
        values = [ln for ln in lines if ln and not ln.startswith("#")]
        if not values:
            self.problem(f"{where}: {path} has no values")
            return None
        return values

    def read_csv(self, path: Path, where: str) -> tuple[list[str], list[list[str]]] | None:
        """Header and rows of a CSV file (fields stripped, blank rows skipped)."""
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                rows = [[f.strip() for f in row] for row in csv.reader(handle)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            self.problem(f"{where}: cannot read {path}: {exc}")
            return None
        rows = [r for r in rows if any(r)]
        if not rows:
            self.problem(f"{where}: {path} is empty")
            return None
        header, body = rows[0], rows[1:]
        ok = True
        if any(not h for h in header) or len(set(header)) != len(header):
            self.problem(f"{where}: {path}: the header needs distinct, non-empty column names")
            ok = False
        for number, row in enumerate(body, 2):
            if len(row) != len(header):
                self.problem(
                    f"{where}: {path} row {number} has {len(row)} field(s), "
                    f"the header {len(header)}"
                )
                ok = False
        if not body:
            self.problem(f"{where}: {path} has a header but no rows")
            ok = False
        return (header, body) if ok else None


def _check_axis_path(loader: _Loader, raw: Any, where: str) -> tuple[Token, ...] | None:
    """Parse a path key and apply the rules on which fields a sweep may set."""
    try:
        tokens = parse_path(raw)
    except ValueError as exc:
        loader.problem(f"{where}: {exc}")
        return None
    head = tokens[0]
    if head in CLIENT_FIELDS:
        loader.problem(f"{where}: {raw} cannot be set in a sweep ({CLIENT_FIELDS[str(head)]})")
        return None
    if head == "vars" and (len(tokens) != 2 or not isinstance(tokens[1], str)):
        loader.problem(f"{where}: {raw!r}: a template variable is written vars.NAME")
        return None
    if head == "seed" and len(tokens) != 1:
        loader.problem(f"{where}: {raw!r}: seed is a number, it has no parts")
        return None
    return tokens


def _check_value(
    loader: _Loader, path: str, tokens: tuple[Token, ...], value: Any, where: str
) -> bool:
    """Rules for one value at one path (vars scalars, seed range, no null on a list index)."""
    if tokens[0] == "vars":
        if value is None or isinstance(value, dict | list):
            loader.problem(
                f"{where}: {path} = {_show(value)}: a template variable must be text or a number"
            )
            return False
    elif tokens == ("seed",):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX
        ):
            loader.problem(f"{where}: seed {_show(value)} must be an integer in 0..2**63-1")
            return False
    elif value is None and isinstance(tokens[-1], int):
        loader.problem(
            f"{where}: {path} = null: a list item cannot be deleted by index; "
            "sweep the whole list instead"
        )
        return False
    return True


def _make_axis(
    loader: _Loader, path: str, tokens: tuple[Token, ...], raw_values: list[Any], where: str
) -> Axis | None:
    """Prepare an axis's values; duplicates (same value twice) are a problem."""
    axis = _make_axis_rows(loader, path, tokens, raw_values, where, item="value")
    if axis is None:
        return None
    seen: dict[str, int] = {}
    ok = True
    for i, value in enumerate(axis.values):
        key = _match_key(value)
        if key in seen:
            loader.problem(
                f"{where} {path!r}: values #{seen[key]} and #{i} are the same "
                f"({_show(raw_values[i])}); each value must differ"
            )
            ok = False
        seen.setdefault(key, i)
    return axis if ok else None


def _source_values(loader: _Loader, raw: Any, path: str, where: str) -> list[Any] | None:
    """An axis's list of values: a list, a text file, or one CSV column."""
    spot = f"{where} {path!r}"
    if isinstance(raw, list):
        if not raw:
            loader.problem(f"{spot}: the list of values is empty")
            return None
        return raw
    if isinstance(raw, dict) and "file" in raw:
        unknown = set(raw) - {"file", "column"}
        if unknown:
            loader.problem(
                f"{spot}: unknown key(s) {sorted(unknown)} (a file source has file, column)"
            )
            return None
        file = loader.file_path(raw["file"], spot)
        if file is None:
            return None
        if file.suffix.lower() == ".csv":
            table = loader.read_csv(file, spot)
            if table is None:
                return None
            header, rows = table
            column = raw.get("column")
            if column is None and len(header) == 1:
                column = header[0]
            if column not in header:
                loader.problem(
                    f"{spot}: {raw['file']} needs `column:` naming one of its columns "
                    f"({', '.join(header)}), got {_show(column)}"
                )
                return None
            col = header.index(column)
            return [_typed(row[col], path) for row in rows]
        if "column" in raw:
            loader.problem(f"{spot}: `column` is only for a .csv file")
            return None
        lines = loader.read_lines(file, spot)
        return None if lines is None else [_typed(v, path) for v in lines]
    loader.problem(f"{spot}: must be a list of values (or {{file: values.txt}}), got {_show(raw)}")
    return None


def _load_grid(loader: _Loader, grid: dict[str, Any]) -> list[Axis]:
    axes: list[Axis] = []
    for path, raw in grid.items():
        tokens = _check_axis_path(loader, path, f"grid key {path!r}")
        values = _source_values(loader, raw, str(path), "grid")
        if tokens is None or values is None:
            continue
        axis = _make_axis(loader, path, tokens, values, "grid")
        if axis is not None:
            axes.append(axis)
    return axes


def _csv_group(loader: _Loader, group: dict[str, Any], where: str) -> dict[str, list[Any]] | None:
    """A zip group read from a CSV file: every column, or the mapped ones."""
    unknown = set(group) - {"file", "columns"}
    if unknown:
        loader.problem(
            f"{where}: a CSV group has only `file` and `columns`; move {sorted(unknown)} "
            "into another group or the grid"
        )
        return None
    file = loader.file_path(group["file"], where)
    if file is None:
        return None
    if file.suffix.lower() != ".csv":
        loader.problem(f"{where}: {group['file']!r} must be a .csv file (a text file needs a key)")
        return None
    table = loader.read_csv(file, where)
    if table is None:
        return None
    header, rows = table
    columns = group.get("columns")
    if columns is None:
        mapping = {h: h for h in header}
    elif isinstance(columns, dict) and columns:
        mapping = {}
        for path, column in columns.items():
            if column not in header:
                loader.problem(
                    f"{where}: column {_show(column)} (for {path}) is not in {group['file']} "
                    f"(columns: {', '.join(header)})"
                )
            else:
                mapping[path] = column
        if len(mapping) != len(columns):
            return None
    else:
        loader.problem(f"{where}: `columns` must map axis paths to column names")
        return None
    return {
        path: [_typed(row[header.index(col)], str(path)) for row in rows]
        for path, col in mapping.items()
    }


def _load_zip(loader: _Loader, groups: list[Any]) -> list[tuple[Axis, ...]]:
    out: list[tuple[Axis, ...]] = []
    for g, group in enumerate(groups):
        where = f"zip[{g}]"
        if not isinstance(group, dict) or not group:
            loader.problem(f"{where}: must be a mapping of paths to lists, got {_show(group)}")
            continue
        lists: dict[str, list[Any]] = {}
        if "file" in group:
            read = _csv_group(loader, group, where)
            if read is None:
                continue
            lists = read
        else:
            for path, raw in group.items():
                values = _source_values(loader, raw, str(path), where)
                if values is not None:
                    lists[path] = values
            if len(lists) != len(group):
                continue
        lengths = {path: len(v) for path, v in lists.items()}
        if len(set(lengths.values())) > 1:
            loader.problem(
                f"{where}: the lists of a zip group must have the same length, got "
                + ", ".join(f"{p} {n}" for p, n in lengths.items())
            )
            continue
        axes: list[Axis] = []
        for path, values in lists.items():
            tokens = _check_axis_path(loader, path, f"{where} key {path!r}")
            if tokens is None:
                continue
            axis = _make_axis_rows(loader, path, tokens, values, where)
            if axis is not None:
                axes.append(axis)
        if len(axes) == len(lists):
            out.append(tuple(axes))
    return out


def _make_axis_rows(
    loader: _Loader,
    path: str,
    tokens: tuple[Token, ...],
    raw_values: list[Any],
    where: str,
    item: str = "row",
) -> Axis | None:
    """Prepare an axis's values; repeats are fine here (zip rows are checked as tuples)."""
    values: list[Any] = []
    ok = True
    for i, raw in enumerate(raw_values):
        spot = f"{where} {path!r} {item} #{i}"
        if not _check_value(loader, path, tokens, raw, spot):
            ok = False
            continue
        value = loader.prepare(raw, tokens, spot)
        values.append(_var_text(value) if tokens[0] == "vars" else value)
    if not ok:
        return None
    labels = tuple(_label(v) for v in raw_values)
    keys = tuple(_match_key(v) for v in raw_values)
    return Axis(path, tokens, tuple(values), labels, keys, where)


def _check_zip_rows(loader: _Loader, axes: tuple[Axis, ...], used: set[str]) -> None:
    """Two rows of a group that give the same request are a mistake (unused vars are labels)."""
    where = axes[0].where
    prompt = next((a for a in axes if a.path == "positivePrompt"), None)
    seen: dict[tuple[str, ...], int] = {}
    for row in range(len(axes[0].values)):
        row_used: tuple[str, ...] | None = None
        if prompt is not None:
            tpl = loader.templates.get(prompt.values[row]) if prompt.values[row] else None
            row_used = tpl.names if isinstance(tpl, _Template) else ()
        key = tuple(
            _match_key(a.values[row])
            for a in axes
            if not (a.is_var and a.tokens[1] not in (row_used if row_used is not None else used))
        )
        if key in seen:
            loader.problem(
                f"{where}: rows #{seen[key]} and #{row} give the same request; each row must differ"
            )
            return
        seen[key] = row


def _load_seeds(loader: _Loader, raw: Any) -> Sequence[int] | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        bad = [
            s
            for s in raw
            if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= SEED_MAX
        ]
        if not raw:
            loader.problem("seeds: the list is empty")
        elif bad:
            loader.problem(f"seeds: {_show(bad)} must be integers in 0..2**63-1")
        elif len(set(raw)) != len(raw):
            loader.problem("seeds: the list repeats a seed")
        else:
            return tuple(raw)
        return None
    if isinstance(raw, dict):
        unknown = set(raw) - {"count", "start"}
        count, start = raw.get("count"), raw.get("start", 0)
        if unknown:
            loader.problem(f"seeds: unknown key(s) {sorted(unknown)}; use {{count: N, start: S}}")
        elif not isinstance(count, int) or isinstance(count, bool) or count < 1:
            loader.problem(f"seeds.count must be a positive integer, got {_show(count)}")
        elif not isinstance(start, int) or isinstance(start, bool) or start < 0:
            loader.problem(f"seeds.start must be an integer ≥ 0, got {_show(start)}")
        elif start + count - 1 > SEED_MAX:
            loader.problem("seeds: start + count - 1 is past the largest seed 2**63-1")
        else:
            return range(start, start + count)
        return None
    loader.problem(f"seeds: must be a list of integers or {{count: N, start: S}}, got {_show(raw)}")
    return None


def _load_sample(loader: _Loader, raw: Any, master: int) -> Sample | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        loader.problem(f"sample: must be {{n: N, seed: S}} or null, got {_show(raw)}")
        return None
    unknown = set(raw) - {"n", "seed"}
    n = raw.get("n")
    seed = master if raw.get("seed") is None else raw["seed"]
    if unknown:
        loader.problem(f"sample: unknown key(s) {sorted(unknown)}; use {{n: N, seed: S}}")
    elif not isinstance(n, int) or isinstance(n, bool) or n < 1:
        loader.problem(f"sample.n must be a positive integer, got {_show(n)}")
    elif not isinstance(seed, int) or isinstance(seed, bool):
        loader.problem(f"sample.seed must be an integer, got {_show(seed)}")
    else:
        return Sample(n, seed)
    return None


def _load_vars(loader: _Loader, raw: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            loader.problem(f"vars: {name!r} is not a variable name (letters, digits, _)")
        elif value is None or isinstance(value, dict | list):
            loader.problem(f"vars.{name}: {_show(value)} must be text or a number")
        else:
            out[name] = _var_text(value)
    return out


def _load_base(loader: _Loader, raw: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "taskType":
            if value != "imageInference":
                loader.problem(
                    f"base.taskType: {_show(value)} is not allowed (only imageInference)"
                )
            continue
        if key in CLIENT_FIELDS:
            loader.problem(
                f"base.{key}: {json.dumps(value)} is not allowed in a sweep: {CLIENT_FIELDS[key]}"
            )
            continue
        if key == "vars":
            loader.problem("base.vars: template defaults go under the top-level `vars:`")
            continue
        if key == "seed" and not _check_value(loader, "seed", ("seed",), value, "base"):
            continue
        base[key] = loader.prepare(value, (key,), "base")
        if value is None:
            del base[key]
    return base


# --------------------------------------------------------------------------- the program


def _live_templates(templates: dict[str, _Template | str]) -> dict[str, _Template | str]:
    """The prompts that `fill` must rewrite (a template, or text with `{{`/`}}` unescaped)."""
    return {k: v for k, v in templates.items() if v != k}


class _Program:
    """Everything `expand` needs, precomputed once per sweep."""

    def __init__(
        self,
        name: str,
        base: dict[str, Any],
        defaults: dict[str, str],
        dims: list[tuple[Axis, ...]],
        seeds: Sequence[int] | None,
        master: int,
        templates: dict[str, _Template | str],
        local: dict[str, str],
        extra_axes: list[tuple[str, tuple[Token, ...]]],
        sample: Sample | None,
    ) -> None:
        self.name = name
        self.base = base
        self.defaults = defaults
        self.dims = dims
        self.seeds = seeds
        self.master = master
        self.sizes = [len(d[0].values) for d in dims] + ([len(seeds)] if seeds is not None else [])
        self.templates = _live_templates(templates)
        self.local = local
        self.written: dict[str, str] = {}
        self.extra_axes = extra_axes
        self.sample = sample
        self.has_var_axes = any(a.is_var for d in dims for a in d)
        order = sorted(
            ((len(a.tokens), d, p, a) for d, dim in enumerate(dims) for p, a in enumerate(dim)),
            key=lambda item: (item[0], item[1], item[2]),
        )
        self.order: list[tuple[int, int, int, str, tuple[Token, ...]]] = []
        for _, d, p, a in order:
            kind = 1 if a.is_var else (0 if len(a.tokens) == 1 else 2)
            key = str(a.tokens[1] if a.is_var else a.tokens[0])
            self.order.append((d, p, kind, key, a.tokens))
        self.values = [[a.values for a in dim] for dim in dims]
        self.axis_pairs = [
            [
                tuple((a.path, a.labels[i]) for a in dim if a.path != "seed")
                for i in range(len(dim[0].values))
            ]
            for dim in dims
        ]
        self.masks: list[tuple[int, list[int]]] = []  # (dim, mask per digit)
        self.full_mask = 0
        self.exclude_sets: list[dict[int, frozenset[int]]] = []
        self.includes: list[_Include] = []
        self.axis_names: list[str] = []
        self._chosen: list[int] | None = None
        self._survivors: int | None = None

    # ---- exclude / count / sample

    def set_exclude(self, entries: list[dict[int, frozenset[int]]]) -> None:
        """Compile exclude entries (per dimension, the digits that match) into bit masks."""
        self.exclude_sets = entries
        self.full_mask = (1 << len(entries)) - 1
        dims = sorted({d for e in entries for d in e})
        for d in dims:
            masks = []
            for digit in range(self.sizes[d]):
                m = 0
                for bit, entry in enumerate(entries):
                    if d not in entry or digit in entry[d]:
                        m |= 1 << bit
                masks.append(m)
            self.masks.append((d, masks))

    def excluded(self, digits: tuple[int, ...]) -> bool:
        """Whether a product cell matches some exclude entry."""
        m = self.full_mask
        for d, masks in self.masks:
            m &= masks[digits[d]]
            if not m:
                return False
        return m != 0

    def product_size(self) -> int:
        """Cells of the full product (seeds included)."""
        total = 1
        for s in self.sizes:
            total *= s
        return total

    def survivors(self) -> int:
        """Product cells left after exclude."""
        if self._survivors is None:
            self._survivors = self.product_size() - self._excluded_count()
        return self._survivors

    def _excluded_count(self) -> int:
        entries = self.exclude_sets
        if not entries:
            return 0
        if len(entries) > _IE_LIMIT:
            return sum(1 for t in self.all_digits() if self.excluded(t))
        total = 0
        for r in range(1, len(entries) + 1):
            for combo in itertools.combinations(entries, r):
                inter: dict[int, frozenset[int]] = {}
                for entry in combo:
                    for d, s in entry.items():
                        inter[d] = inter[d] & s if d in inter else s
                size = 1
                for d, n in enumerate(self.sizes):
                    size *= len(inter[d]) if d in inter else n
                total += size if r % 2 else -size
        return total

    def chosen(self) -> list[int] | None:
        """Sorted survivor positions picked by `sample`, or None for all of them."""
        if self.sample is None or self.sample.n >= self.survivors():
            return None
        if self._chosen is None:
            rng = random.Random(self.sample.seed)
            self._chosen = sorted(rng.sample(range(self.survivors()), self.sample.n))
        return self._chosen

    def all_digits(self) -> Iterator[tuple[int, ...]]:
        """Every digit tuple of the product, in order (the innermost range is never stored)."""
        if not self.sizes:
            yield ()
            return
        inner = range(self.sizes[-1])
        for outer in itertools.product(*(range(s) for s in self.sizes[:-1])):
            for i in inner:
                yield (*outer, i)

    def digits(self) -> Iterator[tuple[int, ...]]:
        """Digit tuples of the product cells to yield, in order."""
        chosen = self.chosen()
        if chosen is None:
            if not self.masks:
                yield from self.all_digits()
            else:
                excluded = self.excluded
                for t in self.all_digits():
                    if not excluded(t):
                        yield t
            return
        if not self.masks:
            for index in chosen:
                yield self.decode(index)
            return
        it = iter(chosen)
        want = next(it, None)
        position = 0
        for t in self.all_digits():
            if self.excluded(t):
                continue
            if position == want:
                yield t
                want = next(it, None)
                if want is None:
                    return
            position += 1

    def decode(self, index: int) -> tuple[int, ...]:
        """Mixed-radix digits of a product index (last dimension fastest)."""
        out = [0] * len(self.sizes)
        for k in range(len(self.sizes) - 1, -1, -1):
            index, out[k] = divmod(index, self.sizes[k])
        return tuple(out)

    # ---- building cells

    def build(self, digits: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, str]]:
        """The request (prompt not yet filled) and vars of a product cell."""
        req = self.base.copy()
        variables = dict(self.defaults) if self.has_var_axes else self.defaults
        values = self.values
        fresh: set[int] | None = None
        for d, p, kind, key, tokens in self.order:
            v = values[d][p][digits[d]]
            if kind == 0:
                if v is None:
                    req.pop(key, None)
                else:
                    req[key] = v
            elif kind == 1:
                variables[key] = v
            else:
                fresh = _set_deep(req, tokens, v, fresh)
        return req, variables

    def fill(self, req: dict[str, Any], variables: dict[str, str]) -> None:
        """Render the prompt template in place (_PathError: a variable without a value)."""
        if self.templates:
            tpl = self.templates.get(req.get("positivePrompt"))  # type: ignore[arg-type]
            if isinstance(tpl, str):
                req["positivePrompt"] = tpl
            elif tpl is not None:
                try:
                    req["positivePrompt"] = tpl.render(variables)
                except KeyError as exc:
                    name = exc.args[0]
                    raise _PathError(
                        f"positivePrompt uses {{{name}}} but vars.{name} has no value"
                    ) from None

    def product_axes(
        self, digits: tuple[int, ...], req: dict[str, Any], variables: dict[str, str]
    ) -> dict[str, Any]:
        """Cell.axes of a product cell."""
        axes: dict[str, Any] = {}
        for d, pairs in enumerate(self.axis_pairs):
            axes.update(pairs[digits[d]])
        for path, tokens in self.extra_axes:
            axes[path] = self.read_axis(tokens, req, variables)
        return axes

    def read_axis(
        self, tokens: tuple[Token, ...], req: dict[str, Any], variables: dict[str, str]
    ) -> Any:
        """An axis value read from a built request (None when absent), local files as written."""
        if tokens[0] == "vars":
            return variables.get(str(tokens[1]))
        value = _get_path(req, tokens)
        if value is _MISSING:
            return None
        return _label(_unresolve(value, self.written)) if self.written else _label(value)

    def finish(self, req: dict[str, Any], seed: int | None) -> tuple[int, str]:
        """Set the cell's seed (given, in the request, or derived) and compute its id."""
        local = self.local.get
        if seed is not None:
            req["seed"] = seed
        elif "seed" in req:
            seed = req["seed"]
        else:
            view = _id_view(req, local)
            seed = _derive_seed(self.master, canonical_json(view))
            req["seed"] = seed
            if view is not req:
                view["seed"] = seed
            return seed, _digest(canonical_json(view))
        return seed, _digest(canonical_json(_id_view(req, local)))

    def cells(self) -> Iterator[Cell]:
        """Every cell, in order."""
        index = 0
        has_seeds = self.seeds is not None
        seeds = self.seeds or ()
        outer: tuple[int, ...] | None = None
        built: tuple[dict[str, Any], dict[str, str]] = ({}, {})
        for t in self.digits():
            try:
                if has_seeds:
                    if t[:-1] != outer:
                        outer = t[:-1]
                        built = self.build(t)
                        self.fill(*built)
                    req = built[0].copy()
                    variables = built[1]
                    seed, cid = self.finish(req, seeds[t[-1]])
                else:
                    req, variables = self.build(t)
                    self.fill(req, variables)
                    seed, cid = self.finish(req, None)
            except _PathError as exc:
                raise self._cell_error(index, t, exc) from None
            yield Cell(index, self.product_axes(t, req, variables), req, seed, cid)
            index += 1
        yield from self.include_cells(index)

    def _cell_error(self, index: int, digits: tuple[int, ...], exc: _PathError) -> ConfigError:
        axes: dict[str, Any] = {}
        for d, pairs in enumerate(self.axis_pairs):
            axes.update(pairs[digits[d]])
        return ConfigError(f"sweep {self.name!r}: cell {index} ({_fmt_axes(axes)}): {exc}")

    def build_include(
        self, inc: _Include, fill: bool = True
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The request (prompt filled unless `fill` is false) and vars of an include entry."""
        req = self.base.copy()
        variables = {**self.defaults, **inc.vars}
        fresh: set[int] | None = None
        for tokens, value in inc.assigns:
            if len(tokens) == 1:
                if value is None:
                    req.pop(str(tokens[0]), None)
                else:
                    req[str(tokens[0])] = value
            else:
                fresh = _set_deep(req, tokens, value, fresh)
        if fill:
            self.fill(req, variables)
        return req, variables

    def include_axes(
        self, inc: _Include, req: dict[str, Any], variables: dict[str, str], names: list[str]
    ) -> dict[str, Any]:
        """Cell.axes of an include cell: what it sets, else what its request holds."""
        axes: dict[str, Any] = {}
        for path in names:
            if path in inc.labels:
                axes[path] = inc.labels[path]
            else:
                axes[path] = self.read_axis(parse_path(path), req, variables)
        return axes

    def include_cells(self, start: int, names: list[str] | None = None) -> Iterator[Cell]:
        """The include cells, crossed with seeds, numbered from `start`."""
        names = names if names is not None else self.axis_names
        index = start
        for inc in self.includes:
            try:
                req0, variables = self.build_include(inc)
            except _PathError as exc:
                raise ConfigError(f"sweep {self.name!r}: {inc.where}: {exc}") from None
            axes = self.include_axes(inc, req0, variables, names)
            seeds: Sequence[int | None] = (
                self.seeds if self.seeds is not None and not inc.sets_seed else (None,)
            )
            for s in seeds:
                req = req0.copy()
                seed, cid = self.finish(req, s)
                yield Cell(index, dict(axes), req, seed, cid)
                index += 1


# --------------------------------------------------------------------------- load_sweep


def load_sweep(spec: dict[str, Any], base_dir: Path) -> Sweep:
    """Check a sweep spec (all problems at once, as one ConfigError) and prepare it for expand."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a sweep must be a mapping of keys, got {_show(spec)}")
    loader = _Loader(Path(base_dir))
    broken = _not_unicode(spec)
    if broken:
        named = spec.get("name")
        label = (
            f"sweep {named!r}" if isinstance(named, str) and not _not_unicode(named) else "sweep"
        )
        raise ConfigError(
            f"{label}: {len(broken)} problem(s) in the sweep:\n"
            + "\n".join(f"  {b}" for b in broken)
        )
    problems, bad = _schema_problems(spec)
    loader.problems.extend(problems)

    def get(key: str, default: Any) -> Any:
        value = spec.get(key, default)
        return default if key in bad or value is None else value

    name = get("name", "")
    if name and not _SWEEP_NAME_RE.match(name):
        loader.problem(
            f"name: {name!r} must be letters, digits, '.', '_' or '-' (it names the run dir)"
        )
    master = int(get("seed", 0))
    if not 0 <= master <= SEED_MAX:
        loader.problem(f"seed: the master seed {master} must be in 0..2**63-1")
    defaults = _load_vars(loader, get("vars", {}))
    base = _load_base(loader, get("base", {}))
    grid = _load_grid(loader, get("grid", {}))
    zips = _load_zip(loader, get("zip", []))
    seeds = _load_seeds(loader, spec.get("seeds") if "seeds" not in bad else None)
    sample = _load_sample(loader, spec.get("sample") if "sample" not in bad else None, master)

    axes = [*grid, *(a for group in zips for a in group)]
    by_path: dict[str, Axis] = {}
    for axis in axes:
        if axis.path in by_path:
            loader.problem(
                f"{axis.where}: {axis.path!r} is already swept in {by_path[axis.path].where}; "
                "sweep each path once"
            )
        by_path.setdefault(axis.path, axis)
    seed_axis = by_path.get("seed")
    if seeds is not None and "seed" in base:
        loader.problem("seeds: base.seed is set too; keep one of them")
    if seeds is not None and seed_axis is not None:
        loader.problem(f"seeds: seed is also swept in {seed_axis.where}; keep one of them")

    dims: list[tuple[Axis, ...]] = [(a,) for a in grid] + list(zips)
    used = _check_templates(loader, base, defaults, dims, get("exclude", []))
    for group in zips:
        _check_zip_rows(loader, group, used)

    program = _Program(
        str(name),
        base,
        defaults,
        dims,
        seeds,
        master,
        loader.templates,
        loader.local,
        [],
        sample,
    )
    program.written = loader.written
    exclude_raw = get("exclude", [])
    include_raw = get("include", [])
    program.set_exclude(_load_exclude(loader, exclude_raw, dims, by_path, seeds))
    _probe_paths(loader, program, dims)
    includes, extra = _load_includes(loader, include_raw, program, by_path)
    program.includes = includes
    axis_names = [a.path for a in axes if a.path != "seed"]
    axis_names += [p for p in extra if p not in axis_names]
    program.extra_axes = [(p, parse_path(p)) for p in extra if p not in by_path]
    program.axis_names = axis_names
    if not loader.problems and _check_size(loader, program):
        _check_includes(loader, program)
        if program.survivors() == 0 and not includes:
            loader.problem("exclude removes every cell: the sweep has nothing to run")
    if loader.problems:
        label = f"sweep {name!r}" if name else "sweep"
        raise ConfigError(
            f"{label}: {len(loader.problems)} problem(s) in the sweep:\n"
            + "\n".join(f"  {p}" for p in loader.problems)
        )
    return Sweep(
        name=str(name),
        description=str(get("description", "")),
        master_seed=master,
        base=base,
        vars=dict(defaults),
        grid=tuple(grid),
        zip=tuple(zips),
        seeds=seeds,
        sample=sample,
        exclude=tuple(exclude_raw),
        include=tuple(include_raw),
        base_dir=Path(base_dir),
        axis_names=axis_names,
        program=program,
    )


def _not_unicode(value: Any, where: str = "", found: list[str] | None = None) -> list[str]:
    """Texts (keys or values) that are not valid Unicode, e.g. a lone surrogate like \\ud800."""
    found = [] if found is None else found
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start : exc.start + 1].encode("unicode_escape").decode()
            found.append(
                f"{where or 'a value'}: holds {bad} at character {exc.start}, which is not valid "
                "Unicode text (a lone surrogate, or bytes that are not UTF-8); remove it"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            _not_unicode(key, f"{where}: key" if where else "a key", found)
            _not_unicode(v, f"{where}.{key}" if where else key, found)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _not_unicode(v, f"{where}[{i}]", found)
    return found


def _check_size(loader: _Loader, program: _Program) -> bool:
    """Refuse a sweep of more than MAX_CELLS cells, counted from its shape (never expanded)."""
    product = program.product_size()
    per_seed = len(program.seeds) if program.seeds is not None else 1
    extra = sum(1 if inc.sets_seed else per_seed for inc in program.includes)
    if len(program.exclude_sets) > _IE_LIMIT and product > _ENUMERATE_LIMIT:
        # The exact count would walk the product; every entry removes at most its own cells.
        removable = 0
        for entry in program.exclude_sets:
            size = 1
            for d, n in enumerate(program.sizes):
                size *= len(entry[d]) if d in entry else n
            removable += size
        least = max(product - removable, 0)
        if program.sample is not None:
            least = min(least, program.sample.n)
        if least + extra <= MAX_CELLS:
            loader.problem(
                f"exclude: {len(program.exclude_sets)} entries over a product of {product:,} "
                f"cells are too many to count; use at most {_IE_LIMIT} entries, or a smaller grid"
            )
            return False
        total = least + extra
    else:
        total = program.survivors()
        if program.sample is not None:
            total = min(total, program.sample.n)
        total += extra
    if (
        program.masks
        and program.sample is not None
        and product > _ENUMERATE_LIMIT
        and program.sample.n < program.survivors()
    ):
        # Drawing from a product with holes walks it up to the last cell drawn.
        loader.problem(
            f"sample with exclude over a product of {product:,} cells cannot be drawn without "
            f"walking it; with exclude, keep the product under {_ENUMERATE_LIMIT:,} cells "
            "(or drop exclude)"
        )
        return False
    if total > MAX_CELLS:
        loader.problem(
            f"the sweep has {total:,} cells (product of {product:,}); one run plans at most "
            f"{MAX_CELLS:,}: use sample: {{n: N}}, fewer seeds or a smaller grid"
        )
        return False
    return True


def _check_templates(
    loader: _Loader,
    base: dict[str, Any],
    defaults: dict[str, str],
    dims: list[tuple[Axis, ...]],
    exclude: list[Any],
) -> set[str]:
    """Every template variable has a value; a swept grid variable changes some prompt."""
    var_axes = {str(a.tokens[1]): (d, a) for d, dim in enumerate(dims) for a in dim if a.is_var}
    known = set(defaults) | set(var_axes)
    prompt_dim = next(
        ((d, a) for d, dim in enumerate(dims) for a in dim if a.path == "positivePrompt"), None
    )
    prompts: list[tuple[str, str, int | None]] = []  # (text, where, digit)
    if prompt_dim is None:
        if isinstance(base.get("positivePrompt"), str):
            prompts.append((base["positivePrompt"], "base", None))
    else:
        axis = prompt_dim[1]
        prompts += [
            (v, f"{axis.where} positivePrompt value #{i}", i)
            for i, v in enumerate(axis.values)
            if isinstance(v, str)
        ]
    used: set[str] = set()
    for text, where, digit in prompts:
        tpl = loader.templates.get(text)
        names = tpl.names if isinstance(tpl, _Template) else ()
        used.update(names)
        for var in dict.fromkeys(names):
            if var not in known:
                loader.problem(
                    f"{where}: positivePrompt {_show(text)} uses {{{var}}} but vars.{var} has no "
                    f"value in any cell: add it under `vars:` or sweep vars.{var}"
                )
        if prompt_dim is None or digit is None:
            continue
        for var, (vd, vaxis) in var_axes.items():
            if vaxis.where == "grid" and vd != prompt_dim[0] and var not in names and not exclude:
                loader.problem(
                    f"{where}: positivePrompt {_show(text)} does not use {{{var}}} although "
                    f"{vaxis.path} is swept in {vaxis.where}: its cells would repeat one "
                    "request for every value; use the variable, or zip the two"
                )
    for var, (_, vaxis) in var_axes.items():
        if var not in used and vaxis.where == "grid":
            loader.problem(
                f"{vaxis.where} {vaxis.path!r}: no positivePrompt uses {{{var}}}, so its values "
                "would all give the same request"
            )
    return used


def _load_exclude(
    loader: _Loader,
    raw: list[Any],
    dims: list[tuple[Axis, ...]],
    by_path: dict[str, Axis],
    seeds: Sequence[int] | None,
) -> list[dict[int, frozenset[int]]]:
    """Each exclude entry as, per dimension, the digits it matches."""
    dim_of = {a.path: d for d, dim in enumerate(dims) for a in dim}
    out: list[dict[int, frozenset[int]]] = []
    for e, entry in enumerate(raw):
        where = f"exclude[{e}]"
        if not isinstance(entry, dict) or not entry:
            loader.problem(
                f"{where}: must be a mapping of swept axes to values, got {_show(entry)}"
            )
            continue
        per_dim: dict[int, frozenset[int]] = {}
        ok = True
        for path, value in entry.items():
            key = _match_key(value)
            if path == "seed" and seeds is not None:
                d = len(dims)
                if len(seeds) > _ENUMERATE_LIMIT:
                    loader.problem(
                        f"{where}: excluding by seed needs seeds.count ≤ {_ENUMERATE_LIMIT:,} "
                        f"(it is {len(seeds):,}); drop the entry or use fewer seeds"
                    )
                    ok = False
                    continue
                if isinstance(seeds, range):  # {count, start}: never walked (it may be huge)
                    number = _norm(value)
                    ok_int = isinstance(number, int) and not isinstance(number, bool)
                    digits = frozenset({number - seeds.start} if ok_int and number in seeds else ())
                else:
                    digits = frozenset(i for i, s in enumerate(seeds) if _match_key(s) == key)
            elif path in by_path:
                axis = by_path[path]
                d = dim_of[path]
                digits = frozenset(i for i, k in enumerate(axis.keys) if k == key)
            else:
                swept = ", ".join(by_path) or "none"
                loader.problem(
                    f"{where}: {path!r} is not a swept axis (swept: {swept}); exclude only "
                    "matches grid and zip keys" + (" and seed" if seeds is not None else "")
                )
                ok = False
                continue
            if not digits:
                loader.problem(f"{where}: {path} = {_show(value)} matches no value of that axis")
                ok = False
                continue
            per_dim[d] = per_dim[d] & digits if d in per_dim else digits
        if not ok:
            continue
        if any(not s for s in per_dim.values()):
            loader.problem(f"{where}: no zip row has all of {_show(entry)}; it matches no cell")
            continue
        out.append(per_dim)
    return out


def _probe_paths(loader: _Loader, program: _Program, dims: list[tuple[Axis, ...]]) -> None:
    """Try every deep axis path against base and each value of the axes above it."""
    positions = {a.path: (d, p) for d, dim in enumerate(dims) for p, a in enumerate(dim)}
    axes = [a for dim in dims for a in dim]
    for axis in axes:
        if len(axis.tokens) < 2 or axis.is_var:
            continue
        ancestors = [
            a
            for a in axes
            if len(a.tokens) < len(axis.tokens) and axis.tokens[: len(a.tokens)] == a.tokens
        ]
        anc_dims = sorted({positions[a.path][0] for a in ancestors} | {positions[axis.path][0]})
        combos = 1
        for d in anc_dims:
            combos *= program.sizes[d]
        if combos > _PROBE_LIMIT:
            continue
        shown = 0
        for choice in itertools.product(*(range(program.sizes[d]) for d in anc_dims)):
            fixed = dict(zip(anc_dims, choice, strict=True))
            if _maybe_excluded(program, fixed):
                continue
            req = program.base.copy()
            fresh: set[int] | None = None
            chain = sorted([*ancestors, axis], key=lambda a: len(a.tokens))
            try:
                for a in chain:
                    d, p = positions[a.path]
                    value = program.values[d][p][fixed[d]]
                    if len(a.tokens) == 1:
                        if value is None:
                            req.pop(str(a.tokens[0]), None)
                        else:
                            req[str(a.tokens[0])] = value
                    else:
                        fresh = _set_deep(req, a.tokens, value, fresh)
            except _PathError as exc:
                if shown == _MAX_PER_AXIS:
                    loader.problem(f"{axis.where} {axis.path!r}: … and more cells like these")
                    break
                context = ", ".join(
                    f"{a.path}={_fmt_value(a.labels[fixed[positions[a.path][0]]])}"
                    for a in ancestors
                )
                loader.problem(
                    f"{axis.where} {axis.path!r}: cannot be set"
                    + (f" where {context}" if context else " on base")
                    + f": {exc}"
                    + ("; exclude those cells or change the sweep" if context else "")
                )
                shown += 1


def _maybe_excluded(program: _Program, fixed: dict[int, int]) -> bool:
    """Whether some exclude entry could match a cell with these digits fixed."""
    for entry in program.exclude_sets:
        if all(fixed[d] in s for d, s in entry.items() if d in fixed):
            return True
    return False


def _load_includes(
    loader: _Loader, raw: list[Any], program: _Program, by_path: dict[str, Axis]
) -> tuple[list[_Include], list[str]]:
    """Each include entry prepared (assignments, vars, labels), and its extra axis paths."""
    includes: list[_Include] = []
    extra: list[str] = []
    known = set(program.defaults)
    for i, entry in enumerate(raw):
        where = f"include[{i}]"
        if not isinstance(entry, dict) or not entry:
            loader.problem(f"{where}: must be a mapping of paths to values, got {_show(entry)}")
            continue
        assigns: list[tuple[tuple[Token, ...], Any]] = []
        variables: dict[str, str] = {}
        labels: dict[str, Any] = {}
        ok = True
        for path, value in entry.items():
            tokens = _check_axis_path(loader, path, f"{where} key {path!r}")
            if tokens is None or not _check_value(loader, path, tokens, value, where):
                ok = False
                continue
            prepared = loader.prepare(value, tokens, where)
            if tokens[0] == "vars":
                variables[str(tokens[1])] = _var_text(prepared)
            else:
                assigns.append((tokens, prepared))
            if path != "seed":
                labels[path] = _label(value)
                if path not in by_path and path not in extra:
                    extra.append(path)
        if not ok:
            continue
        program.templates = _live_templates(loader.templates)  # this entry's own prompt, parsed
        assigns.sort(key=lambda item: len(item[0]))
        inc = _Include(
            where, tuple(assigns), variables, labels, "seed" in entry and entry["seed"] is not None
        )
        prompt = dict(assigns).get(("positivePrompt",), program.base.get("positivePrompt"))
        tpl = loader.templates.get(prompt) if isinstance(prompt, str) else None
        for var in dict.fromkeys(tpl.names if isinstance(tpl, _Template) else ()):
            if var not in known and var not in variables:
                loader.problem(
                    f"{where}: positivePrompt {_show(prompt)} uses {{{var}}} but vars.{var} has "
                    f"no value in this cell: set vars.{var} in the entry or under `vars:`"
                )
                ok = False
        if ok:
            try:
                program.build_include(inc)
            except _PathError as exc:
                loader.problem(f"{where}: {exc}")
                continue
            includes.append(inc)
    return includes, extra


def _check_includes(loader: _Loader, program: _Program) -> None:
    """An include must not repeat a product cell or an earlier include."""
    seen: dict[str, str] = {}
    for inc in program.includes:
        raw, variables = program.build_include(inc, fill=False)
        req = raw.copy()
        program.fill(req, variables)
        ids = _include_ids(program, inc, req)
        twin_of = next((seen[cid] for cid in ids if cid in seen), None)
        if twin_of is not None:
            loader.problem(f"{inc.where}: repeats {twin_of}; remove one of them")
        else:
            twin = _product_twin(program, raw, variables, set(ids))
            if twin is not None:
                loader.problem(
                    f"{inc.where}: repeats the product cell ({_fmt_axes(twin)}); "
                    "remove it, or exclude that cell"
                )
        for cid in ids:
            seen.setdefault(cid, inc.where)


def _include_ids(program: _Program, inc: _Include, req0: dict[str, Any]) -> list[str]:
    seeds: Sequence[int | None] = (
        program.seeds if program.seeds is not None and not inc.sets_seed else (None,)
    )
    return [program.finish(req0.copy(), s)[1] for s in seeds]


def _product_twin(
    program: _Program, raw: dict[str, Any], variables: dict[str, str], ids: set[str]
) -> dict[str, Any] | None:
    """The axes of a product cell equal to an include cell, if there is one."""
    outer: list[int] = []
    for dim in program.dims:
        found = None
        for row in range(len(dim[0].values)):
            if all(
                _match_key(_raw_axis_value(a, raw, variables)) == _match_key(a.values[row])
                for a in dim
            ):
                found = row
                break
        if found is None:
            return None
        outer.append(found)
    seed_digits: Sequence[int | None] = (
        range(len(program.seeds)) if program.seeds is not None else (None,)
    )
    for sd in seed_digits:
        digits = (*outer, sd) if sd is not None else tuple(outer)
        if program.excluded(digits):
            continue
        try:
            req, pvars = program.build(digits)
            program.fill(req, pvars)
            seed = program.seeds[sd] if program.seeds is not None and sd is not None else None
            cid = program.finish(req, seed)[1]
        except _PathError:
            return None
        if cid in ids:
            return program.product_axes(digits, req, pvars)
    return None


def _raw_axis_value(axis: Axis, req: dict[str, Any], variables: dict[str, str]) -> Any:
    if axis.is_var:
        return variables.get(str(axis.tokens[1]))
    value = _get_path(req, axis.tokens)
    return None if value is _MISSING else value


# --------------------------------------------------------------------------- expand


def expand(sweep: Sweep) -> Iterator[Cell]:
    """The sweep's cells in their fixed order, one at a time (pure and deterministic)."""
    return sweep.program.cells()


def count_cells(sweep: Sweep) -> int:
    """How many cells `expand` yields, computed from the index space."""
    prog = sweep.program
    product = prog.survivors()
    if prog.sample is not None:
        product = min(product, prog.sample.n)
    per_seed = len(prog.seeds) if prog.seeds is not None else 1
    return product + sum(1 if inc.sets_seed else per_seed for inc in prog.includes)
