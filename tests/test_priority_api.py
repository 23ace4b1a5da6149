"""Priority over HTTP: the ``priority`` create-body extension and metadata's ``priority``, with the openai SDK
against a real `spoolbatch serve` and a fake-engine daemon."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, job_events, wait_for
from tests.serving import Server, start_server

pytestmark = pytest.mark.slow
KEY = "sk-priority"


@pytest.fixture
def server(spool: Spool) -> Iterator[Server]:
    started = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": KEY})
    yield started
    started.stop()


def upload(client: openai.OpenAI, n: int) -> str:
    data = b"".join(orjson.dumps(chat_line(i)) + b"\n" for i in range(n))
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id


def create(client: openai.OpenAI, n: int, **extra: Any) -> Any:
    return client.batches.create(input_file_id=upload(client, n), endpoint="/v1/chat/completions",
                                 completion_window="24h", **extra)


def test_priority_in_the_body_or_metadata_is_the_batchs_and_runs_first(spool: Spool, server: Server,
                                                                        start_daemon: Any) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
    plain = create(client, 3)
    assert plain.model_extra and plain.model_extra["priority"] == "normal"
    by_meta = create(client, 3, metadata={"priority": "high"})
    assert by_meta.model_extra and by_meta.model_extra["priority"] == "high"
    with pytest.raises(openai.BadRequestError) as refused:
        create(client, 3, extra_body={"priority": "soon"})
    assert refused.value.status_code == 400 and refused.value.body["param"] == "priority"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        create(client, 3, metadata={"priority": "whenever"})
    # A long job runs; an urgent batch created meanwhile overtakes it and is done first.
    long = create(client, 800)
    start_daemon("--chunk-size", "20", "--fake-latency", "0.005")

    def done(batch_id: str) -> int:
        counts = client.batches.retrieve(batch_id).request_counts
        return counts.completed if counts else 0

    wait_for(lambda: done(long.id) >= 40, timeout=60)
    urgent = create(client, 20, extra_body={"priority": "urgent"})
    assert urgent.model_extra and urgent.model_extra["priority"] == "urgent"
    wait_for(lambda: client.batches.retrieve(urgent.id).status == "completed", timeout=60)
    assert client.batches.retrieve(long.id).status == "in_progress"
    listed = {b.id: (b.model_extra or {}).get("priority") for b in client.batches.list()}
    assert listed[urgent.id] == "urgent" and listed[by_meta.id] == "high" and listed[plain.id] == "normal"
    long_job = long.id.removeprefix("batch_")
    assert [e["by"] for e in job_events(spool, long_job, "overtaken")] == [urgent.id.removeprefix("batch_")]
    wait_for(lambda: client.batches.retrieve(long.id).status == "completed", timeout=90)
