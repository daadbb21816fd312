"""krea-reproduce: re-issue recorded requests with their recorded seeds and compare the images.

What to reproduce (Hydra overrides; exactly one source):

    krea-reproduce run_dir=<run dir> select=[<cell_id>,<cell_id>]     cells by id (or select=<id>)
    krea-reproduce run_dir=<run dir> 'select="seed == 42 and `settings.creativity` == \\"high\\""'
                                                                         a pandas query (quoted)
    krea-reproduce image=<image file>                                  the recipe in an image file
                                                 (also image=[a.png,b.png] or select=image:<file>)

`run_dir` may be a multirun dir: the manifests of its job dirs are merged. The query runs over the
manifest (backticks around column names with dots); rows of failed cells have no image and are
skipped. Every image of a selected cell is compared when cells are named by id; a query or an
image compares just the images it names (the whole cell is re-issued either way).

Each cell is re-issued as it was planned (`plan.parquet`, or the recipe's `cell_request`), so local
reference files are uploaded again; when one no longer exists (or changed), the copy the run
uploaded is sent instead (a Runware image UUID, kept about 30 days), and a note says so. The seed
is the recorded one and the cell id must come out the same (a mismatch is a bug and stops here).
The requests go through krea-run's plan → budget → runner with the store's reproductions area
(`reproductions`) in place of the store, so an image is never served from krea-run's store (it
would be compared with itself) and a reproduction is never answered by the recorded task; the
journal, the budget and recovery by taskUUID still protect the money, and a stopped reproduction
run again takes what it finished from that area instead of paying twice.

An image is `identical` when sha256 of the API bytes (`images.strip_recipe` of the new file)
equals the recorded `image_sha256`; otherwise `different`, measured by the mean absolute pixel
difference (0–255 over all channels) and the share of pixels that differ at all (or a note that
the sizes differ), or `failed` when no image came back. The table is printed and written to
`reproduce.csv` in the new run dir.

Exit codes: 0 every image identical (or a dry run); 1 an image differs or failed, or a bad select
(one line on stderr); 2 and 130 as krea-run (the run stopped early; interrupted).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline import images, rundir
from pipeline import job as jobs
from pipeline.entry import JobContext, console, job_context, report_errors, to_plain
from pipeline.errors import ConfigError
from pipeline.progress import shown
from pipeline.reproduction import (
    Source,
    compare,
    comparison_frame,
    format_table,
    prepare_area,
    rebuild_cell,
    reproductions,
)
from pipeline.resources import CONF_DIR
from pipeline.selection import load_selection, parse_select, task_of
from pipeline.sweep import Cell


def reproduce_job(cfg: dict[str, Any], ctx: JobContext) -> int:
    """The whole krea-reproduce job on plain data; returns the exit code."""
    job = jobs.start(cfg, ctx.run_dir)
    selection = load_selection(
        parse_select(cfg.get("select"), cfg.get("image"), cfg.get("run_dir"))
    )
    if ctx.run_dir.resolve() in {d.resolve() for d in selection.dirs}:
        raise ConfigError(
            f"the new run dir {shown(ctx.run_dir)} is the run being reproduced: a reproduction "
            "writes to a run dir of its own (leave hydra.run.dir alone, or name a new one)"
        )
    cells: list[Cell] = []
    for rec in selection.cells:
        cell, note = rebuild_cell(rec)
        cells.append(cell)
        if note:
            selection.notes.append(note)
    print(
        f"reproduce  {len(selection.targets)} image(s) of {len(cells)} cell(s) from "
        f"{selection.source}",
        flush=True,
    )
    for note in selection.notes:
        print(f"note       {note}", flush=True)
    store = reproductions(job.store.root, job.api.backend)
    originals = (selection.originals | {task_of(r.sent) for r in selection.cells}) - {""}
    for note in prepare_area(store, cells, originals, job.api.backend):
        print(f"note       {note}", flush=True)
    source = Source(selection.name or "reproduce", selection.axis_names)
    ended = jobs.run_plan(job, lambda: cells, sweep=source, store=store)
    if not ended.ran:  # stopped at a gate (dry run, not confirmed): nothing to compare
        return ended.code
    code = ended.code
    rows = compare(selection.targets, ctx.run_dir, originals)
    report = ctx.run_dir / rundir.REPRODUCE_CSV
    images.write_atomic(report, comparison_frame(rows).to_csv(index=False).encode("utf-8"))
    print(format_table(rows), flush=True)
    print(f"written    {shown(report)}", flush=True)
    if code in (2, 130):
        return code
    if all(r.result != "failed" for r in rows):
        # Every reproduction came back and is reported: the next krea-reproduce asks the API anew.
        for cell in cells:
            store.remove(cell.cell_id)
            store.clear_intent(cell.cell_id)  # settled: its task must not answer a later one
    return 0 if all(r.result == "identical" for r in rows) else 1


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="reproduce")
def main(cfg: DictConfig) -> None:
    """Console script `krea-reproduce`."""
    report_errors("krea-reproduce", lambda: reproduce_job(to_plain(cfg), job_context()), cfg)


def cli() -> None:
    """Console script `krea-reproduce`."""
    console(main, "krea-reproduce")


if __name__ == "__main__":
    cli()
