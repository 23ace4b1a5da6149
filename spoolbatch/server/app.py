"""The routes: OpenAI's Files and Batches API, the one-step routes of the batch server spoolbatch
replaced (kept so that server's client runs unchanged), health, the web page.

Each route checks its input, calls the library the CLI calls (commands/, store/), and
renders OpenAI's shapes. Ids are matched against their own pattern before anything else;
no path from a request reaches the file system. Work that reads much or waits runs in the
thread pool (plain ``def`` routes); uploads, which stream, and the poll route ``GET
/v1/batches/{id}`` (a few small reads) are ``async``.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from spoolbatch.commands import catalog, control
from spoolbatch.commands.batches import BatchView, error_lines, estimate_object, get_batch, list_batches
from spoolbatch.commands.status import Liveness, read_workers
from spoolbatch.commands.status import status as spool_status
from spoolbatch.commands.submit import submit, validate
from spoolbatch.config import Config
from spoolbatch.errors import InputError, JobNotFound, SpoolbatchError
from spoolbatch.format.endpoints import ENDPOINTS
from spoolbatch.notify import webhooks
from spoolbatch.server.auth import BearerAuth
from spoolbatch.server.errors import ApiError, from_library, install
from spoolbatch.server.page import PAGE
from spoolbatch.server.uploads import Upload, receive_upload
from spoolbatch.store import files as filestore
from spoolbatch.store.batches import BatchSpec, job_of
from spoolbatch.store.spool import Spool

MAX_JSON_BODY = 1 << 20
JSONL = "application/jsonl"
BLOCK = 1 << 20
PARAM_OF_CODE = {"invalid_completion_window": "completion_window", "invalid_metadata": "metadata",
                 "endpoint_mismatch": "endpoint"}
OUTPUT_EXPIRES = (3600, 30 * 86400)  # OpenAI: output_expires_after.seconds from 1 hour to 30 days


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _job(batch: str) -> str:
    job = job_of(batch)
    if job is None:
        raise ApiError(404, f"No batch found with id {batch[:120]!r}.", param="batch_id", code="not_found")
    return job


def _blocks(lines: Iterator[bytes]) -> Iterator[bytes]:
    """Lines gathered into blocks of about a megabyte: few writes, flat memory."""
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


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            yield block


class Api:
    """The state a route needs: the configuration and the spool (nothing else is kept)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.spool)

    # --- files -----------------------------------------------------------------------------
    async def upload(self, request: Request) -> tuple[filestore.FileRecord, Upload]:
        """Stream a multipart upload into the spool and commit it as a file."""
        upload = await receive_upload(request, self.spool, max_bytes=self.config.max_job_bytes,
                                      max_lines=self.config.max_requests_per_job)
        try:
            purpose = upload.fields.get("purpose", "batch")
            if purpose != "batch":
                raise ApiError(400, f"purpose {purpose[:40]!r} is not supported; use 'batch'.", param="purpose",
                               code="invalid_purpose")
            if upload.tmp is None:
                raise ApiError(400, "The body has no 'file' part.", param="file", code="missing_file")
            record = filestore.FileRecord(filestore.new_file_id(), upload.filename, upload.bytes, upload.lines,
                                          "batch", time.time())
            tmp = upload.tmp
            await run_in_threadpool(filestore.commit, self.spool, tmp, record)
            upload.tmp = None
            return record, upload
        finally:
            upload.discard()

    def file_object(self, file_id: str) -> dict[str, Any]:
        """The file object of an upload or of a batch's input, output or error file."""
        kind, name = self.parse_file(file_id)
        if kind == "upload":
            record = filestore.FileRecord.load(self.spool, name)
            if record is None:
                raise self.no_file(file_id)
            return record.to_openai()
        view = self._batch_of_file(file_id, name)
        ckpt = view.checkpoint
        size = {"output": ckpt.results_bytes if ckpt else 0, "errors": ckpt.deadletter_bytes if ckpt else 0,
                "input": ckpt.input_bytes if ckpt else 0}[kind]
        purpose = "batch" if kind == "input" else "batch_output"
        return {"id": file_id, "object": "file", "bytes": size, "created_at": int(view.created_at),
                "filename": f"batch_{name}_{kind}.jsonl", "purpose": purpose, "status": "processed",
                "expires_at": None, "status_details": None}

    def file_content(self, file_id: str) -> Iterator[bytes]:
        """The lines of a file, streamed."""
        kind, name = self.parse_file(file_id)
        if kind == "upload":
            if filestore.FileRecord.load(self.spool, name) is None:
                raise self.no_file(file_id)
            return _file_blocks(self.spool.file_content(name))
        self._batch_of_file(file_id, name)
        if kind == "output":
            return _blocks(catalog.results(self.spool, name))
        if kind == "errors":
            return _blocks(error_lines(self.spool, name))
        path = self.spool.current_input(name)
        if path is None:
            raise self.no_file(file_id)
        return _file_blocks(path)

    def parse_file(self, file_id: str) -> tuple[str, str]:
        """(kind, name) of a file id, or a 404."""
        parsed = filestore.parse_file_id(file_id)
        if parsed is None:
            raise self.no_file(file_id)
        return parsed

    def _batch_of_file(self, file_id: str, job: str) -> BatchView:
        try:
            return get_batch(self.spool, job)
        except JobNotFound:
            raise self.no_file(file_id) from None

    @staticmethod
    def no_file(file_id: str) -> ApiError:
        """The 404 of a file id."""
        return ApiError(404, f"No such File object: {file_id[:120]!r}.", param="file_id", code="not_found")

    # --- batches ---------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a batch from an uploaded file: the same library call as `spoolbatch submit`."""
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or filestore.parse_file_id(file_id) is None:
            raise ApiError(400, "input_file_id must be the id of an uploaded file.", param="input_file_id",
                           code="invalid_input_file_id")
        kind, name = filestore.parse_file_id(file_id) or ("", "")
        if kind != "upload" or filestore.FileRecord.load(self.spool, name) is None:
            raise ApiError(404, f"No such File object: {file_id!r}.", param="input_file_id", code="not_found")
        return self.create_from(self.spool.file_content(name), body, file_id)

    def create_from(self, path: Path, body: dict[str, Any], file_id: str, *, one_step: bool = False) -> dict[str, Any]:
        """Create a batch of the file at ``path`` (an upload) from a create body.

        ``one_step``: also the keys the replaced batch server answered, beside the batch object's (``batch_id``,
        ``total_requests``, ``estimate``), so its documented client runs unchanged.
        """
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint",
                           code="invalid_endpoint")
        window = body.get("completion_window", "24h")
        allow = body.get("allow_bad_lines", False)
        if not isinstance(allow, bool):
            raise ApiError(400, "allow_bad_lines must be true or false.", param="allow_bad_lines")
        expires_after = body.get("output_expires_after")
        if expires_after is not None:
            seconds = expires_after.get("seconds") if isinstance(expires_after, dict) else None
            if not (isinstance(expires_after, dict) and expires_after.get("anchor") == "created_at"
                    and isinstance(seconds, int) and OUTPUT_EXPIRES[0] <= seconds <= OUTPUT_EXPIRES[1]):
                raise ApiError(400, "output_expires_after must be {'anchor': 'created_at', 'seconds': N} with N "
                               "from 3600 to 2592000.", param="output_expires_after")
            expires_after = {"anchor": "created_at", "seconds": seconds}
        try:
            if not isinstance(window, str):
                raise InputError("completion_window must be a string such as '24h'", code="invalid_completion_window")
            spec = BatchSpec(endpoint=endpoint, completion_window=window, metadata=body.get("metadata") or {},
                             input_file_id=file_id, output_expires_after=expires_after)
            done = submit(path, self.config, name=secrets.token_hex(12), allow_bad_lines=allow, batch=spec,
                          reject_bad_lines=True, link=True)
        except SpoolbatchError as exc:
            raise from_library(exc, PARAM_OF_CODE.get(getattr(exc, "code", ""), "input_file_id")) from None
        view = get_batch(self.spool, done.jobs[0])
        out = view.to_openai()
        if done.estimate_seconds is not None:
            out["estimate_seconds"] = round(done.estimate_seconds, 1)
        if one_step:
            basis = "the batch failed validation" if done.rejected else done.estimate_basis
            out |= {"batch_id": out["id"], "total_requests": out["request_counts"]["total"],
                    "estimate": estimate_object(done.estimate_seconds, basis)}
        return out

    def batch(self, batch: str) -> dict[str, Any]:
        """One batch object."""
        return get_batch(self.spool, _job(batch)).to_openai()

    def batches(self, limit: int, after: str | None) -> dict[str, Any]:
        """A page of batches, newest first."""
        views = list_batches(self.spool)
        if after:
            ids = [v.job for v in views]
            job = job_of(after)
            views = views[ids.index(job) + 1:] if job in ids else []
        page = [v.to_openai() for v in views[:limit]]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(views) > limit}

    def cancel(self, batch: str) -> dict[str, Any]:
        """Cancel a batch: at once when queued, at the next chunk boundary when running."""
        job = _job(batch)
        view = get_batch(self.spool, job)
        if not view.state.final:
            with contextlib.suppress(SpoolbatchError):  # it ended meanwhile: answer with what it is now
                control.cancel(self.spool, job)
        return get_batch(self.spool, job).to_openai()

    # --- the rest --------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Workers by liveness, their GPUs, and the queue."""
        workers = read_workers(self.spool)
        counts = {state.value: 0 for state in Liveness}
        for w in workers:
            counts[w["liveness"]] = counts.get(w["liveness"], 0) + 1
        queued = len(self.spool.inbox_entries())
        gpus = [{"worker": w["worker"], **(w.get("gpu") or {})} for w in workers
                if w["liveness"] == Liveness.ALIVE.value and w.get("gpu")]
        return {"status": "ok" if counts[Liveness.ALIVE.value] else "no_worker", "workers": counts,
                "gpu": gpus, "queue": {"jobs": queued}, "time": int(time.time())}

    def models(self) -> dict[str, Any]:
        """The models the alive workers have loaded, and the configured one."""
        names = {w["model"] for w in read_workers(self.spool)
                 if w["liveness"] == Liveness.ALIVE.value and w.get("model")}
        if self.config.model:
            names.add(self.config.model)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "spoolbatch"}
                                           for n in sorted(names)]}

    def page_status(self) -> dict[str, Any]:
        """What the web page shows: `status --json` with each job's batch id and metadata."""
        return spool_status(self.spool).to_dict()


