"""The real engine: vLLM's offline ``LLM``, kept loaded between chunks and jobs.

vLLM and torch are imported inside methods only, so importing this module is cheap.
Chat and completion requests are rendered and tokenized once (the model's chat template
for chat), checked on their own (prompt length against the context, sampling parameters:
``vllm_sampling``) and enqueued in the engine with ``submit``; ``collect`` steps the engine
until that chunk's requests are finished. A request that fails its checks gets a failed
outcome and never reaches the engine. Submitting the next chunk before collecting the
current one keeps the engine's batch full across chunk boundaries (see
``ChunkExecutor.submit``). Embeddings take the same path on a pooling runner, one engine
request per input (``vllm_pooling``); score and rerank run on ``LLM.score``
(``vllm_scoring``). vLLM's outputs become OpenAI bodies (and logprobs) in ``vllm_output``.
A generation line may name a LoRA adapter of the loaded model: its request carries the
adapter's ``LoRARequest``, and the first chunk that names adapters starts the model again once
with LoRA on (``vllm_lora``).

Whether an error is one request's or the engine's is told once (``_failed``, with
``engines.failures``): engine-wide failures raise ``EngineError`` with ``out_of_memory`` and
``broken`` set from what torch and vLLM raised, so the caller can split the chunk or
rebuild the engine without reading messages.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from spoolbatch.config import EngineSettings
from spoolbatch.engines.adapters import LoraSettings
from spoolbatch.engines.failures import engine_error, is_request_shaped
from spoolbatch.engines.vllm_lora import Loras
from spoolbatch.engines.vllm_output import generation_body
from spoolbatch.engines.vllm_pooling import embedding_outcome, pooling_inputs
from spoolbatch.engines.vllm_sampling import sampling_params
from spoolbatch.engines.vllm_tools import needs_chat_path
from spoolbatch.errors import EngineError, RequestError
from spoolbatch.format.endpoints import CHAT, CHAT_LIKE, EMBEDDINGS, GENERATION, POOLED, SCORING
from spoolbatch.format.types import Outcome, Request

log = logging.getLogger(__name__)

GENERATE = "generate"
POOLING = "pooling"


@dataclass(slots=True)
class Ticket:
    """A chunk enqueued in the engine and not collected yet."""

    number: int
    created: int
    requests: list[Request]
    outcomes: list[Outcome | None]
    waiting: dict[str, int] = field(default_factory=dict)  # engine request id -> index
    prepared: dict[int, Any] = field(default_factory=dict)  # index -> vllm_tools.Prepared (chat path)
    pooling: bool = False  # embeddings: one engine request per input, in input order


class VllmEngine:
    """The ``Engine`` protocol on vLLM's offline ``LLM`` (GPU build, or the CPU build)."""

    name = "vllm"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self._llm: Any = None
        self._model: str | None = None  # the name jobs use
        self._path: str | None = None  # what vLLM loaded
        self._runner: str | None = None
        self._cpu: bool | None = None
        self._tokenizer: Any = None
        self.max_model_len = 0
        self.vocab_size = 0
        self.load_seconds = 0.0
        self._tickets = 0
        self._open: dict[str, int] = {}  # request id -> ticket, still in the engine
        self._finished: dict[str, Any] = {}  # finished outputs not collected yet
        self._params: dict[tuple[Any, ...], Any] = {}  # SamplingParams by what they were built from
        self._chat: Any = None  # vllm_tools.ChatTools for the loaded model, made on first use
        self._loras = Loras(self.settings)  # LoRA adapters: off until a chunk names one (vllm_lora)
        self.starts = 0  # engines started (a model loaded, LoRA turned on, a restart after a failure)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def runner(self) -> str | None:
        """'generate' or 'pooling' for the loaded model, or None."""
        return self._runner if self._llm is not None else None

    def load(self, model: str, *, endpoint: str | None = None) -> None:
        """Make ``model`` the loaded model; a no-op when it is loaded with a fitting runner.

        ``endpoint`` picks the runner (embeddings: pooling); without it, the model's
        config decides (an encoder is a pooling model, a causal LM generates).
        """
        from spoolbatch.engines.models import model_kind, resolve_model

        model = self._loras.base_of(model)  # an adapter's name loads its base model
        path = resolve_model(model, self.settings.model_dir)
        if endpoint is not None:
            runner = POOLING if endpoint in POOLED else GENERATE
        elif self._llm is not None and self._model == model and self._runner is not None:
            runner = self._runner
        else:
            runner = POOLING if model_kind(path) == "embed" else GENERATE
        if self._llm is not None and self._path == path and self._runner == runner:
            self._model = model
            return
        if self._path != path or runner != GENERATE:
            self._loras.active = None  # a model starts without LoRA, until a chunk names adapters of it
        self.close()
        self._start(path, runner)
        self._model = model

    def _start(self, path: str, runner: str) -> None:
        from spoolbatch.engines.cpu_env import cpu_dtype, cuda_available, init_amx, prepare_cpu_env

        self._cpu = not cuda_available()
        dtype = self.settings.dtype
        if self._cpu:
            prepare_cpu_env(self.settings.cpu_kvcache_gib)
            init_amx()
            dtype = cpu_dtype(dtype)
            if dtype != self.settings.dtype:
                log.info("dtype auto on a CPU without native bf16 (AVX512_BF16/AMX): using %s", dtype)
        started = time.monotonic()
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError(f"vLLM is not installed: {exc}",
                              hint="pip install 'spoolbatch[gpu]' (GPU) or 'spoolbatch[cpu]' (CPU)") from None
        kwargs: dict[str, Any] = dict(model=path, runner=runner, dtype=dtype, seed=0,
                                      enforce_eager=self.settings.enforce_eager or self._cpu)
        if self.settings.max_model_len:
            kwargs["max_model_len"] = self.settings.max_model_len
        if self.settings.max_num_seqs:
            kwargs["max_num_seqs"] = self.settings.max_num_seqs
        if runner == GENERATE:
            # Compact structured output: with "any whitespace" allowed a weak model can loop on
            # blanks until max_tokens and never close the JSON. vLLM reads this per engine and
            # only with a named backend; llguidance covers the most of JSON Schema.
            kwargs["structured_outputs_config"] = {"backend": "guidance", "disable_any_whitespace": True}
            kwargs.update(self._loras.engine_args())
            if self._cpu and self._loras.active is not None:
                from spoolbatch.engines.cpu_lora import replace_cpu_lora_ops
                from spoolbatch.engines.cpu_lora_wrapper import install_cpu_lora_wrapper

                replace_cpu_lora_ops()
                install_cpu_lora_wrapper()
            # Asked for, not left to the default: prefix order (worker/ordering.py) counts on it, on
            # the CPU build too (vLLM keeps it on there for models without MLA).
            kwargs["enable_prefix_caching"] = True
        if self._cpu:
            kwargs["distributed_executor_backend"] = "uni"
        else:
            kwargs["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        try:
            self._llm = LLM(**kwargs)
        except Exception as exc:
            self._llm = None
            self._release_memory()
            raise EngineError(f"could not load model {path!r}: {type(exc).__name__}: {exc}",
                              hint="check the model name, `spoolbatch models`, and free memory") from exc
        self._path = path
        self._runner = runner
        self.starts += 1
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        self.vocab_size = int(self._llm.llm_engine.model_config.get_vocab_size())
        self.load_seconds = time.monotonic() - started
        log.info("loaded %s (%s) in %.1fs, context %d", path, runner, self.load_seconds, self.max_model_len)

    def close(self) -> None:
        """Release the model and the memory it holds (safe to call twice)."""
        self.abort()
        self._params.clear()
        llm, self._llm = self._llm, None
        self._tokenizer = None
        self._chat = None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        if not self._cpu:
            with contextlib.suppress(Exception):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def _restart(self) -> None:
        """Start the same model afresh (after a failure left requests inside the engine)."""
        path, runner = self._path, self._runner
        self.close()
        if path is not None and runner is not None:
            self._start(path, runner)

    # -- running ---------------------------------------------------------------------

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """Answer every request, in order; per-request problems become failed outcomes."""
        if not requests:
            return []
        if any(r.spec.endpoint in SCORING for r in requests):
            return self._run_with_scores(requests)
        embed = [i for i, r in enumerate(requests) if r.spec.endpoint == EMBEDDINGS]
        if not embed or len(embed) == len(requests):
            return self.collect(self.submit(requests))
        # A mixed chunk (never one job's): generation first, then embeddings on a pooling runner.
        outcomes: list[Outcome | None] = [None] * len(requests)
        generate = [i for i, r in enumerate(requests) if r.spec.endpoint != EMBEDDINGS]
        for group in (generate, embed):
            for i, o in zip(group, self.collect(self.submit([requests[i] for i in group])), strict=True):
                outcomes[i] = o
        return [o if o is not None else Outcome.fail("internal_error", "no answer") for o in outcomes]

    def _run_with_scores(self, requests: Sequence[Request]) -> list[Outcome]:
        """Score and rerank requests on a pooling model (``vllm_scoring``), the others as ``run`` does."""
        from spoolbatch.engines.vllm_scoring import run_scores

        outcomes: list[Outcome | None] = [None] * len(requests)
        scored = [i for i, r in enumerate(requests) if r.spec.endpoint in SCORING]
        rest = [i for i, r in enumerate(requests) if r.spec.endpoint not in SCORING]
        if rest:
            for i, o in zip(rest, self.run([requests[i] for i in rest]), strict=True):
                outcomes[i] = o
        first = requests[scored[0]].spec
        self.load(self._model or first.model, endpoint=first.endpoint)
        for i, o in zip(scored, run_scores(self, [requests[i] for i in scored], int(time.time())), strict=True):
            outcomes[i] = o
        return [o if o is not None else Outcome.fail("internal_error", "no answer") for o in outcomes]

    # pipelining ---------------------------------------------------------------------

    def submit(self, requests: Sequence[Request]) -> Ticket:
        """Check and enqueue a chunk without waiting for it (generation, or embeddings).

        The engine works on everything enqueued, so a chunk submitted before the previous
        one is collected keeps the batch full across the chunk boundary. Requests that fail
        their own checks are answered at once with a failed outcome.
        """
        self._tickets += 1
        ticket = Ticket(number=self._tickets, created=int(time.time()), requests=list(requests),
                        outcomes=[None] * len(requests))
        if not requests:
            return ticket
        ticket.pooling = all(r.spec.endpoint == EMBEDDINGS for r in requests)
        if self._llm is None or self._runner != (POOLING if ticket.pooling else GENERATE):
            self.load(self._model or requests[0].spec.model, endpoint=EMBEDDINGS if ticket.pooling else CHAT)
        loras = {} if ticket.pooling else self._adapters(ticket)
        order = self._loras.order(requests, self._model) if loras else range(len(requests))
        engine = self._llm.llm_engine
        inputs = self._pooling_inputs() if ticket.pooling else self._generation_inputs(ticket)
        for i in order:
            if ticket.outcomes[i] is not None:  # its adapter is unknown or did not load
                continue
            request = requests[i]
            added: list[str] = []
            try:
                for n, (prompt, params) in enumerate(inputs(i, request)):
                    rid = f"sb{ticket.number}-{i}-{n}" if ticket.pooling else f"sb{ticket.number}-{i}"
                    engine.add_request(rid, prompt, params, lora_request=loras.get(i))
                    added.append(rid)
            except Exception as exc:
                if added:
                    with contextlib.suppress(Exception):
                        engine.abort_request(added)
                ticket.outcomes[i] = self._failed(exc)
                continue
            for rid in added:
                ticket.waiting[rid] = i
                self._open[rid] = ticket.number
        return ticket

    def _adapters(self, ticket: Ticket) -> dict[int, Any]:
        """The ``LoRARequest`` of each request that names an adapter (``vllm_lora``).

        A request whose adapter is unknown or does not load gets its failed outcome here. The
        first chunk that names adapters of a model loaded without LoRA restarts it with LoRA on.
        """
        requests = ticket.requests
        if all(r.spec.model == self._model for r in requests):
            return {}
        adapters, failed = self._loras.named(requests, self._model)
        if self._model is not None and (settings := self._loras.restart_for(adapters, self._model)) is not None:
            self._restart_with_lora(settings)
        loaded, refused = self._loras.load(self._llm.llm_engine, adapters) if adapters else ({}, {})
        out: dict[int, Any] = {}
        for i, request in enumerate(requests):
            error = failed.get(i) or refused.get(request.spec.model)
            if error is not None:
                ticket.outcomes[i] = Outcome.fail(error.code, error.message)
            elif request.spec.model in loaded:
                out[i] = loaded[request.spec.model]
        return out

    def _restart_with_lora(self, settings: LoraSettings) -> None:
        """Start the loaded model again with LoRA ``settings``; what chunks enqueued before hold is finished
        first, and their answers wait for ``collect``."""
        log.info("starting %s again with LoRA on (max_loras %d, max_lora_rank %d, max_cpu_loras %d)", self._path,
                 settings.max_loras, settings.max_lora_rank, settings.max_cpu_loras)
        self._drain()
        finished, self._finished = self._finished, {}  # close() clears what it holds
        path, runner = self._path, self._runner
        self._loras.active = settings
        self.close()
        try:
            if path is not None and runner is not None:
                self._start(path, runner)
        finally:
            self._finished = finished

    def _step(self, engine: Any) -> list[str]:
        """One engine step; the outputs it finished wait in ``_finished``; their request ids."""
        done = []
        for output in engine.step():
            if output.finished:
                self._finished[output.request_id] = output
                self._open.pop(output.request_id, None)
                done.append(output.request_id)
        return done

    def _drain(self) -> None:
        """Step the engine until every request in it is finished (their answers wait for ``collect``)."""
        engine = self._llm.llm_engine
        try:
            while self._open:
                if not engine.has_unfinished_requests():
                    raise EngineError(f"vLLM lost {len(self._open)} request(s)")
                self._step(engine)
        except Exception as exc:
            self._give_up(exc)

    def _failed(self, exc: Exception) -> Outcome:
        """The failed outcome of a request that raised ``exc``.

        An error a single request can cause (its own checks, a parameter or template vLLM
        refuses) fails that request; any other is engine-wide: what is in the engine is
        dropped and an ``EngineError`` (out of memory, broken: ``engines.failures``) raised.
        """
        if isinstance(exc, RequestError):
            return Outcome.fail(exc.code, str(exc))
        if is_request_shaped(exc):
            return Outcome.fail("invalid_request", f"rejected by vLLM: {type(exc).__name__}: {exc}")
        self._give_up(exc)

    def _give_up(self, exc: Exception) -> NoReturn:
        """Drop every request in the engine and raise ``exc`` as an ``EngineError`` (one as it is)."""
        self.abort()
        if isinstance(exc, EngineError):
            raise exc
        raise engine_error(exc, "vLLM failed") from exc

    def collect(self, ticket: Ticket) -> list[Outcome]:
        """Step the engine until every request of ``ticket`` is finished; outcomes in order."""
        engine = self._llm.llm_engine if self._llm is not None else None
        left = sum(rid not in self._finished for rid in ticket.waiting)
        try:
            while left:
                if engine is None or not engine.has_unfinished_requests():
                    raise EngineError(f"vLLM lost {left} request(s) of a chunk")
                left -= sum(rid in ticket.waiting for rid in self._step(engine))
        except Exception as exc:
            self._give_up(exc)
        finished: dict[int, list[Any]] = {}
        for rid, i in ticket.waiting.items():  # inserted in input order
            finished.setdefault(i, []).append(self._finished.pop(rid))
        ticket.waiting.clear()
        for i, outputs in finished.items():
            ticket.outcomes[i] = (embedding_outcome(ticket.requests[i], outputs) if ticket.pooling
                                  else self._generation_outcome(ticket, i, outputs[0]))
        return [o if o is not None else Outcome.fail("internal_error", "no answer") for o in ticket.outcomes]

    def _generation_outcome(self, ticket: Ticket, i: int, output: Any) -> Outcome:
        try:
            prepared = ticket.prepared.get(i)
            tools = self.chat_tools() if prepared is not None else None
            outcome = Outcome.ok(generation_body(ticket.requests[i], output, ticket.created, self._tokenizer.decode,
                                                 prepared=prepared, tools=tools))
            cached = getattr(output, "num_cached_tokens", None)  # prompt tokens read from the prefix cache
            outcome.cached_tokens = cached if isinstance(cached, int) else None
            return outcome
        except Exception as exc:  # a body we cannot build (odd logprobs) fails that request alone
            return Outcome.fail("internal_error", f"{type(exc).__name__}: {exc}")

    def abort(self) -> None:
        """Drop every request still in the engine (after a failure; their chunks are redone)."""
        open_ids, self._open = list(self._open), {}
        self._finished.clear()
        if self._llm is not None and open_ids:
            with contextlib.suppress(Exception):
                self._llm.llm_engine.abort_request(open_ids)

    # generation ---------------------------------------------------------------------

    def _generation_inputs(self, ticket: Ticket) -> Callable[[int, Request], list[tuple[Any, Any]]]:
        """What each request of a generation chunk puts into the engine: one (prompt, params).

        vLLM's names are looked up once a chunk, not once a request (about 1 us each).
        """
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        final_only = RequestOutputKind.FINAL_ONLY

        def inputs(i: int, request: Request) -> list[tuple[Any, Any]]:
            if request.spec.endpoint not in GENERATION:
                raise RequestError("unsupported_endpoint", f"{request.spec.endpoint} cannot share a chunk with "
                                   "generation")
            if request.spec.endpoint in CHAT_LIKE and needs_chat_path(request.spec, self.settings.reasoning_parser):
                prepared = self.chat_tools().prepare(request)
                params = self.sampling_params(request, len(prepared.prompt_ids), overrides=prepared.overrides)
                prompt: Any = prepared.engine_input
                ticket.prepared[i] = prepared
            else:
                ids = self._prompt_ids(request)
                params = self.sampling_params(request, len(ids))
                prompt = TokensPrompt(prompt_token_ids=ids)
            params.output_kind = final_only
            return [(prompt, params)]

        return inputs

    def _prompt_ids(self, request: Request) -> list[int]:
        """The prompt's token ids, rendered and tokenized once (the chat template for chat)."""
        spec = request.spec
        if spec.endpoint in CHAT_LIKE:
            ids = self._tokenizer.apply_chat_template(
                [dict(m) for m in spec.messages], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding on some versions
                ids = ids["input_ids"]
            return list(ids)
        return list(self._tokenizer.encode(spec.prompt))

    def chat_tools(self) -> Any:
        """vLLM's request model, renderer and parsers for tools and reasoning (``vllm_tools``).

        Built on first use, and again when the settings name other parsers.
        """
        names = (self.settings.tool_call_parser or None, self.settings.reasoning_parser or None)
        if self._chat is None or (self._chat.tool_call_parser, self._chat.reasoning_parser) != names:
            from spoolbatch.engines.media import MediaPolicy
            from spoolbatch.engines.vllm_tools import ChatTools

            self._chat = ChatTools.for_llm(self._llm, tool_call_parser=self.settings.tool_call_parser,
                                           reasoning_parser=self.settings.reasoning_parser,
                                           media=MediaPolicy.of(self.settings))
        return self._chat

    def sampling_params(self, request: Request, prompt_len: int, *, overrides: dict[str, Any] | None = None) -> Any:
        """The ``SamplingParams`` for ``request`` on the loaded model (``vllm_sampling``); ``RequestError`` when it
        cannot be honoured. ``overrides`` are parameters vLLM's parser set (a forced tool call's structured output)."""
        return sampling_params(request, prompt_len, max_model_len=self.max_model_len, vocab_size=self.vocab_size,
                               cache=self._params, overrides=overrides)

    def isolated(self, items: Sequence[Any], call: Callable[[Any, Sequence[Any]], list[Any]]) -> list[Any]:
        """``call(llm, items)`` on the loaded ``vllm.LLM`` (an offline call: ``score``), one result per item.

        When it fails for a request-shaped reason the items are halved until the culprit is
        alone; its result is then a failed ``Outcome``. Engine-wide failures raise ``EngineError``.
        """
        if not items:
            return []
        try:
            results = call(self._llm, items)
            if len(results) != len(items):
                raise EngineError(f"vLLM answered {len(results)} of {len(items)} requests")
            return results
        except Exception as exc:
            failed = self._failed(exc)
            if self._llm.llm_engine.has_unfinished_requests():
                self._restart()  # leftovers would otherwise be returned by the next call
            if len(items) == 1:
                return [failed]
            half = len(items) // 2
            return self.isolated(items[:half], call) + self.isolated(items[half:], call)

    # embeddings ---------------------------------------------------------------------

    def _pooling_inputs(self) -> Callable[[int, Request], list[tuple[Any, Any]]]:
        """What each request of an embeddings chunk puts into the engine: one (prompt, params) per input."""
        matryoshka = bool(self._llm.llm_engine.model_config.is_matryoshka)
        return lambda i, request: pooling_inputs(request, self._tokenizer, self.max_model_len, matryoshka=matryoshka)
