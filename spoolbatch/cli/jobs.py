"""The commands on jobs already in the spool: `list`, `results`, `deadletter`, `logs`, `cancel`, `retry`."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from spoolbatch.cli.app import JsonOpt, ProjectOpt, SpoolOpt, config, err, handles_errors, out, print_json
from spoolbatch.cli.audit import Change, audited
from spoolbatch.cli.tables import Col, FitTable, print_table
from spoolbatch.store.spool import Spool

if TYPE_CHECKING:
    from spoolbatch.commands.catalog import JobInfo

JobArg = Annotated[str, typer.Argument(help="Job id.")]
JobOrGroupArg = Annotated[str, typer.Argument(help="Job id or group name.")]


ROWS_AT_ONCE = 500  # a table of `list` is printed this many rows at a time, as they are read


@handles_errors
def list_(spool: SpoolOpt = None, project: ProjectOpt = None, json: JsonOpt = False,
          limit: Annotated[int | None, typer.Option(min=1, help="Only the newest N jobs (after --after).")] = None,
          after: Annotated[str | None, typer.Option(help="Only jobs older than this job id (the last of a page).")]
          = None) -> None:
    """Every job, newest first: queued, running, finished, refused; and the groups that submit --split made.

    Rows are printed as the jobs are read (a table every 500 rows), so the first come at once however
    many jobs the spool keeps.
    """
    from itertools import islice

    from spoolbatch.cli.views import groups_table, jobs_table
    from spoolbatch.commands.catalog import read_groups
    from spoolbatch.commands.listing import iter_jobs

    sp = Spool(config(spool).spool)
    jobs = iter_jobs(sp, after=after, project=project, probe_owner=True)
    if limit is not None:
        jobs = islice(jobs, limit)
    parts = {job for names in read_groups(sp).values() for job in names} if limit is None and after is None else set()
    seen: dict[str, JobInfo] = {}  # the groups' parts, for their table
    shown = 0
    if json:  # the same bytes print_json writes for the whole list, an element at a time
        for info in jobs:
            seen.update({info.job: info} if info.job in parts else {})
            item = orjson.dumps(info.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
            sys.stdout.buffer.write((b"[\n" if not shown else b",\n") + b"  " + item.replace(b"\n", b"\n  "))
            shown += 1
        sys.stdout.buffer.write(b"\n]\n" if shown else b"[]\n")
        sys.stdout.buffer.flush()
        return
    while block := list(islice(jobs, ROWS_AT_ONCE)):
        seen.update((j.job, j) for j in block if j.job in parts)
        table = jobs_table({"spool": sp.root, "jobs": [j.to_dict() for j in block]})
        if shown:
            table.title = None
        print_table(out, table)
        shown += len(block)
    if not shown:
        print_table(out, jobs_table({"spool": sp.root, "jobs": []}))
    if parts:
        _groups(sp, list(seen.values()), project, groups_table)


def _groups(sp: Spool, parts: list[JobInfo], project: str | None, render: Any) -> None:
    from spoolbatch.commands.catalog import list_groups

    names = {j.job for j in parts}
    groups = [g for g in list_groups(sp, parts) if project is None or g.group in names or _all_mine(sp, g.group, names)]
    if groups:
        print_table(out, render(groups))


def _all_mine(sp: Spool, group: str, names: set[str]) -> bool:
    from spoolbatch.commands.catalog import group_jobs

    return set(group_jobs(sp, group)) <= names


def _write_lines(lines: Iterable[bytes], output: Path | None) -> int:
    n = 0
    if output is None:
        for line in lines:
            sys.stdout.buffer.write(line)
            n += 1
        sys.stdout.buffer.flush()
        return n
    from spoolbatch.store.fsutil import atomic_write

    data = b"".join(lines)
    atomic_write(output, data)
    return data.count(b"\n")


@handles_errors
def results(
    job: JobOrGroupArg,
    spool: SpoolOpt = None,
    errors: Annotated[bool, typer.Option("--errors", help="Print the error file: deadletter and the requests a "
                                         "cancel or expiry left unrun, as OpenAI error lines.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to FILE instead of stdout.")] = None,
    project: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Committed OpenAI output lines of a job or group (JSONL); with --project, only one of that project's."""
    from spoolbatch.commands import catalog as j
    from spoolbatch.commands.batches import error_file

    sp = Spool(config(spool).spool)
    j.check_project(sp, job, project)
    lines = error_file(sp, job) if errors else j.results(sp, job)
    n = _write_lines(lines, output)
    if output is not None:
        if json:
            print_json({"output": str(output), "lines": n})
        else:
            err.print(f"wrote {n:,} lines to {output}")


@handles_errors
def deadletter(job: JobOrGroupArg, spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Bad records of a job: line, custom_id, error, attempts."""
    from spoolbatch.commands.catalog import deadletter as records

    items = list(records(Spool(config(spool).spool), job))
    if json:
        print_json(items)
        return
    cols = (Col("line", right=True), Col("custom_id"), Col("code"), Col("message", fold=True),
            Col("attempts", right=True, drop=1))
    rows = [(str(r["line"]), str(r.get("custom_id") or "-"), r["error"]["code"], r["error"]["message"],
             str(r.get("attempts", 0))) for r in items]
    print_table(out, FitTable(cols, rows, title=f"deadletter of {job}: {len(items)} record(s)"))


@handles_errors
def logs(job: JobArg, spool: SpoolOpt = None,
         tail: Annotated[int | None, typer.Option("-n", "--tail", help="Only the last N lines.")] = None,
         json: JsonOpt = False) -> None:
    """The job's log: claim, chunks, retries, end (with --json, its events)."""
    from spoolbatch.commands.catalog import log_events, log_lines

    sp = Spool(config(spool).spool)
    if json:
        print_json(log_events(sp, job, tail))
    else:
        for line in log_lines(sp, job, tail):
            out.print(line, markup=False)


@handles_errors
def cancel(job: JobArg, spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Remove a queued job, or stop a running one at its next chunk boundary."""
    from spoolbatch.commands.control import CancelOutcome
    from spoolbatch.commands.control import cancel as do_cancel

    cfg = config(spool)
    with audited(cfg, "cancel", Change(id=job)):
        done = do_cancel(Spool(cfg.spool), job)
    what = {CancelOutcome.REMOVED: "removed from the queue",
            CancelOutcome.CANCELLED_QUEUED: "removed from the queue (kept as a cancelled job)",
            CancelOutcome.STOP_REQUESTED: "cancel requested: the daemon stops it at the next chunk boundary, "
                                          "checkpoint kept",
            CancelOutcome.STOP_PENDING: "cancel requested: the job stops when a daemon next picks it up "
                                        "(no daemon holds it now)"}[done.outcome]
    if json:
        print_json({"job": done.job, "outcome": done.outcome.value, "result": what})
    else:
        out.print(f"{done.job}: {what}")


@handles_errors
def retry(job: JobArg, spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Resubmit a job's deadletter records as a new job."""
    from spoolbatch.commands.control import retry as do_retry

    cfg = config(spool)
    with audited(cfg, "retry", Change(id=job)) as change:
        new, n = do_retry(Spool(cfg.spool), job)
        change.id = new
    if json:
        print_json({"job": new, "records": n})
    else:
        out.print(f"queued job {new}: {n:,} record(s) from {job}")
