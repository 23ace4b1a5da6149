"""LoRA adapters: what ``[[adapters]]`` names, and what an engine needs to serve them.

A table with a ``name`` is one adapter: ``path`` is its folder in PEFT's format
(``adapter_config.json`` and ``adapter_model.safetensors`` or ``.bin``), ``base`` the model
it adapts, spelled as jobs name it. A table without ``name`` is a folder of adapters: each
sub-folder that holds an ``adapter_config.json`` is an adapter of ``base`` named after the
sub-folder. Folders are listed when asked, so an adapter copied in later is found without a
restart. Where two tables give the same name, the first one wins.

A line's ``model`` may name an adapter of its job's base model (``format.lines``); an engine
serving such lines loads the base once and sends each request with its adapter. The engine's
LoRA settings come from the configuration with vLLM's defaults and are raised to fit the
adapters in use (``lora_settings``). Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spoolbatch.config import AdapterSource, EngineSettings
from spoolbatch.errors import RequestError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# vLLM 0.32 takes these values of max_lora_rank (LoRAConfig.max_lora_rank's Literal).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Adapters one engine batch holds, at most, when raised to fit a chunk's (a configured max_loras may be
# larger): each slot costs memory on the card for every layer the adapters touch.
AUTO_MAX_LORAS = 8

NOT_FOUND = "model_not_found"  # a line's model is neither its job's base model nor an adapter of it
NOT_AVAILABLE = "adapter_not_available"  # a named adapter that cannot be read or loaded


@dataclass(frozen=True, slots=True)
class Adapter:
    """One LoRA adapter: its name in request lines, its PEFT folder, and the base model it adapts."""

    name: str
    path: str
    base: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _is_adapter_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def _expand(source: AdapterSource) -> Iterable[Adapter]:
    if source.name is not None:
        yield Adapter(source.name, source.path, source.base)
        return
    try:
        children = sorted(os.scandir(source.path), key=lambda e: e.name)
    except OSError:  # a folder that is not there (yet) holds no adapters
        return
    for entry in children:
        if not entry.name.startswith(".") and entry.is_dir() and _is_adapter_dir(Path(entry.path)):
            yield Adapter(entry.name, entry.path, source.base)


class AdapterCatalog:
    """The adapters ``[[adapters]]`` names, listed from disk when asked."""

    def __init__(self, sources: Sequence[AdapterSource] = ()) -> None:
        self.sources = tuple(sources)
        self._by_name: dict[str, Adapter] | None = None

    def __bool__(self) -> bool:
        return bool(self.sources)

    def adapters(self) -> list[Adapter]:
        """Every adapter, in configuration order (a folder's sorted by name); read afresh."""
        by_name: dict[str, Adapter] = {}
        for source in self.sources:
            for adapter in _expand(source):
                by_name.setdefault(adapter.name, adapter)
        self._by_name = by_name
        return list(by_name.values())

    def bases(self) -> dict[str, str]:
        """Adapter name -> the base model it adapts (what a line parser checks names against)."""
        return {a.name: a.base for a in self.adapters()}

    def get(self, name: str) -> Adapter | None:
        """The adapter called ``name``; the folders are listed again when it is not known yet."""
        if not self.sources:
            return None
        if self._by_name is None or name not in self._by_name:
            self.adapters()
        assert self._by_name is not None
        return self._by_name.get(name)

    def of_base(self, base: str) -> list[Adapter]:
        """The adapters of ``base`` (as last listed)."""
        if self._by_name is None:
            self.adapters()
        assert self._by_name is not None
        return [a for a in self._by_name.values() if a.base == base]


def adapter_bases(sources: Sequence[AdapterSource]) -> dict[str, str]:
    """Adapter name -> base model, for the sources of a configuration (empty without any)."""
    return AdapterCatalog(sources).bases() if sources else {}


def weights_file(path: str | os.PathLike[str]) -> Path | None:
    """The adapter's weights file, or None when its folder has none."""
    for name in WEIGHT_FILES:
        candidate = Path(path) / name
        if candidate.is_file():
            return candidate
    return None


def check_adapter(adapter: Adapter) -> int:
    """The adapter's rank, read from its folder; ``RequestError`` (``adapter_not_available``) saying
    what is wrong when the folder is not a LoRA adapter in PEFT's format."""
    def refuse(why: str) -> RequestError:
        return RequestError(NOT_AVAILABLE, f"adapter {adapter.name!r} cannot be loaded from {adapter.path}: {why}")

    try:
        config = json.loads((Path(adapter.path) / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise refuse(f"no {CONFIG_FILE}") from None
    except (OSError, ValueError) as exc:
        raise refuse(f"{CONFIG_FILE} is unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise refuse(f"{CONFIG_FILE} is not a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise refuse(f"peft_type is {config.get('peft_type')!r}, not LORA")
    ranks = [config.get("r"), *((config.get("rank_pattern") or {}).values())]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise refuse(f"its rank 'r' must be a positive integer, got {config.get('r')!r}")
    if weights_file(adapter.path) is None:
        raise refuse(f"no {' or '.join(WEIGHT_FILES)}")
    return max(ranks)


def adapter_rank(adapter: Adapter) -> int | None:
    """The adapter's rank, or None when its folder cannot be read as an adapter."""
    try:
        return check_adapter(adapter)
    except RequestError:
        return None


@dataclass(frozen=True, slots=True)
class LoraSettings:
    """The LoRA arguments an engine is started with."""

    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int

    def fits(self, need: LoraSettings) -> bool:
        """True when an engine started with these serves adapters that ``need`` describes.

        Only the rank is a hard limit (a larger adapter does not load); with fewer slots than
        adapters vLLM still runs them all, a few adapters in a batch at a time.
        """
        return self.max_lora_rank >= need.max_lora_rank

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments of ``vllm.LLM`` that turn LoRA on with these settings."""
        return {"enable_lora": True, "max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank,
                "max_cpu_loras": self.max_cpu_loras}

    def joined(self, other: LoraSettings) -> LoraSettings:
        """The larger of each setting: an engine restarted for a new adapter keeps what it had."""
        return LoraSettings(max(self.max_loras, other.max_loras), max(self.max_lora_rank, other.max_lora_rank),
                            max(self.max_cpu_loras, other.max_cpu_loras))


def fitting_rank(rank: int) -> int:
    """The smallest rank vLLM takes that is at least ``rank`` (its largest when none is)."""
    return next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1])


def lora_settings(configured: EngineSettings, used: Sequence[Adapter], known: Sequence[Adapter]) -> LoraSettings:
    """The configured LoRA settings raised to fit: ``used`` (a chunk's adapters) and ``known`` (every
    adapter of the base model, so that one that comes later does not need another restart).

    ``max_lora_rank``: the largest rank among them, rounded up to a rank vLLM takes.
    ``max_loras``: slots for each adapter in use, up to ``AUTO_MAX_LORAS``. ``max_cpu_loras``:
    every known adapter stays loaded in host memory.
    """
    ranks = [r for a in {*used, *known} if (r := adapter_rank(a)) is not None]
    rank = fitting_rank(max([configured.max_lora_rank, *ranks]))
    loras = max(configured.max_loras, min(len({a.name for a in used}), AUTO_MAX_LORAS))
    cpu = max(configured.max_cpu_loras or 0, loras, len({a.name for a in (*used, *known)}))
    return LoraSettings(loras, rank, cpu)


class LoraIds:
    """vLLM's integer id for each adapter: the same for an adapter as long as its weights are the
    same file, a new one when its folder or weights change (vLLM keys its cache by the id)."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str, int], int] = {}

    def id_for(self, adapter: Adapter) -> int:
        """The adapter's id, from 1."""
        weights = weights_file(adapter.path)
        try:
            stamp = weights.stat().st_mtime_ns if weights is not None else 0
        except OSError:
            stamp = 0
        key = (adapter.name, str(Path(adapter.path).resolve()), stamp)
        return self._ids.setdefault(key, len(self._ids) + 1)


def adapter_order(models: Sequence[str], base: str | None) -> list[int]:
    """Indexes of requests in the order an engine should take them: the base model's first, then
    each adapter's side by side (sorted by name), each group in its given order."""
    return sorted(range(len(models)), key=lambda i: (models[i] != base, models[i]))
