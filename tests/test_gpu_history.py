"""The GPU history a worker keeps for the page: a reading per heartbeat, thinned with age, bounded, swept."""

from __future__ import annotations

import os
import socket
import threading
import time

import orjson

from spoolbatch.commands.gc import gc
from spoolbatch.config import Config
from spoolbatch.store.gpuhistory import KEEP_SECONDS, RAW_SECONDS, CardReading, Reading, read_history, thin
from spoolbatch.store.heartbeat_record import Heartbeat
from spoolbatch.store.removal import Kind
from spoolbatch.store.spool import Spool
from spoolbatch.worker.gpu import GpuMonitor
from spoolbatch.worker.gpuguard import GpuGuard
from spoolbatch.worker.gpuhistory import GpuHistoryWriter
from spoolbatch.worker.heartbeat import HeartbeatWriter

from .fakes import GIB, FakeCard, FakeNvml

NOW = 1_800_000_000.0
HOUR = 3600.0


def reading(t: float, mem: float = 50.0, temp: float | None = 60.0, cards: int = 1) -> Reading:
    return Reading(t, tuple(CardReading(i, mem, temp, 10.0) for i in range(cards)))


def every(seconds: float, span: float, **kw: float) -> list[Reading]:
    """A reading every ``seconds`` over the ``span`` seconds before NOW."""
    n = int(span / seconds)
    return [reading(NOW - span + i * seconds, **kw) for i in range(n + 1)]  # type: ignore[arg-type]


def test_thinning_keeps_the_last_minutes_whole_then_one_a_minute_then_one_in_ten_and_drops_a_day_old() -> None:
    kept = thin(every(2.0, 30 * HOUR), NOW)
    ages = [NOW - r.t for r in kept]
    assert max(ages) <= KEEP_SECONDS
    raw = [a for a in ages if a <= RAW_SECONDS]
    assert len(raw) == RAW_SECONDS / 2 + 1  # every 2 s reading of the last 15 minutes
    minute = [a for a in ages if RAW_SECONDS < a <= 3 * HOUR]
    ten = [a for a in ages if a > 3 * HOUR]
    assert 160 <= len(minute) <= 167  # 2 h 45 min of one-minute buckets
    assert 125 <= len(ten) <= 127  # 21 h of ten-minute buckets
    assert kept == sorted(kept, key=lambda r: r.t)


def test_thinning_twice_is_thinning_once_and_later_thinning_only_thins_more() -> None:
    readings = every(2.0, 26 * HOUR)
    once = thin(readings, NOW)
    assert thin(once, NOW) == once
    later = thin(once, NOW + HOUR)
    assert len(later) < len(once) and thin(later, NOW + HOUR) == later


def test_a_peak_survives_thinning_as_its_buckets_highest_reading() -> None:
    readings = every(2.0, 5 * HOUR, mem=40.0, temp=60.0)
    spike = NOW - 2 * HOUR  # 2 h old: in a one-minute bucket
    readings.append(Reading(spike + 0.5, (CardReading(0, 97.5, 88.0, 100.0),)))
    hot_at = NOW - 4 * HOUR + 1  # 4 h old: in a ten-minute bucket
    readings.append(Reading(hot_at, (CardReading(0, 41.0, 91.0, None),)))
    kept = thin(readings, NOW)
    assert max(c.memory_pct for r in kept for c in r.cards) == 97.5
    temps = sorted({c.temperature_c for r in kept for c in r.cards})
    assert temps == [60.0, 88.0, 91.0]
    assert sum(1 for r in kept for c in r.cards if c.memory_pct == 97.5) == 1


def test_cards_of_a_bucket_merge_by_index_and_a_card_seen_once_is_kept() -> None:
    t = NOW - 2 * HOUR
    a = Reading(t, (CardReading(0, 10.0, 50.0, None), CardReading(1, 70.0, None, 5.0)))
    b = Reading(t + 2, (CardReading(0, 30.0, 45.0, 20.0),))
    (merged,) = thin([a, b], NOW)
    assert merged.t == t + 2
    assert merged.cards == (CardReading(0, 30.0, 50.0, 20.0), CardReading(1, 70.0, None, 5.0))


def test_a_torn_last_line_and_odd_lines_are_skipped(tmp_path: os.PathLike[str]) -> None:
    path = tmp_path / "w.gpu.jsonl"  # type: ignore[operator]
    good = [reading(NOW - 10), reading(NOW - 5)]
    path.write_bytes(b"".join(r.to_line() for r in good) + b'{"t": 5, "gpus": "x"}\nnot json\n{"t": 17000')
    assert read_history(path) == good
    assert read_history(path, since=NOW - 7) == good[1:]
    assert read_history(path.with_name("missing")) == []


