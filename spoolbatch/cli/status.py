"""`spoolbatch status`: workers, GPUs, the queue and each job, once, as JSON, or as a live view."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

import typer

from spoolbatch.cli.app import JsonOpt, ProjectOpt, SpoolOpt, config, handles_errors, out, print_json
from spoolbatch.cli.tables import FitTable, print_table
from spoolbatch.store.spool import Spool


@handles_errors
def status(
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    spool: SpoolOpt = None, project: ProjectOpt = None, json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="A live view, refreshed until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Refresh interval of --watch, seconds.")] = 2.0,
) -> None:
    """Workers (alive/stale/dead), GPU, queue, and each job's progress and ETA (with --json, usage per project
    and day)."""
    from spoolbatch.commands.status import status as gather

    settings = config(spool)
    sp = Spool(settings.spool)
    if json:
        print_json(gather(sp, job, project).to_dict())
        return
    if not watch:
        from spoolbatch.cli.views import status_lines

        for line in status_lines(gather(sp, job, project).to_dict()):
            print_table(out, line) if isinstance(line, FitTable) else out.print(line)
        return
    from rich.live import Live

    from spoolbatch.cli.live import Limits, live_view

    limits = Limits(settings.gpu_max_memory_pct, settings.gpu_max_temp_c)
    footer = f"refreshing every {interval:g}s; Ctrl-C to leave"
    with contextlib.suppress(KeyboardInterrupt), Live(console=out, auto_refresh=False, screen=False) as live:
        while True:  # Ctrl-C is how a person leaves the live view: exit 0
            live.update(live_view(gather(sp, job, project).to_dict(), limits, footer=footer), refresh=True)
            time.sleep(interval)
