"""Projects: keys that see only their own batches and files, quotas, usage per project and day, the audit trail.

The API is tested on a real `spoolbatch serve` with the openai SDK and two projects' keys (and
httpx for the replaced server's routes the SDK does not call); a file dropped with `cp` into
``inbox/team-a/`` is run by a real fake-engine daemon.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app as cli
from spoolbatch.commands.usage import parse_since, usage
from spoolbatch.config import load_config
from spoolbatch.errors import ConfigError, InputError
from spoolbatch.store.audit import read_audit
from spoolbatch.store.batches import BatchRecord
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool, Stage
from tests.conftest import chat_line, drop, write_jsonl
from tests.serving import Server, start_server

KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-team-b-fedcba9876543210"
KEY_ADMIN = "sk-ops-admin-5555"
KEY_ROOT = "sk-root-7777"
KEYS = (KEY_A, KEY_B, KEY_ADMIN, KEY_ROOT)
CONFIG = f"""
api_keys = ["{KEY_ROOT}"]
max_queued_jobs = 50

[[keys]]
key = "{KEY_A}"
project = "team-a"

[[keys]]
key_sha256 = "{hashlib.sha256(KEY_B.encode()).hexdigest()}"
project = "team-b"

[[keys]]
key = "{KEY_ADMIN}"
project = "ops"
admin = true
"""


def jsonl(records: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def fp(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@pytest.fixture
def served(spool: Spool) -> Iterator[Callable[[str], Server]]:
    """Start a server on the test's spool with ``config.toml`` holding the text given; stopped at teardown."""
    started: list[Server] = []

    def start(config: str, *args: str) -> Server:
        (spool.root / "config.toml").write_text(config)
        server = start_server(str(spool.root), *args, env={"SPOOLBATCH_API_KEYS": KEY_ROOT})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def stopped(server: Server) -> str:
    """Stop ``server`` and return what it wrote on stderr."""
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=15)
    return server.stderr()


def sdk(server: Server, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30, **kw)


def create(client: openai.OpenAI, n: int = 3, tag: str = "") -> tuple[str, str]:
    """Upload n chat lines and create their batch: (file id, batch id)."""
    f = client.files.create(file=(f"in{tag}.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(n)]))),
                            purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"tag": tag})
    return f.id, batch.id


def drop_in(spool: Spool, project: str, name: str, records: list[Any]) -> Path:
    """``drop`` into ``inbox/PROJECT/`` (made if missing), as `cp` would leave it: aged, in one rename."""
    folder = spool.inbox / project
    folder.mkdir(exist_ok=True)
    hidden = write_jsonl(folder / f".{name}.part", records)
    past = time.time() - 60
    os.utime(hidden, (past, past))
    os.rename(hidden, folder / name)
    return folder / name


