"""The HTTP API takes batches of the modern endpoints (/v1/responses, tools in chat, /v1/score,
/v1/rerank) like any other: create, run (fake engine, in process), read the output file."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from spoolbatch.config import load_config
from spoolbatch.server.app import create_app
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
BODIES = {
    "/v1/responses": {"model": "m", "input": "hello", "instructions": "be brief"},
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "find"}], "tools": [TOOL],
                             "tool_choice": "required"},
    "/v1/score": {"model": "m", "queries": "fox", "documents": ["dog", "fox"]},
    "/v1/rerank": {"model": "m", "query": "fox", "documents": ["dog", "fox"], "top_n": 1},
}


@pytest.mark.parametrize("endpoint", list(BODIES))
def test_a_modern_batch_over_http(spool: Spool, endpoint: str) -> None:
    config = load_config(spool.root, env={"SPOOLBATCH_API_KEYS": "sk-k"}, engine="fake", settle_seconds=0)
    client = TestClient(create_app(config), raise_server_exceptions=False, headers={"Authorization": "Bearer sk-k"})
    lines = b"".join(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": endpoint,
                                   "body": BODIES[endpoint]}) + b"\n" for i in range(2))
    file_id = client.post("/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}).json()["id"]
    batch = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": endpoint,
                                             "completion_window": "24h"})
    assert batch.status_code == 200, batch.text
    daemon = Daemon(config, echo=False)
    try:
        while daemon.loop_once().worked:
            pass
    finally:
        daemon.executor.close()
    done = client.get(f"/v1/batches/{batch.json()['id']}").json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 2, done
    out = [orjson.loads(x) for x in client.get(f"/v1/files/{done['output_file_id']}/content").content.splitlines()]
    assert len(out) == 2
    body: dict[str, Any] = out[0]["response"]["body"]
    if endpoint == "/v1/responses":
        from openai.types.responses import Response

        assert Response.model_validate(body).output_text
    elif endpoint == "/v1/chat/completions":
        from openai.types.chat import ChatCompletion

        assert ChatCompletion.model_validate(body).choices[0].message.tool_calls
    elif endpoint == "/v1/score":
        assert [d["index"] for d in body["data"]] == [0, 1]
    else:
        assert len(body["results"]) == 1 and body["results"][0]["document"]["text"] in ("dog", "fox")
