"""Who may call, and for which project: a Bearer key resolved to a ``Principal``; with no keys, loopback only.

Keys are kept as their sha256 (``[[keys]]`` may hold only ``key_sha256``) and the hash of the
key a request sends is compared with every one of them in constant time, whichever matches.
A key belongs to one project (``api_keys`` are admins of ``default``); an admin sees every
project and may act for one by naming it in the ``OpenAI-Project`` header (what the openai SDK
sends for ``project=``). A key is never logged: logs and the audit trail name it by its
fingerprint, the first 8 hex digits of its sha256. A key in a query string is refused before
any route runs (``server.audit``), so it reaches neither a route nor the access log.

A reverse proxy on the same box connects from loopback, so without keys every client of the
proxy would pass: a request that carries a proxy's header is not a loopback client. The check
reads the request's own headers (uvicorn's proxy-header rewriting of the client address is also
off without keys, see ``server.run``); a proxy that adds no header cannot be told from a local
client, which is why a proxy needs keys (README).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from fastapi import Request

from spoolbatch.config import DEFAULT_PROJECT, ApiKey, Config, is_project_name
from spoolbatch.errors import ConfigError
from spoolbatch.server.errors import ApiError

# The headers by which a reverse proxy names the client or the host it was asked for.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-forwarded-proto",
                 "x-forwarded-server", "x-client-ip", "true-client-ip", "via")
PROJECT_HEADER = "openai-project"
NO_KEYS_MESSAGE = ("This server has no API keys, so it answers loopback clients only, and a request through a "
                   "proxy ({header} header) is not one: set api_keys in config.toml or SPOOLBATCH_API_KEYS.")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the project it acts for, whether it is an admin, and its key's fingerprint."""

    project: str = DEFAULT_PROJECT  # where what it creates goes
    admin: bool = False
    fingerprint: str | None = None  # None: no keys are configured (a loopback client)
    acting: bool = False  # an admin that named a project: it sees that project only, as its keys do

    @property
    def scope(self) -> str | None:
        """The project whose batches and files it sees; None: every project."""
        return None if self.admin and not self.acting else self.project

    def sees(self, project: str | None) -> bool:
        """True when a batch or file of ``project`` is visible to it."""
        return self.scope is None or (project or DEFAULT_PROJECT) == self.scope


def fingerprint(key: str | bytes) -> str:
    """The first 8 hex digits of a key's sha256: how logs name a key."""
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()[:8]


def has_keys(config: Config) -> bool:
    """True when the server has keys (``api_keys`` or ``[[keys]]``)."""
    return bool(config.api_keys or config.keys)


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
    if not has_keys(config) and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without API keys",
                          hint="set api_keys in config.toml or SPOOLBATCH_API_KEYS, or serve on 127.0.0.1")


def bearer_key(request: Request) -> str | None:
    """The key of the request's ``Authorization: Bearer`` header, or None."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


class KeyAuth:
    """A dependency: the request's Bearer key resolved to its ``Principal`` (without keys: a loopback client)."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys

    async def __call__(self, request: Request) -> Principal:  # no I/O: runs on the event loop, no thread hop
        if not self.keys:
            if (header := proxy_header(request)) is not None:
                raise ApiError(401, NO_KEYS_MESSAGE.format(header=header), code="invalid_api_key")
            if not is_loopback(request.client.host if request.client else None):
                raise ApiError(401, "This server has no API keys, so it answers loopback clients only: set api_keys "
                               "in config.toml or SPOOLBATCH_API_KEYS.", code="invalid_api_key")
            return self._acting(request, Principal(admin=True))
        key = bearer_key(request)
        found = self.match(key.encode()) if key is not None else None
        if found is None:
            raise ApiError(401, "Incorrect API key provided." if request.headers.get("authorization")
                           else "You didn't provide an API key.", code="invalid_api_key")
        return self._acting(request, Principal(found.project, found.admin, found.fingerprint))

    def match(self, key: bytes) -> ApiKey | None:
        """The configured key whose sha256 is ``key``'s: every one compared, in constant time."""
        digest = hashlib.sha256(key).digest()
        found = None
        for entry in self.keys:
            if hmac.compare_digest(digest, entry.sha256) and found is None:
                found = entry
        return found

    @staticmethod
    def _acting(request: Request, principal: Principal) -> Principal:
        """``principal`` acting for the project its ``OpenAI-Project`` header names (an admin: any; else its own)."""
        named = request.headers.get(PROJECT_HEADER, "").strip()
        if not named or named == principal.project and not principal.admin:
            return principal
        if not is_project_name(named):
            raise ApiError(400, f"{named[:80]!r} is not a project name (letters, digits, '-' and '_').",
                           param="OpenAI-Project", code="invalid_project")
        if not principal.admin:
            raise ApiError(401, f"This API key does not belong to project {named!r}.", code="invalid_project")
        return Principal(named, True, principal.fingerprint, acting=True)
