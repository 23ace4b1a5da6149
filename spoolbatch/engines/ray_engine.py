"""The Ray backend: each chunk is answered by ``concurrency`` vLLM replicas on a Ray cluster.

Design. This is an ``Engine`` like the others, so claiming, chunk commits, merging, the
checkpoint, deadletter and the heartbeat stay in the daemon's code and hold exactly as with
the local engine: the spool is the one record of progress. Each replica is a long-lived Ray
actor that wraps our own ``VllmEngine`` (so request validation, OpenAI bodies, logprobs,
structured output and per-request bisection are the same code as the local engine's); a
chunk is cut into ``concurrency`` contiguous slices, one per replica, and the outcomes are
put back in order. Replicas stay loaded between chunks and jobs.

Why actors and not a ``ray.data.llm`` processor per chunk: a Ray Data pipeline starts its
vLLM actor pool on every execution and tears it down at the end. Measured here, one
processor built once and run on two 200-row chunks started a new vLLM engine for each
(34-46 s on a quiet box, minutes on a busy one), and answers about 40 rows/s once up; a
single pipeline over a whole job would instead bypass the spool's chunk claims. Ray Data
LLM also needs one processor (one engine) per endpoint and its own row shape, which we
would have to turn back into OpenAI bodies. The actors start once and then answer at
vLLM's in-process speed, less a Ray round trip per chunk (``bench/ray_backend.py``).

Why not Ray Data's ``CheckpointConfig``: it tracks finished rows of one read-to-write
pipeline by an id column, on storage every node sees. The spool already does this per
chunk, durably, with exactly-once across any number of drivers; a second record of
progress would have to be reconciled with it and adds nothing. A driver killed mid-chunk
loses only its uncommitted chunk, which the next claimant answers again from the spool.

Look-ahead. Like the local engine, the pool pipelines: ``submit`` enqueues a chunk's
slices on the replicas (each replica's ``VllmEngine.submit``), ``collect`` steps them until
the chunk is answered. Ray runs one caller's actor calls in order, and the daemon submits
chunk k+1 before it collects chunk k, so every replica's batch already holds k+1's requests
while k's finish, and does not drain at the boundary.

Failures. A replica lost mid-chunk (a worker node gone, the actor killed) is replaced and
its slice tried once more (a ``replica_lost`` event in the daemon's log); if that fails too,
an ``EngineError`` with ``broken`` set goes to the executor, which rebuilds the pool and
splits and retries the chunk as for any engine failure. What a replica's own engine raised
reaches the executor as that ``EngineError``, not wrapped in Ray's task error
(``engines.failures``).

``ray`` is imported inside methods only: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from spoolbatch.config import EngineSettings
from spoolbatch.engines.failures import engine_error
from spoolbatch.errors import ConfigError, EngineError
from spoolbatch.format.types import Outcome, Request
from spoolbatch.store.joblog import DaemonEvent, DaemonEvents, describe

log = logging.getLogger(__name__)

AUTO = "auto"  # an existing cluster if one is found, else a local Ray started here
LOCAL = "local"  # always a private local Ray (tests, one box)

# How long replicas may take to be placed and load a model before we give up.
START_TIMEOUT = 900.0


class Replica:
    """One vLLM engine inside a Ray actor (the class is wrapped with ``ray.remote`` lazily)."""

    def __init__(self, settings: EngineSettings) -> None:
        from spoolbatch.engines.vllm_engine import Ticket, VllmEngine

        self.engine = VllmEngine(settings)
        self.tickets: dict[int, Ticket] = {}

    def load(self, model: str, endpoint: str | None) -> dict[str, Any]:
        """Load ``model``; facts about this replica for the driver's log."""
        self.engine.load(model, endpoint=endpoint)
        return {"pid": os.getpid(), "host": os.uname().nodename, "load_seconds": self.engine.load_seconds,
                "max_model_len": self.engine.max_model_len, "rss_bytes": _rss_bytes()}

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """Answer a slice of a chunk."""
        return self.engine.run(requests)

    def submit(self, requests: Sequence[Request]) -> int:
        """Enqueue a slice without waiting (look-ahead); a number for ``collect``."""
        ticket = self.engine.submit(requests)
        self.tickets[ticket.number] = ticket
        return ticket.number

    def collect(self, number: int) -> list[Outcome]:
        """Work until the slice ``number`` is answered (later slices progress in the same batch)."""
        return self.engine.collect(self.tickets.pop(number))

    def abort(self) -> None:
        """Drop every slice enqueued and not collected."""
        self.tickets.clear()
        self.engine.abort()

    def close(self) -> None:
        """Release the model."""
        self.engine.close()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.contextmanager
def _keeping_signal_handlers() -> Iterator[None]:
    """Put our SIGTERM/SIGINT handlers back after ``ray.init``, which installs its own (they abort)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def _lost(exc: BaseException) -> bool:
    """True when a replica itself is gone (not when its engine raised)."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


@dataclass(slots=True)
class RayTicket:
    """A chunk enqueued on the replicas: its requests, and per slice (replica, lo, hi, submit ref)."""

    requests: list[Request]
    parts: list[tuple[Any, int, int, Any]] = field(default_factory=list)


