"""The two records that cross from the batch line format to an engine and back.

A ``Request`` is one validated batch line; an ``Outcome`` is what an engine made of it. They
live with the format (not the engines) so that parsing and rendering lines needs no engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spoolbatch.format.validation import SamplingSpec


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
    cached_tokens: int | None = None  # prompt tokens the engine read from its prefix cache; None: not reported

    @classmethod
    def ok(cls, body: dict[str, Any]) -> Outcome:
        """An answered request; token counts are read from the body's ``usage``."""
        usage = body.get("usage") or {}
        if "input_tokens" in usage:  # a Responses API body
            return cls(body=body, prompt_tokens=int(usage["input_tokens"]),
                       completion_tokens=int(usage.get("output_tokens", 0)))
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
