"""vLLM's outputs in OpenAI's shapes: completions and responses with their logprobs, and embeddings.

vLLM hands back ``RequestOutput``/``CompletionOutput`` objects whose logprobs are, per
generated token, a dict of token id to ``Logprob(logprob, rank, decoded_token)``. These
functions turn them into the bodies ``format.bodies`` builds, in OpenAI's two logprob
formats (chat's ``content`` list and the completions endpoint's parallel arrays). Nothing
here imports vLLM; ``decode`` is the tokenizer's, for tokens vLLM did not decode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from spoolbatch.format import bodies
from spoolbatch.format.endpoints import CHAT_LIKE, RESPONSES
from spoolbatch.format.types import Request

Decode = Callable[[list[int]], str]

# A logprob of -inf cannot be written as JSON; OpenAI's own floor is far above this.
LOGPROB_FLOOR = -9999.0


def generation_body(request: Request, output: Any, created: int, decode: Decode, *, prepared: Any = None,
                    tools: Any = None) -> dict[str, Any]:
    """The chat completion, text completion or response body for one finished ``RequestOutput``.

    ``prepared`` and ``tools`` (``vllm_tools``' ``Prepared`` and ``ChatTools``) are given for a
    request that went through vLLM's chat machinery: its choices are parsed there (reasoning,
    content, tool calls).
    """
    spec = request.spec
    chat = spec.endpoint in CHAT_LIKE
    choices = []
    for index, completion in enumerate(output.outputs):
        logprobs = None
        if spec.logprobs:
            logprobs = (chat_logprobs(completion, spec.top_logprobs, decode) if chat
                        else legacy_logprobs(completion, spec.top_logprobs, decode))
        if prepared is not None:
            choices.append(tools.choice(request, prepared, completion, index, logprobs))
            continue
        reason = "length" if completion.finish_reason == "length" else "stop"
        choices.append(bodies.Choice(text=completion.text, finish_reason=reason,
                                     completion_tokens=len(completion.token_ids), logprobs=logprobs))
    prompt_tokens = len(output.prompt_token_ids or ())
    if spec.endpoint == RESPONSES:
        from spoolbatch.format.responses import response

        return response(id=bodies.stable_id("resp_", spec.model, request.custom_id, str(request.line)),
                        model=spec.model, created=created, choice=choices[0], prompt_tokens=prompt_tokens,
                        body=request.body)
    id = bodies.stable_id("chatcmpl-" if chat else "cmpl-", spec.model, request.custom_id, str(request.line))
    if chat:
        return bodies.chat_completion(id=id, model=spec.model, created=created, choices=choices,
                                      prompt_tokens=prompt_tokens, reasoning=prepared is not None and tools.reasoning)
    return bodies.text_completion(id=id, model=spec.model, created=created, choices=choices,
                                  prompt_tokens=prompt_tokens)


def embedding_body(request: Request, results: Sequence[Any]) -> dict[str, Any]:
    """The embedding list body for one request's pooling outputs (one per input): the float32
    vectors as arrays, never as Python lists."""
    spec = request.spec
    vectors = [float32_vector(r.outputs) for r in results]
    tokens = sum(len(r.prompt_token_ids or ()) for r in results)
    return bodies.embedding_list(model=spec.model, vectors=vectors, prompt_tokens=tokens,
                                 encoding_format=spec.encoding_format)


def float32_vector(output: Any) -> Any:
    """A pooled vector as a float32 array: ``PoolingOutput.data`` (a tensor vLLM has moved to
    the CPU already; no copy when it is float32), or an ``EmbeddingOutput``'s list."""
    data = getattr(output, "data", None)
    if data is None:
        return output.embedding
    return data.detach().float().cpu().numpy() if hasattr(data, "numpy") else data


def _token_text(token_id: int, logprob: Any, decode: Decode) -> str:
    text = getattr(logprob, "decoded_token", None) if logprob is not None else None
    if text is None:
        text = decode([token_id])
    return str(text)


def _value(logprob: Any) -> float:
    if logprob is None:
        return LOGPROB_FLOOR
    value = float(logprob.logprob)
    return LOGPROB_FLOOR if math.isnan(value) or value < LOGPROB_FLOOR else value


def _ranked(position: dict[int, Any], k: int) -> list[tuple[int, Any]]:
    ordered = sorted(position.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30,
                                                      -kv[1].logprob))
    return ordered[:k]


def chat_logprobs(completion: Any, k: int, decode: Decode) -> dict[str, Any]:
    """OpenAI's chat format: ``{content: [{token, logprob, bytes, top_logprobs}]}``."""
    content = []
    for token_id, position in zip(completion.token_ids, completion.logprobs or (), strict=False):
        chosen = position.get(token_id)
        text = _token_text(token_id, chosen, decode)
        top = [{"token": (t := _token_text(tid, lp, decode)), "logprob": _value(lp), "bytes": list(t.encode())}
               for tid, lp in _ranked(position, k)]
        content.append({"token": text, "logprob": _value(chosen), "bytes": list(text.encode()),
                        "top_logprobs": top})
    return {"content": content, "refusal": None}


def legacy_logprobs(completion: Any, k: int, decode: Decode) -> dict[str, Any]:
    """The completions format: ``{tokens, token_logprobs, top_logprobs, text_offset}``."""
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    offset = 0
    for token_id, position in zip(completion.token_ids, completion.logprobs or (), strict=False):
        chosen = position.get(token_id)
        text = _token_text(token_id, chosen, decode)
        tokens.append(text)
        values.append(_value(chosen))
        tops.append({_token_text(tid, lp, decode): _value(lp) for tid, lp in _ranked(position, k)})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
