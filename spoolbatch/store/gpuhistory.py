"""A worker's GPU history (``workers/WORKER.gpu.jsonl``): one reading a line, thinned with age.

The daemon appends a reading of every visible card per heartbeat (``worker/gpuhistory.py``)
and now and then rewrites the file thinned: every reading of the last ``RAW_SECONDS``, then one
a minute up to three hours, then one every ten minutes up to a day; older ones go. A thinned
point is the highest memory share, temperature and utilisation of its bucket (a peak against
the gate's limits must not vanish with age), dated at its last reading. Buckets are fixed
slices of the clock, so thinning twice gives what thinning once gave.

A line is ``{"t": UNIX_SECONDS, "gpus": [[index, memory_pct, temperature_c, utilization_pct], ...]}``;
a torn last line (the worker killed mid-append) or any line that is not one is skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

RAW_SECONDS = 15 * 60.0
# (up to this age in seconds, one point per this many seconds)
TIERS: tuple[tuple[float, float], ...] = ((3 * 3600.0, 60.0), (24 * 3600.0, 600.0))
KEEP_SECONDS = TIERS[-1][0]


@dataclass(frozen=True, slots=True)
class CardReading:
    """One card at one instant: NVML's index, memory used in percent, temperature, utilisation."""

    index: int
    memory_pct: float
    temperature_c: float | None
    utilization_pct: float | None

    def row(self) -> list[Any]:
        """The card as its line stores it."""
        return [self.index, round(self.memory_pct, 1), self.temperature_c, self.utilization_pct]


@dataclass(frozen=True, slots=True)
class Reading:
    """Every visible card at one instant."""

    t: float
    cards: tuple[CardReading, ...]

    def to_line(self) -> bytes:
        """One line of the history file."""
        return orjson.dumps({"t": round(self.t, 1), "gpus": [c.row() for c in self.cards]}) + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Reading | None:
        """A line read back; None for one that is not a reading (a torn last line)."""
        try:
            d = orjson.loads(line)
            cards = tuple(CardReading(int(g[0]), float(g[1]), _num(g[2]), _num(g[3])) for g in d["gpus"])
            return cls(float(d["t"]), cards)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            return None

    @classmethod
    def from_snapshot(cls, t: float, gpu: dict[str, Any] | None) -> Reading | None:
        """A reading of a heartbeat's ``gpu`` field (``GpuSnapshot.to_dict``); None without a card."""
        if not gpu or not gpu.get("available"):
            return None
        cards = tuple(CardReading(int(d["index"]), float(d["memory_pct"]), _num(d.get("temperature_c")),
                                  _num(d.get("utilization_pct"))) for d in gpu.get("devices") or ())
        return cls(t, cards) if cards else None


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _width(age: float) -> float | None:
    """The bucket width for a reading this old: 0 keeps it as it is, None drops it."""
    if age <= RAW_SECONDS:
        return 0.0
    for upto, width in TIERS:
        if age <= upto:
            return width
    return None


def _peak(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _merge(a: Reading, b: Reading) -> Reading:
    """One point for two readings of a bucket: each card's peaks, dated at the later reading."""
    cards = {c.index: c for c in a.cards}
    for c in b.cards:
        o = cards.get(c.index)
        cards[c.index] = c if o is None else CardReading(
            c.index, max(o.memory_pct, c.memory_pct), _peak(o.temperature_c, c.temperature_c),
            _peak(o.utilization_pct, c.utilization_pct))
    return Reading(max(a.t, b.t), tuple(sorted(cards.values(), key=lambda c: c.index)))


def thin(readings: Iterable[Reading], now: float) -> list[Reading]:
    """The readings kept at ``now``, oldest first (see the module docstring)."""
    out: list[Reading] = []
    bucket: tuple[float, float] | None = None  # (width, slot) of out[-1] when it is a thinned point
    for r in sorted(readings, key=lambda r: r.t):
        width = _width(now - r.t)
        if width is None:
            continue
        if not width:
            out.append(r)
            bucket = None
            continue
        key = (width, r.t // width)
        if bucket == key:
            out[-1] = _merge(out[-1], r)
        else:
            out.append(r)
            bucket = key
    return out


def read_history(path: Path, since: float | None = None) -> list[Reading]:
    """The readings of a history file (newer than ``since`` when given), oldest first; none when missing."""
    with contextlib.suppress(FileNotFoundError):
        readings = [r for line in path.read_bytes().splitlines() if (r := Reading.from_line(line)) is not None]
        readings.sort(key=lambda r: r.t)
        return [r for r in readings if since is None or r.t > since]
    return []


def encode(readings: Iterable[Reading]) -> bytes:
    """A whole history file of ``readings``."""
    return b"".join(r.to_line() for r in readings)
