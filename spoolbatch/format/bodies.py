"""Build response bodies exactly as OpenAI's API returns them, for every engine.

Engines produce the pieces (text, finish reason, token counts, vectors); these functions
give them OpenAI's shape, so the official ``openai`` types parse every body we write.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# Plain loops, not comprehensions: these run once per answered request.
def chat_completion(*, id: str, model: str, created: int, choices: Sequence[Choice],
                    prompt_tokens: int) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    out, completion_tokens = [], 0
    for i, c in enumerate(choices):
        out.append({"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": c.logprobs, "finish_reason": c.finish_reason})
        completion_tokens += c.completion_tokens
    return {"id": id, "object": "chat.completion", "created": created, "model": model, "choices": out,
            "usage": _usage(prompt_tokens, completion_tokens), "system_fingerprint": None}


def text_completion(*, id: str, model: str, created: int, choices: Sequence[Choice],
                    prompt_tokens: int) -> dict[str, Any]:
    """A ``text_completion`` object."""
    out, completion_tokens = [], 0
    for i, c in enumerate(choices):
        out.append({"index": i, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason})
        completion_tokens += c.completion_tokens
    return {"id": id, "object": "text_completion", "created": created, "model": model, "choices": out,
            "usage": _usage(prompt_tokens, completion_tokens), "system_fingerprint": None}


def embedding_list(*, model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int,
                   encoding_format: str = "float") -> dict[str, Any]:
    """An embedding ``list`` object; ``base64`` packs little-endian float32 as OpenAI does."""
    def encode(vector: Sequence[float]) -> Any:
        if encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return [float(x) for x in vector]

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
