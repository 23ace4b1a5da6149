"""What a load balancer and a client ask of the whole spool: are workers alive, on which GPUs, which models.

`GET /health` and `GET /v1/models` answer from these; they read the workers' heartbeats
(``store.liveness``) and the inbox, never a job's files.
"""

from __future__ import annotations

import time
from typing import Any

from spoolbatch.store.liveness import Liveness, read_workers
from spoolbatch.store.spool import Spool


def health(spool: Spool, now: float | None = None) -> dict[str, Any]:
    """Workers counted by liveness, the alive ones' GPUs, and the queue: ``ok`` once a worker is alive."""
    now = time.time() if now is None else now
    workers = read_workers(spool, now)
    counts = {state.value: 0 for state in Liveness}
    for w in workers:
        counts[w.liveness.value] += 1
    gpus = [{"worker": w.beat.worker, **w.beat.gpu} for w in workers if w.liveness == Liveness.ALIVE and w.beat.gpu]
    return {"status": "ok" if counts[Liveness.ALIVE.value] else "no_worker", "workers": counts, "gpu": gpus,
            "queue": {"jobs": len(spool.inbox_entries())}, "time": int(now)}


def models(spool: Spool, configured: str | None = None) -> list[str]:
    """The models the alive workers have loaded, and the configured one, sorted."""
    names = {w.beat.model for w in read_workers(spool) if w.liveness == Liveness.ALIVE and w.beat.model}
    if configured:
        names.add(configured)
    return sorted(names)
