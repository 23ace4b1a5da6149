"""OpenAI's Files API: upload (streamed), list, retrieve, content (streamed), delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from spoolbatch.commands import files
from spoolbatch.server.deps import Caller, State, authorized
from spoolbatch.server.models import FileDeleted, FileObject, FileUpload, Page
from spoolbatch.server.openapi import ERRORS, body_of
from spoolbatch.server.responses import JSONL_CONTENT, jsonl_response, model_response
from spoolbatch.server.uploads import receive_file

router = APIRouter(prefix="/v1/files", tags=["files"], dependencies=[Depends(authorized)], responses=ERRORS)


@router.post("", response_model=FileObject, openapi_extra=body_of({"multipart/form-data": FileUpload}))
async def upload_file(request: Request, server: State, caller: Caller) -> Response:
    """Upload a JSONL file (multipart ``file``, ``purpose=batch``), streamed to disk under the per-job limits."""
    record, _ = await receive_file(request, server.spool, max_bytes=server.config.max_job_bytes,
                                   max_lines=server.config.max_requests_per_job, project=caller.project)
    return model_response(FileObject.model_validate(record.to_openai()))


@router.get("", response_model=Page[FileObject])
def list_files(server: State, caller: Caller, limit: int = 10000, after: str | None = None) -> Response:
    """Uploaded files (the caller's project's), newest first, read a page at a time."""
    shown, more = files.page_files(server.spool, limit=max(1, limit), after=after, project=caller.scope)
    return model_response(Page[FileObject].read(shown, lambda r: r.id, lambda r: FileObject.model_validate(
        r.to_openai()), has_more=more))


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, server: State, caller: Caller) -> Response:
    """An upload, or a batch's input, output or error file."""
    return model_response(FileObject.model_validate(files.file_object(server.spool, file_id, caller.scope)))


@router.get("/{file_id}/content", response_class=StreamingResponse, responses=JSONL_CONTENT)
def file_content(file_id: str, server: State, caller: Caller) -> StreamingResponse:
    """A file's lines, streamed."""
    return jsonl_response(files.file_content(server.spool, file_id, caller.scope))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, server: State, caller: Caller) -> Response:
    """Delete an upload (a batch keeps its own input)."""
    files.delete_file(server.spool, file_id, caller.scope)
    return model_response(FileDeleted(id=file_id, deleted=True))
