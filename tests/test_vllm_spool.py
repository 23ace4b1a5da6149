"""The real vLLM engine through the spool, as users run it: CLI subprocesses, kill -9, two daemons.

Everything here starts real ``spoolbatch run --engine vllm`` processes on the tiny random
Llama (tests/tiny_model.py), whose folder is the ``model`` of every job line. Engine starts
cost seconds each on our 2-core machines, so the CLI run is shared by two tests (a module
fixture) and jobs are small. To make a chunk of the tiny model last long enough to be
killed inside, ``SPOOLBATCH_MAX_NUM_SEQS`` keeps few sequences in flight and the end token
is banned (``logit_bias``), so every request generates its full ``max_tokens``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool

from .conftest import REPO, assert_exactly_once, chat_line, drop, job_events, orphans, read_jsonl, wait_for, write_jsonl

pytestmark = pytest.mark.vllm

CHAT_MAX_TOKENS = 12
TEXT_MAX_TOKENS = 8
QUESTIONS = ["hello there", "what is json", "name three colours", "why is the sky blue", "count to five",
             "tell me a joke"]
PROMPTS = ["The quick brown", "Once upon a time", "def main():", "0123456789"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m spoolbatch ARGS`` as a user types it; fail with its stderr on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "spoolbatch", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    assert proc.returncode == 0, f"spoolbatch {' '.join(args)} -> {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def no_eos(model_dir: Path) -> dict[str, float]:
    """A logit_bias banning the tiny model's end token, so each answer runs to max_tokens."""
    return {str(json.loads((model_dir / "config.json").read_text())["eos_token_id"]): -100}


def read_beat(spool: Spool) -> dict[str, Any]:
    """The spool's latest heartbeat, or {} before the first one."""
    try:
        return dict(orjson.loads(spool.heartbeat.read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


def chunk_workers(spool: Spool, job: str) -> list[str]:
    """The worker that answered each merged chunk of the job, in chunk order."""
    return [e["worker"] for e in job_events(spool, job, "chunk_merged")]


class Daemons:
    """``spoolbatch run --engine vllm`` subprocesses on one spool; stderr kept in files; killed at teardown."""

    def __init__(self, spool: Spool, logs: Path) -> None:
        self.spool = spool
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one daemon (no settle wait, fast heartbeat)."""
        log = open(self.logs / f"daemon-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        cmd = [sys.executable, "-m", "spoolbatch", "run", "--spool", str(self.spool.root), "--engine", "vllm",
               "--settle-seconds", "0", "--poll-interval", "0.2", "--heartbeat-interval", "0.2", "-q", *args]
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
        log.close()
        self.procs.append(proc)
        return proc

    def stderr(self, proc: subprocess.Popen[bytes]) -> str:
        """The tail of what ``proc`` wrote."""
        return (self.logs / f"daemon-{self.procs.index(proc)}.log").read_text(errors="replace")[-3000:]

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for ``proc`` to exit; fail the test with its output if it does not."""
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout}s\n{self.stderr(proc)}") from None

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def daemons(spool: Spool, tmp_path: Path) -> Iterator[Daemons]:
    """Start real-engine daemons on ``spool``; every one still running is killed at teardown."""
    d = Daemons(spool, tmp_path)
    yield d
    d.close()


# --- (a) and (b): the CLI as a user runs it, and the same answers from vllm.LLM directly -----------

@dataclass
class CliRun:
    """A spool that `submit` + `run --once --engine vllm` went through, and what `results` printed."""

    spool: Path
    model: str
    chat_job: str
    text_job: str
    chat: list[dict[str, Any]]  # `results CHAT_JOB` lines
    text: list[dict[str, Any]]
    errors: list[dict[str, Any]]  # `results CHAT_JOB --errors` lines
    status: dict[str, Any]


@pytest.fixture(scope="module")
def cli_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """Submit a chat job (with one over-long prompt) and a completions job, drain with `run --once`."""
    base = tmp_path_factory.mktemp("cli")
    root, model = base / "spool", str(tiny_model_dir)
    cli("init", "--spool", str(root))
    chat = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": q}],
                      "max_tokens": CHAT_MAX_TOKENS, "temperature": 0}} for i, q in enumerate(QUESTIONS)]
    chat.insert(3, {"custom_id": "too-long", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": "word " * 400}],
                             "max_tokens": 4}})
    text = [{"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": model, "prompt": p, "max_tokens": TEXT_MAX_TOKENS, "temperature": 0}}
            for i, p in enumerate(PROMPTS)]
    jobs = []
    for name, records in (("questions", chat), ("prompts", text)):
        out = cli("submit", str(write_jsonl(base / f"{name}.jsonl", records)), "--spool", str(root), "--json")
        jobs.append(json.loads(out.stdout)["jobs"][0])
    # the tiny model's own context, set the way an operator would
    cli("run", "--once", "--engine", "vllm", "--spool", str(root), "--settle-seconds", "0", "-q",
        env={"SPOOLBATCH_MAX_MODEL_LEN": "128"}, timeout=540)

    def lines(*args: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in cli(*args, "--spool", str(root)).stdout.splitlines() if line.strip()]

    status = json.loads(cli("status", "--json", "--spool", str(root)).stdout)
    return CliRun(root, model, jobs[0], jobs[1], lines("results", jobs[0]), lines("results", jobs[1]),
                  lines("results", jobs[0], "--errors"), status)


