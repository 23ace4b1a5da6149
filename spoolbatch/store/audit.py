"""The audit trail: one JSON line in ``logs/audit.log`` per API call or CLI command that changes something, and
per refused key.

A line holds when (``ts``), who (``project``, and ``key``: the first 8 hex digits of the key's
sha256, never the key), what (``method``, ``route`` as declared, e.g. ``/v1/batches/{batch_id}/cancel``,
and the ``id`` it named or made) and how it ended (``status``, and ``outcome``: ``ok``, or the
error's code, ``refused_key`` for a key turned away); a CLI command's line (cli/audit.py) has
``method`` ``CLI`` and, for who, the ``user`` that ran it. It is appended and rotated like the other
logs (store/logfile.py: ``log_max_bytes``, ``log_keep``), so several servers on one spool share it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from spoolbatch.store.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES, append_line, rotated_parts
from spoolbatch.store.spool import Spool

log = logging.getLogger("spoolbatch.audit")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit trail."""

    method: str
    route: str
    status: int
    outcome: str
    project: str | None = None
    key: str | None = None  # the key's fingerprint (first 8 hex digits of its sha256); None: no key given
    id: str | None = None  # the batch or file it named, or made
    ts: float = field(default_factory=time.time)
    user: str | None = None  # a CLI command's: the login that ran it (the API's lines have ``key`` instead)


class AuditLog:
    """Appends entries to a spool's ``logs/audit.log``, rotated past ``max_bytes``."""

    def __init__(self, spool: Spool, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        self.path = spool.audit_log()
        self.max_bytes = max_bytes
        self.keep = keep

    def write(self, entry: AuditEntry) -> None:
        """Append one line; a failed write is logged, never raised (the answer has gone out already)."""
        fields = {k: v for k, v in asdict(entry).items() if k != "ts" and (k != "user" or v is not None)}
        line = orjson.dumps({"ts": round(entry.ts, 3), **fields})
        try:
            append_line(self.path, line + b"\n", max_bytes=self.max_bytes, keep=self.keep)
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.path, exc)


def read_audit(spool: Spool) -> list[dict[str, Any]]:
    """Every line of the audit trail still kept, oldest first (rotated parts too)."""
    path = spool.audit_log()
    out: list[dict[str, Any]] = []
    for part in [*reversed(rotated_parts(path)), path]:
        with contextlib.suppress(FileNotFoundError):
            out += [orjson.loads(line) for line in part.read_bytes().splitlines() if line.strip()]
    return out
