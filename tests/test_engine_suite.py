"""One behaviour suite, run through the spool against every engine (huey's StorageTests idea).

Each test drops a job into a fresh spool and drives an in-process ``Daemon`` with
``loop_once`` until the queue is empty, then reads what a user would: result lines,
deadletter records and the checkpoint. ``engine_name`` picks the engine: the fake one, or
the real ``VllmEngine`` on a tiny random Llama (marked ``vllm``). The real engine is one
instance for the whole session (see ``shared_vllm_engine`` in conftest): the daemons get it
through ``engine_factory`` wrapped so that their ``close()`` leaves it loaded.

Where the engines differ by design (the fake has no context limit), the test says so.
The embeddings test comes last: it switches the real engine to a pooling runner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoolbatch.config import Config
from spoolbatch.engines.base import Engine
from spoolbatch.engines.fake import FakeEngine
from spoolbatch.format.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool
from spoolbatch.worker.daemon import Daemon

from .conftest import assert_exactly_once, drop, read_jsonl
from .tiny_model import SPECIAL_IDS

# Bounded fields, so even a random model must close the object within max_tokens.
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


@dataclass
class JobOutput:
    """What a finished job left in the spool."""

    results: dict[str, dict[str, Any]]  # custom_id -> response body
    dead: dict[str, dict[str, Any]]  # custom_id -> deadletter record
    ckpt: Checkpoint

    def text(self, custom_id: str, choice: int = 0) -> str:
        """The generated text of one choice of an answered request."""
        c = self.results[custom_id]["choices"][choice]
        return str(c["message"]["content"] if "message" in c else c["text"])


@dataclass
class Harness:
    """A spool and a way to drain it with one engine."""

    engine: str
    model: str
    spool: Spool
    config: Config
    factory: Callable[[], Engine]
    context: int | None = None  # the model's context length; None: no limit (fake)
    eos_token_id: int | None = None
    special_ids: tuple[int, ...] = ()

    def no_eos(self) -> dict[str, float]:
        """A logit_bias that bans the end-of-sequence token (empty for the fake)."""
        return {str(self.eos_token_id): -100} if self.eos_token_id is not None else {}

    def visible_only(self) -> dict[str, float]:
        """A logit_bias that bans every special token (EOS, and those that decode to nothing)."""
        return {str(i): -100 for i in self.special_ids}

    def line(self, custom_id: str, url: str = CHAT, **body: Any) -> dict[str, Any]:
        """One batch line for this harness's model."""
        return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": self.model, **body}}

    def chat(self, custom_id: str, text: str, **body: Any) -> dict[str, Any]:
        """One chat line with a single user message."""
        return self.line(custom_id, CHAT, messages=[{"role": "user", "content": text}], **body)

    def run_job(self, name: str, records: list[Any]) -> JobOutput:
        """Drop ``records`` as job ``name``, drain the spool, and read back what it left."""
        drop(self.spool, f"{name}.jsonl", records)
        daemon = Daemon(self.config, engine_factory=self.factory, echo=False)
        try:
            while daemon.loop_once().worked:
                pass
        finally:
            daemon.executor.close()
        ckpt = Checkpoint.load(self.spool.checkpoint(name))
        assert ckpt is not None and ckpt.status == JobState.COMPLETED
        expected = {r["custom_id"] for r in records if isinstance(r, dict)}
        assert_exactly_once(self.spool, name, expected)
        results = {}
        for line in read_jsonl(self.spool.results(name)):
            assert line["error"] is None and line["response"]["status_code"] == 200
            results[line["custom_id"]] = line["response"]["body"]
        dead = {d["custom_id"]: d for d in read_jsonl(self.spool.deadletter_file(name))}
        return JobOutput(results, dead, ckpt)


@pytest.fixture(scope="module", params=["fake", pytest.param("vllm", marks=pytest.mark.vllm)])
def engine_name(request: pytest.FixtureRequest) -> str:
    """Which engine the suite runs against (module scope: all fake tests, then all vLLM ones)."""
    return str(request.param)


