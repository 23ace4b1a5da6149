"""The OpenAI Batch line format: parse and validate input lines, build output lines.

Input:  ``{"custom_id", "method": "POST", "url", "body"}`` per line.
Output: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``.
Deadletter: one record per bad line with its number, the original text, and the error.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from spoolbatch.errors import RequestError
from spoolbatch.format.bodies import stable_id
from spoolbatch.format.endpoints import ENDPOINTS, GENERATION
from spoolbatch.format.types import Outcome, Request
from spoolbatch.format.validation import parse_spec

_BLANK = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.strip() removes


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that cannot be run, with everything deadletter needs."""

    line: int
    raw: bytes
    code: str
    message: str
    custom_id: str | None = None
    attempts: int = 0


def id_hash(custom_id: str) -> int:
    """A 64-bit hash of a custom_id: duplicate detection without keeping the ids themselves."""
    return int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "little")


class LineParser:
    """Validates lines in order, remembering ids, model and endpoint.

    ``seen`` holds the hashes of the custom_ids this parser accepted (the daemon parses a
    chunk at a time; a repeat across chunks is caught when the chunk is merged);
    ``model`` and ``url`` are the job's, or are fixed by the first valid line.

    ``adapters`` maps LoRA adapter names to the base model each adapts (``engines.adapters``):
    a generation line may name an adapter of the job's model, and a job whose first line
    names an adapter is a job of its base. A name that is neither the job's model nor one of
    its adapters is ``model_not_found`` when the job's model has adapters, else
    ``model_mismatch`` (one model per job), as is an adapter of another model.
    """

    def __init__(self, *, model: str | None = None, url: str | None = None, max_line_bytes: int = 8 << 20,
                 adapters: Mapping[str, str] | None = None) -> None:
        self.seen: set[int] = set()
        self.model = model
        self.url = url
        self.max_line_bytes = max_line_bytes
        self.adapters: Mapping[str, str] = adapters or {}

    def parse(self, raw: bytes, line: int) -> Request | BadLine | None:
        """One line to a ``Request``, a ``BadLine``, or None for a blank line."""
        text = raw.rstrip(b"\r\n")
        if not text or text[0] in _BLANK and not text.strip():  # strip() only when it may be blank
            return None
        if len(text) > self.max_line_bytes:
            return BadLine(line, text, "line_too_long", f"line is {len(text):,} bytes, over the "
                           f"{self.max_line_bytes:,}-byte limit")
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as uexc:
                return BadLine(line, text, "invalid_utf8",
                               f"line is not valid UTF-8 ({uexc.reason} at byte {uexc.start})")
            return BadLine(line, text, "invalid_json", f"line is not valid JSON: {exc}")
        if not isinstance(obj, dict):
            return BadLine(line, text, "not_an_object", f"line is a JSON {type(obj).__name__}, not an object")
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return BadLine(line, text, "missing_custom_id", "'custom_id' must be a non-empty string")
        h = id_hash(custom_id)
        if h in self.seen:
            return BadLine(line, text, "duplicate_custom_id", f"custom_id {custom_id!r} was already used in this job",
                           custom_id)
        self.seen.add(h)
        url = obj.get("url")
        body = obj.get("body")
        if obj.get("method") == "POST" and url in ENDPOINTS and isinstance(body, dict):
            try:
                spec = parse_spec(url, body)
            except RequestError as exc:
                return BadLine(line, text, exc.code, exc.message, custom_id)
            if spec.model == self.model and url == self.url:
                return Request(custom_id, line, url, body, spec, h)  # the hot path: every line after the first
            if url == self.url and url in GENERATION and self.adapters.get(spec.model, "") == self.model:
                return Request(custom_id, line, url, body, spec, h)  # a line of one of the model's adapters
        return self._refuse(obj, line, text, custom_id, h)

    def _refuse(self, obj: dict[str, Any], line: int, text: bytes, custom_id: str, key: int) -> Request | BadLine:
        """The checks after the custom_id, in order, for a line off the hot path (first line, or bad)."""
        def bad(code: str, message: str) -> BadLine:
            return BadLine(line, text, code, message, custom_id)

        if obj.get("method") != "POST":
            return bad("invalid_method", f"'method' must be \"POST\", got {obj.get('method')!r}")
        url = obj.get("url")
        if url not in ENDPOINTS:
            return bad("invalid_url", f"'url' {url!r} is not one of {', '.join(ENDPOINTS)}")
        body = obj.get("body")
        if not isinstance(body, dict):
            return bad("invalid_body", "'body' must be a JSON object")
        try:
            spec = parse_spec(url, body)
        except RequestError as exc:
            return bad(exc.code, exc.message)
        adapted = self.adapters.get(spec.model) if url in GENERATION else None
        if self.model is None:
            self.model, self.url = adapted or spec.model, url
        elif spec.model != self.model and adapted != self.model:
            return bad(*self._other_model(spec.model, url))
        elif url != self.url:
            return bad("url_mismatch", f"url {url!r} differs from this job's endpoint {self.url!r} "
                       "(one endpoint per job)")
        return Request(custom_id=custom_id, line=line, url=url, body=body, spec=spec, key=key)

    def _other_model(self, name: str, url: str) -> tuple[str, str]:
        """The code and message of a line whose model is neither the job's nor an adapter of it."""
        if self.adapters.get(name) == self.model:
            return "unsupported_parameter", f"adapter {name!r} answers {', '.join(GENERATION)} lines, not {url}"
        if name in self.adapters:
            return "model_mismatch", (f"adapter {name!r} adapts {self.adapters[name]!r}, not this job's model "
                                      f"{self.model!r} (one base model per job)")
        if self.model in self.adapters.values() and name not in self.adapters.values():
            return "model_not_found", (f"model {name!r} is neither this job's model {self.model!r} nor one of "
                                       "its adapters (`spoolbatch models` lists them)")
        return "model_mismatch", f"model {name!r} differs from this job's model {self.model!r} (one model per job)"



