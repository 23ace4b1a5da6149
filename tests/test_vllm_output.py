"""vLLM's outputs in OpenAI's shapes, on stand-ins shaped like vLLM's output objects (no model)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from spoolbatch.engines.vllm_output import LOGPROB_FLOOR, embedding_body, generation_body
from spoolbatch.format.endpoints import CHAT, COMPLETIONS, EMBEDDINGS
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec

VOCAB = {1: "Hel", 2: "lo", 3: "!", 4: " there"}


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def lp(value: float, rank: int | None, text: str | None = None) -> Any:
    return SimpleNamespace(logprob=value, rank=rank, decoded_token=text)


def request(url: str, body: dict[str, Any]) -> Request:
    return Request(custom_id="c1", line=7, url=url, body=body, spec=parse_spec(url, body))


def output(token_ids: list[int], logprobs: list[dict[int, Any]] | None, finish: str = "stop") -> Any:
    completion = SimpleNamespace(text=decode(token_ids), token_ids=token_ids, finish_reason=finish, logprobs=logprobs)
    return SimpleNamespace(outputs=[completion], prompt_token_ids=[9, 9, 9])


POSITIONS = [{1: lp(-0.1, 1, "Hel"), 4: lp(-2.5, 2)},
             {2: lp(float("-inf"), 3), 3: lp(-0.2, 1, "!"), 4: lp(float("nan"), 2, " there")}]


def test_chat_body_with_logprobs_in_chat_format() -> None:
    req = request(CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                         "top_logprobs": 2})
    body = generation_body(req, output([1, 2], POSITIONS, finish="length"), 123, decode)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["created"] == 123
    (choice,) = body["choices"]
    assert choice["message"]["content"] == "Hello" and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    first, second = choice["logprobs"]["content"]
    assert first == {"token": "Hel", "logprob": -0.1, "bytes": list(b"Hel"),
                     "top_logprobs": [{"token": "Hel", "logprob": -0.1, "bytes": list(b"Hel")},
                                      {"token": " there", "logprob": -2.5, "bytes": list(b" there")}]}
    # -inf and NaN are written as the floor (JSON has neither); ranks order the top list
    assert second["token"] == "lo" and second["logprob"] == LOGPROB_FLOOR
    assert [(t["token"], t["logprob"]) for t in second["top_logprobs"]] == [("!", -0.2), (" there", LOGPROB_FLOOR)]


def test_completion_body_with_logprobs_in_the_completions_format() -> None:
    req = request(COMPLETIONS, {"model": "m", "prompt": "x", "logprobs": 1})
    body = generation_body(req, output([1, 2], POSITIONS), 5, decode)
    (choice,) = body["choices"]
    assert body["object"] == "text_completion" and choice["text"] == "Hello" and choice["finish_reason"] == "stop"
    assert choice["logprobs"] == {"tokens": ["Hel", "lo"], "token_logprobs": [-0.1, LOGPROB_FLOOR],
                                  "top_logprobs": [{"Hel": -0.1}, {"!": -0.2}], "text_offset": [0, 3]}


def test_no_logprobs_unless_asked_and_the_id_is_stable() -> None:
    req = request(CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    body = generation_body(req, output([3], None), 1, decode)
    assert body["choices"][0]["logprobs"] is None
    assert generation_body(req, output([3], None), 2, decode)["id"] == body["id"]


def test_embedding_body() -> None:
    req = request(EMBEDDINGS, {"model": "e", "input": ["a", "b"]})
    # A pooling output's float32 data (as the engine's pipelined path gets it), or an embed() list.
    results = [SimpleNamespace(outputs=SimpleNamespace(data=np.array([0.5, 0.25], dtype=np.float32)),
                               prompt_token_ids=[1, 2]),
               SimpleNamespace(outputs=SimpleNamespace(embedding=[1.0, 0.0]), prompt_token_ids=[3])]
    body = embedding_body(req, results)
    assert [d["embedding"].dtype for d in body["data"]] == [np.float32, np.float32]
    assert [d["embedding"].tolist() for d in body["data"]] == [[0.5, 0.25], [1.0, 0.0]]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3} and body["model"] == "e"
