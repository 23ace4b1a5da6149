"""`spoolbatch run --gpus 0,1,...` or `--workers N`: several worker processes on one spool.

Each worker is an ordinary `spoolbatch run`; with ``--gpus`` its ``CUDA_VISIBLE_DEVICES`` is
pinned to one card, with ``--workers`` nothing is pinned (engines that run on the CPU, and
the fake engine). Work is claimed per chunk, so a single large job spreads over every worker. The
supervisor forwards SIGTERM/SIGINT to its workers (each stops at a chunk boundary),
restarts a worker that crashed (with backoff, unless ``--once``), and exits when they all
have, with the worst exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from spoolbatch import backoff
from spoolbatch.errors import ConfigError

RESTART_BACKOFF = (1.0, 60.0)


def worker_args(spool: Path, flags: Mapping[str, object | None], *, once: bool = False, quiet: bool = False,
                verbose: int = 0) -> list[str]:
    """The arguments of each worker's `spoolbatch run`: the supervisor's own options, passed on.

    ``flags`` are `run`'s settings by their keyword names (``chunk_size`` becomes ``--chunk-size``;
    None: not given). Workers share the supervisor's terminal, so they print plain lines: their
    progress bars would draw over each other.
    """
    args = ["--spool", str(spool), "--plain", *(["--once"] if once else []), *(["-q"] if quiet else []),
            *(["--verbose"] * verbose)]
    for name, value in flags.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def parse_gpus(spec: str) -> list[str]:
    """``"0,1,3"`` or ``"all"`` (every card NVML sees) to the list of device indices."""
    if spec.strip().lower() == "all":
        from spoolbatch.worker.gpu import GpuMonitor

        with GpuMonitor() as monitor:
            snapshot = monitor.read()
        if not snapshot.available or not snapshot.devices:
            raise ConfigError(f"--gpus all: {snapshot.reason or 'no GPU found'}")
        return [str(d.index) for d in snapshot.devices]
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus or any(not g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus {spec!r}: give distinct device indices like 0,1,2,3, or 'all'")
    return gpus


def parse_workers(count: int) -> list[str | None]:
    """``--workers N``: N workers with no card pinned."""
    if not 1 <= count <= 256:
        raise ConfigError(f"--workers {count}: give a number of worker processes from 1 to 256")
    return [None] * count


@dataclass(slots=True)
class Worker:
    """One child daemon and its card (None: no card pinned)."""

    gpu: str | None
    number: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    finished: bool = False

    @property
    def label(self) -> str:
        """How messages name this worker."""
        return f"worker for GPU {self.gpu}" if self.gpu is not None else f"worker {self.number}"


class Supervisor:
    """Starts and watches one worker per GPU (or per slot of ``--workers``)."""

    def __init__(self, gpus: Sequence[str | None], args: Sequence[str], *, once: bool = False) -> None:
        self.workers = [Worker(g, n) for n, g in enumerate(gpus, start=1)]
        self.args = list(args)
        self.once = once
        self.stopping = False

    def _start(self, worker: Worker) -> None:
        env = dict(os.environ)
        if worker.gpu is not None:
            env.update(CUDA_VISIBLE_DEVICES=worker.gpu, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        worker.proc = subprocess.Popen([sys.executable, "-m", "spoolbatch", "run", *self.args], env=env)
        print(f"spoolbatch: {worker.label} started (pid {worker.proc.pid})", file=sys.stderr)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signum)

    def run(self) -> int:
        """Run until every worker has exited; the worst exit status."""
        from spoolbatch.worker import sdnotify

        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for w in self.workers:
            self._start(w)
        sdnotify.ready()
        worst = 0
        while True:
            alive = 0
            for w in self.workers:
                if w.finished:
                    continue
                if w.proc is None:  # waiting to be restarted
                    if self.stopping:
                        w.finished = True
                        continue
                    if time.monotonic() >= w.next_start:
                        self._start(w)
                    alive += 1
                    continue
                code = w.proc.poll()
                if code is None:
                    alive += 1
                    continue
                if code != 0 and not self.stopping and not self.once:
                    delay = backoff.delay(w.restarts + 1, base=RESTART_BACKOFF[0], cap=RESTART_BACKOFF[1])
                    print(f"spoolbatch: {w.label} exited with {code}; restarting in {delay:.0f}s",
                          file=sys.stderr)
                    w.restarts += 1
                    w.proc, w.next_start = None, time.monotonic() + delay
                    alive += 1
                    continue
                worst = max(worst, code if code >= 0 else 128 - code)
                w.proc, w.finished = None, True
            if not alive:
                return worst
            sdnotify.watchdog()
            time.sleep(0.2)
