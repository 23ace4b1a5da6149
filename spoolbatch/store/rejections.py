"""Whole files refused: the reason file beside each one in ``rejected/``, read as a ``Rejection``.

``rejected/JOB.reason.json`` says which file, why (a code and a sentence) and what to do;
`list`, `status`, the HTTP API, webhooks and the clean-up read it. The worker writes one when
a claimed file fails its whole-file checks or is not a regular file, `submit` when a batch's
lines fail validation. The job is rejected from the moment its reason is there.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from spoolbatch.store import jobindex
from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a whole file was refused; every field is plain JSON."""

    job: str
    file: str = ""  # its name when it came (in the inbox, or the upload's)
    code: str | None = None
    reason: str | None = None
    hint: str | None = None
    at: float | None = None  # when it was refused

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, as the reason file holds it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], job: str = "") -> Rejection:
        """Read a reason file's contents; a field an older file lacks (or holds oddly) is left at its
        default, and ``job`` (the file's name) stands in for a missing job id."""
        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        at = data.get("at")
        when = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
        return cls(job=text("job") or job, file=text("file") or "", code=text("code"), reason=text("reason"),
                   hint=text("hint"), at=when)

    def save(self, spool: Spool) -> None:
        """Write the reason file atomically and durably."""
        atomic_write(spool.rejected_reason(self.job), orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, spool: Spool, job: str) -> Rejection | None:
        """The reason ``job`` was refused, or None when it has none (or it cannot be read)."""
        try:
            data = orjson.loads(spool.rejected_reason(job).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return cls.from_dict(data, job) if isinstance(data, dict) else None


def write_reason(spool: Spool, job: str, name: str, code: str, reason: str, hint: str | None = None) -> None:
    """Record why ``job`` (from the file ``name``) was refused whole."""
    rejection = Rejection(job, name, code, reason, hint, time.time())
    rejection.save(spool)
    jobindex.ended(spool, job, JobState.REJECTED, rejection.at)
