"""Validate the OpenAI request fields of one body into an engine-neutral ``SamplingSpec``.

Every field OpenAI defines for the three endpoints is either honoured (copied into the
spec, which each engine maps to its own parameters) or refused with a ``RequestError``
naming the field. Nothing is silently ignored. Only metadata fields that do not change the
answer (``user``, ``metadata``, ``store``) are accepted without effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spoolbatch.errors import RequestError
from spoolbatch.format import tools as fn_tools
from spoolbatch.format.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, REASONING_EFFORTS, RESPONSES, SCORING
from spoolbatch.format.responses import chat_body
from spoolbatch.format.scoring import pairs

_METADATA = {"model", "user", "metadata", "store"}
_GENERATE = {"temperature", "top_p", "n", "stop", "seed", "presence_penalty",
             "frequency_penalty", "max_tokens", "logit_bias", "stream"}
_ALLOWED = {
    CHAT: _METADATA | _GENERATE | {"messages", "max_completion_tokens", "logprobs",
                                   "top_logprobs", "response_format", "stream_options", "tools",
                                   "tool_choice", "parallel_tool_calls", "reasoning_effort",
                                   "chat_template_kwargs"},
    COMPLETIONS: _METADATA | _GENERATE | {"prompt", "logprobs", "echo", "best_of", "suffix"},
    EMBEDDINGS: _METADATA | {"input", "encoding_format", "dimensions"},
}
_ROLES = {"system", "developer", "user", "assistant", "tool"}
_PLAIN_ROLES = {"system", "user", "assistant"}


@dataclass(slots=True)
class SamplingSpec:
    """The engine-neutral meaning of one request body."""

    endpoint: str
    model: str
    messages: tuple[dict[str, Any], ...] = ()
    prompt: str = ""
    inputs: tuple[str, ...] = ()
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    encoding_format: str = "float"
    # Score and rerank: ``inputs`` are the queries, paired with these documents.
    documents: tuple[str, ...] = ()
    top_n: int = 0
    # Function calling: the tools, and tool_choice as "none"/"auto"/"required" or a function name.
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # True when the messages hold more than role + text (replayed tool calls, tool results):
    # an engine renders them with its full chat renderer, not the plain fast path.
    rich: bool = False

    @property
    def forced_tool(self) -> bool:
        """True when the answer must be a tool call (``required`` or a named function)."""
        return self.tool_choice is not None and self.tool_choice not in (fn_tools.NONE, fn_tools.AUTO)
    dimensions: int | None = None  # embeddings: a Matryoshka model's shorter vector; engines refuse it otherwise


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError("invalid_type", f"'{key}' must be a number, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise RequestError("invalid_value", f"'{key}' must be between {lo} and {hi}, got {value}")
    return float(value)


def _integer(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError("invalid_type", f"'{key}' must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise RequestError("invalid_value", f"'{key}' must be between {lo} and {hi}, got {value}")
    return value


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (images only in user messages)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError("unsupported_content",
                                   f"{where}: content part {kind!r} is not supported (text only)")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError("invalid_type", f"{where}: 'content' must be a string or a list of text parts")


def _messages(body: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], bool]:
    """The messages, normalised, and whether any carries more than role and text."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("missing_field", "'messages' must be a non-empty list")
    for message in messages:
        if not (type(message) is dict and len(message) == 2 and type(message.get("content")) is str
                and message.get("role") in _PLAIN_ROLES):
            break
    else:
        return tuple(messages), False  # the common case: every message plain {"role", "content": str}
    out = []
    rich = False
    for i, message in enumerate(messages):
        if type(message) is dict and len(message) == 2 and type(message.get("content")) is str \
                and message.get("role") in _PLAIN_ROLES:
            out.append(message)  # the common case: {"role", "content": str}, nothing to convert
            continue
        built, plain = _message(message, f"messages[{i}]")
        out.append(built)
        rich = rich or not plain
    return tuple(out), rich


# What a message of each role carries besides role and content; any other key with a value is refused.
# ``name`` reaches the chat template as vLLM's renderer passes it (on every role); ``function_call`` is
# only there to be refused with its own message.
_MESSAGE_KEYS = {"system": {"name"}, "developer": {"name"}, "user": {"name"},
                 "assistant": {"name", "tool_calls", "function_call"}, "tool": {"name", "tool_call_id"}}
_BASE_KEYS = ("role", "content")
_EMPTY: tuple[Any, ...] = (None, [], {})


