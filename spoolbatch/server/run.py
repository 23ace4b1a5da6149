"""Run the server: check the bind address against the keys, sweep stale uploads, start uvicorn."""

from __future__ import annotations

import sys

from spoolbatch.config import Config
from spoolbatch.server.auth import check_bind, has_keys
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
    if not has_keys(config):
        print(f"spoolbatch serve: no API keys, so loopback clients only ({host}:{port}); a request carrying a "
              "proxy header is refused: a reverse proxy needs api_keys", file=sys.stderr, flush=True)
    # Without keys, the client's address is the connection's own: no header may rewrite it.
    uvicorn.run(app, host=host, port=port, log_config=None, server_header=False,  # logging: `serve` routes it
                proxy_headers=has_keys(config))
