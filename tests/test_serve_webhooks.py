"""Webhooks from `spoolbatch serve`: verified by the openai SDK, retried with the same id until received."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import orjson
import pytest

from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, drop, wait_for
from tests.serving import free_port, start_server

pytestmark = pytest.mark.slow
KEY = "sk-hook"
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Receiver:
    """A loopback HTTP server that records every POST (headers and body) and answers 200."""

    def __init__(self, port: int, stall_first: float = 0.0) -> None:
        self.port = port
        self.got: list[tuple[dict[str, str], bytes]] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if len(got) == 1 and stall_first:
                    time.sleep(stall_first)  # the sender is killed while it waits for this answer
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hook_port(spool: Spool) -> int:
    port = free_port()
    (spool.root / "config.toml").write_text(
        f'[[webhooks]]\nurl = "http://127.0.0.1:{port}/hook"\nsecret = "{SECRET}"\n')
    return port


@pytest.fixture
def env() -> dict[str, str]:
    return {"SPOOLBATCH_API_KEYS": KEY, "SPOOLBATCH_WEBHOOK_BACKOFF": "0.3"}


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(port: int, stall_first: float = 0.0) -> Receiver:
        made.append(Receiver(port, stall_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def make_batch(client: openai.OpenAI, n: int = 3) -> str:
    data = b"".join(orjson.dumps(chat_line(i)) + b"\n" for i in range(n))
    file_id = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id


def test_a_webhook_verifies_with_the_sdk_and_a_tampered_one_does_not(
        spool: Spool, hook_port: int, env: dict[str, str], receivers: Callable[[int], Receiver],
        start_daemon: Any) -> None:
    receiver = receivers(hook_port)
    server = start_server(str(spool.root), env=env)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        start_daemon()
        batch = make_batch(client)
        wait_for(lambda: receiver.got)
        headers, body = receiver.got[0]
        event = client.webhooks.unwrap(body, headers, secret=SECRET)
        assert event.type == "batch.completed" and event.data.id == batch
        assert headers["webhook-id"] == event.id and event.id.startswith("evt_")
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(body.replace(b"completed", b"cancelled"), headers, secret=SECRET)
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(body, headers, secret="whsec_" + base64.b64encode(b"x" * 32).decode())
        logs = client.get(f"/batches/{batch}/logs", cast_to=object)
        assert any("delivered on attempt 1" in line for line in logs["data"])  # type: ignore[index]
    finally:
        server.stop()


def test_receiver_down_then_up_gets_it_once_with_the_same_id(
        spool: Spool, hook_port: int, env: dict[str, str], receivers: Callable[[int], Receiver],
        start_daemon: Any) -> None:
    server = start_server(str(spool.root), env=env)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        start_daemon()
        batch = make_batch(client)
        job = batch.removeprefix("batch_")

        def failed_attempts() -> int:
            if not spool.log(job).exists():
                return 0
            events = [orjson.loads(line) for line in spool.log(job).read_bytes().splitlines()]
            return sum(e["event"] == "webhook" and e["state"] == "pending" for e in events)

        wait_for(lambda: failed_attempts() >= 2)
        (entry,) = [orjson.loads(p.read_bytes()) for p in spool.outbox.glob("*.json")]
        server.stop(signal.SIGKILL)  # a kill between attempts loses nothing: the entry is in the spool
        server = start_server(str(spool.root), env=env)
        receiver = receivers(hook_port)
        wait_for(lambda: receiver.got, timeout=30)
        headers, body = receiver.got[0]
        assert headers["webhook-id"] == entry["event_id"]
        assert client.webhooks.unwrap(body, headers, secret=SECRET).data.id == batch
        wait_for(lambda: orjson.loads(next(spool.outbox.glob("*.json")).read_bytes())["state"] == "delivered")
        assert len(receiver.got) == 1
    finally:
        server.stop()


def test_the_daemon_sends_without_a_server(spool: Spool, hook_port: int, env: dict[str, str],
                                          receivers: Callable[[int], Receiver], start_daemon: Any) -> None:
    receiver = receivers(hook_port)
    drop(spool, "dropped.jsonl", [chat_line(1)])
    start_daemon(env=env)
    wait_for(lambda: receiver.got)
    headers, body = receiver.got[0]
    event = openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == "batch.completed" and event.data.id == "batch_dropped"


def test_kill_9_during_a_delivery_sends_it_again_with_the_same_id(
        spool: Spool, hook_port: int, env: dict[str, str], receivers: Callable[..., Receiver], start_daemon: Any,
        tmp_path: Any) -> None:
    receiver = receivers(hook_port, stall_first=5.0)
    (tmp_path / "no-webhooks.toml").write_text("")
    start_daemon(env={"SPOOLBATCH_CONFIG": str(tmp_path / "no-webhooks.toml")})  # only the server sends here
    server = start_server(str(spool.root), env=env)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        batch = make_batch(client)
        wait_for(lambda: receiver.got)
        server.stop(signal.SIGKILL)  # mid-delivery: the receiver has the request, the server never heard back
        (entry,) = [orjson.loads(p.read_bytes()) for p in spool.outbox.glob("*.json")]
        assert entry["state"] == "pending" and entry["attempts"] == 0
        server = start_server(str(spool.root), env=env)
        wait_for(lambda: len(receiver.got) >= 2, timeout=30)
        ids = {h["webhook-id"] for h, _ in receiver.got}
        assert ids == {entry["event_id"]}  # at least once, and a receiver can drop the repeat by its id
        assert client.webhooks.unwrap(receiver.got[1][1], receiver.got[1][0], secret=SECRET).data.id == batch
        wait_for(lambda: orjson.loads(next(spool.outbox.glob("*.json")).read_bytes())["state"] == "delivered")
    finally:
        server.stop()