def _message(message: Any, where: str) -> tuple[dict[str, Any], bool]:
    """One message other than a plain {"role", "content": str}, checked and rebuilt; and whether it is still plain."""
    if not isinstance(message, dict):
        raise RequestError("invalid_type", f"{where} must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise RequestError("invalid_value", f"{where}.role {role!r} is not one of {sorted(_ROLES)}")
    carried = _MESSAGE_KEYS[role]
    # A key that holds nothing (null, [] or {}: a replayed answer's refusal, audio, annotations) is as absent.
    unknown = sorted(k for k, v in message.items() if v not in _EMPTY and k not in carried and k not in _BASE_KEYS)
    if unknown:
        raise RequestError("unsupported_parameter", f"{where}: {', '.join(unknown)} not supported for role {role!r} "
                           f"(it may carry role, content, {', '.join(sorted(carried - {'function_call'}))})")
    if message.get("function_call"):
        raise RequestError("unsupported_parameter", f"{where}: 'function_call' is deprecated and not "
                           "supported; use 'tool_calls'")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise RequestError("invalid_type", f"{where}.name must be a string")
    built: dict[str, Any]
    plain = False
    if role == "assistant" and message.get("tool_calls"):
        content = message.get("content")
        built = {"role": "assistant", "content": "" if content is None else _text(content, where),
                 "tool_calls": fn_tools.assistant_calls(message["tool_calls"], where)}
    elif role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise RequestError("missing_field", f"{where}: a tool message needs a string 'tool_call_id'")
        built = {"role": "tool", "content": _text(message.get("content", ""), where), "tool_call_id": call_id}
    else:
        content = message.get("content", "")
        if role == "user" and isinstance(content, list) \
                and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            built = {"role": "user", "content": _image_parts(content, where)}
        else:
            built = {"role": "system" if role == "developer" else role, "content": _text(content, where)}
            plain = True
    if name is not None:
        built["name"] = name  # the template reads it (vLLM's renderer passes it on): not the plain path
        plain = False
    return built, plain


def _image_parts(content: list[Any], where: str) -> list[dict[str, Any]]:
    """Text and ``image_url`` parts, checked for shape (the engine reads and checks the images)."""
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
            continue
        if kind != "image_url":
            raise RequestError("unsupported_content", f"{where}.content[{j}]: part {kind!r} is not supported "
                               "(text and image_url)")
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(image, dict) or not isinstance(url, str) or not url:
            raise RequestError("invalid_value", f"{where}.content[{j}].image_url.url must be a string")
        if image.get("detail", "auto") != "auto":
            raise RequestError("unsupported_parameter", f"{where}.content[{j}]: image_url.detail "
                               f"{image['detail']!r} is not supported (auto only)")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        return tuple(stop)
    raise RequestError("invalid_value", "'stop' must be a string or a list of up to 4 strings")


def _response_format(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    fmt = body.get("response_format")
    if fmt is None:
        return None, False
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None, False
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt.get("json_schema"), dict) else None
        if not isinstance(schema, dict):
            raise RequestError("invalid_value", "response_format.json_schema.schema must be an object")
        return schema, False
    raise RequestError("invalid_value", f"response_format.type {kind!r} is not one of text, json_object, json_schema")


_CHAT_EXTRAS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "chat_template_kwargs"})


def _chat_extras(body: dict[str, Any]) -> dict[str, Any]:
    """Tools, reasoning effort and chat template arguments, checked (only when present)."""
    defined = fn_tools.tools(body)
    out: dict[str, Any] = {"tools": defined, "tool_choice": fn_tools.tool_choice(body, defined),
                           "parallel_tool_calls": fn_tools.parallel(body)}
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise RequestError("invalid_value", f"'reasoning_effort' {effort!r} is not one of "
                               f"{', '.join(REASONING_EFFORTS)}")
        out["reasoning_effort"] = effort
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise RequestError("invalid_value", "'chat_template_kwargs' must be an object")
        out["chat_template_kwargs"] = dict(kwargs)
    return out


