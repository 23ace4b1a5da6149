"""Inference engines behind one protocol; vLLM and Ray are imported only when asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spoolbatch.config import ENGINE_NAMES
from spoolbatch.errors import ConfigError

if TYPE_CHECKING:
    from spoolbatch.config import Config
    from spoolbatch.engines.base import Engine
    from spoolbatch.store.joblog import DaemonEvents

__all__ = ["ENGINE_NAMES", "make_engine"]


def make_engine(name: str, config: Config, *, events: DaemonEvents | None = None) -> Engine:
    """Build the engine called ``name``; importing vLLM happens here and nowhere else.

    ``events``: where an engine reports what it repaired on its own (Ray's lost replicas).
    """
    if name == "fake":
        from spoolbatch.engines.adapters import AdapterCatalog
        from spoolbatch.engines.fake import FakeEngine
        from spoolbatch.engines.media import MediaPolicy

        return FakeEngine(latency=config.fake_latency, media=MediaPolicy.of(config.engine_settings()),
                          adapters=AdapterCatalog(config.adapters))
    if name == "vllm":
        from spoolbatch.engines.vllm_engine import VllmEngine

        return VllmEngine(config.engine_settings())
    if name == "ray":
        from spoolbatch.engines.ray_engine import RayEngine

        return RayEngine(config.engine_settings(), address=config.ray_address, concurrency=config.ray_concurrency,
                         events=events)
    raise ConfigError(f"unknown engine {name!r}", hint=f"choose one of: {', '.join(ENGINE_NAMES)}")
