"""LoRA adapters on the real engine (vLLM's CPU build) with the tiny model and adapters written at test time.

Proof that each line ran with its own adapter: its greedy answer equals the answer of a model
whose weights were merged with that adapter (``tests/tiny_lora.py``), and adapters answer
differently from the base. Everything runs in float32: a bf16 merge rounds the weights and a
near tie of the random model's logits can flip one token.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spoolbatch.config import AdapterSource, Config, EngineSettings
from spoolbatch.format.endpoints import CHAT, COMPLETIONS
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import parse_spec
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import REPO, SharedEngine, assert_exactly_once, drop, read_jsonl, wait_for
from .tiny_lora import EVERY_LINEAR, merge_adapter, write_adapter

pytestmark = pytest.mark.vllm

PROMPTS = ["The quick brown fox", "request batch job", "model engine answer", "open close start stop",
           "the first worker", "a small red dog"]
ADAPTERS = ("sql", "chat")
WIDE = {"wide-8": 8, "wide-4": 4}  # adapters of every linear layer: name -> rank
MODELS = ("base", *ADAPTERS)
TOKENS = 8


@dataclass
class Lora:
    """The tiny model, two adapters of it and a broken one in one folder, and each model's greedy answers."""

    model: str
    folder: Path
    reference: dict[str, list[str]]  # "base" or an adapter -> its greedy answer to each prompt

    def settings(self) -> EngineSettings:
        return EngineSettings(dtype="float32", adapters=(AdapterSource(str(self.folder), self.model),))


def body(model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0}


def completion(custom_id: str, model: str, prompt: str, line: int = 1) -> Request:
    b = body(model, prompt)
    return Request(custom_id, line, COMPLETIONS, b, parse_spec(COMPLETIONS, b))


def text(outcome: Outcome) -> str:
    assert not outcome.failed, (outcome.error_code, outcome.error_message)
    assert outcome.body is not None
    return str(outcome.body["choices"][0]["text"])


def greedy(path: str, prompts: list[str]) -> list[str]:
    """The greedy answers to ``prompts`` of the model at ``path`` (float32), on an engine without LoRA."""
    from spoolbatch.engines.vllm_engine import VllmEngine

    engine = VllmEngine(EngineSettings(dtype="float32"))
    engine.load(path)
    try:
        return [text(o) for o in engine.run([completion(str(i), path, p) for i, p in enumerate(prompts)])]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Lora:
    root = tmp_path_factory.mktemp("lora")
    folder = root / "adapters"
    reference = {"base": greedy(str(tiny_model_dir), PROMPTS)}
    for seed, name in enumerate(ADAPTERS, start=1):
        adapter = write_adapter(tiny_model_dir, folder / name, seed=seed)
        reference[name] = greedy(str(merge_adapter(tiny_model_dir, adapter, root / f"merged-{name}")), PROMPTS)
    # Adapters of every linear layer, of two ranks (vLLM pads the smaller to max_lora_rank). Their references
    # are taken here, before the module's engine starts: closing an engine tears down vLLM's process-wide
    # parallel groups, which a LoRA engine still running in the process needs.
    for seed, (name, rank) in enumerate(WIDE.items(), start=3):
        adapter = write_adapter(tiny_model_dir, folder / name, seed=seed, rank=rank, alpha=2 * rank, scale=0.2,
                                targets=EVERY_LINEAR)
        reference[name] = greedy(str(merge_adapter(tiny_model_dir, adapter, root / f"merged-{name}")), PROMPTS)
    broken = folder / "broken"  # a PEFT config that reads, weights that do not: vLLM itself refuses it
    write_adapter(tiny_model_dir, broken, seed=9)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    return Lora(str(tiny_model_dir), folder, reference)


@pytest.fixture(scope="module")
def engine(lora: Lora) -> Iterator[Any]:
    from spoolbatch.engines.vllm_engine import VllmEngine

    engine = VllmEngine(lora.settings())
    engine.load(lora.model)
    yield engine
    engine.close()


