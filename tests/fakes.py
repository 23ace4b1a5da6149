"""Test doubles shared by the test modules: fake NVML cards, a fake disk, engines that fail on purpose.

Every fake lives here, so a test module never imports another one's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from spoolbatch.engines.fake import FakeEngine
from spoolbatch.format.types import Outcome, Request

GIB = 1024**3


# --- GPU: the NVML calls GpuMonitor makes ------------------------------------------------------
class NVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass
class FakeCard:
    name: str = "NVIDIA Fake 16GB"
    used: int = 2 * GIB
    total: int = 16 * GIB
    temperature: int | None = 55
    utilization: int | None = 40


@dataclass
class FakeNvml:
    """Implements the NvmlBackend calls; ``init_error`` makes nvmlInit fail."""

    cards: list[FakeCard] = field(default_factory=lambda: [FakeCard()])
    init_error: Exception | None = None
    inits: int = 0
    shutdowns: int = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if not 0 <= index < len(self.cards):
            raise NVMLError("Invalid Argument")
        return self.cards[index]

    def nvmlDeviceGetName(self, handle: FakeCard) -> bytes:
        return handle.name.encode()

    def nvmlDeviceGetMemoryInfo(self, handle: FakeCard) -> Any:
        return SimpleNamespace(used=handle.used, total=handle.total, free=handle.total - handle.used)

    def nvmlDeviceGetTemperature(self, handle: FakeCard, sensor: int) -> int:
        assert sensor == 0
        if handle.temperature is None:
            raise NVMLError("Not Supported")
        return handle.temperature

    def nvmlDeviceGetUtilizationRates(self, handle: FakeCard) -> Any:
        if handle.utilization is None:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=handle.utilization, memory=10)



# --- disk: a statvfs the test sets -------------------------------------------------------------
class FakeDisk:
    """A statvfs whose free space the test sets."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, path: str) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096, f_blocks=(1 << 40) // 4096)


# --- engines that misbehave on purpose --------------------------------------------------------
class FlakyEngine(FakeEngine):
    """Raises out-of-memory on batches above ``max_batch`` and always fails on ``poison`` ids."""

    def __init__(self, max_batch: int, poison: set[str]) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.poison = poison
        self.calls = 0

    def run(self, requests: list[Request]) -> list[Outcome]:  # type: ignore[override]
        self.calls += 1
        if len(requests) > self.max_batch:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(r.custom_id in self.poison for r in requests):
            raise RuntimeError("engine core died unexpectedly")
        return super().run(requests)


class RecordingEngine(FakeEngine):
    """Records the order in which chunks are submitted and collected."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def submit(self, requests):  # type: ignore[no-untyped-def,override]
        self.calls.append(("submit", requests[0].custom_id))
        return super().submit(requests)

    def collect(self, ticket):  # type: ignore[no-untyped-def,override]
        self.calls.append(("collect", ticket[0].custom_id))
        return super().collect(ticket)


class UnloadableEngine(FakeEngine):
    """A model that never loads (a typo in the name, a missing folder)."""

    loads = 0

    def load(self, model: str) -> None:
        UnloadableEngine.loads += 1
        raise RuntimeError(f"no such model: {model}")


class DyingEngine(FakeEngine):
    """Dies (as vLLM's engine core does) on its second call; a rebuilt one works."""

    instances = 0

    def __init__(self) -> None:
        super().__init__()
        DyingEngine.instances += 1
        self.generation = DyingEngine.instances
        self.calls = 0

    def run(self, requests: list[Request]) -> list[Outcome]:  # type: ignore[override]
        self.calls += 1
        if self.generation == 1 and self.calls == 2:
            raise RuntimeError("EngineCore encountered an issue; engine core died")
        return super().run(requests)
