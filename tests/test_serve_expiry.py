"""A batch whose completion window passed before any worker ran it: expired by the clock, everywhere."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app as cli
from spoolbatch.store.batches import BatchRecord, job_of
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, wait_for
from tests.serving import Server, start_server

pytestmark = pytest.mark.slow
KEY = "sk-expiry-test"


@pytest.fixture
def server(spool: Spool) -> Iterator[Server]:
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": KEY})
    yield server
    server.stop()


def create(client: openai.OpenAI, lines: list[Any], window: str, **extra: Any) -> str:
    data = b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    file_id = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window=window,
                                 extra_body=extra or None).id


def age(spool: Spool, batch: str, seconds: float) -> float:
    """Write the batch's record as if it had been created ``seconds`` ago: its window has passed."""
    record = BatchRecord.load(spool, job_of(batch) or "")
    assert record is not None and record.expires_at is not None
    window = record.expires_at - record.created_at
    record.created_at -= seconds
    record.expires_at = record.created_at + window
    record.save(spool)
    return record.expires_at


def cli_json(spool: Spool, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--spool", str(spool.root), "--json"])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def seen(client: openai.OpenAI, batch: str) -> dict[str, Any]:
    """The batch object, its error file's codes and custom_ids, and its output."""
    b = client.batches.retrieve(batch)
    errors = [orjson.loads(x) for x in client.files.content(b.error_file_id).read().splitlines()] \
        if b.error_file_id else []
    return {"status": b.status, "expired_at": b.expired_at, "counts": b.request_counts and b.request_counts.to_dict(),
            "errors": sorted((e["custom_id"] or "", e["error"]["code"]) for e in errors),
            "output": b.output_file_id and client.files.content(b.output_file_id).read()}


def test_a_queued_batch_past_its_window_is_expired_with_no_worker(spool: Spool, server: Server,
                                                                  start_daemon: Any) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
    late = create(client, [chat_line(i) for i in range(3)], "10s")
    bad = create(client, [chat_line(7), b"{not json", chat_line(8)], "1h", allow_bad_lines=True)
    waiting = create(client, [chat_line(9)], "24h")
    assert client.batches.retrieve(late).status == "validating"
    expires = {late: age(spool, late, 3600), bad: age(spool, bad, 7200)}

    # No worker has run: the clock alone says expired, and every request is an error line.
    before = {b: seen(client, b) for b in (late, bad)}
    assert before[late]["status"] == "expired" and before[late]["expired_at"] == int(expires[late])
    assert before[late]["counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert before[late]["errors"] == [(f"req-{i}", "batch_expired") for i in range(3)]
    assert before[bad]["status"] == "expired" and before[bad]["counts"]["failed"] == 3  # the bad line too
    assert len(before[bad]["errors"]) == 3
    assert client.batches.retrieve(waiting).status == "validating"
    assert {b.id: b.status for b in client.batches.list()} == {late: "expired", bad: "expired",
                                                              waiting: "validating"}

    # The CLI's status and list say the same.
    jobs = {j["batch"]: j["status"] for j in cli_json(spool, "status")["jobs"]}
    assert jobs == {late: "expired", bad: "expired", waiting: "queued"}
    assert {j["batch"]: j["status"] for j in cli_json(spool, "list")} == jobs
    assert cli_json(spool, "status", job_of(late) or "")["jobs"][0]["status"] == "expired"

    # A worker that comes later ends them as the clock said: the same answer from the checkpoint.
    start_daemon()
    wait_for(lambda: all((c := Checkpoint.load(spool.checkpoint(job_of(b) or ""))) and c.status.final
                         for b in (late, bad, waiting)))
    after = {b: seen(client, b) for b in (late, bad)}
    for b in (late, bad):
        assert {k: after[b][k] for k in ("status", "counts", "errors")} == \
            {k: before[b][k] for k in ("status", "counts", "errors")}
        assert not after[b]["output"]
    assert client.batches.retrieve(waiting).status == "completed"
