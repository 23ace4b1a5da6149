"""The HTTP API in-process (Starlette's TestClient): auth, OpenAI's error shape, bad input, limits."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from spoolbatch.cli import app as cli
from spoolbatch.config import load_config
from spoolbatch.server.app import create_app
from spoolbatch.store.spool import Spool
from tests.conftest import chat_line

KEY = "sk-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def jsonl(records: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


def make_client(spool: Spool, keys: str = KEY, **settings: Any) -> TestClient:
    config = load_config(spool.root, env={"SPOOLBATCH_API_KEYS": keys} if keys else {}, **settings)
    return TestClient(create_app(config), raise_server_exceptions=False)


@pytest.fixture
def client(spool: Spool) -> TestClient:
    return make_client(spool, max_job_bytes=4000, max_requests_per_job=20, max_queued_jobs=2)


def upload(client: TestClient, data: bytes, purpose: str = "batch") -> Any:
    return client.post("/v1/files", headers=AUTH, files={"file": ("in.jsonl", data)}, data={"purpose": purpose})


def is_openai_error(r: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param, err
    return err


def leftovers(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.files.iterdir())


def test_keys(spool: Spool, client: TestClient) -> None:
    is_openai_error(client.get("/v1/batches"), 401)
    is_openai_error(client.get("/v1/batches", headers={"Authorization": "Bearer nope"}), 401)
    is_openai_error(client.get("/v1/batches", headers={"Authorization": f"Basic {KEY}"}), 401)
    assert client.get("/v1/batches", headers=AUTH).status_code == 200
    two = make_client(spool, keys="k1,k2")
    assert two.get("/v1/files", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert client.get("/health").status_code == 200  # for load balancers: counts only, no job


def test_without_keys_only_loopback_clients(spool: Spool) -> None:
    open_client = make_client(spool, keys="")  # TestClient's peer is "testclient", not loopback
    is_openai_error(open_client.get("/v1/batches"), 401)
    loop = TestClient(create_app(load_config(spool.root, env={})), client=("127.0.0.1", 5000))
    assert loop.get("/v1/batches").status_code == 200


def test_serve_refuses_a_public_host_without_keys(spool: Spool) -> None:
    result = CliRunner().invoke(cli, ["serve", "--spool", str(spool.root), "--host", "0.0.0.0"], env={})
    assert result.exit_code == 2
    assert "without API keys" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("path", [
    "/v1/batches/batch_nope", "/v1/batches/nope", "/v1/batches/batch_..", "/v1/batches/batch_..%2F..%2Fetc",
    "/v1/batches/..%2F..%2Fetc%2Fpasswd", "/v1/batches/batch_%2Fetc%2Fpasswd", "/v1/batches/batch_a%00b",
    "/v1/files/file-0123456789abcdef01234567", "/v1/files/..%2Fconfig.toml", "/v1/files/file-output-..%2Fx/content",
    "/v1/files/file-input-..%2F..%2Fconfig/content", "/v1/files/file-output-.hidden/content",
    "/v1/batches/batch_nope/results", "/v1/batches/batch_nope/logs", "/v1/files/config/content",
])
def test_unknown_and_path_like_ids_are_404(client: TestClient, path: str) -> None:
    is_openai_error(client.get(path, headers=AUTH), 404)


def test_cancel_of_an_unknown_batch_is_404(client: TestClient) -> None:
    is_openai_error(client.post("/v1/batches/batch_nope/cancel", headers=AUTH), 404)
    is_openai_error(client.delete("/v1/files/file-0123456789abcdef01234567", headers=AUTH), 404)


def test_upload_over_the_byte_limit_is_413_and_leaves_nothing(spool: Spool, client: TestClient) -> None:
    big = jsonl([chat_line(i, pad="x" * 400) for i in range(15)])
    assert len(big) > 4000
    is_openai_error(upload(client, big), 413, "file")
    assert leftovers(spool) == []


def test_upload_over_the_line_limit_is_413(spool: Spool, client: TestClient) -> None:
    is_openai_error(upload(client, b"\n" * 21), 413, "file")
    is_openai_error(upload(client, b"\n" * 20 + b"x"), 413, "file")  # a last line without its newline counts
    assert leftovers(spool) == []


def test_upload_is_private_and_listed(spool: Spool, client: TestClient) -> None:
    r = upload(client, jsonl([chat_line(1)]))
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["object"] == "file" and f["purpose"] == "batch" and f["filename"] == "in.jsonl"
    for name in leftovers(spool):
        assert stat.S_IMODE(os.stat(spool.files / name).st_mode) == 0o600
    assert [x["id"] for x in client.get("/v1/files", headers=AUTH).json()["data"]] == [f["id"]]
    assert client.get(f"/v1/files/{f['id']}/content", headers=AUTH).content == jsonl([chat_line(1)])
    assert client.delete(f"/v1/files/{f['id']}", headers=AUTH).json()["deleted"] is True
    assert leftovers(spool) == []


def test_wrong_purpose_and_malformed_bodies(spool: Spool, client: TestClient) -> None:
    is_openai_error(upload(client, jsonl([chat_line(1)]), purpose="fine-tune"), 400, "purpose")
    assert leftovers(spool) == []
    is_openai_error(client.post("/v1/files", headers=AUTH, content=b"x"), 400)
    is_openai_error(client.post("/v1/files", headers=AUTH, files={"other": ("a", b"x")}), 400, "file")
    for body in (b"{", b"[1]", b"\xff"):
        is_openai_error(client.post("/v1/batches", headers={**AUTH, "content-type": "application/json"},
                                    content=body), 400)
    is_openai_error(client.post("/v1/batches", headers=AUTH, json={"endpoint": "/v1/chat/completions"}), 400,
                    "input_file_id")
    is_openai_error(client.post("/v1/batches", headers=AUTH, json={
        "input_file_id": "file-0123456789abcdef01234567", "endpoint": "/v1/chat/completions"}), 404,
        "input_file_id")
    is_openai_error(client.get("/v1/batches?limit=0", headers=AUTH), 400, "limit")


def create(client: TestClient, **body: Any) -> Any:
    file_id = upload(client, jsonl([chat_line(1), chat_line(2)])).json()["id"]
    return client.post("/v1/batches", headers=AUTH, json={"input_file_id": file_id,
                                                         "endpoint": "/v1/chat/completions", **body})


@pytest.mark.parametrize(("body", "param"), [
    ({"endpoint": "/v1/embeddings"}, "endpoint"),
    ({"endpoint": "/v1/images"}, "endpoint"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": "x"}, "metadata"),
    ({"completion_window": "5s"}, "completion_window"),
    ({"completion_window": "8d"}, "completion_window"),
    ({"completion_window": "soon"}, "completion_window"),
    ({"completion_window": 24}, "completion_window"),
    ({"output_expires_after": {"anchor": "created_at", "seconds": 10}}, "output_expires_after"),
    ({"allow_bad_lines": "yes"}, "allow_bad_lines"),
])
def test_bad_create_bodies(spool: Spool, client: TestClient, body: dict[str, Any], param: str) -> None:
    is_openai_error(create(client, **body), 400, param)
    assert list(spool.inbox.iterdir()) == [] and list(spool.batches.iterdir()) == []


def test_metadata_at_the_limits_and_a_window(client: TestClient) -> None:
    meta = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    r = create(client, metadata=meta, completion_window="7d", output_expires_after={"anchor": "created_at",
                                                                                       "seconds": 3600})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["metadata"] == meta and b["expires_at"] - b["created_at"] == 7 * 86400
    assert b["status"] == "validating" and b["request_counts"] == {"total": 2, "completed": 0, "failed": 0}


def test_a_full_queue_is_429(client: TestClient) -> None:
    assert create(client).status_code == 200
    assert create(client).status_code == 200
    err = is_openai_error(create(client), 429)
    assert err["type"] == "rate_limit_error"


def test_cli_submit_metadata_is_a_batch(spool: Spool, client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(jsonl([chat_line(1)]))
    result = CliRunner().invoke(cli, ["submit", str(path), "--spool", str(spool.root), "--metadata", "team=a",
                                      "--metadata", "run=2", "--completion-window", "2h", "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["batches"] == ["batch_j"]
    b = client.get("/v1/batches/batch_j", headers=AUTH).json()
    assert b["metadata"] == {"team": "a", "run": "2"} and b["completion_window"] == "2h"
    listed = CliRunner().invoke(cli, ["list", "--spool", str(spool.root), "--json"])
    assert orjson.loads(listed.output)[0]["metadata"] == {"team": "a", "run": "2"}
    table = CliRunner().invoke(cli, ["list", "--spool", str(spool.root)], env={"COLUMNS": "200"})
    assert "batch_j" in table.output and "team=a run=2" in table.output
    status = CliRunner().invoke(cli, ["status", "--spool", str(spool.root), "--json"])
    assert orjson.loads(status.output)["jobs"][0]["batch"] == "batch_j"
    bad = CliRunner().invoke(cli, ["submit", str(path), "--spool", str(spool.root), "--metadata", "novalue"])
    assert bad.exit_code == 2


def test_a_batch_is_placed_as_a_link_to_its_upload(spool: Spool, client: TestClient) -> None:
    r = create(client)
    assert r.status_code == 200, r.text
    (queued,) = list(spool.inbox.iterdir())
    upload_id = r.json()["input_file_id"]
    assert os.stat(queued).st_ino == os.stat(spool.file_content(upload_id)).st_ino  # placed at once, stored once
    assert client.delete(f"/v1/files/{upload_id}", headers=AUTH).status_code == 200
    assert queued.read_bytes() == jsonl([chat_line(1), chat_line(2)])  # the job keeps its input
