"""A GGUF checkpoint turned into a Hugging Face folder that vLLM loads, once per machine.

The packaged SmolLM2 demo model ships as a Q4_1 GGUF; transformers (with the ``gguf``
package) dequantizes it, and the weights are saved again as a clean bf16 folder. torch and
transformers are imported only here and only when a conversion runs (``models`` decides when).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from spoolbatch.errors import EngineError


def convert_once(gguf: Path, target: Path) -> Path:
    """Convert ``gguf`` into the folder ``target`` unless it is there already; return ``target``.

    Safe against concurrent callers (a file lock beside the target) and crashes (built in a
    temporary folder beside the target, then renamed). Takes about 20 s and 1.5 GB of memory
    for the demo model.
    """
    if _converted(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _converted(target):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            convert_gguf(gguf, tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _converted(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file()


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` with transformers and save a clean bf16 HF folder into ``out``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EngineError(f"converting the demo model needs transformers and torch: {exc}",
                          hint="pip install gguf transformers torch") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         dtype=torch.float32)
    except ImportError as exc:  # transformers says so when the `gguf` package is missing
        raise EngineError(f"converting the demo model failed: {exc}", hint="pip install gguf") from None
    config = quantized.config
    # save_pretrained refuses a model still flagged as GGUF-quantized: rebuild a clean one.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            with contextlib.suppress(AttributeError):
                delattr(config, attr)
    state = quantized.state_dict()
    del quantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings have no lm_head of their own in the GGUF; anything else is a real gap.
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise EngineError(f"demo model conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
