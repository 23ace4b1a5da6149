"""Batch records, windows, expiry at a chunk boundary, the error file's unrun lines, the outbox (in-process)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

import orjson
import pytest

from spoolbatch.commands import control
from spoolbatch.commands.batches import error_lines, get_batch, list_batches
from spoolbatch.commands.submit import submit
from spoolbatch.config import Config
from spoolbatch.errors import InputError
from spoolbatch.notify.webhooks import sign
from spoolbatch.store import outbox
from spoolbatch.store.batches import BatchRecord, BatchSpec, check_metadata, job_of, parse_window, stop_state
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.files import parse_file_id
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon
from tests.conftest import chat_line, drop, job_events, write_jsonl


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("24h", 86400), ("7d", 604800), ("90m", 5400)])
def test_windows(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["9s", "8d", "168h1", "1w", "", "-5m", "0h", "24 h", "1e3s"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(InputError):
        parse_window(text)


@pytest.mark.parametrize(("batch", "job"), [("batch_abc", "abc"), ("batch_a.b-c_1", "a.b-c_1"), ("batch_..", None),
                                            ("batch_/etc", None), ("batch_a/b", None), ("abc", None),
                                            ("batch_", None), ("batch_.x", None), ("batch_" + "a" * 101, None)])
def test_batch_ids_map_to_jobs_and_nothing_else(batch: str, job: str | None) -> None:
    assert job_of(batch) == job


@pytest.mark.parametrize("file_id", ["file-output-..", "file-output-a/b", "file-x", "file-0123", "file-input-.a",
                                     "../file-0123456789abcdef01234567"])
def test_file_ids_that_are_not_ours(file_id: str) -> None:
    assert parse_file_id(file_id) is None


def test_metadata_limits() -> None:
    assert check_metadata(None) == {}
    with pytest.raises(InputError):
        check_metadata({str(i): "v" for i in range(17)})
    with pytest.raises(InputError):
        check_metadata({"k": None})


def test_expiry_stops_a_job_at_a_chunk_boundary(spool: Spool, config: Config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "w.jsonl", [chat_line(i) for i in range(40)])
    job = submit(path, config, batch=BatchSpec(completion_window="10s", metadata={"a": "b"})).jobs[0]
    daemon = Daemon(config, echo=False)
    assert daemon.loop_once().worked  # first chunk of 10
    record = BatchRecord.load(spool, job)
    assert record is not None and record.expires_at is not None
    record.expires_at = time.time() - 1  # the window passes
    record.save(spool)
    assert stop_state(spool, job) == JobState.EXPIRED
    while daemon.loop_once().worked:
        pass
    ckpt = Checkpoint.load(spool.checkpoint(job))
    assert ckpt is not None and ckpt.status == JobState.EXPIRED and 0 < ckpt.lines_consumed < 40
    view = get_batch(spool, job).to_openai()
    assert view["status"] == "expired" and view["metadata"] == {"a": "b"}
    counts = view["request_counts"]
    assert counts["completed"] == ckpt.requests_done and counts["completed"] + counts["failed"] == 40
    errors = [orjson.loads(line) for line in error_lines(spool, job)]
    assert len(errors) == 40 - ckpt.lines_consumed
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert errors[0]["custom_id"] == f"req-{ckpt.lines_consumed}"


def test_a_queued_cancel_keeps_the_job_as_cancelled(spool: Spool) -> None:
    drop(spool, "q.jsonl", [chat_line(1), chat_line(2)])
    control.cancel(spool, "q")
    view = get_batch(spool, "q").to_openai()
    assert view["status"] == "cancelled" and view["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert [orjson.loads(x)["error"]["code"] for x in error_lines(spool, "q")] == ["batch_cancelled"] * 2
    assert [v.job for v in list_batches(spool)] == ["q"]


def test_signature_is_standard_webhooks() -> None:
    secret = base64.b64encode(b"k" * 32).decode()
    expected = base64.b64encode(hmac.new(b"k" * 32, b"msg_1.1700000000.{}", hashlib.sha256).digest()).decode()
    assert sign(base64.b64decode(secret), "msg_1", 1700000000, "{}") == f"v1,{expected}"


def test_outbox_entries_are_written_once_per_endpoint(spool: Spool) -> None:
    spool.ensure_api_dirs()
    endpoints = [("http://a/hook", ("batch.completed",)), ("http://b/hook", ("batch.failed",))]
    assert outbox.enqueue(spool, "j", JobState.COMPLETED, 1700000000.0, endpoints) == 1
    assert outbox.enqueue(spool, "j", JobState.COMPLETED, 1700000000.0, endpoints) == 0
    (name,) = outbox.due(spool)
    entry = outbox.Delivery.load(spool, name)
    assert entry is not None and orjson.loads(entry.body)["data"] == {"id": "batch_j"}
    assert outbox.retry_delay(1, 5) == 5 and outbox.retry_delay(3, 5) == 20 and outbox.retry_delay(30, 5) == 3600


def test_a_delivery_failing_past_72_hours_is_given_up(spool: Spool) -> None:
    import httpx

    from spoolbatch.config import load_config
    from spoolbatch.notify.webhooks import WebhookSender

    url = "http://127.0.0.1:9/hook"
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    (spool.root / "config.toml").write_text(f'[[webhooks]]\nurl = "{url}"\nsecret = "{secret}"\n')
    config = load_config(spool.root, env={})
    spool.ensure_api_dirs()
    now = time.time()
    for job, age_hours in (("old", 72.1), ("young", 71.9)):
        assert outbox.enqueue(spool, job, JobState.COMPLETED, now - age_hours * 3600, [(url, ("batch.completed",))])
        entry = outbox.Delivery.load(spool, outbox.entry_name(job, url))
        assert entry is not None
        entry.created_at = now - age_hours * 3600  # written when the batch ended, and failing since
        entry.save(spool)
    posted: list[str] = []

    def down(request: httpx.Request) -> httpx.Response:
        posted.append(request.headers["webhook-id"])
        return httpx.Response(503)

    sender = WebhookSender(config, client=httpx.Client(transport=httpx.MockTransport(down)))
    assert sender.send_due() == 0 and len(posted) == 2
    old = outbox.Delivery.load(spool, outbox.entry_name("old", url))
    young = outbox.Delivery.load(spool, outbox.entry_name("young", url))
    assert old is not None and young is not None
    assert (old.state, old.attempts, old.last_outcome) == (outbox.DeliveryState.GAVE_UP, 1, "HTTP 503")
    assert young.state == outbox.DeliveryState.PENDING and young.next_at > now
    (event,) = job_events(spool, "old", "webhook")
    assert (event["state"], event["attempt"], event["outcome"], event["next_in"]) == ("gave_up", 1, "HTTP 503", None)
    assert job_events(spool, "young", "webhook")[0]["state"] == "pending"
    assert list(outbox.due(spool, now + 10 * 86400)) == [young.name]  # never tried again
    assert sender.send_due(now + 10 * 86400) == 0 and len(posted) == 3  # the young one only


def test_batch_usage_counts_the_prompt_tokens_read_from_the_prefix_cache(spool: Spool, config: Config) -> None:
    from dataclasses import replace

    from openai.types import Batch

    from spoolbatch.engines.fake import FakeEngine
    from spoolbatch.format.types import Outcome, Request

    class CachingEngine(FakeEngine):
        """Reports that each answer read 3 prompt tokens from a prefix cache, as vLLM's outputs say."""

        def run(self, requests: list[Request]) -> list[Outcome]:  # type: ignore[override]
            return [replace(o, cached_tokens=3) for o in super().run(requests)]

    drop(spool, "cached.jsonl", [chat_line(i) for i in range(25)])
    daemon = Daemon(config, engine_factory=CachingEngine, echo=False)
    while daemon.loop_once().worked:
        pass
    ckpt = Checkpoint.load(spool.checkpoint("cached"))
    assert ckpt is not None and ckpt.status == JobState.COMPLETED and ckpt.prefix_cache_hits == 75
    usage = Batch.model_validate(get_batch(spool, "cached").to_openai()).usage
    assert usage is not None and usage.input_tokens == ckpt.prompt_tokens > 75
    assert usage.input_tokens_details.cached_tokens == 75
    drop(spool, "plain.jsonl", [chat_line(i) for i in range(5)])
    plain_daemon = Daemon(config, echo=False)  # the fake engine, which reports no cache
    while plain_daemon.loop_once().worked:
        pass
    plain = get_batch(spool, "plain").to_openai()["usage"]
    assert plain["input_tokens"] > 0 and plain["input_tokens_details"]["cached_tokens"] == 0


def test_a_batch_whose_window_passed_while_queued_expires_unrun(spool: Spool, config: Config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "late.jsonl", [chat_line(i) for i in range(5)])
    job = submit(path, config, batch=BatchSpec(completion_window="10s")).jobs[0]
    record = BatchRecord.load(spool, job)
    assert record is not None
    record.expires_at = time.time() - 1
    record.save(spool)
    daemon = Daemon(config, echo=False)
    while daemon.loop_once().worked:
        pass
    view = get_batch(spool, job).to_openai()
    assert view["status"] == "expired" and view["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    assert len(list(error_lines(spool, job))) == 5
