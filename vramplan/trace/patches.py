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
2. `cuda_sdpa_backends`: SDPA picks its kernel by device. The CPU kernel accepts inputs for which
CUDA falls back to the math backend (fp32 with grouped K/V heads; below sm80, bf16 or grouped
K/V heads: memory/activations.sdpa_math_below_sm80): the trace forces that fallback. It refuses some that CUDA's memory-efficient kernel takes (MLA's unequal q/k and v
head dims): the trace allocates what that kernel allocates instead of running math.
3. `cuda_dropout`: training dropout keeps a bool mask on CUDA, an input-dtype mask on `cpu`.
4. `cuda_autocast_layer_norm`: CUDA autocast runs layer_norm in fp32, CPU autocast does not.
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


def _cuda_picks_math(q, k, v, attn_mask=None, enable_gqa=False, pre_sm80=False) -> bool:
    """torch's CUDA SDPA dispatch (sdp_utils.cpp), reduced to what changes memory: flash needs
    sm80, 16-bit inputs, no explicit mask, equal q/k/v head dims <= 256; the memory-efficient
    kernel takes fp32 and masks but not grouped K/V heads (enable_gqa), and below sm80 not bf16
    either; anything else runs the math backend, which materializes the seq x seq
    probabilities. The CPU kernel the trace runs on accepts all of these, so without this the
    trace would miss that fallback."""
    import torch

    hd, hdv = q.shape[-1], v.shape[-1]
    dtype = q.dtype
    if dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")     # SDPA is on CUDA autocast's 16-bit list too
    grouped = enable_gqa and q.shape[-3] != k.shape[-3]
    if pre_sm80:
        return dtype == torch.bfloat16 or grouped
    flash = (dtype in (torch.float16, torch.bfloat16) and attn_mask is None
             and hd == k.shape[-1] == hdv and hd <= 256)
    return not flash and grouped


def _cpu_lacks_fused(q, k, v, dropout_p: float) -> bool:
    """torch's CPU flash kernel needs equal q/k/v head dims and no dropout; CUDA's kernels take
    unequal dims (memory-efficient: MLA's q/k 192, v 128) and dropout (flash and efficient:
    GPT-2's attn_pdrop in training). There CPU runs the math backend and CUDA a fused kernel."""
    return not (q.shape[-1] == k.shape[-1] == v.shape[-1]) or dropout_p > 0.0


class _FusedAttention:
    """The memory of CUDA's memory-efficient SDPA kernel, for the shapes the CPU kernel cannot
    take: the output, allocated (batch, seq, heads, dim) and returned as its (batch, heads, seq,
    dim) transpose as the kernel does (so the caller's `transpose(1, 2).contiguous()` copies
    nothing), and an fp32 logsumexp per head and query (rows padded to 32), q/k/v/out/lse
    saved for the backward (an explicit mask is the caller's tensor, alive anyway; dropout is
    regenerated from a seed, not stored), which allocates one gradient per input. Values are
    not computed (zeros, so real-tensor runs stay finite): the trace counts bytes. Under autocast
    SDPA is on CUDA's lower-precision list: q, k and v are cast first (the casts are what the
    kernel saves), as autocast's dispatch would do for the real op."""

    @staticmethod
    def apply(q, k, v):
        import torch

        kind = q.device.type
        if torch.is_autocast_enabled(kind):
            low = torch.get_autocast_dtype(kind)
            q, k, v = (x.to(low) if x.is_floating_point() else x for x in (q, k, v))

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                if q.dim() == 4:
                    b, h, s = q.shape[:-1]
                    out = q.new_zeros((b, s, h, v.shape[-1])).transpose(1, 2)
                else:
                    out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
                rows = -(-q.shape[-2] // 32) * 32
                lse = torch.zeros((*q.shape[:-2], rows), dtype=torch.float32, device=q.device)
                ctx.save_for_backward(q, k, v, out, lse)
                return out

            @staticmethod
            def backward(ctx, grad):
                q, k, v, _, _ = ctx.saved_tensors
                return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

        return Fn.apply(q, k, v)


@contextlib.contextmanager
def cuda_sdpa_backends(pre_sm80: bool = False):
    """Make every `F.scaled_dot_product_attention` call take the memory path CUDA would take
    (on a Volta or Turing card with `pre_sm80`)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, *args, enable_gqa=False, **kwargs):
        if _cuda_picks_math(query, key, value, attn_mask, enable_gqa, pre_sm80):
            with sdpa_kernel([SDPBackend.MATH]):
                return original(query, key, value, attn_mask, *args, enable_gqa=enable_gqa, **kwargs)
        dropout_p = kwargs.get("dropout_p", args[0] if args else 0.0)
        if _cpu_lacks_fused(query, key, value, dropout_p) and not enable_gqa:
            return _FusedAttention.apply(query, key, value)
        return original(query, key, value, attn_mask, *args, enable_gqa=enable_gqa, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def cuda_dropout():
    """Training-mode dropout as CUDA runs it. `F.dropout` takes torch's fused `native_dropout`
    (a 1-byte bool mask saved for the backward) only on CUDA-like devices; on `cpu` it falls
    back to `empty_like(x).bernoulli_()`, a mask in the input's dtype (4 bytes for peft's fp32
    adapter inputs). The trace calls `native_dropout` for 0 < p < 1, as CUDA would."""
    import torch

    original = torch.nn.functional.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if training and 0.0 < p < 1.0 and not inplace and input.numel() > 0:
            return torch.ops.aten.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    torch.nn.functional.dropout = dropout
    try:
        yield
    finally:
        torch.nn.functional.dropout = original


@contextlib.contextmanager
def cuda_autocast_layer_norm():
    """layer_norm under autocast as CUDA runs it: it is on CUDA autocast's "float32" list (inputs
    cast to fp32, fp32 output, the fp32 input saved for the backward), not on CPU autocast's,
    which keeps the input dtype (GPT-2 and Falcon with 16-bit norms: half the saved norm inputs
    and a 16-bit stream after every norm)."""
    import torch

    original = torch.nn.functional.layer_norm

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        kind = input.device.type
        narrow = any(t is not None and t.is_floating_point() and t.dtype != torch.float32
                     for t in (input, weight, bias))
        if torch.is_autocast_enabled(kind) and narrow:
            def wide(t):
                return t.float() if t is not None and t.is_floating_point() else t

            with torch.autocast(kind, enabled=False):
                return original(wide(input), normalized_shape, wide(weight), wide(bias), eps)
        return original(input, normalized_shape, weight, bias, eps)

    torch.nn.functional.layer_norm = layer_norm
    try:
        yield
    finally:
        torch.nn.functional.layer_norm = original
