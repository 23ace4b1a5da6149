"""`spoolbatch serve`: the OpenAI Files and Batches API over the spool."""

from __future__ import annotations

from typing import Annotated

import typer

from spoolbatch.cli.app import SpoolOpt, VerboseOpt, config, handles_errors
from spoolbatch.errors import ConfigError


@handles_errors
def serve(
    spool: SpoolOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (without API keys: loopback only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    verbose: VerboseOpt = 0,
) -> None:
    """The OpenAI Files and Batches API over the spool (pip install 'spoolbatch[serve]')."""
    settings = config(spool)
    try:
        from spoolbatch.server.run import serve as do_serve
    except ImportError as exc:
        raise ConfigError(f"serve needs its extra: pip install 'spoolbatch[serve]' ({exc.name} is missing)") from None
    from spoolbatch.logsetup import LogHandler, Route

    with Route(LogHandler(None, stderr=True), verbose):  # stderr is the server's log: warnings, a 500's traceback
        do_serve(settings, host, port)
