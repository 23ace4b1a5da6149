"""IdSet: the set of custom_id hashes a job has used, in sorted runs of 8 bytes per id."""

from __future__ import annotations

import random
from array import array

from spoolbatch.store.idset import IdSet


def test_behaves_like_a_set_of_64_bit_hashes() -> None:
    rng = random.Random(3)
    truth: set[int] = set()
    ids = IdSet()
    for _ in range(60):  # chunks of varied sizes, as merges add them
        chunk = array("Q", {rng.getrandbits(64) for _ in range(rng.randint(0, 700))} - truth)
        assert not ids.found(chunk).any()
        ids.add_many(chunk)
        truth.update(chunk)
        probe = rng.sample(sorted(truth), 20) + [rng.getrandbits(64) for _ in range(20)]
        assert list(ids.found(probe)) == [p in truth for p in probe]
    assert len(ids) == len(truth)
    assert sum(run.nbytes for run in ids._runs) == 8 * len(truth)
    assert ids.found(rng.sample(sorted(truth), 50)).all()
    assert not ids.found([0, 2**64 - 1]).any()


def test_runs_stay_few() -> None:
    ids = IdSet()
    for k in range(200):
        ids.add_many(array("Q", range(k * 5000, (k + 1) * 5000)))
    assert len(ids._runs) <= 9  # at most log2(200) + 1 runs of decreasing size
    assert [len(r) for r in ids._runs] == sorted((len(r) for r in ids._runs), reverse=True)
    assert ids.found([0, 999_999, 1_000_000]).tolist() == [True, True, False]


def test_empty_and_extremes() -> None:
    ids = IdSet()
    assert not ids.found(array("Q")).any() and not ids.found([1, 2]).any() and len(ids) == 0
    ids.add_many([0, 2**64 - 1])
    assert ids.found([0, 1, 2**64 - 1, 2**64 - 2]).tolist() == [True, False, True, False]