def _embedding_inputs(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("input")
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise RequestError("invalid_value", "'input' must be a non-empty string or a list of non-empty strings")


def _reject_unknown(url: str, body: dict[str, Any]) -> None:
    if body.keys() <= _ALLOWED[url] and not body.get("stream"):
        return  # the hot path: no set built
    unknown = sorted(set(body) - _ALLOWED[url])
    if unknown:
        raise RequestError("unsupported_parameter",
                           f"unsupported field(s) for {url}: {', '.join(unknown)}")
    if body.get("stream"):
        raise RequestError("unsupported_parameter", "'stream' cannot be true in a batch")


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("missing_field", "'model' must be a non-empty string")
    return model


def parse_spec(url: str, body: dict[str, Any]) -> SamplingSpec:
    """Check every field of ``body`` for ``url``; raise ``RequestError`` on the first refusal."""
    if url == RESPONSES:
        spec = parse_spec(CHAT, chat_body(body))
        spec.endpoint = RESPONSES
        return spec
    if url in SCORING:
        left, right, top_n = pairs(url, body)
        return SamplingSpec(endpoint=url, model=_model(body), inputs=left, documents=right, top_n=top_n)
    _reject_unknown(url, body)
    model = _model(body)
    if url == EMBEDDINGS:
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise RequestError("invalid_value", "'encoding_format' must be 'float' or 'base64'")
        # Whether the model can shorten its vectors is the engine's to say, per line.
        dimensions = _integer(body, "dimensions", 1, 1 << 20)
        return SamplingSpec(endpoint=url, model=model, inputs=_embedding_inputs(body), encoding_format=encoding,
                            dimensions=dimensions)

    common = _generation_fields(url, body)
    common.update(endpoint=url, model=model)
    if url == CHAT:
        max_tokens = common.pop("max_completion_tokens", None)
        if max_tokens is None:
            max_tokens = common.pop("max_tokens", None)
        else:
            common.pop("max_tokens", None)
        logprobs = body.get("logprobs") or False
        if not isinstance(logprobs, bool):
            raise RequestError("invalid_type", "'logprobs' must be a boolean for chat completions")
        if common.get("top_logprobs") and not logprobs:
            raise RequestError("invalid_value", "'top_logprobs' needs 'logprobs': true")
        schema, json_object = _response_format(body)
        messages, rich = _messages(body)
        extras = _chat_extras(body) if body.keys() & _CHAT_EXTRAS else {}
        if extras.get("tool_choice") not in (None, fn_tools.NONE, fn_tools.AUTO) \
                and (schema is not None or json_object):
            raise RequestError("unsupported_parameter", "'response_format' cannot be combined with a "
                               "'tool_choice' that forces a tool call (the call's arguments are the format)")
        return SamplingSpec(messages=messages, max_tokens=max_tokens, logprobs=logprobs, rich=rich,
                            json_schema=schema, json_object=json_object, **extras, **common)
    # completions
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("invalid_value", "'prompt' must be a string (one prompt per batch line)")
    if body.get("echo"):
        raise RequestError("unsupported_parameter", "'echo' is not supported")
    if body.get("suffix"):
        raise RequestError("unsupported_parameter", "'suffix' is not supported")
    best_of = common.pop("best_of", None)
    if best_of is not None and best_of != common.get("n", 1):
        raise RequestError("unsupported_parameter", "'best_of' other than 'n' is not supported")
    top = _integer(body, "logprobs", 0, 5)
    max_tokens = common.pop("max_tokens", None)
    return SamplingSpec(prompt=prompt, max_tokens=16 if max_tokens is None else max_tokens,
                        logprobs=top is not None, top_logprobs=top or 0, **common)


# Range-checked fields, looked at only when present (the hot path of every line).
_NUMBERS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0),
            "frequency_penalty": (-2.0, 2.0)}
_INTEGERS = {"n": (1, 128), "seed": (-(2**63), 2**63 - 1), "max_tokens": (1, 1 << 30),
             "max_completion_tokens": (1, 1 << 30), "top_logprobs": (0, 20), "best_of": (1, 128)}


def _generation_fields(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields present in ``body``, checked; absent ones keep SamplingSpec's defaults."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if value is None:
            continue
        kind = type(value)
        if key in _NUMBERS:
            lo, hi = _NUMBERS[key]
            # plain in-range numbers inline; anything else through _number, which words the refusal
            out[key] = float(value) if (kind is float or kind is int) and lo <= value <= hi \
                else _number(body, key, 0.0, lo, hi)
        elif key in _INTEGERS:
            if key == "top_logprobs" and url != CHAT:
                continue
            ilo, ihi = _INTEGERS[key]
            out[key] = value if kind is int and ilo <= value <= ihi else _integer(body, key, ilo, ihi)
        elif key == "stop":
            out["stop"] = _stop(body)
        elif key == "logit_bias":
            try:
                out["logit_bias"] = {int(k): float(v) for k, v in dict(value).items()}
            except (TypeError, ValueError):
                raise RequestError("invalid_value", "'logit_bias' must map token ids to numbers") from None
    if out.get("top_p") == 0.0:
        raise RequestError("invalid_value", "'top_p' must be greater than 0")
    return out
