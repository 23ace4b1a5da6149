"""Run one chunk through an engine, surviving engine failures without losing a request.

When the engine raises for a batch (out of memory, a crash, a poison request), the batch
is split in halves and each half retried, with backoff; a request that still fails on its
own after ``max_attempts`` becomes a failed outcome (deadletter) and the rest go on. What
a failure was is read from the ``EngineError`` the engine raised (``out_of_memory``,
``broken``), never from its message; anything else an engine lets through is classified
once by ``engines.failures``. An engine that is broken is rebuilt before the next try.
Every request ends with exactly one outcome, and the number of engine calls is bounded.
Rebuilds and redone look-ahead chunks are ``DaemonEvent``s; the rest is free text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spoolbatch import backoff
from spoolbatch.engines.base import Engine, PipelinedEngine
from spoolbatch.engines.failures import engine_error
from spoolbatch.errors import EngineError
from spoolbatch.format.endpoints import EMBEDDINGS, GENERATION
from spoolbatch.format.types import Outcome, Request
from spoolbatch.store.joblog import DaemonEvent, DaemonEvents, no_events
from spoolbatch.worker import gcpolicy

_PIPELINED = (*GENERATION, EMBEDDINGS)  # what engines enqueue with submit (score/rerank run on their own)


def describe(exc: BaseException) -> str:
    """One line for an engine exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass(slots=True)
class Pending:
    """A chunk submitted to the engine and not collected yet."""

    model: str
    requests: list[Request]
    ticket: Any = None
    generation: int = 0


@dataclass(slots=True)
class ChunkRun:
    """Outcomes in request order, with how often each request was tried."""

    outcomes: list[Outcome]
    attempts: list[int]
    retries: int = 0


