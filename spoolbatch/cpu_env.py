"""Prepare a process to run vLLM's CPU build (see shared notes: vllm-on-cpu).

Two things must happen before the engine starts on a machine without CUDA: the
environment variables that keep vLLM in-process with a bounded KV cache, and asking Linux
for AMX tiles (vLLM's bf16 attention uses them; without the request the process dies
with SIGILL). Neither touches a GPU box.
"""

from __future__ import annotations

import os

# Set with setdefault: a value the user exported wins.
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def cuda_available() -> bool:
    """True when torch sees a CUDA device (imports torch: call it on the daemon path only)."""
    import torch

    return bool(torch.cuda.is_available())


def prepare_cpu_env(kvcache_gib: int = 1, env: dict[str, str] | None = None) -> dict[str, str]:
    """Set the variables vLLM's CPU build needs (before vLLM builds an engine); return them."""
    target = os.environ if env is None else env
    wanted = dict(CPU_ENV, VLLM_CPU_KVCACHE_SPACE=str(max(1, int(kvcache_gib))))
    for key, value in wanted.items():
        target.setdefault(key, value)
    return {key: target[key] for key in wanted}


def init_amx() -> bool:
    """Ask the kernel for AMX tiles when the CPU has them; True when granted."""
    import torch

    cpu = getattr(torch, "cpu", None)
    supported = getattr(cpu, "_is_amx_tile_supported", None)
    init = getattr(cpu, "_init_amx", None)
    if supported is None or init is None:
        return False
    try:
        return bool(supported()) and bool(init())
    except Exception:  # an old torch or an odd kernel: the engine still runs without AMX
        return False
