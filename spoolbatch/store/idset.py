"""The custom_id hashes a job has used so far, in 8 bytes each.

Duplicate custom_ids are caught across chunks by keeping the 64-bit hash of every id a job
has committed. A Python ``set[int]`` costs about 75 bytes an id (an int object and a table
slot), so a daemon on a 1,000,000-request job held 75 MB for it. Here the hashes live in a
few sorted numpy arrays ("runs") of decreasing size: adding a chunk's hashes appends a run,
and a run at least as large as the one before it is merged into it (a stable sort of two
sorted halves is a linear merge), so there are at most log2(n / chunk) runs and each hash is
copied O(log n) times over the job. A chunk's hashes are looked up with one vectorised
``searchsorted`` per run.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

Hashes = npt.NDArray[np.uint64]


def as_hashes(values: array[int] | Iterable[int]) -> Hashes:
    """An unsigned 64-bit array of ``values`` (an ``array('Q')`` is taken without a copy)."""
    if isinstance(values, array) and values.typecode == "Q":
        return np.frombuffer(values, dtype=np.uint64) if len(values) else np.empty(0, np.uint64)
    return np.fromiter(values, dtype=np.uint64)


class IdSet:
    """A growing set of 64-bit hashes; see the module docstring."""

    def __init__(self, hashes: array[int] | Iterable[int] = ()) -> None:
        self._runs: list[Hashes] = []
        self._size = 0
        self.add_many(hashes)

    def __len__(self) -> int:
        return self._size

    def found(self, hashes: array[int] | Iterable[int]) -> npt.NDArray[np.bool_]:
        """For each of ``hashes``, whether it is in the set."""
        wanted = as_hashes(hashes)
        hit = np.zeros(len(wanted), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, wanted), len(run) - 1)
            hit |= run[at] == wanted
        return hit

    def add_many(self, hashes: array[int] | Iterable[int]) -> None:
        """Add hashes that are not in the set yet (the caller checked with ``found``)."""
        run = np.sort(as_hashes(hashes), kind="stable")
        if not len(run):
            return
        self._size += len(run)
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-1]) >= len(self._runs[-2]):
            newer, older = self._runs.pop(), self._runs.pop()
            merged = np.concatenate((older, newer))
            merged.sort(kind="stable")  # in place: one copy of the hashes at a time, not two
            self._runs.append(merged)
