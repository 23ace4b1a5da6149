"""LoRA adapters for the tiny test model, written at test time, and the same adapters merged into the weights.

An adapter is a folder in PEFT's format: ``adapter_config.json`` (``peft_type`` LORA, rank
``r``, ``lora_alpha``, ``target_modules``) and ``adapter_model.safetensors`` holding
``base_model.model.<module>.lora_A.weight`` (r x in) and ``lora_B.weight`` (out x r) for
each targeted module (every layer's q_proj and v_proj unless told), with seeded random values. PEFT
is not needed to write one: the format is these two files. ``merge_adapter`` writes a model
folder whose weights are W + (alpha / r) * B @ A, in float32 so that nothing is rounded: a
model that has the adapter built in, for comparing answers against the engine's LoRA path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TARGETS = ("q_proj", "v_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
EVERY_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", *MLP)


def _layers(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["num_hidden_layers"])


def write_adapter(model_dir: Path, out: Path, *, seed: int, rank: int = 8, alpha: int = 16,
                  scale: float = 0.3, targets: tuple[str, ...] = TARGETS) -> Path:
    """A rank-``rank`` adapter of the model in ``model_dir`` with non-zero random weights, in ``out``, on each
    layer's ``targets`` (attention's q_proj ... o_proj, the MLP's gate_proj, up_proj, down_proj)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model_dir / "model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(_layers(model_dir)):
        for module in targets:
            block = "mlp" if module in MLP else "self_attn"
            rows, cols = weights[f"model.layers.{layer}.{block}.{module}.weight"].shape
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, cols, generator=generator) * scale).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(rows, rank, generator=generator) * scale).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": list(targets), "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": str(model_dir)}))
    return out


def merge_adapter(model_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """The model in ``model_dir`` with the adapter's delta added to its weights (float32), in ``out``."""
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    weights = load_file(str(model_dir / "model.safetensors"))
    merged = {}
    for key, tensor in weights.items():
        tensor = tensor.to(torch.float32)
        prefix = "base_model.model." + key.removesuffix(".weight")
        if f"{prefix}.lora_A.weight" in lora:
            delta = lora[f"{prefix}.lora_B.weight"].float() @ lora[f"{prefix}.lora_A.weight"].float()
            tensor = tensor + scaling * delta
        merged[key] = tensor.contiguous()
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def write_fake_adapter(out: Path, *, rank: int = 8) -> Path:
    """An adapter folder the fake engine accepts (a config and a weights file; the weights are not read)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                         "target_modules": list(TARGETS)}))
    (out / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    return out
