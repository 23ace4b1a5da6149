"""`spoolbatch serve` against the official openai SDK: a real server and a fake-engine daemon."""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types import Batch

from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, drop, wait_for
from tests.serving import Server, start_server

pytestmark = pytest.mark.slow
KEY = "sk-test-key"


def jsonl(records: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


@pytest.fixture
def servers(spool: Spool) -> Iterator[Callable[..., Server]]:
    """Start servers on the test's spool; all stopped at teardown."""
    started: list[Server] = []

    def start(*args: str, **kw: Any) -> Server:
        server = start_server(str(spool.root), *args, env={"SPOOLBATCH_API_KEYS": KEY, **kw.pop("env", {})}, **kw)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server(servers: Callable[..., Server]) -> Server:
    return servers()


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)


def upload(client: openai.OpenAI, records: list[Any], name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(jsonl(records))), purpose="batch").id


def poll(client: openai.OpenAI, batch_id: str, until: set[str], timeout: float = 60) -> Batch:
    return wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in until and b, timeout=timeout)


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts else 0


def test_upload_create_poll_download(spool: Spool, client: openai.OpenAI, start_daemon: Any) -> None:
    records = [chat_line(i) for i in range(25)] + [chat_line(99, n=3)]  # fake engine: n>1 fails per request
    start_daemon("--chunk-size", "10")
    file_id = upload(client, records)
    assert client.files.retrieve(file_id).bytes == len(jsonl(records))
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"project": "x"})
    assert batch.id.startswith("batch_") and batch.status in ("validating", "in_progress")
    done = poll(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done
    assert done.metadata == {"project": "x"}
    counts = done.request_counts
    assert counts is not None and (counts.total, counts.completed + counts.failed) == (26, 26)
    assert done.usage is not None and done.usage.total_tokens > 0
    stamps = [done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at]
    assert all(stamps) and stamps == sorted(stamps)
    assert done.output_file_id
    out = [orjson.loads(line) for line in client.files.content(done.output_file_id).read().splitlines()]
    assert len(out) == counts.completed and {o["custom_id"] for o in out} <= {f"req-{i}" for i in range(100)}
    assert all(o["response"]["status_code"] == 200 for o in out)
    if counts.failed:
        assert done.error_file_id
        errs = client.files.content(done.error_file_id).read().splitlines()
        assert len(errs) == counts.failed and orjson.loads(errs[0])["error"]["code"]
    # the same job, seen by the CLI's library
    from spoolbatch.commands.catalog import list_jobs

    (info,) = [j for j in list_jobs(spool) if j.batch == done.id]
    assert info.metadata == {"project": "x"} and info.status == "completed"


def test_validation_failure_names_lines_and_allow_bad_lines(client: openai.OpenAI, start_daemon: Any) -> None:
    records = [chat_line(1), b"{not json", chat_line(2), {"custom_id": "x", "method": "POST"}]
    file_id = upload(client, records)
    failed = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert failed.status == "failed"
    assert failed.errors and [e.line for e in failed.errors.data or []] == [2, 4]
    assert all(e.code and e.message for e in failed.errors.data or [])
    start_daemon()
    ok = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                               extra_body={"allow_bad_lines": True})
    done = poll(client, ok.id, {"completed", "failed"})
    assert done.status == "completed"
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert done.error_file_id
    errs = [orjson.loads(x) for x in client.files.content(done.error_file_id).read().splitlines()]
    assert sorted(e["error"]["message"].split(":")[0] for e in errs) == ["line 2", "line 4"]


def test_cancel_keeps_partial_output(client: openai.OpenAI, start_daemon: Any) -> None:
    file_id = upload(client, [chat_line(i) for i in range(60)])
    start_daemon("--chunk-size", "5", "--fake-latency", "0.05")
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: completed(client, batch.id) >= 5)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = poll(client, batch.id, {"cancelled"})
    counts = done.request_counts
    assert counts is not None and 0 < counts.completed < 60 and counts.completed + counts.failed == 60
    assert done.cancelled_at and done.output_file_id and done.error_file_id
    out = client.files.content(done.output_file_id).read().splitlines()
    errs = [orjson.loads(x) for x in client.files.content(done.error_file_id).read().splitlines()]
    assert len(out) == counts.completed and len(errs) == counts.failed
    assert {e["error"]["code"] for e in errs} == {"batch_cancelled"}
    ids = {orjson.loads(x)["custom_id"] for x in out} | {e["custom_id"] for e in errs}
    assert ids == {f"req-{i}" for i in range(60)}


def test_a_queued_batch_cancelled_before_any_worker(client: openai.OpenAI) -> None:
    file_id = upload(client, [chat_line(i) for i in range(3)])
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.cancel(batch.id).status == "cancelled"
    errs = client.files.content(client.batches.retrieve(batch.id).error_file_id or "").read().splitlines()
    assert len(errs) == 3


