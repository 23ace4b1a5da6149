"""The typed engine-failure contract: engines say what a failure was, the executor acts on it.

The translator (``engines.failures``) is fed the exceptions torch, vLLM and Ray really
raise; the executor is driven by fake engines that raise typed ``EngineError``s.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from spoolbatch.engines.failures import engine_error, is_broken, is_out_of_memory, is_request_shaped
from spoolbatch.engines.fake import FakeEngine
from spoolbatch.errors import EngineError, RequestError
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import parse_spec
from spoolbatch.store.joblog import DaemonEvent
from spoolbatch.worker.executor import ChunkExecutor
from tests.conftest import chat_line


def _torch() -> Any:
    """torch, for the tests that raise its own errors (marked vllm: importing it costs seconds)."""
    return pytest.importorskip("torch")


def requests(count: int) -> list[Request]:
    out = []
    for i in range(count):
        line = chat_line(i)
        out.append(Request(custom_id=line["custom_id"], line=i + 1, url=line["url"], body=line["body"],
                           spec=parse_spec(line["url"], line["body"])))
    return out


# -- the translator, on real exception types and messages ------------------------------------

@pytest.mark.vllm
def test_torch_out_of_memory_is_out_of_memory_and_not_broken() -> None:
    exc = _torch().OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.1 GiB total)")
    err = engine_error(exc, "vLLM failed")
    assert (err.out_of_memory, err.broken) == (True, False)
    assert err.message.startswith("vLLM failed: OutOfMemoryError: CUDA out of memory")


@pytest.mark.parametrize("text", ["CUDA out of memory. Tried to allocate 2.00 GiB",
                                  "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"])
def test_a_runtime_error_with_cuda_out_of_memory_text_is_out_of_memory(text: str) -> None:
    err = engine_error(RuntimeError(text))
    assert (err.out_of_memory, err.broken) == (True, False)


def test_host_memory_is_out_of_memory() -> None:
    assert is_out_of_memory(MemoryError()) and engine_error(MemoryError()).out_of_memory


@pytest.mark.vllm
def test_an_error_raised_from_a_torch_oom_is_out_of_memory() -> None:
    torch = _torch()
    try:
        try:
            raise torch.OutOfMemoryError("allocation failed")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("the model's forward pass failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)


def test_an_out_of_memory_error_that_says_died_is_not_broken() -> None:
    assert not is_broken(RuntimeError("worker died: CUDA out of memory"))


@pytest.mark.vllm
def test_vllm_engine_dead_is_broken() -> None:
    exceptions = pytest.importorskip("vllm.v1.engine.exceptions")
    err = engine_error(exceptions.EngineDeadError(), "vLLM failed")
    assert (err.out_of_memory, err.broken) == (False, True)


@pytest.mark.parametrize("text", ["EngineCore encountered an issue; engine core died", "[Errno 32] Broken pipe"])
def test_an_engine_core_that_is_gone_is_broken(text: str) -> None:
    assert engine_error(RuntimeError(text)).broken
    assert engine_error(BrokenPipeError()).broken


def test_a_request_shaped_error_is_neither() -> None:
    err = engine_error(ValueError("temperature must be non-negative"))
    assert (err.out_of_memory, err.broken) == (False, False)


def test_what_one_request_can_cause_is_told_from_what_the_engine_did() -> None:
    jinja2 = pytest.importorskip("jinja2")
    for exc in (ValueError("temperature must be non-negative"), KeyError("content"), TypeError("bad"),
                RequestError("invalid_value", "the prompt is empty"), jinja2.TemplateError("no such filter")):
        assert is_request_shaped(exc), exc
    for exc in (RuntimeError("CUDA out of memory"), EngineError("gone", broken=True), MemoryError(), OSError(5, "io")):
        assert not is_request_shaped(exc), exc
    exceptions = pytest.importorskip("vllm.exceptions")
    assert is_request_shaped(exceptions.VLLMValidationError("Invalid grammar specification"))


def test_ray_actor_lost_is_broken_and_ray_oom_is_out_of_memory() -> None:
    ray_exceptions = pytest.importorskip("ray.exceptions")
    assert engine_error(ray_exceptions.ActorDiedError()).broken
    assert engine_error(ray_exceptions.OutOfMemoryError("Task was killed due to the node running low on memory"),
                        ).out_of_memory


def test_what_a_ray_replica_raised_comes_back_as_its_own_engine_error() -> None:
    ray_exceptions = pytest.importorskip("ray.exceptions")
    raised = pickle.loads(pickle.dumps(EngineError("vLLM failed: OutOfMemoryError: ...", out_of_memory=True)))
    wrapped = ray_exceptions.RayTaskError("Replica.collect", "Traceback ...", raised).as_instanceof_cause()
    err = engine_error(wrapped, "a Ray replica failed")
    assert err is raised and (err.out_of_memory, err.broken) == (True, False)


def test_an_engine_error_keeps_its_fields_across_a_process_boundary() -> None:
    err = pickle.loads(pickle.dumps(EngineError("gone", hint="h", broken=True)))
    assert (err.message, err.hint, err.out_of_memory, err.broken) == ("gone", "h", False, True)
    assert engine_error(err) is err


def test_the_vllm_engine_translates_what_its_core_raises() -> None:
    from spoolbatch.engines.vllm_engine import Ticket, VllmEngine

    class Core:
        aborted: list[str] = []

        def has_unfinished_requests(self) -> bool:
            return True

        def step(self) -> list[Any]:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")

        def abort_request(self, ids: list[str]) -> None:
            self.aborted.extend(ids)

    engine = VllmEngine()
    engine._llm = SimpleNamespace(llm_engine=Core())
    engine._open = {"sb1-0": 1}
    ticket = Ticket(number=1, created=0, requests=requests(1), outcomes=[None], waiting={"sb1-0": 0})
    with pytest.raises(EngineError) as info:
        engine.collect(ticket)
    assert (info.value.out_of_memory, info.value.broken) == (True, False)
    assert Core.aborted == ["sb1-0"]
    engine._llm = None


@pytest.mark.parametrize("how", ["collect", "drain"])
def test_the_vllm_engine_gives_up_what_it_holds_when_its_core_loses_requests_or_raises(how: str) -> None:
    from spoolbatch.engines.vllm_engine import Ticket, VllmEngine

    class Core:
        def __init__(self, lost: bool) -> None:
            self.lost = lost
            self.aborted: list[str] = []

        def has_unfinished_requests(self) -> bool:
            return not self.lost

        def step(self) -> list[Any]:
            raise RuntimeError("EngineCore encountered an issue; engine core died")

        def abort_request(self, ids: list[str]) -> None:
            self.aborted.extend(ids)

    for lost in (True, False):
        core = Core(lost)
        engine = VllmEngine()
        engine._llm = SimpleNamespace(llm_engine=core)
        engine._open = {"sb1-0": 1, "sb1-1": 1}
        ticket = Ticket(number=1, created=0, requests=requests(2), outcomes=[None, None],
                        waiting={"sb1-0": 0, "sb1-1": 1})
        with pytest.raises(EngineError) as info:
            engine.collect(ticket) if how == "collect" else engine._drain()
        if lost:  # its own error, as it is
            assert "lost 2 request(s)" in str(info.value) and info.value.__cause__ is None
        else:
            assert info.value.broken and isinstance(info.value.__cause__, RuntimeError)
        assert core.aborted == ["sb1-0", "sb1-1"] and engine._open == {}
        engine._llm = None


# -- the executor acts on the fields, never on the words ----------------------------------------

class TypedFailingEngine(FakeEngine):
    """Raises ``failure`` for batches larger than ``max_batch``, or for ids in ``poison``."""

    def __init__(self, failure: EngineError, *, max_batch: int = 1 << 30,
                 poison: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.failure = failure
        self.max_batch = max_batch
        self.poison = poison
        self.calls = 0

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        self.calls += 1
        if len(requests) > self.max_batch or any(r.custom_id in self.poison for r in requests):
            raise self.failure
        return super().run(requests)


class Factory:
    """Builds ``make()`` first and ``then()`` on every rebuild, and counts them."""

    def __init__(self, make: Any, then: Any = None) -> None:
        self.make = make
        self.then = then or make
        self.built: list[FakeEngine] = []

    def __call__(self) -> FakeEngine:
        engine = (self.then if self.built else self.make)()
        self.built.append(engine)
        return engine


def executor(factory: Factory) -> ChunkExecutor:
    return ChunkExecutor(factory, max_attempts=3, backoff=0)


def test_out_of_memory_splits_the_batch_without_rebuilding_the_engine() -> None:
    factory = Factory(lambda: TypedFailingEngine(EngineError("no room", out_of_memory=True), max_batch=4))
    run = executor(factory).run("m", requests(16))
    assert not any(o.failed for o in run.outcomes) and len(factory.built) == 1
    assert run.retries == 3 and run.attempts == [3] * 16  # 16 -> 8 + 8 -> 4 + 4 + 4 + 4


def test_a_broken_engine_is_rebuilt_before_the_next_try() -> None:
    factory = Factory(lambda: TypedFailingEngine(EngineError("core gone", broken=True), max_batch=0), FakeEngine)
    ex = executor(factory)
    run = ex.run("m", requests(6))
    assert not any(o.failed for o in run.outcomes)
    assert len(factory.built) == 2 and ex.rebuilds == 1


def test_words_in_an_untyped_message_do_not_rebuild_a_typed_error() -> None:
    failure = EngineError("engine core died, broken pipe", out_of_memory=False, broken=False)
    factory = Factory(lambda: TypedFailingEngine(failure, max_batch=2))
    run = executor(factory).run("m", requests(4))
    assert not any(o.failed for o in run.outcomes) and len(factory.built) == 1


@pytest.mark.parametrize(("failure", "code"), [(EngineError("no room", out_of_memory=True), "out_of_memory"),
                                               (EngineError("bad kernel"), "engine_error")])
def test_a_request_that_fails_alone_is_given_up_with_the_failures_kind(failure: EngineError, code: str) -> None:
    factory = Factory(lambda: TypedFailingEngine(failure, poison=frozenset({"req-2"})))
    run = executor(factory).run("m", requests(5))
    assert [o.failed for o in run.outcomes] == [False, False, True, False, False]
    assert run.outcomes[2].error_code == code and "failed on its own 3 times" in (run.outcomes[2].error_message or "")


class BrokenOnCollect(FakeEngine):
    """A pipelining engine whose core is gone by the time a chunk is collected."""

    def collect(self, ticket: list[Request]) -> list[Outcome]:
        raise EngineError("vLLM failed: EngineDeadError: EngineCore encountered an issue", broken=True)


def test_a_pipelined_chunk_on_a_broken_engine_is_redone_on_a_new_one() -> None:
    factory = Factory(BrokenOnCollect, FakeEngine)
    seen: list[tuple[str, dict[str, Any]]] = []
    ex = ChunkExecutor(factory, max_attempts=3, backoff=0, events=lambda name, **fields: seen.append((name, fields)))
    pending = ex.submit("m", requests(5))
    run = ex.collect(pending)
    assert not any(o.failed for o in run.outcomes) and len(factory.built) == 2
    # named events, not sentences: the collect failed, so the chunk was redone, and the engine rebuilt
    assert [name for name, _ in seen] == [DaemonEvent.PIPELINE_REDO, DaemonEvent.ENGINE_REBUILD]
    assert seen[0][1]["stage"] == "collect" and seen[0][1]["error"].startswith("EngineError")
