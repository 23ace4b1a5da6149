"""The one backoff rule that the executor, the supervisor and the webhook outbox share."""

from __future__ import annotations

import pytest

from spoolbatch.backoff import delay
from spoolbatch.store.outbox import MAX_DELAY_SECONDS, retry_delay


def test_doubles_from_the_base_up_to_the_cap() -> None:
    assert [delay(n, base=1.0, cap=60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [delay(n, base=0.5, cap=3.0) for n in range(1, 5)] == [0.5, 1.0, 2.0, 3.0]


def test_no_base_or_no_attempt_means_no_wait() -> None:
    assert delay(5, base=0) == 0.0
    assert delay(0, base=1.0) == 0.0


def test_a_huge_attempt_number_stays_at_the_cap() -> None:
    assert delay(10_000, base=1.0, cap=60.0) == 60.0


@pytest.mark.parametrize("draw", [0.0, 0.5, 1.0])
def test_jitter_takes_off_at_most_its_share(draw: float) -> None:
    assert delay(3, base=1.0, cap=60.0, jitter=0.25, rng=lambda: draw) == pytest.approx(4.0 * (1 - 0.25 * draw))


def test_the_formulas_it_replaced() -> None:
    for n in range(1, 40):  # the executor's split-and-retry and load retries, and the supervisor's restarts
        assert delay(n, base=1.0, cap=60.0) == min(60.0, 1.0 * 2 ** min(n - 1, 10))
        assert delay(n, base=1.0, cap=60.0) == min(60.0, 1.0 * 2 ** min(n - 1, 6))
    for attempts in range(0, 40):  # the webhook outbox's retries
        assert retry_delay(attempts, 5.0) == min(MAX_DELAY_SECONDS, 5.0 * 2 ** max(0, attempts - 1))
