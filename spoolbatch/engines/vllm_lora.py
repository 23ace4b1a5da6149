"""LoRA adapters on the vLLM engine: which request carries which adapter, and loading them.

The engine starts a model without LoRA. The first chunk whose lines name adapters of it
restarts it once with LoRA on (``restart_for``: settings raised to fit, ``adapters``), and
every adapter a chunk names is loaded before its requests are enqueued (``load``): an
adapter that fails to load fails its own lines (``adapter_not_available``, with vLLM's
reason), never the chunk. Each request then carries its adapter's ``LoRARequest``, with an
id that stays the same for that adapter (``adapters.LoraIds``), and vLLM batches base and
adapter requests together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from spoolbatch.config import EngineSettings
from spoolbatch.engines.adapters import (
    Adapter,
    AdapterCatalog,
    LoraIds,
    LoraSettings,
    adapter_order,
    lora_settings,
)
from spoolbatch.engines.failures import engine_error, is_broken, is_out_of_memory
from spoolbatch.errors import RequestError
from spoolbatch.format.endpoints import GENERATION
from spoolbatch.format.types import Request

log = logging.getLogger(__name__)


class Loras:
    """The LoRA side of one ``VllmEngine``: its adapters, its settings now, vLLM's ids."""

    def __init__(self, settings: EngineSettings) -> None:
        self.configured = settings
        self.catalog = AdapterCatalog(settings.adapters)
        self.active: LoraSettings | None = None  # what the running engine was started with; None: LoRA off
        self._ids = LoraIds()

    def engine_args(self) -> dict[str, Any]:
        """What ``vllm.LLM`` gets for LoRA: nothing while it is off."""
        return self.active.engine_args() if self.active is not None else {}

    def base_of(self, model: str) -> str:
        """The model to load for ``model``: its base when it names an adapter, else itself."""
        adapter = self.catalog.get(model) if self.catalog else None
        return adapter.base if adapter is not None else model

    def named(self, requests: Sequence[Request],
              base: str | None) -> tuple[dict[str, Adapter], dict[int, RequestError]]:
        """The adapters ``requests`` name, and the requests that fail at once: an adapter of another
        base model, an adapter on a line that does not generate. Any other name runs on the loaded
        model, as before adapters (the line parser has refused names a job may not use)."""
        adapters: dict[str, Adapter] = {}
        failed: dict[int, RequestError] = {}
        for i, request in enumerate(requests):
            name = request.spec.model
            if name == base:
                continue
            adapter = adapters.get(name) or (self.catalog.get(name) if self.catalog else None)
            if adapter is None:
                continue
            if adapter.base != base:
                failed[i] = RequestError("model_mismatch", f"adapter {name!r} adapts {adapter.base!r}, not the "
                                                           f"loaded model {base!r}")
            elif request.spec.endpoint not in GENERATION:
                failed[i] = RequestError("unsupported_parameter", f"adapter {name!r}: adapters answer chat, "
                                                                  f"completions and responses lines, not "
                                                                  f"{request.spec.endpoint}")
            else:
                adapters[name] = adapter
        return adapters, failed

    def restart_for(self, adapters: dict[str, Adapter], base: str) -> LoraSettings | None:
        """The LoRA settings to restart the engine with to serve ``adapters``, or None when it serves them now."""
        if not adapters:
            return None
        need = lora_settings(self.configured, list(adapters.values()), self.catalog.of_base(base))
        if self.active is not None and self.active.fits(need):
            return None
        return need if self.active is None else self.active.joined(need)

    def load(self, llm_engine: Any, adapters: dict[str, Adapter]) -> tuple[dict[str, Any], dict[str, RequestError]]:
        """Load ``adapters`` into the engine (vLLM keeps those it has): a ``LoRARequest`` for each one
        that loaded, the reason for each one that did not. A failure of the engine itself raises."""
        from vllm.lora.request import LoRARequest

        loaded: dict[str, Any] = {}
        failed: dict[str, RequestError] = {}
        for name, adapter in adapters.items():
            request = LoRARequest(name, self._ids.id_for(adapter), adapter.path, base_model_name=adapter.base)
            try:
                llm_engine.add_lora(request)
            except Exception as exc:
                if is_broken(exc) or is_out_of_memory(exc):
                    raise engine_error(exc, f"loading adapter {name!r} failed") from exc
                log.warning("adapter %r (%s) could not be loaded: %s: %s", name, adapter.path, type(exc).__name__, exc)
                failed[name] = RequestError("adapter_not_available", f"adapter {name!r} could not be loaded from "
                                                                     f"{adapter.path}: {type(exc).__name__}: {exc}")
                continue
            loaded[name] = request
        return loaded, failed

    @staticmethod
    def order(requests: Sequence[Request], base: str | None) -> list[int]:
        """The order to enqueue ``requests`` in: the base model's, then each adapter's side by side."""
        return adapter_order([r.spec.model for r in requests], base)
