"""Bad input never stops the queue: bad lines go to deadletter, bad files to rejected/.

One running daemon gets a batch of hostile files at once (every kind of bad line, empty,
binary, over the request limit, a symlink out of the spool, a FIFO, a directory, names
with path tricks) and must still be alive and answer a good job dropped last.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.config import Config
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import chat_line, drop, read_jsonl, wait_for

pytestmark = pytest.mark.slow

MAX_REQUESTS = 5
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def good(prefix: str, i: int, **body: Any) -> dict[str, Any]:
    """A valid line with id ``prefix-i``."""
    return {**chat_line(i, **body), "custom_id": f"{prefix}-{i}"}


def raw_of(record: Any) -> bytes:
    """The bytes ``write_jsonl`` puts on the line for ``record`` (without the newline)."""
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        return record.encode()
    return orjson.dumps(record)


def body_without_model() -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# name -> (lines, {line number: (code, custom_id)}); lines not listed must be answered.
BAD_LINES: dict[str, tuple[list[Any], dict[int, tuple[str, str | None]]]] = {
    "badjson": ([good("bj", 1), b'{"custom_id": "bj-2", "method": "POST", ', good("bj", 3)],
                {2: ("invalid_json", None)}),
    "notobject": ([good("no", 1), "[1,2]", '"str"', "42"],
                  {2: ("not_an_object", None), 3: ("not_an_object", None), 4: ("not_an_object", None)}),
    "noid": ([good("ni", 1), {"method": "POST", "url": "/v1/chat/completions", "body": body_without_model()},
              {"custom_id": "", "method": "POST", "url": "/v1/chat/completions", "body": body_without_model()},
              {"custom_id": 7, "method": "POST", "url": "/v1/chat/completions", "body": body_without_model()}],
             {2: ("missing_custom_id", None), 3: ("missing_custom_id", None), 4: ("missing_custom_id", None)}),
    "dup": ([good("dp", 1), {**good("dp", 2), "custom_id": "dp-1"}, good("dp", 3)],
            {2: ("duplicate_custom_id", "dp-1")}),
    "badurl": ([good("bu", 1), {**good("bu", 2), "url": "/v1/images/generations"},
                {**good("bu", 3), "url": "https://evil.example/v1/chat/completions"}],
               {2: ("invalid_url", "bu-2"), 3: ("invalid_url", "bu-3")}),
    "getmethod": ([good("gm", 1), {**good("gm", 2), "method": "GET"}, {**good("gm", 3), "method": None}],
                  {2: ("invalid_method", "gm-2"), 3: ("invalid_method", "gm-3")}),
    "badbody": ([good("bb", 1), {**good("bb", 2), "body": [1, 2]}, {**good("bb", 3), "body": "str"},
                 {**good("bb", 4), "body": None}],
                {2: ("invalid_body", "bb-2"), 3: ("invalid_body", "bb-3"), 4: ("invalid_body", "bb-4")}),
    "mixedmodel": ([good("mm", 1), good("mm", 2, model="other-model"), good("mm", 3)],
                   {2: ("model_mismatch", "mm-2")}),
    "badutf8": ([good("u8", 1), b'{"custom_id": "u8-2", "method": "POST", "body": "\xff\xfe caf\xe9"}', good("u8", 3)],
                {2: ("invalid_utf8", None)}),
}

# name -> (file bytes, rejection code)
BAD_FILES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty_file"),
    "binary": (b"\x00\x01\x02ELF\x00" * 50, "binary_file"),
    "toolarge": (b"".join(orjson.dumps(good("tl", i)) + b"\n" for i in range(MAX_REQUESTS + 1)), "limit_exceeded"),
}


def aged(path: Path) -> None:
    past = time.time() - 60
    os.utime(path, (past, past), follow_symlinks=False)


def idle(spool: Spool) -> bool:
    """Nothing claimable is left in the inbox and nothing is in progress."""
    waiting = [p.name for p in spool.inbox.iterdir() if not p.name.startswith(".")]
    running = [p.name for p in spool.active.iterdir() if p.name.endswith(".jsonl")]
    return not waiting and not running


def test_hostile_inbox_is_handled_and_daemon_survives(spool: Spool, start_daemon: Any, tmp_path: Path) -> None:
    for name, (lines, _) in BAD_LINES.items():
        drop(spool, f"{name}.jsonl", lines)
    for name, (data, _) in BAD_FILES.items():
        path = spool.inbox / f"{name}.jsonl"
        path.write_bytes(data)
        aged(path)
    # A file without a final newline: its last line is still a request.
    nonl = spool.inbox / "nonewline.jsonl"
    nonl.write_bytes(orjson.dumps(good("nl", 1)) + b"\n" + orjson.dumps(good("nl", 2)))
    aged(nonl)
    # A symlink pointing out of the spool, a FIFO (opening it would block), a directory.
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "secret.jsonl"
    target.write_bytes(orjson.dumps(good("sl", 1)) + b"\n")
    aged(target)
    target_before = (target.read_bytes(), target.stat().st_mtime_ns, target.stat().st_mode)
    (spool.inbox / "link.jsonl").symlink_to(target)
    aged(spool.inbox / "link.jsonl")
    os.mkfifo(spool.inbox / "pipe.jsonl")
    aged(spool.inbox / "pipe.jsonl")
    (spool.inbox / "adir.jsonl").mkdir()
    aged(spool.inbox / "adir.jsonl")
    # Names with path tricks; a dotfile is ignored (never a job), the others get safe ids.
    tricky = {"-..evil name$.jsonl": "evil_name", "evil name.jsonl": "evil_name-2",
              "new\nline.jsonl": "new_line", "résumé ☃.jsonl": "r_sum", "..hidden.jsonl": None}
    for n, name in enumerate(tricky):
        drop(spool, name, [good("tr", n)], age=60 - n)  # distinct mtimes: a fixed claim order

    proc = start_daemon(env={"SPOOLBATCH_MAX_REQUESTS_PER_JOB": str(MAX_REQUESTS)})
    wait_for(lambda: idle(spool), timeout=60)
    assert proc.poll() is None, "the daemon must survive a hostile inbox"

    # --- bad lines: good lines answered, bad ones in deadletter with line, id, text, error
    for name, (lines, bad) in BAD_LINES.items():
        ckpt = orjson.loads(spool.checkpoint(name).read_bytes())
        assert ckpt["status"] == "completed", name
        results = read_jsonl(spool.results(name))
        answered = {i for i in range(1, len(lines) + 1)} - set(bad)
        assert [r["custom_id"] for r in results] == [lines[i - 1]["custom_id"] for i in sorted(answered)], name
        dead = read_jsonl(spool.deadletter_file(name))
        assert {d["line"]: (d["error"]["code"], d["custom_id"]) for d in dead} == bad, name
        for d in dead:
            assert d["job"] == name and d["attempts"] == 0
            assert d["error"]["message"]
            raw = raw_of(lines[d["line"] - 1])
            if d["error"]["code"] == "invalid_utf8":
                assert base64.b64decode(d["request_base64"]) == raw
            else:
                assert d["request"] == raw.decode(), f"{name} line {d['line']} not verbatim"
        assert ckpt["requests_done"] == len(results) and ckpt["requests_failed"] == len(dead)

    assert [r["custom_id"] for r in read_jsonl(spool.results("nonewline"))] == ["nl-1", "nl-2"]
    assert read_jsonl(spool.deadletter_file("nonewline")) == []

    # --- whole files refused, with a reason file naming the problem
    for name, (data, code) in BAD_FILES.items():
        reason = orjson.loads(spool.rejected_reason(name).read_bytes())
        assert reason["code"] == code, name
        assert reason["job"] == name and reason["file"] == f"{name}.jsonl"
        assert spool.rejected_file(name).read_bytes() == data, "a refused file is kept as it was"
        assert not spool.results(name).exists()
    limit = orjson.loads(spool.rejected_reason("toolarge").read_bytes())
    assert "requests per job" in limit["reason"] and f"{MAX_REQUESTS + 1} > {MAX_REQUESTS}" in limit["reason"]
    assert "--split" in (limit["hint"] or "")

    for name in ("link", "pipe", "adir"):
        reason = orjson.loads(spool.rejected_reason(name).read_bytes())
        assert reason["code"] == "not_a_regular_file", name
        assert not spool.results(name).exists() and not spool.checkpoint(name).exists()
    assert "symbolic link" in orjson.loads(spool.rejected_reason("link").read_bytes())["reason"]
    moved = spool.rejected_file("link")
    assert moved.is_symlink() and os.readlink(moved) == str(target), "the link itself is moved, not followed"
    assert (target.read_bytes(), target.stat().st_mtime_ns, target.stat().st_mode) == target_before
    assert sorted(p.name for p in outside.iterdir()) == ["secret.jsonl"]
    assert not spool.results("secret").exists()

    # --- tricky names: safe ids, no overwrite, nothing written outside the spool
    for n, (name, job) in enumerate(tricky.items()):
        if job is None:
            assert (spool.inbox / name).exists(), "dotfiles are ignored, left in place"
            continue
        assert [r["custom_id"] for r in read_jsonl(spool.results(job))] == [f"tr-{n}"], name
    for path in list(spool.done.iterdir()) + list(spool.rejected.iterdir()) + list(spool.deadletter.iterdir()):
        job = path.name.split(".")[0]
        assert SAFE_ID.match(job), path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "spool"]

    # --- the queue goes on: a good job dropped last is answered
    drop(spool, "goodlast.jsonl", [good("gl", i) for i in range(3)])
    wait_for(lambda: spool.checkpoint("goodlast").exists()
             and orjson.loads(spool.checkpoint("goodlast").read_bytes())["status"] == "completed", timeout=30)
    assert [r["custom_id"] for r in read_jsonl(spool.results("goodlast"))] == ["gl-0", "gl-1", "gl-2"]
    assert proc.poll() is None


def test_file_still_being_copied_is_not_claimed_until_it_settles(spool: Spool, config: Config) -> None:
    """A copy in progress stays in the inbox until its last write is ``settle_seconds`` old.

    The daemon's clock is the seam: after every write (half a line, then the rest: a copy can
    end anywhere) it reads just short of the file's mtime plus the settle time, so no sleep
    paces the writer and the machine's speed decides nothing.
    """
    path = spool.inbox / "growing.jsonl"
    clock = {"now": 0.0}
    daemon = Daemon(config.replace(settle_seconds=1.0), echo=False, clock=lambda: clock["now"])
    with open(path, "wb") as f:
        for n in range(12):
            line = orjson.dumps(good("gr", n)) + b"\n"
            for piece in (line[:20], line[20:]):
                f.write(piece)
                f.flush()
                clock["now"] = os.stat(path).st_mtime + 0.99
                result = daemon.loop_once()
                # settling > 0 is what keeps `run --once` from leaving an empty-looking queue
                assert (result.worked, result.settling) == (False, 1), "claimed while still being written"
                assert path.exists() and not spool.log("growing").exists()
    clock["now"] = os.stat(path).st_mtime + 1.01
    assert daemon.loop_once().worked  # settled by the daemon's clock: claimed at once, whatever the wall says
    assert daemon.run(once=True) == 0  # the rest answered, and --once leaves
    assert not path.exists()
    results = read_jsonl(spool.results("growing"))
    assert [r["custom_id"] for r in results] == [f"gr-{i}" for i in range(12)]
    assert read_jsonl(spool.deadletter_file("growing")) == []
