"""`spoolbatch run`: the daemon in this process, or a supervisor of one worker per GPU (or per slot)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from spoolbatch.cli.app import SpoolOpt, VerboseOpt, config, err, handles_errors
from spoolbatch.errors import ConfigError

if TYPE_CHECKING:
    from spoolbatch.cli.live import RunProgress
    from spoolbatch.store.checkpoint import Checkpoint
    from spoolbatch.store.heartbeat_record import Heartbeat
    from spoolbatch.worker.daemon import Daemon


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
    settings = config(spool, **flags)
    if gpus is not None and workers is not None:
        raise ConfigError("give --gpus or --workers, not both")
    if gpus is not None or workers is not None:
        from spoolbatch.worker.supervisor import Supervisor, parse_gpus, parse_workers, worker_args

        slots = parse_gpus(gpus) if gpus is not None else parse_workers(workers or 0)
        args = worker_args(settings.spool, flags, once=once, quiet=quiet, verbose=verbose)
        raise typer.Exit(Supervisor(slots, args, once=once).run())
    from spoolbatch.logsetup import LogHandler, Route
    from spoolbatch.worker.daemon import Daemon

    bars = not quiet and not plain and err.is_terminal  # a person watching: bars; a log or a pipe: plain lines
    daemon = Daemon(settings, echo=not quiet and not bars)
    # Python's logging (vLLM, Ray, ours) into the daemon's log, and onto stderr unless -q (the journal always).
    path = daemon.log.path
    handler = LogHandler(path, stderr=path is None or not quiet, prefix=f"spoolbatch[{os.getpid()}] daemon: ",
                         stamp_stderr=False, max_bytes=settings.log_max_bytes, keep=settings.log_keep)
    with Route(handler, verbose) as route:
        daemon.heartbeat.on_beat.append(lambda _beat: route.adopt())  # Ray sets up its own logging on import
        daemon.install_signal_handlers()
        if not bars:
            raise typer.Exit(daemon.run(once=once))
        with run_bars(daemon):
            code = daemon.run(once=once)
    raise typer.Exit(code)


@contextlib.contextmanager
def run_bars(daemon: Daemon) -> Iterator[RunProgress]:
    """A progress bar per job on stderr while ``daemon`` runs, and its waiting reasons as lines."""
    from spoolbatch.cli.live import RunProgress
    from spoolbatch.store.heartbeat_record import WorkerState

    bars = RunProgress(console=err)
    said: list[str | None] = [None]

    def on_chunk(ckpt: Checkpoint, last: dict[str, Any] | None) -> None:
        seconds = (last or {}).get("seconds") or 0
        bars.update(ckpt.job, ckpt.lines_consumed, ckpt.total_lines, status=ckpt.status.value,
                    requests_per_second=last["requests"] / seconds if last and seconds else None,
                    tokens_per_second=last["completion_tokens"] / seconds if last and seconds else None,
                    eta_seconds=ckpt.eta_seconds())

    def on_beat(beat: Heartbeat) -> None:
        reason = beat.reason if beat.state == WorkerState.WAITING else None
        if reason and reason != said[0]:
            bars.progress.console.print(f"[bold yellow]waiting:[/] {reason}", highlight=False)
        said[0] = reason

    daemon.on_progress.append(on_chunk)
    daemon.heartbeat.on_beat.append(on_beat)
    with bars.progress:
        yield bars
