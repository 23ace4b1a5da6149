"""OpenAI's ``/v1/responses`` request, as the chat request it means, and the ``response`` answer.

A Responses body is turned into the same ``SamplingSpec`` a chat body gives (``instructions``
and ``input`` become messages, function tools become chat tools, ``text.format`` the
response format, ``reasoning.effort`` the reasoning effort), so every engine runs it as chat;
``response`` then shapes the chat answer as a ``response`` object with ``output`` items.
Fields that would change the answer and cannot be honoured are refused, never ignored.
"""

from __future__ import annotations

from typing import Any

from spoolbatch.errors import RequestError
from spoolbatch.format.bodies import Choice, stable_id
from spoolbatch.format.endpoints import REASONING_EFFORTS, RESPONSES

ALLOWED = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "text", "tools",
           "tool_choice", "parallel_tool_calls", "reasoning", "metadata", "store", "user", "stream",
           "truncation", "safety_identifier", "prompt_cache_key", "service_tier"}
_INPUT_ROLES = {"user", "system", "developer", "assistant"}


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that means the same as Responses ``body`` (checked on the way)."""
    unknown = sorted(set(body) - ALLOWED)
    if unknown:
        raise RequestError("unsupported_parameter", f"unsupported field(s) for {RESPONSES}: {', '.join(unknown)}")
    if body.get("stream"):
        raise RequestError("unsupported_parameter", "'stream' cannot be true in a batch")
    if body.get("truncation") not in (None, "disabled"):
        raise RequestError("unsupported_parameter", "'truncation' other than 'disabled' is not supported")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise RequestError("unsupported_parameter", "'service_tier' other than 'auto'/'default' is not supported")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    for key in ("temperature", "top_p", "parallel_tool_calls", "metadata", "store", "user"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    fmt = _text_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        choice = body["tool_choice"]
        if isinstance(choice, dict):
            if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
                raise RequestError("invalid_value", "'tool_choice' must be 'none', 'auto', 'required' or "
                                   '{"type": "function", "name": ...}')
            choice = {"type": "function", "function": {"name": choice["name"]}}
        chat["tool_choice"] = choice
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise RequestError("invalid_value", "'reasoning' must be an object")
        extra = set(reasoning) - {"effort", "summary", "generate_summary"}
        if extra or reasoning.get("summary") or reasoning.get("generate_summary"):
            raise RequestError("unsupported_parameter", "'reasoning' supports 'effort' only (no summaries)")
        if reasoning.get("effort") is not None:
            if reasoning["effort"] not in REASONING_EFFORTS:
                raise RequestError("invalid_value", f"reasoning.effort {reasoning['effort']!r} is not one of "
                                   f"{', '.join(REASONING_EFFORTS)}")
            chat["reasoning_effort"] = reasoning["effort"]
    return chat


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise RequestError("invalid_type", "'instructions' must be a string")
        out.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        if not value:
            raise RequestError("invalid_value", "'input' must not be empty")
        out.append({"role": "user", "content": value})
        return out
    if not isinstance(value, list) or not value:
        raise RequestError("missing_field", "'input' must be a non-empty string or a list of input items")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError("invalid_type", f"{where} must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _INPUT_ROLES:
                raise RequestError("invalid_value", f"{where}.role {role!r} is not one of {sorted(_INPUT_ROLES)}")
            out.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
                raise RequestError("invalid_value", f"{where}: a function_call needs string call_id, name, arguments")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") is not None:
                out[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
                raise RequestError("invalid_value", f"{where}: a function_call_output needs string call_id and output")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        else:
            raise RequestError("unsupported_content", f"{where}: item type {kind!r} is not supported "
                               "(message, function_call, function_call_output)")
    return out


def _content(content: Any, where: str) -> Any:
    """Input text parts as chat text parts (output_text too, for replayed assistant turns)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError("invalid_type", f"{where}.content must be a string or a list of parts")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            if part.get("detail", "auto") != "auto":
                raise RequestError("unsupported_parameter", f"{where}.content[{j}]: detail {part['detail']!r} "
                                   "is not supported (auto only)")
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise RequestError("unsupported_content", f"{where}.content[{j}]: part {kind!r} is not supported "
                               "(input_text, input_image with an image_url)")
    return parts


def _text_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or set(text) - {"format", "verbosity"} \
            or text.get("verbosity") not in (None, "medium"):
        raise RequestError("unsupported_parameter", "'text' supports 'format' only")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"),
                                                       "schema": fmt.get("schema"), "strict": fmt.get("strict")}}
    raise RequestError("invalid_value", f"text.format.type {kind!r} is not one of text, json_object, json_schema")


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RequestError("invalid_value", "'tools' must be a list of function tools")
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise RequestError("unsupported_parameter", f"tools[{i}]: type {kind!r} is not supported (function only)")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        extra = set(tool) - {"type", "name", "description", "parameters", "strict"}
        if extra:
            raise RequestError("unsupported_parameter", f"tools[{i}]: unsupported field(s) {', '.join(sorted(extra))}")
        out.append({"type": "function", "function": fn})
    return out


def response(*, id: str, model: str, created: int, choice: Choice, prompt_tokens: int,
             body: dict[str, Any]) -> dict[str, Any]:
    """A ``response`` object: a reasoning item, a message item, function_call items, and usage."""
    output: list[dict[str, Any]] = []
    if choice.reasoning:
        output.append({"type": "reasoning", "id": stable_id("rs_", id), "summary": [],
                       "content": [{"type": "reasoning_text", "text": choice.reasoning}], "status": "completed"})
    if choice.text or not choice.tool_calls:
        output.append({"type": "message", "id": stable_id("msg_", id), "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": choice.text, "annotations": [], "logprobs": []}]})
    for k, call in enumerate(choice.tool_calls or ()):
        fn = call["function"]
        output.append({"type": "function_call", "id": stable_id("fc_", id, str(k)), "call_id": call["id"],
                       "name": fn["name"], "arguments": fn["arguments"], "status": "completed"})
    incomplete = choice.finish_reason == "length"
    choice_value = body.get("tool_choice", "auto")
    tools = [{"type": "function", "name": t["name"], "parameters": t.get("parameters"),
              "strict": t.get("strict"), "description": t.get("description")}
             for t in body.get("tools") or ()]
    reasoning = body.get("reasoning") or {}
    return {
        "id": id, "object": "response", "created_at": created, "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "metadata": body.get("metadata") or {},
        "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
        "tool_choice": choice_value, "tools": tools,
        "text": body.get("text") or {"format": {"type": "text"}},
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "truncation": "disabled", "user": body.get("user"),
        "usage": {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": choice.completion_tokens,
                  "output_tokens_details": {"reasoning_tokens": choice.reasoning_tokens},
                  "total_tokens": prompt_tokens + choice.completion_tokens},
    }
