"""The audit trail's middleware: a line per change (upload, create, cancel, delete) and per refused key.

A pure ASGI middleware around the app: it reads the answer's status (and, for a JSON answer,
the ``id`` it made or the error's ``code``) as it goes out, and the caller's ``Principal`` that
the auth dependency left in the request's state; it writes one ``store.audit`` line for every
POST or DELETE that reached a route, and for every 401. It first refuses a key sent in the
query string (``?api_key=``, ``?key=``...): the value is blanked in the request before anything
logs it (uvicorn's access line reads the same scope), and the answer is a 401 naming the header to use.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spoolbatch.server.auth import Principal, fingerprint
from spoolbatch.server.errors import error_response
from spoolbatch.store.audit import AuditEntry, AuditLog

# Query parameters a client might put a key in; none of our routes takes one.
KEY_PARAMS = frozenset({"api_key", "api-key", "apikey", "key", "access_token"})
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_CAPTURE = 64 * 1024  # a JSON answer read for its id or error code (a batch object is ~1 KB)
QUERY_KEY_MESSAGE = "API keys are not accepted in the query string: send them as 'Authorization: Bearer KEY'."


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _bearer_fingerprint(scope: Scope) -> str | None:
    scheme, _, key = (_header(scope, b"authorization") or "").partition(" ")
    return fingerprint(key.strip()) if scheme.lower() == "bearer" and key.strip() else None


class AuditTrail:
    """The middleware: ``app`` wrapped so its changes and refused keys are written to ``audit``."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (given := self._query_key(scope)) is not None:
            self._write(scope, 401, "refused_key", key=fingerprint(given[1]), project=None)
            await error_response(401, QUERY_KEY_MESSAGE, param=given[0], code="invalid_api_key")(scope, receive, send)
            return
        answer = _Answer()

        async def watched(message: Message) -> None:
            answer.see(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._record(scope, answer)  # before the answer's end: a client that has it finds its line
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self._record(scope, answer)  # the app failed before answering: a 500

    def _record(self, scope: Scope, answer: _Answer) -> None:
        """The line of this request, once: a refused key, or a change that reached a route."""
        if answer.recorded:
            return
        answer.recorded = True
        status = answer.status or 500
        if status == 401:
            self._write(scope, 401, "refused_key", key=_bearer_fingerprint(scope), project=None)
        elif scope["method"] in CHANGES and scope.get("route") is not None:
            self._write(scope, status, answer.outcome(), made=answer.made_id())

    @staticmethod
    def _query_key(scope: Scope) -> tuple[str, str] | None:
        """(parameter, value) of a key in the query string, which is blanked in ``scope`` as it is found."""
        query = scope.get("query_string") or b""
        if not query:
            return None
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        found = next(((k, v) for k, v in pairs if k.lower() in KEY_PARAMS and v), None)
        if found is not None:  # what logs the request line (uvicorn's access log) reads this same scope
            scope["query_string"] = urlencode([(k, "REDACTED" if k.lower() in KEY_PARAMS else v)
                                               for k, v in pairs]).encode()
        return found

    def _write(self, scope: Scope, status: int, outcome: str, *, made: str | None = None,
               key: str | None = None, project: str | None = "") -> None:
        state = scope.get("state") or {}
        principal: Principal | None = state.get("principal")
        route = scope.get("route")
        params: dict[str, Any] = scope.get("path_params") or {}
        named = params.get("batch_id") or params.get("file_id")
        self.audit.write(AuditEntry(
            method=scope["method"], route=getattr(route, "path", None) or scope.get("path", ""), status=status,
            outcome=outcome,
            project=(principal.project if principal else None) if project == "" else project,
            key=key if principal is None else principal.fingerprint,
            id=made or (str(named)[:200] if named else None), ts=time.time()))


class _Answer:
    """What went out: the status, and the start of a JSON body."""

    def __init__(self) -> None:
        self.status = 0
        self.json = False
        self.body = bytearray()
        self.recorded = False

    def see(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            ctype = dict(message.get("headers") or ()).get(b"content-type", b"")
            self.json = ctype.startswith(b"application/json")
        elif message["type"] == "http.response.body" and self.json and len(self.body) < MAX_CAPTURE:
            self.body += message.get("body", b"")

    def _data(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.body) if self.json and len(self.body) < MAX_CAPTURE else None
        except orjson.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    def outcome(self) -> str:
        """``ok`` for a 2xx, else the error's code (or ``http_STATUS``)."""
        if 200 <= self.status < 300:
            return "ok"
        error = self._data().get("error")
        code = error.get("code") if isinstance(error, dict) else None
        return str(code)[:80] if code else f"http_{self.status}"

    def made_id(self) -> str | None:
        """The ``id`` of a 2xx JSON answer (the batch or file made, cancelled or deleted)."""
        if not 200 <= self.status < 300:
            return None
        made = self._data().get("id")
        return str(made)[:200] if made else None
