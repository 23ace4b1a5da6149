"""Creating a batch from an uploaded file: OpenAI's create, and the one-step upload-and-create.

Both are `spoolbatch submit` underneath (same validation, limits and placement): the upload is
placed as a hard link, a file with bad lines becomes a failed batch whose errors name each line
(unless ``allow_bad_lines``), and the answer carries the time estimate `submit` prints.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolbatch.commands.batches import BatchView, get_batch
from spoolbatch.commands.submit import Submitted, submit, validate
from spoolbatch.config import Config
from spoolbatch.engines.adapters import adapter_bases
from spoolbatch.errors import InputError
from spoolbatch.format.endpoints import ENDPOINTS
from spoolbatch.store.batches import BatchSpec
from spoolbatch.store.spool import Spool

DEFAULT_ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Created:
    """A batch just created, and what its submit found (requests, estimate)."""

    view: BatchView
    submitted: Submitted

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI batch object, with ``estimate_seconds`` once the spool's throughput is known."""
        out = self.view.to_openai()
        seconds = self.submitted.estimate_seconds
        out["estimate_seconds"] = None if seconds is None else round(seconds, 1)
        return out

    def estimate(self) -> dict[str, Any]:
        """The estimate as the replaced batch server answered it: minutes and seconds, or nulls and why."""
        seconds = self.submitted.estimate_seconds
        if seconds is None:
            reason = "the batch failed validation" if self.submitted.rejected else self.submitted.estimate_basis
            return {"estimated_time_minutes": None, "estimated_seconds": None, "basis": None,
                    "reason": reason or "no estimate: the batch holds no request to run"}
        return {"estimated_time_minutes": round(seconds / 60, 1), "estimated_seconds": round(seconds, 1),
                "basis": self.submitted.estimate_basis, "reason": None}

    def to_one_step(self) -> dict[str, Any]:
        """The one-step route's answer: the batch object and, beside it, the replaced server's keys."""
        out = self.to_openai()
        return out | {"batch_id": out["id"], "total_requests": out["request_counts"]["total"],
                      "estimate": self.estimate()}


def create_batch(config: Config, path: Path, spec: BatchSpec, *, allow_bad_lines: bool = False) -> Created:
    """Create a batch of the upload at ``path``: validated, limited and placed as `submit` does."""
    if spec.endpoint not in ENDPOINTS:
        raise InputError(f"endpoint must be one of {', '.join(ENDPOINTS)}.", code="invalid_endpoint")
    done = submit(path, config, name=secrets.token_hex(12), allow_bad_lines=allow_bad_lines, batch=spec,
                  reject_bad_lines=True, link=True)
    return Created(get_batch(Spool(config.spool), done.jobs[0]), done)


def one_step_endpoint(config: Config, path: Path, endpoint: str | None = None, model: str | None = None) -> str:
    """The endpoint of a one-step create: ``endpoint``, else the lines' ``url``.

    A ``model`` given must be the lines' (the job's model, or one of its LoRA adapters: lines
    naming adapters make a job of their base), whether or not an endpoint came with it; the
    endpoint is checked against the lines' url by `submit`, as OpenAI's create's is.
    """
    if endpoint is not None and not model:
        return endpoint
    found = validate(path, config)
    if model and found.model and found.model not in (model, adapter_bases(config.adapters).get(model)):
        raise InputError(f"model {model!r} does not match the lines' {found.model!r}.", code="model_mismatch")
    return endpoint or found.url or DEFAULT_ENDPOINT
