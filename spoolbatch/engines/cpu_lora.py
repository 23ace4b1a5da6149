"""vLLM 0.32's CPU LoRA ops give base-model rows the last adapter's delta: rows without one are left alone here.

On the CPU build LoRA runs through PyTorch ops (``vllm.lora.ops.torch_ops``) that gather each
row's adapter weights as ``weights[index]``. A row that carries no adapter has index -1,
which PyTorch reads as the last slot, so in a batch that mixes base-model and adapter
requests every base row gets the last loaded adapter's delta added: on the tiny test model
every base answer of such a batch changed (vLLM pull requests 48421 and 49656, open). The GPU
kernels skip such rows. ``leave_rows_without_adapter`` probes the shrink op with one -1 row
and, when the row is touched, wraps the three gathering ops so that a -1 row's output is what
it was before the op, as on the GPU; sgmv (prefill) goes through them too. A vLLM whose ops
leave the row alone is not touched. It must run in every process that runs the model
(the in-process CPU engine, each Ray replica), before the engine starts.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
_MARK = "_spoolbatch_rows_without_adapter"


def _leaving_rows_alone(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op`` with the rows whose adapter index is -1 restored to what they held before it."""
    import torch

    @functools.wraps(op)
    def wrapped(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> Any:
        without = indices < 0
        if output.shape[0] != indices.shape[0] or not bool(without.any()):
            return op(inputs, weights, output, indices, *args, **kwargs)
        if bool(without.all()):
            return None
        kept = output[without].clone()
        result = op(inputs, weights, output, torch.clamp(indices, min=0), *args, **kwargs)
        output[without] = kept
        return result

    setattr(wrapped, _MARK, True)
    return wrapped


def _touches_row_without_adapter(shrink: Callable[..., Any]) -> bool:
    """True when ``shrink`` writes into a row whose adapter index is -1 (one row, one slot of ones)."""
    import torch

    output = torch.zeros(1, 1)
    shrink(torch.ones(1, 2), torch.ones(1, 1, 1, 2), output, torch.tensor([-1]), 1.0)
    return bool(output.abs().sum() > 0)


def leave_rows_without_adapter() -> bool:
    """Make the CPU LoRA ops skip rows without an adapter when they do not; True when they were patched."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:  # another vLLM layout: nothing known to fix
        return False
    if getattr(lora_ops.bgmv_shrink, _MARK, False) or not _touches_row_without_adapter(lora_ops.bgmv_shrink):
        return False
    for name in _OPS:
        fixed = _leaving_rows_alone(getattr(lora_ops, name))
        setattr(lora_ops, name, fixed)  # what sgmv_* (prefill) call
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, fixed)  # the wrapper imported them by name
    log.info("vLLM's CPU LoRA ops apply an adapter to rows without one: patched to leave them alone")
    return True
