"""A server behind a reverse proxy: without keys, a request carrying a proxy header is refused (401)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from spoolbatch.store.spool import Spool
from tests.serving import Server, start_server

pytestmark = pytest.mark.slow
KEY = "sk-proxy-test"
# What nginx (proxy_set_header), Caddy (by default) and RFC 7239 proxies add, with a client far away.
HEADERS = {"Forwarded": "for=203.0.113.7;proto=https", "X-Forwarded-For": "203.0.113.7",
           "X-Real-IP": "203.0.113.7", "X-Forwarded-Host": "api.example.com"}


@pytest.fixture
def keyless(spool: Spool) -> Iterator[Server]:
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": ""})
    yield server
    server.stop()


@pytest.fixture
def keyed(spool: Spool) -> Iterator[Server]:
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": KEY})
    yield server
    server.stop()


@pytest.mark.parametrize("header", list(HEADERS))
def test_without_keys_each_proxy_header_is_refused(keyless: Server, header: str) -> None:
    assert httpx.get(keyless.url + "/v1/batches").status_code == 200  # a plain loopback client
    for name in (header, header.lower(), header.upper()):
        for value in (HEADERS[header], "127.0.0.1"):  # naming loopback does not help
            r = httpx.get(keyless.url + "/v1/batches", headers={name: value})
            assert r.status_code == 401, (name, value, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_api_key" and "api_keys" in error["message"]
    r = httpx.post(keyless.url + "/v1/files", headers={header: HEADERS[header]},
                   files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"})
    assert r.status_code == 401
    assert httpx.get(keyless.url + "/v1/files").json()["data"] == []


def test_serve_says_it_runs_without_keys(spool: Spool) -> None:
    server = start_server(str(spool.root), env={"SPOOLBATCH_API_KEYS": ""})
    server.proc.terminate()
    server.proc.wait(timeout=15)
    said = server.stderr()
    server.stop()
    assert "no API keys" in said and "loopback" in said and "api_keys" in said


@pytest.mark.parametrize("header", list(HEADERS))
def test_with_a_key_each_proxy_header_is_accepted(keyed: Server, header: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(keyed.url + "/v1/batches", headers={header: HEADERS[header], **auth}).status_code == 200
    assert httpx.get(keyed.url + "/v1/batches", headers={header: HEADERS[header]}).status_code == 401
