"""Batch records: what the OpenAI Batch API adds to a job (window, metadata, input file, errors).

A job is a batch whether or not it has a record: one dropped with `cp` has none and gets the
defaults (no window, no metadata). Its batch id is ``batch_<job>``, so either name finds the
other without an index. ``stop_state`` is the one predicate a worker asks before it starts a
chunk: a pending cancel or a window that has passed stops the job at a chunk boundary.
In the clean-up (store/cleanup.py), ``sweep`` removes the records whose job never came or is gone.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from spoolbatch.config import DEFAULT_PROJECT, is_project_name
from spoolbatch.errors import InputError
from spoolbatch.store.fsutil import atomic_write
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.layout import is_job_id
from spoolbatch.store.priority import NORMAL, parse_priority
from spoolbatch.store.removal import Kind, Pass, measure, remove
from spoolbatch.store.spool import Spool

BATCH_PREFIX = "batch_"
DEFAULT_WINDOW = "24h"
MIN_WINDOW_SECONDS = 10
MAX_WINDOW_SECONDS = 7 * 86400
_WINDOW = re.compile(r"([1-9][0-9]{0,7})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# OpenAI's limits on a batch's metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def batch_id(job: str) -> str:
    """The batch id of ``job``."""
    return BATCH_PREFIX + job


def job_of(batch: str) -> str | None:
    """The job of a batch id, or None when the id is not one of ours (never a path)."""
    job = batch.removeprefix(BATCH_PREFIX)
    return job if batch.startswith(BATCH_PREFIX) and is_job_id(job) else None


def parse_window(text: str) -> int:
    """Seconds of a completion window: ``N`` + ``s``/``m``/``h``/``d``, from 10 seconds to 7 days."""
    m = _WINDOW.fullmatch(text.strip()) if isinstance(text, str) else None
    seconds = int(m.group(1)) * _UNIT[m.group(2)] if m else 0
    if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
        raise InputError(f"completion_window {text!r} is not N followed by s, m, h or d, from 10s to 7d",
                         code="invalid_completion_window")
    return seconds


def check_metadata(metadata: Any) -> dict[str, str]:
    """``metadata`` as OpenAI accepts it: up to 16 string pairs, keys of 64 and values of 512 characters."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InputError("metadata must be an object of string keys and values", code="invalid_metadata")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InputError(f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
                         code="invalid_metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError("metadata keys and values must be strings", code="invalid_metadata")
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InputError(f"metadata key {key[:70]!r}: keys may have {MAX_METADATA_KEY} and values "
                             f"{MAX_METADATA_VALUE} characters", code="invalid_metadata")
    return dict(metadata)


@dataclass(slots=True)
class BatchSpec:
    """What a client asks for when it creates a batch (HTTP) or submits with batch flags (CLI)."""

    endpoint: str | None = None
    completion_window: str | None = None  # None: no window (a CLI job without --completion-window)
    metadata: dict[str, str] = field(default_factory=dict)
    input_file_id: str | None = None
    output_expires_after: dict[str, Any] | None = None
    project: str | None = None  # the project it belongs to (the caller's key's, `submit --project`); None: default
    priority: int | str | None = None  # extension: a name or number (store/priority.py); None: metadata's, else normal

    def __post_init__(self) -> None:
        self.metadata = check_metadata(self.metadata)
        if self.completion_window is not None:
            parse_window(self.completion_window)
        if self.priority is not None:
            self.priority = parse_priority(self.priority)
        elif "priority" in self.metadata:
            parse_priority(self.metadata["priority"])  # refused at creation, not ignored when scheduled
        if self.project is not None and not is_project_name(self.project):
            raise InputError(f"project {self.project[:80]!r} is not a project name (letters, digits, '-' and '_')",
                             code="invalid_project")


