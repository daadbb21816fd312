"""`krea-run --help` names a README that exists: the checkout's, or a wheel's METADATA."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli

README_LINE = "Exit codes and more: "


def test_help_in_a_checkout_names_its_readme(isolated: Path) -> None:
    proc = run_cli("run", "--help", cwd=isolated)
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith(README_LINE)]
    assert line == README_LINE + str(REPO / "README.md")
    assert "README.md" not in proc.stdout.replace(line, "")  # no other, relative pointer


def test_an_installed_package_points_at_the_metadata_holding_the_readme(tmp_path: Path) -> None:
    # A site-packages of its own: pipeline/helptext.py with no checkout around it, and the
    # dist-info a wheel install writes (METADATA carries the README as its description).
    site = tmp_path / "site"
    (site / "pipeline").mkdir(parents=True)
    (site / "pipeline" / "__init__.py").write_text("")
    shutil.copy2(REPO / "pipeline" / "helptext.py", site / "pipeline" / "helptext.py")
    info = site / "krea_sweep-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: krea-sweep\nVersion: 9.9.9\n")
    (info / "RECORD").write_text(
        "pipeline/helptext.py,,\nkrea_sweep-9.9.9.dist-info/METADATA,,\n"
        "krea_sweep-9.9.9.dist-info/RECORD,,\n"
    )
    code = "import pipeline.helptext as h; print(h.__file__); print(h.readme())"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    where, said = proc.stdout.splitlines()
    assert where == str(site / "pipeline" / "helptext.py")
    assert said == f"{info / 'METADATA'} (its description is the README)"
