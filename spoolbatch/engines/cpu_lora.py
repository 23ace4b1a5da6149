"""vLLM 0.32's CPU LoRA ops, replaced: base-model rows are left alone, and rows are grouped by adapter.

On the CPU build LoRA runs through PyTorch ops (``vllm.lora.ops.torch_ops``: ``bgmv_shrink``,
``bgmv_expand``, ``bgmv_expand_slice``; the prefill ``sgmv_*`` ops call them). They gather each
row's adapter weights as ``weights[index]``, and two things follow:

- **Wrong answers.** A row that carries no adapter has index -1, which PyTorch reads as the
  last slot, so in a batch that mixes base-model and adapter requests every base row gets the
  last loaded adapter's delta: on the tiny test model every base answer of such a batch
  changed (vLLM pull requests 48421 and 49656, open). The GPU kernels skip such rows.
- **Slow.** The gather copies an adapter's weights once per row (token) and multiplies row by
  row, in float32: 200 prompts of the tiny model took 1.1-2.1 s with adapters against
  0.5-0.65 s without (one thread).

The ops here compute the same sums one adapter at a time: the rows of each adapter in the
batch (runs of one adapter are slices: the engine enqueues each adapter's requests side by
side) multiplied by its weights in one matrix product, in the weights' dtype (bf16 on AMX),
and rows without an adapter untouched, as on the GPU. A slot whose weights are zero (a module
the adapter does not touch: vLLM wraps every linear layer) is skipped. The same 200 prompts:
0.77-0.83 s. ``replace_cpu_lora_ops`` installs them when a probe of vLLM's shrink op shows the
gather above (a row with index -1 is written), so a vLLM whose ops were fixed keeps its own.
It must run in every process that runs the model (the in-process CPU engine, each Ray
replica), before the engine starts.

The wrapper that calls these ops for every layer is replaced too (``cpu_lora_wrapper``): it
finds the runs once a forward pass and skips the calls here for layers and batches no adapter
touches. These ops stay for what still calls them (vLLM's other LoRA paths) and for a vLLM
whose wrapper is not the one that module was written for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

_MARK = "_spoolbatch_grouped"
_MAX_RUNS = 16  # up to this many runs of one adapter each, rows are taken as slices (no gather, no scatter)


def runs(indices: Any) -> Iterator[tuple[int, Any]]:
    """(adapter slot, its rows) covering every row with an adapter; rows without one are left out.

    The engine enqueues each adapter's requests side by side, so a batch's rows mostly come in
    a few runs of one adapter: each run is a slice (a view). Otherwise each adapter's rows are
    gathered by index.
    """
    import torch

    if indices.numel() == 0:
        return
    slots, counts = torch.unique_consecutive(indices, return_counts=True)
    if len(slots) <= _MAX_RUNS:
        start = 0
        for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
            if slot >= 0:
                yield int(slot), (None if count == indices.numel() else slice(start, start + count))
            start += count
        return
    for slot in torch.unique(slots).tolist():
        if slot >= 0:
            yield int(slot), (indices == slot).nonzero(as_tuple=True)[0]


def _weights(stacked: Any) -> Any:
    """(slots, rows, cols) from vLLM's (slots, 1, rows, cols) stacks."""
    return stacked.squeeze(1) if stacked.dim() == 4 else stacked


# Whether an adapter slot of a weight stack is all zeros, by (stack, its version, slot): the stacks are the
# engine's LoRA buffers, written in place when an adapter is loaded (which bumps their version);
# emptied when an engine starts, as its buffers are new.
_zero: dict[tuple[Any, ...], bool] = {}


def _is_zero(stack: Any, slot: int) -> bool:
    """True when ``stack[slot]`` (an adapter's weights for one module) is all zeros: the adapter leaves it alone."""
    key = (stack.data_ptr(), stack._version, tuple(stack.shape), stack.stride(), slot)
    found = _zero.get(key)
    if found is None:
        if len(_zero) > 65536:
            _zero.clear()
        found = _zero[key] = not bool(stack[slot].any())
    return found


def _rows(tensor: Any, rows: Any) -> Any:
    """``tensor``'s rows: all (None), a run (a slice: a view), or gathered by index (a copy)."""
    return tensor if rows is None else tensor[rows]


