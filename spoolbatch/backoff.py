"""The one backoff rule: how long to wait before the next try, doubling up to a cap.

On the floor (it imports nothing) so that every layer retries the same way: the executor,
the supervisor, the webhook outbox.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# 2**62 seconds is past any cap; the bound only keeps the float from overflowing.
_MAX_EXPONENT = 62


def delay(attempt: int, *, base: float = 1.0, cap: float = 60.0, jitter: float = 0.0,
          rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first): ``base * 2**(attempt-1)``, at most ``cap``.

    ``base <= 0`` (or ``attempt < 1``) means no wait. ``jitter`` in [0, 1] takes up to that
    share off the delay at random, so that many waiters do not retry in step.
    """
    if base <= 0 or attempt < 1:
        return 0.0
    wait = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    if jitter > 0:
        wait *= 1.0 - min(jitter, 1.0) * rng()
    return wait
