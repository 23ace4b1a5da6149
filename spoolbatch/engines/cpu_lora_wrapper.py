"""vLLM 0.32's CPU LoRA wrapper, replaced: a layer costs what the batch's adapters do to it.

With LoRA on, vLLM wraps every linear layer of the model, the embedding and the logits, and on
the CPU build each wrapped layer calls ``PunicaWrapperCPU``, which for every output slice (q, k
and v each) allocates a float32 buffer and runs a shrink and an expand op; the ops find the
batch's runs of one adapter again each time (``cpu_lora``). Whatever the batch holds: a layer the
adapters leave alone (o_proj, gate_up and down for adapters of q_proj and v_proj) and a batch of
base-model rows only pay for it too. SmolLM2 (30 layers), 400 requests of 16 tokens on one
thread: 2.8 s of 11.8 s in ``add_lora_linear``, against 9.4 s for the base alone.

The methods here take the wrapper's place (``install``): ``add_lora_linear`` (every linear layer),
``add_lora_embedding``, ``add_lora_logits``, and ``add_shrink``/``add_expand`` (what vLLM's
``fully_sharded_loras`` layers call instead of ``add_lora_linear``):

- a batch's runs of one adapter are found once a forward pass (the wrapper rewrites its index
  tensors in place before each one, which bumps their version: the key of what is kept);
- a batch without adapter rows costs a lookup a layer, and so does a layer whose weight slots
  are zero for the batch's adapters (vLLM zeroes a slot's weights for a module an adapter does
  not touch);
- a layer an adapter touches takes that adapter's rows (a slice: the engine enqueues each
  adapter's requests side by side) through one product with the A matrices of all the slices it
  touches side by side, then one ``addmm`` a slice into the output, with the weights laid out
  once per adapter load (trimmed to the adapter's own rank when vLLM pads it) and in the
  model's dtype.

Sums are those of vLLM's ops; rows without an adapter are left alone (vLLM's own CPU ops give
them the last slot's delta, see ``cpu_lora``). Only a vLLM whose wrapper has the methods and
arguments written for is changed (``install`` checks the signatures); anything else it does, it
still does. Runs in every process that runs the model, before the engine starts.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spoolbatch.engines.cpu_lora import runs

log = logging.getLogger(__name__)

_MARK = "_spoolbatch_wrapper"
_ORIGINAL = "_spoolbatch_original_"

# The signatures written for (vLLM 0.32's PunicaWrapperCPU): another layout keeps vLLM's methods.
_SIGNATURES = {
    "add_lora_linear": ["self", "y", "x", "lora_a_stacked", "lora_b_stacked", "scale", "output_slices", "buffer",
                        "kwargs"],
    "add_shrink": ["self", "y", "x", "lora_a_stacked", "scale", "kwargs"],
    "add_expand": ["self", "y", "x", "lora_b_stacked", "output_slices", "offset_start", "add_inputs", "kwargs"],
    "add_lora_embedding": ["self", "y", "x", "lora_b_stacked", "add_inputs", "kwargs"],
    "add_lora_logits": ["self", "y", "x", "lora_a_stacked", "lora_b_stacked", "scale", "buffer", "kwargs"],
}

Rows = Any  # a slice of the batch's rows (a run of one adapter) or an index tensor (its rows, gathered)


def _groups(wrapper: Any, which: str) -> list[tuple[int, Rows]]:
    """(slot, rows) of the rows with an adapter, for the tokens (``which`` "token") or the logits ("sampler").

    Kept on the wrapper until its index tensor is written again (the next forward pass).
    """
    base, length = ((wrapper._token_lora_indices, wrapper.indices_len[0]) if which == "token"
                    else (wrapper._sampler_indices, wrapper.indices_len[1]))
    if length is None:  # no batch mapped yet
        return []
    key = (base.data_ptr(), base._version, length)
    kept = wrapper.__dict__.get(f"_spoolbatch_{which}")
    if kept is not None and kept[0] == key:
        return kept[1]
    indices = base[:length]
    groups = [(slot, slice(0, indices.shape[0]) if rows is None else rows) for slot, rows in runs(indices)]
    wrapper.__dict__[f"_spoolbatch_{which}"] = (key, groups)
    return groups


def _matrix(stack: Any, slot: int) -> Any:
    """Slot ``slot`` of one of vLLM's weight stacks, (slots, 1, rows, cols) or (slots, rows, cols), as (rows, cols)."""
    return stack[slot, 0] if stack.dim() == 4 else stack[slot]


def _rank(a: Any, b: Any) -> int:
    """The rank an adapter really uses in a slot vLLM padded to ``max_lora_rank``: 0 when it leaves the module alone.

    ``a`` is (rank, in), ``b`` is (out, rank); a rank row of A or column of B that is zero adds nothing.
    """
    import torch

    used = (a != 0).any(dim=1) & (b != 0).any(dim=0)
    found = torch.nonzero(used)
    return 0 if found.numel() == 0 else int(found.max()) + 1


