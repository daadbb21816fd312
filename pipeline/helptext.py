"""The `--help` pages of the three commands (Hydra `hydra/help` configs, registered in config.py).

In a template, `$APP_CONFIG_GROUPS` lists the config groups and `$$` is a literal `$`;
`${krea_readme:}` is where the README is (an OmegaConf resolver, so it is looked up on --help only).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def readme() -> str:
    """Where the README is: the checkout's README.md, or the METADATA of an installed wheel."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "README.md").is_file() and (checkout / "pyproject.toml").is_file():
        return str(checkout / "README.md")
    try:
        files = metadata.distribution("krea-sweep").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "METADATA" and file.parent.name.endswith(".dist-info"):
            return f"{Path(str(file.locate()))} (its description is the README)"
    return "README.md in krea-sweep's source"


RUN = """\
krea-run: expand a YAML sweep, validate every request against its model's schema (Krea 2
Large by default, or Krea 2 Medium), price the plan against your budget, then generate the
images on Runware (or the offline emulator) and write them with a manifest. Nothing is ever
paid twice.

Usage: krea-run [key=value ...]        a multirun: krea-run -m key=a,b ...

Main options [default]:
  sweep=NAME | sweep=path/to/file.yaml   the sweep to run [demo]
  dry_run=true              stop after the plan: nothing is sent, not even an upload [false]
  budget.max_usd=N          refuse a plan estimated above N dollars; never spend past it [5]
  api=auto|runware|emulator auto: Runware when RUNWARE_API_KEY is set, else the emulator [auto]
  confirm=false             do not ask before spending on the real API [true]
  runner.concurrency=N      tasks in flight, 1..1024 [8]
  store.dir=PATH            the store of paid cells [$$KREA_SWEEP_STORE, else the user data dir]
  shard.index=I shard.count=N   run one shard of the cells [0 of 1]
  hydra.run.dir=PATH        where the run goes; an existing run dir is resumed

Examples:
  krea-run dry_run=true                        plan the demo and stop
  krea-run sweep=seed_study budget.max_usd=2
  krea-run sweep=./my-sweep.yaml               a sweep file anywhere (its paths are relative to it)
  krea-run sweep=demo 'sweep.seeds=[7,8]'      override one key of the sweep
  krea-run -m sweep=big_sampled shard.count=4 'shard.index=range(4)'

Config groups (group=option):
$APP_CONFIG_GROUPS
Every key and its value: krea-run --cfg job
Exit codes and more: ${krea_readme:}
"""

REPORT = """\
krea-report: tables (cost, failures, latency by axis), labelled contact sheets and one
self-contained HTML page, from one or more runs' manifests. Sends no request.

Usage: krea-report run_dir=RUN [key=value ...]

Main options [default]:
  run_dir=PATH | run_dir=[A,B]   a run dir, a multirun dir (shards merged), or runs to compare
  report.rows=AXIS          axis down a contact sheet [the first swept axis that varies]
  report.cols=AXIS          axis across a contact sheet [the next one]
  report.filter=QUERY       a pandas query limiting the sheets
  report.out_dir=PATH       where to write [<run_dir>/report]
  report.sheets=false       tables and HTML only [true]

Examples:
  krea-report run_dir=outputs/demo/2026-11-25_13-13-42
  krea-report run_dir=outputs/demo/2026-11-25_13-13-42 report.rows=settings.creativity \\
      'report.cols="inputs.referenceImages[0].strength"'
  krea-report 'run_dir=[outputs/demo/a,outputs/demo/b]'

Every key and its value: krea-report --cfg job
"""

REPRODUCE = """\
krea-reproduce: re-issue recorded requests with their seeds and compare the new images with
the originals (identical / differs, written to <run dir>/reproduce.csv). A reproduction
always asks the API again and pays for it; a stopped one rerun is never paid twice.

Usage: krea-reproduce run_dir=RUN select=WHICH [key=value ...]
       krea-reproduce image=path/to/image.png

Main options [default]:
  run_dir=PATH              a krea-run run dir (or a multirun dir)
  select=[id,...]           cell ids, or a quoted pandas query: 'select="seed == 42"'
  image=PATH                instead of run_dir + select: an image made by krea-run
  dry_run=true              stop after the plan: nothing is sent [false]
  budget.max_usd=N          refuse a reproduction estimated above N dollars [5]
  api=auto|runware|emulator the backend, as for krea-run [auto]

Examples:
  krea-reproduce run_dir=outputs/demo/2026-11-25_13-13-42 'select="seed == 42"'
  krea-reproduce image=outputs/demo/2026-11-25_13-13-42/images/3f2a0c9d1e7b4a5f6c8d-0.jpg

Every key and its value: krea-reproduce --cfg job
"""

HELP = {"krea-run": RUN, "krea-report": REPORT, "krea-reproduce": REPRODUCE}
