"""Files as OpenAI's Files API shows them: uploads, and each batch's input, output and error files.

An upload is a file in ``files/`` with its record; a batch's own files are virtual (their ids
name the job): the input is the job's input wherever it is now, the output its committed
results, the errors its deadletter as OpenAI error lines plus the requests a cancel or an expiry
left unrun. Unknown ids, and ids of another kind, raise ``FileNotFound``; nothing here knows HTTP.

``project`` (None: every project) limits what an id finds: an upload of another project, or a
file of another project's batch, is ``FileNotFound`` exactly as an unknown id is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from spoolbatch.commands.batches import BatchView, error_lines, get_batch
from spoolbatch.commands.catalog import results
from spoolbatch.config import DEFAULT_PROJECT
from spoolbatch.errors import FileNotFound, InputError, JobNotFound
from spoolbatch.store import files as filestore
from spoolbatch.store.spool import Spool

BLOCK = 1 << 20


def parse(file_id: str) -> tuple[str, str]:
    """(kind, name) of a file id: ``upload`` and its id, or ``input``/``output``/``errors`` and the job."""
    parsed = filestore.parse_file_id(file_id)
    if parsed is None:
        raise FileNotFound(file_id)
    return parsed


def _sees(project: str | None, owner: str | None) -> bool:
    return project is None or (owner or DEFAULT_PROJECT) == project


def _upload(spool: Spool, file_id: str, name: str, project: str | None) -> filestore.FileRecord:
    record = filestore.FileRecord.load(spool, name)
    if record is None or not _sees(project, record.project):
        raise FileNotFound(file_id)
    return record


def upload_path(spool: Spool, file_id: str, project: str | None = None) -> Path:
    """The content of an uploaded file (the input of a batch created from it), or ``FileNotFound``."""
    kind, name = parse(file_id)
    if kind != "upload":
        raise FileNotFound(file_id)
    _upload(spool, file_id, name, project)
    return spool.file_content(name)


def add_upload(spool: Spool, tmp: Path | None, filename: str, size: int, lines: int,
               purpose: str = "batch", project: str = DEFAULT_PROJECT) -> filestore.FileRecord:
    """Commit a finished upload at ``tmp`` (in the spool's ``files/``; None: the body had no file) as a new file."""
    if purpose != "batch":
        raise InputError(f"purpose {purpose[:40]!r} is not supported; use 'batch'.", code="invalid_purpose")
    if tmp is None:
        raise InputError("The body has no 'file' part.", code="missing_file")
    record = filestore.FileRecord(filestore.new_file_id(), filename, size, lines, "batch", time.time(), project)
    filestore.commit(spool, tmp, record)
    return record


def list_files(spool: Spool, project: str | None = None) -> list[filestore.FileRecord]:
    """Every upload (of ``project``, when given), newest first (a batch's own files are listed by its batch)."""
    return [r for r in filestore.list_files(spool) if _sees(project, r.project)]


def page_files(spool: Spool, *, limit: int, after: str | None = None,
               project: str | None = None) -> tuple[list[filestore.FileRecord], bool]:
    """The ``limit`` uploads (of ``project``) after the upload ``after``, newest first, and whether more
    follow: the records of that page are the ones read."""
    page: list[filestore.FileRecord] = []
    for file_id in filestore.newest_first(spool, after):
        record = filestore.FileRecord.load(spool, file_id)
        if record is None or not _sees(project, record.project):
            continue  # deleted meanwhile, or another project's
        if len(page) == limit:
            return page, True
        page.append(record)
    return page, False


def file_object(spool: Spool, file_id: str, project: str | None = None) -> dict[str, Any]:
    """The OpenAI file object of an upload or of a batch's input, output or error file."""
    kind, name = parse(file_id)
    if kind == "upload":
        return _upload(spool, file_id, name, project).to_openai()
    view = _batch(spool, file_id, name, project)
    ckpt = view.checkpoint
    size = {"output": ckpt.results_bytes if ckpt else 0, "errors": ckpt.deadletter_bytes if ckpt else 0,
            "input": ckpt.input_bytes if ckpt else 0}[kind]
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(view.created_at),
            "filename": f"batch_{name}_{kind}.jsonl", "purpose": "batch" if kind == "input" else "batch_output",
            "status": "processed", "expires_at": None, "status_details": None}


def file_content(spool: Spool, file_id: str, project: str | None = None) -> Iterator[bytes]:
    """The bytes of a file, in blocks or lines, streamed; ``FileNotFound`` is raised before the first."""
    kind, name = parse(file_id)
    if kind == "upload":
        _upload(spool, file_id, name, project)
        return _blocks_of(spool.file_content(name), file_id)
    _batch(spool, file_id, name, project)
    if kind == "output":
        return results(spool, name)
    if kind == "errors":
        return error_lines(spool, name)
    f = spool.open_input(name)
    if f is None:
        raise FileNotFound(file_id)
    return _read(f)


def delete_file(spool: Spool, file_id: str, project: str | None = None) -> None:
    """Remove an upload; a batch's own files go when the batch does (``InputError``)."""
    kind, name = parse(file_id)
    if kind != "upload":
        _batch(spool, file_id, name, project)  # another project's batch: not found, as an unknown id
        raise InputError("A batch's own files go when the batch does.", code="batch_file")
    _upload(spool, file_id, name, project)
    if not filestore.delete(spool, name):
        raise FileNotFound(file_id)


def _batch(spool: Spool, file_id: str, job: str, project: str | None) -> BatchView:
    try:
        view = get_batch(spool, job)
    except JobNotFound:
        raise FileNotFound(file_id) from None
    if not _sees(project, view.project):
        raise FileNotFound(file_id)
    return view


def _blocks_of(path: Path, file_id: str) -> Iterator[bytes]:
    try:  # opened now: a file deleted meanwhile is a 404, not a broken stream
        f = open(path, "rb")  # noqa: SIM115 - closed by _read
    except FileNotFoundError:
        raise FileNotFound(file_id) from None
    return _read(f)


def _read(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while block := f.read(BLOCK):
            yield block