@dataclass(frozen=True, slots=True)
class _Part:
    """One output slice an adapter touches: its columns of the shrunk rows and of the output."""

    first: int  # its columns in the shrunk rows: first..last
    last: int
    b_t: Any  # (rank, width): B transposed, in the output's dtype
    offset: int  # its columns in the output: offset..offset + width
    width: int


@dataclass(frozen=True, slots=True)
class _Weights:
    """One adapter's weights for one layer, laid out for the fused product."""

    a_t: Any  # (in, sum of the touched slices' ranks): their A matrices side by side, transposed
    parts: tuple[_Part, ...]


# Laid-out weights by (layer's stacks, slot, dtypes): each entry keeps the stacks' versions (vLLM writes an
# adapter's weights into them in place when it loads one) and is rebuilt when they change.
_laid_out: dict[tuple[Any, ...], tuple[tuple[Any, ...], _Weights | None]] = {}
_touches: dict[tuple[int, int], tuple[tuple[Any, ...], bool]] = {}  # whether a stack's slot is not all zeros


def _stamp(stacks: Sequence[Any]) -> tuple[Any, ...]:
    return tuple((t.data_ptr(), t._version) for t in stacks)


def _weights(a_stacks: Sequence[Any], b_stacks: Sequence[Any], slices: Sequence[int], offset: int, slot: int,
             dtype: Any, out_dtype: Any) -> _Weights | None:
    """Slot ``slot``'s weights of a layer with slices ``slices`` from column ``offset``; None when it touches none."""
    key = (id(a_stacks[0]), id(b_stacks[0]), tuple(slices), offset, slot, dtype, out_dtype)
    stamp = _stamp(a_stacks) + _stamp(b_stacks)
    kept = _laid_out.get(key)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    if len(_laid_out) > 65536:
        _laid_out.clear()
    weights = _lay_out(a_stacks, b_stacks, slices, offset, slot, dtype, out_dtype)
    _laid_out[key] = (stamp, weights)
    return weights


def _lay_out(a_stacks: Sequence[Any], b_stacks: Sequence[Any], slices: Sequence[int], offset: int, slot: int,
             dtype: Any, out_dtype: Any) -> _Weights | None:
    import torch

    a_rows, parts, first = [], [], 0
    for a_stack, b_stack, size in zip(a_stacks, b_stacks, slices, strict=True):
        a, b = _matrix(a_stack, slot), _matrix(b_stack, slot)
        width = min(b.shape[0], size)  # adapter and model may pad apart
        rank = _rank(a, b[:width])
        if rank:
            a_rows.append(a[:rank])
            parts.append(_Part(first, first + rank, b[:width, :rank].T.to(out_dtype).contiguous(), offset, width))
            first += rank
        offset += size
    if not parts:
        return None
    return _Weights(torch.cat(a_rows).T.to(dtype).contiguous(), tuple(parts))


def _compute_dtype(x: Any, stack: Any) -> Any:
    """The dtype of the shrink: the inputs' when the weights share it (bf16 on AMX), else float32."""
    import torch

    return x.dtype if stack.dtype == x.dtype else torch.float32


def _as(t: Any, dtype: Any) -> Any:
    """``t`` in ``dtype`` (no call when it has it)."""
    return t if t.dtype == dtype else t.to(dtype)


def _add(out: Any, rows: Rows, first: int, width: int, t: Any, b_t: Any) -> None:
    """``out[rows, first:first + width] += t @ b_t``."""
    if isinstance(rows, slice):
        out[rows, first:first + width].addmm_(t, b_t)
    else:
        out[:, first:first + width].index_add_(0, rows, t @ b_t)


def add_lora_linear(self: Any, y: Any, x: Any, lora_a_stacked: tuple[Any, ...], lora_b_stacked: tuple[Any, ...],
                    scale: float, output_slices: tuple[int, ...], *, buffer: Any = None, **kwargs: Any) -> None:
    """``y[i] += x[i] @ A[slot(i)].T @ B[slot(i)].T * scale`` for each row with an adapter, slice by slice."""
    groups = _groups(self, "token")
    if not groups:
        return None
    y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
    dtype = _compute_dtype(x2, lora_a_stacked[0])
    for slot, rows in groups:
        weights = _weights(lora_a_stacked, lora_b_stacked, output_slices, 0, slot, dtype, y2.dtype)
        if weights is None:
            continue
        t = _as(x2[rows], dtype) @ weights.a_t
        if scale != 1.0:
            t = t * scale
        t = _as(t, y2.dtype)
        for part in weights.parts:
            _add(y2, rows, part.offset, part.width, t[:, part.first:part.last], part.b_t)
    return None


def add_shrink(self: Any, y: Any, x: Any, lora_a_stacked: tuple[Any, ...], scale: float, **kwargs: Any) -> None:
    """``y[s][i, :rank] = x[i] @ A_s[slot(i)].T * scale`` for each row with an adapter and each slice ``s`` it
    touches; the callers' buffers are zeros, which stay for the rest."""
    groups = _groups(self, "token")
    if not groups:
        return None
    x2 = x.view(-1, x.shape[-1])
    dtype = _compute_dtype(x2, lora_a_stacked[0])
    for slot, rows in groups:
        for s, stack in enumerate(lora_a_stacked):
            if not _touched(stack, slot):
                continue
            a = _matrix(stack, slot)
            product = (x2[rows].to(dtype) @ a.T.to(dtype)) * scale
            y[s][rows, :a.shape[0]] = product.to(y[s].dtype)
    return None


