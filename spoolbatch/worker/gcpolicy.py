"""Keep Python's cyclic garbage collector out of the daemon's per-request loop.

A chunk allocates tens of thousands of short-lived, acyclic containers (parsed lines,
response bodies), which reference counting frees. With the default thresholds the
collector still runs every 700 allocations and, now and then, walks the whole heap, which
after ``import vllm`` and a model load holds millions of long-lived objects. So the daemon
collects young objects rarely (``quiet``) and moves what exists after an engine load out of
the collector's sight (``freeze_after_load``); before another load, the frozen objects are
handed back (``thaw``) so the old model's cycles can be collected. Freezing happens only
while a process has asked for the policy (``quiet``, called by ``Daemon.run``); the function
``quiet`` returns puts the collector back as it found it, so a daemon run inside a library
user's or a test's process leaves that process's collector alone.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

THRESHOLDS = (100_000, 20, 10)  # gen0 every 100,000 net allocations (default 700)
_active = False


def quiet() -> Callable[[], None]:
    """Raise the collection thresholds for a batch worker and allow freezing; returns the undo.

    The undo restores the thresholds and, unless an outer ``quiet`` is still in force, thaws
    what was frozen and disallows freezing again.
    """
    global _active
    before, was_active = gc.get_threshold(), _active
    _active = True
    gc.set_threshold(*THRESHOLDS)

    def restore() -> None:
        global _active
        gc.set_threshold(*before)
        if not was_active:
            gc.unfreeze()
            _active = False

    return restore


def freeze_after_load() -> None:
    """Collect once, then exclude everything alive now (the engine, the model) from later collections."""
    if _active:
        gc.collect()
        gc.freeze()


def thaw() -> None:
    """Give frozen objects back to the collector (before an engine is closed or replaced)."""
    if _active:
        gc.unfreeze()