def test_the_grouped_cpu_ops_compute_vllms_sums_and_leave_rows_without_an_adapter_alone() -> None:
    """engines/cpu_lora.py against a fresh copy of vLLM's own CPU ops: the same sums for rows with an
    adapter, and rows with index -1 untouched (vLLM's give them the last slot's delta)."""
    import importlib.util

    import torch

    from spoolbatch.engines import cpu_lora

    spec = importlib.util.find_spec("vllm.lora.ops.torch_ops.lora_ops")
    assert spec is not None and spec.loader is not None
    vllm_ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vllm_ops)  # vLLM's, whatever an engine started in this process installed
    assert cpu_lora._writes_row_without_adapter(vllm_ops.bgmv_shrink)  # the bug the module is there for
    assert not cpu_lora._writes_row_without_adapter(cpu_lora.bgmv_shrink)
    gen = torch.Generator().manual_seed(0)
    rows, hidden, rank, out, slots = 40, 64, 8, 48, 3
    x = torch.randn(rows, hidden, generator=gen)
    lora_a = torch.randn(slots, 1, rank, hidden, generator=gen)
    lora_b = torch.randn(slots, 1, out, rank, generator=gen)
    mixed = torch.randint(0, slots, (rows,), generator=gen)
    # rows of several adapters in any order (gathered), in runs (slices), one adapter for every row
    for indices in (mixed, torch.sort(mixed).values, torch.full((rows,), 1)):
        ours, theirs = torch.zeros(rows, rank), torch.zeros(rows, rank)
        cpu_lora.bgmv_shrink(x, lora_a, ours, indices, 0.5)
        vllm_ops.bgmv_shrink(x, lora_a, theirs, indices, 0.5)
        torch.testing.assert_close(ours, theirs)
        for add in (True, False):
            start = torch.randn(rows, out + 16, generator=gen)
            ours_e, theirs_e = start.clone(), start.clone()
            cpu_lora._grouped_expand(vllm_ops.bgmv_expand)(theirs[:, :rank], lora_b, ours_e, indices, add)
            vllm_ops.bgmv_expand(theirs[:, :rank], lora_b, theirs_e, indices, add)
            torch.testing.assert_close(ours_e, theirs_e)
            ours_s, theirs_s = start.clone(), start.clone()
            cpu_lora.bgmv_expand_slice(theirs[:, :rank], lora_b, ours_s, indices, 8, out, add)
            vllm_ops.bgmv_expand_slice(theirs[:, :rank], lora_b, theirs_s, indices, 8, out, add)
            torch.testing.assert_close(ours_s, theirs_s)
    # a slot whose weights are zero (a module the adapter does not touch): zeros, and nothing added
    zero_a, zero_b = lora_a.clone(), lora_b.clone()
    zero_a[2], zero_b[2] = 0, 0
    buffer = torch.full((rows, rank), 7.0)
    cpu_lora.bgmv_shrink(x, zero_a, buffer, torch.full((rows,), 2), 1.0)
    assert not buffer.any()
    before = torch.randn(rows, out, generator=gen)
    after = before.clone()
    cpu_lora.bgmv_expand_slice(x[:, :rank], zero_b, after, torch.full((rows,), 2), 0, out, True)
    torch.testing.assert_close(after, before)
    # bf16 (the CPU engine's dtype): the shrink is taken in bf16, within bf16's rounding of vLLM's
    bf_x, bf_a = x.to(torch.bfloat16), lora_a.to(torch.bfloat16)
    ours, theirs = torch.zeros(rows, rank), torch.zeros(rows, rank)
    cpu_lora.bgmv_shrink(bf_x, bf_a, ours, mixed, 0.5)
    vllm_ops.bgmv_shrink(bf_x, bf_a, theirs, mixed, 0.5)
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=5e-2)
    for some in (mixed, torch.sort(mixed).values):
        without = some.clone()
        without[::4] = -1  # base-model rows in the batch
        without[:6] = -1  # and a run of them
        before = torch.randn(rows, out, generator=gen)
        after = before.clone()
        cpu_lora.bgmv_expand_slice(x[:, :rank], lora_b, after, without, 0, out, True)
        base = without < 0
        torch.testing.assert_close(after[base], before[base])
        expected = before.clone()
        vllm_ops.bgmv_expand_slice(x[:, :rank], lora_b, expected, some, 0, out, True)
        torch.testing.assert_close(after[~base], expected[~base])


def test_adapters_differ_from_the_base_model(lora: Lora) -> None:
    for name in ADAPTERS:
        assert sum(a != b for a, b in zip(lora.reference[name], lora.reference["base"], strict=True)) >= 3, name
    assert lora.reference["sql"] != lora.reference["chat"]


