"""Prefix order and de-duplication on the real engine: the greedy answers are those of file order.

The tiny random Llama (tests/tiny_model.py) on the session's shared engine; one chunk of
interleaved system prompts, answered once in prefix order (with a repeated line de-duplicated)
and once as read, on two spools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spoolbatch.config import Config
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import SharedEngine, assert_exactly_once, drop, read_jsonl

pytestmark = pytest.mark.vllm

SYSTEMS = [f"you answer every {topic} question with the first word of the line" for topic in ("batch", "json", "queue")]


def answers(config: Config, root: Path, engine: SharedEngine, records: list[dict[str, Any]],
            **options: Any) -> tuple[list[tuple[str, Any]], Checkpoint]:
    spool = Spool(root)
    spool.init()
    drop(spool, "job.jsonl", records)
    daemon = Daemon(config.replace(spool=root, engine="vllm", chunk_size=64, **options),
                    engine_factory=lambda: engine, echo=False)
    while daemon.loop_once().worked:
        pass
    assert_exactly_once(spool, "job", {r["custom_id"] for r in records})
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None
    results = read_jsonl(spool.results("job"))
    return [(r["custom_id"], r["response"]["body"]["choices"]) for r in results], ckpt


def test_interleaved_prefixes_get_the_same_greedy_answers_reordered_or_not(
        shared_vllm_engine: SharedEngine, tiny_model_dir: Path, config: Config, tmp_path: Path) -> None:
    records = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": str(tiny_model_dir), "max_tokens": 4, "temperature": 0,
                         "messages": [{"role": "system", "content": SYSTEMS[i % 3]},
                                      {"role": "user", "content": f"question {i // 3}"}]}} for i in range(9)]
    records.append({**records[4], "custom_id": "again"})  # identical to r4: answered once when de-duplicated
    shared_vllm_engine.engine.load(str(tiny_model_dir))
    assert shared_vllm_engine.engine._llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    as_read, plain = answers(config, tmp_path / "as-read", shared_vllm_engine, records, prefix_order=False,
                             dedupe=False)
    grouped, ckpt = answers(config, tmp_path / "grouped", shared_vllm_engine, records)
    assert grouped == as_read
    assert [cid for cid, _ in grouped] == [r["custom_id"] for r in records]
    assert dict(grouped)["again"] == dict(grouped)["r4"]
    assert ckpt.deduplicated == 1 and plain.deduplicated == 0
    # vLLM says how many prompt tokens came from its prefix cache (none here: the tiny model's
    # prompts are shorter than one 128-token block of the CPU build), so the rate is known.
    assert plain.prefix_cache_queries == plain.prompt_tokens > 0
    assert ckpt.prefix_cache_queries == ckpt.prompt_tokens - _prompt_tokens(tmp_path / "grouped", "again")
    assert ckpt.prefix_cache_hit_rate is not None and plain.prefix_cache_hit_rate is not None


def _prompt_tokens(root: Path, custom_id: str) -> int:
    """The prompt tokens of one result line (a copy's usage is counted, but it never reached the engine)."""
    (line,) = [r for r in read_jsonl(Spool(root).results("job")) if r["custom_id"] == custom_id]
    return int(line["response"]["body"]["usage"]["prompt_tokens"])
