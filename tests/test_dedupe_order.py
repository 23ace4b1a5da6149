"""Inside a chunk: repeated deterministic requests go to the engine once, the rest in prefix order.

The engine here is the fake one, recording what it was sent; the results file, the checkpoint,
the job log and `status --json` are read as a user reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from typer.testing import CliRunner

from spoolbatch.cli import app
from spoolbatch.config import Config
from spoolbatch.engines.fake import FakeEngine
from spoolbatch.format.lines import LineParser
from spoolbatch.format.types import Outcome, Request
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon
from spoolbatch.worker.dedupe import deterministic
from spoolbatch.worker.metrics import MetricsSample, render
from spoolbatch.worker.ordering import prefix_key
from spoolbatch.worker.sending import SendPlan

from .conftest import assert_exactly_once, drop, job_events, read_jsonl
from .fakes import FlakyEngine


class SentEngine(FakeEngine):
    """Records every batch of requests it answered, by custom_id, in the order given (collect runs them too).

    It says it keeps a prefix cache, as vLLM does, so that the worker sends it chunks in prefix order.
    """

    prefix_caching = True

    def __init__(self) -> None:
        super().__init__(created=1_700_000_000)
        self.sent: list[list[str]] = []

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        self.sent.append([r.custom_id for r in requests])
        return super().run(requests)


def drain(config: Config, engine: FakeEngine) -> Daemon:
    daemon = Daemon(config, engine_factory=lambda: engine, echo=False)
    daemon.executor.backoff = 0
    while daemon.loop_once().worked:
        pass
    return daemon


def line(cid: str, content: str, system: str | None = None, **body: Any) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": messages, "max_tokens": 8, **body}}


def request(record: dict[str, Any], n: int = 1) -> Request:
    parsed = LineParser().parse(orjson.dumps(record), n)
    assert isinstance(parsed, Request)
    return parsed


# --- de-duplication -------------------------------------------------------------------------------------------
def test_identical_deterministic_lines_are_answered_once_each_with_its_own_ids(spool: Spool, config: Config) -> None:
    records = [
        line("greedy-1", "same question", temperature=0),
        line("sampled-1", "same question"),  # no temperature: OpenAI's default 1 samples
        line("seeded-1", "same question", temperature=0.9, seed=7),
        line("greedy-2", "same question", temperature=0),
        line("sampled-2", "same question"),
        line("two-1", "same question", temperature=0, n=2),  # two choices: not shared
        line("seeded-2", "same question", temperature=0.9, seed=7),
        line("greedy-3", "same question", temperature=0),
        line("two-2", "same question", temperature=0, n=2),
        line("other-seed", "same question", temperature=0.9, seed=8),
    ]
    drop(spool, "job.jsonl", records)
    engine = SentEngine()
    drain(config.replace(chunk_size=100), engine)

    (sent,) = engine.sent
    assert sorted(sent) == sorted(["greedy-1", "sampled-1", "seeded-1", "sampled-2", "two-1", "two-2", "other-seed"])
    assert_exactly_once(spool, "job", {r["custom_id"] for r in records})
    results = read_jsonl(spool.results("job"))
    assert [r["custom_id"] for r in results] == [r["custom_id"] for r in records], "results are in line order"
    by_id = {r["custom_id"]: r for r in results}
    assert len({r["id"] for r in results}) == len(results), "every line has its own batch id"
    shared = ["greedy-1", "greedy-2", "greedy-3", "seeded-1", "seeded-2"]
    assert len({by_id[c]["response"]["body"]["id"] for c in shared}) == 5, "every copy has its own response id"
    for copy, first in (("greedy-2", "greedy-1"), ("greedy-3", "greedy-1"), ("seeded-2", "seeded-1")):
        mine, theirs = by_id[copy]["response"]["body"], by_id[first]["response"]["body"]
        assert mine["choices"] == theirs["choices"] and mine["usage"] == theirs["usage"]
        assert mine["id"].startswith("chatcmpl-") and mine["id"] != theirs["id"]

    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and ckpt.deduplicated == 3 and ckpt.requests_done == 10
    assert ckpt.prefix_cache_hit_rate is None, "the fake engine has no prefix cache to report"
    assert [e["deduplicated"] for e in job_events(spool, "job", "chunk_merged")] == [3]
    result = CliRunner().invoke(app, ["status", "job", "--json", "--spool", str(spool.root)])
    assert result.exit_code == 0
    (job,) = orjson.loads(result.stdout)["jobs"]
    assert job["deduplicated"] == 3 and job["prefix_cache_hit_rate"] is None


def test_a_redone_chunk_writes_the_same_lines(spool: Spool, config: Config, tmp_path: Any) -> None:
    records = [line(f"r{i}", f"q{i % 3}", system=f"s{i % 2}", temperature=0) for i in range(12)]
    drop(spool, "job.jsonl", records)
    drain(config.replace(chunk_size=100), SentEngine())
    again = Spool(tmp_path / "again")
    again.init()
    drop(again, "job.jsonl", records)
    drain(config.replace(spool=again.root, chunk_size=100), SentEngine())
    assert spool.results("job").read_bytes() == again.results("job").read_bytes()


def test_dedupe_false_sends_every_line(spool: Spool, config: Config) -> None:
    records = [line(f"g{i}", "same", temperature=0) for i in range(4)]
    drop(spool, "job.jsonl", records)
    engine = SentEngine()
    drain(config.replace(chunk_size=100, dedupe=False), engine)
    assert engine.sent == [["g0", "g1", "g2", "g3"]]
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and ckpt.deduplicated == 0 and ckpt.requests_done == 4


def test_duplicates_are_per_chunk_and_each_chunk_counts_its_own(spool: Spool, config: Config) -> None:
    records = [line(f"g{i}", "same", temperature=0) for i in range(7)]
    drop(spool, "job.jsonl", records)
    engine = SentEngine()
    drain(config.replace(chunk_size=3), engine)
    assert engine.sent == [["g0"], ["g3"], ["g6"]]
    assert [e["deduplicated"] for e in job_events(spool, "job", "chunk_merged")] == [2, 2, 0]
    ckpt = Checkpoint.load(spool.checkpoint("job"))
    assert ckpt is not None and ckpt.deduplicated == 4
    assert_exactly_once(spool, "job", {f"g{i}" for i in range(7)})


def test_a_failing_request_fails_every_copy_on_its_own_line(spool: Spool, config: Config) -> None:
    records = [line("ok-1", "fine", temperature=0), line("bad-1", "poison", temperature=0),
               line("ok-2", "fine", temperature=0), line("bad-2", "poison", temperature=0)]
    drop(spool, "job.jsonl", records)
    engine = FlakyEngine(max_batch=100, poison={"bad-1"})
    drain(config.replace(chunk_size=100, max_attempts=2), engine)
    assert assert_exactly_once(spool, "job", {"ok-1", "ok-2", "bad-1", "bad-2"}) == (2, 2)
    dead = read_jsonl(spool.deadletter_file("job"))
    assert [(d["line"], d["custom_id"], d["error"]["code"]) for d in dead] == [
        (2, "bad-1", "engine_error"), (4, "bad-2", "engine_error")]
    assert [r["custom_id"] for r in read_jsonl(spool.results("job"))] == ["ok-1", "ok-2"]


def test_which_requests_count_as_deterministic() -> None:
    def spec(**body: Any) -> Any:
        return request(line("x", "q", **body)).spec

    assert deterministic(spec(temperature=0)) and deterministic(spec(seed=1)) and deterministic(spec(seed=1, n=1))
    assert not deterministic(spec()) and not deterministic(spec(temperature=0.5))
    assert not deterministic(spec(temperature=0, n=2)) and not deterministic(spec(seed=3, n=3))
    embed = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "hi"}}
    assert deterministic(request(embed).spec)


def test_identical_embeddings_are_answered_once(spool: Spool, config: Config) -> None:
    records = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "m", "input": ["same", "text"] if i % 2 else "other"}} for i in range(4)]
    drop(spool, "job.jsonl", records)
    engine = SentEngine()
    drain(config.replace(chunk_size=100), engine)
    assert engine.sent == [["e0", "e1"]], "pooling keeps file order; each distinct body once"
    results = read_jsonl(spool.results("job"))
    assert [r["custom_id"] for r in results] == ["e0", "e1", "e2", "e3"]
    assert results[1]["response"]["body"] == results[3]["response"]["body"]


# --- prefix order ---------------------------------------------------------------------------------------------
def test_the_engine_gets_shared_prefixes_side_by_side_and_results_stay_in_line_order(
        spool: Spool, config: Config) -> None:
    rubrics = ["rubric B " * 20, "rubric A " * 20, "rubric C " * 20]
    records = [line(f"r{i}", f"question {i}", system=rubrics[i % 3]) for i in range(9)]  # interleaved: B A C B A C
    drop(spool, "job.jsonl", records)
    engine = SentEngine()
    drain(config.replace(chunk_size=100), engine)
    (sent,) = engine.sent
    assert sent == ["r1", "r4", "r7", "r0", "r3", "r6", "r2", "r5", "r8"], "grouped by system prompt, stable within"
    results = read_jsonl(spool.results("job"))
    assert [r["custom_id"] for r in results] == [f"r{i}" for i in range(9)]
    alone = [FakeEngine(created=1_700_000_000).run([request(r)])[0].body for r in records]
    assert [r["response"]["body"] for r in results] == alone, "each line has its own request's answer"
    assert_exactly_once(spool, "job", {f"r{i}" for i in range(9)})


def test_two_lines_swapped_get_their_own_answers(spool: Spool, config: Config) -> None:
    records = [line("b", "question", system="rubric B"), line("a", "other question", system="rubric A")]
    drop(spool, "job.jsonl", records)
    engine = SentEngine()
    drain(config.replace(chunk_size=100), engine)
    assert engine.sent == [["a", "b"]]
    alone = [FakeEngine(created=1_700_000_000).run([request(r)])[0].body for r in records]
    assert [r["response"]["body"] for r in read_jsonl(spool.results("job"))] == alone


def test_prefix_order_false_keeps_file_order(spool: Spool, config: Config) -> None:
    records = [line(f"r{i}", f"question {i}", system=f"rubric {i % 3}") for i in range(6)]
    drop(spool, "job.jsonl", records)
    engine = SentEngine()
    drain(config.replace(chunk_size=100, prefix_order=False), engine)
    assert engine.sent == [[f"r{i}" for i in range(6)]]


def test_an_engine_without_a_prefix_cache_gets_file_order(spool: Spool, config: Config) -> None:
    class NoCache(SentEngine):
        prefix_caching = False

    records = [line(f"r{i}", f"question {i}", system=f"rubric {i % 3}") for i in range(6)]
    drop(spool, "job.jsonl", records)
    engine = NoCache()
    drain(config.replace(chunk_size=3), engine)
    assert engine.sent[1:] == [["r3", "r4", "r5"]], "once the engine is built, chunks go as read"
    assert [r["custom_id"] for r in read_jsonl(spool.results("job"))] == [f"r{i}" for i in range(6)]


def test_results_are_the_same_whatever_the_order(spool: Spool, config: Config, tmp_path: Any) -> None:
    records = [line(f"r{i}", f"question {i % 4}", system=f"rubric {i % 3}", temperature=0) for i in range(24)]
    outputs = []
    for n, options in enumerate([{"prefix_order": False, "dedupe": False}, {}]):
        sp = Spool(tmp_path / f"s{n}")
        sp.init()
        drop(sp, "job.jsonl", records)
        drain(config.replace(spool=sp.root, chunk_size=10, **options), SentEngine())
        outputs.append([(r["custom_id"], r["id"], r["response"]["body"]["choices"])
                        for r in read_jsonl(sp.results("job"))])
    assert outputs[0] == outputs[1]


def test_split_and_retry_works_on_the_order_sent(spool: Spool, config: Config) -> None:
    records = [line(f"r{i}", f"question {i}", system=f"rubric {i % 4}") for i in range(16)]
    drop(spool, "job.jsonl", records)
    engine = FlakyEngine(max_batch=3, poison=set())  # every batch over 3 runs out of memory: halved until it fits
    drain(config.replace(chunk_size=100), engine)
    assert [r["custom_id"] for r in read_jsonl(spool.results("job"))] == [f"r{i}" for i in range(16)]
    assert_exactly_once(spool, "job", {f"r{i}" for i in range(16)})


def test_the_key_groups_shared_prefixes_at_every_depth() -> None:
    def chat(cid: str, *messages: tuple[str, str], model: str = "m") -> Request:
        return request({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}})

    reqs = [
        chat("a", ("system", "doc 2"), ("user", "q1")),
        chat("b", ("system", "doc 1"), ("user", "q1"), ("assistant", "x"), ("user", "more")),
        chat("c", ("system", "doc 2"), ("user", "q2")),
        chat("d", ("system", "doc 1"), ("user", "q2")),
        chat("e", ("system", "doc 1"), ("user", "q1")),
        chat("f", ("system", "doc 1"), ("user", "q1"), model="adapter"),
        chat("g", ("system", "doc 1 and more"), ("user", "q1")),
    ]
    plan = SendPlan.build(reqs, dedupe=False)
    assert [r.custom_id for r in plan.sent] == ["f", "e", "b", "d", "g", "a", "c"]
    assert prefix_key(reqs[4].spec) < prefix_key(reqs[1].spec), "a prompt sorts before its own continuations"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    rich = request({"custom_id": "rich", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "m", "messages": [{"role": "system", "content": "doc 2"},
                                                       {"role": "user", "content": [image]}]}})
    assert rich.spec.rich
    mixed = SendPlan.build([reqs[0], reqs[1], rich], dedupe=False)
    assert [r.custom_id for r in mixed.sent] == ["b", "a", "rich"], "a rich prompt meets the plain ones it shares"
    completions = [request({"custom_id": c, "method": "POST", "url": "/v1/completions",
                            "body": {"model": "m", "prompt": p}}) for c, p in (("x", "doc2 q"), ("y", "doc1 q"),
                                                                              ("z", "doc2 r"))]
    assert [r.custom_id for r in SendPlan.build(completions).sent] == ["y", "x", "z"]


def test_the_metrics_file_counts_what_the_engine_was_spared() -> None:
    text = render(MetricsSample(requests_deduplicated_total=5, prefix_cache_queries_total=1000,
                                prefix_cache_hits_total=750))
    assert "spoolbatch_requests_deduplicated_total 5" in text
    assert 'spoolbatch_prefix_cache_tokens_total{kind="query"} 1000' in text
    assert 'spoolbatch_prefix_cache_tokens_total{kind="hit"} 750' in text
    assert "prefix_cache" not in render(MetricsSample()), "left out where no engine reported it"



def test_any_chunk_spreads_back_to_each_lines_own_answer() -> None:
    import random

    from spoolbatch.worker.executor import ChunkRun

    rng = random.Random(5)
    engine = FakeEngine(created=1_700_000_000)
    for _ in range(200):
        n = rng.randint(1, 12)
        records = [line(f"c{i}", f"q{rng.randint(0, 3)}", system=f"s{rng.randint(0, 2)}",
                        **rng.choice([{}, {"temperature": 0}, {"seed": 1}, {"temperature": 0, "n": 2}]))
                   for i in range(n)]
        reqs = [request(r, i + 1) for i, r in enumerate(records)]
        for order in (True, False):
            for dedupe in (True, False):
                plan = SendPlan.build(reqs, order=order, dedupe=dedupe)
                sent = engine.run(plan.sent)
                run = plan.spread(ChunkRun(sent, [1] * len(sent)), reqs)
                want = engine.run(reqs)
                assert [o.body["choices"] for o in run.outcomes] == [o.body["choices"] for o in want]
                assert len(plan.sent) + plan.deduplicated == n and run.attempts == [1] * n
                if not dedupe:
                    assert plan.deduplicated == 0