def test_one_engine_answers_base_and_adapter_lines_each_with_its_own_weights(lora: Lora, engine: Any) -> None:
    assert engine.starts == 1 and engine._loras.active is None  # loaded without LoRA
    requests = [completion(f"{m}-{i}", lora.model if m == "base" else m, p) for i, p in enumerate(PROMPTS)
                for m in MODELS]
    requests.insert(4, completion("broken-0", "broken", PROMPTS[0]))
    outcomes = engine.run(requests)
    for request, outcome in zip(requests, outcomes, strict=True):
        if request.spec.model == "broken":
            assert outcome.error_code == "adapter_not_available", outcome
            assert "'broken' could not be loaded" in str(outcome.error_message)
            continue
        name = "base" if request.spec.model == lora.model else request.spec.model
        assert outcome.body is not None and outcome.body["model"] == request.spec.model
        assert outcome.body["usage"]["prompt_tokens"] > 0 and outcome.body["usage"]["completion_tokens"] > 0
        expected = lora.reference[name][PROMPTS.index(request.spec.prompt)]
        assert text(outcome) == expected, (request.custom_id, name)
    # LoRA was turned on once, with both adapters loaded under their own ids; the next chunk reuses them
    assert engine.starts == 2 and engine._loras.active is not None
    assert engine._loras.active.max_lora_rank == 16 and engine._loras.active.max_loras >= 2  # vLLM's 16 fits rank 8
    assert len(engine._llm.llm_engine.list_loras()) == 2
    again = engine.run([completion("again", "chat", PROMPTS[1])])
    assert text(again[0]) == lora.reference["chat"][1] and engine.starts == 2


def test_adapters_of_every_linear_layer_each_answer_as_their_merged_model(lora: Lora, engine: Any) -> None:
    """Adapters on q, k, v, o and the MLP's gate, up and down, of ranks 8 and 4: every LoRA path of the engine
    (merged q/k/v and gate/up, the row-parallel o and down, a padded rank), in one batch with base lines, each
    line's greedy answer that of its merged model (the other adapters here touch q_proj and v_proj only)."""
    for name in WIDE:
        assert sum(a != b for a, b in zip(lora.reference[name], lora.reference["base"], strict=True)) >= 3, name
    requests = [completion(f"{m}-{i}", lora.model if m == "base" else m, p) for i, p in enumerate(PROMPTS)
                for m in ("base", *WIDE)]
    for request, outcome in zip(requests, engine.run(requests), strict=True):
        name = request.custom_id.rsplit("-", 1)[0]
        assert text(outcome) == lora.reference[name][PROMPTS.index(request.spec.prompt)], request.custom_id


def job_lines(lora: Lora) -> tuple[list[dict[str, Any]], dict[str, tuple[str, int]]]:
    """Base and both adapters interleaved, an unknown adapter and the broken one; custom_id -> (model, prompt)."""
    records, expect = [], {}
    for i, prompt in enumerate(PROMPTS * 2):
        for name in MODELS:
            cid = f"{name}-{i}"
            model = lora.model if name == "base" else name
            records.append({"custom_id": cid, "method": "POST", "url": COMPLETIONS, "body": body(model, prompt)})
            expect[cid] = (name, PROMPTS.index(prompt))
    records.insert(5, {"custom_id": "typo", "method": "POST", "url": COMPLETIONS, "body": body("sqll", "x")})
    records.insert(9, {"custom_id": "broken", "method": "POST", "url": COMPLETIONS, "body": body("broken", "x")})
    return records, expect


def check_results(spool: Spool, job: str, lora: Lora, expect: dict[str, tuple[str, int]]) -> None:
    assert assert_exactly_once(spool, job, {*expect, "typo", "broken"}) == (len(expect), 2)
    dead = {d["custom_id"]: d["error"]["code"] for d in read_jsonl(spool.deadletter_file(job))}
    assert dead == {"typo": "model_not_found", "broken": "adapter_not_available"}
    for line in read_jsonl(spool.results(job)):
        name, prompt = expect[line["custom_id"]]
        answer = line["response"]["body"]
        assert answer["model"] == (lora.model if name == "base" else name)
        assert answer["usage"]["completion_tokens"] > 0
        assert answer["choices"][0]["text"] == lora.reference[name][prompt], line["custom_id"]


def test_a_mixed_job_through_the_spool(lora: Lora, engine: Any, spool: Spool, config: Config) -> None:
    records, expect = job_lines(lora)
    drop(spool, "mixed.jsonl", records)
    cfg = config.replace(engine="vllm", chunk_size=16, adapters=(AdapterSource(str(lora.folder), lora.model),))
    daemon = Daemon(cfg, engine_factory=lambda: SharedEngine(engine), echo=False)
    while daemon.loop_once().worked:
        pass
    check_results(spool, "mixed", lora, expect)
    ckpt = Checkpoint.load(spool.checkpoint("mixed"))
    assert ckpt is not None and ckpt.model == lora.model and ckpt.chunks == 3


