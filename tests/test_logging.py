"""Python's logging reaches the daemon's log and the server's, with a level and a time; libraries quiet by default.

The daemons and servers here are real `spoolbatch run` and `spoolbatch serve` processes. To
make a library log during a run, a small wrapper starts the same CLI with the fake engine's
``load`` doing what vLLM's code does: calling ``logging.getLogger("vllm...")``; the server gets
one extra route that fails as a bug would.
The real engine's own warnings are checked on the tiny model at the end.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from spoolbatch import logsetup
from spoolbatch.logsetup import LogHandler, Route
from spoolbatch.store.spool import Spool

from .conftest import REPO, chat_line, drop

LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")

RUN = '''
import logging, sys, warnings
from spoolbatch.engines.fake import FakeEngine

_load = FakeEngine.load


def load(self, model):
    logging.getLogger("vllm.platforms.cpu").warning("pin memory is not available (test %d)", 1)
    logging.getLogger("vllm.engine").info("vllm chatter at info")
    logging.getLogger("spoolbatch.engines.test").info("ours at info")
    logging.getLogger("spoolbatch.engines.test").debug("ours at debug")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("ray.test").exception("ray replica failed")
    warnings.warn("a library's deprecation", FutureWarning, stacklevel=1)
    return _load(self, model)


FakeEngine.load = load
from spoolbatch.cli import main

sys.argv = ["spoolbatch", *sys.argv[1:]]
main()
'''


def _run(spool: Spool, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         stderr_file: Path | None = None) -> tuple[str, str]:
    """A fake-engine `spoolbatch run --once` whose engine load logs as a library: (stdout, stderr)."""
    drop(spool, "job.jsonl", [chat_line(i) for i in range(5)])
    script = tmp_path / "run_logging.py"
    script.write_text(RUN)
    cmd = [sys.executable, str(script), "run", "--once", "--engine", "fake", "--settle-seconds", "0",
           "--spool", str(spool.root), *args]
    environ = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "VLLM_CONFIGURE_LOGGING")}
    if stderr_file is None:
        done = subprocess.run(cmd, cwd=REPO, env={**environ, **(env or {})}, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    with open(stderr_file, "ab") as err:
        env = {**(env or {}), "JOURNAL_STREAM": f"{os.fstat(err.fileno()).st_dev}:{os.fstat(err.fileno()).st_ino}"}
        done = subprocess.run(cmd, cwd=REPO, env={**environ, **env}, stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=120, check=False)
    assert done.returncode == 0, stderr_file.read_text()
    return done.stdout, stderr_file.read_text()


def _records(path: Path) -> list[dict[str, str]]:
    """The daemon log's logging lines (not its own free text), each with the lines that follow it (a traceback)."""
    records: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m and m["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            records.append({**m.groupdict(), "more": ""})
        elif records and not re.match(r"^\d{4}-\d\d-\d\dT", line):
            records[-1]["more"] += line + "\n"
    return records


def _find(records: list[dict[str, str]], logger: str, message: str) -> dict[str, str] | None:
    return next((r for r in records if r["logger"] == logger and message in r["message"]), None)


def test_a_vllm_warning_during_a_run_is_in_the_daemon_log_with_its_level_and_time(spool: Spool,
                                                                                  tmp_path: Path) -> None:
    stdout, stderr = _run(spool, tmp_path)
    records = _records(spool.daemon_log())
    warning = _find(records, "vllm.platforms.cpu", "pin memory is not available (test 1)")
    assert warning is not None and warning["level"] == "WARNING", records
    assert "daemon started" in spool.daemon_log().read_text(), "the daemon's own lines are still there"
    ours = _find(records, "spoolbatch.engines.test", "ours at info")
    assert ours is not None and ours["level"] == "INFO"
    failed = _find(records, "ray.test", "ray replica failed")
    assert failed is not None and failed["level"] == "ERROR"
    assert "Traceback (most recent call last)" in failed["more"] and "ValueError: boom" in failed["more"]
    deprecation = _find(records, "py.warnings", "FutureWarning: a library's deprecation")
    assert deprecation is not None and deprecation["level"] == "WARNING"
    assert _find(records, "vllm.engine", "vllm chatter") is None, "vLLM's INFO stays out by default"
    assert _find(records, "spoolbatch.engines.test", "ours at debug") is None
    # Not a terminal: the plain lines on stderr carry them too, beside the daemon's own.
    assert re.search(r"^spoolbatch\[\d+\] daemon: WARNING vllm\.platforms\.cpu: pin memory", stderr, re.MULTILINE)
    assert "vllm chatter" not in stderr and stdout == ""


def test_verbose_lets_library_info_and_our_debug_through(spool: Spool, tmp_path: Path) -> None:
    _run(spool, tmp_path, "--verbose")
    records = _records(spool.daemon_log())
    chatter = _find(records, "vllm.engine", "vllm chatter at info")
    assert chatter is not None and chatter["level"] == "INFO"
    debug = _find(records, "spoolbatch.engines.test", "ours at debug")
    assert debug is not None and debug["level"] == "DEBUG"


def test_quiet_keeps_them_in_the_log_and_off_stderr(spool: Spool, tmp_path: Path) -> None:
    _, stderr = _run(spool, tmp_path, "-q")
    assert _find(_records(spool.daemon_log()), "vllm.platforms.cpu", "pin memory") is not None
    assert "pin memory" not in stderr and "ray replica failed" not in stderr


def test_in_the_journal_every_line_carries_its_priority(spool: Spool, tmp_path: Path) -> None:
    """Under systemd stderr is the journal: '<4>' marks a warning, '<3>' an error, on each line of a traceback."""
    _, stderr = _run(spool, tmp_path, "-q", stderr_file=tmp_path / "journal")
    lines = stderr.splitlines()
    assert any(re.match(r"^<4>spoolbatch\[\d+\] daemon: WARNING vllm\.platforms\.cpu: pin memory", line)
               for line in lines), stderr
    error = [line for line in lines if "ray replica failed" in line or line.startswith("<3>")]
    assert error and all(line.startswith("<3>") for line in error)
    assert any(line.startswith("<3>") and "ValueError: boom" in line for line in lines)
    assert any(line.startswith("<4>") and "FutureWarning" in line for line in lines)
    assert not spool.daemon_log().exists() or "pin memory" not in spool.daemon_log().read_text(), \
        "the journal has them; no second copy in a file"


def test_a_journal_stream_inherited_with_stderr_elsewhere_is_not_the_journal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not logsetup.stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logsetup.stderr_is_journal()


def test_a_route_puts_back_what_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    root, vllm, ray = logging.getLogger(), logging.getLogger("vllm"), logging.getLogger("ray")
    own = logging.StreamHandler()  # Ray's kind of set-up: a handler of its own, records kept from the root
    ray.addHandler(own)
    ray.propagate = False
    before = (list(root.handlers), root.level, vllm.level, ray.level, warnings.showwarning)
    try:
        with Route(LogHandler(tmp_path / "daemon.log", stderr=False), verbose=0) as route:
            assert os.environ["VLLM_CONFIGURE_LOGGING"] == "0"
            assert route.handler in root.handlers and vllm.level == logging.WARNING
            assert ray.propagate and own not in ray.handlers, "adopted"
            logging.getLogger("ray.test").warning("through the route")
            logging.getLogger("vllm.x").info("dropped")
        assert "WARNING ray.test: through the route" in (tmp_path / "daemon.log").read_text()
        assert "dropped" not in (tmp_path / "daemon.log").read_text()
        assert (list(root.handlers), root.level, vllm.level, ray.level, warnings.showwarning) == before
        assert own in ray.handlers and not ray.propagate
        assert "VLLM_CONFIGURE_LOGGING" not in os.environ
    finally:
        ray.removeHandler(own)
        ray.propagate = True


def test_ray_which_sets_up_its_own_logging_on_import_is_brought_back(tmp_path: Path) -> None:
    """Ray gives its logger a stderr handler of its own and stops it propagating when it is imported;
    ``adopt`` (which `run` calls on every heartbeat) routes it again, and leaving puts Ray's back."""
    pytest.importorskip("ray")
    log = tmp_path / "daemon.log"
    script = (
        "import logging\n"
        "from pathlib import Path\n"
        "from spoolbatch.logsetup import LogHandler, Route\n"
        f"with Route(LogHandler(Path({str(log)!r}), stderr=False)) as route:\n"
        "    import ray\n"
        "    route.adopt()\n"
        "    logging.getLogger('ray.util').warning('ray warns')\n"
        "    logging.getLogger('ray.util').info('ray chatter')\n"
        "r = logging.getLogger('ray')\n"
        "print(len(r.handlers), r.propagate)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    records = _records(log)
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [("WARNING", "ray.util", "ray warns")]
    assert done.stdout.split() == ["1", "False"], "Ray's own handler is back after the route"


def test_a_failing_log_file_never_fails_the_caller(tmp_path: Path) -> None:
    handler = LogHandler(tmp_path / "gone" / "daemon.log", stderr=False)  # its folder does not exist
    with Route(handler):
        logging.getLogger("vllm.x").warning("nowhere to go")  # no exception, nothing raised to the caller


SERVE = '''
import sys
from spoolbatch.server import app

_create_app = app.create_app


def create_app(config):
    api = _create_app(config)

    @api.get("/v1/boom")
    def boom():
        raise RuntimeError("disk on fire (from the test)")

    return api


app.create_app = create_app
from spoolbatch.cli import main

sys.argv = ["spoolbatch", *sys.argv[1:]]
main()
'''


@pytest.mark.parametrize("verbose", [False, True])
def test_a_500_logs_its_traceback_on_the_servers_stderr_never_to_the_client(spool: Spool, tmp_path: Path,
                                                                            verbose: bool) -> None:
    import openai

    from .serving import Server, free_port

    script = tmp_path / "serve_logging.py"
    script.write_text(SERVE)
    port = free_port()
    cmd = [sys.executable, str(script), "serve", "--spool", str(spool.root), "--port", str(port),
           *(["--verbose"] if verbose else [])]
    environ = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    server = Server(subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                    f"http://127.0.0.1:{port}")
    try:
        server.wait_up()
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.get("/boom", cast_to=object)
        body = caught.value.response.text
        assert "Traceback" not in body and "disk on fire" not in body and "server_error" in body
        server.proc.terminate()
        stderr = server.proc.communicate(timeout=30)[1].decode()
    finally:
        server.stop()
    lines = stderr.splitlines()
    head = next(i for i, line in enumerate(lines) if "Exception in ASGI application" in line)
    m = LINE.match(lines[head])
    assert m and m["level"] == "ERROR" and m["logger"] == "uvicorn.error", stderr
    assert "Traceback (most recent call last)" in "\n".join(lines[head:])
    assert "RuntimeError: disk on fire (from the test)" in "\n".join(lines[head:])
    assert re.search(r"^\S+ ERROR spoolbatch\.\S+: .*/v1/boom", stderr, re.MULTILINE), "the error handler's line"
    access = re.search(r"^\S+ INFO uvicorn\.access: .*GET /v1/boom HTTP/1\.1\" 500", stderr, re.MULTILINE)
    assert bool(access) == verbose, "uvicorn's access lines only with --verbose"


@pytest.mark.vllm
@pytest.mark.slow
def test_the_real_engines_warnings_reach_the_daemon_log_and_its_info_stays_out(spool: Spool,
                                                                                tiny_model_dir: Path) -> None:
    """vLLM logs a dozen warnings while it starts on the CPU; before, they went to stdout with its INFO lines."""
    drop(spool, "real.jsonl", [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                "body": {"model": str(tiny_model_dir), "prompt": "hello", "max_tokens": 4}}
                               for i in range(3)])
    environ = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "VLLM_CONFIGURE_LOGGING")}
    done = subprocess.run([sys.executable, "-m", "spoolbatch", "run", "--once", "--engine", "vllm", "-q",
                           "--settle-seconds", "0", "--spool", str(spool.root)], cwd=REPO,
                          env={**environ, "SPOOLBATCH_MAX_MODEL_LEN": "128"}, capture_output=True, text=True,
                          timeout=540, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(spool.daemon_log())
    vllm = [r for r in records if r["logger"].startswith("vllm.")]
    assert vllm and {r["level"] for r in vllm} == {"WARNING"}, vllm
    loaded = _find(records, "spoolbatch.engines.vllm_engine", "loaded")
    assert loaded is not None and loaded["level"] == "INFO", "ours at INFO"
    assert done.stdout == "", "nothing of vLLM's on stdout"
