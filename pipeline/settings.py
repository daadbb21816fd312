"""The pipeline's own settings, checked from plain config data (pure; no Hydra here)."""

from __future__ import annotations

import ipaddress
import math
import os
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import ConfigError
from pipeline.protocol import DELIVERY_METHODS

# The emulator's injectable faults, in the order a draw tries them (`api.faults` has one key each).
FAULT_NAMES = (
    "http_429",
    "http_500",
    "http_503",
    "http_504",
    "accepted_500",
    "accepted_disconnect",
    "disconnect",
    "stall",
)

# Choices: the typed schema's Enum fields (config.py; checked by OmegaConf as the config is
# composed) and the checks below both take them from here.


class Backend(Enum):
    """Which API a command talks to."""

    auto = "auto"
    runware = "runware"
    emulator = "emulator"


class OutputType(Enum):
    """Runware's outputType."""

    base64Data = "base64Data"
    dataURI = "dataURI"
    URL = "URL"


class Progress(Enum):
    """How a run shows its progress."""

    auto = "auto"
    bar = "bar"
    log = "log"
    none = "none"


class PriceCheck(Enum):
    """Whether billed costs are checked against the price table while running."""

    auto = "auto"
    on = "on"
    off = "off"


class UnknownTask(Enum):
    """What the emulator answers to getResponse of a taskUUID it never saw."""

    empty = "empty"
    taskFailedOrNotFound = "taskFailedOrNotFound"
    taskNotFound = "taskNotFound"
    taskExpired = "taskExpired"


class RepeatedTask(Enum):
    """What the emulator does with a second imageInference of a known taskUUID."""

    conflict = "conflict"
    replay = "replay"
    charge = "charge"


def _values(choices: type[Enum]) -> tuple[str, ...]:
    """An Enum's values, in its order (the order error messages list them in)."""
    return tuple(str(m.value) for m in choices)


BACKENDS = _values(Backend)
OUTPUT_TYPES = _values(OutputType)
PROGRESS = _values(Progress)
PRICE_CHECK = _values(PriceCheck)
UNKNOWN_TASK = _values(UnknownTask)
REPEATED_TASK = _values(RepeatedTask)
CREDITS_STATUS = (402, 400)  # the emulator's status for an account out of credits (§11)
RUNWARE_URL = "https://api.runware.ai/v1"


@dataclass(frozen=True)
class ApiSettings:
    """Where requests go and how the client talks to it."""

    backend: str  # "runware" | "emulator" once resolved
    base_url: str | None
    timeout_s: float
    connect_timeout_s: float
    delivery: str
    output_type: str
    upload_refs: bool
    batch_polls: bool
    poll_timeout_s: float
    key_env: str
    key_file: str | None
    latency_s: float = 0.0
    fault_seed: int | None = None
    ledger: str | None = None
    faults: dict[str, float] = field(default_factory=dict)
    auto: bool = False  # the backend was chosen by api=auto (from whether a key is set)
    first_poll_s: float = 1.0  # no task polled sooner, before this run has seen a completion
    settle_s: float = 2.0  # how long a "not known" answer must last before a re-submit
    backoff_base_s: float = 0.5  # retry k waits up to backoff_base_s × 2^k (full jitter) …
    backoff_cap_s: float = 30.0  # … and at most this (a Retry-After: up to max(120 s, this))
    latency_sigma: float = 0.0  # emulator only: lognormal spread of the latency
    emulator: EmulatorBehaviour = field(default_factory=lambda: EmulatorBehaviour())


