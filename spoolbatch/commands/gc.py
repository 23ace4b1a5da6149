"""`spoolbatch gc`: remove what has expired, and the spool's clutter (store/cleanup.py does it).

The daemons run the same clean-up about hourly (worker/maintenance.py); this is the
command for cron, for a dry run, and for freeing space now (``older_than_days``).
"""

from __future__ import annotations

from spoolbatch.config import Config
from spoolbatch.store.cleanup import Policy, Report, collect
from spoolbatch.store.spool import Spool


def gc(config: Config, *, older_than_days: float | None = None, dry_run: bool = False,
       now: float | None = None) -> Report:
    """Clean the configured spool; what was removed (or would be, with ``dry_run``)."""
    spool = Spool(config.spool)
    spool.require()
    return collect(spool, Policy.from_config(config, older_than_days), now=now, dry_run=dry_run)
