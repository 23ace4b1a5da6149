"""Function calling and reasoning fields: validation, the fake engine's deterministic calls, and the spool.

(The real engine's forced calls and vLLM's own parsers on canned outputs are in test_vllm_tools.py.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from spoolbatch.engines.fake import FakeEngine
from spoolbatch.errors import RequestError
from spoolbatch.format.endpoints import CHAT
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer", "minimum": 0, "maximum": 9}},
                   "required": ["city", "days"], "additionalProperties": False}}}
PING = {"type": "function", "function": {"name": "ping"}}
USER = [{"role": "user", "content": "what is the weather?"}]
REPLAY = [*USER,
          {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
          {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]


def chat(custom_id: str = "a", **body: Any) -> Request:
    body = {"model": "m", "messages": USER, **body}
    return Request(custom_id, 1, CHAT, body, parse_spec(CHAT, body))


def validate(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(instance, schema)


@pytest.mark.parametrize(("body", "code"), [
    ({"tools": []}, "invalid_value"),
    ({"tools": [{"type": "code_interpreter"}]}, "unsupported_parameter"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "invalid_value"),
    ({"tools": [WEATHER, WEATHER]}, "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "invalid_value"),
    ({"tool_choice": "required"}, "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "invalid_value"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "invalid_type"),
    ({"tools": [WEATHER], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "unsupported_parameter"),
    ({"messages": [*USER, {"role": "tool", "content": "x"}]}, "missing_field"),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
     "invalid_value"),
    ({"messages": [*USER, {"role": "assistant", "function_call": {"name": "f"}}]}, "unsupported_parameter"),
    ({"reasoning_effort": "extreme"}, "invalid_value"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "invalid_value"),
])
def test_tool_fields_are_checked(body: dict[str, Any], code: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_spec(CHAT, {"model": "m", "messages": USER, **body})
    assert info.value.code == code


def test_tool_fields_map_to_the_spec() -> None:
    spec = chat(tools=[WEATHER, PING]).spec
    assert spec.tool_choice == "auto" and spec.parallel_tool_calls and not spec.forced_tool  # OpenAI's defaults
    spec = chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                parallel_tool_calls=False, reasoning_effort="low", chat_template_kwargs={"enable_thinking": False}).spec
    assert spec.tool_choice == "get_weather" and spec.forced_tool and not spec.parallel_tool_calls
    assert spec.reasoning_effort == "low" and spec.chat_template_kwargs == {"enable_thinking": False}
    assert chat(tool_choice="none").spec.tool_choice is None  # none without tools is allowed
    spec = chat(messages=REPLAY).spec
    assert spec.rich and spec.messages[1]["content"] == "" and spec.messages[2]["tool_call_id"] == "call_1"
    assert not chat().spec.rich


def test_fake_engine_calls_tools_as_openai_does() -> None:
    from openai.types.chat import ChatCompletion

    engine = FakeEngine(created=1)
    named = {"type": "function", "function": {"name": "get_weather"}}
    seen = set()
    for i in range(12):
        for choice in ("required", named, "auto", "none"):
            request = chat(f"r{i}", messages=[{"role": "user", "content": f"question {i}"}],
                           tools=[WEATHER, PING], tool_choice=choice)
            (outcome,) = engine.run([request])
            assert outcome.body is not None
            completion = ChatCompletion.model_validate(outcome.body)
            assert engine.run([request])[0].body == outcome.body  # deterministic
            message, finish = completion.choices[0].message, completion.choices[0].finish_reason
            if choice == "none" or (choice == "auto" and not message.tool_calls):
                assert message.tool_calls is None and message.content and finish == "stop"
                seen.add(f"{choice}-text")
                continue
            assert message.tool_calls and message.content is None
            assert finish == ("stop" if choice is named else "tool_calls")  # OpenAI: named stops
            for call in message.tool_calls:
                assert call.type == "function" and call.id.startswith("call_")
                arguments = json.loads(call.function.arguments)
                if call.function.name == "get_weather":
                    validate(arguments, WEATHER["function"]["parameters"])
                else:
                    assert call.function.name == "ping" and arguments == {}
            seen.add(f"{'named' if choice is named else choice}-{len(message.tool_calls)}")
    assert {"named-1", "required-1", "required-2", "auto-1", "auto-text", "none-text"} <= seen


def test_fake_engine_answers_a_replayed_tool_conversation() -> None:
    from openai.types.chat import ChatCompletion

    (outcome,) = FakeEngine(created=1).run([chat(messages=REPLAY, tools=[WEATHER], tool_choice="none")])
    assert outcome.body is not None
    assert ChatCompletion.model_validate(outcome.body).choices[0].message.content


def test_a_replayed_tool_conversation_keeps_its_names() -> None:
    from openai.types.chat import ChatCompletion

    named = [{**USER[0], "name": "alice"}, {**REPLAY[1], "name": "bot"}, {**REPLAY[2], "name": "get_weather"}]
    request = chat(messages=named, tools=[WEATHER], tool_choice="none")
    user, assistant, tool = request.spec.messages
    assert (user["name"], assistant["name"], tool["name"]) == ("alice", "bot", "get_weather")
    assert assistant["tool_calls"][0]["id"] == "call_1" and tool["tool_call_id"] == "call_1"
    (outcome,) = FakeEngine(created=1).run([request])
    assert outcome.body is not None
    assert ChatCompletion.model_validate(outcome.body).choices[0].message.content