def result_line(job: str, request: Request, outcome: Outcome) -> bytes:
    """The OpenAI batch output line for an answered request (ids stable across a redone chunk).

    A body may hold numpy arrays (embedding vectors): orjson writes them itself, float32
    values as the shortest text that reads back as the same float32.
    """
    digest = stable_id("", job, request.custom_id)
    return orjson.dumps({
        "id": f"batch_req_{digest}",
        "custom_id": request.custom_id,
        "response": {"status_code": 200, "request_id": f"req_{digest}", "body": outcome.body},
        "error": None,
    }, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"  # (OPT_APPEND_NEWLINE measured 2x slower on short lines)


def _raw_fields(raw: bytes) -> dict[str, Any]:
    try:
        return {"request": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"request": raw.decode("utf-8", "backslashreplace"), "request_base64": base64.b64encode(raw).decode()}


def deadletter_line(job: str, bad: BadLine) -> bytes:
    """The deadletter record for a bad line: where it was, what it was, what went wrong."""
    return orjson.dumps({
        "job": job, "line": bad.line, "custom_id": bad.custom_id, **_raw_fields(bad.raw),
        "error": {"code": bad.code, "message": bad.message}, "attempts": bad.attempts,
    }) + b"\n"


def failed_request(request: Request, raw: bytes, outcome: Outcome, attempts: int) -> BadLine:
    """A valid request that the engine could not answer, as a deadletter entry."""
    return BadLine(request.line, raw, outcome.error_code or "engine_error",
                   outcome.error_message or "the engine failed on this request", request.custom_id, attempts)


def error_line(record: dict[str, Any]) -> bytes:
    """A deadletter record as an OpenAI batch error-file line."""
    custom_id = record.get("custom_id")
    return orjson.dumps({
        "id": stable_id("batch_req_", str(record.get("job")), str(custom_id), str(record.get("line"))),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": record["error"]["code"],
                  "message": f"line {record.get('line')}: {record['error']['message']}"},
    }) + b"\n"
