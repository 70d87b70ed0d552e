"""Keep transformers and torch on the path they take on a GPU while the trace runs on `cpu`.

1. `unpacked_batches`:
transformers treats a FakeTensor as a sign that it is being compiled (`is_tracing`), and then
avoids reading tensor values: with no attention mask and no cache (training, vLLM's profiling
forward) `find_packed_sequence_indices` can no longer check the position ids for packed
sequences, so it returns a packed-sequence mask; the model then builds a 4-D boolean mask,
SDPA gets a mask, and GQA repeats K/V to every head. On a GPU the same call sees an ordinary
batch, returns None, and SDPA runs causal with `enable_gqa` and no mask. At 8B training the
difference is over 1 GiB. The trace only runs unpadded, unpacked batches, for which None is the
right answer, so we give it; real-tensor runs take the same patch and get the same answer.
2. `cuda_sdpa_backends`: SDPA picks its kernel by device; the CPU kernel accepts inputs for which
CUDA falls back to the math backend (fp32 with grouped K/V heads), so the trace forces that
fallback where CUDA would take it.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def unpacked_batches():
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def _cuda_picks_math(q, k, v, attn_mask=None, enable_gqa=False) -> bool:
    """torch's CUDA SDPA dispatch (sdp_utils.cpp), reduced to what changes memory: flash needs
    16-bit inputs, no explicit mask, equal q/k/v head dims <= 256; the memory-efficient kernel
    takes fp32 and masks but not grouped K/V heads (enable_gqa); anything else runs the math
    backend, which materializes the seq x seq probabilities. The CPU kernel the trace runs on
    accepts all of these, so without this the trace would miss that fallback."""
    import torch

    hd, hdv = q.shape[-1], v.shape[-1]
    flash = (q.dtype in (torch.float16, torch.bfloat16) and attn_mask is None
             and hd == k.shape[-1] == hdv and hd <= 256)
    grouped = enable_gqa and q.shape[-3] != k.shape[-3]
    return not flash and grouped


@contextlib.contextmanager
def cuda_sdpa_backends():
    """Make every `F.scaled_dot_product_attention` call take the backend CUDA would take."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, *args, enable_gqa=False, **kwargs):
        if _cuda_picks_math(query, key, value, attn_mask, enable_gqa):
            with sdpa_kernel([SDPBackend.MATH]):
                return original(query, key, value, attn_mask, *args, enable_gqa=enable_gqa, **kwargs)
        return original(query, key, value, attn_mask, *args, enable_gqa=enable_gqa, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