def test_cli_submit_run_results_parse_as_openai(cli_run: CliRun) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    assert [r["custom_id"] for r in cli_run.chat] == [f"q{i}" for i in range(len(QUESTIONS))]
    for line in cli_run.chat:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.model == cli_run.model and body.usage is not None and body.usage.completion_tokens > 0
    assert [r["custom_id"] for r in cli_run.text] == [f"p{i}" for i in range(len(PROMPTS))]
    for line in cli_run.text:
        body_t = Completion.model_validate(line["response"]["body"])
        assert body_t.usage is not None and 0 < body_t.usage.completion_tokens <= TEXT_MAX_TOKENS
    (error,) = cli_run.errors
    assert error["custom_id"] == "too-long" and error["response"] is None
    assert error["error"]["code"] == "context_length_exceeded" and "line 4" in error["error"]["message"]
    spool = Spool(cli_run.spool)
    for job, answered in ((cli_run.chat_job, cli_run.chat), (cli_run.text_job, cli_run.text)):
        ckpt = Checkpoint.load(spool.checkpoint(job))
        assert ckpt is not None and ckpt.status == "completed" and ckpt.model == cli_run.model
        assert ckpt.prompt_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in answered)
        assert ckpt.completion_tokens == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in answered)
    # `status --json` reads the same facts: both jobs completed, nothing else on the spool
    assert {j["job"]: j["status"] for j in cli_run.status["jobs"]} == {cli_run.chat_job: "completed",
                                                                      cli_run.text_job: "completed"}
    assert cli_run.status["queue"] == {"jobs": 0, "by_status": {"completed": 2}}


DIRECT = """
import json, sys
from spoolbatch.engines.cpu_env import cpu_dtype, cuda_available, init_amx, prepare_cpu_env
cpu = not cuda_available()
if cpu:
    prepare_cpu_env(1)
    init_amx()
from vllm import LLM, SamplingParams
spec = json.load(sys.stdin)
llm = LLM(model=spec["model"], dtype=cpu_dtype("auto") if cpu else "auto", seed=0, enforce_eager=True,
          **({"distributed_executor_backend": "uni"} if cpu else {}))
chat = llm.chat(spec["chat"], SamplingParams(temperature=0, max_tokens=spec["chat_max_tokens"]), use_tqdm=False)
text = llm.generate(spec["prompts"], SamplingParams(temperature=0, max_tokens=spec["text_max_tokens"]),
                    use_tqdm=False)
out = {kind: [{"text": o.outputs[0].text, "prompt_tokens": len(o.prompt_token_ids)} for o in outs]
       for kind, outs in (("chat", chat), ("text", text))}
print("DIRECT " + json.dumps(out), flush=True)
"""


def test_greedy_output_equals_vllm_llm_called_directly(cli_run: CliRun) -> None:
    """The same requests, batched the same way, given to ``vllm.LLM`` in a process of its own."""
    spec = {"model": cli_run.model, "chat": [[{"role": "user", "content": q}] for q in QUESTIONS],
            "prompts": PROMPTS, "chat_max_tokens": CHAT_MAX_TOKENS, "text_max_tokens": TEXT_MAX_TOKENS}
    proc = subprocess.run([sys.executable, "-c", DIRECT], cwd=REPO, input=json.dumps(spec), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    direct = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("DIRECT "))[7:])
    ours = [r["response"]["body"] for r in cli_run.chat]
    assert [b["choices"][0]["message"]["content"] for b in ours] == [d["text"] for d in direct["chat"]]
    assert [b["usage"]["prompt_tokens"] for b in ours] == [d["prompt_tokens"] for d in direct["chat"]]
    ours_t = [r["response"]["body"] for r in cli_run.text]
    assert [b["choices"][0]["text"] for b in ours_t] == [d["text"] for d in direct["text"]]
    assert [b["usage"]["prompt_tokens"] for b in ours_t] == [d["prompt_tokens"] for d in direct["text"]]


# --- (c) kill -9 while the real engine is inside a chunk -----------------------------------------

SLOW = {"SPOOLBATCH_MAX_NUM_SEQS": "8"}  # few sequences in flight: a chunk of the tiny model lasts a while


