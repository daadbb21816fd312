"""The report's options: the `report:` section checked, the run dirs named, where the report goes.

Defaults and lower bounds come from the typed config (`pipeline.config.ReportOptions`), the one
place they are written; `parse_options` checks plain data the same way (report_job is called with
plain dicts too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.errors import ConfigError
from pipeline.rundir import REPORT_DIR

DEFAULTS = config.ReportOptions()
LOWS: dict[str, Any] = {
    f.name: f.metadata["range"][0]
    for f in dataclasses.fields(config.ReportOptions)
    if "range" in f.metadata
}


@dataclass(frozen=True)
class ReportOptions:
    """The `report:` section of the config, checked."""

    rows: str | None = DEFAULTS.rows
    cols: str | None = DEFAULTS.cols
    filter: str | None = DEFAULTS.filter
    thumb_px: int = DEFAULTS.thumb_px
    min_thumb_px: int = DEFAULTS.min_thumb_px
    max_sheet_px: int = DEFAULTS.max_sheet_px
    max_sheets: int = DEFAULTS.max_sheets
    sheets: bool = DEFAULTS.sheets
    html: bool = DEFAULTS.html
    embed_max_mb: float = DEFAULTS.embed_max_mb
    out_dir: Path | None = None
    print_rows: int = DEFAULTS.print_rows
    explorer: bool = DEFAULTS.explorer
    explorer_thumb_px: int = DEFAULTS.explorer_thumb_px
    thumb_workers: int = DEFAULTS.thumb_workers


def parse_options(section: Mapping[str, Any] | None) -> ReportOptions:
    """`ReportOptions` from the config's `report:` mapping (ConfigError on a wrong value)."""
    s = dict(section or {})
    known = set(ReportOptions.__dataclass_fields__)
    unknown = sorted(set(s) - known)
    if unknown:
        raise ConfigError(f"unknown report option(s): {', '.join(unknown)}")

    def text(key: str) -> str | None:
        v = s.get(key)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise ConfigError(f"report.{key} must be text, got {v!r}")
        return v

    def integer(key: str) -> int:
        v, low = s.get(key, getattr(DEFAULTS, key)), LOWS[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"report.{key} must be an integer ≥ {low}, got {v!r}")
        return v

    def flag(key: str) -> bool:
        v = s.get(key, getattr(DEFAULTS, key))
        if not isinstance(v, bool):
            raise ConfigError(f"report.{key} must be true or false, got {v!r}")
        return v

    embed = s.get("embed_max_mb", DEFAULTS.embed_max_mb)
    low = LOWS["embed_max_mb"]
    if isinstance(embed, bool) or not isinstance(embed, int | float) or embed < low:
        raise ConfigError(f"report.embed_max_mb must be a number ≥ {low}, got {embed!r}")
    thumb = integer("thumb_px")
    out = text("out_dir")
    return ReportOptions(
        rows=text("rows"),
        cols=text("cols"),
        filter=text("filter"),
        thumb_px=thumb,
        min_thumb_px=min(thumb, integer("min_thumb_px")),
        max_sheet_px=integer("max_sheet_px"),
        max_sheets=integer("max_sheets"),
        sheets=flag("sheets"),
        html=flag("html"),
        embed_max_mb=float(embed),
        out_dir=Path(out) if out else None,
        print_rows=integer("print_rows"),
        explorer=flag("explorer"),
        explorer_thumb_px=integer("explorer_thumb_px"),
        thumb_workers=integer("thumb_workers"),
    )


def parse_run_dirs(value: Any) -> list[Path]:
    """`run_dir` as paths: one path, or a list of paths to compare."""
    items = value if isinstance(value, list | tuple) else [value]
    paths = []
    for item in items:
        if not isinstance(item, str | Path) or not str(item).strip():
            raise ConfigError(f"run_dir must be a path or a list of paths, got {value!r}")
        paths.append(Path(str(item).strip()))
    if not paths:
        raise ConfigError("run_dir is an empty list: name at least one run dir")
    return paths


def output_dir(paths: Sequence[Path], out_dir: Path | None, now: datetime) -> Path:
    """Where the report goes: `report.out_dir`, else <run_dir>/report, else a compare folder."""
    if out_dir is not None:
        return out_dir
    if len(paths) == 1:
        return paths[0] / REPORT_DIR
    return Path("outputs") / "reports" / f"compare-{now:%Y-%m-%d_%H-%M-%S}"
