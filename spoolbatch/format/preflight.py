"""Whole-file checks: is this file a usable job at all (not empty, not binary, within limits)?

Used by `submit` before a file is placed and by the daemon before a claimed file is run;
a file that fails is refused whole with a reason the user can read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from spoolbatch.errors import InputError, LimitExceeded
from spoolbatch.store.fsutil import count_lines  # re-exported: submit and control count with it

_SNIFF_LINES = 20


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What a quick scan learns about a job file."""

    size: int
    lines: int


def check_file(path: Path, *, max_bytes: int, max_requests: int, name: str | None = None) -> FileFacts:
    """Raise ``InputError`` (or ``LimitExceeded``) when the file cannot be a job."""
    shown = name or str(path)
    split_hint = "split it into several jobs with `spoolbatch submit --split FILE`"
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise InputError("the file is empty", path=shown, code="empty_file",
                             hint="a job file has one OpenAI batch request per line")
        if size > max_bytes:
            raise LimitExceeded("job size (bytes)", size, max_bytes, path=shown, hint=split_hint)
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
        if b"\x00" in head:
            raise InputError("the file is binary (it contains NUL bytes), not JSONL", path=shown,
                             code="binary_file", hint="a job file is UTF-8 text, one JSON object per line")
        _sniff(head, shown)
        size, lines = count_lines(path)
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", path=shown, code="unreadable") from None
    if lines > max_requests:
        raise LimitExceeded("requests per job", lines, max_requests, path=shown, hint=split_hint)
    return FileFacts(size=size, lines=lines)


def _sniff(head: bytes, shown: str) -> None:
    """Refuse a file none of whose first lines is a JSON object (a CSV, a JSON array...)."""
    lines = [ln for ln in head.split(b"\n")[:_SNIFF_LINES] if ln.strip()]
    complete = lines[:-1] if len(lines) > 1 and not head.endswith(b"\n") else lines
    if not complete:
        return
    for raw in complete:
        try:
            if isinstance(orjson.loads(raw), dict):
                return
        except orjson.JSONDecodeError:
            continue
    raise InputError(f"none of the first {len(complete)} lines is a JSON object: not JSONL", path=shown,
                     code="not_jsonl", hint="a job file has one OpenAI batch request (a JSON object) per line")
