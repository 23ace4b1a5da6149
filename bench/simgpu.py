"""A simulated GPU for the benchmarks (not part of the product): an ``Engine`` whose "GPU" is a
background thread that computes each submitted chunk at a set rate and never needs our CPU.

``submit`` queues a chunk; the thread takes chunks in order and sleeps ``requests / rate``
seconds for each (the GPU's work), starting a chunk the moment the previous one ends when it
was already queued, so a daemon that keeps the queue full keeps the "GPU" busy. ``collect``
waits for its chunk, then does on the daemon's thread what the real vLLM engine does there:
take the outputs (float32 vectors as numpy rows of the engine's output, or token ids and
text) and build the OpenAI bodies with the product's own ``format.bodies``.

What it leaves out: vLLM's own per-request Python on the daemon's side (input processing in
``add_request``, output processing and detokenisation in ``step``). It measures spoolbatch's
side only: a perfect engine, so every second of waiting is ours.

Busy time is counted on the GPU's own clock: a chunk starts at ``max(submitted, previous
end)`` and lasts ``requests / rate``; the GPU is idle only when nothing was queued.

In a subprocess (``spoolbatch run --workers N``) the engine is selected by environment:
``SPOOLBATCH_BENCH_SIMGPU=embed:50000:1024`` (or ``generate:20000``) and ``bench/simgpu_site``
on ``PYTHONPATH``, whose ``sitecustomize`` makes ``--engine fake`` build this engine;
``SPOOLBATCH_BENCH_SIMGPU_STATS`` names a folder where each engine writes its figures on close.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spoolbatch.format import bodies
from spoolbatch.format.endpoints import CHAT, EMBEDDINGS
from spoolbatch.format.types import Outcome, Request

ENV = "SPOOLBATCH_BENCH_SIMGPU"
ENV_STATS = "SPOOLBATCH_BENCH_SIMGPU_STATS"
_WORDS = "the candidate fits role well score seven eight yes no maybe strong weak".split()


@dataclass(slots=True)
class SimTicket:
    """A chunk queued on the simulated GPU."""

    requests: list[Request]
    units: int
    submitted: float
    done: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False


class SimGpuEngine:
    """The ``PipelinedEngine`` protocol on a simulated GPU; see the module docstring."""

    name = "simgpu"

    def __init__(self, workload: str = "embed", rate: float = 50_000, dims: int = 1024,
                 stats_dir: str | None = None) -> None:
        self.workload = workload
        self.rate = rate
        self.dims = dims
        self.stats_dir = stats_dir
        self.model: str | None = None
        pool = np.random.default_rng(0).standard_normal((4096 if workload == "embed" else 1, dims), dtype=np.float32)
        self._pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)  # unit vectors, as embedders give
        self._at = 0
        self._queue: deque[SimTicket] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.busy = 0.0
        self.first_start: float | None = None
        self.free_at = 0.0
        self.units = 0
        self.chunks = 0
        self.idle_gaps = 0

    # -- the protocol --------------------------------------------------------------------
    def load(self, model: str) -> None:
        """Any model "loads"; the GPU thread starts."""
        self.model = model
        if self._thread is None:
            self._thread = threading.Thread(target=self._gpu, name="simgpu", daemon=True)
            self._thread.start()

    def submit(self, requests: Sequence[Request]) -> SimTicket:
        """Queue a chunk on the GPU; it starts as soon as the GPU is free."""
        units = sum(len(r.spec.inputs) if r.spec.endpoint == EMBEDDINGS else r.spec.n for r in requests)
        ticket = SimTicket(list(requests), units, time.perf_counter())
        if self._thread is None:
            self.load(requests[0].spec.model if requests else "")
        with self._cond:
            self._queue.append(ticket)
            self._cond.notify()
        return ticket

    def collect(self, ticket: SimTicket) -> list[Outcome]:
        """Wait for the chunk, then build its bodies on this (the daemon's) thread."""
        ticket.done.wait()
        if ticket.aborted:
            raise RuntimeError("chunk aborted")
        created = int(time.time())
        out = []
        for request in ticket.requests:
            if request.spec.endpoint == EMBEDDINGS:
                out.append(self._embedding(request))
            else:
                out.append(self._generation(request, created))
        return out

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """Submit and collect one chunk."""
        return self.collect(self.submit(requests))

    def abort(self) -> None:
        """Drop every queued chunk."""
        with self._cond:
            while self._queue:
                t = self._queue.popleft()
                t.aborted = True
                t.done.set()

    def close(self) -> None:
        """Stop the GPU thread and write the figures (when asked to)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop = False
        if self.stats_dir and self.chunks:
            path = Path(self.stats_dir) / f"simgpu-{os.getpid()}-{id(self)}.json"
            path.write_text(json.dumps(self.stats()))

    def stats(self) -> dict[str, Any]:
        """Busy seconds, the span from the first chunk's start to the last one's end, and counts."""
        span = self.free_at - self.first_start if self.first_start is not None else 0.0
        return {"busy_seconds": self.busy, "span_seconds": span, "units": self.units, "chunks": self.chunks,
                "idle_gaps": self.idle_gaps, "rate": self.rate, "first_start": self.first_start,
                "last_end": self.free_at, "busy_fraction": self.busy / span if span else 0.0}

    # -- the GPU ---------------------------------------------------------------------------
    def _gpu(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                ticket = self._queue.popleft()
            if self.first_start is None:
                start = ticket.submitted
                self.first_start = start
            else:
                start = max(ticket.submitted, self.free_at)
                self.idle_gaps += ticket.submitted > self.free_at
            seconds = ticket.units / self.rate
            end = start + seconds
            while (left := end - time.perf_counter()) > 0:
                time.sleep(left)
            self.busy += seconds
            self.free_at = end
            self.units += ticket.units
            self.chunks += 1
            ticket.done.set()

    # -- outputs, as the vLLM engine gets them and turns them into bodies ------------------
    def _vector(self) -> np.ndarray:
        row = self._pool[self._at]
        self._at = (self._at + 1) % len(self._pool)
        return row

    def _embedding(self, request: Request) -> Outcome:
        spec = request.spec
        # As the vLLM engine does: the float32 rows of the engine's output, handed on as arrays.
        vectors = [self._vector() for _ in spec.inputs]
        tokens = sum(len(t) // 4 + 1 for t in spec.inputs)
        return Outcome.ok(bodies.embedding_list(model=spec.model, vectors=vectors, prompt_tokens=tokens,
                                                encoding_format=spec.encoding_format))

    def _generation(self, request: Request, created: int) -> Outcome:
        spec = request.spec
        want = 1 + request.line % 10
        count = want if spec.max_tokens is None or want <= spec.max_tokens else spec.max_tokens
        text = " ".join(_WORDS[:count])
        choices = [bodies.Choice(text=text, finish_reason="length" if count < want else "stop",
                                 completion_tokens=count) for _ in range(spec.n)]
        chat = spec.endpoint == CHAT
        build = bodies.chat_completion if chat else bodies.text_completion
        prompt = spec.prompt if not chat else "".join(str(m.get("content")) for m in spec.messages)
        body = build(id=bodies.stable_id("chatcmpl-" if chat else "cmpl-", spec.model, request.custom_id,
                                         str(request.line)),
                     model=spec.model, created=created, choices=choices, prompt_tokens=len(prompt) // 4 + 1)
        return Outcome.ok(body)


def from_env() -> SimGpuEngine:
    """The engine ``SPOOLBATCH_BENCH_SIMGPU`` describes (``embed:RATE:DIMS`` or ``generate:RATE``)."""
    parts = os.environ[ENV].split(":")
    workload, rate = parts[0], float(parts[1])
    dims = int(parts[2]) if len(parts) > 2 else 1024
    return SimGpuEngine(workload, rate, dims, stats_dir=os.environ.get(ENV_STATS))


def install() -> None:
    """Make ``--engine fake`` build the simulated GPU in this process (for worker subprocesses)."""
    import spoolbatch.engines as engines

    real = engines.make_engine

    def make_engine(name: str, config: Any, **kwargs: Any) -> Any:
        return from_env() if name == "fake" else real(name, config, **kwargs)

    engines.make_engine = make_engine  # type: ignore[assignment]