def not_found(call: Callable[[], Any]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "not_found"  # type: ignore[index]


# --- configuration --------------------------------------------------------------------------
def test_keys_and_projects_in_the_config(spool: Spool) -> None:
    (spool.root / "config.toml").write_text(CONFIG + '\n[[projects]]\nname = "team-a"\nmax_queued_jobs = 2\n')
    config = load_config(spool.root, env={})
    table = config.api_key_table()
    assert [(k.project, k.admin) for k in table] == [("default", True), ("team-a", False), ("team-b", False),
                                                    ("ops", True)]
    assert [k.fingerprint for k in table] == [fp(KEY_ROOT), fp(KEY_A), fp(KEY_B), fp(KEY_ADMIN)]
    assert KEY_A not in repr(config.keys) and KEY_ADMIN not in repr(config.keys)  # only hashes are kept
    assert config.project("team-a") is not None and config.project("team-a").max_queued_jobs == 2  # type: ignore[union-attr]
    from spoolbatch.server.auth import check_bind

    (spool.root / "config.toml").write_text(CONFIG.replace(f'api_keys = ["{KEY_ROOT}"]', ""))
    check_bind(load_config(spool.root, env={}), "0.0.0.0")  # [[keys]] alone are keys: any address may be served
    for bad in ('[[keys]]\nkey = "k"\n', '[[keys]]\nkey = "k"\nkey_sha256 = "00"\nproject = "a"\n',
                '[[keys]]\nkey_sha256 = "abc"\nproject = "a"\n', '[[keys]]\nkey = "k"\nproject = "../x"\n',
                '[[keys]]\nkey = "k"\nproject = "a"\nadmin = "yes"\n',
                '[[projects]]\nname = "a"\nmax_queued_jobs = -1\n',
                '[[projects]]\nname = "a.b"\n', '[[projects]]\nname = "a"\n[[projects]]\nname = "a"\n'):
        (spool.root / "config.toml").write_text(bad)
        with pytest.raises(ConfigError):
            load_config(spool.root, env={})


# --- the API: each key its own project's, another's ids are unknown ids ---------------------
def test_two_projects_see_only_their_own(spool: Spool, served: Callable[..., Server]) -> None:
    server = served(CONFIG, "-v")  # uvicorn's access log on: a key in a query string must not reach it
    a, b = sdk(server, KEY_A), sdk(server, KEY_B)
    file_a, batch_a = create(a, tag="a")
    file_b, batch_b = create(b, tag="b")
    _, batch_a2 = create(a, tag="a2")

    assert {x.id for x in a.batches.list()} == {batch_a, batch_a2}
    assert {x.id for x in b.batches.list()} == {batch_b}
    assert {x.id for x in a.files.list()} >= {file_a} and file_b not in {x.id for x in a.files.list()}
    assert {x.id for x in b.files.list()} == {file_b}
    assert BatchRecord.load(spool, batch_a.removeprefix("batch_")).project == "team-a"  # type: ignore[union-attr]
    assert (spool.inbox / "team-a").is_dir() and any((spool.inbox / "team-a").iterdir())

    # b asks for a's batch and files every way the API has: each is a 404, as an unknown id
    job_a = batch_a.removeprefix("batch_")
    for call in (lambda: b.batches.retrieve(batch_a), lambda: b.batches.cancel(batch_a),
                 lambda: b.files.retrieve(file_a), lambda: b.files.content(file_a), lambda: b.files.delete(file_a),
                 lambda: b.files.retrieve(f"file-input-{job_a}"), lambda: b.files.content(f"file-input-{job_a}"),
                 lambda: b.files.retrieve(f"file-output-{job_a}"), lambda: b.files.content(f"file-errors-{job_a}"),
                 lambda: b.files.delete(f"file-output-{job_a}"),
                 lambda: b.batches.create(input_file_id=file_a, endpoint="/v1/chat/completions",
                                          completion_window="24h")):
        not_found(call)
    unknown = httpx.get(f"{server.base_url}/batches/batch_nosuchjob", headers={"Authorization": f"Bearer {KEY_B}"})
    others = httpx.get(f"{server.base_url}/batches/{batch_a}", headers={"Authorization": f"Bearer {KEY_B}"})
    assert others.status_code == unknown.status_code == 404
    assert others.json()["error"] | {"message": ""} == unknown.json()["error"] | {"message": ""}
    hb = {"Authorization": f"Bearer {KEY_B}"}
    for method, path in (("GET", "results"), ("GET", "failed"), ("GET", "logs"), ("DELETE", "")):
        url = f"{server.base_url}/batches/{batch_a}" + (f"/{path}" if path else "")
        r = httpx.request(method, url, headers=hb)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
    page = httpx.get(f"{server.url}/v1/spoolbatch/status", headers=hb).json()
    assert [j["batch"] for j in page["jobs"]] == [batch_b] and {j["project"] for j in page["jobs"]} == {"team-b"}
    assert all(u["project"] == "team-b" for u in page["usage"])
    # the page's workers: a worker on a's job names it to a, and to b only its state
    spool.worker_file("gpu-box-1").write_bytes(orjson.dumps({
        "worker": "gpu-box-1", "host": "gpu-box", "pid": 1, "state": "working", "job": job_a, "chunk": 3,
        "model": "m", "progress": {"lines_consumed": 10}, "last_seen": time.time(), "interval": 2.0}))
    ha = {"Authorization": f"Bearer {KEY_A}"}
    for route in ("/v1/spoolbatch/workers", "/v1/spoolbatch/status"):
        seen_b = httpx.get(f"{server.url}{route}", headers=hb).json()["workers"]
        seen_a = httpx.get(f"{server.url}{route}", headers=ha).json()["workers"]
        assert [(w["worker"], w["state"], w["job"], w["model"]) for w in seen_b] == [
            ("gpu-box-1", "working", None, None)]
        assert [(w["job"], w["chunk"]) for w in seen_a] == [(job_a, 3)]
        assert job_a not in str(seen_b)
    assert httpx.get(f"{server.url}/v1/spoolbatch/workers", headers=hb).json()["queue"]["jobs"] == 1
    assert a.batches.retrieve(batch_a).status == "validating"  # still queued: nothing of b's touched it

    # a key may not act for another project; the admins see both, or one when they name it
    with pytest.raises(openai.AuthenticationError):
        sdk(server, KEY_B, project="team-a").batches.list()
    for key in (KEY_ADMIN, KEY_ROOT):
        admin = sdk(server, key)
        assert {x.id for x in admin.batches.list()} >= {batch_a, batch_a2, batch_b}
        assert {file_a, file_b} <= {x.id for x in admin.files.list()}
        assert admin.batches.retrieve(batch_b).id == batch_b
        assert b"question 0" in admin.files.content(file_a).content
    acting = sdk(server, KEY_ADMIN, project="team-b")
    assert {x.id for x in acting.batches.list()} == {batch_b}
    not_found(lambda: acting.batches.retrieve(batch_a))
    _, batch_b2 = create(acting, tag="b2")  # made for team-b: b's key sees it
    assert batch_b2 in {x.id for x in b.batches.list()}

    # the owner cancels and deletes its own
    assert a.batches.cancel(batch_a2).status in ("cancelling", "cancelled")
    assert a.files.delete(file_a).deleted

    # the audit trail: every change, every refused key, never a key
    r = httpx.get(f"{server.base_url}/batches?api_key={KEY_A}")
    assert r.status_code == 401 and "Authorization" in r.json()["error"]["message"]
    r = httpx.get(f"{server.base_url}/batches?key={KEY_A}", headers={"Authorization": f"Bearer {KEY_A}"})
    assert r.status_code == 401
    assert httpx.get(f"{server.base_url}/files", headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    assert httpx.get(f"{server.base_url}/files").status_code == 401
    lines = read_audit(spool)
    text = spool.audit_log().read_text()
    stderr = stopped(server)
    for key in (*KEYS, "sk-wrong"):
        assert key not in text and key not in stderr
    assert "api_key=REDACTED" in stderr and " 401" in stderr  # the access line, with the key blanked
    assert all(set(e) == {"ts", "method", "route", "status", "outcome", "project", "key", "id"} for e in lines)
    seen = {(e["method"], e["route"], e["project"], e["key"], e["outcome"]) for e in lines}
    assert ("POST", "/v1/files", "team-a", fp(KEY_A), "ok") in seen
    assert ("POST", "/v1/batches", "team-b", fp(KEY_B), "ok") in seen
    assert ("POST", "/v1/batches", "team-b", fp(KEY_ADMIN), "ok") in seen  # the admin acting for team-b
    assert ("POST", "/v1/batches/{batch_id}/cancel", "team-b", fp(KEY_B), "not_found") in seen
    assert ("DELETE", "/v1/batches/{batch_id}", "team-b", fp(KEY_B), "not_found") in seen
    assert ("DELETE", "/v1/files/{file_id}", "team-b", fp(KEY_B), "not_found") in seen
    cancel = [e for e in lines if e["route"] == "/v1/batches/{batch_id}/cancel" and e["outcome"] == "ok"]
    assert [(e["project"], e["key"], e["id"]) for e in cancel] == [("team-a", fp(KEY_A), batch_a2)]
    deleted = [e for e in lines if e["method"] == "DELETE" and e["outcome"] == "ok"]
    assert [(e["route"], e["id"]) for e in deleted] == [("/v1/files/{file_id}", file_a)]
    created = {e["id"] for e in lines if e["route"] == "/v1/batches" and e["outcome"] == "ok"}
    assert created == {batch_a, batch_a2, batch_b, batch_b2}
    refused = [(e["key"], e["route"]) for e in lines if e["outcome"] == "refused_key"]
    assert (fp(KEY_A), "/v1/batches") in refused  # ?api_key=: named by its fingerprint
    assert (fp(KEY_B), "/v1/batches") in refused  # acting for another project
    assert (fp("sk-wrong"), "/v1/files") in refused and (None, "/v1/files") in refused
    assert not [e for e in lines if e["method"] == "GET" and e["outcome"] != "refused_key"]  # reads are not changes


def test_quotas_answer_429_naming_the_limit(spool: Spool, served: Callable[[str], Server]) -> None:
    server = served(CONFIG + '\n[[projects]]\nname = "team-a"\nmax_queued_jobs = 1\n'
                    '\n[[projects]]\nname = "team-b"\nmax_queued_requests = 4\nmax_queued_prompt_tokens = 40\n')
    a, b = sdk(server, KEY_A), sdk(server, KEY_B)
    create(a, tag="a")
    with pytest.raises(openai.RateLimitError) as caught:
        create(a, tag="a-again")
    assert caught.value.status_code == 429
    assert "project 'team-a'" in caught.value.message and "queued jobs quota (2 > 1)" in caught.value.message
    assert caught.value.body["code"] == "quota_exceeded"  # type: ignore[index]
    create(b, n=3, tag="b")  # 3 requests of about 3 tokens each
    with pytest.raises(openai.RateLimitError) as caught:
        create(b, n=2, tag="b-more")
    assert "queued requests quota (5 > 4)" in caught.value.message
    long = [chat_line(0) | {"body": chat_line(0)["body"] | {"messages": [{"role": "user", "content": "x" * 200}]}}]
    f = b.files.create(file=("long.jsonl", io.BytesIO(jsonl(long))), purpose="batch")
    with pytest.raises(openai.RateLimitError) as caught:
        b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert "queued prompt tokens quota" in caught.value.message
    assert caught.value.body["code"] == "token_limit_exceeded"  # type: ignore[index]
    assert len(a.batches.list().data) == 1 and len(b.batches.list().data) == 1  # nothing placed over a quota
    root = sdk(server, KEY_ROOT)
    create(root, tag="default-has-no-quota")
    create(root, tag="default-has-no-quota-2")
    over = [e for e in read_audit(spool) if e["status"] == 429]
    assert [(e["project"], e["outcome"]) for e in over] == [("team-a", "quota_exceeded"), ("team-b", "quota_exceeded"),
                                                            ("team-b", "token_limit_exceeded")]


# --- cp into inbox/team-a/, a daemon, usage ---------------------------------------------------
def test_a_file_dropped_in_a_project_folder_is_that_projects(spool: Spool, served: Callable[[str], Server],
                                                             start_daemon: Any) -> None:
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    drop_in(spool, "team-a", "dropped.jsonl", [*(chat_line(i) for i in range(25)), bad])
    drop(spool, "plain.jsonl", [chat_line(i) for i in range(5)])
    server = served(CONFIG)
    a, b, root = sdk(server, KEY_A), sdk(server, KEY_B), sdk(server, KEY_ROOT)
    assert [x.id for x in a.batches.list()] == ["batch_dropped"]  # queued, by its folder
    not_found(lambda: b.batches.retrieve("batch_dropped"))
    _, batch_b = create(b, n=4, tag="b")
    assert start_daemon("--once").wait(timeout=120) == 0
    done = a.batches.retrieve("batch_dropped")
    assert done.status == "completed" and done.request_counts.completed == 25  # type: ignore[union-attr]
    assert done.request_counts.failed == 1  # type: ignore[union-attr]
    assert [x.id for x in a.batches.list()] == ["batch_dropped"]
    assert {x.id for x in root.batches.list()} == {"batch_dropped", "batch_plain", batch_b}
    assert b"req-24" in a.files.content(done.output_file_id or "").content
    not_found(lambda: b.files.content(done.output_file_id or ""))
    ckpt = Checkpoint.load(spool.checkpoint("dropped"))
    assert ckpt is not None and ckpt.project == "team-a" and ckpt.input_name == "team-a/dropped.jsonl"
    assert Checkpoint.load(spool.checkpoint("plain")).project == "default"  # type: ignore[union-attr]

    # usage: per project and day, equal to the sum of the jobs' checkpoints
    rows = usage(spool)
    ckpts = [c for e in spool.jobs(Stage.CHECKPOINTED) if (c := Checkpoint.load(e.path)) is not None]
    for project in ("team-a", "team-b", "default"):
        mine = [c for c in ckpts if c.project == project]
        got = [r for r in rows if r.project == project]
        assert sum(r.requests for r in got) == sum(c.requests_done + c.requests_failed for c in mine) > 0
        assert sum(r.prompt_tokens for r in got) == sum(c.prompt_tokens for c in mine) > 0
        assert sum(r.completion_tokens for r in got) == sum(c.completion_tokens for c in mine) > 0
        assert sum(r.gpu_seconds for r in got) == pytest.approx(sum(c.busy_seconds for c in mine), abs=1e-3)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert {r.day for r in rows} <= {today, time.strftime("%Y-%m-%d", time.gmtime(time.time() - 600))}
    assert [r.project for r in usage(spool, "team-a")] == ["team-a"] * len(usage(spool, "team-a"))
    assert usage(spool, since="2999-01-01") == []
    page = httpx.get(f"{server.url}/v1/spoolbatch/status", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert [u["requests"] for u in page["usage"]] == [r.requests for r in usage(spool, "team-a")]

    # the metrics file counts per project what this worker ran
    prom = next(spool.workers.glob("*.prom")).read_text()
    assert 'spoolbatch_project_requests_total{worker="' in prom
    assert 'project="team-a"} 26\n' in prom and 'project="team-b"} 4\n' in prom
    assert 'project="team-a",kind="prompt"}' in prom and 'spoolbatch_project_gpu_seconds_total{' in prom

    # the CLI: results, status and usage of one project; a retry stays in its project
    runner, at = CliRunner(), ["--spool", str(spool.root)]
    r = runner.invoke(cli, ["results", "dropped", *at, "--project", "team-b"])
    assert r.exit_code == 4, r.output
    r = runner.invoke(cli, ["results", "dropped", *at, "--project", "team-a"])
    assert r.exit_code == 0 and r.output.count("\n") == 25
    r = runner.invoke(cli, ["status", *at, "--project", "team-a", "--json"])
    data = orjson.loads(r.output)
    assert [j["job"] for j in data["jobs"]] == ["dropped"]
    assert data["usage"] == [u.to_dict() for u in usage(spool, "team-a")]
    r = runner.invoke(cli, ["usage", *at, "--json", "--since", "7d"])
    assert orjson.loads(r.output) == [u.to_dict() for u in rows]
    r = runner.invoke(cli, ["usage", *at, "--project", "team-b"])
    assert r.exit_code == 0 and "team-b" in r.output and "team-a" not in r.output
    assert runner.invoke(cli, ["usage", *at, "--since", "yesterday"]).exit_code == 5
    r = runner.invoke(cli, ["retry", "dropped", *at, "--json"])
    assert r.exit_code == 0, r.output
    retried = orjson.loads(r.output)["job"]
    assert (spool.inbox / "team-a" / f"{retried}.jsonl").is_file()
    assert [x.id for x in a.batches.list()] == [f"batch_{retried}", "batch_dropped"]


def test_a_retry_from_the_page_keeps_the_old_jobs_project(spool: Spool, served: Callable[[str], Server],
                                                           start_daemon: Any) -> None:
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    drop_in(spool, "team-a", "dropped.jsonl", [chat_line(1), bad])  # team-a's by its folder
    server = served(CONFIG)
    a, b, root = sdk(server, KEY_A), sdk(server, KEY_B), sdk(server, KEY_ROOT)
    f = b.files.create(file=("b.jsonl", io.BytesIO(jsonl([chat_line(1), bad]))), purpose="batch")
    batch_b = b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                               extra_body={"allow_bad_lines": True}).id  # team-b's by its key
    assert start_daemon("--once").wait(timeout=120) == 0

    def retry(key: str, batch: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/spoolbatch/batches/{batch}/retry",
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)

    for key, batch in ((KEY_B, "batch_dropped"), (KEY_A, batch_b)):  # another project's: as an unknown id
        r = retry(key, batch)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    for key, batch, project, owner, other in ((KEY_A, "batch_dropped", "team-a", a, b),
                                              (KEY_B, batch_b, "team-b", b, a),
                                              (KEY_ROOT, "batch_dropped", "team-a", a, b)):  # an admin's too
        r = retry(key, batch)
        assert r.status_code == 200, r.text
        new = r.json()["id"]
        job = new.removeprefix("batch_")
        assert BatchRecord.load(spool, job).project == project  # type: ignore[union-attr]
        assert (spool.inbox / project / f"{job}.jsonl").read_bytes() == orjson.dumps(bad) + b"\n"
        assert owner.batches.retrieve(new).id == new and new in {x.id for x in root.batches.list()}
        not_found(functools.partial(other.batches.retrieve, new))


# --- the library and the CLI ------------------------------------------------------------------
def test_submit_project_split_retry_and_quota_exit(spool: Spool, tmp_path: Path) -> None:
    (spool.root / "config.toml").write_text('max_queued_jobs = 50\nmax_requests_per_job = 10\n'
                                            '[[projects]]\nname = "team-a"\nmax_queued_requests = 30\n')
    src = write_jsonl(tmp_path / "big.jsonl", [chat_line(i) for i in range(25)])
    runner = CliRunner()
    r = runner.invoke(cli, ["submit", str(src), "--spool", str(spool.root), "--split", "--project", "team-a", "--json"])
    assert r.exit_code == 0, r.output
    parts = sorted(p.name for p in (spool.inbox / "team-a").iterdir())
    assert parts == ["big.part001.jsonl", "big.part002.jsonl", "big.part003.jsonl"]
    assert {BatchRecord.load(spool, p.removesuffix(".jsonl")).project for p in parts} == {"team-a"}  # type: ignore[union-attr]
    r = runner.invoke(cli, ["submit", str(write_jsonl(tmp_path / "more.jsonl", [chat_line(i) for i in range(6)])),
                            "--spool", str(spool.root), "--project", "team-a"])
    assert r.exit_code == 5 and "queued requests quota (31 > 30)" in r.output, r.output
    r = runner.invoke(cli, ["submit", str(tmp_path / "more.jsonl"), "--spool", str(spool.root), "--project", "../x"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    r = runner.invoke(cli, ["list", "--spool", str(spool.root), "--project", "team-a", "--json"])
    assert r.exit_code == 0
    assert {j["project"] for j in orjson.loads(r.output)} == {"team-a"} and len(orjson.loads(r.output)) == 3
    r = runner.invoke(cli, ["list", "--spool", str(spool.root), "--project", "team-b", "--json"])
    assert orjson.loads(r.output) == []
    r = runner.invoke(cli, ["init", "--spool", str(spool.root), "--project", "team-c"])
    assert r.exit_code == 0 and (spool.inbox / "team-c").is_dir()
    assert r.output.count("team-c") >= 1


def test_the_inbox_lists_project_folders_only(spool: Spool, tmp_path: Path) -> None:
    (spool.inbox / "team-a").mkdir()
    write_jsonl(spool.inbox / "team-a" / "one.jsonl", [chat_line(1)])
    write_jsonl(spool.inbox / "team-a" / ".hidden.jsonl", [chat_line(1)])
    write_jsonl(spool.inbox / "top.jsonl", [chat_line(1)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_jsonl(elsewhere / "secret.jsonl", [chat_line(1)])
    os.symlink(elsewhere, spool.inbox / "linked")  # a link is never a project folder: not followed
    (spool.inbox / "team-a" / "nested").mkdir()
    entries = {(e.name, e.project) for e in spool.inbox_entries()}
    assert ("team-a/one.jsonl", "team-a") in entries and ("top.jsonl", "default") in entries
    assert ("linked", "default") in entries  # odd: refused as a link by the daemon, never read
    assert not any("secret" in name or "hidden" in name for name, _ in entries)
    assert ("team-a/nested", "team-a") in entries  # odd too
    assert spool.unique_job_id("one.jsonl") == "one-2"  # an id queued in a project's folder is taken
    assert spool.unique_job_id("audit.jsonl") == "audit-2" and spool.unique_job_id("daemon") == "daemon-2"
    assert parse_since("2026-01-02") == "2026-01-02"
    with pytest.raises(InputError):
        parse_since("2026-02-30")
    assert parse_since("1d", now=86400 * 3 + 5) == "1970-01-04" and parse_since("3d", now=86400 * 3 + 5) == "1970-01-02"


def test_gc_keeps_the_audit_log_and_sweeps_project_folders(spool: Spool) -> None:
    from spoolbatch.commands.gc import gc
    from spoolbatch.store.audit import AuditEntry, AuditLog
    from spoolbatch.store.cleanup import DAY, Kind

    config = load_config(spool.root, env={}, retention_days=1)
    AuditLog(spool).write(AuditEntry("POST", "/v1/files", 200, "ok", "team-a", "0123abcd", "file-x"))
    (spool.inbox / "team-a").mkdir()
    stale = spool.inbox / "team-a" / ".job.host.3.4.tmp"
    stale.write_bytes(b"x")
    past = time.time() - 40 * DAY
    for path in (stale, spool.audit_log()):
        os.utime(path, (past, past))
    report = gc(config)
    assert [(r.kind, r.name) for r in report.removed] == [(Kind.TEMPORARY, "inbox/team-a/.job.host.3.4.tmp")]
    assert [e["id"] for e in read_audit(spool)] == ["file-x"]


def test_usage_by_day_and_the_week_status_shows(spool: Spool) -> None:
    from spoolbatch.commands.status import status
    from spoolbatch.store.jobstate import JobState

    old = Checkpoint(job="old", status=JobState.COMPLETED, project="team-a", requests_done=3, prompt_tokens=30,
                     completion_tokens=9, busy_seconds=1.5, usage_days={"2020-01-01": [3, 30, 9, 1.5]})
    old.save(spool.checkpoint("old"))
    then = time.mktime((2020, 1, 1, 12, 0, 0, 0, 0, -1))
    os.utime(spool.checkpoint("old"), (then, then))
    # from before days were kept: no project, no days: default's, on the day it was last written
    Checkpoint(job="legacy", status=JobState.COMPLETED, requests_done=2, requests_failed=1, prompt_tokens=5,
               completion_tokens=7, busy_seconds=0.5).save(spool.checkpoint("legacy"))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows = usage(spool)
    assert [(r.project, r.day, r.requests, r.prompt_tokens, r.completion_tokens, r.gpu_seconds) for r in rows] == [
        ("team-a", "2020-01-01", 3, 30, 9, 1.5), ("default", today, 3, 5, 7, 0.5)]
    assert usage(spool, since="2020-01-02") == rows[1:] and usage(spool, "team-a") == rows[:1]
    assert status(spool).to_dict()["usage"] == [rows[1].to_dict()]  # the last 7 days
    assert status(spool, project="team-a").to_dict()["usage"] == []
