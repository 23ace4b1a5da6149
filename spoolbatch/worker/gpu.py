"""GPU health through NVML: snapshots, the wait-or-go gate, and the adaptive chunk size.

pynvml (the ``nvidia-ml-py`` package) is imported only inside :meth:`GpuMonitor.read`,
so importing this module is instant and works on machines without a GPU or a driver.
Nothing here raises because of the GPU: a missing driver is a snapshot with
``available=False`` and a reason, which the daemon shows in its heartbeat and ignores.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

# pynvml.NVML_TEMPERATURE_GPU; repeated here so the module needs no import to use it.
_TEMPERATURE_GPU = 0


class NvmlBackend(Protocol):
    """The few NVML calls GpuMonitor makes; the ``pynvml`` module itself satisfies it."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...  # has .used and .total (bytes)
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...  # has .gpu (percent)


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One card as NVML reports it; ``index`` is NVML's (nvidia-smi's) index."""

    index: int
    name: str
    memory_used: int
    memory_total: int
    memory_pct: float
    temperature_c: int | None
    utilization_pct: int | None


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """Every visible card at one instant, or why there is none."""

    devices: tuple[GpuDevice, ...] = ()
    available: bool = False
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for the heartbeat and ``status --json``."""
        return {
            "available": self.available,
            "reason": self.reason,
            "devices": [asdict(d) for d in self.devices],
        }


def visible_indices(env: Mapping[str, str] | None = None) -> list[int] | None:
    """The NVML indices CUDA_VISIBLE_DEVICES selects, or None when it selects nothing by index.

    None means "no filter": the variable is unset, or it names devices by UUID/MIG id,
    which this module does not map. An empty value hides every card, as it does for CUDA.
    As in CUDA, the list ends at the first entry that is not an index (e.g. ``0,2,-1,1``).
    """
    raw = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    tokens = [t.strip() for t in raw.split(",")]
    if raw.strip() == "":
        return []
    if not tokens[0].lstrip("-").isdigit():
        return None
    indices: list[int] = []
    for token in tokens:
        if not token.isdigit():
            break
        indices.append(int(token))
    return indices


# After NVML failed to start, it is tried again this often, not on every read: each failed
# pynvml.nvmlInit builds a ctypes class (a reference cycle) while it looks for the library, and
# the daemon reads before every chunk with the cyclic collector held back (gcpolicy), so on a
# box without NVML the failures piled up as garbage: ~7 objects a read, +8 MB RSS in a
# 12-minute soak.
INIT_RETRY_SECONDS = 60.0


