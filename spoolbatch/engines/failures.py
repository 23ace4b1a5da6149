"""What an engine failure means, told from torch's, vLLM's and Ray's own exceptions.

This is the one place that reads those libraries' exception types and messages: whether a
single request caused an error (``is_request_shaped``: it fails alone), and otherwise the
``EngineError`` every engine-wide failure becomes, with ``out_of_memory`` and ``broken`` set
here; the executor reads only those fields. Nothing is imported for
the checks: an exception of a library can only exist once that library was imported, so
the types are looked up in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from spoolbatch.errors import EngineError, RequestError

# vLLM's and Ray's words for an engine that is gone (the in-process engine core raises plain
# exceptions with these); an out-of-memory error whose text happens to say "died" is not one.
_DEAD_WORDS = ("engine core", "enginedead", "engine dead", "died", "broken pipe")


def _module(name: str) -> Any:
    """The module if something imported it already, else None (an exception of it cannot exist)."""
    return sys.modules.get(name)


def _ray_task_cause(exc: BaseException) -> BaseException | None:
    """What a Ray actor raised, when ``exc`` is Ray's wrapper of it."""
    ray = _module("ray.exceptions")
    if ray is not None and isinstance(exc, ray.RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause if exc.cause is not exc else None
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, what it was raised from, and what a Ray task error carries; a few levels deep."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        current = _ray_task_cause(current) or current.__cause__


def _types(*found: Any) -> tuple[type[BaseException], ...]:
    """The exception classes among ``found`` (a library that was not imported gives None)."""
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def _out_of_memory_here(exc: BaseException) -> bool:
    if isinstance(exc, EngineError):
        return exc.out_of_memory
    torch, ray = _module("torch"), _module("ray.exceptions")
    # torch.OutOfMemoryError (CUDA allocations), Ray's memory monitor killing a worker
    if isinstance(exc, _types(MemoryError, getattr(torch, "OutOfMemoryError", None),
                              getattr(ray, "OutOfMemoryError", None))):
        return True
    # torch before OutOfMemoryError, and CUDA itself ("CUDA error: out of memory"), say it in words.
    return "out of memory" in str(exc).lower()


def is_out_of_memory(exc: BaseException) -> bool:
    """True when the GPU or the host ran out of memory, whichever library raised it."""
    return any(_out_of_memory_here(e) for e in _chain(exc))


def is_broken(exc: BaseException) -> bool:
    """True when the engine behind ``exc`` is gone: its core died, its pipe broke, its Ray actor was lost."""
    vllm, ray = _module("vllm.v1.engine.exceptions"), _module("ray.exceptions")
    dead = _types(BrokenPipeError, getattr(vllm, "EngineDeadError", None), getattr(ray, "RayActorError", None))
    for e in _chain(exc):
        if isinstance(e, EngineError) and e.broken or isinstance(e, dead):
            return True
    if is_out_of_memory(exc):
        return False
    text = str(exc).lower()
    return any(word in text for word in _DEAD_WORDS)


def is_request_shaped(exc: BaseException) -> bool:
    """True for an error a single request can cause (a bad parameter, template or length).

    Such a request fails alone; any other error is the engine's. ``RequestError`` is ours,
    raised by a request's own checks.
    """
    if isinstance(exc, EngineError):
        return False
    vllm, jinja2 = _module("vllm.exceptions"), _module("jinja2")
    return isinstance(exc, _types(ValueError, TypeError, KeyError, OverflowError, RequestError,
                                  getattr(vllm, "VLLMClientError", None), getattr(jinja2, "TemplateError", None)))


def engine_error(exc: BaseException, what: str = "the engine failed") -> EngineError:
    """``exc`` as an ``EngineError`` that says whether it was out of memory and whether the engine is broken.

    An ``EngineError`` comes back as it is; from a Ray replica, the one the replica raised.
    """
    cause = _ray_task_cause(exc)
    if isinstance(cause, EngineError):
        return cause
    if isinstance(exc, EngineError):
        return exc
    return EngineError(f"{what}: {type(exc).__name__}: {exc}", out_of_memory=is_out_of_memory(exc),
                       broken=is_broken(exc))
