"""Request bodies: multipart uploads streamed straight into the spool, the per-job limits checked as bytes
arrive; a small JSON body read whole up to its limit.

The file part goes to a temporary name in ``files/`` (never held in memory, never in /tmp);
over a limit, the temporary is removed, the rest of the body is read and dropped (so the
client gets its 413 instead of a broken pipe), and nothing is left on disk.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from spoolbatch.commands.files import add_upload
from spoolbatch.config import DEFAULT_PROJECT
from spoolbatch.server.errors import ApiError
from spoolbatch.store.files import FileRecord
from spoolbatch.store.fsutil import FILE_MODE
from spoolbatch.store.spool import Spool

MAX_FIELD_BYTES = 64 * 1024  # a form field other than the file (purpose, metadata...)
MAX_DRAIN_BYTES = 4 << 30  # past this, an oversized body is cut off instead of read to its end
MAX_JSON_BODY = 1 << 20  # a JSON body (a create): read whole, so bounded


@dataclass(slots=True)
class Upload:
    """What a multipart body held: its small fields and its file (in a temporary in the spool)."""

    fields: dict[str, str] = field(default_factory=dict)
    tmp: Path | None = None
    filename: str = "upload.jsonl"
    bytes: int = 0
    lines: int = 0

    def discard(self) -> None:
        """Remove the temporary file."""
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.tmp = None


class _Parts:
    """The parser's callbacks: headers of each part, small fields in memory, the file to ``fd``."""

    def __init__(self, upload: Upload, spool: Spool, file_field: str) -> None:
        self.upload, self.spool, self.file_field = upload, spool, file_field
        self.fd: int | None = None
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.name = ""
        self.value = bytearray()
        self.last = b"\n"
        self.pending: list[bytes] = []
        self.error: ApiError | None = None

    def on_part_begin(self) -> None:
        self.disposition, self.name, self.value = b"", "", bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.disposition)
        self.name = params.get(b"name", b"").decode("utf-8", "replace")
        if self.name == self.file_field:
            if self.fd is not None:
                self.error = ApiError(400, "Only one file may be uploaded per request.", param=self.file_field)
                return
            filename = params.get(b"filename", b"").decode("utf-8", "replace")
            self.upload.filename = os.path.basename(filename.replace("\\", "/"))[:255] or "upload.jsonl"
            self.upload.tmp = self.spool.file_upload_tmp()
            self.fd = os.open(self.upload.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.name == self.file_field and self.fd is not None:
            self.pending.append(data[start:end])
        elif len(self.value) + end - start <= MAX_FIELD_BYTES:
            self.value += data[start:end]
        else:
            self.error = ApiError(413, f"Form field {self.name!r} is too large.", param=self.name)

    def on_part_end(self) -> None:
        if self.name and self.name != self.file_field:
            self.upload.fields[self.name] = self.value.decode("utf-8", "replace")

    def flush(self, max_bytes: int, max_lines: int) -> None:
        """Write what the last block brought to the file, counting bytes and lines against the limits."""
        if self.fd is None or not self.pending:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        self.upload.bytes += len(data)
        self.upload.lines += data.count(b"\n")
        self.last = data[-1:]
        if self.upload.bytes > max_bytes:
            self.error = ApiError(413, f"The file is over the {max_bytes:,}-byte limit per batch.", param="file",
                                  code="file_too_large")
            return
        if self.upload.lines > max_lines:
            self.error = ApiError(413, f"The file has over {max_lines:,} lines (requests) per batch.", param="file",
                                  code="too_many_requests")
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self, durable: bool) -> None:
        if self.fd is not None:
            try:
                if durable:
                    os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = None


async def receive_upload(request: Request, spool: Spool, *, max_bytes: int, max_lines: int,
                         file_field: str = "file") -> Upload:
    """Read a multipart body, its file streamed into the spool; ``ApiError`` (400/413) leaves nothing behind."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(400, "Expected a multipart/form-data body.", code="invalid_request")
    upload = Upload()
    parts = _Parts(upload, spool, file_field)
    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": parts.on_part_begin, "on_part_data": parts.on_part_data,
        "on_part_end": parts.on_part_end, "on_header_field": parts.on_header_field,
        "on_header_value": parts.on_header_value, "on_header_end": parts.on_header_end,
        "on_headers_finished": parts.on_headers_finished})
    drained = 0
    try:
        async for block in request.stream():
            if parts.error is not None:  # read the rest and drop it, so the client sees our answer
                drained += len(block)
                if drained > MAX_DRAIN_BYTES:
                    break
                continue
            try:
                parser.write(block)
            except MultipartParseError:
                parts.error = ApiError(400, "The multipart body is malformed.", code="invalid_request")
                continue
            parts.flush(max_bytes, max_lines)
            if parts.error is not None:
                parts.close(durable=False)
                upload.discard()
        if parts.error is None:
            parser.finalize()
            parts.flush(max_bytes, max_lines)
        if parts.error is None and parts.fd is not None and parts.last != b"\n" and upload.bytes:
            upload.lines += 1
            if upload.lines > max_lines:
                parts.error = ApiError(413, f"The file has over {max_lines:,} lines (requests) per batch.",
                                       param="file", code="too_many_requests")
        parts.close(durable=parts.error is None)
        if parts.error is not None:
            raise parts.error
    except BaseException:
        parts.close(durable=False)
        upload.discard()
        raise
    return upload


async def receive_file(request: Request, spool: Spool, *, max_bytes: int, max_lines: int,
                       project: str = DEFAULT_PROJECT) -> tuple[FileRecord, Upload]:
    """A multipart upload received and committed as a file of ``project`` (``commands.files.add_upload``);
    its other fields."""
    upload = await receive_upload(request, spool, max_bytes=max_bytes, max_lines=max_lines)
    try:
        record = await run_in_threadpool(add_upload, spool, upload.tmp, upload.filename, upload.bytes, upload.lines,
                                         upload.fields.get("purpose", "batch"), project)
        upload.tmp = None  # moved into place
        return record, upload
    finally:
        upload.discard()


async def read_body(request: Request, limit: int = MAX_JSON_BODY) -> bytes:
    """A small body read whole, or a 413 once it passes ``limit`` bytes."""
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > limit:
            raise ApiError(413, "The request body is too large.", code="body_too_large")
    return bytes(body)