def test_the_writer_stays_small_with_eight_cards_over_thirty_hours(tmp_path: os.PathLike[str]) -> None:
    path = tmp_path / "w.gpu.jsonl"  # type: ignore[operator]
    clock = [NOW - 30 * HOUR]
    writer = GpuHistoryWriter(path, clock=lambda: clock[0])
    card = {"index": 0, "name": "x", "memory_used": 1, "memory_total": 2, "memory_pct": 55.55,
            "temperature_c": 71, "utilization_pct": 99}
    gpu = {"available": True, "reason": None, "devices": [card | {"index": i} for i in range(8)]}
    biggest = 0
    written = beats = 0
    while clock[0] < NOW:
        clock[0] += 2.0 if clock[0] > NOW - HOUR else 30.0  # every beat for the last hour: what the tiers keep
        written += writer.record(Heartbeat(gpu=gpu, gpu_read_at=clock[0]))
        beats += 1
        writer.record(Heartbeat(gpu=gpu, gpu_read_at=clock[0]))  # the same reading again: not written twice
        writer.record(Heartbeat(gpu=gpu, gpu_read_at=clock[0] + 0.5))  # closer than MIN_SPACING: not written
        if written % 97 == 0:
            biggest = max(biggest, os.path.getsize(path))
    assert written == beats > 5000
    biggest = max(biggest, os.path.getsize(path))
    assert biggest < 300_000, biggest
    history = read_history(path)
    assert history[-1].t == NOW and len(history[-1].cards) == 8
    assert NOW - history[0].t <= KEEP_SECONDS + 100 * 2  # thinned at most COMPACT_EVERY readings ago


def test_no_card_no_history(tmp_path: os.PathLike[str]) -> None:
    path = tmp_path / "w.gpu.jsonl"  # type: ignore[operator]
    writer = GpuHistoryWriter(path)
    assert not writer.record(Heartbeat(gpu={"available": False, "reason": "no GPU", "devices": []}, gpu_read_at=NOW))
    assert not writer.record(Heartbeat())
    assert not path.exists()


def test_the_heartbeat_records_the_guards_readings_and_carries_the_gates_limits(spool: Spool, config: Config) -> None:
    card = FakeCard(used=12 * GIB, total=16 * GIB, temperature=70)
    beat = HeartbeatWriter(spool, 0.1)
    beat.gpu_history.min_spacing = 0.0
    GpuGuard(GpuMonitor(FakeNvml([card]), env={}), config, beat, threading.Event())
    beat.write()  # no reading yet: the hook reads after this beat
    card.temperature = 80
    card.used = 14 * GIB
    time.sleep(0.15)
    beat.write()  # records the reading the hook took; the hook reads again (80 °C)
    beat.write()
    history = read_history(spool.gpu_history(beat.id))
    assert [(c.memory_pct, c.temperature_c) for r in history for c in r.cards][:2] == [(75.0, 70), (87.5, 80)]
    written = orjson.loads(spool.worker_file(beat.id).read_bytes())
    assert written["gpu_limits"] == {"memory_pct": config.gpu_max_memory_pct, "temperature_c": config.gpu_max_temp_c}
    assert written["gpu"]["devices"][0]["temperature_c"] == 80


def test_a_dead_workers_history_goes_with_its_heartbeat_and_an_orphan_history_goes_too(spool: Spool,
                                                                                        config: Config) -> None:
    old = time.time() - 2 * 86400
    for worker, host in (("far-1", "elsewhere"), ("me-1", socket.gethostname())):
        spool.worker_file(worker).write_bytes(orjson.dumps(
            {"worker": worker, "host": host, "pid": 1 if host == "elsewhere" else os.getpid(), "state": "working",
             "last_seen": old if worker == "far-1" else time.time(), "interval": 2.0}))
        spool.gpu_history(worker).write_bytes(reading(time.time()).to_line())
    ghost = spool.gpu_history("ghost-3")
    ghost.write_bytes(reading(old).to_line())
    os.utime(ghost, (old, old))
    report = gc(config)
    assert sorted(r.name for r in report.removed if r.kind == Kind.WORKER) == ["far-1", "ghost-3"]
    assert sorted(p.name for p in spool.workers.iterdir()) == ["me-1.gpu.jsonl", "me-1.json"]
