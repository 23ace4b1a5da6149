"""engines/cpu_lora_wrapper.py against the sums written out row by row.

Each of vLLM's LoRA entry points on the CPU wrapper (linear, the shrink/expand pair of row-parallel
layers, embedding, logits) with batches of rows of several adapters in any order, in runs, one
adapter for all, none at all and many short runs; a slot an adapter pads to a larger rank, a
slice an adapter leaves alone, a slot of zeros; float32 and bf16; and what is kept between calls
follows new indices and new weights written into a slot.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.vllm

torch = pytest.importorskip("torch")

HIDDEN, RANK, SLOTS, ROWS = 32, 8, 4, 40
SLICES = (16, 8, 8)  # q, k, v


def wrapper() -> Any:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from spoolbatch.engines.cpu_lora_wrapper import install

    class Probe(PunicaWrapperCPU):  # installed on a subclass: vLLM's own class stays as it was
        pass

    assert install(Probe)
    return Probe(256, 16, "cpu")


def set_indices(w: Any, tokens: Any, sampler: Any | None = None) -> None:
    sampler = tokens if sampler is None else sampler
    w._token_lora_indices[:len(tokens)].copy_(tokens)
    w._sampler_indices[:len(sampler)].copy_(sampler)
    w.indices_len[:] = [len(tokens), len(sampler), len(sampler), len(tokens)]


def stacks(gen: Any, dtype: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A and B stacks as vLLM lays them out: slot 0 rank 8; slot 1 rank 4 (padded) and k left alone;
    slot 2 zeros (an adapter of other modules); slot 3 rank 8."""
    a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen) for _ in SLICES)
    b = tuple(torch.randn(SLOTS, 1, size, RANK, generator=gen) for size in SLICES)
    for s in range(len(SLICES)):
        a[s][1, 0, 4:], b[s][1, 0, :, 4:] = 0, 0
        a[s][2], b[s][2] = 0, 0
    a[1][1], b[1][1] = 0, 0
    return tuple(t.to(dtype) for t in a), tuple(t.to(dtype) for t in b)


def expected_linear(y: Any, x: Any, a: tuple[Any, ...], b: tuple[Any, ...], indices: Any, scale: float) -> Any:
    out = y.double()
    for i, slot in enumerate(indices.tolist()):
        if slot < 0:
            continue
        offset = 0
        for a_s, b_s, size in zip(a, b, SLICES, strict=True):
            out[i, offset:offset + size] += (x[i].double() @ a_s[slot, 0].double().T @ b_s[slot, 0].double().T) * scale
            offset += size
    return out


def batches(gen: Any) -> list[Any]:
    mixed = torch.randint(-1, SLOTS, (ROWS,), generator=gen)
    many_runs = torch.arange(ROWS) % SLOTS  # 40 runs of one row: gathered by index
    many_runs[::3] = -1
    return [mixed, torch.sort(mixed).values, torch.full((ROWS,), 3), torch.full((ROWS,), -1), many_runs,
            torch.full((ROWS,), 2)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_layers_get_each_rows_adapter_and_rows_without_one_are_left_alone(dtype: str) -> None:
    dt = getattr(torch, dtype)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dt == torch.float32 else {"rtol": 3e-2, "atol": 0.25}
    gen = torch.Generator().manual_seed(0)
    a, b = stacks(gen, dt)
    w = wrapper()
    x = torch.randn(ROWS, HIDDEN, generator=gen).to(dt)
    for indices in batches(gen):
        set_indices(w, indices)
        for scale in (1.0, 0.5):
            y = torch.randn(ROWS, sum(SLICES), generator=gen).to(dt)
            want = expected_linear(y, x, a, b, indices, scale)
            got = y.clone()
            assert w.add_lora_linear(got, x, a, b, scale, SLICES) is None
            torch.testing.assert_close(got.double(), want, **tol)
            untouched = indices < 0
            assert torch.equal(got[untouched], y[untouched])
            # the row-parallel path: shrink into zeroed float32 buffers, then expand
            buffer = torch.zeros(len(SLICES), ROWS, RANK)
            got = y.clone()
            w.add_shrink(buffer, x, a, scale)
            w.add_expand(got, buffer, b, SLICES, offset_start=0, add_input=True)
            torch.testing.assert_close(got.double(), want, **tol)


def test_new_weights_written_into_a_slot_are_used_at_the_next_call() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = stacks(gen, torch.float32)
    w = wrapper()
    x = torch.randn(ROWS, HIDDEN, generator=gen)
    indices = torch.full((ROWS,), 2)  # the zero slot: nothing added
    set_indices(w, indices)
    y = torch.randn(ROWS, sum(SLICES), generator=gen)
    got = y.clone()
    w.add_lora_linear(got, x, a, b, 1.0, SLICES)
    assert torch.equal(got, y)
    for s in range(len(SLICES)):  # an adapter loaded into slot 2, in place, as vLLM does
        a[s][2, 0].copy_(torch.randn(RANK, HIDDEN, generator=gen))
        b[s][2, 0].copy_(torch.randn(SLICES[s], RANK, generator=gen))
    got = y.clone()
    w.add_lora_linear(got, x, a, b, 1.0, SLICES)
    torch.testing.assert_close(got.double(), expected_linear(y, x, a, b, indices, 1.0), rtol=1e-4, atol=1e-4)
    for s in range(len(SLICES)):  # and taken out again
        a[s][2], b[s][2] = 0, 0
    got = y.clone()
    w.add_lora_linear(got, x, a, b, 1.0, SLICES)
    assert torch.equal(got, y)


def test_embeddings_and_logits_get_each_rows_adapter() -> None:
    gen = torch.Generator().manual_seed(2)
    w = wrapper()
    vocab = 50
    emb_b = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=gen)
    emb_b[2] = 0
    logit_a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen)
    logit_b = torch.randn(SLOTS, 1, vocab + 6, RANK, generator=gen)  # padded beyond the logits' width
    logit_a[2], logit_b[2] = 0, 0
    for tokens in batches(gen):
        sampler = tokens[: ROWS // 2]
        set_indices(w, tokens, sampler)
        rows_a = torch.randn(ROWS, RANK, generator=gen)  # each token's row of its adapter's embedding A
        y = torch.randn(ROWS, HIDDEN, generator=gen)
        want = y.double()
        for i, slot in enumerate(tokens.tolist()):
            if slot >= 0:
                want[i] += rows_a[i].double() @ emb_b[slot, 0].double().T
        got = y.clone()
        w.add_lora_embedding(got, rows_a, emb_b, add_inputs=True)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
        hidden = torch.randn(len(sampler), HIDDEN, generator=gen)
        logits = torch.randn(len(sampler), vocab, generator=gen)
        want = logits.double()
        for i, slot in enumerate(sampler.tolist()):
            if slot >= 0:
                delta = hidden[i].double() @ logit_a[slot, 0].double().T @ logit_b[slot, 0].double().T * 0.5
                want[i] += delta[:vocab]
        got = logits.clone()
        w.add_lora_logits(got, hidden, logit_a, logit_b, 0.5)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_a_wrapper_of_another_shape_is_left_as_it_is() -> None:
    from spoolbatch.engines.cpu_lora_wrapper import install

    class Other:
        def add_lora_linear(self, y: Any, x: Any) -> None:  # not the arguments written for
            pass

    assert not install(Other)
    assert Other.add_lora_linear.__qualname__.startswith("test_a_wrapper")
