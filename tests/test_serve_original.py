"""The original batch server's documented client, unchanged, against `spoolbatch serve`: `requests`, no key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import requests
from openai.types import Batch

from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, wait_for, write_jsonl
from tests.serving import Server, start_server

pytestmark = pytest.mark.slow
MODEL = "google/gemma-3-4b-it"


@pytest.fixture
def keyless(spool: Spool) -> Iterator[Server]:
    """A server without API keys (loopback clients only), as the original client expects."""
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": ""})
    yield server
    server.stop()


def post_file(base: str, path: Path) -> requests.Response:
    """Exactly the original client's call."""
    with open(path, "rb") as f:
        return requests.post(f"{base}/v1/batches", files={"file": f}, data={"model": MODEL}, timeout=30)


def wait_done(base: str, batch_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        batch = requests.get(f"{base}/v1/batches/{batch_id}", timeout=30).json()
        return batch if batch["status"] in ("completed", "failed", "expired", "cancelled") else None

    return dict(wait_for(done))


def test_the_original_client_from_create_to_results(tmp_path: Path, keyless: Server, start_daemon: Any) -> None:
    base = keyless.url
    path = write_jsonl(tmp_path / "requests.jsonl", [chat_line(i, model=MODEL) for i in range(5)])
    response = post_file(base, path)
    assert response.status_code == 200, response.text
    batch_id = response.json()["batch_id"]
    answer = response.json()
    assert batch_id == answer["id"] and answer["status"] == "validating" and answer["total_requests"] == 5
    # No job has finished on this spool yet: no throughput to estimate from, and it says why.
    estimate = answer["estimate"]
    assert estimate["estimated_time_minutes"] is None and estimate["estimated_seconds"] is None
    assert estimate["reason"]
    # Every field of OpenAI's batch object is there too, and parses as the SDK's type.
    assert set(Batch.model_fields) <= set(answer)
    assert Batch.model_validate(answer).id == batch_id

    start_daemon()
    assert wait_done(base, batch_id)["status"] == "completed"
    results = requests.get(f"{base}/v1/batches/{batch_id}/results", timeout=30)
    assert results.status_code == 200
    lines = [orjson.loads(line) for line in results.content.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"req-{i}" for i in range(5)]
    assert all(x["response"]["status_code"] == 200 for x in lines)

    # Once a job has finished, the spool's measured throughput gives the next one an estimate.
    second = post_file(base, path).json()
    assert second["batch_id"] != batch_id and second["total_requests"] == 5
    estimate = second["estimate"]
    assert isinstance(estimate["estimated_seconds"], float) and isinstance(estimate["estimated_time_minutes"], float)
    assert estimate["estimated_seconds"] >= 0 and estimate["reason"] is None and estimate["basis"]
    assert wait_done(base, second["batch_id"])["status"] == "completed"


def test_the_one_step_create_checks_a_model_and_an_endpoint_sent_together(tmp_path: Path, keyless: Server) -> None:
    """The form's model is checked against the lines even when an endpoint comes with it, and the endpoint too."""
    path = write_jsonl(tmp_path / "requests.jsonl", [chat_line(i, model=MODEL) for i in range(3)])

    def post(**fields: str) -> requests.Response:
        with open(path, "rb") as f:
            return requests.post(f"{keyless.url}/v1/batches", files={"file": f}, data=fields, timeout=30)

    refused = post(model="other/model", endpoint="/v1/chat/completions")
    assert refused.status_code == 400, refused.text
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("model_mismatch", "model")
    refused = post(model=MODEL, endpoint="/v1/embeddings")
    assert refused.status_code == 400, refused.text
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("endpoint_mismatch", "endpoint")
    assert requests.get(f"{keyless.url}/v1/batches", timeout=30).json()["data"] == []  # neither made a batch
    answer = post(model=MODEL, endpoint="/v1/chat/completions")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["model"], answer.json()["endpoint"], answer.json()["total_requests"]) == \
        (MODEL, "/v1/chat/completions", 3)


def test_the_openai_create_route_keeps_openais_shape(tmp_path: Path, keyless: Server) -> None:
    client = openai.OpenAI(base_url=keyless.base_url, api_key="unused", max_retries=0, timeout=30)
    path = write_jsonl(tmp_path / "requests.jsonl", [chat_line(1, model=MODEL)])
    with path.open("rb") as f:
        file_id = client.files.create(file=f, purpose="batch").id
    raw = client.batches.with_raw_response.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                  completion_window="24h")
    answer = orjson.loads(raw.content)
    assert answer["object"] == "batch" and not {"batch_id", "total_requests", "estimate"} & set(answer)
