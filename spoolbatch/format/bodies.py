"""Build response bodies exactly as OpenAI's API returns them, for every engine.

Engines produce the pieces (text, finish reason, token counts, vectors); these functions
give them OpenAI's shape, so the official ``openai`` types parse every body we write.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def stable_id(prefix: str, *parts: str) -> str:
    """A deterministic id (same inputs, same id), so a redone chunk writes identical lines."""
    digest = hashlib.blake2b("\x1f".join((prefix, *parts)).encode(), digest_size=12).hexdigest()
    return f"{prefix}{digest}"


@dataclass(slots=True)
class Choice:
    """One generated sequence: its text, why it stopped, and logprobs when they were asked for."""

    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: Any = None
    tool_calls: list[dict[str, Any]] | None = None  # chat: [{id, type, function: {name, arguments}}]
    reasoning: str | None = None  # chat: the reasoning text a reasoning parser split off
    reasoning_tokens: int = 0


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One entry of ``message.tool_calls``: arguments are a JSON string, as OpenAI sends them."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


def _message(c: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": c.text, "refusal": None}
    if c.tool_calls:
        message["tool_calls"] = c.tool_calls
        if not c.text:
            message["content"] = None  # OpenAI sends null content beside tool calls
    if c.reasoning is not None:
        message["reasoning"] = c.reasoning  # the field vLLM's server uses
    return message


# Plain loops, not comprehensions: these run once per answered request.
def chat_completion(*, id: str, model: str, created: int, choices: Sequence[Choice],
                    prompt_tokens: int, reasoning: bool = False) -> dict[str, Any]:
    """A ``chat.completion`` object; ``reasoning`` adds ``usage.completion_tokens_details``."""
    out, completion_tokens, reasoning_tokens = [], 0, 0
    for i, c in enumerate(choices):
        if c.tool_calls is None and c.reasoning is None:
            message = {"role": "assistant", "content": c.text, "refusal": None}
        else:
            message = _message(c)
        out.append({"index": i, "message": message, "logprobs": c.logprobs, "finish_reason": c.finish_reason})
        completion_tokens += c.completion_tokens
        reasoning_tokens += c.reasoning_tokens
    return {"id": id, "object": "chat.completion", "created": created, "model": model, "choices": out,
            "usage": _usage(prompt_tokens, completion_tokens, reasoning_tokens if reasoning else None),
            "system_fingerprint": None}


def text_completion(*, id: str, model: str, created: int, choices: Sequence[Choice],
                    prompt_tokens: int) -> dict[str, Any]:
    """A ``text_completion`` object."""
    out, completion_tokens = [], 0
    for i, c in enumerate(choices):
        out.append({"index": i, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason})
        completion_tokens += c.completion_tokens
    return {"id": id, "object": "text_completion", "created": created, "model": model, "choices": out,
            "usage": _usage(prompt_tokens, completion_tokens), "system_fingerprint": None}


def embedding_vector(vector: np.ndarray | Sequence[float], encoding_format: str = "float") -> Any:
    """One vector as OpenAI sends it: float32 values (an array ``result_line`` writes without a
    Python list, each value the shortest text that reads back as the same float32), or for
    ``base64`` the little-endian float32 bytes in base64."""
    import numpy as np

    v = np.ascontiguousarray(vector, dtype="<f4")  # no copy for a float32 row of the engine's output
    if encoding_format == "base64":
        return base64.b64encode(v.data).decode()
    return v


def embedding_list(*, model: str, vectors: Sequence[np.ndarray | Sequence[float]], prompt_tokens: int,
                   encoding_format: str = "float") -> dict[str, Any]:
    """An embedding ``list`` object; each vector as ``embedding_vector`` gives it."""
    data = []
    for i, v in enumerate(vectors):
        data.append({"object": "embedding", "index": i, "embedding": embedding_vector(v, encoding_format)})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
