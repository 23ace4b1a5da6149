"""A request's prompt tokens estimated before any tokenizer runs: what a project's token quota counts.

Submit cannot load the model's tokenizer (commands never import the engine), so it counts the
characters of the text a request sends and takes OpenAI's rule of thumb, about 4 characters a
token, rounded up per request. Names, roles, ids, URLs and images are not prompt text.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
# Keys whose string values are not text the model reads as its prompt.
_NOT_TEXT = frozenset({"model", "role", "type", "name", "id", "call_id", "tool_call_id", "url", "image_url",
                       "detail", "encoding_format", "user", "reasoning_effort", "tool_choice", "service_tier",
                       "format", "effort", "truncation", "stop"})
# Request fields that shape the answer and carry no prompt.
_SKIPPED = frozenset({"metadata", "logit_bias", "response_format", "text", "reasoning", "chat_template_kwargs"})


def _chars(value: Any, key: str = "") -> int:
    if isinstance(value, str):
        return 0 if key in _NOT_TEXT or value.startswith("data:") else len(value)
    if isinstance(value, dict):
        return sum(_chars(v, k) for k, v in value.items() if k not in _SKIPPED)
    if isinstance(value, list):
        return sum(_chars(v, key) for v in value)
    return 0


def prompt_tokens(body: dict[str, Any]) -> int:
    """About how many prompt tokens a request's ``body`` sends (at least 1)."""
    return max(1, -(-_chars(body) // CHARS_PER_TOKEN))
