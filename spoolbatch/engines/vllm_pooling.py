"""Embeddings on vLLM's pooling runner: what each request puts into the engine, and its answer.

Each input of an embeddings request is tokenized once, checked against the context, and
becomes one engine request with ``PoolingParams`` (``dimensions`` only for a Matryoshka
model), so a chunk of embeddings is enqueued like a chunk of generation and the next one
can be in the engine before this one is collected (``VllmEngine.submit``). The finished
inputs of a request become one embedding list, the engine's float32 vectors as arrays
(``vllm_output.embedding_body``). vLLM is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spoolbatch.engines.vllm_output import embedding_body
from spoolbatch.errors import RequestError
from spoolbatch.format.types import Outcome, Request


def pooling_inputs(request: Request, tokenizer: Any, max_model_len: int, *,
                   matryoshka: bool) -> list[tuple[Any, Any]]:
    """The engine's (prompt, params) for each input of ``request``; ``RequestError`` when it cannot run."""
    from vllm import PoolingParams
    from vllm.inputs import TokensPrompt

    spec = request.spec
    if spec.dimensions is not None and not matryoshka:
        raise RequestError("unsupported_parameter", f"model {spec.model!r} cannot shorten its "
                           "embeddings (not a Matryoshka model): leave 'dimensions' out")
    inputs = []
    for n, text in enumerate(spec.inputs):
        ids = tokenizer.encode(text)
        if len(ids) > max_model_len:
            raise RequestError("context_length_exceeded", f"input[{n}] is {len(ids)} tokens; this model's "
                               f"maximum context length is {max_model_len} tokens")
        inputs.append((TokensPrompt(prompt_token_ids=ids), PoolingParams(task="embed", dimensions=spec.dimensions)))
    return inputs


def embedding_outcome(request: Request, outputs: Sequence[Any]) -> Outcome:
    """The answer to ``request`` from its finished inputs' pooling outputs, in input order."""
    failed = next((o.error for o in outputs if getattr(o, "error", None) is not None), None)
    if failed is not None:
        return Outcome.fail("invalid_request", f"rejected by vLLM: {failed}")
    try:
        return Outcome.ok(embedding_body(request, outputs))
    except Exception as exc:  # a body we cannot build fails that request alone
        return Outcome.fail("internal_error", f"{type(exc).__name__}: {exc}")
