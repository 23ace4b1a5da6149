"""vLLM's ``SamplingParams`` for one request: checked against the loaded model, built once per set.

A request's own limits are checked here (an empty prompt, no room left in the context,
``logit_bias`` ids outside the vocabulary) and raise ``RequestError``, as does a parameter
vLLM refuses. Most lines of a job ask for the same parameters: one ``SamplingParams`` each
(vLLM copies it per request itself, as ``LLM.generate`` does with one params for many
prompts) saves its construction and checks, about 6 us a request on short completions at
GPU rates. vLLM is imported only when a params is built.
"""

from __future__ import annotations

from typing import Any

from spoolbatch.engines.failures import is_request_shaped
from spoolbatch.errors import RequestError
from spoolbatch.format.types import Request

CACHE_LIMIT = 4096  # distinct sets kept; per-request seeds or lengths would grow the table without end


def sampling_params(request: Request, prompt_len: int, *, max_model_len: int, vocab_size: int,
                    cache: dict[tuple[Any, ...], Any], overrides: dict[str, Any] | None = None) -> Any:
    """The ``SamplingParams`` for ``request``; raise ``RequestError`` when it cannot be honoured.

    ``cache`` holds the params of plain requests (no structured output, no ``overrides``) by
    what they were built from; ``overrides`` are parameters vLLM's parser set (structured
    output for a forced tool call).
    """
    spec = request.spec
    if prompt_len == 0:
        raise RequestError("invalid_value", "the prompt is empty")
    room = max_model_len - prompt_len
    if room < 1:
        raise RequestError("context_length_exceeded",
                           f"the prompt is {prompt_len} tokens; this model's maximum context length "
                           f"is {max_model_len} tokens (prompt plus at least 1 output token)")
    max_tokens = room if spec.max_tokens is None else min(spec.max_tokens, room)
    bad = [t for t in spec.logit_bias if not 0 <= t < vocab_size]
    if bad:
        raise RequestError("invalid_value", f"logit_bias token id(s) {bad[:5]} are outside the "
                                            f"vocabulary (0..{vocab_size - 1})")
    plain = spec.json_schema is None and not spec.json_object and not overrides
    if plain:
        key = (spec.n, spec.temperature, spec.top_p, max_tokens, spec.stop, spec.seed, spec.presence_penalty,
               spec.frequency_penalty, tuple(spec.logit_bias.items()), spec.logprobs, spec.top_logprobs)
        cached = cache.get(key)
        if cached is not None:
            return cached
    from vllm import SamplingParams

    kwargs: dict[str, Any] = dict(
        n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=max_tokens,
        stop=list(spec.stop) or None, seed=spec.seed, presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty, logit_bias=dict(spec.logit_bias) or None,
    )
    if spec.logprobs:
        kwargs["logprobs"] = spec.top_logprobs
    if spec.json_schema is not None or spec.json_object:
        from vllm.sampling_params import StructuredOutputsParams

        kwargs["structured_outputs"] = (StructuredOutputsParams(json=spec.json_schema)
                                        if spec.json_schema is not None
                                        else StructuredOutputsParams(json_object=True))
    kwargs.update(overrides or {})
    try:
        params = SamplingParams(**kwargs)
    except Exception as exc:
        if is_request_shaped(exc):
            raise RequestError("invalid_request", f"rejected by vLLM: {exc}") from None
        raise
    if plain:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = params
    return params
