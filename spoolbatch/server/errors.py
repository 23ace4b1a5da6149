"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; never a traceback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from spoolbatch.errors import FileNotFound, InputError, JobNotFound, LimitExceeded, QuotaExceeded, SpoolbatchError

log = logging.getLogger("spoolbatch.serve")
QUEUE_LIMITS = ("queued jobs", "queued requests")
# The request field a library error's code is about.
PARAM_OF_CODE = {"invalid_completion_window": "completion_window", "invalid_metadata": "metadata",
                 "endpoint_mismatch": "endpoint", "invalid_endpoint": "endpoint", "invalid_purpose": "purpose",
                 "model_mismatch": "model", "missing_file": "file", "batch_file": "file_id"}
# The code of a refused field, where it has one of its own.
CODE_OF_PARAM = {"input_file_id": "invalid_input_file_id", "endpoint": "invalid_endpoint",
                 "completion_window": "invalid_completion_window", "metadata": "invalid_metadata"}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}


class ApiError(Exception):
    """An answer other than 2xx, rendered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        """The JSON response."""
        return error_response(self.status, self.message, param=self.param, code=self.code)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                                   "param": param, "code": code}}, status_code=status, headers=headers)


def from_library(exc: SpoolbatchError, param: str | None = None) -> ApiError:
    """The HTTP answer to an error the library raised; ``param`` names the field when its code does not."""
    if isinstance(exc, JobNotFound):
        return ApiError(404, f"No batch found with id 'batch_{exc.job}'.", param="batch_id", code="not_found")
    if isinstance(exc, FileNotFound):
        return ApiError(404, f"No such File object: {exc.file_id[:120]!r}.", param=param or "file_id",
                        code="not_found")
    if isinstance(exc, QuotaExceeded):  # a project's quota: OpenAI's 429, the limit named in the message
        return ApiError(429, exc.reason + (f"; {exc.hint}" if exc.hint else ""), code=exc.code)
    if isinstance(exc, LimitExceeded) and exc.limit in QUEUE_LIMITS:
        return ApiError(429, exc.reason + (f"; {exc.hint}" if exc.hint else ""), code="queue_full")
    if isinstance(exc, InputError):
        return ApiError(400, exc.reason, param=PARAM_OF_CODE.get(exc.code, param), code=exc.code)
    return ApiError(400, exc.message, param=param, code="invalid_request")


@contextlib.contextmanager
def about(param: str) -> Iterator[None]:
    """Library errors raised inside answer naming the request field ``param`` (unless their code names one)."""
    try:
        yield
    except SpoolbatchError as exc:
        raise from_library(exc, param) from None


def invalid(errors: Sequence[Any]) -> ApiError:
    """The 400 of a request that failed its model (the first error): ``param`` is the top-level field."""
    first = dict(errors[0]) if errors else {}
    where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = where[0] if where else None
    cause = (first.get("ctx") or {}).get("error")
    kind = first.get("type")
    if kind == "json_invalid" or (not where and kind in ("model_type", "model_attributes_type")):
        message = f"{param} must be a JSON object." if param else \
            "The body is not valid JSON." if kind == "json_invalid" else "The body must be a JSON object."
        return ApiError(400, message, param=param, code=CODE_OF_PARAM.get(param or "", "invalid_json"))
    if isinstance(cause, ValueError):  # one of our checks: its own words
        message = str(cause)
    else:
        message = f"invalid {'.'.join(where) or 'request'}: {first.get('msg', 'bad value')}"
    return ApiError(400, message, param=param, code=CODE_OF_PARAM.get(param or "", "invalid_request"))


def install(app: FastAPI) -> None:
    """Route every failure through the OpenAI error shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(SpoolbatchError)
    async def _library(request: Request, exc: SpoolbatchError) -> JSONResponse:
        return from_library(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = "Not found." if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid(exc.errors()).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s: %r", request.method, request.url.path, exc)
        return error_response(500, "The server had an error while processing your request.", code="server_error")
