"""LoRA adapters over HTTP with the openai SDK: `GET /v1/models` lists them with their base as parent, and a batch
whose lines name the base model and its adapters runs as one job (a real server, a fake-engine daemon)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import requests

from spoolbatch.store.spool import Spool

from .conftest import chat_line, wait_for, write_jsonl
from .serving import Server, start_server
from .tiny_lora import write_fake_adapter

pytestmark = pytest.mark.slow
KEY = "sk-adapters"


@pytest.fixture
def server(spool: Spool, tmp_path: Path) -> Iterator[Server]:
    loras = tmp_path / "loras"
    for name in ("sql", "chat"):
        write_fake_adapter(loras / name)
    (spool.root / "config.toml").write_text(f'model = "m"\n[[adapters]]\npath = "{loras}"\nbase = "m"\n')
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": KEY})
    yield server
    server.stop()


def test_models_lists_adapters_with_their_base_as_parent(server: Server) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"m", "sql", "chat"}
    assert listed["m"].model_extra is not None and listed["m"].model_extra.get("parent") is None
    for name in ("sql", "chat"):
        assert listed[name].model_extra == {"parent": "m"}


def test_a_batch_mixing_base_and_adapter_lines_runs_as_one_job(server: Server, start_daemon: Any) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
    models = ["m", "sql", "chat"]
    records = [chat_line(i, models[i % 3]) for i in range(9)] + [chat_line(9, "sqll")]
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    file = client.files.create(file=("mixed.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_body={"allow_bad_lines": True})
    start_daemon()
    done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, timeout=60)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (9, 1)
    assert done.output_file_id is not None and done.error_file_id is not None
    out = [orjson.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
    assert {o["custom_id"]: o["response"]["body"]["model"] for o in out} == \
        {f"req-{i}": models[i % 3] for i in range(9)}
    errors = [orjson.loads(x) for x in client.files.content(done.error_file_id).read().splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("req-9", "model_not_found")]


def test_the_original_clients_one_step_create_may_name_an_adapter(server: Server, tmp_path: Path) -> None:
    """The replaced server's one-step multipart create: its ``model`` field may be an adapter the lines use (their
    job is the base's), not an adapter of another model or one that is not there."""
    path = write_jsonl(tmp_path / "sql.jsonl", [chat_line(i, "sql") for i in range(3)])
    headers = {"Authorization": f"Bearer {KEY}"}

    def post(model: str) -> requests.Response:
        with open(path, "rb") as f:
            return requests.post(f"{server.base_url}/batches", files={"file": f}, data={"model": model},
                                 headers=headers, timeout=30)

    for model in ("sql", "m"):
        answer = post(model)
        assert answer.status_code == 200, answer.text
        assert answer.json()["total_requests"] == 3
    refused = post("other")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_mismatch"
