"""Override mistakes: each is refused in one line, exit 1, no traceback and zero requests.

Every command runs as a subprocess against a loopback server that records every request
(`api=emulator api.base_url=…`), so "zero requests" is counted, not assumed.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from scripted_server import ScriptedServer

ONE_CELL = """\
name: one
base:
  model: krea:krea@2-large
  positivePrompt: a lighthouse
  width: 1024
  height: 1024
seeds: [1]
"""


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A counting loopback server (answers nothing useful: every request is a failure)."""
    with ScriptedServer() as srv:
        yield srv


def _run(
    srv: ScriptedServer, cwd: Path, *overrides: str, module: str = "run", key: bool = False
) -> tuple[int, str, str]:
    api = [] if module == "report" else ["api=emulator", f"api.base_url={srv.base_url}"]
    env = cli_env(RUNWARE_API_KEY="test-key") if key else cli_env()
    quiet = [] if module == "report" else ["runner.progress=none"]
    proc = run_cli(module, *api, *quiet, *overrides, cwd=cwd, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def _one_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{command}: error: "), stderr
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr
    return lines[0]


# (overrides, what the one line must say)
RUN_MISTAKES: list[tuple[list[str], str]] = [
    (["dry_run=maybe"], "dry_run=maybe: Value 'maybe' is not a valid bool"),
    (["+dryrun=true"], "unknown key 'dryrun' (did you mean 'dry_run'?)"),
    (["dryrun=true"], "unknown key 'dryrun' (did you mean 'dry_run'?)"),
    (["+budget.max_usdd=1"], "unknown key 'budget.max_usdd' (did you mean 'budget.max_usd'?)"),
    (["+budget.max_usd_typo=0.01"], "(did you mean 'budget.max_usd'?)"),
    (
        ["+runner.concurency=64"],
        "unknown key 'runner.concurency' (did you mean 'runner.concurrency'?)",
    ),
    (["+foo=1"], "unknown key 'foo'; known here: sweep, api, runner"),
    (["+api.faults.http_999=0.1"], "unknown key 'api.faults.http_999'"),
    (["~dry_run"], "'dry_run' cannot be removed"),
    (["confirm=perhaps"], "confirm=perhaps: Value 'perhaps' is not a valid bool"),
    (["api.upload_refs=sometimes"], "api.upload_refs=sometimes"),
    (["api.poll_timeout_s=1e10"], "api.poll_timeout_s must be between 0.001 and 86400, got 1e+10"),
    (["runner.concurrency=100000"], "runner.concurrency must be between 1 and 1024, got 100000"),
    (["runner.concurrency=0"], "runner.concurrency must be between 1 and 1024, got 0"),
    (["api.timeout_s=abc"], "api.timeout_s=abc: Value 'abc' of type 'str' could not be converted"),
    (["api.timeout_s=nan"], "api.timeout_s must be between"),
    (["budget.max_usd=-1"], "budget.max_usd must be between 0 and"),
    (["runner.max_retries=1.5"], "runner.max_retries=1.5"),
    (["runner.progress=loud"], "Invalid value 'loud', expected one of [auto, bar, log, none]"),
    (["api.output_type=png"], "Invalid value 'png'"),
    (["api.backend=cloud"], "Invalid value 'cloud'"),
    (["api.delivery=fast"], "api.delivery must be one of async, sync, got 'fast'"),
    (["api.emulator.credits_status=401"], "api.emulator.credits_status must be 402 or 400"),
    (["shard.count=2", "shard.index=2"], "shard.index must be below shard.count (2)"),
    (["sweep=nosuch"], "unknown sweep 'nosuch'"),
    (["sweep=dmo"], "unknown sweep 'dmo' (did you mean 'demo'?); known: demo,"),
    (["sweep.seeds=[1,2"], "cannot read the override 'sweep.seeds=[1,2': no viable alternative"),
    (["hydra.run.dir=/proc/krea-sweep-test"], "cannot write /proc/krea-sweep-test"),
    # a list where the config holds a mapping, and the reverse: say how to replace it
    (
        ["sweep=seed_study", "sweep.seeds=[7,8]"],
        "sweep.seeds=[7,8]: cannot replace a mapping with a list or a list with a mapping; "
        "remove it first: '~sweep.seeds' '+sweep.seeds=[7,8]'",
    ),
    (["sweep=demo", "sweep.seeds={count:3}"], "'~sweep.seeds' '+sweep.seeds={count:3}'"),
]


@pytest.mark.parametrize(
    ("overrides", "says"), RUN_MISTAKES, ids=[" ".join(o) for o, _ in RUN_MISTAKES]
)
def test_override_mistake_is_one_line_and_sends_nothing(
    server: ScriptedServer, isolated: Path, overrides: list[str], says: str
) -> None:
    code, _, stderr = _run(server, isolated, *overrides, key=True)
    assert code == 1, stderr
    assert says in _one_line(stderr, "krea-run")
    assert server.requests == []


def test_a_list_replaces_a_mapping_the_way_the_error_says(
    server: ScriptedServer, isolated: Path
) -> None:
    code, stdout, stderr = _run(
        server, isolated, "sweep=seed_study", "~sweep.seeds", "+sweep.seeds=[7,8]", "dry_run=true"
    )
    assert code == 0, stderr
    assert re.search(r"^  cells +2$", stdout, re.MULTILINE), stdout
    assert server.requests == []


def test_run_dir_under_a_file_is_one_line(server: ScriptedServer, isolated: Path) -> None:
    (isolated / "a-file").write_text("not a folder")
    code, _, stderr = _run(server, isolated, "hydra.run.dir=a-file/run")
    assert code == 1
    assert "cannot write a-file/run: Not a directory" in _one_line(stderr, "krea-run")
    assert server.requests == []


OTHER_MISTAKES: list[tuple[str, list[str], str]] = [
    ("report", ["run_dir=x", "+report.thumbs=1"], "(did you mean 'report.thumb_px'?)"),
    ("report", ["run_dir=x", "report.thumb_px=1"], "report.thumb_px must be between 16 and 4096"),
    ("report", ["run_dir=x", "report.html=maybe"], "report.html=maybe"),
    ("reproduce", ["select=[a]", "+dryrun=true"], "(did you mean 'dry_run'?)"),
    ("reproduce", ["select=[a]", "dry_run=maybe"], "not a valid bool"),
    ("reproduce", ["select=[a]", "+budget.max_usdd=1"], "(did you mean 'budget.max_usd'?)"),
]


@pytest.mark.parametrize(
    ("module", "overrides", "says"), OTHER_MISTAKES, ids=[" ".join(o) for _, o, _ in OTHER_MISTAKES]
)
def test_report_and_reproduce_refuse_mistakes(
    server: ScriptedServer, isolated: Path, module: str, overrides: list[str], says: str
) -> None:
    code, _, stderr = _run(server, isolated, *overrides, module=module, key=True)
    assert code == 1, stderr
    assert says in _one_line(stderr, f"krea-{module}")
    assert server.requests == []


@pytest.mark.parametrize("value", ["yes", "1", "on", "true", "True"])
def test_dry_run_spellings_are_a_dry_run(
    server: ScriptedServer, isolated: Path, value: str
) -> None:
    code, stdout, stderr = _run(server, isolated, f"dry_run={value}", key=True)
    assert code == 0, stderr
    assert "dry run: stopped after the plan; nothing was sent." in stdout
    assert server.requests == []


def test_the_server_counts_a_real_run(server: ScriptedServer, isolated: Path) -> None:
    """Control: the same command line without a mistake does reach the server."""
    (isolated / "one.yaml").write_text(ONE_CELL)
    code, _, _ = _run(server, isolated, "sweep=one.yaml", "runner.max_retries=0")
    assert code != 0  # the scripted server answers every request with an error
    assert server.requests


# ---------------------------------------------------------------------------------------------
# Sweep files that YAML or Hydra cannot take: one line with the file, line and column


def _sweep_file(folder: Path, text: str, name: str = "bad.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


BAD_SWEEP_FILES: list[tuple[str, str, str]] = [
    (
        "indent",
        "name: bad\nbase:\n  model: x\n   width: 3\n",
        "bad.yaml:4:9: mapping values are not allowed here",
    ),
    (
        "duplicate key",
        "name: a\nname: b\n",
        "bad.yaml:2:1: while constructing a mapping: found duplicate key name",
    ),
    (
        "python tag",
        'name: !!python/object/apply:os.system ["true"]\n',
        "bad.yaml:1:7: could not determine a constructor",
    ),
    (
        "binary tag",
        "name: x\nvars: {v: !!binary aGVsbG8=}\n",
        "bad.yaml:2:11: !!binary values are not allowed",
    ),
    (
        "list-shaped",
        "- name: listy\n- base: {}\n",
        "the sweep file holds a list (its lines start with '- ')",
    ),
]


@pytest.mark.parametrize(
    ("text", "says"),
    [(t, s) for _, t, s in BAD_SWEEP_FILES],
    ids=[i for i, _, _ in BAD_SWEEP_FILES],
)
def test_a_broken_sweep_file_is_one_line(
    server: ScriptedServer, isolated: Path, text: str, says: str
) -> None:
    _sweep_file(isolated, text)
    code, _, stderr = _run(server, isolated, "sweep=bad.yaml", key=True)
    assert code == 1
    assert says in _one_line(stderr, "krea-run")
    assert server.requests == []
    assert not (isolated / "outputs").exists()


def test_a_yaml_alias_bomb_is_refused_before_it_expands(
    server: ScriptedServer, isolated: Path
) -> None:
    lines = ["name: bomb", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = isolated / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 400
    code, _, stderr = _run(server, isolated, "sweep=bad.yaml", key=True)  # hangs without the cap
    assert code == 1
    line = _one_line(stderr, "krea-run")
    assert "its aliases expand to 490,329,066 values (at most 1,000,000)" in line
    assert server.requests == []


def test_a_sweep_name_that_escapes_outputs_writes_nothing(
    server: ScriptedServer, isolated: Path
) -> None:
    work = isolated / "a" / "b"
    work.mkdir(parents=True)
    _sweep_file(work, 'name: "../../../escaped"\nbase: {model: "krea:krea@2-large"}\n')
    code, _, stderr = _run(server, work, "sweep=bad.yaml", key=True)
    assert code == 1
    assert "sweep name '../../../escaped' must be letters" in _one_line(stderr, "krea-run")
    assert sorted(p.name for p in work.iterdir()) == ["bad.yaml"]
    assert not (isolated / "escaped").exists() and not (isolated / "a" / "escaped").exists()
    assert server.requests == []


@pytest.mark.parametrize(
    ("module", "says"),
    [
        ("run", "krea-run: expand a YAML sweep"),
        ("report", "krea-report: tables (cost, failures, latency by axis)"),
        ("reproduce", "krea-reproduce: re-issue recorded requests"),
    ],
)
def test_help_is_the_commands_own_page(isolated: Path, module: str, says: str) -> None:
    proc = run_cli(module, "--help", cwd=isolated)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(says)
    assert "Examples:" in proc.stdout and "Main options" in proc.stdout
    assert "powered by Hydra" not in proc.stdout
    assert list(isolated.iterdir()) == []  # --help writes nothing
    if module == "run":
        assert "sweep: bench_100k, big_sampled" in proc.stdout  # the sweeps you can pick
