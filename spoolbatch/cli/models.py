"""`spoolbatch models`: the models this machine can run, and whether each is ready."""

from __future__ import annotations

from spoolbatch.cli.app import JsonOpt, SpoolOpt, config, handles_errors, out, print_json
from spoolbatch.cli.tables import Col, FitTable, print_table


@handles_errors
def models(spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Configured and cached models, and whether each is ready to run."""
    from spoolbatch.engines.models import default_model, list_models

    items = list_models(config(spool).model_dir)
    if json:
        print_json({"default": default_model(), "models": [m.to_dict() for m in items]})
        return
    cols = (Col("name"), Col("kind", drop=2), Col("source", drop=3), Col("ready"), Col("path / note", fold=True))
    rows = [(m.name, m.kind, m.source, "yes" if m.ready else "no", m.path or m.note) for m in items]
    print_table(out, FitTable(cols, rows, title=f"models (default here: {default_model()})"))
