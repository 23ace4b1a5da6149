"""The fake engine: deterministic, in-process, no model; for dry runs, demos and tests.

Its answers are derived from the request alone (a hash of the prompt picks the words), so
the same request always gets the same body. Completion tokens are whitespace words; prompt
tokens are about four characters each. A per-request ``latency`` (seconds) makes chunks take
real time, for crash and status tests.
The model name is taken from the request: any model "loads". Its embeddings are float32
unit vectors of ``EMBEDDING_DIM`` values; it honours ``dimensions`` up to that size as a
Matryoshka model does (the first values, normalised again) and refuses more, per line.

LoRA adapters (``engines.adapters``): a generation line may name an adapter of the loaded
model; its folder is checked as the real engine would load it (a broken one fails its lines,
``adapter_not_available``) and its answer is derived from the adapter's name too, so each
adapter answers a prompt differently. Any other name is answered as the loaded model (the
line parser refuses names a job may not use, ``model_not_found``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from spoolbatch.engines.adapters import Adapter, AdapterCatalog, check_adapter
from spoolbatch.engines.media import MediaPolicy, has_images, resolve_images
from spoolbatch.errors import RequestError
from spoolbatch.format import tools as fn_tools
from spoolbatch.format.bodies import Choice, chat_completion, embedding_list, text_completion, tool_call
from spoolbatch.format.endpoints import CHAT, CHAT_LIKE, EMBEDDINGS, RERANK, RESPONSES, SCORING
from spoolbatch.format.responses import response
from spoolbatch.format.scoring import pair_list, rerank_list, score_list
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import SamplingSpec

_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
          "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
# _RUNS[start][k]: k words from _WORDS[start] on, cyclic; an answer is one table lookup.
_RUNS = [[" ".join(_WORDS[(start + j) % len(_WORDS)] for j in range(k)) for k in range(16)]
         for start in range(len(_WORDS))]
EMBEDDING_DIM = 16

if TYPE_CHECKING:
    import numpy as np


def _digest(*parts: str) -> bytes:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=32).digest()


def _tokens(text: str) -> int:
    """Whitespace words: the unit of the fake engine's answers."""
    return max(1, len(text.split()))