def _lifespan(config: Config) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Run the webhook sender beside the server while it serves (when webhooks are configured)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = webhooks.start(config, stop, interval=0.5)
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=15)

    return lifespan


async def _json_body(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > MAX_JSON_BODY:
            raise ApiError(413, "The request body is too large.", code="body_too_large")
    try:
        data = orjson.loads(bytes(body))
    except orjson.JSONDecodeError:
        raise ApiError(400, "The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
    return data


def _form_metadata(raw: str | None) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "metadata must be a JSON object.", param="metadata", code="invalid_metadata") from None


def create_app(config: Config) -> FastAPI:
    """The ASGI application over ``config.spool``."""
    api = Api(config)
    api.spool.require()
    api.spool.ensure_api_dirs()
    auth = Depends(BearerAuth(config.api_keys))
    app = FastAPI(title="spoolbatch", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan(config))
    install(app)
    app.state.api = api

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/health")
    def health() -> Response:
        return _json(api.health())

    @app.get("/v1/spoolbatch/status", dependencies=[auth])
    def status() -> Response:
        return _json(api.page_status())

    @app.get("/v1/models", dependencies=[auth])
    def models() -> Response:
        return _json(api.models())

    @app.post("/v1/files", dependencies=[auth])
    async def upload_file(request: Request) -> Response:
        record, _ = await api.upload(request)
        return _json(record.to_openai())

    @app.get("/v1/files", dependencies=[auth])
    def list_files(limit: int = 10000, after: str | None = None) -> Response:
        records = filestore.list_files(api.spool)
        if after:
            ids = [r.id for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        page = [r.to_openai() for r in records[:max(1, limit)]]
        return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                      "last_id": page[-1]["id"] if page else None, "has_more": len(records) > len(page)})

    @app.get("/v1/files/{file_id}", dependencies=[auth])
    def get_file(file_id: str) -> Response:
        return _json(api.file_object(file_id))

    @app.get("/v1/files/{file_id}/content", dependencies=[auth])
    def file_content(file_id: str) -> StreamingResponse:
        return StreamingResponse(api.file_content(file_id), media_type=JSONL)

    @app.delete("/v1/files/{file_id}", dependencies=[auth])
    def delete_file(file_id: str) -> Response:
        kind, name = api.parse_file(file_id)
        if kind != "upload":
            raise ApiError(400, "A batch's own files go when the batch does.", param="file_id")
        if not filestore.delete(api.spool, name):
            raise Api.no_file(file_id)
        return _json({"id": file_id, "object": "file", "deleted": True})

    @app.post("/v1/batches", dependencies=[auth])
    async def create_batch(request: Request) -> Response:
        if request.headers.get("content-type", "").startswith("multipart/"):
            record, upload = await api.upload(request)  # one-step create, for the replaced batch server's client
            f = upload.fields
            body: dict[str, Any] = {"endpoint": f.get("endpoint") or None,
                                    "completion_window": f.get("completion_window") or "24h",
                                    "metadata": _form_metadata(f.get("metadata")),
                                    "allow_bad_lines": f.get("allow_bad_lines", "").lower() in ("1", "true", "yes")}
            path = api.spool.file_content(record.id)
            if body["endpoint"] is None:
                found = await run_in_threadpool(validate, path, config)
                body["endpoint"] = found.url or "/v1/chat/completions"
                if f.get("model") and found.model and f["model"] != found.model:
                    raise ApiError(400, f"model {f['model']!r} does not match the lines' {found.model!r}.",
                                   param="model", code="model_mismatch")
            return _json(await run_in_threadpool(api.create_from, path, body, record.id, one_step=True))
        return _json(await run_in_threadpool(api.create, await _json_body(request)))

    @app.get("/v1/batches", dependencies=[auth])
    def list_batches_route(limit: int = 20, after: str | None = None) -> Response:
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be from 1 to 100.", param="limit")
        return _json(api.batches(limit, after))

    @app.get("/v1/batches/{batch_id}", dependencies=[auth])
    async def get_batch_route(batch_id: str) -> Response:
        # The poll route: a few small reads of local files (about 0.5 ms), cheaper on the event loop
        # than the thread pool's hand-off; anything that may stream or scan stays in the pool.
        return _json(api.batch(batch_id))

    @app.post("/v1/batches/{batch_id}/cancel", dependencies=[auth])
    def cancel_batch(batch_id: str) -> Response:
        return _json(api.cancel(batch_id))

    @app.delete("/v1/batches/{batch_id}", dependencies=[auth])
    def delete_batch(batch_id: str) -> Response:
        return _json(api.cancel(batch_id))

    @app.get("/v1/batches/{batch_id}/results", dependencies=[auth])
    def batch_results(batch_id: str) -> StreamingResponse:
        job = _job(batch_id)
        get_batch(api.spool, job)
        return StreamingResponse(_blocks(catalog.results(api.spool, job)), media_type=JSONL)

    @app.get("/v1/batches/{batch_id}/failed", dependencies=[auth])
    def batch_failed(batch_id: str) -> StreamingResponse:
        job = _job(batch_id)
        get_batch(api.spool, job)
        return StreamingResponse(_blocks(error_lines(api.spool, job)), media_type=JSONL)

    @app.get("/v1/batches/{batch_id}/logs", dependencies=[auth])
    def batch_logs(batch_id: str, tail: int | None = None) -> Response:
        job = _job(batch_id)
        get_batch(api.spool, job)
        return _json({"object": "list", "batch_id": batch_id, "data": catalog.log_lines(api.spool, job, tail)})

    return app
