"""`spoolbatch submit`: validate a job file and queue it (or a group of parts), with its batch record."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from spoolbatch.cli.app import JsonOpt, SpoolOpt, config, handles_errors, out, print_json
from spoolbatch.cli.audit import Change, audited
from spoolbatch.cli.units import duration
from spoolbatch.config import DEFAULT_PROJECT, is_project_name
from spoolbatch.errors import BadLines, ConfigError


def _bad_line(line: int, code: str, message: str) -> dict[str, Any]:
    return {"line": line, "code": code, "message": message}


@handles_errors
def submit(
    file: Annotated[Path, typer.Argument(help="OpenAI batch input file (JSONL).")],
    spool: SpoolOpt = None,
    name: Annotated[str | None, typer.Option(help="Job id to use instead of the file name.")] = None,
    split: Annotated[bool, typer.Option("--split", help="Cut a file over the per-job limits into a group.")] = False,
    allow_bad_lines: Annotated[bool, typer.Option("--allow-bad-lines",
                                                  help="Submit anyway; bad lines go to deadletter.")] = False,
    metadata: Annotated[list[str] | None, typer.Option(
        "--metadata", help="KEY=VALUE batch metadata (repeatable; 16 pairs, as OpenAI's).")] = None,
    completion_window: Annotated[str | None, typer.Option(
        "--completion-window", help="Expire what has not run after this long: N s/m/h/d, 10s to 7d.")] = None,
    project: Annotated[str | None, typer.Option(
        "--project", help="The project the job belongs to (it waits in inbox/NAME/); over its quotas: exit 5.",
        show_default=False)] = None,
    priority: Annotated[str | None, typer.Option(
        "--priority", help="low, normal (the default), high, urgent, or a number from -1000 to 1000: "
                           "the most urgent job takes the next chunk.")] = None,
    json: JsonOpt = False,
) -> None:
    """Validate a job file and queue it atomically."""
    from spoolbatch.commands.submit import submit as do_submit
    from spoolbatch.store.batches import BatchSpec, batch_id
    from spoolbatch.store.priority import parse_priority, priority_label

    batch = None
    if metadata or completion_window or priority is not None:
        pairs = {}
        for item in metadata or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--metadata {item!r}: give KEY=VALUE")
            pairs[key] = value
        batch = BatchSpec(completion_window=completion_window, metadata=pairs, priority=priority)
    if project is not None:
        if not is_project_name(project):
            raise ConfigError(f"--project {project[:80]!r}: a project name is letters, digits, '-' and '_'")
        batch = dataclasses.replace(batch or BatchSpec(), project=project)
    cfg = config(spool)
    try:
        with audited(cfg, "submit", Change(project=project or DEFAULT_PROJECT)) as change:
            result = do_submit(file, cfg, name=name, split=split, allow_bad_lines=allow_bad_lines, batch=batch)
            change.id = result.group or result.jobs[0]
    except BadLines as exc:
        if not json:
            raise
        print_json({"error": {"code": "bad_lines", "message": exc.summary, "hint": exc.hint},
                    "bad_lines": exc.count, "bad": [_bad_line(*b) for b in exc.lines]})
        raise typer.Exit(exc.exit_code) from None
    v = result.validation
    if json:
        print_json({"jobs": result.jobs, "batches": [batch_id(j) for j in result.jobs], "group": result.group,
                    "metadata": batch.metadata if batch else None, "requests": result.requests,
                    "priority": priority_label(parse_priority(priority)) if priority is not None else "normal",
                    "bad_lines": v.bad_count if v else 0,
                    "bad": [_bad_line(b.line, b.code, b.message) for b in v.bad] if v else [],
                    "model": v.model if v else None, "url": v.url if v else None,
                    "estimate_seconds": result.estimate_seconds})
        return
    what = f"group {result.group} ({len(result.jobs)} jobs: {', '.join(result.jobs)})" if result.group \
        else f"job {result.jobs[0]}"
    out.print(f"queued {what}: {result.requests:,} requests for {v.model if v else '?'} ({v.url if v else '?'})")
    if batch is not None and not result.group:
        out.print(f"  batch {batch_id(result.jobs[0])}" + (f", metadata {batch.metadata}" if batch.metadata else "")
                  + (f", priority {priority_label(parse_priority(priority))}" if priority is not None else ""))
    if v and v.bad_count:
        out.print(f"  {v.bad_count:,} bad line(s) will go to deadletter:", markup=False)
        for b in v.bad[:BadLines.shown]:
            out.print(f"    {file}:{b.line}: {b.message}", markup=False)
        if v.bad_count > BadLines.shown:
            out.print(f"    ... and {v.bad_count - BadLines.shown:,} more (`spoolbatch deadletter JOB` lists them)")
    if result.estimate_seconds is not None:
        out.print(f"  estimate: about {duration(result.estimate_seconds)} {result.estimate_basis}")
    else:
        out.print(f"  estimate: unknown, {result.estimate_basis}")
