"""A job's work area: the plan of its chunks and the committed parts waiting to be merged.

Several workers may share one job. Each takes a *chunk* (a byte range of the input, fixed
in an append-only plan when first claimed), answers it, and commits it as a *part*: its
result lines, deadletter records and custom_id hashes (``PartIds``), each written
atomically, then a marker.
Whoever holds the job lock next merges committed parts, in chunk order, into the job's
results, deadletter and ids files and replaces the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from spoolbatch.store.fsutil import AppendFile, atomic_write


@dataclass(frozen=True, slots=True)
class ChunkRange:
    """Lines ``first_line`` .. ``first_line + lines - 1``: input bytes ``start`` .. ``end``."""

    index: int
    start: int
    end: int
    first_line: int
    lines: int

    @property
    def last_line(self) -> int:
        """The number of the chunk's last line."""
        return self.first_line + self.lines - 1

    def read(self, path: Path) -> list[bytes]:
        """The chunk's raw lines (with their line ends) from the input at ``path``."""
        with open(path, "rb") as f:
            f.seek(self.start)
            return f.read(self.end - self.start).splitlines(keepends=True)


@dataclass(frozen=True, slots=True)
class PartIds:
    """The custom_id hashes of a part, for duplicate detection across chunks.

    ``hashes[i]`` and ``lines[i]`` belong to the part's ``i``-th result line (the input line
    number names a duplicate in its deadletter record); ``failed`` has one hash per
    deadletter record, 0 where the record has no custom_id.
    """

    hashes: array[int] = field(default_factory=lambda: array("Q"))
    lines: array[int] = field(default_factory=lambda: array("Q"))
    failed: array[int] = field(default_factory=lambda: array("Q"))

    def add(self, key: int, line: int) -> None:
        """Record one result line's id hash and input line number."""
        self.hashes.append(key)
        self.lines.append(line)

    def to_bytes(self) -> bytes:
        """A tag, the two counts, then the three arrays (uint64, native order like ``done/JOB.ids``)."""
        if len(self.hashes) != len(self.lines):
            raise ValueError("a part needs one line number per result hash")
        counts = array("Q", (len(self.hashes), len(self.failed)))
        return b"".join((_PART_IDS_TAG, counts.tobytes(), self.hashes.tobytes(), self.lines.tobytes(),
                         self.failed.tobytes()))

    @classmethod
    def from_bytes(cls, data: bytes, answered: int) -> PartIds:
        """Read ``to_bytes``'s output (or the interleaved pairs of parts written before it)."""
        words = array("Q")
        words.frombytes(data)
        if data[:8] == _PART_IDS_TAG:
            done, failed = words[1], words[2]
            return cls(words[3:3 + done], words[3 + done:3 + 2 * done], words[3 + 2 * done:3 + 2 * done + failed])
        # A part committed by an older worker (an upgrade with a crashed chunk in between):
        # (hash, line) pairs for each result, then for each deadletter record.
        return cls(words[0:2 * answered:2], words[1:2 * answered:2], words[2 * answered::2])


_PART_IDS_TAG = b"SBPIDS01"  # the first word of a part's ids file since the pairs format


@dataclass(frozen=True, slots=True)
class PartSummary:
    """What a committed chunk holds; the marker file that makes a part count."""

    index: int
    lines: int
    done: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    retries: int
    worker: str
    deduplicated: int = 0  # lines answered with an identical line's answer (not sent to the engine)
    prefix_cache_queries: int = 0  # prompt tokens of the requests whose engine reported its prefix cache
    prefix_cache_hits: int = 0  # of those, tokens read from the cache


class WorkArea:
    """``active/JOB.chunks/``: plan.jsonl, K.lock, K.results, K.deadletter, K.ids, K.done."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        """Create the folder (private)."""
        self.root.mkdir(mode=0o700, exist_ok=True)

    @property
    def plan_path(self) -> Path:
        """The append-only plan of chunk ranges."""
        return self.root / "plan.jsonl"

    def lock(self, index: int) -> Path:
        """The lock a worker holds while it answers chunk ``index``."""
        return self.root / f"{index:06d}.lock"

    def _part(self, index: int, kind: str) -> Path:
        return self.root / f"{index:06d}.{kind}"

    # --- the plan ----------------------------------------------------------------------------
    def plan(self) -> list[ChunkRange]:
        """Every chunk claimed so far (a torn last record, from a crash, is not one)."""
        try:
            data = self.plan_path.read_bytes()
        except FileNotFoundError:
            return []
        whole = data[: data.rfind(b"\n") + 1]
        return [ChunkRange(**orjson.loads(line)) for line in whole.splitlines()]

    def add(self, chunk: ChunkRange) -> None:
        """Append one range durably (caller holds the job lock)."""
        try:
            size = self.plan_path.stat().st_size
            committed = self.plan_path.read_bytes()[:size].rfind(b"\n") + 1
        except FileNotFoundError:
            committed = 0
        with AppendFile(self.plan_path, committed) as plan:
            plan.write(orjson.dumps(asdict(chunk)) + b"\n")
            plan.commit()

    # --- parts -------------------------------------------------------------------------------
    def commit_part(self, summary: PartSummary, results: bytes, deadletter: bytes, ids: PartIds) -> None:
        """Write a chunk's output, then its marker: only a part with a marker exists."""
        k = summary.index
        atomic_write(self._part(k, "results"), results, sync_dir=False)
        atomic_write(self._part(k, "deadletter"), deadletter, sync_dir=False)
        atomic_write(self._part(k, "ids"), ids.to_bytes(), sync_dir=False)
        atomic_write(self._part(k, "done"), orjson.dumps(asdict(summary)))

    def committed(self, index: int) -> PartSummary | None:
        """The marker of part ``index``, or None while it is not committed."""
        try:
            data = orjson.loads(self._part(index, "done").read_bytes())
        except FileNotFoundError:
            return None
        data.pop("end", None)  # written by older workers; the plan has each chunk's end
        return PartSummary(**data)

    def read_part(self, summary: PartSummary) -> tuple[bytes, bytes, PartIds]:
        """A committed part: its result lines, its deadletter lines and its ids."""
        k = summary.index
        ids = PartIds.from_bytes(self._part(k, "ids").read_bytes(), summary.done)
        return self._part(k, "results").read_bytes(), self._part(k, "deadletter").read_bytes(), ids

    def part_results(self, index: int) -> Path:
        """The result lines file of part ``index`` (for a merge that copies it whole)."""
        return self._part(index, "results")

    def read_part_meta(self, summary: PartSummary) -> tuple[bytes, PartIds]:
        """A committed part's deadletter lines and ids, without its result lines."""
        k = summary.index
        return self._part(k, "deadletter").read_bytes(), PartIds.from_bytes(self._part(k, "ids").read_bytes(),
                                                                            summary.done)

    def drop_part(self, index: int) -> None:
        """Remove a merged (or abandoned) part's files; the marker goes last."""
        for kind in ("results", "deadletter", "ids", "lock", "done"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._part(index, kind))

    def remove(self) -> None:
        """Delete the whole work area once the job is final.

        Not made durable: the final checkpoint already is, and an area a crash brings back is
        removed again by the finish a worker redoes, or by the clean-up (an orphaned chunk area).
        """
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.root):
                os.unlink(self.root / name)
            os.rmdir(self.root)
