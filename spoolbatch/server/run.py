"""Run the server: check the bind address against the keys, sweep stale uploads, start uvicorn."""

from __future__ import annotations

from spoolbatch.config import Config
from spoolbatch.server.auth import check_bind
from spoolbatch.store import files as filestore
from spoolbatch.store.spool import Spool


def serve(config: Config, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the spool's API until interrupted (uvicorn handles SIGINT and SIGTERM)."""
    import uvicorn

    from spoolbatch.server.app import create_app

    check_bind(config, host)
    spool = Spool(config.spool)
    spool.require()
    spool.ensure_api_dirs()
    filestore.sweep(spool)
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
