"""Every state a job can be in, one vocabulary for `status`, `list`, `--json`, metrics and the API.

A job's state comes from where its files are: a file in ``inbox/`` is *queued*; an input in
``active/`` without a checkpoint yet is *claimed*; a checkpoint says *running* or a final
state; a running job that no live worker holds is *interrupted* (it resumes when a worker
comes); a reason file in ``rejected/`` is *rejected*; a `submit --split` part that has no file
at all is *missing*. ``openai_status`` maps each to the OpenAI Batch API's status values.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    MISSING = "missing"

    @property
    def final(self) -> bool:
        """True once nothing more happens to the job (its files stay until retention ends)."""
        return self in FINAL

    def openai_status(self, *, cancelling: bool = False) -> str:
        """The OpenAI batch status of a job in this state (``cancelling`` once a cancel is asked)."""
        if cancelling and not self.final:
            return "cancelling"
        return _OPENAI[self]


FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED, JobState.REJECTED})

# OpenAI: validating -> in_progress -> finalizing -> completed | failed | expired | cancelling -> cancelled.
# A whole file we refuse failed validation, as OpenAI's `failed` says; a queued or just-claimed
# file is still being validated.
_OPENAI = {
    JobState.QUEUED: "validating",
    JobState.CLAIMED: "validating",
    JobState.RUNNING: "in_progress",
    JobState.INTERRUPTED: "in_progress",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.EXPIRED: "expired",
    JobState.CANCELLED: "cancelled",
    JobState.REJECTED: "failed",
    JobState.MISSING: "failed",
}
OPENAI_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                   "cancelled")
