"""What a chunk sends to the engine, and how the answers come back in line order.

A ``SendPlan`` is built from a chunk's requests in line order: repeats of a deterministic
request are dropped (``dedupe``), the rest are put in prefix order (``ordering``) when they
generate text. The engine gets ``sent``; ``spread`` turns its outcomes (one per request sent,
in the order sent) back into one outcome per line, in line order, each copy with its own
response id. Nothing else changes: the chunk is still committed whole, results in line order,
so exactly-once and resume hold as before (a redone chunk builds the same plan again).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from spoolbatch.format.endpoints import CHAT_LIKE, GENERATION
from spoolbatch.format.types import Request
from spoolbatch.worker.dedupe import firsts, own_answer
from spoolbatch.worker.executor import ChunkRun
from spoolbatch.worker.ordering import orderable, prefix_key, prefix_order


def _key(request: Request) -> tuple[Any, ...]:
    """The prompt of a generation request (its sort key); the inputs of a pooling one."""
    spec = request.spec
    if spec.endpoint in GENERATION:
        return prefix_key(spec)
    return (spec.model, spec.inputs, spec.documents)


def _bucket(request: Request) -> Hashable:
    """A cheap value that identical bodies share (the last message, the prompt), for de-duplication without sorting."""
    spec = request.spec
    if spec.endpoint in CHAT_LIKE:
        last = spec.messages[-1].get("content") if spec.messages else None
        return last if isinstance(last, str) else _key(request)
    if spec.endpoint in GENERATION:
        return spec.prompt
    return _key(request)


@dataclass(frozen=True, slots=True)
class SendPlan:
    """``sent[slots[i]]`` answers line ``i`` of the chunk; ``sources[p]`` is the line ``sent[p]`` came from."""

    sent: list[Request]
    slots: list[int]
    sources: list[int]

    @property
    def deduplicated(self) -> int:
        """Lines answered with another line's answer (not sent to the engine)."""
        return len(self.slots) - len(self.sent)

    @property
    def as_read(self) -> bool:
        """True when the engine gets the lines as they are: nothing dropped, nothing moved."""
        return len(self.sent) == len(self.slots) and all(i == p for i, p in enumerate(self.sources))

    @classmethod
    def build(cls, requests: Sequence[Request], *, order: bool = True, dedupe: bool = True) -> SendPlan:
        """The plan for a chunk's ``requests`` (in line order)."""
        n = len(requests)
        ordered = order and orderable(requests)
        if n < 2 or not (dedupe or ordered):
            return cls(list(requests), list(range(n)), list(range(n)))
        keys = [_key(r) for r in requests] if ordered else None
        buckets: Sequence[Hashable] = keys if keys is not None else [_bucket(r) for r in requests]
        first = firsts(requests, buckets) if dedupe else list(range(n))
        kept = [i for i in range(n) if first[i] == i]
        if keys is not None:
            kept = [kept[p] for p in prefix_order([keys[i] for i in kept])]
        elif len(kept) == n:  # nothing repeated, nothing to move
            return cls(list(requests), list(range(n)), kept)
        position = [0] * n
        for p, i in enumerate(kept):
            position[i] = p
        return cls([requests[i] for i in kept], [position[first[i]] for i in range(n)], kept)

    def spread(self, run: ChunkRun, requests: Sequence[Request]) -> ChunkRun:
        """The engine's ``run`` (in the order sent) as one outcome per line of ``requests``, in line order."""
        if self.as_read:
            return run
        outcomes, attempts = [], []
        for i, (request, p) in enumerate(zip(requests, self.slots, strict=True)):
            outcome = run.outcomes[p]
            outcomes.append(outcome if self.sources[p] == i else own_answer(outcome, request))
            attempts.append(run.attempts[p])
        return ChunkRun(outcomes, attempts, run.retries)