@pytest.fixture
def harness(engine_name: str, spool: Spool, config: Config, request: pytest.FixtureRequest) -> Harness:
    """A fresh spool drained by ``engine_name``, one chunk per job (chunks of 64)."""
    cfg = config.replace(engine=engine_name, chunk_size=64)
    if engine_name == "fake":
        return Harness("fake", "suite-model", spool, cfg, FakeEngine)
    shared = request.getfixturevalue("shared_vllm_engine")
    model_dir: Path = request.getfixturevalue("tiny_model_dir")
    engine = shared.engine
    engine.load(str(model_dir))
    eos = json.loads((model_dir / "config.json").read_text())["eos_token_id"]
    return Harness("vllm", str(model_dir), spool, cfg, lambda: shared, context=engine.max_model_len,
                   eos_token_id=int(eos), special_ids=SPECIAL_IDS)


def assert_usage_counted(out: JobOutput, *, completion: bool = True) -> None:
    """The checkpoint's token totals are the sums of the bodies' usage, and not zero."""
    prompt = sum(b["usage"]["prompt_tokens"] for b in out.results.values())
    done = sum(b["usage"].get("completion_tokens", 0) for b in out.results.values())
    assert out.ckpt.prompt_tokens == prompt > 0
    assert out.ckpt.completion_tokens == done
    if completion:
        assert done > 0


def test_chat_results_parse_as_openai_and_usage_is_counted(harness: Harness) -> None:
    from openai.types.chat import ChatCompletion

    out = harness.run_job("chat", [harness.chat(f"c{i}", f"question number {i}", max_tokens=8, temperature=0)
                                   for i in range(5)])
    assert len(out.results) == 5 and not out.dead
    for body in out.results.values():
        parsed = ChatCompletion.model_validate(body)
        assert parsed.object == "chat.completion" and parsed.model == harness.model
        assert parsed.choices[0].finish_reason in ("stop", "length")
        assert parsed.usage is not None and parsed.usage.total_tokens == \
            parsed.usage.prompt_tokens + parsed.usage.completion_tokens
    assert_usage_counted(out)
    assert out.ckpt.model == harness.model and out.ckpt.requests_done == 5


def test_completions_results_parse_as_openai_and_usage_is_counted(harness: Harness) -> None:
    from openai.types import Completion

    prompts = ["The quick brown", "Once upon a time", "def main():"]
    records = [harness.line(f"t{i}", COMPLETIONS, prompt=p, max_tokens=6, temperature=0)
               for i, p in enumerate(prompts)]
    records.append(harness.line("t-long", COMPLETIONS, prompt="word " * 400, max_tokens=6))
    out = harness.run_job("text", records)
    if harness.context is None:  # the fake has no context limit
        assert set(out.results) == {"t0", "t1", "t2", "t-long"}
    else:
        assert set(out.results) == {"t0", "t1", "t2"}
        assert out.dead["t-long"]["error"]["code"] == "context_length_exceeded"
    for body in out.results.values():
        parsed = Completion.model_validate(body)
        assert parsed.object == "text_completion" and parsed.model == harness.model
        assert parsed.usage is not None and 0 < parsed.usage.completion_tokens <= 6
    assert_usage_counted(out)


def test_bad_request_fields_go_to_deadletter_with_their_code(harness: Harness) -> None:
    records = [harness.chat("good-1", "hello", max_tokens=4),
               harness.chat("hot", "hello", max_tokens=4, temperature=5),
               harness.chat("unknown", "hello", max_tokens=4, frobnicate=True),
               harness.chat("no-choices", "hello", max_tokens=4, n=0),
               harness.chat("bad-format", "hello", max_tokens=4, response_format={"type": "yaml"}),
               harness.chat("good-2", "hello again", max_tokens=4)]
    out = harness.run_job("bad", records)
    assert set(out.results) == {"good-1", "good-2"}
    codes = {cid: d["error"]["code"] for cid, d in out.dead.items()}
    assert codes == {"hot": "invalid_value", "unknown": "unsupported_parameter", "no-choices": "invalid_value",
                     "bad-format": "invalid_value"}
    assert "temperature" in out.dead["hot"]["error"]["message"]
    assert "frobnicate" in out.dead["unknown"]["error"]["message"]
    assert [d["line"] for d in out.dead.values()] == [2, 3, 4, 5]
    assert orjson.loads(out.dead["hot"]["request"]) == records[1]  # the original request, verbatim


