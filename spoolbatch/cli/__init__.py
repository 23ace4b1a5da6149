"""The command line: each command parses, builds config, makes one library call, and renders.

``app`` (typer, the shared options and the one error wrapper) is ``cli/app.py``; the commands
live by theme (``spool``: init, gc; ``submit``; ``jobs``: list, results, deadletter, logs,
cancel, retry; ``status``; ``usage``; ``daemon``: run; ``models``; ``serve``) and are registered below in
the order ``--help`` lists them. How things look is ``tables`` (tables that fit the terminal),
``views`` (`status` and `list`), ``live`` (`status --watch` and `run`'s bars) and ``units``
(sizes and durations). Exit codes: see ``cli/app.py``.
"""

from __future__ import annotations

from spoolbatch.cli import daemon, jobs, models, serve, spool, status, submit, usage
from spoolbatch.cli.app import app

__all__ = ["app", "main"]

for _name, _command in (("init", spool.init), ("submit", submit.submit), ("run", daemon.run),
                        ("status", status.status), ("list", jobs.list_), ("results", jobs.results),
                        ("deadletter", jobs.deadletter), ("logs", jobs.logs), ("cancel", jobs.cancel),
                        ("retry", jobs.retry), ("usage", usage.usage), ("models", models.models),
                        ("serve", serve.serve), ("gc", spool.gc)):
    app.command(_name)(_command)


def main() -> None:
    """Console-script entry point."""
    app()
