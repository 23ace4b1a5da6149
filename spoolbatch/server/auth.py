"""Who may call: Bearer keys compared in constant time; with no keys, loopback only."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from spoolbatch.config import Config
from spoolbatch.errors import ConfigError
from spoolbatch.server.errors import ApiError


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(config: Config, host: str) -> None:
    """Refuse to listen beyond loopback without keys (the CLI exits 2 with one line)."""
    if not config.api_keys and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without API keys",
                          hint="set api_keys in config.toml or SPOOLBATCH_API_KEYS, or serve on 127.0.0.1")


class BearerAuth:
    """A dependency: the request's Bearer key must be one of the configured keys."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = tuple(k.encode() for k in keys if k)

    async def __call__(self, request: Request) -> None:  # no I/O: runs on the event loop, no thread hop
        if not self.keys:
            if not is_loopback(request.client.host if request.client else None):
                raise ApiError(401, "This server takes requests from loopback only (it has no API keys).",
                               code="invalid_api_key")
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        given = key.strip().encode()
        ok = False
        for k in self.keys:  # every key compared, in constant time, whichever matches
            ok |= hmac.compare_digest(given, k)
        if scheme.lower() != "bearer" or not ok:
            raise ApiError(401, "Incorrect API key provided." if header else "You didn't provide an API key.",
                           code="invalid_api_key")