def test_n_returns_that_many_choices(harness: Harness) -> None:
    from openai.types.chat import ChatCompletion

    out = harness.run_job("n", [harness.chat("two", "tell me a story", n=2, max_tokens=6, temperature=0.9, seed=7),
                                harness.chat("three", "and another", n=3, max_tokens=4)])
    two = ChatCompletion.model_validate(out.results["two"])
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.index for c in ChatCompletion.model_validate(out.results["three"]).choices] == [0, 1, 2]
    assert two.usage is not None and two.usage.completion_tokens <= 2 * 6


def test_stop_strings_cut_the_text(harness: Harness) -> None:
    # Special tokens banned: a random model's greedy text could otherwise end, or be made of
    # tokens that decode to nothing, before it holds a stop string.
    prompts = [f"say something about topic {i}" for i in range(8)]
    common = dict(max_tokens=12, temperature=0, logit_bias=harness.visible_only())
    first = harness.run_job("free", [harness.chat(f"s{i}", p, **common) for i, p in enumerate(prompts)])
    texts = [first.text(f"s{i}") for i in range(len(prompts))]
    i, text = next(((i, t) for i, t in enumerate(texts) if len(t) >= 4), (-1, ""))
    assert i >= 0, f"no greedy text of 4 characters or more: {texts}"
    stop = text[2:4]
    out = harness.run_job("stopped", [harness.chat("cut", prompts[i], stop=[stop], **common)])
    choice = out.results["cut"]["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == text[:text.index(stop)]  # the stop string itself is left out


def test_json_schema_gives_json_with_the_required_keys(harness: Harness) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    out = harness.run_job("json", [harness.chat(f"j{i}", f"describe person {i}", max_tokens=100, temperature=0,
                                                response_format=fmt) for i in range(3)])
    for cid in ("j0", "j1", "j2"):
        assert out.results[cid]["choices"][0]["finish_reason"] == "stop", out.results[cid]
        value = json.loads(out.text(cid))
        assert set(value) == {"name", "age"}
        assert isinstance(value["name"], str) and isinstance(value["age"], int)


def test_max_tokens_is_honoured(harness: Harness) -> None:
    limits = {"m1": 1, "m2": 2, "m5": 5, "mc3": 3}
    records = [harness.chat(cid, f"a long answer please {cid}", max_tokens=n, temperature=0)
               for cid, n in limits.items() if not cid.startswith("mc")]
    records.append(harness.chat("mc3", "a long answer please", max_completion_tokens=3, temperature=0))
    out = harness.run_job("limits", records)
    for cid, n in limits.items():
        usage = out.results[cid]["usage"]
        assert 0 < usage["completion_tokens"] <= n, (cid, usage)
        if out.results[cid]["choices"][0]["finish_reason"] == "length":
            assert usage["completion_tokens"] == n


def test_same_request_in_two_jobs_gives_identical_greedy_text(harness: Harness) -> None:
    # (one endpoint and one model per job, as in OpenAI's API)
    records = [harness.chat(f"g{i}", f"greedy question {i}", max_tokens=10, temperature=0) for i in range(4)]
    one = harness.run_job("greedy-1", records)
    two = harness.run_job("greedy-2", records)
    for cid in one.results:
        assert one.text(cid) == two.text(cid)
        assert one.results[cid]["usage"] == two.results[cid]["usage"]
        assert one.results[cid]["choices"][0]["finish_reason"] == two.results[cid]["choices"][0]["finish_reason"]


def test_prompt_longer_than_the_context(harness: Harness) -> None:
    """vLLM: deadletter with context_length_exceeded, the rest answered; max_tokens past the
    context is clamped (finish_reason "length"). The fake has no context: everything is answered."""
    records = [harness.chat("fits", "hello", max_tokens=4),
               harness.chat("long", "word " * 400, max_tokens=4),
               harness.chat("greedy", "hi", max_tokens=1000, temperature=0, logit_bias=harness.no_eos())]
    out = harness.run_job("context", records)
    if harness.context is None:
        assert set(out.results) == {"fits", "long", "greedy"} and not out.dead
        return
    assert set(out.results) == {"fits", "greedy"}
    assert {cid: d["error"]["code"] for cid, d in out.dead.items()} == {"long": "context_length_exceeded"}
    assert "maximum context length" in out.dead["long"]["error"]["message"]
    clamped = out.results["greedy"]
    assert clamped["choices"][0]["finish_reason"] == "length"
    assert clamped["usage"]["total_tokens"] == harness.context


TOOL = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}


