"""`.ci/gates` (ruff check, ruff format --check, mypy) on a small tree with the repo's config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

CLEAN = {
    "pipeline/__init__.py": "",
    "bench/__init__.py": "",
    "tests/helper.py": '"""A test helper."""\n\nVALUE = 1\n',
    # tests import their helpers as top-level modules (pytest's pythonpath), as mypy sees them
    "tests/test_a.py": (
        '"""A test."""\n\nfrom __future__ import annotations\n\nfrom helper import VALUE\n\n\n'
        "def test_value() -> None:\n    assert VALUE == 1\n"
    ),
}


def _tree(root: Path, files: dict[str, str]) -> Path:
    """A tree with the repo's pyproject.toml, .ci/gates and `files`."""
    (root / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "gates", root / ".ci" / "gates")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _gates(root: Path) -> subprocess.CompletedProcess[str]:
    tools = str(Path(sys.executable).parent)  # ruff and mypy, installed with the [test] extra
    env = {**os.environ, "PATH": tools + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        [str(root / ".ci" / "gates")], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_clean_tree_passes_every_gate(tmp_path: Path) -> None:
    result = _gates(_tree(tmp_path, CLEAN))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 4 source files" in result.stdout  # pipeline, tests, bench


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        (
            "tests/test_a.py",
            CLEAN["tests/test_a.py"] + "import os\n",
            "ci: ruff check found errors (above): failing",
        ),
        (
            "bench/__init__.py",
            "X  =  1\n",
            "ci: ruff format --check: files not formatted (above): failing",
        ),
        (
            "tests/test_a.py",
            CLEAN["tests/test_a.py"] + "\n\ndef test_untyped(x):\n    assert x\n",
            "ci: mypy (pipeline/, tests/, bench/) found errors (above): failing",
        ),
        (
            "bench/__init__.py",
            'COUNT: int = "one"\n',
            "ci: mypy (pipeline/, tests/, bench/) found errors (above): failing",
        ),
    ],
    ids=["ruff-check", "ruff-format", "mypy-tests", "mypy-bench"],
)
def test_any_error_fails_with_a_line_naming_the_gate(
    tmp_path: Path, name: str, text: str, line: str
) -> None:
    result = _gates(_tree(tmp_path, {**CLEAN, name: text}))
    assert result.returncode == 1, result.stdout + result.stderr  # never 5 (pytest's "no tests")
    assert result.stderr.strip().splitlines()[-1] == line
