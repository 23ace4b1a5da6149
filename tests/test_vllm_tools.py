"""Tools and reasoning on the real vLLM engine and through vLLM's own parser classes.

Forced calls (a named function, ``required``) run on the tiny random model: structured
output must make even gibberish weights give schema-valid arguments. ``auto`` tool parsing
and reasoning separation run vLLM's real parsers (hermes, deepseek_r1, qwen3) on canned
model outputs, with the tiny model's tokenizer plus the markup tokens those parsers look up.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from spoolbatch.format.endpoints import CHAT
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import parse_spec

pytestmark = pytest.mark.vllm

# Bounded fields, so even a random model closes every call within the tiny context.
WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                                    "days": {"type": "integer", "minimum": 0, "maximum": 9}},
                   "required": ["city", "days"], "additionalProperties": False}}}
PING = {"type": "function", "function": {"name": "ping",
                                         "parameters": {"type": "object", "properties": {},
                                                        "additionalProperties": False}}}
USER = [{"role": "user", "content": "weather?"}]
REPLAY = [*USER,
          {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
          {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


@pytest.fixture(scope="module")
def shared_vllm_engine(shared_vllm_engine: Any, tiny_model_dir: Path) -> Any:
    """The session's engine, started afresh for this module.

    When another engine in this process (test_vllm_engine's own) shuts down, vLLM tears down
    the per-process parallel state the shared one still uses ("pipeline model parallel group
    is not initialized"); a fresh start builds it again.
    """
    engine = shared_vllm_engine.engine
    engine.close()
    engine.load(str(tiny_model_dir))
    return shared_vllm_engine


def chat(custom_id: str, line: int = 1, **body: Any) -> Request:
    body = {"model": "tiny", "messages": USER, "max_tokens": 70, **body}
    return Request(custom_id, line, CHAT, body, parse_spec(CHAT, body))


def ok(outcome: Outcome) -> dict[str, Any]:
    assert not outcome.failed, (outcome.error_code, outcome.error_message)
    assert outcome.body is not None
    return outcome.body


def schema_valid(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(instance, schema)


def test_forced_tool_calls_are_schema_valid(shared_vllm_engine: Any) -> None:
    from openai.types.chat import ChatCompletion

    named = {"type": "function", "function": {"name": "get_weather"}}
    requests = [chat("named", 1, tools=[WEATHER, PING], tool_choice=named),
                chat("required", 2, tools=[WEATHER, PING], tool_choice="required", parallel_tool_calls=False),
                chat("named-2", 3, messages=[{"role": "user", "content": "the quick brown fox"}],
                     tools=[WEATHER], tool_choice=named)]
    outcomes = shared_vllm_engine.run(requests)
    for request, outcome in zip(requests, outcomes, strict=True):
        choice = ChatCompletion.model_validate(ok(outcome)).choices[0]
        assert choice.message.tool_calls, (request.custom_id, choice)
        assert choice.finish_reason == ("tool_calls" if request.spec.tool_choice == "required" else "stop")
        for call in choice.message.tool_calls:
            assert call.type == "function" and call.id.startswith("call_")
            tool = {"get_weather": WEATHER, "ping": PING}[call.function.name]
            schema_valid(json.loads(call.function.arguments), tool["function"]["parameters"])
        if request.spec.tool_choice == "get_weather":
            assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
        else:
            assert len(choice.message.tool_calls) == 1  # parallel_tool_calls false
    again = shared_vllm_engine.run(requests[:1])  # a redone chunk writes the same call ids
    assert ok(again[0])["choices"][0]["message"]["tool_calls"][0]["id"] \
        == ok(outcomes[0])["choices"][0]["message"]["tool_calls"][0]["id"]


def test_a_replayed_tool_conversation_is_answered(shared_vllm_engine: Any) -> None:
    from openai.types.chat import ChatCompletion

    (outcome,) = shared_vllm_engine.run([chat("replay", messages=REPLAY, tools=[WEATHER], tool_choice="none",
                                              max_tokens=8)])
    completion = ChatCompletion.model_validate(ok(outcome))
    assert completion.choices[0].message.tool_calls is None
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    # The replayed call and the tool result are in the prompt: longer than the question alone.
    (plain,) = shared_vllm_engine.run([chat("plain", max_tokens=8)])
    assert completion.usage.prompt_tokens > ok(plain)["usage"]["prompt_tokens"]


def test_a_messages_name_reaches_the_chat_template(shared_vllm_engine: Any) -> None:
    """vLLM's renderer hands a message's ``name`` to the template; the tiny model's template ignores it, so a
    template that writes it after the role is set on the loaded ``LLM`` (its default template) for this test."""
    llm = shared_vllm_engine.engine._llm
    before = llm.chat_template
    llm.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] }}{% if m.get('name') %}"
                         "{{ ' ' + m['name'] }}{% endif %}{{ '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    try:
        # chat_template_kwargs sends the unnamed twin down the same renderer (a plain line takes the fast path).
        outcomes = shared_vllm_engine.run([
            chat("named", messages=[{"role": "user", "content": "weather?", "name": "alice"}],
                 chat_template_kwargs={}, max_tokens=4),
            chat("unnamed", 2, messages=USER, chat_template_kwargs={}, max_tokens=4)])
    finally:
        llm.chat_template = before
    tokenizer = llm.get_tokenizer()

    def tokens(text: str) -> int:
        return len(tokenizer.encode(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))

    named, unnamed = (ok(o)["usage"]["prompt_tokens"] for o in outcomes)
    assert (named, unnamed) == (tokens("<|im_start|>user alice\nweather?"), tokens("<|im_start|>user\nweather?"))
    assert named > unnamed


def test_auto_without_a_tool_parser_is_refused_per_line(shared_vllm_engine: Any) -> None:
    outcomes = shared_vllm_engine.run([chat("auto", tools=[WEATHER]), chat("fine", 2, max_tokens=4)])
    assert outcomes[0].failed and outcomes[0].error_code == "tool_parser_missing"
    assert "tool_call_parser" in (outcomes[0].error_message or "")
    ok(outcomes[1])



def tool_choice_problem(request: Request, outcome: Outcome) -> str | None:
    """What is wrong with ``outcome`` as an answer to ``request`` under its tool choice, or None."""
    from openai.types.chat import ChatCompletion

    if outcome.failed or outcome.body is None:
        return f"failed: {outcome.error_code}: {outcome.error_message}"
    choice = ChatCompletion.model_validate(outcome.body).choices[0]
    calls = choice.message.tool_calls or []
    wanted = request.spec.tool_choice
    if wanted == "none":
        return f"called {len(calls)} tool(s)" if calls else None
    if wanted == "auto":  # gibberish rarely calls; whatever it says must be answered
        return "more than one call with parallel_tool_calls false" \
            if len(calls) > 1 and not request.spec.parallel_tool_calls else None
    if not calls:
        return f"no tool call (finish {choice.finish_reason}, text {choice.message.content!r:.80})"
    if choice.finish_reason != ("tool_calls" if wanted == "required" else "stop"):
        return f"finish_reason {choice.finish_reason}"
    if wanted != "required" and {c.function.name for c in calls} != {wanted}:
        return f"called {[c.function.name for c in calls]}, not {wanted}"
    for call in calls:
        tool = {"get_weather": WEATHER, "ping": PING}.get(call.function.name)
        if tool is None:
            return f"called an unknown tool {call.function.name!r}"
        try:
            schema_valid(json.loads(call.function.arguments), tool["function"]["parameters"])
        except Exception as exc:  # noqa: BLE001 - reported with the parser's name
            return f"arguments {call.function.arguments!r} do not follow the schema: {str(exc)[:80]}"
    return None


def test_each_tool_choice_under_each_parser_the_model_loads_with(shared_vllm_engine: Any) -> None:
    """Forced calls work whatever tool parser is set; none and auto are answered (issue 17).

    vLLM 0.32 forces hermes-style calls with an xgrammar structural tag, which the engine's
    llguidance backend refused ("Invalid grammar specification: 'triggers'") for every forced
    line; gemma4 and others forced nothing. Every registered parser is tried: those that do
    not fit the tiny model's tokenizer refuse each line with parser_unavailable.
    """
    from dataclasses import replace

    from vllm.tool_parsers import ToolParserManager

    engine = shared_vllm_engine.engine
    tools = [WEATHER, PING]
    lines = [chat("none", 1, tools=tools, tool_choice="none", max_tokens=4),
             chat("auto", 2, tools=tools, max_tokens=8),
             chat("auto-one", 3, tools=tools, tool_choice="auto", parallel_tool_calls=False, max_tokens=8),
             chat("required", 4, tools=tools, tool_choice="required", parallel_tool_calls=False),
             chat("named", 5, tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}})]
    settings = engine.settings
    loaded: list[str] = []
    problems: list[str] = []
    try:
        for name in ToolParserManager.list_registered():
            engine.settings = replace(settings, tool_call_parser=name)
            outcomes = engine.run(lines)
            if all(o.error_code == "parser_unavailable" for o in outcomes):
                continue
            loaded.append(name)
            problems += [f"{name} {r.custom_id}: {problem}" for r, o in zip(lines, outcomes, strict=True)
                         if (problem := tool_choice_problem(r, o)) is not None]
    finally:
        engine.settings = settings
    assert {"hermes", "pythonic"} <= set(loaded), loaded
    assert not problems, "\n".join(problems)


# --- vLLM's own parsers on canned outputs ------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>", "<think>", "</think>"]})
    return tok


def canned(tokenizer: Any, request: Request, text: str, *, tool_call_parser: str | None = None,
           reasoning_parser: str | None = None) -> Any:
    """What ``ChatTools`` makes of ``text`` as the model's finished output for ``request``."""
    from spoolbatch.engines.vllm_tools import ChatTools, Prepared

    tools = ChatTools(tokenizer, None, None, tool_call_parser=tool_call_parser, reasoning_parser=reasoning_parser)
    prepared = Prepared(engine_input={}, prompt_ids=[], vrequest=tools._vllm_request(request.spec))
    completion = SimpleNamespace(text=text, token_ids=tokenizer.encode(text, add_special_tokens=False),
                                 finish_reason="stop")
    return tools.choice(request, prepared, completion, 0, None)


def test_auto_tool_calls_are_parsed_by_vllms_hermes_parser(tokenizer: Any) -> None:
    from openai.types.chat import ChatCompletion

    from spoolbatch.format import bodies

    request = chat("auto", tools=[WEATHER, PING])
    text = ('I will check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>'
            '<tool_call>{"name": "ping", "arguments": {}}</tool_call>')
    choice = canned(tokenizer, request, text, tool_call_parser="hermes")
    assert choice.finish_reason == "tool_calls" and choice.text.strip() == "I will check."
    assert [c["function"]["name"] for c in choice.tool_calls] == ["get_weather", "ping"]
    assert json.loads(choice.tool_calls[0]["function"]["arguments"]) == {"city": "Paris", "days": 2}
    body = bodies.chat_completion(id="chatcmpl-x", model="tiny", created=1, choices=[choice], prompt_tokens=3)
    assert ChatCompletion.model_validate(body).choices[0].message.tool_calls[1].function.name == "ping"

    single = canned(tokenizer, chat("one", tools=[WEATHER, PING], parallel_tool_calls=False), text,
                    tool_call_parser="hermes")
    assert [c["function"]["name"] for c in single.tool_calls] == ["get_weather"]  # the first call only

    plain = canned(tokenizer, request, "No tool needed.", tool_call_parser="hermes")
    assert plain.tool_calls is None and plain.text == "No tool needed." and plain.finish_reason == "stop"


@pytest.mark.parametrize("reasoning_parser", ["deepseek_r1", "qwen3"])
def test_reasoning_is_split_by_vllms_parser(tokenizer: Any, reasoning_parser: str) -> None:
    from openai.types.chat import ChatCompletion

    from spoolbatch.format import bodies

    choice = canned(tokenizer, chat("r"), "<think>The user wants weather.</think>It is sunny.",
                    reasoning_parser=reasoning_parser)
    assert choice.reasoning == "The user wants weather." and choice.text == "It is sunny."
    assert choice.tool_calls is None and 0 < choice.reasoning_tokens < choice.completion_tokens
    body = bodies.chat_completion(id="chatcmpl-x", model="tiny", created=1, choices=[choice], prompt_tokens=3,
                                  reasoning=True)
    completion = ChatCompletion.model_validate(body)
    assert completion.choices[0].message.reasoning == "The user wants weather."  # type: ignore[attr-defined]
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == choice.reasoning_tokens

    both = canned(tokenizer, chat("t", tools=[WEATHER]),
                  '<think>Need a tool.</think><tool_call>{"name": "get_weather", '
                  '"arguments": {"city": "Oslo", "days": 1}}</tool_call>',
                  tool_call_parser="hermes", reasoning_parser=reasoning_parser)
    assert both.reasoning == "Need a tool." and both.tool_calls and both.finish_reason == "tool_calls"


def test_reasoning_effort_and_template_kwargs_reach_the_template(tokenizer: Any) -> None:
    from spoolbatch.engines.vllm_tools import ChatTools

    seen: dict[str, Any] = {}

    def render(messages: list[dict[str, Any]], *, tools: Any, chat_template_kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.update(chat_template_kwargs, tools=tools, messages=messages)
        return {"prompt_token_ids": [1, 2, 3]}

    tools = ChatTools(tokenizer, None, render, tool_call_parser=None, reasoning_parser="qwen3")
    request = chat("k", messages=REPLAY, tools=[WEATHER], tool_choice="none", reasoning_effort="low",
                   chat_template_kwargs={"custom_flag": 7})
    prepared = tools.prepare(request)
    assert prepared.prompt_ids == [1, 2, 3]
    assert seen["reasoning_effort"] == "low" and seen["enable_thinking"] is True and seen["custom_flag"] == 7
    assert seen["tools"] == [WEATHER] and seen["messages"][2]["tool_call_id"] == "call_1"
    assert request.spec.messages[1]["tool_calls"][0]["function"]["arguments"].startswith("{")  # not mutated


def test_responses_lines_are_answered(shared_vllm_engine: Any) -> None:
    from openai.types.responses import Response

    from spoolbatch.format.endpoints import RESPONSES

    def line(custom_id: str, n: int, **body: Any) -> Request:
        body = {"model": "tiny", "max_output_tokens": 40, **body}
        return Request(custom_id, n, RESPONSES, body, parse_spec(RESPONSES, body))

    schema = WEATHER["function"]["parameters"]
    requests = [
        line("text", 1, input="hello there", instructions="be brief", temperature=0),
        line("json", 2, input=[{"role": "user", "content": [{"type": "input_text", "text": "json"}]}],
             text={"format": {"type": "json_schema", "name": "w", "schema": schema}}),
        line("tool", 3, input="weather?", tools=[{"type": "function", **WEATHER["function"]}],
             tool_choice={"type": "function", "name": "get_weather"}),
    ]
    outcomes = shared_vllm_engine.run(requests)
    text, as_json, tool = (Response.model_validate(ok(o)) for o in outcomes)
    assert text.status in ("completed", "incomplete") and text.output[0].type == "message"
    assert text.usage is not None and text.usage.input_tokens > 0 and text.usage.output_tokens > 0
    assert outcomes[0].prompt_tokens == text.usage.input_tokens
    schema_valid(json.loads(as_json.output_text), schema)
    (call,) = [item for item in tool.output if item.type == "function_call"]
    assert call.name == "get_weather"
    schema_valid(json.loads(call.arguments), schema)


# --- images ------------------------------------------------------------------------------------
# No tiny vision model runs on the CPU build here. vLLM's LLaVA, Gemma 3, Qwen2-VL, InternVL,
# Pixtral and Mistral 3 modules fail to import ("ModuleNotFoundError: No module named
# 'torchvision'"); a tiny random PaliGemma (SigLIP + Gemma) loads its module but engine start
# fails the same way: vllm/model_executor/models/vision.py get_vision_encoder_info imports
# pixtral, which imports transformers' pixtral image processor, which needs torchvision. The
# CPU install removes torchvision because PyPI's build breaks vLLM CPU (notes/vllm-on-cpu.md).
# So the hand-over is tested against vLLM's own media loader, and a text-only model must
# refuse an image line alone.

def image_data_url(size: tuple[int, int] = (40, 30)) -> tuple[str, Any]:
    import base64
    import io

    from PIL import Image

    image = Image.new("RGB", size, (10, 200, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), image


def test_resolved_images_load_in_vllms_media_connector(tmp_path: Path) -> None:
    from vllm.multimodal.media.connector import MediaConnector

    from spoolbatch.engines.media import MediaPolicy, resolve_images

    url, image = image_data_url()
    (tmp_path / "leaf.png").write_bytes(__import__("base64").b64decode(url.split(",", 1)[1]))
    for source in (url, f"file://{tmp_path}/leaf.png"):
        request = chat("img", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": source}}]}])
        (message,) = resolve_images(request.spec.messages, MediaPolicy(media_dir=str(tmp_path)))
        loaded = MediaConnector().fetch_image(message["content"][1]["image_url"]["url"])
        assert loaded.size == image.size and loaded.getpixel((3, 3)) == image.getpixel((3, 3))


def test_an_image_for_a_text_only_model_fails_that_line_alone(shared_vllm_engine: Any) -> None:
    url, _ = image_data_url()
    image = chat("img", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url}}]}], max_tokens=4)
    broken = chat("broken", 2, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}], max_tokens=4)
    outcomes = shared_vllm_engine.run([image, broken, chat("text", 3, max_tokens=4)])
    assert outcomes[0].failed and outcomes[0].error_code == "invalid_request", outcomes[0]
    assert outcomes[1].failed and outcomes[1].error_code == "invalid_image"
    ok(outcomes[2])


def test_a_parser_that_does_not_fit_the_model_fails_per_line(tokenizer: Any) -> None:
    from spoolbatch.engines.vllm_tools import ChatTools
    from spoolbatch.errors import RequestError

    for names in ({"tool_call_parser": "no-such-parser", "reasoning_parser": None},
                  {"tool_call_parser": None, "reasoning_parser": "no-such-parser"}):
        with pytest.raises(RequestError) as info:
            ChatTools(tokenizer, None, None, **names)
        assert info.value.code == "parser_unavailable" and "no-such-parser" in str(info.value)
    # vLLM's gpt-oss stub outside gpt-oss, and a parser whose package is missing: per line too,
    # not an engine failure (the ImportError used to escape as one).
    unusable = ["openai"] + (["cohere_command3"] if importlib.util.find_spec("cohere_melody") is None else [])
    for name in unusable:
        with pytest.raises(RequestError) as info:
            ChatTools(tokenizer, None, None, tool_call_parser=name, reasoning_parser=None)
        assert info.value.code == "parser_unavailable", name
