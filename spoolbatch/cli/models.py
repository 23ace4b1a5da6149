"""`spoolbatch models`: the models this machine can run, the LoRA adapters on them, and whether each is ready."""

from __future__ import annotations

from spoolbatch.cli.app import JsonOpt, SpoolOpt, config, handles_errors, out, print_json
from spoolbatch.cli.tables import Col, FitTable, print_table


@handles_errors
def models(spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Configured and cached models, LoRA adapters and their base models, and whether each is ready to run."""
    from spoolbatch.commands.models import catalog

    found = catalog(config(spool))
    if json:
        print_json(found.to_dict())
        return
    cols = (Col("name"), Col("kind", drop=2), Col("source", drop=3), Col("ready"), Col("path / note", fold=True))
    rows = [(m.name, m.kind, m.source, "yes" if m.ready else "no", m.path or m.note) for m in found.models]
    print_table(out, FitTable(cols, rows, title=f"models (default here: {found.default})"))
    if found.adapters:
        cols = (Col("adapter"), Col("base"), Col("rank", drop=2), Col("ready"), Col("path / note", fold=True))
        rows = [(a.name, a.base, str(a.rank or ""), "yes" if a.ready else "no", a.note or a.path)
                for a in found.adapters]
        print_table(out, FitTable(cols, rows, title="LoRA adapters ([[adapters]] in config.toml)"))
