"""Prefix order: the order a chunk's generation requests go to the engine so that shared prompt prefixes meet.

vLLM's prefix cache reuses the KV blocks of a prompt prefix it computed while they are still
cached; batch files often interleave requests that share a long prefix (a rubric as the system
prompt, one document with many questions), so in file order the cache evicts a prefix before
its next use. Sorting by the prompt as the engine will read it (the model or adapter, the tools
and template settings the chat template puts first, then each message in order) puts requests
that share a prefix side by side, at every depth: a shared system prompt, then a shared first
user message under it, and so on. The sort is stable, so equal prompts keep their file order.

The key is the prompt's text, not its token ids: the worker has no tokenizer (the engine does,
maybe in another process), and text order groups the same prefixes as token order wherever
the prefix is whole messages or a common start of one. Results are still written in line order
(``SendPlan`` maps the answers back); only the engine sees this order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from spoolbatch.format.endpoints import CHAT_LIKE, GENERATION
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import SamplingSpec


def _text(content: Any) -> str:
    """A message's content as text in order (an image part by its JSON, which names its URL)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       else orjson.dumps(p, option=orjson.OPT_SORT_KEYS).decode() for p in content)
    return "" if content is None else orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()


def _parts(message: dict[str, Any]) -> tuple[str, ...]:
    """Role, content, then whatever else the template renders after it (tool calls, a tool call's id)."""
    rest = {k: v for k, v in message.items() if k not in ("role", "content")}
    if not rest:
        return str(message.get("role", "")), _text(message.get("content"))
    return (str(message.get("role", "")), _text(message.get("content")),
            orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode())


def prefix_key(spec: SamplingSpec) -> tuple[str, ...]:
    """The prompt as the engine reads it, front first, for sorting (generation endpoints).

    The model comes first (an adapter's cache is its own), then what a chat template renders
    before the messages (tools, template arguments, reasoning effort), then each message's role
    and text. Tuples compare element by element and strings character by character, so
    prompts that share a prefix, whole messages or the start of one, sort side by side.
    """
    if spec.endpoint in CHAT_LIKE:
        head = ""
        if spec.tools or spec.chat_template_kwargs or spec.reasoning_effort:
            head = orjson.dumps([spec.tools, spec.chat_template_kwargs, spec.reasoning_effort],
                                option=orjson.OPT_SORT_KEYS).decode()
        if not spec.rich:  # every message a plain {"role", "content": str} (the common case): the strings as they are
            return (spec.model, head, *[part for m in spec.messages for part in (m["role"], m["content"])])
        return (spec.model, head, *[part for m in spec.messages for part in _parts(m)])
    return (spec.model, "", spec.prompt)


def orderable(requests: Sequence[Request]) -> bool:
    """True when the engine would gain from prefix order: generation requests only (pooling has no prefix cache)."""
    return bool(requests) and all(r.spec.endpoint in GENERATION for r in requests)


def prefix_order(keys: Sequence[tuple[Any, ...]]) -> list[int]:
    """Indices of ``keys`` sorted so that shared prefixes are adjacent; equal keys keep their order."""
    return sorted(range(len(keys)), key=keys.__getitem__)


def cache_tokens(outcomes: Sequence[Outcome]) -> tuple[int, int]:
    """(prompt tokens, of which read from the prefix cache) over the outcomes whose engine reported it."""
    queries = hits = 0
    for o in outcomes:
        if o.cached_tokens is not None:
            queries += o.prompt_tokens
            hits += o.cached_tokens
    return queries, hits