class ChunkExecutor:
    """Runs chunks on an engine with split-and-retry; see the module docstring."""

    def __init__(self, engine_factory: Callable[[], Engine], *, max_attempts: int = 3,
                 backoff: float = 1.0, backoff_cap: float = 60.0,
                 log: Callable[[str], None] = lambda message: None, events: DaemonEvents = no_events,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._factory = engine_factory
        self.engine: Engine | None = None
        self.model: str | None = None
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.log = log
        self.events = events
        self.sleep = sleep
        self.rebuilds = 0
        self._generation = 0  # bumped when the engine dropped what was enqueued

    def submit(self, model: str, requests: Sequence[Request]) -> Pending:
        """Hand a chunk to a pipelining engine now; ``collect`` gets its outcomes.

        Chat, completion and embedding chunks alike, so the engine holds the next chunk while
        the daemon writes this one. With an engine that cannot pipeline, nothing happens
        until ``collect``, which then runs the chunk as ``run`` does.
        """
        pending = Pending(model, list(requests), generation=self._generation)
        if not requests or any(r.spec.endpoint not in _PIPELINED for r in requests):
            return pending
        try:
            engine = self._engine_for(model)
            if isinstance(engine, PipelinedEngine):
                pending.ticket = engine.submit(pending.requests)
        except Exception as exc:  # collect falls back to run(), which splits and retries
            self.events(DaemonEvent.PIPELINE_REDO, stage="submit", error=describe(exc))
            self._drop_in_flight(exc)
        return pending

    def collect(self, pending: Pending) -> ChunkRun:
        """Outcomes of a submitted chunk; on any engine failure, redo it with split-and-retry."""
        engine = self.engine
        if pending.ticket is not None and pending.generation == self._generation \
                and isinstance(engine, PipelinedEngine):
            try:
                outcomes = engine.collect(pending.ticket)
                if len(outcomes) == len(pending.requests):
                    return ChunkRun(outcomes=outcomes, attempts=[1] * len(outcomes))
                raise EngineError(f"engine returned {len(outcomes)} outcomes for {len(pending.requests)} requests")
            except Exception as exc:
                self.events(DaemonEvent.PIPELINE_REDO, stage="collect", error=describe(exc))
                self._drop_in_flight(exc)
        return self.run(pending.model, pending.requests)

    def _drop_in_flight(self, exc: BaseException) -> None:
        """Void every ticket in flight (their requests are redone by ``run``) and rebuild a dead engine."""
        self._generation += 1
        if self.engine is not None:
            try:
                if isinstance(self.engine, PipelinedEngine):
                    self.engine.abort()
            except Exception:  # a dead engine may not abort; it is rebuilt
                self._rebuild(describe(exc))
                return
        if engine_error(exc).broken:
            self._rebuild(describe(exc))

    def _engine_for(self, model: str) -> Engine:
        if self.engine is None:
            self.engine = self._factory()
            self.model = None
        if self.model != model:
            gcpolicy.thaw()
            self.engine.load(model)
            self.model = model
            gcpolicy.freeze_after_load()
        return self.engine

    def _rebuild(self, reason: str) -> None:
        self.events(DaemonEvent.ENGINE_REBUILD, reason=reason)
        gcpolicy.thaw()
        if self.engine is not None:
            try:
                self.engine.close()
            except Exception as exc:  # a dead engine may fail to close; it is dropped anyway
                self.log(f"closing the broken engine failed: {describe(exc)}")
        self.engine = None
        self.model = None
        self.rebuilds += 1

    def run(self, model: str, requests: Sequence[Request]) -> ChunkRun:
        """One outcome per request, in order; never raises for a request's or a batch's failure."""
        result = ChunkRun(outcomes=[Outcome.fail("not_run", "not run")] * len(requests),
                          attempts=[0] * len(requests))
        if requests and not self._load(model, result):
            return result
        pending: list[list[int]] = [list(range(len(requests)))]
        alone = [0] * len(requests)  # failures while run on its own: what gives a request up
        failures = 0
        while pending:
            idx = pending.pop()
            try:
                engine = self._engine_for(model)
                outs = engine.run([requests[i] for i in idx])
                if len(outs) != len(idx):
                    raise EngineError(f"engine returned {len(outs)} outcomes for {len(idx)} requests")
            except Exception as exc:
                message = describe(exc)
                failure = engine_error(exc)
                result.retries += 1
                failures += 1
                if failure.broken:
                    self._rebuild(message)
                for i in idx:
                    result.attempts[i] += 1
                if len(idx) > 1:
                    half = len(idx) // 2
                    self.log(f"batch of {len(idx)} failed ({message}); splitting into {half} + {len(idx) - half}")
                    pending.extend([idx[half:], idx[:half]])
                else:
                    self._fail_alone(idx[0], requests, result, alone, failure, message, pending)
                self.sleep(backoff.delay(failures, base=self.backoff, cap=self.backoff_cap))
                continue
            for i, out in zip(idx, outs, strict=True):
                result.attempts[i] += 1
                result.outcomes[i] = out
        return result

    def _load(self, model: str, result: ChunkRun) -> bool:
        """Load ``model``, retrying with backoff; when it never loads, every request fails with why.

        A model that cannot be loaded is the job's problem, not any one request's: the chunk
        is not split (that would reload the model once per request), its requests go to
        deadletter with ``model_not_available`` and can be resubmitted with `retry`.
        """
        for attempt in range(1, self.max_attempts + 1):
            try:
                self._engine_for(model)
                return True
            except Exception as exc:
                message = describe(exc)
                self.log(f"loading model {model!r} failed (attempt {attempt} of {self.max_attempts}): {message}")
                self._rebuild(message)
                if attempt < self.max_attempts:
                    self.sleep(backoff.delay(attempt, base=self.backoff, cap=self.backoff_cap))
        result.outcomes = [Outcome.fail("model_not_available", f"model {model!r} could not be loaded after "
                                                                f"{self.max_attempts} attempts: {message}")
                           ] * len(result.outcomes)
        result.attempts = [self.max_attempts] * len(result.outcomes)
        return False

    def _fail_alone(self, i: int, requests: Sequence[Request], result: ChunkRun, alone: list[int],
                    failure: EngineError, message: str, pending: list[list[int]]) -> None:
        """A request failed on its own: retry it, or give it up after ``max_attempts`` such failures."""
        alone[i] += 1
        if alone[i] < self.max_attempts:
            pending.append([i])
            return
        code = "out_of_memory" if failure.out_of_memory else "engine_error"
        result.outcomes[i] = Outcome.fail(
            code, f"failed on its own {alone[i]} times ({result.attempts[i]} attempts in all): {message}")
        self.log(f"request {requests[i].custom_id!r} (line {requests[i].line}) gave up: {message}")

    def close(self) -> None:
        """Release the engine."""
        if self.engine is not None:
            gcpolicy.thaw()
            self.engine.close()
            self.engine = None
            self.model = None
