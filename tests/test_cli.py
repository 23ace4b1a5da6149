"""The command line: thin commands, one-line errors with documented exit codes, JSON everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from spoolbatch.cli import app
from spoolbatch.commands.batches import error_lines
from spoolbatch.config import Config
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import REPO, chat_line, write_jsonl

runner = CliRunner()


def cli(spool: Spool, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--spool", str(spool.root)])
    return result.exit_code, result.stdout, result.stderr


def test_init_submit_run_results_round_trip(spool: Spool, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "jobs.jsonl", [chat_line(i) for i in range(12)])
    code, out, _ = cli(spool, "submit", str(src), "--json")
    assert code == 0 and orjson.loads(out)["jobs"] == ["jobs"]
    code, _, _ = cli(spool, "run", "--once", "--engine", "fake", "--settle-seconds", "0", "-q")
    assert code == 0
    code, out, _ = cli(spool, "results", "jobs")
    assert code == 0 and len(out.splitlines()) == 12
    out_file = tmp_path / "out.jsonl"
    code, _, _ = cli(spool, "results", "jobs", "-o", str(out_file))
    assert code == 0 and len(out_file.read_bytes().splitlines()) == 12
    code, out, _ = cli(spool, "list", "--json")
    (job,) = orjson.loads(out)
    assert job["status"] == "completed" and job["requests_done"] == 12
    code, out, _ = cli(spool, "status", "jobs", "--json")
    data = orjson.loads(out)
    assert data["jobs"][0]["job"] == "jobs" and data["workers"][0]["liveness"] == "stopped"
    code, out, _ = cli(spool, "logs", "jobs", "--json")
    assert [e["event"] for e in orjson.loads(out)] == ["claimed", "chunk_merged", "completed"]
    code, out, _ = cli(spool, "logs", "jobs")
    assert code == 0 and "claimed jobs.jsonl as job jobs: 12 lines" in out and "completed: 12 answered" in out
    code, out, _ = cli(spool, "status")
    assert code == 0 and "completed" in out


def test_deadletter_and_errors_and_retry(spool: Spool, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "j.jsonl", [chat_line(1), chat_line(2, temperature=5)])
    code, _, err = cli(spool, "submit", str(src))
    assert code == 5 and "j.jsonl:2" in err and "temperature" in err and "Traceback" not in err
    assert cli(spool, "submit", str(src), "--allow-bad-lines")[0] == 0
    cli(spool, "run", "--once", "--engine", "fake", "--settle-seconds", "0", "-q")
    code, out, _ = cli(spool, "deadletter", "j", "--json")
    (record,) = orjson.loads(out)
    assert record["line"] == 2 and record["error"]["code"] == "invalid_value"
    code, out, _ = cli(spool, "results", "j", "--errors")
    assert orjson.loads(out)["error"]["code"] == "invalid_value"
    code, out, _ = cli(spool, "retry", "j", "--json")
    assert code == 0 and orjson.loads(out) == {"job": "j.retry", "records": 1}


def test_results_errors_is_the_apis_error_file_with_the_lines_a_cancel_left_unrun(spool: Spool, tmp_path: Path,
                                                                                  config: Config) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", [chat_line(0, temperature=5)] + [chat_line(i) for i in range(1, 30)])
    assert cli(spool, "submit", str(src), "--allow-bad-lines")[0] == 0
    daemon = Daemon(config, echo=False)
    assert daemon.loop_once().worked  # the first chunk of 10 (the look-ahead chunk is claimed too)
    assert cli(spool, "cancel", "c")[0] == 0
    while daemon.loop_once().worked:
        pass
    code, out, _ = cli(spool, "results", "c")
    results = [orjson.loads(x) for x in out.splitlines()]
    code, out, _ = cli(spool, "results", "c", "--errors")
    errors = [orjson.loads(x) for x in out.splitlines()]
    assert code == 0 and 9 <= len(results) < 29
    assert len(results) + len(errors) == 30
    assert sorted(e["custom_id"] for e in errors) == sorted(f"req-{i}" for i in [0, *range(len(results) + 1, 30)])
    codes = [e["error"]["code"] for e in errors]
    assert codes[0] == "invalid_value" and set(codes[1:]) == {"batch_cancelled"}
    assert out.encode() == b"".join(error_lines(spool, "c"))  # the API's error file, line for line


@pytest.mark.parametrize(("args", "code", "words"), [
    (["results", "nope"], 4, "no job or group named 'nope'"),
    (["cancel", "nope"], 4, "no job"),
    (["logs", "nope"], 4, "no job"),
    (["submit", "/does/not/exist.jsonl"], 5, "no such file"),
])
def test_user_mistakes_are_one_line_with_an_exit_code(spool: Spool, args: list[str], code: int, words: str) -> None:
    got, _, err = cli(spool, *args)
    assert got == code and words in err and "Traceback" not in err


def test_a_missing_spool_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--spool", str(tmp_path / "none")])
    assert result.exit_code == 3 and "spoolbatch init" in result.stderr


def test_bad_config_is_a_usage_error(spool: Spool) -> None:
    (spool.root / "config.toml").write_text("chunk_size = 0\n")
    code, _, err = cli(spool, "status")
    assert code == 2 and "chunk_size" in err
    (spool.root / "config.toml").write_text("no_such_setting = 1\n")
    assert cli(spool, "status")[0] == 2


def test_config_file_env_and_flags_in_order(spool: Spool) -> None:
    from spoolbatch.config import load_config

    (spool.root / "config.toml").write_text("chunk_size = 100\npoll_interval = 3\n")
    cfg = load_config(spool.root, env={"SPOOLBATCH_CHUNK_SIZE": "200"})
    assert (cfg.chunk_size, cfg.poll_interval) == (200, 3.0)
    assert load_config(spool.root, env={"SPOOLBATCH_CHUNK_SIZE": "200"}, chunk_size=300).chunk_size == 300


def test_reading_commands_never_import_vllm_or_torch(spool: Spool) -> None:
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from spoolbatch.cli import app\n"
        f"for args in (['status', '--json'], ['list', '--json'], ['init']):\n"
        f"    r = CliRunner().invoke(app, [*args, '--spool', {str(spool.root)!r}])\n"
        "    assert r.exit_code == 0, r.output\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True)


def test_status_shows_each_workers_card_chunk_and_gpu() -> None:
    from rich.console import Console

    from spoolbatch.cli.views import status_lines

    worker = {"worker": "box-1", "liveness": "alive", "state": "working", "job": "big", "chunk": 7,
              "chunk_lines": [30001, 35000], "cuda_visible_devices": "1", "reason": None, "age_seconds": 0.4,
              "gpu": {"available": True, "devices": [{"index": 1, "name": "L4", "memory_pct": 81.5,
                                                      "temperature_c": 64, "utilization_pct": 97}]}}
    console = Console(record=True, width=150)
    for item in status_lines({"spool": "s", "workers": [worker], "queue": {"jobs": 2}, "jobs": []}):
        console.print(item)
    text = console.export_text()
    assert "worker box-1: alive, working [GPU 1] job big chunk 7 (lines 30,001-35,000)" in text
    assert "GPU 1 L4: memory 81.5%, 64°C, utilisation 97%" in text
    assert "queue: 2 job(s) waiting" in text


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_an_unknown_engine_is_a_usage_error_before_anything_starts(spool: Spool, source: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["run", "--once", "--settle-seconds", "0"]
    if source == "flag":
        args += ["--engine", "nope"]
    elif source == "env":
        monkeypatch.setenv("SPOOLBATCH_ENGINE", "nope")
    else:
        (spool.root / "config.toml").write_text('engine = "nope"\n')
    code, out, err = cli(spool, *args)
    assert code == 2 and "unknown engine 'nope'" in err and "vllm, fake, ray" in err
    assert "daemon started" not in out + err and "Traceback" not in err
    assert not list(spool.workers.iterdir()), "no worker may start for a refused engine"


def test_submit_lists_the_first_bad_lines_with_their_reasons(spool: Spool, tmp_path: Path) -> None:
    records: list[object] = []
    for i in range(30):
        records.append(chat_line(i))
        if i % 2:
            records.append("{broken" if i % 4 == 1 else chat_line(1000 + i, temperature=5))
    src = write_jsonl(tmp_path / "bad.jsonl", records)
    bad = [n for n, r in enumerate(records, start=1) if isinstance(r, str) or r["body"].get("temperature")]
    assert len(bad) == 15
    code, _, err = cli(spool, "submit", str(src))
    assert code == 5 and "Traceback" not in err
    assert "15 bad line(s)" in err and "... and 5 more" in err
    for n in bad[:10]:
        assert f"bad.jsonl:{n}: " in err
    assert f"bad.jsonl:{bad[10]}:" not in err
    assert "not valid JSON" in err and "temperature" in err
    code, out, _ = cli(spool, "submit", str(src), "--json")
    data = orjson.loads(out)
    assert code == 5 and data["bad_lines"] == 15 and [b["line"] for b in data["bad"]] == bad
    assert {b["code"] for b in data["bad"]} == {"invalid_json", "invalid_value"}
    assert not list(spool.inbox.iterdir()), "a refused file is not queued"


def test_submit_json_lists_every_bad_line_up_to_a_bound(spool: Spool, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "worse.jsonl", [chat_line(0)] + ["nope"] * 1500)
    code, out, _ = cli(spool, "submit", str(src), "--json")
    data = orjson.loads(out)
    assert code == 5 and data["bad_lines"] == 1500 and len(data["bad"]) == 1000
    assert data["bad"][0]["line"] == 2 and data["bad"][-1]["line"] == 1001


def test_commands_that_change_the_spool_write_the_audit_trail(spool: Spool, tmp_path: Path) -> None:
    """submit, cancel, retry and gc each write a line of logs/audit.log (SPEC: every change), whatever the outcome;
    read commands and a gc --dry-run write none."""
    import pwd

    from spoolbatch.store.audit import read_audit

    me = pwd.getpwuid(os.getuid()).pw_name
    good = write_jsonl(tmp_path / "good.jsonl", [chat_line(i) for i in range(3)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "x"}\n')
    assert cli(spool, "submit", str(good), "--project", "team-a")[0] == 0
    assert cli(spool, "submit", str(bad))[0] != 0
    assert cli(spool, "list")[0] == 0 and cli(spool, "status")[0] == 0
    assert cli(spool, "cancel", "good")[0] == 0
    assert cli(spool, "cancel", "nosuchjob")[0] != 0
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat_line(0), {"custom_id": "y"}])
    assert cli(spool, "submit", str(mixed), "--allow-bad-lines")[0] == 0
    assert cli(spool, "run", "--once", "--engine", "fake", "--settle-seconds", "0", "-q")[0] == 0
    code, out, _ = cli(spool, "retry", "mixed", "--json")
    assert code == 0
    assert cli(spool, "gc", "--dry-run")[0] == 0
    assert cli(spool, "gc")[0] == 0
    lines = read_audit(spool)
    assert [(e["route"], e["id"], e["project"], e["status"] == 0, e["outcome"]) for e in lines] == [
        ("spoolbatch submit", "good", "team-a", True, "ok"),
        ("spoolbatch submit", None, "default", False, "invalid_method"),  # the bad line's code
        ("spoolbatch cancel", "good", None, True, "ok"),
        ("spoolbatch cancel", "nosuchjob", None, False, "job_not_found"),
        ("spoolbatch submit", "mixed", "default", True, "ok"),
        ("spoolbatch retry", orjson.loads(out)["job"], None, True, "ok"),  # the job it made
        ("spoolbatch gc", None, None, True, "ok"),
    ]
    assert [e["status"] for e in lines] == [0, 5, 0, 4, 0, 0, 0]  # the exit codes
    assert all(e["method"] == "CLI" and e["user"] == me and e["key"] is None for e in lines)


@pytest.mark.parametrize(("raised", "status", "outcome"), [(KeyboardInterrupt(), 130, "interrupted"),
                                                           (PermissionError("no"), 1, "permission_error")])
def test_a_command_cut_short_is_not_audited_as_ok(spool: Spool, config: Config, raised: BaseException, status: int,
                                                  outcome: str) -> None:
    from spoolbatch.cli.audit import Change, audited
    from spoolbatch.store.audit import read_audit

    with pytest.raises(type(raised)), audited(config, "cancel", Change(id="j")):
        raise raised
    (line,) = read_audit(spool)
    assert (line["route"], line["id"], line["status"], line["outcome"]) == ("spoolbatch cancel", "j", status, outcome)
