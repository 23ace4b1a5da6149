"""Prepare a process to run vLLM's CPU build (see shared notes: vllm-on-cpu).

Three things must happen before the engine starts on a machine without CUDA: the
environment variables that keep vLLM in-process with a bounded KV cache; asking Linux for
AMX tiles (vLLM's bf16 attention uses them; without the request the process dies with
SIGILL); and, for ``dtype auto``, a dtype the CPU computes natively. vLLM's "auto" runs a
model in bf16 on every CPU, but without AVX512_BF16 or AMX oneDNN has no bf16 matmul
("datatype configuration not supported on this isa") and falls back to a path that was
4-6x slower than float32 on our AVX2-only machines. None of this touches a GPU box.
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


_NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bf16 arithmetic (AVX512_BF16 or AMX-BF16); False when unknown."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _NATIVE_BF16)


def cpu_dtype(requested: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """The dtype to give vLLM on a CPU: ``auto`` becomes ``float32`` where bf16 is not native."""
    if requested != "auto" or cpu_has_native_bf16(cpuinfo):
        return requested
    return "float32"


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
