"""`spoolbatch usage`: requests, tokens and GPU seconds per project and UTC day, from the jobs' checkpoints."""

from __future__ import annotations

from typing import Annotated

import typer

from spoolbatch.cli.app import JsonOpt, ProjectOpt, SpoolOpt, config, handles_errors, out, print_json
from spoolbatch.cli.tables import Col, FitTable, print_table
from spoolbatch.store.spool import Spool


@handles_errors
def usage(
    spool: SpoolOpt = None, project: ProjectOpt = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="From this UTC day on: YYYY-MM-DD, or Nd for the last N days (1d: today).")] = None,
    json: JsonOpt = False,
) -> None:
    """Usage per project and UTC day: requests, prompt and completion tokens, GPU (engine) seconds."""
    from spoolbatch.commands.usage import parse_since
    from spoolbatch.commands.usage import usage as gather

    rows = gather(Spool(config(spool).spool), project, parse_since(since) if since is not None else None)
    if json:
        print_json([r.to_dict() for r in rows])
        return
    cols = (Col("day"), Col("project"), Col("requests", right=True), Col("prompt tokens", right=True, drop=2),
            Col("completion tokens", right=True, drop=1), Col("GPU seconds", right=True))
    table = [(r.day, r.project, f"{r.requests:,}", f"{r.prompt_tokens:,}", f"{r.completion_tokens:,}",
              f"{r.gpu_seconds:,.1f}") for r in rows]
    print_table(out, FitTable(cols, table, title=f"usage: {len(rows)} project-day(s)"))
