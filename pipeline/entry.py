"""What the three Hydra entry points share: config location, plain data, error reporting."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import config, settings
from pipeline.errors import ConfigError, PipelineError, first_line
from pipeline.images import write_atomic
from pipeline.rundir import EXIT_CODE_NAME

_multirun_dirs: list[Path] = []  # sweep dirs of the multiruns this process launched


@dataclass(frozen=True)
class JobContext:
    """What a job needs to know about its Hydra run, as plain data."""

    run_dir: Path
    multirun: bool
    sweep_dir: Path | None
    overrides: list[str]


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain dicts and lists (interpolations resolved)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)
    except Exception as exc:  # OmegaConf raises several unrelated types for a missing value
        raise ConfigError(str(exc).splitlines()[0]) from exc
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


def job_context() -> JobContext:
    """Read the run dir, mode and the chosen sweep file's folder from Hydra."""
    hc = HydraConfig.get()
    sweep_choice = hc.runtime.choices.get("sweep")
    sweep_dir = None
    if sweep_choice:
        for source in hc.runtime.config_sources:
            if source.schema == "file":
                candidate = Path(source.path) / "sweep" / f"{sweep_choice}.yaml"
                if candidate.is_file():
                    sweep_dir = candidate.resolve().parent  # a sweep given by path: its folder
                    break
    return JobContext(
        run_dir=Path(hc.runtime.output_dir),
        multirun=hc.mode == RunMode.MULTIRUN,
        sweep_dir=sweep_dir,
        overrides=list(hc.overrides.task),
    )


