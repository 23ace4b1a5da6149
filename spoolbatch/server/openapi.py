"""The schema at ``/openapi.json``: every route with its models, the error shape, and the bodies we read ourselves.

Two bodies are read by hand instead of by FastAPI (a multipart upload streamed to disk, and
``POST /v1/batches``, which is JSON or multipart by its content type): ``body_of`` declares
them on their route, and ``install`` adds their models to the schema's components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from spoolbatch.server.models import ErrorResponse

REF = "#/components/schemas/{model}"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in ((400, "a bad request"), (401, "a missing or wrong key"), (404, "no such batch or file"),
                       (413, "a body over a limit"), (429, "a queue limit"))
}
_BODIES: dict[str, type[BaseModel]] = {}


def body_of(content: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """``openapi_extra`` declaring a body read by hand: its model per content type."""
    for model in content.values():
        _BODIES[model.__name__] = model
    return {"requestBody": {"required": True, "content": {
        ctype: {"schema": {"$ref": REF.format(model=model.__name__)}} for ctype, model in content.items()}}}


def install(app: FastAPI) -> None:
    """Serve the schema with the hand-read bodies' models among its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for operations in schema.get("paths", {}).values():  # a refused field is our 400, never a 422
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            for name, model in _BODIES.items():
                own = model.model_json_schema(ref_template=REF)
                for sub, sub_schema in own.pop("$defs", {}).items():
                    components.setdefault(sub, sub_schema)
                components[name] = own
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
