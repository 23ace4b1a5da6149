"""Whole files refused: the reason file beside each one in ``rejected/``.

``rejected/JOB.reason.json`` says which file, why (a code and a sentence) and what to do;
`list`, `status` and the HTTP API read it. The worker writes one when a claimed file fails
its whole-file checks or is not a regular file, `submit` when a batch's lines fail validation.
"""

from __future__ import annotations

import time

import orjson

from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.spool import Spool


def write_reason(spool: Spool, job: str, name: str, code: str, reason: str, hint: str | None = None) -> None:
    """Record why ``job`` (from the file ``name``) was refused whole."""
    atomic_write(spool.rejected_reason(job), orjson.dumps(
        {"job": job, "file": name, "code": code, "reason": reason, "hint": hint, "at": time.time()},
        option=orjson.OPT_INDENT_2))