def test_expiry_with_a_short_window(client: openai.OpenAI, start_daemon: Any) -> None:
    file_id = upload(client, [chat_line(i) for i in range(400)])
    # 400 requests at 0.05 s each take 20 s at least: the 10 s window always ends first.
    start_daemon("--chunk-size", "5", "--fake-latency", "0.05")
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="10s")
    assert batch.expires_at and batch.expires_at - batch.created_at == 10
    done = poll(client, batch.id, {"expired", "completed"}, timeout=60)
    assert done.status == "expired" and done.expired_at
    counts = done.request_counts
    assert counts is not None and 0 < counts.completed < 400 and counts.completed + counts.failed == 400
    errs = [orjson.loads(x) for x in client.files.content(done.error_file_id or "").read().splitlines()]
    assert {e["error"]["code"] for e in errs} == {"batch_expired"} and len(errs) == counts.failed


def test_list_paging_and_a_cp_dropped_job(spool: Spool, client: openai.OpenAI) -> None:
    ids = []
    for i in range(3):
        file_id = upload(client, [chat_line(i)])
        ids.append(client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id)
        time.sleep(0.01)
    drop(spool, "dropped.jsonl", [chat_line(1)], age=0)
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ["batch_dropped", ids[2]] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == [ids[1], ids[0]] and not rest.has_more
    assert [b.id for b in client.batches.list()] == ["batch_dropped", *reversed(ids)]  # the SDK pages itself
    dropped = client.batches.retrieve("batch_dropped")
    assert dropped.status == "validating" and dropped.input_file_id == "file-input-dropped"
    assert client.files.content(dropped.input_file_id).read() == jsonl([chat_line(1)])


def test_one_step_route_and_the_original_routes(server: Server, start_daemon: Any) -> None:
    start_daemon()
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/v1/batches", headers=h, files={"file": ("a.jsonl", jsonl([chat_line(1), b"{x"]))},
                   data={"metadata": '{"k": "v"}', "allow_bad_lines": "true"})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["metadata"] == {"k": "v"} and batch["endpoint"] == "/v1/chat/completions"
    wait_for(lambda: httpx.get(f"{server.url}/v1/batches/{batch['id']}", headers=h).json()["status"] == "completed")
    results = httpx.get(f"{server.url}/v1/batches/{batch['id']}/results", headers=h)
    assert [orjson.loads(x)["custom_id"] for x in results.content.splitlines()] == ["req-1"]
    failed = httpx.get(f"{server.url}/v1/batches/{batch['id']}/failed", headers=h)
    assert len(failed.content.splitlines()) == 1
    logs = httpx.get(f"{server.url}/v1/batches/{batch['id']}/logs", headers=h).json()
    assert any("completed" in line for line in logs["data"])
    health = httpx.get(server.url + "/health").json()
    assert health["workers"]["alive"] == 1
    models = httpx.get(server.url + "/v1/models", headers=h).json()
    assert models["object"] == "list"
    gone = httpx.delete(f"{server.url}/v1/batches/{batch['id']}", headers=h)
    assert gone.status_code == 200 and gone.json()["status"] == "completed"


def test_kill_9_mid_upload_leaves_no_file_and_no_job(spool: Spool, servers: Callable[..., Server]) -> None:
    server = servers()
    sent = threading.Event()

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        for i in range(200):
            yield orjson.dumps(chat_line(i)) + b"\n"
            sent.set()
            time.sleep(0.05)
        yield b"\r\n--b--\r\n"

    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(server.url + "/v1/files", content=body(), timeout=30,
                       headers={"Authorization": f"Bearer {KEY}", "content-type": "multipart/form-data; boundary=b"})

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    wait_for(lambda: sent.is_set() and list(spool.files.glob(".upload.*.tmp")))
    server.stop(signal.SIGKILL)
    thread.join(timeout=30)
    assert [p.name for p in spool.files.iterdir() if not p.name.startswith(".")] == []
    assert list(spool.inbox.iterdir()) == [] and list(spool.batches.iterdir()) == []
    again = servers()
    client = openai.OpenAI(base_url=again.base_url, api_key=KEY, max_retries=0)
    assert client.files.list().data == [] and client.batches.list().data == []


def test_two_servers_and_a_kill_9_mid_batch(spool: Spool, servers: Callable[..., Server], start_daemon: Any) -> None:
    a, b = servers(), servers()
    ca = openai.OpenAI(base_url=a.base_url, api_key=KEY, max_retries=0)
    cb = openai.OpenAI(base_url=b.base_url, api_key=KEY, max_retries=0)
    file_id = upload(ca, [chat_line(i) for i in range(40)])
    batch = cb.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    start_daemon("--chunk-size", "5", "--fake-latency", "0.02")
    wait_for(lambda: completed(ca, batch.id) >= 5)
    a.stop(signal.SIGKILL)
    done = poll(cb, batch.id, {"completed"})
    c = openai.OpenAI(base_url=servers().base_url, api_key=KEY, max_retries=0)
    assert c.batches.retrieve(batch.id).model_dump() == done.model_dump()
    out = [orjson.loads(x)["custom_id"] for x in c.files.content(done.output_file_id or "").read().splitlines()]
    assert sorted(out) == sorted(f"req-{i}" for i in range(40))
