"""Mode `infer`: transformers `generate()` on one GPU or layer-split over several.

Contiguous cache for batch x ctx, the whole prompt prefilled at once, last-position logits;
the runtime overhead (context, cuBLAS workspace, allocator slack) on top. Formulas:
docs/methodology.md sections 2, 3 and 5.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec import GpuTarget, ModelSpec, Workload
from vramplan.units import ceil_div
from vramplan.memory import activations as act
from vramplan.memory import kv_cache as kv
from vramplan.memory import overhead
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.setup import Breakdown, Setup, resolve_kv_dtype
from vramplan.memory.weights import resolve_format, transformers_bnb, weight_bytes


@dataclass(frozen=True)
class GenerateState:
    """What the prefill needs beyond the common Setup: the widest eager attention layer
    (activations.eager_attention), or None when the attention materializes no scores."""

    eager: tuple[int, int, str] | None


def prepare(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup[GenerateState]:
    fmt, warnings = transformers_bnb(model, resolve_format(model, workload.dtype), workload.transformers)
    warnings = (*warnings, *act.pre_sm80_notes(target.gpu, fmt.base, model, training=False))
    kv_dtype = resolve_kv_dtype(workload.kv_dtype, fmt)
    # accelerate's device_map="auto" splits the layers evenly over the cards
    weights = ceil_div(weight_bytes(model, fmt, layout="transformers").total, target.count)
    capacity = target.per_gpu_bytes
    if target.free_bytes is not None:
        capacity = min(capacity, target.free_bytes)
    return Setup(model=model, target=target, workload=workload, fmt=fmt, kv_dtype=kv_dtype,
                 kv_elem=FLOAT_BYTES[kv_dtype], act_elem=FLOAT_BYTES[fmt.base], weights=weights,
                 overhead=overhead.runtime_overhead(target.gpu, target.count), capacity=capacity,
                 widest=act.widest_layer(model, layout="transformers"), warnings=warnings,
                 state=GenerateState(act.eager_attention(
                     model, act.attention_impl(model, gpu=target.gpu, dtype=fmt.base))))


def components(s: Setup[GenerateState], batch: int, ctx: int) -> Breakdown:
    """The larger of two moments: the end of the prefill (every layer's cache holds the whole
    prompt, the widest layer's transients are alive) and a decode step (sliding layers trimmed
    to their window, one layer's cache copied by torch.cat)."""
    m, count = s.model, s.target.count
    prefill = act.forward_peak(m, batch * ctx, s.act_elem, s.widest, s.state.eager, ctx)
    if s.state.eager is None:      # an eager forward already counts its own mask
        prefill = act.Transient(prefill.bytes + act.sliding_mask_bytes(m, ctx), prefill.where)
    prefill_cache = kv.contiguous_cache_bytes(m, s.kv_elem, batch, ctx, s.act_elem, windowed=False)
    decode_cache = kv.contiguous_cache_bytes(m, s.kv_elem, batch, ctx, s.act_elem)
    decode = max((a.kv_elems_per_token * kv.kept_tokens(a, ctx + 1) * s.kv_elem * batch
                  for a in kv.attention_layers(m)), default=0)
    if prefill_cache + prefill.bytes >= decode_cache + decode:
        cache, transient, phase = prefill_cache, prefill.bytes, f"prefill ({prefill.where})"
    else:
        cache, transient, phase = decode_cache, decode, "decode (cache growth copies one layer)"
    cache = ceil_div(cache, count)
    logits = act.last_logits_bytes(m, batch, s.act_elem)
    activations = ceil_div(transient, count) + logits
    parts = {"weights": s.weights, "kv_cache": cache, "activations": activations,
             "allocator_slack": overhead.allocator_slack(activations), **s.overhead}
    notes = {"weights": s.fmt.label,
             "kv_cache": f"{batch} x {ctx:,} tokens, contiguous, {s.kv_dtype}"
                         + (" (whole prompt: sliding layers trim only at the first decode step)"
                            if cache != ceil_div(decode_cache, count) else ""),
             "activations": phase + " + last-position logits"}
    peak = s.weights + cache + activations + s.overhead["cublas_workspace"]
    return Breakdown(parts, notes, phase, peak)