@dataclass(frozen=True)
class EmulatorBehaviour:
    """How the built-in emulator answers the questions Runware's docs leave open."""

    unknown_task: str = "taskFailedOrNotFound"
    queued_polls: int = 0
    repeated_task: str = "conflict"
    sync_pollable: bool = False
    task_details: bool = True
    credits_status: int = 402
    price_factor: float = 1.0

    def kwargs(self) -> dict[str, Any]:
        """As keyword arguments of `pipeline.emulator.Emulator`."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class BudgetSettings:
    """The budget and the price check before fan-out."""

    max_usd: float
    price_check: str  # auto | on | off
    price_tolerance: float

    def check_price(self, backend: str) -> bool:
        """Whether the first billed image is compared with its estimate before fanning out."""
        return self.price_check == "on" or (self.price_check == "auto" and backend == "runware")


@dataclass(frozen=True)
class RunnerSettings:
    """Concurrency, retries and progress display."""

    concurrency: int
    max_retries: int
    progress: str
    log_every: int
    stop_grace_s: float


def _num(cfg: dict[str, Any], key: str, where: str, *, kind: type = float, low: float = 0) -> Any:
    value = cfg.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value is None or not math.isfinite(value) or value < low:
        want = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{where}.{key} must be {want} ≥ {low}, got {value!r}")
    return kind(value)


def _choice(cfg: dict[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> str:
    value = cfg.get(key)
    if isinstance(value, Enum):  # a typed config's choice, if not already converted to text
        value = value.value
    if value not in allowed:
        raise ConfigError(f"{where}.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _bool(cfg: dict[str, Any], key: str, where: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def api_settings(cfg: dict[str, Any], environ: dict[str, str] | None = None) -> ApiSettings:
    """Check the `api` node and resolve `backend: auto` from the environment."""
    env = dict(os.environ) if environ is None else environ
    backend = _choice(cfg, "backend", "api", BACKENDS)
    auto = backend == "auto"
    key_env = str(cfg.get("key_env") or "RUNWARE_API_KEY")
    if auto:
        has_key = bool(env.get(key_env)) or bool(cfg.get("key_file"))
        backend = "runware" if has_key else "emulator"
    base_url = cfg.get("base_url")
    if backend == "runware" and not base_url:
        base_url = RUNWARE_URL
    if base_url is not None:
        parsed = urlparse(str(base_url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"api.base_url must be an http(s) URL, got {base_url!r}")
        if backend == "emulator" and not is_loopback(str(base_url)):
            raise ConfigError(f"api=emulator only talks to loopback addresses, got {base_url}")
    faults = dict(cfg.get("faults") or {})
    for name, rate in faults.items():
        if name not in FAULT_NAMES:
            raise ConfigError(f"api.faults.{name} is not a fault; known: {', '.join(FAULT_NAMES)}")
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise ConfigError(f"api.faults.{name} must be a probability 0..1, got {rate!r}")
    fault_seed = cfg.get("fault_seed")
    if fault_seed is not None and not isinstance(fault_seed, int):
        raise ConfigError(f"api.fault_seed must be a whole number or null, got {fault_seed!r}")
    emu = dict(cfg.get("emulator") or {})
    unknown_emu = sorted(set(emu) - set(EmulatorBehaviour.__dataclass_fields__))
    if unknown_emu:
        raise ConfigError(f"api.emulator.{unknown_emu[0]} is not an emulator behaviour")
    defaults = EmulatorBehaviour()
    credits_status = emu.get("credits_status", defaults.credits_status)
    if credits_status not in CREDITS_STATUS or isinstance(credits_status, bool):
        allowed = " or ".join(str(c) for c in CREDITS_STATUS)
        raise ConfigError(f"api.emulator.credits_status must be {allowed}, got {credits_status!r}")
    behaviour = EmulatorBehaviour(
        unknown_task=_choice(
            {"unknown_task": emu.get("unknown_task", defaults.unknown_task)},
            "unknown_task",
            "api.emulator",
            UNKNOWN_TASK,
        ),
        queued_polls=_num(
            {"queued_polls": emu.get("queued_polls", defaults.queued_polls)},
            "queued_polls",
            "api.emulator",
            kind=int,
        ),
        repeated_task=_choice(
            {"repeated_task": emu.get("repeated_task", defaults.repeated_task)},
            "repeated_task",
            "api.emulator",
            REPEATED_TASK,
        ),
        sync_pollable=_bool(
            {"sync_pollable": emu.get("sync_pollable", defaults.sync_pollable)},
            "sync_pollable",
            "api.emulator",
        ),
        task_details=_bool(
            {"task_details": emu.get("task_details", defaults.task_details)},
            "task_details",
            "api.emulator",
        ),
        credits_status=int(credits_status),
        price_factor=_num(
            {"price_factor": emu.get("price_factor", defaults.price_factor)},
            "price_factor",
            "api.emulator",
            low=1e-6,
        ),
    )
    return ApiSettings(
        backend=backend,
        base_url=str(base_url) if base_url else None,
        timeout_s=_num(cfg, "timeout_s", "api", low=0.001),
        connect_timeout_s=_num(cfg, "connect_timeout_s", "api", low=0.001),
        delivery=_choice(cfg, "delivery", "api", DELIVERY_METHODS),
        output_type=_choice(cfg, "output_type", "api", OUTPUT_TYPES),
        upload_refs=_bool(cfg, "upload_refs", "api"),
        batch_polls=_bool(cfg, "batch_polls", "api"),
        poll_timeout_s=_num(cfg, "poll_timeout_s", "api", low=0.001),
        key_env=key_env,
        key_file=str(cfg["key_file"]) if cfg.get("key_file") else None,
        latency_s=_num(cfg, "latency_s", "api"),
        fault_seed=fault_seed,
        ledger=str(cfg["ledger"]) if cfg.get("ledger") else None,
        faults={k: float(v) for k, v in faults.items() if v},  # zero rates: no such fault
        auto=auto,
        first_poll_s=_num({"first_poll_s": cfg.get("first_poll_s", 1.0)}, "first_poll_s", "api"),
        settle_s=_num({"settle_s": cfg.get("settle_s", 2.0)}, "settle_s", "api"),
        backoff_base_s=_num(
            {"backoff_base_s": cfg.get("backoff_base_s", 0.5)}, "backoff_base_s", "api"
        ),
        backoff_cap_s=_num(
            {"backoff_cap_s": cfg.get("backoff_cap_s", 30.0)}, "backoff_cap_s", "api"
        ),
        latency_sigma=_num(
            {"latency_sigma": cfg.get("latency_sigma", 0.0)}, "latency_sigma", "api"
        ),
        emulator=behaviour,
    )


def api_key(api: ApiSettings, environ: dict[str, str] | None = None) -> str:
    """The API key, from the environment or the key file only; a fixed dummy for the emulator."""
    env = dict(os.environ) if environ is None else environ
    key, source = "", api.key_env
    if api.key_file:
        key, source = _read_key_file(api.key_file), f"api.key_file {api.key_file}"
    if not key.strip():
        key, source = env.get(api.key_env, ""), api.key_env
    key = key.strip()
    if key and not (key.isascii() and key.isprintable() and " " not in key):
        # Never echo it: a key with stray characters would otherwise end up in error messages.
        raise ConfigError(f"the API key in {source} holds spaces or control characters; fix it")
    if key:
        return key
    if api.backend == "emulator":
        return "emulator-key"
    raise ConfigError(
        f"api=runware needs an API key: set {api.key_env} in the environment "
        "(or api.key_file), or use api=emulator to run offline"
    )


def _read_key_file(name: str, limit: int = 4096) -> str:
    """A key file's text (never shown): a small UTF-8 regular file, checked before any read."""
    path = Path(name).expanduser()
    not_regular = ConfigError(f"api.key_file {name} is not a regular file (a FIFO or device?)")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device is never opened
            raise not_regular
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read api.key_file {name}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise not_regular
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read api.key_file {name}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"api.key_file {name} is over {limit} bytes: not a key file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(
            f"api.key_file {name} is not UTF-8 text (a key is plain ASCII); fix it"
        ) from None


