"""De-duplication: a deterministic request repeated in a chunk goes to the engine once.

Two lines are the same request when their bodies are identical (everything but
``custom_id``; the job has one endpoint). Only a deterministic request is shared: greedy
(``temperature`` 0) or seeded (``seed`` given), with one choice (``n`` 1). OpenAI's default
temperature is 1, so a body without ``temperature`` and ``seed`` samples and is answered on its
own. Embeddings, score and rerank do not sample: identical bodies are always the same request.

Each copy gets the answer with its own response id (derived from the first one's id and the
copy's custom_id and line, so a redone chunk writes the same lines); the batch line's own id
comes from its custom_id as for every line.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import orjson

from spoolbatch.format.bodies import stable_id
from spoolbatch.format.endpoints import GENERATION
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import SamplingSpec


def deterministic(spec: SamplingSpec) -> bool:
    """True when the same body always gets the same answer: greedy or seeded, one choice (or no sampling)."""
    if spec.endpoint not in GENERATION:
        return True
    return spec.n == 1 and (spec.temperature == 0 or spec.seed is not None)


def firsts(requests: Sequence[Request], keys: Sequence[Hashable]) -> list[int]:
    """For each request, the index of the first request of the chunk with the same body, if it may share its answer.

    ``keys`` are cheap keys (the prompt) that equal bodies share; only a deterministic request
    whose key another deterministic request shares has its whole body compared (in a canonical
    serialisation), so a chunk of distinct prompts costs one dictionary pass.
    """
    first = list(range(len(requests)))
    candidates: dict[Hashable, list[int]] = {}
    for i, request in enumerate(requests):
        if deterministic(request.spec):
            candidates.setdefault(keys[i], []).append(i)
    for group in candidates.values():
        if len(group) < 2:
            continue
        seen: dict[bytes, int] = {}
        for i in group:
            body = orjson.dumps(requests[i].body, option=orjson.OPT_SORT_KEYS)
            first[i] = seen.setdefault(body, i)
    return first


def own_answer(outcome: Outcome, request: Request) -> Outcome:
    """``outcome`` (another line's answer to the same body) as ``request``'s own: its response id is its own."""
    body = outcome.body
    if body is None or not isinstance(body.get("id"), str):
        return outcome  # a failure, or a body without an id (embeddings): nothing of its own to give
    given = body["id"]
    prefix = given[:max(given.rfind("-"), given.rfind("_")) + 1]  # "chatcmpl-", "cmpl-", "resp_", "score-"
    own = {**body, "id": stable_id(prefix, given, request.custom_id, str(request.line))}
    return Outcome(body=own, prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens)
