"""Usage per project and UTC day: requests, prompt and completion tokens, and GPU seconds.

The figures are the jobs' checkpoints' own: each merge adds its chunk's requests, tokens and
engine seconds to the checkpoint's totals and to the day it was merged (``Checkpoint.usage_days``),
so the days of a job add up to its totals. A checkpoint written before days were kept counts
whole on the day it was last updated. Jobs removed by the clean-up leave the figures with them.

From a day on (``since``), a checkpoint last written before that day is not read: a merge
rewrites it, so it has nothing to add. `status` shows the last ``RECENT_DAYS`` days that way.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from spoolbatch.errors import InputError
from spoolbatch.store import usagedays
from spoolbatch.store.batches import BatchRecord, project_of
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.spool import Spool, Stage
from spoolbatch.store.usagedays import job_days

_DAYS_BACK = re.compile(r"([0-9]{1,4})d")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
RECENT_DAYS = 7  # what `status --json` (and the web page) shows: today and the six days before


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One project's usage on one UTC day."""

    project: str
    day: str  # YYYY-MM-DD, UTC
    requests: int = 0  # lines answered or failed in merged chunks
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0  # the engine's time on the project's chunks

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self) | {"total_tokens": self.total_tokens}


def parse_since(text: str, now: float | None = None) -> str:
    """The first day ``--since`` means: a date (YYYY-MM-DD), or ``Nd`` for the last N days (``1d``: today)."""
    text = text.strip()
    if _DATE.fullmatch(text):
        try:
            time.strptime(text, "%Y-%m-%d")
        except ValueError:
            pass
        else:
            return text
    elif m := _DAYS_BACK.fullmatch(text):
        now = time.time() if now is None else now
        return time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * max(0, int(m.group(1)) - 1)))
    raise InputError(f"--since {text[:40]!r} is neither a date (YYYY-MM-DD) nor a number of days (7d)",
                     code="invalid_since")


def usage(spool: Spool, project: str | None = None, since: str | None = None) -> list[UsageRow]:
    """Each project's usage per day, by day then project (only ``project``'s, from day ``since`` on, when given)."""
    spool.require()
    sums: dict[tuple[str, str], list[float]] = {}
    cutoff = calendar.timegm(time.strptime(since, "%Y-%m-%d")) if since is not None else None
    for entry in spool.jobs(Stage.CHECKPOINTED):
        try:
            if cutoff is not None and entry.stat().st_mtime < cutoff:
                continue  # written last before that day: none of its days is from then on
            ckpt = Checkpoint.load(entry.path)
        except FileNotFoundError:  # removed by the clean-up meanwhile
            continue
        if ckpt is None:
            continue
        owner = ckpt.project or project_of(BatchRecord.load(spool, ckpt.job))
        if project is not None and owner != project:
            continue
        for day, figures in job_days(ckpt).items():
            if since is not None and day < since:
                continue
            row = sums.setdefault((day, owner), [0, 0, 0, 0.0])
            for i, value in enumerate(figures[:4]):
                row[i] += value
    return [UsageRow(owner, day, int(r[0]), int(r[1]), int(r[2]), round(r[3], 3))
            for (day, owner), r in sorted(sums.items())]


def recent_usage(spool: Spool, project: str | None = None, now: float | None = None) -> list[UsageRow]:
    """The usage of the last ``RECENT_DAYS`` UTC days (what `status` shows), of ``project`` when given: the
    same figures as ``usage(since=...)``, from the sums the clean-up keeps and the jobs they do not cover
    (store/usagedays.py), so a week of a busy spool's checkpoints is not read each time."""
    sums = usagedays.recent(spool, parse_since(f"{RECENT_DAYS}d", now), now)
    return [UsageRow(owner, day, int(r[0]), int(r[1]), int(r[2]), round(r[3], 3))
            for (day, owner), r in sorted(sums.items()) if project is None or owner == project]
