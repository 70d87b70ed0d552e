"""Mode `infer`: transformers `generate()` on one GPU or layer-split over several.

Contiguous cache for batch x ctx, the whole prompt prefilled at once, last-position logits;
the runtime overhead (context, cuBLAS workspace, allocator slack) on top. With --new-tokens N
the prompt is `ctx` tokens and the cache grows to ctx + N by the last decode step. On several
cards the layers are placed as device_map="auto" places them (device_map.py), and each card
holds its layers' weights and cache; the plan shows the fullest card. Formulas:
docs/methodology.md sections 2, 3 and 5.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec import Attention, GpuTarget, ModelSpec, Recurrent, Workload
from vramplan.units import ceil_div
from vramplan.memory import activations as act
from vramplan.memory import kv_cache as kv
from vramplan.memory import overhead
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.setup import Breakdown, Setup, resolve_kv_dtype
from vramplan.memory.weights import resolve_format, transformers_bnb, weight_bytes
from vramplan.engines.transformers.device_map import Placement, auto_device_map


@dataclass(frozen=True)
class GenerateState:
    """What the prefill needs beyond the common Setup: the widest eager attention layer
    (activations.eager_attention), or None when the attention materializes no scores; on
    several cards, where device_map="auto" puts each layer."""

    eager: tuple[int, int, str] | None
    placement: Placement | None = None


def prepare(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup[GenerateState]:
    fmt, warnings = transformers_bnb(model, resolve_format(model, workload.dtype), workload.transformers)
    warnings = (*warnings, *act.pre_sm80_notes(target.gpu, fmt.base, model, training=False))
    kv_dtype = resolve_kv_dtype(workload.kv_dtype, fmt)
    capacity = target.per_gpu_bytes
    if target.free_bytes is not None:
        capacity = min(capacity, target.free_bytes)
    placement = None
    # one process drives every card: a CUDA context each, no NCCL (device_map is no process group)
    fixed = overhead.runtime_overhead(target.gpu, 1)
    if target.count > 1:
        free = capacity - fixed["cuda_context"]          # what get_max_memory reads per card
        placement = auto_device_map(model, fmt, (free,) * target.count)
        weights = max(placement.weights)
        if placement.offloaded:
            warnings = (*warnings, f"device_map='auto' finds no room on the {target.count} cards for "
                                   f"{', '.join(placement.offloaded)}: accelerate would offload "
                                   f"{'it' if len(placement.offloaded) == 1 else 'them'} to the CPU.")
    else:
        weights = weight_bytes(model, fmt, layout="transformers").total
    return Setup(model=model, target=target, workload=workload, fmt=fmt, kv_dtype=kv_dtype,
                 kv_elem=FLOAT_BYTES[kv_dtype], act_elem=FLOAT_BYTES[fmt.base], weights=weights,
                 overhead=fixed, capacity=capacity,
                 widest=act.widest_layer(model, layout="transformers"), warnings=warnings,
                 state=GenerateState(act.eager_attention(
                     model, act.attention_impl(model, gpu=target.gpu, dtype=fmt.base)), placement))


def components(s: Setup[GenerateState], batch: int, ctx: int) -> Breakdown:
    """The larger of two moments: the end of the prefill of the `ctx`-token prompt (every
    layer's cache holds the whole prompt, the widest layer's transients are alive) and the last
    decode step (the cache at ctx + new tokens, sliding layers trimmed to their window, one
    layer's cache copied by torch.cat)."""
    m = s.model
    n_new = s.workload.new_tokens
    # generate(max_new_tokens=N): the prefill makes token 1, then N - 1 decode steps each feed one
    # token, so the cache ends at ctx + N - 1 (measured on CPU: tests/test_infer_multi_gpu.py).
    # `end`: tokens cached before the last step. Not given (0): one step after the prompt.
    end = ctx + n_new - 2 if n_new >= 2 else ctx
    prefill = act.forward_peak(m, batch * ctx, s.act_elem, s.widest, s.state.eager, ctx)
    if s.state.eager is None:      # an eager forward already counts its own mask
        prefill = act.Transient(prefill.bytes + act.sliding_mask_bytes(m, ctx), prefill.where)
    prefill_cache = kv.contiguous_cache_bytes(m, s.kv_elem, batch, ctx, s.act_elem, windowed=False)
    decode_cache = kv.contiguous_cache_bytes(m, s.kv_elem, batch, end, s.act_elem)
    decode = max((a.kv_elems_per_token * kv.kept_tokens(a, end + 1) * s.kv_elem * batch
                  for a in kv.attention_layers(m)), default=0)
    if n_new == 1:                 # max_new_tokens=1: the prefill is the whole run
        decode_cache = decode = 0
    logits = act.last_logits_bytes(m, batch, s.act_elem)   # prefill and decode keep one position
    at_prefill = prefill_cache + prefill.bytes >= decode_cache + decode
    if at_prefill:
        cache, transient, phase = prefill_cache, prefill.bytes, f"prefill ({prefill.where})"
    else:
        cache, transient, phase = decode_cache, decode, "decode (cache growth copies one layer)"
    if s.state.placement is not None:
        return _per_card(s, batch, ctx, end, at_prefill, transient, logits, phase)
    activations = transient + logits
    parts = {"weights": s.weights, "kv_cache": cache, "activations": activations,
             "allocator_slack": overhead.allocator_slack(activations), **s.overhead}
    shown = ctx if at_prefill or not s.workload.new_tokens else end + 1
    notes = {"weights": s.fmt.label,
             "kv_cache": f"{batch} x {shown:,} tokens, contiguous, {s.kv_dtype}"
                         + (" (whole prompt: sliding layers trim only at the first decode step)"
                            if at_prefill and cache != kv.contiguous_cache_bytes(m, s.kv_elem, batch, ctx, s.act_elem)
                            else ""),
             "activations": phase + " + last-position logits"}
    peak = s.weights + cache + activations + s.overhead["cublas_workspace"]
    return Breakdown(parts, notes, phase, peak)


def layer_cache_bytes(m: ModelSpec, layers: tuple[int, ...], elem: int, act_elem: int, batch: int,
                      tokens: int, windowed: bool) -> int:
    """The cache of some decoder layers: each layer's cache lives on the card holding the layer
    (transformers' DynamicCache keeps every layer's tensors where its K/V were computed)."""
    out = 0
    for l in (m.layers[i] for i in layers):
        if isinstance(l.mixer, Attention):
            kept = kv.kept_tokens(l.mixer, tokens) if windowed else tokens
            out += batch * l.mixer.kv_elems_per_token * kept * elem
        elif isinstance(l.mixer, Recurrent):
            r = l.mixer
            conv = r.conv_channels * r.conv_kernel if r.conv_channels else r.conv_state_elems
            out += batch * (conv * act_elem + r.ssm_state_elems * kv.HF_SSM_STATE_BYTES)
    return out


def _per_card(s: Setup[GenerateState], batch: int, ctx: int, end: int, at_prefill: bool, transient: int,
              logits: int, phase: str) -> Breakdown:
    """Every card's weights, cache, transients and logits; the plan shows the fullest card and
    the note lists them all."""
    p, m = s.state.placement, s.model
    cards = []
    for i, layers in enumerate(p.layers):
        cache = (layer_cache_bytes(m, layers, s.kv_elem, s.act_elem, batch, ctx, False) if at_prefill else
                 layer_cache_bytes(m, layers, s.kv_elem, s.act_elem, batch, end, True))
        acts = (transient if layers else 0) + (logits if i == p.head else 0)
        w = p.weights[i]
        total = w + cache + acts + overhead.allocator_slack(acts) + sum(s.overhead.values())
        cards.append((total, i, w, cache, acts, layers))
    total, i, w, cache, acts, layers = max(cards)
    parts = {"weights": w, "kv_cache": cache, "activations": acts,
             "allocator_slack": overhead.allocator_slack(acts), **s.overhead}
    span = lambda ls: f"layers {ls[0]}-{ls[-1]}" if ls else "no layers"      # noqa: E731
    per = "; ".join(f"GPU{j}: {span(ls)}{' + lm_head' if j == p.head else ''} {t / 2**30:.2f} GiB"
                    for t, j, _, _, _, ls in sorted(cards, key=lambda c: c[1]))
    notes = {"weights": f"{s.fmt.label}; device_map='auto' on GPU{i}: {span(layers)}"
                        + (" + lm_head" if i == p.head else ""),
             "kv_cache": f"{batch} x {(ctx if at_prefill else end + 1):,} tokens of the layers on GPU{i}, {s.kv_dtype}",
             "activations": phase + (" + last-position logits" if i == p.head else "") + f" (per card: {per})"}
    return Breakdown(parts, notes, phase, w + cache + acts + s.overhead["cublas_workspace"])