def report_errors(command: str, job: Callable[[], int], cfg: DictConfig | None = None) -> None:
    """Run a job; an expected error is one clear message on stderr and exit 1, never a traceback."""
    try:
        if cfg is not None:  # a multirun job's own overrides were not seen by the callback
            config.check_keys(cfg, config.COMMAND_SCHEMA[command])
        code = job()
    except PipelineError as exc:
        if os.environ.get("PIPELINE_FULL_ERROR") == "1":
            raise
        print(f"{command}: error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr, flush=True)
        code = 130
    except BaseException:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            _record_exit_code(1)  # an unexpected error: the traceback goes on, the code is kept
        raise
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        if code:
            sys.exit(code)
    else:
        _record_exit_code(code)


def console(hydra_main: Callable[[], None], command: str) -> None:
    """A console script: run the Hydra app; after a multirun, exit with its worst job's code.

    Errors raised by Hydra itself (a bad override, an unknown key or sweep, a broken YAML file,
    a run dir that cannot be made) become one line on stderr and exit 1, like the job's own.
    """
    full = any(os.environ.get(v) == "1" for v in ("HYDRA_FULL_ERROR", "PIPELINE_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors; they are shown below
    _multirun_dirs.clear()
    try:
        sys.argv[1:] = sweep_file_overrides(sys.argv[1:], sweep_links_root())
        hydra_main()
        worst = worst_job_code(command)
    except BrokenPipeError:  # the reader went away (`krea-run --help | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (PipelineError, HydraException, OmegaConfBaseException, yaml.YAMLError, OSError) as exc:
        if full:
            raise
        print(f"{command}: error: {describe(exc, command)}", file=sys.stderr, flush=True)
        sys.exit(1)
    if worst:
        sys.exit(worst)


def sweep_links_root() -> Path:
    """Where sweep files given by path are linked for Hydra (the user's cache dir).

    It is a lasting folder, not a temp dir: jobs on other hosts (SLURM, Ray) compose the config
    again and must find the link, and a home directory is usually shared with them.
    """
    import platformdirs

    return Path(platformdirs.user_cache_dir(settings.APP_NAME)) / "sweep-files"


def sweep_file_overrides(args: list[str], links: Path) -> list[str]:
    """Turn `sweep=path/to/file.yaml` into a choice Hydra can find.

    The file is linked as `<links>/<hash of its path>/sweep/file/<stem>.yaml` and that folder is
    added to Hydra's search path, so the sweep composes like one in conf/sweep/ (its keys can be
    overridden) and its relative reference images and value files resolve against its own folder.
    """
    out: list[str] = []
    folders: list[Path] = []
    for arg in args:
        key, eq, value = arg.partition("=")
        # a file name, or a path to a file (`sweep=sub/name` stays a Hydra choice otherwise)
        is_path = value.endswith((".yaml", ".yml")) or (os.sep in value and Path(value).is_file())
        if key != "sweep" or not eq or not is_path or "," in value:
            out.append(arg)
            continue
        source = Path(value).expanduser().resolve()
        if not source.is_file():
            raise ConfigError(f"sweep={value}: no such sweep file")
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", source.stem) or "sweep"
        folder = links / hashlib.sha256(str(source).encode()).hexdigest()[:16]
        link = folder / "sweep" / "file" / f"{stem}.yaml"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() and link.resolve() == source):
            tmp = link.with_name(f".{stem}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(source)
            os.replace(tmp, link)  # atomic: a concurrent run never sees a missing link
        out.append(f"sweep=file/{stem}")
        folders.append(folder)
    if folders:
        out.append(f"hydra.searchpath=[{','.join(f'file://{f}' for f in folders)}]")
    return out


def describe(exc: BaseException, command: str) -> str:
    """One line for an error raised before or around the job (by Hydra, OmegaConf or YAML)."""
    schema = config.COMMAND_SCHEMA.get(command, config.RunConfig)
    first = first_line(exc)
    cause = exc.__cause__ or exc.__context__
    inner = _pipeline_cause(exc)
    if inner is not None:
        return str(inner)
    if isinstance(exc, yaml.YAMLError):
        return yaml_message(exc)
    if isinstance(cause, yaml.YAMLError):
        return yaml_message(cause)
    if isinstance(exc, OverrideParseException):
        return not_unicode_override(exc.override) or (
            f"cannot read the override {exc.override!r}: {first}"
        )
    if isinstance(exc, MissingConfigException):  # an OSError too
        return missing_config_message(exc)
    if isinstance(exc, OSError) and exc.filename:  # e.g. a run dir under a file, or in /proc
        return f"cannot write {exc.filename}: {exc.strerror or first}"
    match = re.match(r"Could not (?:override|delete) '([^']+)'", first)
    if match:
        return config.unknown_key_message(match.group(1), schema)
    match = re.match(r"Key '([^']+)' (?:is )?not in", first)
    if match:
        return config.unknown_key_message(match.group(1), schema)
    match = re.match(r"Error merging override (.+)", first)
    if match and cause is not None:
        reason = str(cause).strip().splitlines()[0]
        if re.match(r"Cannot merge (Dict|List)Config with (Dict|List)Config", reason):
            return replace_kind_message(match.group(1))
        return f"{match.group(1)}: {reason}"
    because = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if because and because != first:
        return f"{first} ({because})"
    return first


def not_unicode_override(override: str) -> str | None:
    """An override holding text that is not valid Unicode (argv bytes not UTF-8), if it does."""
    try:
        override.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = override.encode("utf-8", "backslashreplace").decode()
        bad = override[exc.start : exc.start + 1].encode("unicode_escape").decode()
        return (
            f"the override '{shown}' holds {bad} at character {exc.start}, which is not valid "
            "Unicode text (a lone surrogate, or bytes that are not UTF-8); remove it"
        )
    return None


def replace_kind_message(override: str) -> str:
    """A list given where the config holds a mapping (or the reverse): how to replace it."""
    key, _, value = override.lstrip("+").partition("=")
    return (
        f"{override}: cannot replace a mapping with a list or a list with a mapping; "
        f"remove it first: '~{key}' '+{key}={value}'"
    )


def _pipeline_cause(exc: BaseException) -> PipelineError | None:
    """Our own error inside a Hydra/OmegaConf one (e.g. raised by a resolver), if any."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, PipelineError):
            return link
        link = link.__cause__ or link.__context__
    return None


def yaml_message(exc: yaml.YAMLError) -> str:
    """A YAML error as `file:line:column: what is wrong`."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = ": ".join(str(p) for p in (exc.context, exc.problem) if p)
        if mark is not None:
            return f"{mark.name}:{mark.line + 1}:{mark.column + 1}: {what}"
        return what
    return str(exc).strip().splitlines()[0]


def missing_config_message(exc: MissingConfigException) -> str:
    """An unknown config group option (e.g. a sweep name), with the nearest known ones first."""
    wanted = str(exc.missing_cfg_file or "")
    group, _, name = wanted.rpartition("/")
    options = list(exc.options or [])
    if not options:
        return str(exc).strip().splitlines()[0]
    near = difflib.get_close_matches(name, options, n=len(options), cutoff=0.0)
    what = "sweep" if group == "sweep" else f"{group} option"
    hint = f" (did you mean {near[0]!r}?)" if difflib.get_close_matches(name, options, n=1) else ""
    extra = ""
    if what == "sweep":
        extra = " — or pass a sweep file by its path: sweep=path/to/file.yaml"
    return f"unknown {what} {name!r}{hint}; known: {', '.join(near)}{extra}"


def _record_exit_code(code: int) -> None:
    """Leave a multirun job's code in its own run dir, wherever the job runs (any host)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_atomic(run_dir / EXIT_CODE_NAME, f"{code}\n".encode())


def _job_codes(sweep_dir: Path) -> dict[Path, int]:
    """The codes jobs left under a sweep dir: {job run dir: code} (job dirs do not nest)."""
    codes: dict[Path, int] = {}
    for folder, subdirs, files in os.walk(sweep_dir):
        if EXIT_CODE_NAME in files:
            text = (Path(folder) / EXIT_CODE_NAME).read_text().strip()
            codes[Path(folder)] = int(text) if text.lstrip("-").isdigit() else 1
            subdirs.clear()
    return codes


class MultirunExitCodes(Callback):
    """Hydra callback, run by the launching process: note the sweep dir, drop stale job codes."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job: remember where the jobs go and remove codes an earlier multirun left."""
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        _multirun_dirs.append(sweep_dir)
        for job_dir in _job_codes(sweep_dir):
            (job_dir / EXIT_CODE_NAME).unlink(missing_ok=True)


def worst_job_code(command: str) -> int:
    """The worst code the jobs of this process's multiruns left in their run dirs (0: none ran)."""
    worst = 0
    for sweep_dir in _multirun_dirs:
        codes = _job_codes(sweep_dir)
        if not codes:
            print(
                f"{command}: error: no job of the multirun left its {EXIT_CODE_NAME} in "
                f"{sweep_dir}: its jobs must write there (a hydra.sweep.dir they all share)",
                file=sys.stderr,
                flush=True,
            )
        worst = max(worst, *codes.values(), 0 if codes else 1)
    return worst
