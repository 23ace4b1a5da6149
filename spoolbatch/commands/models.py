"""`spoolbatch models` and `GET /v1/models`: the models this machine can run and the LoRA adapters of them.

Nothing here imports vLLM or torch: models are found on disk and in packages
(``engines.models``), adapters from ``[[adapters]]`` and their folders (``engines.adapters``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from spoolbatch.commands import health
from spoolbatch.config import Config
from spoolbatch.engines.adapters import AdapterCatalog, check_adapter
from spoolbatch.engines.models import ModelInfo, default_model, list_models
from spoolbatch.errors import RequestError
from spoolbatch.store.spool import Spool


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """One LoRA adapter as `models` lists it: its base model, its folder, its rank, and whether it loads."""

    name: str
    base: str
    path: str
    rank: int | None
    ready: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    """What `spoolbatch models` shows."""

    default: str
    models: list[ModelInfo]
    adapters: list[AdapterInfo]

    def to_dict(self) -> dict[str, Any]:
        """``--json``."""
        return {"default": self.default, "models": [m.to_dict() for m in self.models],
                "adapters": [a.to_dict() for a in self.adapters]}


def adapters(config: Config) -> list[AdapterInfo]:
    """Every configured adapter, each checked as an engine would read its folder."""
    out = []
    for adapter in AdapterCatalog(config.adapters).adapters():
        try:
            out.append(AdapterInfo(adapter.name, adapter.base, adapter.path, check_adapter(adapter), True))
        except RequestError as exc:
            out.append(AdapterInfo(adapter.name, adapter.base, adapter.path, None, False, exc.message))
    return out


def catalog(config: Config) -> ModelCatalog:
    """The models this machine can run, and the adapters ``[[adapters]]`` names."""
    return ModelCatalog(default_model(), list_models(config.model_dir), adapters(config))


@dataclass(frozen=True, slots=True)
class Served:
    """A `GET /v1/models` entry: a model, or an adapter with its base as ``parent`` (as vLLM's server lists them)."""

    id: str
    parent: str | None = None


def served(spool: Spool, config: Config) -> list[Served]:
    """The models the alive workers have loaded, the configured one and the adapters' bases; then each
    adapter with its base."""
    listed = AdapterCatalog(config.adapters).adapters()
    names = set(health.models(spool, config.model)) | {a.base for a in listed}
    return [Served(name) for name in sorted(names)] + [Served(a.name, a.base) for a in listed]