def runner_settings(cfg: dict[str, Any]) -> RunnerSettings:
    """Check the `runner` node."""
    return RunnerSettings(
        concurrency=max(1, _num(cfg, "concurrency", "runner", kind=int, low=1)),
        max_retries=_num(cfg, "max_retries", "runner", kind=int),
        progress=_choice(cfg, "progress", "runner", PROGRESS),
        log_every=max(1, _num(cfg, "log_every", "runner", kind=int, low=1)),
        stop_grace_s=_num(cfg, "stop_grace_s", "runner"),
    )


def budget_usd(cfg: dict[str, Any]) -> float:
    """`budget.max_usd` as a float ≥ 0."""
    return float(_num(cfg.get("budget") or {}, "max_usd", "budget"))


def budget_settings(cfg: dict[str, Any]) -> BudgetSettings:
    """The `budget` node: the limit, and the price check before fan-out."""
    node = cfg.get("budget") or {}
    check = node.get("price_check", "auto")
    if check is True or check is False:  # YAML reads a bare on/off as a boolean
        check = "on" if check else "off"
    return BudgetSettings(
        max_usd=budget_usd(cfg),
        price_check=_choice({"price_check": check}, "price_check", "budget", PRICE_CHECK),
        price_tolerance=_num(
            {"price_tolerance": node.get("price_tolerance", 0.1)}, "price_tolerance", "budget"
        ),
    )


def shard_of(cfg: dict[str, Any]) -> tuple[int, int]:
    """`(shard.index, shard.count)`, checked."""
    shard = cfg.get("shard") or {}
    count = _num(shard, "count", "shard", kind=int, low=1)
    index = _num(shard, "index", "shard", kind=int)
    if index >= count:
        raise ConfigError(f"shard.index must be below shard.count ({count}), got {index}")
    return index, count


APP_NAME = "krea-sweep"  # names the user's data dir (the default store) and cache dir
STORE_ENV = "KREA_SWEEP_STORE"  # environment variable naming the store folder
OLD_STORE = Path("outputs") / ".store"  # the old default store, relative to the current folder


@dataclass(frozen=True)
class StoreLocation:
    """Which store folder a command uses, and why (printed with the plan)."""

    root: Path
    why: str


def store_location(cfg: dict[str, Any], environ: dict[str, str] | None = None) -> StoreLocation:
    """The store folder: `store.dir`, else $KREA_SWEEP_STORE, else an existing ./outputs/.store,
    else the user's data dir — so the same sweep run from another folder is never paid again."""
    env = dict(os.environ) if environ is None else environ
    configured = (cfg.get("store") or {}).get("dir")
    if configured:
        return StoreLocation(Path(str(configured)).expanduser(), "store.dir")
    if env.get(STORE_ENV):
        return StoreLocation(Path(env[STORE_ENV]).expanduser(), STORE_ENV)
    if OLD_STORE.is_dir():
        return StoreLocation(
            OLD_STORE, "found at the old default; used so nothing paid for is forgotten"
        )
    import platformdirs

    return StoreLocation(
        Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "store", "user data dir"
    )


def is_loopback(url: str) -> bool:
    """Whether a URL points at this machine (127.0.0.0/8, ::1 or localhost)."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