def test_kill_9_mid_chunk_then_restart_is_exactly_once(spool: Spool, daemons: Daemons, tiny_model_dir: Path) -> None:
    model, job, size, total, tokens = str(tiny_model_dir), "killed", 50, 200, 16
    records = [chat_line(i, model=model, max_tokens=tokens, temperature=0, logit_bias=no_eos(tiny_model_dir))
               for i in range(total)]
    drop(spool, f"{job}.jsonl", records)
    # On an idle machine a warm daemon answers a chunk of the tiny model in about 0.2 s: with a hold of
    # 0.2 s below, the job ended before any later chunk qualified and the test waited out its 400 s.
    # One sequence at a time and a hold of 0.05 s; should the job end first anyway, say so at once.
    proc = daemons.start("--chunk-size", str(size), env={**SLOW, "SPOOLBATCH_MAX_NUM_SEQS": "1"})
    seen: dict[int, float] = {}

    def inside_a_later_chunk() -> dict[str, Any] | None:
        """The heartbeat, once it has shown the same uncommitted chunk (past the first) for 0.05 s."""
        assert proc.poll() is None, f"daemon exited early ({proc.returncode})\n{daemons.stderr(proc)}"
        ckpt = Checkpoint.load(spool.checkpoint(job))
        beat = read_beat(spool)
        lines = beat.get("chunk_lines")
        assert ckpt is None or ckpt.status == "running", f"the job ended before a later chunk was seen: {ckpt}"
        if ckpt is None or ckpt.lines_consumed < size or beat.get("state") != "working" or beat.get("job") != job \
                or not lines or lines[0] <= ckpt.lines_consumed:
            return None
        first = seen.setdefault(int(beat["chunk"]), time.monotonic())
        return beat if time.monotonic() - first >= 0.05 else None

    beat = wait_for(inside_a_later_chunk, timeout=400, interval=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    index, (first_line, last_line) = int(beat["chunk"]) - 1, beat["chunk_lines"]
    ckpt = Checkpoint.load(spool.checkpoint(job))
    assert ckpt is not None and ckpt.status == "running"
    assert ckpt.lines_consumed >= size, (ckpt.lines_consumed, beat)
    # Chunks last seconds here, so the kill lands inside one; should a fast machine commit it
    # first anyway, exactly-once must still hold (and the restart continues instead of resuming).
    orphaned = orphans(spool, job)
    mid_chunk = index + 1 in orphaned
    if mid_chunk:
        assert ckpt.lines_consumed < first_line, (ckpt.lines_consumed, beat)
    assert read_jsonl(spool.results(job))  # earlier chunks are there, every line whole

    again = daemons.start("--once", "--chunk-size", str(size), env=SLOW)
    assert daemons.wait(again, timeout=500) == 0, daemons.stderr(again)
    assert assert_exactly_once(spool, job, {f"req-{i}" for i in range(total)}) == (total, 0)
    from openai.types.chat import ChatCompletion

    for line in read_jsonl(spool.results(job)):
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.usage is not None and body.usage.completion_tokens == tokens  # the end token was banned
    ckpt = Checkpoint.load(spool.checkpoint(job))
    assert ckpt is not None and ckpt.completion_tokens == total * tokens
    assert last_line == first_line + size - 1
    # Each chunk the kill left is taken over once; a restart with none to take over continues.
    resumed = {e["chunk"]: e["first_line"] for e in job_events(spool, job, "resumed")}
    assert sorted(resumed) == sorted(orphaned) and ckpt.resumes == len(orphaned)
    if mid_chunk:
        assert resumed[index + 1] == first_line
    assert len(job_events(spool, job, "continued")) == (0 if orphaned else 1)


# --- (d) two real-engine daemons sharing one job --------------------------------------------------

def test_two_vllm_daemons_share_one_job_exactly_once(spool: Spool, daemons: Daemons, tiny_model_dir: Path) -> None:
    model, job, total = str(tiny_model_dir), "shared", 300
    drop(spool, f"{job}.jsonl", [chat_line(i, model=model, max_tokens=16, temperature=0,
                                           logit_bias=no_eos(tiny_model_dir)) for i in range(total)])
    # Each claims a chunk before its engine loads (seconds), so both take part.
    procs = [daemons.start("--once", "--chunk-size", "25") for _ in range(2)]
    for proc in procs:
        assert daemons.wait(proc, timeout=500) == 0, daemons.stderr(proc)
    assert assert_exactly_once(spool, job, {f"req-{i}" for i in range(total)}) == (total, 0)
    ckpt = Checkpoint.load(spool.checkpoint(job))
    assert ckpt is not None and ckpt.chunks == total // 25 and ckpt.completion_tokens == total * 16
    workers = chunk_workers(spool, job)
    assert len(workers) == total // 25
    host = socket.gethostname()
    assert set(workers) == {f"{host}-{proc.pid}" for proc in procs}, workers