def _touched(stack: Any, slot: int) -> bool:
    """True when ``stack``'s weights for ``slot`` are not all zero (kept until the stack is written)."""
    key = (id(stack), slot)
    stamp = _stamp((stack,))
    kept = _touches.get(key)
    if kept is None or kept[0] != stamp:
        if len(_touches) > 65536:
            _touches.clear()
        kept = _touches[key] = (stamp, bool(_matrix(stack, slot).any()))
    return kept[1]


def add_expand(self: Any, y: Any, x: Any, lora_b_stacked: tuple[Any, ...], output_slices: tuple[int, ...],
               offset_start: int = 0, add_inputs: bool = True, **kwargs: Any) -> None:
    """``y[i, slice s] += x[s][i] @ B_s[slot(i)].T`` for each row with an adapter and each slice it touches."""
    if not add_inputs:
        return getattr(self, _ORIGINAL + "add_expand")(y, x, lora_b_stacked, output_slices, offset_start,
                                                       add_inputs, **kwargs)
    groups = _groups(self, "token")
    if not groups:
        return None
    y2 = y.view(-1, y.shape[-1])
    for slot, rows in groups:
        offset = offset_start
        for s, (stack, size) in enumerate(zip(lora_b_stacked, output_slices, strict=True)):
            if _touched(stack, slot):
                b = _matrix(stack, slot)
                width = min(b.shape[0], size)
                _add(y2, rows, offset, width, x[s][rows, :b.shape[1]].to(y2.dtype), b[:width].T.to(y2.dtype))
            offset += size
    return None


def add_lora_embedding(self: Any, y: Any, x: Any, lora_b_stacked: Any, add_inputs: bool = True,
                       **kwargs: Any) -> None:
    """``y[i] += x[i] @ B[slot(i)].T`` (``x``: each token's row of its adapter's embedding A)."""
    if not add_inputs:
        return getattr(self, _ORIGINAL + "add_lora_embedding")(y, x, lora_b_stacked, add_inputs, **kwargs)
    groups = _groups(self, "token")
    if not groups:
        return None
    y2 = y.view(-1, y.shape[-1])
    for slot, rows in groups:
        if _touched(lora_b_stacked, slot):
            b = _matrix(lora_b_stacked, slot)
            width = min(b.shape[0], y2.shape[1])
            _add(y2, rows, 0, width, x[rows, :b.shape[1]].to(y2.dtype), b[:width].T.to(y2.dtype))
    return None


def add_lora_logits(self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any, scale: float, *,
                    buffer: Any = None, **kwargs: Any) -> None:
    """``y[i] += x[i] @ A[slot(i)].T @ B[slot(i)].T * scale`` for each sequence's logits with an adapter."""
    groups = _groups(self, "sampler")
    if not groups:
        return None
    y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
    dtype = _compute_dtype(x2, lora_a_stacked)
    width = min(lora_b_stacked.shape[-2], y2.shape[1])
    for slot, rows in groups:
        weights = _weights((lora_a_stacked,), (lora_b_stacked,), (width,), 0, slot, dtype, y2.dtype)
        if weights is None:
            continue
        t = x2[rows].to(dtype) @ weights.a_t
        if scale != 1.0:
            t = t * scale
        part = weights.parts[0]
        _add(y2, rows, 0, part.width, t.to(y2.dtype), part.b_t)
    return None


_METHODS: dict[str, Callable[..., Any]] = {
    "add_lora_linear": add_lora_linear, "add_shrink": add_shrink, "add_expand": add_expand,
    "add_lora_embedding": add_lora_embedding, "add_lora_logits": add_lora_logits,
}


def _fits(cls: type) -> bool:
    """True when ``cls`` has each method with the arguments these replacements were written for."""
    for name, wanted in _SIGNATURES.items():
        method = getattr(cls, name, None)
        if method is None or list(inspect.signature(method).parameters) != wanted:
            return False
    return True


def install_cpu_lora_wrapper() -> bool:
    """Put these methods in place of vLLM's ``PunicaWrapperCPU``'s; True when they are in place."""
    try:
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    except ImportError:  # another vLLM layout: nothing known to replace
        return False
    return install(PunicaWrapperCPU)


def install(cls: type) -> bool:
    """Put these methods in place of ``cls``'s; True when installed (or already)."""
    _laid_out.clear()  # an engine starts: its weight stacks are new
    _touches.clear()
    if getattr(cls, _MARK, False):
        return True
    if not _fits(cls):
        log.warning("vLLM's CPU LoRA wrapper is not the one spoolbatch knows: its own methods are kept")
        return False
    for name, method in _METHODS.items():
        setattr(cls, _ORIGINAL + name, getattr(cls, name))
        setattr(cls, name, method)
    setattr(cls, _MARK, True)
    log.info("vLLM's CPU LoRA wrapper replaced: layers and batches no adapter touches skip LoRA")
    return True
