"""GPU health: snapshots through a fake NVML, the gate, and the adaptive chunk size."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spoolbatch.worker.gpu import GpuDevice, GpuMonitor, GpuSnapshot, adaptive_chunk_size, gate, visible_indices

from .fakes import GIB, FakeCard, FakeNvml, NVMLError


def read(*cards: FakeCard, env: dict[str, str] | None = None) -> GpuSnapshot:
    return GpuMonitor(FakeNvml(list(cards)), env=env or {}).read()


def test_healthy_card_passes_gate_and_gets_full_chunks() -> None:
    snap = read(FakeCard())
    assert snap.available and snap.reason is None
    (dev,) = snap.devices
    assert dev == GpuDevice(0, "NVIDIA Fake 16GB", 2 * GIB, 16 * GIB, 12.5, 55, 40)
    assert gate(snap, 95, 85) is None
    assert adaptive_chunk_size(snap, 5000, 500) == 5000


def test_hot_card_gates_with_a_reason() -> None:
    snap = read(FakeCard(temperature=87))
    assert gate(snap, 95, 85) == "GPU 0 temperature 87°C > 85°C"
    assert adaptive_chunk_size(snap, 5000, 500) == 5000  # heat alone does not shrink chunks


def test_full_card_gates_and_drops_to_min_chunk() -> None:
    snap = read(FakeCard(used=int(16 * GIB * 0.962)))
    assert gate(snap, 95, 85) == "GPU 0 memory 96.2% > 95%"
    assert adaptive_chunk_size(snap, 5000, 500) == 500


def test_hot_and_full_reports_both_and_names_the_card() -> None:
    snap = read(FakeCard(), FakeCard(used=int(16 * GIB * 0.99), temperature=90))
    assert gate(snap, 95, 85) == "GPU 1 memory 99.0% > 95%; GPU 1 temperature 90°C > 85°C"


def test_thresholds_are_strict() -> None:
    snap = read(FakeCard(used=int(16 * GIB * 0.95), temperature=85))
    assert gate(snap, 95, 85) is None


def test_nvml_init_failure_means_no_gpu_and_no_gate() -> None:
    nvml = FakeNvml(init_error=NVMLError("NVML Shared Library Not Found"))
    snap = GpuMonitor(nvml, env={}).read()
    assert not snap.available and snap.devices == ()
    assert snap.reason == "no GPU (NVML not available: NVML Shared Library Not Found)"
    assert gate(snap, 95, 85) is None
    assert adaptive_chunk_size(snap, 5000, 500) == 5000
    assert snap.to_dict() == {"available": False, "reason": snap.reason, "devices": []}


def test_query_failure_after_init_never_raises_and_reinits() -> None:
    nvml = FakeNvml()
    monitor = GpuMonitor(nvml, env={})

    def lost() -> int:
        raise NVMLError("GPU is lost")

    nvml.nvmlDeviceGetCount = lost  # type: ignore[method-assign]
    snap = monitor.read()
    assert not snap.available and snap.reason == "no GPU (NVML query failed: GPU is lost)"
    assert nvml.shutdowns == 1
    del nvml.nvmlDeviceGetCount
    assert monitor.read().available and nvml.inits == 2


def test_unsupported_sensors_read_as_unknown() -> None:
    snap = read(FakeCard(temperature=None, utilization=None))
    assert snap.available and snap.devices[0].temperature_c is None
    assert gate(snap, 95, 85) is None


def test_real_pynvml_without_a_driver_does_not_raise() -> None:
    snap = GpuMonitor().read()  # on a GPU box this reads the real cards
    assert snap.available or (snap.reason or "").startswith("no GPU (")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", [1]), ("2,0", [2, 0]), (" 0 , 1 ", [0, 1]), ("", []), ("-1", []), ("0,2,-1,1", [0, 2]),
     ("0,x,1", [0]), ("GPU-8e5c3a1b-0000", None), ("MIG-abc", None)],
)
def test_visible_indices(value: str, expected: list[int] | None) -> None:
    assert visible_indices({"CUDA_VISIBLE_DEVICES": value}) == expected
    assert visible_indices({}) is None


def test_cuda_visible_devices_filters_and_orders_cards() -> None:
    cards = [FakeCard(name=f"card{i}", temperature=60 + i) for i in range(4)]
    snap = read(*cards, env={"CUDA_VISIBLE_DEVICES": "3,1"})
    assert [(d.index, d.name) for d in snap.devices] == [(3, "card3"), (1, "card1")]
    hot = read(*cards[:3], FakeCard(temperature=99), env={"CUDA_VISIBLE_DEVICES": "1"})
    assert gate(hot, 95, 85) is None  # the hot card 3 is someone else's


def test_cuda_visible_devices_out_of_range_or_empty_means_no_gpu() -> None:
    for value in ("7", ""):
        snap = read(FakeCard(), env={"CUDA_VISIBLE_DEVICES": value})
        assert not snap.available and snap.reason == "no GPU (none visible: check CUDA_VISIBLE_DEVICES)"


def test_uuid_cuda_visible_devices_leaves_all_cards() -> None:
    assert len(read(FakeCard(), FakeCard(), env={"CUDA_VISIBLE_DEVICES": "GPU-1234"}).devices) == 2


def _snap(pct: float) -> GpuSnapshot:
    used = int(GIB * 16 * pct / 100)
    return GpuSnapshot((GpuDevice(0, "x", used, 16 * GIB, round(pct, 2), 50, 0),), True)


@pytest.mark.parametrize(
    ("pct", "expected"),
    [(0, 5000), (50, 5000), (60, 3875), (70, 2750), (80, 1625), (89.9, 511), (90, 500), (100, 500)],
)
def test_adaptive_chunk_scales_linearly_between_50_and_90_percent(pct: float, expected: int) -> None:
    assert adaptive_chunk_size(_snap(pct), 5000, 500) == expected


def test_adaptive_chunk_is_monotonic_and_bounded() -> None:
    sizes = [adaptive_chunk_size(_snap(p / 10), 5000, 500) for p in range(0, 1001)]
    assert sizes == sorted(sizes, reverse=True)
    assert max(sizes) == 5000 and min(sizes) == 500


def test_adaptive_chunk_never_exceeds_max_chunk() -> None:
    assert adaptive_chunk_size(_snap(95), 200, 500) == 200
    assert adaptive_chunk_size(_snap(10), 200, 500) == 200
    assert adaptive_chunk_size(GpuSnapshot(), 300) == 300


def test_adaptive_chunk_uses_the_fullest_card() -> None:
    snap = GpuSnapshot(_snap(10).devices + _snap(95).devices, True)
    assert adaptive_chunk_size(snap, 5000, 500) == 500


def test_reserved_share_of_the_engine_is_not_pressure() -> None:
    # vLLM holding its 85% alone: full chunks; the rest of the card half full: still full;
    # the rest 90% full (98.5% used): the floor.
    assert adaptive_chunk_size(_snap(86), 5000, 500, reserved_pct=85) == 5000
    assert adaptive_chunk_size(_snap(92.5), 5000, 500, reserved_pct=85) == 5000
    assert adaptive_chunk_size(_snap(98.5), 5000, 500, reserved_pct=85) == 500
    assert adaptive_chunk_size(_snap(86), 5000, 500) < 1000


def test_snapshot_to_dict_is_json_ready() -> None:
    import json

    data = read(FakeCard()).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["devices"][0]["memory_total"] == 16 * GIB


def test_import_is_light() -> None:
    code = "import sys, spoolbatch.worker.gpu; assert 'pynvml' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nvml_that_failed_to_start_is_tried_again_after_a_while_not_on_every_read() -> None:
    """Each failed pynvml init leaves a ctypes class cycle behind, and the daemon reads before every chunk."""
    nvml = FakeNvml(init_error=NVMLError("NVML Shared Library Not Found"))
    tries = 0
    real = nvml.nvmlInit

    def counting() -> None:
        nonlocal tries
        tries += 1
        real()

    nvml.nvmlInit = counting  # type: ignore[method-assign]
    now = [0.0]
    monitor = GpuMonitor(nvml, env={}, retry_seconds=60, clock=lambda: now[0])
    first = monitor.read()
    for _ in range(100):
        assert monitor.read() == first
    assert tries == 1
    now[0] = 61
    nvml.init_error = None  # the driver came back
    assert monitor.read().available and tries == 2
