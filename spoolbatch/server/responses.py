"""Answers: a model as JSON, and JSONL streamed in blocks of about a megabyte (few writes, flat memory)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

JSONL = "application/jsonl"
BLOCK = 1 << 20
JSONL_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {"content": {JSONL: {"schema": {"type": "string"}}}, "description": "JSON lines, streamed"}}


def model_response(model: BaseModel) -> Response:
    """A model as its JSON (validated when it was built; FastAPI does not convert it again)."""
    return Response(model.model_dump_json(), media_type="application/json")


def jsonl_response(lines: Iterable[bytes]) -> StreamingResponse:
    """Lines (or blocks of them) streamed as JSONL."""
    return StreamingResponse(_blocks(lines), media_type=JSONL)


def _blocks(lines: Iterable[bytes]) -> Iterator[bytes]:
    buf: list[bytes] = []
    size = 0
    for line in lines:
        buf.append(line)
        size += len(line)
        if size >= BLOCK:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)