def slices(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` items cut into at most ``parts`` contiguous, non-empty, near-equal ranges."""
    parts = max(1, min(parts, count))
    step, extra = divmod(count, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + step + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return [r for r in out if r[1] > r[0]]


def _warn(name: DaemonEvent, /, **fields: Any) -> None:
    log.warning("%s", describe({"event": name.value, **fields}))


class RayEngine:
    """The ``Engine`` protocol on a pool of vLLM replicas in a Ray cluster; see the module docstring."""

    name = "ray"

    def __init__(self, settings: EngineSettings | None = None, *, address: str = AUTO, concurrency: int = 1,
                 init_kwargs: dict[str, Any] | None = None, events: DaemonEvents | None = None) -> None:
        if concurrency < 1:
            raise ConfigError(f"ray concurrency must be at least 1, got {concurrency}")
        self.settings = settings or EngineSettings()
        self.address = address or AUTO
        self.concurrency = concurrency
        self.init_kwargs = dict(init_kwargs or {})
        self._owns_ray = False
        self._actor_class: Any = None
        self._replicas: list[Any] = []
        self._model: str | None = None
        self._endpoint: str | None = None
        self.events = events or _warn  # a lost replica: the daemon's event log, else a logging warning

    # -- the cluster -----------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise EngineError(f"Ray is not installed: {exc}", hint="pip install 'spoolbatch[ray]'") from None
        if ray.is_initialized():
            return ray
        with _keeping_signal_handlers():
            return self._init(ray)

    def _init(self, ray: Any) -> Any:
        common: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address not in (AUTO, LOCAL):
            try:
                ray.init(address=self.address, **common)
            except Exception as exc:
                raise EngineError(f"cannot reach the Ray cluster at {self.address}: {exc}",
                                  hint="check `ray status` on the head node, or use --ray-address auto") from None
            return ray
        if self.address == AUTO:
            with contextlib.suppress(ConnectionError):
                ray.init(address="auto", **common)
                log.info("joined the running Ray cluster")
                return ray
        # Ray's raylet gives its agents 15 s to come up; a busy small box needs more.
        os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
        cpus = os.cpu_count() or 1
        kwargs: dict[str, Any] = dict(num_cpus=max(cpus, self.concurrency), object_store_memory=512 << 20)
        kwargs.update(self.init_kwargs)
        ray.init(**common, **kwargs)  # its processes share our fate: a killed daemon takes them along
        self._owns_ray = True
        log.info("started a local Ray (%s CPUs)", kwargs["num_cpus"])
        return ray

    def _replica_options(self, ray: Any) -> dict[str, Any]:
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) >= 1:
            return {"num_gpus": 1, "num_cpus": 1}
        # On CPUs a fraction: whole-CPU replicas on a small box would wait forever for room.
        cpus = float(resources.get("CPU", 1))
        return {"num_cpus": max(0.01, min(1.0, cpus / self.concurrency))}

    def _new_replica(self, ray: Any) -> Any:
        if self._actor_class is None:
            self._actor_class = ray.remote(Replica)
        return self._actor_class.options(max_restarts=0, max_concurrency=1,
                                         **self._replica_options(ray)).remote(self.settings)

    def _load_all(self, ray: Any, replicas: Sequence[Any]) -> None:
        assert self._model is not None
        refs = [r.load.remote(self._model, self._endpoint) for r in replicas]
        try:
            facts = ray.get(refs, timeout=START_TIMEOUT)
        except Exception as exc:
            for r in replicas:
                with contextlib.suppress(Exception):
                    ray.kill(r)
            self._replicas = [r for r in self._replicas if r not in replicas]
            cause = engine_error(exc)
            raise EngineError(f"Ray replicas could not load {self._model!r}: {type(exc).__name__}: {exc}",
                              hint="the model must be readable on every Ray node (shared storage or the same "
                                   "hub cache), spoolbatch[ray] installed there, and the cluster must have "
                                   "room for --ray-concurrency replicas (`ray status`)",
                              out_of_memory=cause.out_of_memory, broken=cause.broken) from None
        log.info("ray replicas ready: %s", facts)

    def _fill(self, ray: Any, *, reload: bool = False) -> None:
        """Start the replicas the pool lacks and load the model on them (on every replica with ``reload``)."""
        fresh = [self._new_replica(ray) for _ in range(self.concurrency - len(self._replicas))]
        self._replicas.extend(fresh)
        self._load_all(ray, self._replicas if reload else fresh)

    def _ready(self, requests: Sequence[Request]) -> Any:
        """Ray, with the pool full (a replica lost in an earlier chunk replaced) and a model loaded."""
        if self._model is None:
            self.load(requests[0].spec.model)
        ray = self._connect()
        if len(self._replicas) < self.concurrency:
            self._fill(ray)
        return ray

    # -- the Engine protocol ---------------------------------------------------------------

    def load(self, model: str, *, endpoint: str | None = None) -> None:
        """Start the replicas if needed and make ``model`` their loaded model (an adapter's name: its base).

        LoRA adapters travel in the settings each replica is built with and are read by its own
        engine from their paths, which every node must see (shared storage, as for models).
        """
        if self.settings.adapters:
            from spoolbatch.engines.adapters import AdapterCatalog

            adapter = AdapterCatalog(self.settings.adapters).get(model)
            model = adapter.base if adapter is not None else model
        ray = self._connect()
        if model == self._model and endpoint == self._endpoint and len(self._replicas) == self.concurrency:
            return
        self._model, self._endpoint = model, endpoint
        self._fill(ray, reload=True)

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """Answer every request, in order, spread over the replicas."""
        if not requests:
            return []
        ray = self._ready(requests)
        parts = [(replica, lo, hi, replica.run.remote(list(requests[lo:hi])))
                 for replica, (lo, hi) in zip(self._replicas, slices(len(requests), len(self._replicas)), strict=False)]
        outcomes: list[Outcome] = []
        for i, (replica, lo, hi, ref) in enumerate(parts):
            try:
                part = ray.get(ref)
            except Exception as exc:
                if not _lost(exc):
                    raise engine_error(exc, "a Ray replica failed") from exc
                self.events(DaemonEvent.REPLICA_LOST, stage="run", replica=i, requests=hi - lo,
                            error=type(exc).__name__)
                part = self._redo(ray, replica, requests[lo:hi], exc)
            outcomes.extend(part)
        return outcomes

    # -- look-ahead: a chunk enqueued on the replicas before the previous one is collected ---

    def submit(self, requests: Sequence[Request]) -> RayTicket:
        """Enqueue a chunk's slices on the replicas; a ticket for ``collect``.

        Actor calls run in the order they were made: the daemon submits chunk k+1 before it
        collects chunk k, so each replica's engine already holds k+1's requests while it
        finishes k's, and its batch does not drain at the boundary.
        """
        ticket = RayTicket(list(requests))
        if not requests:
            return ticket
        self._ready(requests)
        for replica, (lo, hi) in zip(self._replicas, slices(len(requests), len(self._replicas)), strict=False):
            ticket.parts.append((replica, lo, hi, replica.submit.remote(ticket.requests[lo:hi])))
        return ticket

    def collect(self, ticket: RayTicket) -> list[Outcome]:
        """Outcomes of a submitted chunk, in order; a lost replica's slice is redone on a new one."""
        if not ticket.parts:
            return []
        ray = self._connect()
        requests = ticket.requests
        outcomes: list[Outcome] = []
        for i, (replica, lo, hi, submitted) in enumerate(ticket.parts):
            try:
                part = ray.get(replica.collect.remote(submitted))  # Ray hands the ticket number over
            except Exception as exc:
                if not _lost(exc):
                    raise engine_error(exc, "a Ray replica failed") from exc
                self.events(DaemonEvent.REPLICA_LOST, stage="collect", replica=i, requests=hi - lo,
                            error=type(exc).__name__)
                part = self._redo(ray, replica, requests[lo:hi], exc)
            outcomes.extend(part)
        return outcomes

    def _redo(self, ray: Any, lost: Any, requests: Sequence[Request], first: BaseException) -> list[Outcome]:
        """A lost replica's slice, once more on a new replica in its place; lost again, a broken ``EngineError``.

        When the lost replica had already left the pool (dropped by ``abort``), the slice
        runs on a replica of the full pool instead.
        """
        with contextlib.suppress(Exception):
            ray.kill(lost)
        if lost in self._replicas:
            self._replicas.remove(lost)
        self._fill(ray)
        replica = self._replicas[-1]
        try:
            return list(ray.get(replica.run.remote(list(requests))))
        except Exception as exc:
            if not _lost(exc):
                raise engine_error(exc, "a Ray replica failed") from exc
            with contextlib.suppress(Exception):
                ray.kill(replica)
            self._replicas.remove(replica)
            raise EngineError(f"Ray replica lost twice: {type(first).__name__}, then {type(exc).__name__}: "
                              f"{exc}", broken=True) from exc

    def abort(self) -> None:
        """Drop what the replicas hold for chunks not collected; a replica that is gone is replaced later."""
        try:
            import ray
        except ImportError:
            return
        if not ray.is_initialized():
            return
        for replica in list(self._replicas):
            try:
                ray.get(replica.abort.remote(), timeout=60)
            except Exception as exc:  # a dead replica is dropped; run/submit refill the pool
                log.warning("dropping a ray replica that could not abort: %s", type(exc).__name__)
                with contextlib.suppress(Exception):
                    ray.kill(replica)
                self._replicas.remove(replica)

    def close(self) -> None:
        """Stop the replicas, and the local Ray when this engine started it (safe to call twice)."""
        replicas, self._replicas = self._replicas, []
        self._model = self._endpoint = None
        try:
            import ray
        except ImportError:
            return
        if not ray.is_initialized():
            return
        for r in replicas:
            with contextlib.suppress(Exception):
                ray.get(r.close.remote(), timeout=30)
            with contextlib.suppress(Exception):
                ray.kill(r)
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        else:
            with contextlib.suppress(Exception):
                ray.shutdown()  # only disconnects this driver from a cluster it joined