@dataclass(slots=True)
class BatchRecord:
    """The API's fields of one job, written before the job is placed and never changed after (but for
    ``project``, which the claim makes the folder's: ``settle_project``)."""

    job: str
    endpoint: str | None = None
    input_file_id: str | None = None
    completion_window: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    output_expires_after: dict[str, Any] | None = None
    allow_bad_lines: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation errors of a batch refused whole
    requests: int = 0  # valid requests at creation (0: a `submit --split` part, counted when claimed)
    model: str | None = None
    project: str | None = None  # the project it belongs to (None: a record from before projects, ``default``)
    prompt_tokens_estimate: int = 0  # estimated at submit (format/estimate.py), for the project's token quota
    priority: int | None = None  # as created; None: metadata's ``priority``, else normal (``job_priority``)

    @property
    def id(self) -> str:
        """The batch id."""
        return batch_id(self.job)

    @property
    def job_priority(self) -> int:
        """The priority the job runs at: the create body's, else metadata's ``priority``, else normal."""
        if self.priority is not None:
            return int(self.priority)
        try:
            return parse_priority(self.metadata["priority"]) if "priority" in self.metadata else NORMAL
        except InputError:  # a record written before metadata's priority was checked
            return NORMAL

    @classmethod
    def new(cls, job: str, spec: BatchSpec, *, allow_bad_lines: bool = False, now: float | None = None,
            errors: list[dict[str, Any]] | None = None, requests: int = 0,
            model: str | None = None, prompt_tokens: int = 0) -> BatchRecord:
        """A record for ``job`` created now from ``spec``."""
        now = time.time() if now is None else now
        window = spec.completion_window
        return cls(job, spec.endpoint, spec.input_file_id, window, dict(spec.metadata), now,
                   now + parse_window(window) if window else None, spec.output_expires_after, allow_bad_lines,
                   errors or [], requests, model, project=spec.project or DEFAULT_PROJECT,
                   prompt_tokens_estimate=prompt_tokens,
                   priority=None if spec.priority is None else parse_priority(spec.priority))

    def save(self, spool: Spool) -> None:
        """Write the record atomically and durably."""
        atomic_write(spool.batch_record(self.job), orjson.dumps(asdict(self)))

    @classmethod
    def load(cls, spool: Spool, job: str) -> BatchRecord | None:
        """The record of ``job``, or None (a job dropped with `cp`)."""
        try:
            data = orjson.loads(spool.batch_record(job).read_bytes())
        except (FileNotFoundError, NotADirectoryError, orjson.JSONDecodeError):
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def settle_project(spool: Spool, job: str, project: str) -> None:
    """Make ``job``'s record name ``project``, the folder its file was claimed from (the folder wins).

    Called with the job lock held, before the first checkpoint: a file dropped into
    ``inbox/PROJECT/`` with `cp` has no record, and gets one holding only its project.
    """
    record = BatchRecord.load(spool, job)
    if record is None and project == DEFAULT_PROJECT:
        return
    if record is None:
        record = BatchRecord(job, created_at=time.time())
    elif (record.project or DEFAULT_PROJECT) == project:
        return
    record.project = project
    spool.ensure_api_dirs()
    record.save(spool)


def project_of(record: BatchRecord | None) -> str:
    """The project of a job by its record (``default`` without one)."""
    return (record.project if record is not None else None) or DEFAULT_PROJECT


def cancel_requested_at(spool: Spool, job: str) -> float | None:
    """When a cancel of ``job`` was asked, while it is pending."""
    try:
        return float(spool.cancel_marker(job).read_text() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def stop_state(spool: Spool, job: str, now: float | None = None) -> JobState | None:
    """CANCELLED when a cancel is pending, EXPIRED when the batch's window has passed, else None."""
    if spool.cancel_marker(job).exists():
        return JobState.CANCELLED
    record = BatchRecord.load(spool, job)
    if record is not None and record.expires_at is not None \
            and (time.time() if now is None else now) >= record.expires_at:
        return JobState.EXPIRED
    return None


def input_file_ids(spool: Spool, skip: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The uploads that batch records read, leaving out the records of the jobs in ``skip``."""
    used = set()
    for job in spool.names(spool.batch_record):
        if job in skip:
            continue
        with contextlib.suppress(OSError, orjson.JSONDecodeError, AttributeError):
            used.add(orjson.loads(spool.batch_record(job).read_bytes()).get("input_file_id"))
    return used


def sweep(p: Pass) -> None:
    """Remove batch records older than the retention whose job never got placed or is gone."""
    sp = p.spool
    for job in sp.names(sp.batch_record):
        if job in p.gone or sp.job_exists(job):
            continue
        path = sp.batch_record(job)
        try:
            created = float(orjson.loads(path.read_bytes()).get("created_at") or 0) or path.stat().st_mtime
        except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue
        if created > p.cutoff:
            continue
        with p.job_lock(job) as held:
            if not held or sp.job_exists(job):
                continue
            n, size = measure([path])
            if not p.dry_run:
                remove(path)
            p.add(Kind.BATCH, job, n, size, "its job is gone")
