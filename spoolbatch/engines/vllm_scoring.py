"""``/v1/score`` and ``/v1/rerank`` on vLLM's offline scoring, ``LLM.score``.

A cross-encoder (a sequence classifier with one label) scores each pair in one pass; an
embedding model scores a pair by the cosine similarity of its two embeddings: vLLM picks the
way from the model. The pairs of a whole chunk go through one ``score`` call and are split
back per request; a call that fails for a request-shaped reason is halved until the culprit
is alone (the engine's ``isolated``), so one bad line never fails its chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from spoolbatch.format import bodies
from spoolbatch.format.endpoints import RERANK
from spoolbatch.format.scoring import pair_list, rerank_list, score_list
from spoolbatch.format.types import Outcome, Request


class Offline(Protocol):
    """What scoring needs of the engine (``VllmEngine.isolated``): an offline call on its loaded ``LLM``."""

    def isolated(self, items: Sequence[Any], call: Callable[[Any, Sequence[Any]], list[Any]]) -> list[Any]: ...


def run_scores(engine: Offline, group: Sequence[Request], created: int) -> list[Outcome]:
    """Answer score and rerank requests with ``engine``'s loaded pooling model (a ``VllmEngine``)."""
    pairs = [pair_list(r.spec.inputs, r.spec.documents) for r in group]

    def call(llm: Any, indexes: Sequence[int]) -> list[Any]:
        left = [q for i in indexes for q in pairs[i][0]]
        right = [d for i in indexes for d in pairs[i][1]]
        flat = llm.score(left, right, use_tqdm=False)
        if len(flat) != len(left):
            raise ValueError(f"vLLM scored {len(flat)} of {len(left)} pairs")
        out, at = [], 0
        for i in indexes:
            count = len(pairs[i][0])
            out.append(flat[at:at + count])
            at += count
        return out

    outcomes = []
    for request, result in zip(group, engine.isolated(list(range(len(group))), call), strict=True):
        if isinstance(result, Outcome):
            outcomes.append(result)
            continue
        failed = next((r.error for r in result if getattr(r, "error", None) is not None), None)
        if failed is not None:
            outcomes.append(Outcome.fail("invalid_request", f"vLLM could not score this request: {failed}"))
            continue
        outcomes.append(Outcome.ok(_body(request, result, created)))
    return outcomes


def _body(request: Request, result: Sequence[Any], created: int) -> dict[str, Any]:
    spec = request.spec
    scores = [float(r.outputs.score) for r in result]
    tokens = sum(len(r.prompt_token_ids or ()) for r in result)
    id = bodies.stable_id("score-" if spec.endpoint != RERANK else "rerank-", spec.model, request.custom_id,
                          str(request.line))
    if spec.endpoint == RERANK:
        return rerank_list(id=id, model=spec.model, documents=spec.documents, scores=scores, top_n=spec.top_n,
                           prompt_tokens=tokens)
    return score_list(id=id, model=spec.model, created=created, scores=scores, prompt_tokens=tokens)
