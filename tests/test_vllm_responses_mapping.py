"""The hand mapping of ``/v1/responses`` bodies, checked against vLLM's own Responses server code.

For the same body: the chat messages must match what vLLM's ``construct_input_messages``
builds, the tools what its ``construct_tool_dicts`` builds, and the sampling parameters what
its ``ResponsesRequest.to_sampling_params`` gives. No model is loaded.
"""

from __future__ import annotations

from typing import Any

import pytest

from spoolbatch.format.endpoints import RESPONSES
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec

pytestmark = pytest.mark.vllm

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
TOOL = {"type": "function", "name": "get_weather", "description": "weather", "parameters": SCHEMA, "strict": True}
BODIES: list[dict[str, Any]] = [
    {"input": "hello", "instructions": "be brief", "max_output_tokens": 20, "temperature": 0.3, "top_p": 0.9},
    {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi "},
                                            {"type": "input_text", "text": "there"}]},
               {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "weather?"}],
     "text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA, "strict": True}}},
    {"input": [{"role": "user", "content": "weather in Oslo and Rome?"},
               {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
               {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
               {"type": "function_call_output", "call_id": "c1", "output": "rain"},
               {"type": "function_call_output", "call_id": "c2", "output": "sun"}],
     "tools": [TOOL], "tool_choice": "auto", "max_output_tokens": 500},
    {"input": "x", "text": {"format": {"type": "json_object"}}},
]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content or ""


def _normal(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        calls = [{"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in m.get("tool_calls") or ()]
        out.append({"role": m["role"], "content": _text(m.get("content")), "tool_calls": calls,
                    "tool_call_id": m.get("tool_call_id")})
    return out


@pytest.mark.parametrize("body", BODIES)
def test_responses_mapping_matches_vllms_server(body: dict[str, Any]) -> None:
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.openai.responses.utils import construct_input_messages, construct_tool_dicts

    from spoolbatch.engines.vllm_engine import VllmEngine

    body = {"model": "m", **body}
    spec = parse_spec(RESPONSES, body)
    theirs = ResponsesRequest.model_validate(body)
    expected = construct_input_messages(request_instructions=theirs.instructions, request_input=theirs.input)
    assert _normal(list(spec.messages)) == _normal([dict(m) for m in expected])

    tools = construct_tool_dicts(theirs.tools, theirs.tool_choice) or []
    assert [t["function"]["name"] for t in spec.tools] == [t["function"]["name"] for t in tools]
    assert [t["function"].get("parameters") for t in spec.tools] == [t["function"]["parameters"] for t in tools]

    engine = VllmEngine()
    engine.max_model_len, engine.vocab_size = 128, 512  # what sampling_params checks against; no model
    prompt_len = 10
    ours = engine.sampling_params(Request("a", 1, RESPONSES, body, spec), prompt_len)
    vllm = theirs.to_sampling_params(engine.max_model_len - prompt_len, {})
    for field in ("temperature", "top_p", "max_tokens"):
        assert getattr(ours, field) == pytest.approx(getattr(vllm, field)), field
    so, vo = ours.structured_outputs, vllm.structured_outputs
    assert (so is None) == (vo is None)
    if so is not None:
        assert so.json == vo.json and bool(so.json_object) == bool(vo.json_object)
