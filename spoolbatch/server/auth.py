"""Who may call: Bearer keys compared in constant time; with no keys, loopback clients only.

A reverse proxy on the same box connects from loopback, so without keys every client of the
proxy would pass: a request that carries a proxy's header is not a loopback client. The check
reads the request's own headers (uvicorn's proxy-header rewriting of the client address is also
off without keys, see ``server.run``); a proxy that adds no header cannot be told from a local
client, which is why a proxy needs keys (README).
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from spoolbatch.config import Config
from spoolbatch.errors import ConfigError
from spoolbatch.server.errors import ApiError

# The headers by which a reverse proxy names the client or the host it was asked for.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-forwarded-proto",
                 "x-forwarded-server", "x-client-ip", "true-client-ip", "via")
NO_KEYS_MESSAGE = ("This server has no API keys, so it answers loopback clients only, and a request through a "
                   "proxy ({header} header) is not one: set api_keys in config.toml or SPOOLBATCH_API_KEYS.")


def proxy_header(request: Request) -> str | None:
    """The first proxy header the request carries (by its raw headers), or None."""
    headers = request.headers
    return next((name for name in PROXY_HEADERS if name in headers), None)


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
            if (header := proxy_header(request)) is not None:
                raise ApiError(401, NO_KEYS_MESSAGE.format(header=header), code="invalid_api_key")
            if not is_loopback(request.client.host if request.client else None):
                raise ApiError(401, "This server has no API keys, so it answers loopback clients only: set api_keys "
                               "in config.toml or SPOOLBATCH_API_KEYS.", code="invalid_api_key")
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
