"""Function calling in a chat body: ``tools``, ``tool_choice``, ``parallel_tool_calls``, and
conversations that replay assistant ``tool_calls`` and ``tool`` results.

Checked here, engine-free, with OpenAI's rules; each engine decides how to honour them (vLLM:
structured output for ``required`` and a named function, its tool-call parser for ``auto``).
"""

from __future__ import annotations

from typing import Any

from spoolbatch.errors import RequestError

AUTO = "auto"
NONE = "none"
REQUIRED = "required"
_CHOICES = (NONE, AUTO, REQUIRED)


def tools(body: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The ``tools`` list, each ``{"type": "function", "function": {name, parameters...}}``."""
    value = body.get("tools")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise RequestError("invalid_value", "'tools' must be a non-empty list of function tools")
    seen: set[str] = set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise RequestError("unsupported_parameter", f"{where}: type {kind!r} is not supported (function only)")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise RequestError("invalid_value", f"{where}.function must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise RequestError("invalid_value", f"{where}.function.name must be a string of 1 to 64 characters")
        if name in seen:
            raise RequestError("invalid_value", f"{where}: function {name!r} is defined twice")
        seen.add(name)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise RequestError("invalid_value", f"{where}.function.parameters must be a JSON Schema object")
        unknown = set(fn) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise RequestError("unsupported_parameter", f"{where}.function: unsupported field(s) "
                               f"{', '.join(sorted(unknown))}")
    return tuple(value)


def tool_choice(body: dict[str, Any], defined: tuple[dict[str, Any], ...]) -> str | None:
    """``none``/``auto``/``required``, or the name of the function that must be called.

    Returns None when there are no tools. Without ``tool_choice``, OpenAI's default holds:
    ``auto`` when tools are given.
    """
    value = body.get("tool_choice")
    if not defined:
        if value not in (None, NONE):
            raise RequestError("invalid_value", "'tool_choice' needs 'tools'")
        return None
    if value is None:
        return AUTO
    if isinstance(value, str):
        if value not in _CHOICES:
            raise RequestError("invalid_value", f"'tool_choice' {value!r} is not one of {', '.join(_CHOICES)} "
                               "or a named function")
        return value
    name = named_choice(value)
    if name not in {t["function"]["name"] for t in defined}:
        raise RequestError("invalid_value", f"'tool_choice' names function {name!r}, which is not in 'tools'")
    return name


def named_choice(value: Any) -> str:
    """The function name of ``{"type": "function", "function": {"name": ...}}``."""
    fn = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise RequestError("invalid_value", "'tool_choice' must be 'none', 'auto', 'required' or "
                           '{"type": "function", "function": {"name": ...}}')
    return name


def parallel(body: dict[str, Any]) -> bool:
    """``parallel_tool_calls`` (OpenAI's default: true)."""
    value = body.get("parallel_tool_calls")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise RequestError("invalid_type", "'parallel_tool_calls' must be a boolean")
    return value


def assistant_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's replayed ``tool_calls``, checked and normalised."""
    if not isinstance(calls, list) or not calls:
        raise RequestError("invalid_value", f"{where}.tool_calls must be a non-empty list")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(fn, dict):
            raise RequestError("invalid_value", f"{at} must be {{\"id\", \"type\": \"function\", \"function\"}}")
        if not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str) \
                or not isinstance(fn.get("arguments"), str):
            raise RequestError("invalid_value", f"{at} needs a string 'id', function.name and function.arguments")
        out.append({"id": call["id"], "type": "function",
                    "function": {"name": fn["name"], "arguments": fn["arguments"]}})
    return out
