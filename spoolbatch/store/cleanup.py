"""Retention and clean-up: what `spoolbatch gc` and the daemons' hourly run remove, in order.

One ``Pass`` (store/removal.py: the policy, the report, whole-or-nothing removal) goes over
the spool: first it finishes what a killed clean-up or cancel left, then the retention of
jobs (store/retention.py: expired jobs, refused files, groups, logs), the sweeps that live
with their stores (batch records, uploads, the webhook outbox), and the clutter
(store/clutter.py: dead workers' files, stale temporaries, orphaned chunk areas and locks).
Last it brings the spool's job index up to date with what is left (store/jobindex.py: the jobs
removed are marked so, and dropped a day later), sums the last days' usage of the ended jobs
(store/usagedays.py) and measures what the spool's files take (store/diskspace.py): what `status`
shows without reading the spool whole.
"""

from __future__ import annotations

import time

from spoolbatch.store import batches, clutter, diskspace, files, outbox, retention, usagedays
from spoolbatch.store.jobindex import JobIndex
from spoolbatch.store.removal import DAY, Kind, Pass, Policy, Removed, Report
from spoolbatch.store.spool import Spool

__all__ = ["DAY", "Kind", "Policy", "Removed", "Report", "collect"]


def collect(spool: Spool, policy: Policy, *, now: float | None = None, dry_run: bool = False) -> Report:
    """Remove what has expired and the spool's clutter; what was removed (or would be, ``dry_run``)."""
    p = Pass(spool, policy, time.time() if now is None else now, dry_run)
    retention.finish_interrupted(p)
    retention.finish_cancels(p)
    retention.expired_jobs(p)
    retention.rejected(p)
    retention.groups(p)
    batches.sweep(p)
    files.sweep_unused(p, batches.input_file_ids(spool, skip=p.gone))
    outbox.sweep(p)
    clutter.workers(p)
    clutter.temporaries(p)
    clutter.orphans(p)
    retention.logs(p)
    if not dry_run:
        JobIndex(spool).reconcile(p.now)
        usagedays.refresh(spool, usagedays.kept_since(p.now), p.now)
        diskspace.measure(spool, p.now)
    return p.report
