"""The API's schema: /openapi.json lists every route with its models, and the answers are those models."""

from __future__ import annotations

from typing import Any

import openai.types
import orjson
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from spoolbatch.config import load_config
from spoolbatch.server.app import create_app
from spoolbatch.server.models import Batch, CreatedBatch, FileObject, OneStepBatch, Page
from spoolbatch.store.spool import Spool
from tests.conftest import chat_line

KEY = "sk-openapi"
AUTH = {"Authorization": f"Bearer {KEY}"}
REF = "#/components/schemas/"


@pytest.fixture
def client(spool: Spool) -> TestClient:
    return TestClient(create_app(load_config(spool.root, env={"SPOOLBATCH_API_KEYS": KEY})),
                      raise_server_exceptions=False)


def jsonl(n: int) -> bytes:
    return b"".join(orjson.dumps(chat_line(i)) + b"\n" for i in range(n))


def answer_schema(op: dict[str, Any]) -> dict[str, Any]:
    content = op["responses"]["200"]["content"]
    return dict(next(iter(content.values())).get("schema", {}))


def test_openapi_lists_every_route_with_its_models(client: TestClient) -> None:
    r = client.get("/openapi.json")  # documentation: no key needed
    assert r.status_code == 200
    schema = r.json()
    components = schema["components"]["schemas"]
    routes = {(m, route.path) for route in client.app.routes  # type: ignore[attr-defined]
              if isinstance(route, APIRoute) and route.include_in_schema for m in route.methods}
    listed = {(m.upper(), path) for path, ops in schema["paths"].items() for m in ops}
    assert routes == listed and len(routes) == 20  # the web page's HTML and files are not API: left out
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            answer = answer_schema(op)
            refs = [answer.get("$ref")] + [a.get("$ref") for a in answer.get("anyOf", [])]
            if "jsonl" in str(op["responses"]["200"]["content"]) or path == "/":
                continue  # streamed lines, the HTML page
            assert any(refs) and all(ref.removeprefix(REF) in components for ref in refs if ref), (method, path)
            if path.startswith("/v1/"):
                assert {"400", "401", "404"} <= set(op["responses"]) and "422" not in op["responses"]
    create = schema["paths"]["/v1/batches"]["post"]
    assert {a["$ref"] for a in answer_schema(create)["anyOf"]} == {REF + "CreatedBatch", REF + "OneStepBatch"}
    assert create["requestBody"]["content"] == {"application/json": {"schema": {"$ref": REF + "BatchCreate"}},
                                                "multipart/form-data": {"schema": {"$ref": REF + "OneStepUpload"}}}
    assert set(components["BatchCreate"]["required"]) == {"input_file_id", "endpoint"}
    assert components["ErrorResponse"]["properties"].keys() == {"error"}
    assert set(components["CreatedBatch"]["properties"]) == set(CreatedBatch.model_fields)


def test_a_create_answer_is_its_model(client: TestClient) -> None:
    upload = client.post("/v1/files", headers=AUTH, files={"file": ("a.jsonl", jsonl(3))}, data={"purpose": "batch"})
    file = FileObject.model_validate(upload.json())
    assert file.bytes == len(jsonl(3)) and set(upload.json()) == set(FileObject.model_fields)
    r = client.post("/v1/batches", headers=AUTH, json={"input_file_id": file.id, "endpoint": "/v1/chat/completions",
                                                       "completion_window": "24h", "metadata": {"k": "v"}})
    assert r.status_code == 200, r.text
    created = CreatedBatch.model_validate(r.json())
    assert set(r.json()) == set(CreatedBatch.model_fields)  # every field, nothing else
    assert created.model_dump(mode="json") == r.json()
    assert created.status == "validating" and created.request_counts.total == 3 and created.metadata == {"k": "v"}
    assert openai.types.Batch.model_validate(r.json()).id == created.id  # and the SDK's own type parses it
    one = client.post("/v1/batches", headers=AUTH, files={"file": ("b.jsonl", jsonl(2))})
    assert one.status_code == 200, one.text
    step = OneStepBatch.model_validate(one.json())
    assert set(one.json()) == set(OneStepBatch.model_fields) and step.batch_id == step.id
    assert step.total_requests == 2 and step.estimate.estimated_seconds is None and step.estimate.reason
    got = client.get(f"/v1/batches/{created.id}", headers=AUTH).json()
    assert Batch.model_validate(got).model_dump(mode="json") == got and set(got) == set(Batch.model_fields)
    page = Page[Batch].model_validate(client.get("/v1/batches", headers=AUTH).json())
    assert [b.id for b in page.data] == [step.id, created.id] and not page.has_more
