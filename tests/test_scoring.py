"""``/v1/score`` and ``/v1/rerank`` lines: shapes, refusals, and the fake engine's answers.

(vLLM's own response models and the real engine are in test_vllm_scoring.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from spoolbatch.engines.fake import FakeEngine
from spoolbatch.errors import RequestError
from spoolbatch.format.endpoints import RERANK, SCORE
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec

DOCS = ["a lazy dog", "the quick brown fox", "json"]


@pytest.mark.parametrize("keys", [("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
                                  ("text_1", "text_2")])
def test_every_score_shape_of_vllms_batch_runner(keys: tuple[str, str]) -> None:
    spec = parse_spec(SCORE, {"model": "m", keys[0]: "fox", keys[1]: DOCS})
    assert spec.inputs == ("fox",) and spec.documents == tuple(DOCS)
    spec = parse_spec(SCORE, {"model": "m", keys[0]: ["a", "b"], keys[1]: ["c", "d"]})
    assert spec.inputs == ("a", "b") and spec.documents == ("c", "d")


@pytest.mark.parametrize(("url", "body", "code"), [
    (SCORE, {}, "missing_field"),
    (SCORE, {"queries": ["a", "b"], "documents": ["c", "d", "e"]}, "invalid_value"),
    (SCORE, {"queries": "a", "documents": []}, "invalid_value"),
    (SCORE, {"queries": "a", "documents": [{"type": "image_url"}]}, "invalid_value"),
    (SCORE, {"queries": "a", "documents": "b", "truncate_prompt_tokens": 5}, "unsupported_parameter"),
    (RERANK, {"documents": DOCS}, "missing_field"),
    (RERANK, {"query": "a", "documents": DOCS, "top_n": -1}, "invalid_value"),
    (RERANK, {"query": "a", "documents": DOCS, "return_documents": False}, "unsupported_parameter"),
])
def test_what_cannot_be_scored_is_refused(url: str, body: dict[str, Any], code: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_spec(url, {"model": "m", **body})
    assert info.value.code == code


def run(url: str, **body: Any) -> dict[str, Any]:
    body = {"model": "m", **body}
    (outcome,) = FakeEngine(created=1).run([Request("a", 1, url, body, parse_spec(url, body))])
    assert outcome.body is not None and outcome.prompt_tokens > 0
    return outcome.body


def test_fake_engine_scores_and_reranks() -> None:
    score = run(SCORE, queries="the quick fox", documents=DOCS)
    assert score["object"] == "list" and [d["index"] for d in score["data"]] == [0, 1, 2]
    rerank = run(RERANK, query="the quick fox", documents=DOCS, top_n=2)
    assert len(rerank["results"]) == 2
    by_index = {d["index"]: d["score"] for d in score["data"]}
    best = max(by_index, key=lambda i: by_index[i])
    assert rerank["results"][0]["index"] == best and rerank["results"][0]["document"]["text"] == DOCS[best]
    assert rerank["results"][0]["relevance_score"] >= rerank["results"][1]["relevance_score"]
    assert len(run(RERANK, query="q", documents=DOCS)["results"]) == 3  # top_n 0: all
