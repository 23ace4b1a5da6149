"""The narrow interface every inference engine implements.

An engine loads one model, answers a list of validated requests with OpenAI-shaped
response bodies (or a per-request error), and reports token usage through each outcome.
The daemon never looks inside an engine; engines never touch the spool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from spoolbatch.format.types import Outcome, Request


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
        """Enqueue a chunk (chat, completions or embeddings) and return a ticket for ``collect``."""

    def collect(self, ticket: Any) -> list[Outcome]:
        """Work until every request of ``ticket`` is answered; one outcome per request, in order."""

    def abort(self) -> None:
        """Drop everything enqueued and not collected (after a failure)."""
