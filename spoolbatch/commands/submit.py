"""`spoolbatch submit`: validate a job file streaming, apply the limits, place it atomically.

Placing is write-to-a-dotfile-in-the-inbox, fsync, rename: the daemon never sees a
partial file. ``--split`` cuts a file over the per-job limits into parts within them and
records the parts as one group whose results one command returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import orjson

from spoolbatch.config import DEFAULT_PROJECT, Config
from spoolbatch.engines.adapters import adapter_bases
from spoolbatch.errors import BadLines, InputError, LimitExceeded, QuotaExceeded
from spoolbatch.format.estimate import prompt_tokens
from spoolbatch.format.lines import BadLine, LineParser
from spoolbatch.format.preflight import check_file, count_lines
from spoolbatch.store.batches import BatchRecord, BatchSpec
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.fsutil import atomic_write, atomic_writer, fsync_dir, unique_suffix
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.rejections import write_reason
from spoolbatch.store.spool import Spool, Stage, sanitize_job_id

MAX_KEPT = 1000  # bad lines a validation keeps to report (it counts them all)


@dataclass(slots=True)
class Validation:
    """What a streaming pass over a job file found."""

    requests: int = 0
    bad: list[BadLine] = field(default_factory=list)
    bad_count: int = 0
    model: str | None = None
    url: str | None = None
    prompt_tokens: int = 0  # estimated (format/estimate.py), over the valid requests


@dataclass(slots=True)
class Submitted:
    """The job ids a submit placed (one, or a group's parts) and what they hold."""

    jobs: list[str]
    requests: int
    group: str | None = None
    validation: Validation | None = None
    estimate_seconds: float | None = None
    estimate_basis: str = ""
    rejected: bool = False  # refused whole for bad lines (``reject_bad_lines``): a failed batch


def validate(path: Path, config: Config) -> Validation:
    """Parse every line as the daemon will; keep the first bad lines (``MAX_KEPT``) for the message."""
    out = Validation()
    parser = LineParser(max_line_bytes=config.max_line_bytes, adapters=adapter_bases(config.adapters))
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            parsed = parser.parse(raw, n)
            if parsed is None:
                continue
            if isinstance(parsed, BadLine):
                out.bad_count += 1
                if len(out.bad) < MAX_KEPT:
                    out.bad.append(replace(parsed, raw=b""))  # the line itself may be megabytes
                continue
            out.requests += 1
            out.prompt_tokens += prompt_tokens(parsed.body)
    out.model, out.url = parser.model, parser.url
    return out


def queued(spool: Spool) -> tuple[int, int]:
    """(jobs, requests) waiting in the inbox."""
    jobs = requests = 0
    for entry in spool.inbox_entries():
        if entry.path.is_file() and not entry.path.is_symlink():
            jobs += 1
            requests += count_lines(entry.path)[1]
    return jobs, requests


def queued_in_project(spool: Spool, config: Config, project: str, *, tokens: bool = True) -> tuple[int, int, int]:
    """(jobs, requests, estimated prompt tokens) of ``project`` waiting in the inbox.

    A job's tokens are its record's estimate; a file dropped with `cp` has none and is read
    (only with ``tokens``: when the project has a token quota).
    """
    jobs = requests = total = 0
    for entry in spool.inbox_entries():
        if entry.project != project or not entry.path.is_file() or entry.path.is_symlink():
            continue
        jobs += 1
        requests += count_lines(entry.path)[1]
        if tokens:
            record = BatchRecord.load(spool, sanitize_job_id(entry.name))
            if record is not None and record.prompt_tokens_estimate:
                total += record.prompt_tokens_estimate
            else:
                try:
                    total += validate(entry.path, config).prompt_tokens
                except OSError:  # claimed meanwhile
                    jobs -= 1
    return jobs, requests, total


def _check_queue(spool: Spool, config: Config, jobs: int, requests: int, shown: str,
                 project: str = DEFAULT_PROJECT, tokens: int = 0) -> None:
    have_jobs, have_requests = queued(spool)
    hint = "wait for the daemon to drain the queue, or raise the limit in config.toml"
    if have_jobs + jobs > config.max_queued_jobs:
        raise LimitExceeded("queued jobs", have_jobs + jobs, config.max_queued_jobs, path=shown, hint=hint)
    if have_requests + requests > config.max_queued_requests:
        raise LimitExceeded("queued requests", have_requests + requests, config.max_queued_requests,
                            path=shown, hint=hint)
    quota = config.project(project)
    if quota is None or (quota.max_queued_jobs is None and quota.max_queued_requests is None
                         and quota.max_queued_prompt_tokens is None):
        return
    hint = f"wait for project {project!r}'s queued jobs to run, or raise its quota in [[projects]] in config.toml"
    have = queued_in_project(spool, config, project, tokens=quota.max_queued_prompt_tokens is not None)
    for limit, maximum, value in (("queued jobs", quota.max_queued_jobs, have[0] + jobs),
                                  ("queued requests", quota.max_queued_requests, have[1] + requests),
                                  ("queued prompt tokens", quota.max_queued_prompt_tokens, have[2] + tokens)):
        if maximum is not None and value > maximum:
            raise QuotaExceeded(project, limit, value, maximum, path=shown, hint=hint)


def _parts(f: BinaryIO, max_lines: int, max_bytes: int) -> Iterator[list[bytes]]:
    part: list[bytes] = []
    size = 0
    for raw in f:
        if not raw.endswith(b"\n"):
            raw += b"\n"
        if part and (len(part) >= max_lines or size + len(raw) > max_bytes):
            yield part
            part, size = [], 0
        part.append(raw)
        size += len(raw)
    if part:
        yield part


def _place(spool: Spool, job: str, write: Iterator[bytes] | list[bytes], project: str = DEFAULT_PROJECT) -> None:
    """Write the job into a dotfile in its project's inbox, fsync, rename into place."""
    spool.ensure_project_inbox(project)
    _place_at(spool.queued_input(job, project), write)


def _place_at(target: Path, write: Iterator[bytes] | list[bytes]) -> None:
    with atomic_writer(target) as out:
        for chunk in write:
            out.write(chunk)


def _place_file(target: Path, path: Path, link: bool) -> None:
    """Put the file at ``path`` at ``target`` in one rename: a hard link when asked and possible, else a copy."""
    if link:
        tmp = target.with_name(f".{target.name}.{unique_suffix()}.tmp")
        try:
            os.link(path, tmp, follow_symlinks=False)
            os.rename(tmp, target)
            fsync_dir(target.parent)
            return
        except OSError:  # another file system, or links not allowed: copy
            tmp.unlink(missing_ok=True)
    _place_at(target, _copy(path))


def _copy(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            yield block


def estimate(spool: Spool, validation: Validation) -> tuple[float | None, str]:
    """Seconds the job may take, from the throughput of jobs this spool finished before."""
    lines = seconds = 0.0
    for entry in list(spool.jobs(Stage.CHECKPOINTED))[-50:]:
        ckpt = Checkpoint.load(entry.path)
        if ckpt and ckpt.status == JobState.COMPLETED and ckpt.busy_seconds > 0:
            lines += ckpt.lines_consumed
            seconds += ckpt.busy_seconds
    if not lines:
        return None, "no finished job on this spool to measure throughput from yet"
    rate = lines / seconds
    return validation.requests / rate, f"at {rate:,.1f} requests/s, as measured on this spool's finished jobs"


def submit(path: Path, config: Config, *, name: str | None = None, split: bool = False,
           allow_bad_lines: bool = False, batch: BatchSpec | None = None, reject_bad_lines: bool = False,
           link: bool = False) -> Submitted:
    """Validate ``path`` and place it in the inbox (or its parts, with ``split``).

    ``batch`` records the job's batch fields (window, metadata, endpoint, project) before it is
    placed; a job of a project other than ``default`` waits in ``inbox/PROJECT/`` and always has a record.
    A file with bad lines raises ``InputError``, or with ``reject_bad_lines`` (the HTTP API) is
    recorded as a refused job, a failed batch whose errors name each bad line. ``link`` places
    a hard link to ``path`` instead of a copy where it can (an upload in the spool, which nothing
    writes again: a 200 MB file is placed at once, under the claim lock, and not stored twice).
    """
    spool = Spool(config.spool)
    spool.require()
    shown = str(path)
    if not path.is_file():
        raise InputError("no such file", path=shown, code="not_found")
    limit = (1 << 62) if split else config.max_job_bytes
    facts = check_file(path, max_bytes=limit, max_requests=(1 << 62) if split else config.max_requests_per_job,
                       name=shown)
    result = validate(path, config)
    base = name or path.name
    if result.bad_count and not allow_bad_lines:
        if reject_bad_lines:
            return _reject(spool, path, base, result, batch or BatchSpec(), link)
        raise BadLines(shown, [(b.line, b.code, b.message) for b in result.bad], result.bad_count,
                       hint="fix the lines, or pass --allow-bad-lines to send them to deadletter")
    if not result.requests:
        raise InputError("the file holds no valid request", path=shown, code="no_requests")
    if batch is not None and batch.endpoint and result.url and batch.endpoint != result.url:
        raise InputError(f"the endpoint {batch.endpoint!r} does not match the lines' url {result.url!r}",
                         path=shown, code="endpoint_mismatch")
    project = (batch.project if batch is not None else None) or DEFAULT_PROJECT
    with spool.claim_lock():
        if not split or (facts.lines <= config.max_requests_per_job and facts.size <= config.max_job_bytes):
            _check_queue(spool, config, 1, facts.lines, shown, project, result.prompt_tokens)
            job = spool.unique_job_id(base)
            _record(spool, job, batch, allow_bad_lines, result)
            spool.ensure_project_inbox(project)
            _place_file(spool.queued_input(job, project), path, link)
            seconds, basis = estimate(spool, result)
            return Submitted([job], result.requests, validation=result, estimate_seconds=seconds,
                             estimate_basis=basis)
        parts = -(-facts.lines // config.max_requests_per_job)
        _check_queue(spool, config, parts, facts.lines, shown, project, result.prompt_tokens)
        group = spool.unique_job_id(base)
        jobs: list[str] = []
        taken: set[str] = {group}
        with open(path, "rb") as f:
            for i, part in enumerate(_parts(f, config.max_requests_per_job, config.max_job_bytes), start=1):
                job = spool.unique_job_id(f"{sanitize_job_id(group)}.part{i:03d}", taken)
                taken.add(job)
                share = -(-result.prompt_tokens * len(part) // max(1, facts.lines))  # the part's share
                _record(spool, job, batch, allow_bad_lines, None, share)
                _place(spool, job, part, project)
                jobs.append(job)
        atomic_write(spool.group(group), orjson.dumps({"group": group, "source": path.name, "jobs": jobs,
                                                       "requests": result.requests, "project": project},
                                                      option=orjson.OPT_INDENT_2))
    seconds, basis = estimate(spool, result)
    return Submitted(jobs, result.requests, group=group, validation=result, estimate_seconds=seconds,
                     estimate_basis=basis)


def _record(spool: Spool, job: str, batch: BatchSpec | None, allow_bad_lines: bool,
            result: Validation | None, prompt_tokens: int = 0) -> None:
    """Write the batch record before the job is placed: a worker that claims it finds its window."""
    if batch is not None:
        spool.ensure_api_dirs()
        BatchRecord.new(job, batch, allow_bad_lines=allow_bad_lines, requests=result.requests if result else 0,
                        model=result.model if result else None,
                        prompt_tokens=result.prompt_tokens if result else prompt_tokens).save(spool)


def _reject(spool: Spool, path: Path, base: str, result: Validation, batch: BatchSpec, link: bool) -> Submitted:
    """Record a file with bad lines as refused whole: a failed batch whose errors name the lines."""
    errors = [{"code": b.code, "line": b.line, "message": b.message, "param": None} for b in result.bad]
    reason = f"{result.bad_count:,} line(s) failed validation (first: line {result.bad[0].line}: " \
             f"{result.bad[0].message})"
    with spool.claim_lock():
        job = spool.unique_job_id(base)
        spool.ensure_api_dirs()
        BatchRecord.new(job, batch, errors=errors, requests=result.requests + result.bad_count,
                        model=result.model, prompt_tokens=result.prompt_tokens).save(spool)
        _place_file(spool.rejected_file(job), path, link)
        write_reason(spool, job, path.name, "invalid_lines", reason,
                     "fix the lines, or create the batch with allow_bad_lines")
    return Submitted([job], result.requests, validation=result, rejected=True)


def write_job(spool: Spool, name: str, lines: list[bytes], project: str = DEFAULT_PROJECT) -> str:
    """Place ``lines`` as a new job named after ``name`` in ``project`` (used by `retry`)."""
    with spool.claim_lock():
        job = spool.unique_job_id(name)
        if project != DEFAULT_PROJECT:
            _record(spool, job, BatchSpec(project=project), False, None)
        _place(spool, job, [ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines], project)
    return job