def test_tool_calls_are_valid_and_replayed_conversations_answered(harness: Harness) -> None:
    from openai.types.chat import ChatCompletion

    named = {"type": "function", "function": {"name": "lookup"}}
    replay = [{"role": "user", "content": "who is it?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "call_1", "type": "function", "function": {"name": "lookup",
                                                                    "arguments": '{"name": "ada", "age": 36}'}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": "found"}]
    records = [harness.chat("named", "look someone up", tools=[TOOL], tool_choice=named, max_tokens=60),
               harness.chat("required", "look up", tools=[TOOL], tool_choice="required", parallel_tool_calls=False,
                            max_tokens=60),
               harness.line("replay", CHAT, messages=replay, tools=[TOOL], tool_choice="none", max_tokens=6),
               harness.chat("auto", "maybe look up", tools=[TOOL], max_tokens=6)]
    out = harness.run_job("tools", records)
    for cid in ("named", "required"):
        choice = ChatCompletion.model_validate(out.results[cid]).choices[0]
        assert choice.message.tool_calls and len(choice.message.tool_calls) == 1, choice
        assert choice.finish_reason == ("stop" if cid == "named" else "tool_calls")
        arguments = json.loads(choice.message.tool_calls[0].function.arguments)
        assert set(arguments) == {"name", "age"} and isinstance(arguments["age"], int)
    assert ChatCompletion.model_validate(out.results["replay"]).choices[0].message.tool_calls is None
    if harness.engine == "fake":  # the fake has no tool-call parser to miss
        assert "auto" in out.results
    else:  # no tool_call_parser is configured: "auto" cannot be parsed, that line alone fails
        assert out.dead["auto"]["error"]["code"] == "tool_parser_missing"


def test_responses_lines_parse_as_openai_and_usage_is_counted(harness: Harness) -> None:
    from openai.types.responses import Response

    fmt = {"type": "json_schema", "name": "person", "schema": SCHEMA}
    records = [harness.line("r-text", RESPONSES, input="hello there", instructions="be brief", max_output_tokens=8),
               harness.line("r-json", RESPONSES, input=[{"role": "user", "content": "a person"}],
                            text={"format": fmt}, max_output_tokens=100, temperature=0)]
    out = harness.run_job("responses", records)
    assert set(out.results) == {"r-text", "r-json"}
    parsed = {cid: Response.model_validate(body) for cid, body in out.results.items()}
    assert parsed["r-text"].output[0].type == "message"
    value = json.loads(parsed["r-json"].output_text)
    assert set(value) == {"name", "age"}
    assert out.ckpt.prompt_tokens == sum(r.usage.input_tokens for r in parsed.values() if r.usage) > 0
    assert out.ckpt.completion_tokens == sum(r.usage.output_tokens for r in parsed.values() if r.usage) > 0


def test_embeddings_parse_as_openai_and_usage_is_counted(harness: Harness) -> None:
    """Last on purpose: the real engine switches to a pooling runner for it."""
    from openai.types import CreateEmbeddingResponse

    out = harness.run_job("embed", [harness.line("e1", EMBEDDINGS, input="hello world"),
                                    harness.line("e2", EMBEDDINGS, input=["one", "two", "three"]),
                                    harness.line("e3", EMBEDDINGS, input="hello world", encoding_format="base64")])
    first = CreateEmbeddingResponse.model_validate(out.results["e1"])
    assert first.object == "list" and len(first.data) == 1 and first.model == harness.model
    dims = len(first.data[0].embedding)
    assert dims > 0
    three = CreateEmbeddingResponse.model_validate(out.results["e2"])
    assert [d.index for d in three.data] == [0, 1, 2] and {len(d.embedding) for d in three.data} == {dims}
    assert isinstance(out.results["e3"]["data"][0]["embedding"], str)  # base64
    assert_usage_counted(out, completion=False)
    assert out.ckpt.completion_tokens == 0
