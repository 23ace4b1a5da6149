"""vLLM's ``/v1/score`` and ``/v1/rerank`` lines, in the shapes vLLM's own batch runner accepts.

Score: ``queries`` + ``documents`` (or ``queries`` + ``items``, ``data_1`` + ``data_2``,
``text_1`` + ``text_2``), each a string or a list of strings; one query against N documents,
or N against N pairwise. Rerank: ``query``, ``documents``, ``top_n``. Text only. Answers are
vLLM's ``ScoreResponse`` (``data[i].score``) and ``RerankResponse`` (``results`` by relevance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spoolbatch.errors import RequestError
from spoolbatch.format.endpoints import RERANK, SCORE

_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))
_COMMON = {"model", "user", "use_activation"}
ALLOWED = {SCORE: _COMMON | {k for pair in _PAIRS for k in pair},
           RERANK: _COMMON | {"query", "documents", "top_n", "return_documents"}}


def _texts(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RequestError("invalid_value", f"'{name}' must be a string or a non-empty list of strings (text only)")


def pairs(url: str, body: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """(left texts, right texts, top_n) of a score or rerank body, with vLLM's 1-N / N-N rule."""
    unknown = sorted(set(body) - ALLOWED[url])
    if unknown:
        raise RequestError("unsupported_parameter", f"unsupported field(s) for {url}: {', '.join(unknown)}")
    if body.get("use_activation") not in (None, True):
        raise RequestError("unsupported_parameter", "'use_activation' false is not supported")
    top_n = 0
    left: tuple[str, ...]
    right: tuple[str, ...]
    if url == RERANK:
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise RequestError("missing_field", "'query' must be a non-empty string (text only)")
        left, right = (query,), _texts(body.get("documents"), "documents")
        top_n = body.get("top_n") or 0
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
            raise RequestError("invalid_value", "'top_n' must be a non-negative integer")
        if body.get("return_documents") is False:
            raise RequestError("unsupported_parameter", "'return_documents' false is not supported "
                               "(vLLM's rerank answer carries the documents)")
    else:
        for a, b in _PAIRS:
            if a in body and b in body:
                left, right = _texts(body[a], a), _texts(body[b], b)
                break
        else:
            raise RequestError("missing_field", "a score body needs 'queries' and 'documents' "
                               "(or queries/items, data_1/data_2, text_1/text_2)")
    if len(left) != 1 and len(left) != len(right):
        raise RequestError("invalid_value", f"{len(left)} queries cannot be paired with {len(right)} documents "
                           "(one query, or as many queries as documents)")
    return left, right, top_n


def pair_list(left: Sequence[str], right: Sequence[str]) -> tuple[list[str], list[str]]:
    """The N-N pairs (a single query repeated for each document)."""
    return (list(left) * len(right) if len(left) == 1 else list(left)), list(right)


def score_list(*, id: str, model: str, created: int, scores: Sequence[float], prompt_tokens: int) -> dict[str, Any]:
    """vLLM's ``ScoreResponse``."""
    return {"id": id, "object": "list", "created": created, "model": model,
            "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0}}


def rerank_list(*, id: str, model: str, documents: Sequence[str], scores: Sequence[float], top_n: int,
                prompt_tokens: int) -> dict[str, Any]:
    """vLLM's ``RerankResponse``: results by relevance, highest first, the first ``top_n`` (0: all)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_n:
        order = order[:top_n]
    return {"id": id, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            "results": [{"index": i, "document": {"text": documents[i]}, "relevance_score": float(scores[i])}
                        for i in order]}