class GpuMonitor:
    """Reads GpuSnapshots through NVML; pass ``nvml`` (a fake) in tests."""

    def __init__(self, nvml: NvmlBackend | None = None, env: Mapping[str, str] | None = None, *,
                 retry_seconds: float = INIT_RETRY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml = nvml
        self._env = env
        self._initialized = False
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._unavailable: tuple[float, GpuSnapshot] | None = None  # (when to try again, what to say until then)
        # The daemon's loop reads before each chunk and its heartbeat thread between them (gpuguard.py).
        self._lock = threading.RLock()

    def _backend(self) -> NvmlBackend:
        if self._nvml is None:
            import pynvml  # lazy: only the daemon and `status` pay for it

            self._nvml = pynvml
        return self._nvml

    def read(self) -> GpuSnapshot:
        """A snapshot of every visible card; never raises."""
        with self._lock:
            return self._read()

    def _read(self) -> GpuSnapshot:
        if self._unavailable is not None and self._clock() < self._unavailable[0]:
            return self._unavailable[1]
        try:
            nvml = self._backend()
            if not self._initialized:
                nvml.nvmlInit()
                self._initialized = True
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            snapshot = GpuSnapshot(reason=f"no GPU (NVML not available: {_describe(exc)})")
            self._unavailable = (self._clock() + self._retry_seconds, snapshot)
            return snapshot
        self._unavailable = None
        try:
            count = nvml.nvmlDeviceGetCount()
            wanted = visible_indices(self._env)
            indices = range(count) if wanted is None else [i for i in wanted if 0 <= i < count]
            devices = tuple(_read_device(nvml, i) for i in indices)
        except Exception as exc:  # a lost GPU, a driver reload: re-init on the next read
            self.close()
            return GpuSnapshot(reason=f"no GPU (NVML query failed: {_describe(exc)})")
        if not devices:
            return GpuSnapshot(reason="no GPU (none visible: check CUDA_VISIBLE_DEVICES)")
        return GpuSnapshot(devices=devices, available=True)

    def close(self) -> None:
        """Release NVML; a later read() initialises it again."""
        with self._lock:
            if self._initialized and self._nvml is not None:
                self._initialized = False
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()

    def __enter__(self) -> GpuMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _read_device(nvml: NvmlBackend, index: int) -> GpuDevice:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    used, total = int(memory.used), int(memory.total)
    # Temperature and utilisation are unsupported on some cards (and under some MIG
    # setups); the card is still usable, so those read as unknown rather than failing.
    try:
        temperature: int | None = int(nvml.nvmlDeviceGetTemperature(handle, _TEMPERATURE_GPU))
    except Exception:
        temperature = None
    try:
        utilization: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:
        utilization = None
    pct = round(100.0 * used / total, 2) if total > 0 else 0.0
    return GpuDevice(index, name, used, total, pct, temperature, utilization)


def gate(snapshot: GpuSnapshot, max_memory_pct: float, max_temp_c: float) -> str | None:
    """Why no new chunk may start now (e.g. 'GPU 0 memory 96.2% > 95%'), or None to go on."""
    reasons: list[str] = []
    for d in snapshot.devices if snapshot.available else ():
        if d.memory_pct > max_memory_pct:
            reasons.append(f"GPU {d.index} memory {d.memory_pct:.1f}% > {max_memory_pct:g}%")
        if d.temperature_c is not None and d.temperature_c > max_temp_c:
            reasons.append(f"GPU {d.index} temperature {d.temperature_c}°C > {max_temp_c:g}°C")
    return "; ".join(reasons) or None


def adaptive_chunk_size(
    snapshot: GpuSnapshot, max_chunk: int, min_chunk: int = 500, *,
    reserved_pct: float = 0.0, low_pct: float = 50.0, high_pct: float = 90.0,
) -> int:
    """The number of requests for the next chunk, from the fullest visible card's memory.

    With ``u`` the used share of that card in percent::

        u <= low_pct (50)          -> max_chunk
        u >= high_pct (90)         -> min_chunk
        in between                 -> max_chunk - (max_chunk - min_chunk) * (u - low) / (high - low)

    rounded down, and never above ``max_chunk`` (so a ``min_chunk`` larger than
    ``max_chunk`` yields ``max_chunk``). No GPU: ``max_chunk``.

    ``reserved_pct`` is the share the daemon's own engine holds by design: vLLM
    preallocates ``gpu_memory_utilization`` of the card for weights and KV cache, so
    once it is loaded pass ``gpu_memory_utilization * 100``; ``u`` is then measured on
    the rest of the card, ``(used% - reserved) / (100 - reserved)``. Without this the
    engine's own preallocation would pin the chunk size near ``min_chunk`` for good.
    """
    if max_chunk < 1:
        raise ValueError("max_chunk must be at least 1")
    if not snapshot.available or not snapshot.devices:
        return max_chunk
    floor = max(1, min(min_chunk, max_chunk))
    reserved = min(max(reserved_pct, 0.0), 99.0)
    used = max(d.memory_pct for d in snapshot.devices)
    u = max(0.0, used - reserved) * 100.0 / (100.0 - reserved)
    if u <= low_pct:
        return max_chunk
    if u >= high_pct:
        return floor
    size = max_chunk - (max_chunk - floor) * (u - low_pct) / (high_pct - low_pct)
    return max(floor, min(max_chunk, int(size)))
