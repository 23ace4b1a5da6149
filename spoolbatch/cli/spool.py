"""The spool itself: `init` makes it, `gc` clears what its retention and dead processes left."""

from __future__ import annotations

from typing import Annotated

import typer

from spoolbatch.cli.app import JsonOpt, SpoolOpt, config, handles_errors, out, print_json
from spoolbatch.cli.audit import audited
from spoolbatch.cli.units import size
from spoolbatch.errors import ConfigError
from spoolbatch.store.spool import Spool


@handles_errors
def init(spool: SpoolOpt = None, project: Annotated[list[str] | None, typer.Option(
        "--project", help="Also make inbox/NAME/, where a dropped file is project NAME's (repeatable).")] = None,
         json: JsonOpt = False) -> None:
    """Create the spool directories (idempotent), and a folder in the inbox for each project."""
    settings = config(spool)
    sp = Spool(settings.spool)
    names = list(dict.fromkeys([*(p.name for p in settings.projects), *(project or [])]))
    for name in names:
        sp.project_inbox(name)  # a bad name is refused before anything is made
    sp.init()
    folders = [str(sp.ensure_project_inbox(name)) for name in names]
    if json:
        print_json({"spool": str(sp.root), "created": True, "projects": dict(zip(names, folders, strict=True))})
    else:
        out.print(f"spool ready at {sp.root} (drop jobs into {sp.inbox}/)", markup=False)
        for name, folder in zip(names, folders, strict=True):
            out.print(f"  project {name}: drop its jobs into {folder}/", markup=False)


@handles_errors
def gc(
    spool: SpoolOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")] = False,
    older_than: Annotated[float | None, typer.Option(
        "--older-than", help="Remove finished jobs older than D days (default: retention_days, 30).")] = None,
    json: JsonOpt = False,
) -> None:
    """Remove finished jobs past their retention, and dead workers' files, stale temporaries, orphans."""
    from spoolbatch.commands.gc import gc as do_gc

    if older_than is not None and older_than < 0:
        raise ConfigError("--older-than must not be negative")
    cfg = config(spool)
    if dry_run:
        report = do_gc(cfg, older_than_days=older_than, dry_run=True)
    else:
        with audited(cfg, "gc"):
            report = do_gc(cfg, older_than_days=older_than, dry_run=False)
    if json:
        print_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for r in report.removed:
        detail = f" ({r.detail})" if r.detail else ""
        out.print(f"{verb} {r.kind.value} {r.name}{detail}: {r.files} file(s), {size(r.bytes)}", markup=False)
    for job in report.skipped:
        out.print(f"skipped job {job}: busy now, the next gc has it", markup=False)
    for job in report.repaired:
        out.print(f"repaired job {job}: its cancel was cut short, now a cancelled job", markup=False)
    freed = "would free" if dry_run else "freed"
    out.print(f"{verb} {len(report.removed)} item(s), {freed} {size(report.bytes_freed)}")