@pytest.mark.slow
def test_kill_9_mid_job_with_adapters_resumes_exactly_once(lora: Lora, spool: Spool, tmp_path: Path) -> None:
    (spool.root / "config.toml").write_text(
        f'dtype = "float32"\nmax_num_seqs = 1\n[[adapters]]\npath = "{lora.folder}"\nbase = "{lora.model}"\n')
    records, expect = job_lines(lora)
    # 38 lines in chunks of 4, one sequence at a time: the kill lands with most of the job to do
    drop(spool, "killed.jsonl", records)
    cmd = [sys.executable, "-m", "spoolbatch", "run", "--spool", str(spool.root), "--engine", "vllm",
           "--settle-seconds", "0", "--poll-interval", "0.2", "--heartbeat-interval", "0.2", "--chunk-size", "4", "-q"]
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=log, stderr=log)]
    try:
        def some_chunks_done() -> bool:
            assert procs[0].poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            ckpt = Checkpoint.load(spool.checkpoint("killed"))
            assert ckpt is None or ckpt.status == "running", "the job ended before the kill"
            return ckpt is not None and ckpt.chunks >= 2

        wait_for(some_chunks_done, timeout=400, interval=0.05)
        procs[0].send_signal(signal.SIGKILL)
        assert procs[0].wait(timeout=30) == -signal.SIGKILL
        ckpt = Checkpoint.load(spool.checkpoint("killed"))
        assert ckpt is not None and 0 < ckpt.lines_consumed < len(records)
        procs.append(subprocess.Popen([*cmd, "--once"], cwd=REPO, env=dict(os.environ), stdout=log, stderr=log))
        assert procs[1].wait(timeout=500) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()
    check_results(spool, "killed", lora, expect)


def _processes_with(marker: str) -> list[int]:
    """Pids of this user's processes whose environment carries ``RAY_TMPDIR=marker`` (what a local Ray started)."""
    needle = f"RAY_TMPDIR={marker}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_the_ray_backend_passes_adapters_to_its_replicas(lora: Lora, spool: Spool, tmp_path: Path) -> None:
    """Two replicas, each its own vLLM engine built from the settings the driver sends: each slice of a
    chunk runs its lines on their adapters, with the answers of the merged models."""
    pytest.importorskip("ray")
    (spool.root / "config.toml").write_text(
        f'dtype = "float32"\n[[adapters]]\npath = "{lora.folder}"\nbase = "{lora.model}"\n')
    records, expect = job_lines(lora)
    drop(spool, "ray.jsonl", records)
    raytmp = tempfile.mkdtemp(prefix="sbl-", dir="/tmp")  # short: Ray's socket paths have a limit
    cmd = [sys.executable, "-m", "spoolbatch", "run", "--spool", str(spool.root), "--engine", "ray",
           "--ray-address", "local", "--ray-concurrency", "2", "--settle-seconds", "0", "--poll-interval", "0.2",
           "--chunk-size", "16", "--once", "-q"]
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_TMPDIR": raytmp}, stdout=log, stderr=log)
    try:
        assert proc.wait(timeout=600) == 0, (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        deadline = time.monotonic() + 30  # a daemon that ends shuts its local Ray down
        while (left := _processes_with(raytmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(raytmp, ignore_errors=True)
    assert not left, "Ray processes outlived the daemon"
    check_results(spool, "ray", lora, expect)


def test_chat_lines_name_adapters_too(lora: Lora, engine: Any) -> None:
    """The chat path (chat template, then the same engine requests) carries the adapter as well."""
    messages = [{"role": "user", "content": PROMPTS[0]}]
    requests = []
    for name in MODELS:
        b = {"model": lora.model if name == "base" else name, "messages": messages, "max_tokens": TOKENS,
             "temperature": 0}
        requests.append(Request(name, 1, CHAT, b, parse_spec(CHAT, b)))
    texts = [o.body["choices"][0]["message"]["content"] for o in engine.run(requests) if o.body is not None]
    assert len(texts) == 3 and len(set(texts)) == 3, texts


def test_a_look_ahead_chunk_with_adapters_turns_lora_on_without_losing_the_chunk_before(lora: Lora) -> None:
    """The daemon enqueues chunk k+1 before it collects chunk k: chunk k's requests finish first.

    Last of the in-process tests: closing an engine tears down vLLM's per-process parallel state,
    which the module's engine shares.
    """
    from spoolbatch.engines.vllm_engine import VllmEngine

    engine = VllmEngine(lora.settings())
    engine.load(lora.model)
    try:
        first = engine.submit([completion(f"b{i}", lora.model, p) for i, p in enumerate(PROMPTS)])
        second = engine.submit([completion(f"s{i}", "sql", p) for i, p in enumerate(PROMPTS)])
        assert engine.starts == 2
        assert [text(o) for o in engine.collect(first)] == lora.reference["base"]
        assert [text(o) for o in engine.collect(second)] == lora.reference["sql"]
    finally:
        engine.close()