def bgmv_shrink(inputs: Any, lora_a_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                scaling: float = 1.0) -> None:
    """``output[i, :rank] = scaling * inputs[i] @ A[slot(i)].T`` for each row with an adapter.

    The product is taken in the inputs' dtype when the weights have it (bf16 on a CPU with AMX:
    17 times faster than converting both to the float32 buffer first), then stored in the
    buffer's. An adapter slot whose weights are zero (a module the adapter does not touch) only
    writes zeros.
    """
    weights = _weights(lora_a_weights)
    rank = weights.shape[1]
    for slot, rows in runs(lora_indices_tensor):
        target = output_tensor[:, :rank] if rows is None or isinstance(rows, slice) else None
        weight = weights[slot]
        if _is_zero(lora_a_weights, slot):
            product = None
        else:
            x = _rows(inputs, rows)
            dtype = x.dtype if x.dtype == weight.dtype else output_tensor.dtype
            product = ((x.to(dtype) @ weight.to(dtype).T) * scaling).to(output_tensor.dtype)
        if target is None:
            output_tensor[rows, :rank] = product if product is not None else 0
        elif product is None:
            _rows(target, rows).zero_()
        else:
            _rows(target, rows).copy_(product)


def _expand_into(inputs: Any, stack: Any, output: Any, indices: Any, first: int, width: int,
                 add_inputs: bool) -> None:
    """``output[i, first:first + width] (+)= inputs[i] @ B[slot(i)].T[:, :width]`` for each row with an adapter.

    An adapter slot whose weights are zero adds nothing and is skipped.
    """
    weights = _weights(stack)
    dtype = output.dtype
    columns = output[:, first:first + width]
    for slot, rows in runs(indices):
        weight = weights[slot, :width]
        if add_inputs and _is_zero(stack, slot):
            continue
        x = _rows(inputs, rows).to(dtype)
        if rows is None or isinstance(rows, slice):
            part = _rows(columns, rows)
            if add_inputs:
                part.addmm_(x, weight.to(dtype).T)
            else:
                part.copy_(x @ weight.to(dtype).T)
        elif add_inputs:
            output[rows, first:first + width] += x @ weight.to(dtype).T
        else:
            output[rows, first:first + width] = x @ weight.to(dtype).T


def _grouped_expand(original: Callable[..., Any]) -> Callable[..., Any]:
    def bgmv_expand(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                    add_inputs: bool = True) -> Any:
        """``bgmv_expand`` by adapter; vLLM's own where its one-index broadcast applies."""
        if lora_indices_tensor.shape[0] != output_tensor.shape[0]:
            return original(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
        width = min(_weights(lora_b_weights).shape[1], output_tensor.shape[1])  # adapter and model may pad apart
        _expand_into(inputs, lora_b_weights, output_tensor, lora_indices_tensor, 0, width, add_inputs)
        return None

    return bgmv_expand


def bgmv_expand_slice(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    """``bgmv_expand_slice`` by adapter: into ``output[:, slice_offset:slice_offset + slice_size]``."""
    _expand_into(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs)


def _writes_row_without_adapter(shrink: Callable[..., Any]) -> bool:
    """True when ``shrink`` writes into a row whose adapter index is -1 (one row, one slot of ones)."""
    import torch

    output = torch.zeros(1, 1)
    shrink(torch.ones(1, 2), torch.ones(1, 1, 1, 2), output, torch.tensor([-1]), 1.0)
    return bool(output.abs().sum() > 0)


def replace_cpu_lora_ops() -> bool:
    """Install the grouped ops in place of vLLM's CPU LoRA ops when those gather by row; True when installed."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:  # another vLLM layout: nothing known to replace
        return False
    _zero.clear()  # an engine starts: its weight stacks are new
    if getattr(lora_ops.bgmv_shrink, _MARK, False) or not _writes_row_without_adapter(lora_ops.bgmv_shrink):
        return False
    ops = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": _grouped_expand(lora_ops.bgmv_expand),
           "bgmv_expand_slice": bgmv_expand_slice}
    for name, op in ops.items():
        setattr(op, _MARK, True)
        setattr(lora_ops, name, op)  # what sgmv_* (prefill) call
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, op)  # the wrapper imported them by name
    log.info("vLLM's CPU LoRA ops gather weights per row and apply an adapter to rows without one: "
             "replaced by ops grouped by adapter")
    return True
