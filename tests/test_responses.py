"""``/v1/responses`` lines: the mapping to a chat request, refusals, and ``response`` bodies (fake engine)."""

from __future__ import annotations

from typing import Any

import pytest

from spoolbatch.engines.fake import FakeEngine
from spoolbatch.errors import RequestError
from spoolbatch.format.endpoints import RESPONSES
from spoolbatch.format.lines import LineParser, result_line
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec

GET = {"type": "function", "name": "get_weather", "description": "weather",
       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                      "additionalProperties": False}}


def answer(body: dict[str, Any]) -> Any:
    from openai.types.responses import Response

    body = {"model": "m", **body}
    (outcome,) = FakeEngine(created=1).run([Request("r", 1, RESPONSES, body, parse_spec(RESPONSES, body))])
    assert outcome.body is not None, outcome.error_message
    return Response.model_validate(outcome.body), outcome


def test_input_and_instructions_become_messages() -> None:
    spec = parse_spec(RESPONSES, {"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 9,
                                  "temperature": 0.5, "top_p": 0.9, "reasoning": {"effort": "high"}})
    assert spec.endpoint == RESPONSES and spec.max_tokens == 9 and spec.temperature == 0.5 and spec.top_p == 0.9
    assert spec.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    assert spec.reasoning_effort == "high"
    named = {"type": "function", "name": "get_weather"}
    spec = parse_spec(RESPONSES, {"model": "m", "tools": [GET], "tool_choice": named,
                                  "input": [{"role": "user", "content": [{"type": "input_text", "text": "w?"}]},
                                            {"type": "function_call", "call_id": "c1", "name": "get_weather",
                                             "arguments": '{"city": "Oslo"}'},
                                            {"type": "function_call_output", "call_id": "c1", "output": "rain"}]})
    assert spec.tool_choice == "get_weather" and spec.tools[0]["function"]["name"] == "get_weather" and spec.rich
    assert [m["role"] for m in spec.messages] == ["user", "assistant", "tool"]
    assert spec.messages[1]["tool_calls"][0]["id"] == "c1" and spec.messages[2]["tool_call_id"] == "c1"
    spec = parse_spec(RESPONSES, {"model": "m", "input": "x", "text": {"format": {
        "type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": True}}})
    assert spec.json_schema == {"type": "object"}


@pytest.mark.parametrize(("body", "code"), [
    ({}, "missing_field"),
    ({"input": ""}, "invalid_value"),
    ({"input": "x", "previous_response_id": "resp_1"}, "unsupported_parameter"),
    ({"input": "x", "background": True}, "unsupported_parameter"),
    ({"input": "x", "stream": True}, "unsupported_parameter"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "unsupported_parameter"),
    ({"input": "x", "reasoning": {"effort": "high", "summary": "auto"}}, "unsupported_parameter"),
    ({"input": "x", "reasoning": {"effort": "enormous"}}, "invalid_value"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}]}, "unsupported_content"),
    ({"input": [{"type": "file_search_call"}]}, "unsupported_content"),
    ({"input": "x", "text": {"format": {"type": "grammar"}}}, "invalid_value"),
    ({"input": "x", "truncation": "auto"}, "unsupported_parameter"),
    ({"input": "x", "max_output_tokens": 0}, "invalid_value"),
])
def test_what_cannot_be_honoured_is_refused(body: dict[str, Any], code: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_spec(RESPONSES, {"model": "m", **body})
    assert info.value.code == code


def test_fake_engine_answers_with_a_response_object() -> None:
    response, outcome = answer({"input": "hello", "instructions": "be brief", "max_output_tokens": 50})
    assert response.object == "response" and response.status == "completed" and response.output_text
    assert response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens == outcome.completion_tokens > 0
    assert response.usage.input_tokens == outcome.prompt_tokens > 0
    short, _ = answer({"input": "hello", "max_output_tokens": 1})
    assert short.status == "incomplete" and short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens"
    called, _ = answer({"input": "weather?", "tools": [GET], "tool_choice": "required"})
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" and c.call_id.startswith("call_") for c in calls)
    schema, _ = answer({"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}}}}})
    assert isinstance(__import__("json").loads(schema.output_text)["n"], int)


def test_a_responses_line_goes_through_the_line_parser() -> None:
    import orjson

    line = orjson.dumps({"custom_id": "a", "method": "POST", "url": RESPONSES,
                         "body": {"model": "m", "input": "hello"}})
    request = LineParser().parse(line, 1)
    assert isinstance(request, Request) and request.spec.endpoint == RESPONSES
    (outcome,) = FakeEngine(created=1).run([request])
    record = orjson.loads(result_line("job", request, outcome))
    assert record["response"]["body"]["object"] == "response"


@pytest.mark.parametrize("name", ["tools.jsonl", "responses.jsonl"])
def test_the_example_jobs_are_valid_and_answered(name: str) -> None:
    from pathlib import Path

    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    parser = LineParser()
    path = Path(__file__).resolve().parent.parent / "examples" / name
    requests = [parser.parse(raw, n) for n, raw in enumerate(path.read_bytes().splitlines(), 1)]
    assert requests and all(isinstance(r, Request) for r in requests), requests
    for outcome in FakeEngine(created=1).run(requests):  # type: ignore[arg-type]
        assert outcome.body is not None
        (Response if name == "responses.jsonl" else ChatCompletion).model_validate(outcome.body)


def test_a_response_carries_reasoning_and_calls_as_output_items() -> None:
    from openai.types.responses import Response

    from spoolbatch.format.bodies import Choice, tool_call
    from spoolbatch.format.responses import response

    choice = Choice(text="Checking.", finish_reason="tool_calls", completion_tokens=20, reasoning="They want weather.",
                    reasoning_tokens=5, tool_calls=[tool_call("call_1", "get_weather", '{"city": "Oslo"}')])
    body = {"model": "m", "input": "weather?", "tools": [GET], "reasoning": {"effort": "low"}}
    parsed = Response.model_validate(response(id="resp_1", model="m", created=1, choice=choice, prompt_tokens=7,
                                              body=body))
    assert [item.type for item in parsed.output] == ["reasoning", "message", "function_call"]
    reasoning = parsed.output[0]
    assert reasoning.type == "reasoning" and reasoning.content and reasoning.content[0].text == "They want weather."
    call = parsed.output[2]
    assert call.type == "function_call" and call.call_id == "call_1" and call.name == "get_weather"
    assert parsed.usage is not None and parsed.usage.output_tokens_details.reasoning_tokens == 5
    assert parsed.reasoning is not None and parsed.reasoning.effort == "low"
    assert parsed.tools[0].type == "function" and parsed.tools[0].name == "get_weather"
