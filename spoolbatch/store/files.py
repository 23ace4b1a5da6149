"""Uploaded files (the OpenAI Files API): content and a record, both private to the user.

An upload streams into a temporary name in ``files/``; ``commit`` renames it into place and
then writes the record, which is what makes the file exist: a crash before that leaves only a
temporary that ``sweep`` removes. The output and error files of a batch are virtual: their ids
(``file-output-JOB``, ``file-errors-JOB``, and ``file-input-JOB`` for a job dropped with `cp`) name
the job whose lines they stream. In the clean-up (store/cleanup.py), ``sweep_unused`` removes
the uploads no batch reads once they are past the retention.

An upload's id begins with the time it was made (milliseconds, 12 hex digits) and ends with 12
random ones, so ids sort as uploads came: ``newest_first`` lists a page of them from the names of
``files/`` alone, and a cursor whose file was deleted still has its place (the time in its id).
An id of an older release (24 random digits) is placed by its record's modification time.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from spoolbatch.store.fsutil import atomic_write, fsync_dir
from spoolbatch.store.layout import JOB_ID, is_job_id
from spoolbatch.store.removal import Kind, Pass, measure
from spoolbatch.store.spool import Spool

UPLOAD_ID = re.compile(r"file-[0-9a-f]{24}")
VIRTUAL_ID = re.compile(rf"file-(input|output|errors)-({JOB_ID.pattern})")
STALE_UPLOAD_SECONDS = 6 * 3600


_EARLIEST = 1_577_836_800.0  # 2020-01-01: an id's time before it is no time (an older release's random id)


def new_file_id(now: float | None = None) -> str:
    """A fresh upload id: the time (milliseconds, 12 hex digits), then 12 random hex digits."""
    return f"file-{int((time.time() if now is None else now) * 1000):012x}{secrets.token_hex(6)}"


def made_at(file_id: str, now: float | None = None) -> float | None:
    """When an upload id was made, read from it; None for an id of an older release (random digits)."""
    if not UPLOAD_ID.fullmatch(file_id):
        return None
    when = int(file_id[5:17], 16) / 1000
    return when if _EARLIEST <= when <= (time.time() if now is None else now) + 86400 else None


def newest_first(spool: Spool, after: str | None = None) -> list[str]:
    """Upload ids, newest first (those after the upload ``after``, which may be deleted already: its id
    says its place), from the names in ``files/``: no record is read."""
    keyed = []
    for file_id in spool.names(spool.file_meta):
        if not UPLOAD_ID.fullmatch(file_id):
            continue
        when = made_at(file_id)
        if when is None:
            with contextlib.suppress(OSError):
                keyed.append((os.stat(spool.file_meta(file_id)).st_mtime, file_id))
        else:
            keyed.append((when, file_id))
    keyed.sort(reverse=True)
    if after is None:
        return [file_id for _when, file_id in keyed]
    place = next((i for i, (_when, file_id) in enumerate(keyed) if file_id == after), None)
    if place is None:
        when = made_at(after)
        if when is None:
            return []  # not an upload of ours, or an older release's deleted one: no place to go on from
        place = next((i for i, key in enumerate(keyed) if key < (when, after)), len(keyed)) - 1
    return [file_id for _when, file_id in keyed[place + 1:]]


def input_file_id(job: str) -> str:
    """The id of the virtual file holding the input of a job that was not uploaded (`cp`, `submit`)."""
    return f"file-input-{job}"


def output_file_id(job: str) -> str:
    """The id of the virtual file holding ``job``'s results."""
    return f"file-output-{job}"


def error_file_id(job: str) -> str:
    """The id of the virtual file holding ``job``'s error lines."""
    return f"file-errors-{job}"


def parse_file_id(file_id: str) -> tuple[str, str] | None:
    """("upload", id), ("input"|"output"|"errors", job), or None when the id is not one of ours."""
    if UPLOAD_ID.fullmatch(file_id):
        return "upload", file_id
    m = VIRTUAL_ID.fullmatch(file_id)
    if m and is_job_id(m.group(2)):
        return m.group(1), m.group(2)
    return None


@dataclass(slots=True)
class FileRecord:
    """One uploaded file, in OpenAI's terms."""

    id: str
    filename: str
    bytes: int
    lines: int
    purpose: str = "batch"
    created_at: float = 0.0
    project: str | None = None  # the project whose key uploaded it (None: an upload from before projects, default)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI file object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}

    @classmethod
    def load(cls, spool: Spool, file_id: str) -> FileRecord | None:
        """The record of an uploaded file, or None."""
        try:
            data = orjson.loads(spool.file_meta(file_id).read_bytes())
        except (FileNotFoundError, NotADirectoryError, orjson.JSONDecodeError):
            return None
        return cls(**{k: data[k] for k in ("id", "filename", "bytes", "lines", "purpose", "created_at")},
                   project=data.get("project"))


def commit(spool: Spool, tmp: Path, record: FileRecord) -> None:
    """Move a finished upload into place (content first, record last)."""
    os.replace(tmp, spool.file_content(record.id))
    fsync_dir(spool.files)
    atomic_write(spool.file_meta(record.id), orjson.dumps(asdict(record)))


def list_files(spool: Spool) -> list[FileRecord]:
    """Every uploaded file, newest first."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for file_id in spool.names(spool.file_meta):
            record = FileRecord.load(spool, file_id) if file_id.startswith("file-") else None
            if record is not None:
                out.append(record)
    out.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    return out


def delete(spool: Spool, file_id: str) -> bool:
    """Remove an upload (record first, so it stops existing at once); False when there was none."""
    try:
        os.unlink(spool.file_meta(file_id))
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(spool.file_content(file_id))
    fsync_dir(spool.files)
    return True


def sweep(spool: Spool, now: float | None = None, older_than: float = STALE_UPLOAD_SECONDS) -> int:
    """Remove uploads a killed server left half-written, and content without a record."""
    now = time.time() if now is None else now
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        left = [path for path in spool.files.iterdir() if path.name.startswith(".upload.")]
        left += [spool.file_content(file_id) for file_id in spool.names(spool.file_content)
                 if not spool.file_meta(file_id).exists()]
        for path in left:
            with contextlib.suppress(FileNotFoundError):
                if now - path.lstat().st_mtime > older_than:
                    path.unlink()
                    removed += 1
    return removed


def sweep_unused(p: Pass, used: set[str]) -> None:
    """Remove uploads older than the retention that no batch reads (``used``), and what a killed server left."""
    sp = p.spool
    for record in list_files(sp):
        if record.id in used or record.created_at > p.cutoff:
            continue
        n, size = measure([sp.file_meta(record.id), sp.file_content(record.id)])
        if not p.dry_run:
            delete(sp, record.id)
        p.add(Kind.UPLOAD, record.id, n, size, record.filename)
    if not p.dry_run:
        with contextlib.suppress(OSError):
            if swept := sweep(sp, p.now):
                p.add(Kind.TEMPORARY, "files/", swept, 0, "uploads a killed server left")
