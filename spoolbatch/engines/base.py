"""The narrow interface every inference engine implements.

An engine loads one model, answers a list of validated requests with OpenAI-shaped
response bodies (or a per-request error), and reports token usage through each outcome.
The daemon never looks inside an engine; engines never touch the spool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from spoolbatch.sampling import SamplingSpec


@dataclass(slots=True)
class Request:
    """One validated batch line, ready for an engine (plain slots, not frozen: built per line)."""

    custom_id: str
    line: int
    url: str
    body: dict[str, Any]
    spec: SamplingSpec
    key: int = 0  # the custom_id's 64-bit hash, computed once by the parser


@dataclass(slots=True)
class Outcome:
    """What an engine made of one request: a response body, or an error for deadletter."""

    body: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def ok(cls, body: dict[str, Any]) -> Outcome:
        """An answered request; token counts are read from the body's ``usage``."""
        usage = body.get("usage") or {}
        return cls(body=body, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                   completion_tokens=int(usage.get("completion_tokens", 0)))

    @classmethod
    def fail(cls, code: str, message: str) -> Outcome:
        """A request that failed on its own; the job goes on without it."""
        return cls(error_code=code, error_message=message)

    @property
    def failed(self) -> bool:
        """True when this outcome belongs in deadletter."""
        return self.body is None


@runtime_checkable
class Engine(Protocol):
    """Load a model, answer chunks of requests, release the model."""

    name: str

    def load(self, model: str) -> None:
        """Make ``model`` the loaded model (a no-op when it already is)."""

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """Answer every request, in order: one outcome per request, never fewer."""

    def close(self) -> None:
        """Release the model and whatever memory it holds."""


@runtime_checkable
class PipelinedEngine(Engine, Protocol):
    """An engine that can take the next chunk before the current one is answered."""

    def submit(self, requests: Sequence[Request]) -> Any:
        """Enqueue a chunk (chat and completions only) and return a ticket for ``collect``."""

    def collect(self, ticket: Any) -> list[Outcome]:
        """Work until every request of ``ticket`` is answered; one outcome per request, in order."""

    def abort(self) -> None:
        """Drop everything enqueued and not collected (after a failure)."""