def _prompt_tokens(text: str) -> int:
    """A prompt's size in tokens by OpenAI's rule of thumb (about four characters a token)."""
    return max(1, (len(text) + 3) // 4)


def _prompt_text(spec: SamplingSpec) -> str:
    if spec.endpoint in CHAT_LIKE:
        return "\n".join([f"{m['role']}: {_flat(m['content'])}" for m in spec.messages])
    return spec.prompt


def _flat(content: Any) -> str:
    """A message's text (image parts count as their URL's length, not their bytes)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") if p.get("type") == "text" else "<image>" for p in content)
    return str(content or "")


def _generate(spec: SamplingSpec, digest: bytes, index: int) -> Choice:
    """3 to 14 words picked by the request's digest; stops at a stop string or at max_tokens."""
    if spec.tools and spec.tool_choice != fn_tools.NONE:
        choice = _call_tools(spec, digest, index)
        if choice is not None:
            return choice
    if spec.json_schema is not None or spec.json_object:
        seed = digest[index % len(digest):] + digest[:index % len(digest)]
        text = orjson.dumps(_fake_json(spec.json_schema or {}, seed)).decode()
        return Choice(text=text, finish_reason="stop", completion_tokens=_tokens(text))
    b = digest[index % len(digest)]
    want = 3 + b % 12
    limit = spec.max_tokens if spec.max_tokens is not None else 16
    count = want if want <= limit else limit
    text, finish = _RUNS[(b + 7 * index + digest[-1]) % len(_WORDS)][count], ("length" if want > limit else "stop")
    if not spec.stop:  # the words hold no blanks: one token each
        return Choice(text, finish, count)
    for stop in spec.stop:
        cut = text.find(stop)
        if cut >= 0:
            text, finish = text[:cut], "stop"
    return Choice(text=text, finish_reason=finish, completion_tokens=len(text.split()))


def _call_tools(spec: SamplingSpec, digest: bytes, index: int) -> Choice | None:
    """Deterministic calls valid against each tool's schema; ``auto`` calls on about half the digests.

    A named function is called once (finish ``stop``, as OpenAI does for a forced function);
    ``required`` and ``auto`` call one tool, or two when parallel calls are allowed and the
    digest says so (finish ``tool_calls``).
    """
    b = digest[(index + 3) % len(digest)]
    by_name = {t["function"]["name"]: t["function"] for t in spec.tools}
    if spec.tool_choice == fn_tools.AUTO and b % 2:
        return None
    if spec.forced_tool and spec.tool_choice != fn_tools.REQUIRED:
        names, finish = [str(spec.tool_choice)], "stop"
    else:
        ordered = list(by_name)
        count = 2 if spec.parallel_tool_calls and b % 3 == 0 else 1
        names, finish = [ordered[(b + k) % len(ordered)] for k in range(count)], "tool_calls"
    calls, tokens = [], 0
    for k, name in enumerate(names):
        seed = digest[k:] + digest[:k]
        arguments = orjson.dumps(_fake_json(by_name[name].get("parameters") or {"type": "object"}, seed)).decode()
        calls.append(tool_call(f"call_{digest[:8].hex()}{index:02d}{k:02d}", name, arguments))
        tokens += _tokens(arguments) + 1
    return Choice(text="", finish_reason=finish, completion_tokens=tokens, tool_calls=calls)


def _fake_json(schema: dict[str, Any], seed: bytes) -> Any:
    """A value that satisfies simple JSON schemas (objects, arrays, scalars, enums, ranges, lengths)."""
    if "enum" in schema:
        return schema["enum"][seed[0] % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _fake_json(v, seed[1:] + seed[:1]) for k, v in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [_fake_json(schema.get("items") or {"type": "string"}, seed) for _ in range(count)]
    if kind in ("integer", "number"):
        lo = schema.get("minimum", 0)
        hi = schema.get("maximum", lo + 255)
        value = lo + seed[0] % (int(hi - lo) + 1) if hi >= lo else lo
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return bool(seed[0] & 1)
    if kind == "null":
        return None
    word = _WORDS[seed[0] % len(_WORDS)]
    return word[:schema["maxLength"]] if "maxLength" in schema else word


def _embed(text: str, dimensions: int | None = None) -> np.ndarray:
    """A float32 unit vector from the text's digest (its first ``dimensions`` values, normalised)."""
    import numpy as np

    raw = np.frombuffer(_digest(text), dtype=np.uint8)[:dimensions or EMBEDDING_DIM]
    vector = (raw.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


class FakeEngine:
    """Implements ``Engine`` without a model; see the module docstring."""

    name = "fake"
    prefix_caching = False  # no prefix cache: the worker sends chunks in file order (worker/sending.py)

    def __init__(self, latency: float = 0.0, created: int | None = None, media: MediaPolicy | None = None,
                 adapters: AdapterCatalog | None = None) -> None:
        self.latency = latency
        self.created = created
        self.media = media or MediaPolicy()
        self.adapters = adapters or AdapterCatalog()
        self.model: str | None = None  # the loaded model (None: whatever a request names)
        self._checked: dict[str, RequestError | None] = {}  # adapter checks of the chunk being answered

    def load(self, model: str) -> None:
        """Any model name is accepted (an adapter's name loads its base)."""
        adapter = self.adapters.get(model) if self.adapters else None
        self.model = adapter.base if adapter is not None else model

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """Answer each request from its own content."""
        created = self.created if self.created is not None else int(time.time())
        self._checked = {}
        out = []
        for request in requests:
            if self.latency:
                time.sleep(self.latency)
            out.append(self._answer(request, created))
        return out

    def submit(self, requests: Sequence[Request]) -> list[Request]:
        """Take a chunk now, answer it at ``collect`` (the same pipelining path as vLLM)."""
        return list(requests)

    def collect(self, ticket: list[Request]) -> list[Outcome]:
        """Answer a submitted chunk."""
        return self.run(ticket)

    def abort(self) -> None:
        """Nothing is kept between submit and collect."""

    def _answer(self, request: Request, created: int) -> Outcome:
        spec = request.spec
        if spec.endpoint == EMBEDDINGS:
            if spec.dimensions is not None and spec.dimensions > EMBEDDING_DIM:
                return Outcome.fail("invalid_value", f"'dimensions' must be at most {EMBEDDING_DIM} for this model, "
                                                     f"got {spec.dimensions}")
            tokens = sum(_prompt_tokens(t) for t in spec.inputs)
            return Outcome(embedding_list(model=spec.model, vectors=[_embed(t, spec.dimensions) for t in spec.inputs],
                                          prompt_tokens=tokens, encoding_format=spec.encoding_format),
                           prompt_tokens=tokens)
        if spec.endpoint in SCORING:
            return self._score(request)
        if spec.rich and has_images(spec.messages):
            try:  # images are read and checked as the real engine does; the answer ignores them
                resolve_images(spec.messages, self.media)
            except RequestError as exc:
                return Outcome.fail(exc.code, str(exc))
        try:
            adapter = self._adapter(spec.model)
        except RequestError as exc:
            return Outcome.fail(exc.code, exc.message)
        prompt = _prompt_text(spec)
        digest = _digest(prompt, str(spec.seed)) if adapter is None else _digest(prompt, str(spec.seed), adapter.name)
        choices = [_generate(spec, digest, i) for i in range(spec.n)]
        if spec.endpoint == RESPONSES:
            prompt_tokens = _prompt_tokens(prompt)
            return Outcome.ok(response(id="resp_" + digest[:12].hex(), model=spec.model, created=created,
                                       choice=choices[0], prompt_tokens=prompt_tokens, body=request.body))
        build = chat_completion if spec.endpoint == CHAT else text_completion
        prefix = "chatcmpl-" if spec.endpoint == CHAT else "cmpl-"
        prompt_tokens = _prompt_tokens(prompt)
        return Outcome(build(id=prefix + digest[:12].hex(), model=spec.model, created=created,
                             choices=choices, prompt_tokens=prompt_tokens),
                       prompt_tokens=prompt_tokens, completion_tokens=sum(c.completion_tokens for c in choices))

    def _adapter(self, name: str) -> Adapter | None:
        """The adapter a generation request names, None for any other model; ``RequestError`` for an
        adapter of another model or one whose folder would not load."""
        adapter = self.adapters.get(name) if self.adapters and name != self.model else None
        if adapter is None:
            return None
        if self.model is not None and adapter.base != self.model:
            raise RequestError("model_mismatch", f"adapter {name!r} adapts {adapter.base!r}, not the loaded model "
                                                 f"{self.model!r}")
        if name not in self._checked:
            try:
                check_adapter(adapter)
                self._checked[name] = None
            except RequestError as exc:
                self._checked[name] = exc
        if (error := self._checked[name]) is not None:
            raise error
        return adapter

    def _score(self, request: Request) -> Outcome:
        """Cosine similarity of the fake embeddings of each pair."""
        spec = request.spec
        left, right = pair_list(spec.inputs, spec.documents)
        scores = [float(_embed(q).astype("f8") @ _embed(d).astype("f8")) for q, d in zip(left, right, strict=True)]
        tokens = sum(_prompt_tokens(q) + _prompt_tokens(d) for q, d in zip(left, right, strict=True))
        id = "score-" + _digest(request.custom_id)[:12].hex()
        if spec.endpoint == RERANK:
            return Outcome.ok(rerank_list(id=id, model=spec.model, documents=spec.documents, scores=scores,
                                          top_n=spec.top_n, prompt_tokens=tokens))
        return Outcome.ok(score_list(id=id, model=spec.model, created=self.created or int(time.time()),
                                     scores=scores, prompt_tokens=tokens))

    def close(self) -> None:
        """Nothing to release."""
