"""Transient memory of a forward pass without gradients (inference), per layer kind.

Under `torch.no_grad()` a tensor dies as soon as the next op has consumed it, so the peak of a
decoder layer is the few tensors alive together at its widest point; the layer's own output
replaces its input. We model the two widest points of each layer and take the worst layer:

The residual stream costs 4 * T * hidden everywhere: the embedding output (held by the model's
forward for the whole pass), the layer input (held by the layer loop), the residual and the
normed input (measured by the trace tier, docs/trace.md gap 1). GPT-2 keeps 6 (its family says
why: ModelSpec.traits.residual_tensors).

attention (SDPA, causal, no padding mask, so no seq x seq scores are materialized):
    residual stream                  4 * T * hidden
    q, k, v projections              T * (q_width + kv_width)
    rotary outputs of q and k        T * (q_width + k_width)
    K/V repeated to all heads (GQA)  T * 2 * q_width, only where a mask is built (sliding
                                     layers): without one transformers passes enable_gqa
    attention output                 T * q_width
MLP (gated, SwiGLU/GeGLU):   residual stream 4*T*hidden, act(gate), up, act*up: 3 * T * I
                             (transformers' fused gate_up_proj, Phi-3: its 2I output stays
                             alive beside act(gate) and the product: 4 * T * I)
MLP (plain, GELU/ReLU^2):    residual stream 4*T*hidden, up, act(up):          2 * T * I
                             (4 * T * I for transformers' Python gelu_new: PYTHON_ACTS)
MoE: the experts see T * top_k token slots: gathered inputs T*k*hidden plus the MLP above
     with I = expert width, plus router logits T * experts in fp32 (vLLM's fused_moe caches).
     transformers' grouped_mm experts (integrations/moe.py, layout "transformers") differ: the fused
     gate_up output (2I) stays alive through the gating (4I with act(gate) and act*up), and
     after the down projection the fp32 routing weights promote the weighted and the unsorted
     outputs to fp32: gathered input + down output + 2 x fp32 = 6 hidden per slot; the larger
     of the two points counts (trace tier: Mixtral's gate point, DeepSeek-V3's output point).
Mamba2, vLLM: in_proj output T * (in_proj width) plus the conv/SSM outputs T * 2 * d_inner.
Mamba2, transformers with the mamba_ssm / causal_conv1d kernels (layout "transformers"), the larger of two
points (elements at 16 bits): the gated RMSNorm, which is PyTorch (in_proj and conv outputs, the
scan output's concatenated copy, x, gate and silu(gate) in fp32: P + conv + 7 d_inner), and the
chunked scan (in_proj and conv outputs, three fp32 chunk-state-sized tensors, fp32 dt and dA
cumsum: P + conv + 3 S + 4 heads); S = heads x head_dim x state / chunk. Measured by the trace
tier with the kernels' allocations emulated (trace/mamba.py, Nemotron-H).

T = tokens in the pass. All widths in elements; times the activation dtype's bytes. The trace
tier (`--method trace`) measures the same program exactly and the tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.memory.runtime import RuntimeLayout
from vramplan.spec import Attention, LayerSpec, Mlp, ModelSpec, Recurrent


@dataclass(frozen=True)
class Transient:
    bytes: int
    where: str      # e.g. "layer 3 mlp"


RESIDUAL = 4     # hidden-size tensors alive through a layer (see the module docstring); a family
                 # whose implementation keeps more says so in ModelSpec.traits.residual_tensors

# vLLM's decoder layers (vllm/model_executor/models/llama.py LlamaDecoderLayer.forward, and every
# family written the same way: qwen2/3, mixtral, deepseek, gpt-oss) carry the residual beside the
# hidden states and fold the residual add into the norm (RMSNorm.forward with a residual,
# fused_add_rms_norm, in place): at a layer's widest point the caller's layer input, the residual and
# the post-attention normed hidden states are alive, 3 hidden-size tensors where transformers keeps 4
# (no separate embedding output: at layer 0 the embedding becomes the residual).
VLLM_RESIDUAL = 3

# transformers' activations written in Python (activations.py) run as separate elementwise ops.
# NewGELU ("gelu_new", GPT-2) is 0.5*x*(1+tanh(c*(x+0.044715*x**3))): in a no-grad forward its
# input, 0.5*x and two tensors of the chain are alive at once, 4 intermediate-size tensors where
# a fused GELU has 2 (input, output); autograd saves x, 0.5*x, tanh and 1+tanh, 3 more than a
# fused GELU's input. Both measured by the trace tier (docs/trace.md gap 8). gpt-oss's experts
# ("gpt_oss_glu": gate and up clamped, gate * sigmoid(alpha * gate), (up + 1) * glu) save the
# fused gate_up output (2 I), the clamped gate, the sigmoid, the glu and up + 1: 3 I per token
# slot more than a SwiGLU's gate, act(gate) and up (trace tier, gpt-oss-20b; gap 5).
PYTHON_ACTS = {"gelu_new": (4, 3), "gpt_oss_glu": (3, 3)}   # name -> (alive in a no-grad forward,
                                                            # extra saved for the backward), x I;
# gpt-oss's "alive" is the SwiGLU default: gated experts take theirs from _mlp_elems, not here


# Eager attention materializes seq x seq scores. transformers' gpt-oss ("eager_sinks": scores *
# scaling + mask, cat with the sink logit, minus the row max, softmax in the input dtype) has
# three (b, heads, s, s) tensors alive at once at the subtraction and at the softmax, next to the
# (b, 1, s, s) mask; K and V are repeated to every head (repeat_kv) and q stays referenced.
# Measured by the trace tier on gpt-oss-20b (docs/trace.md gap 5).
EAGER_SCORES = {"eager_sinks": 3, "sdpa_math": 4}   # (b, heads, s, s) 16-bit tensors alive at the widest point

# Below compute capability 8.0 (Volta: V100, Turing: T4) torch's CUDA SDPA has no flash kernel
# (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp: flash needs sm80) and its
# memory-efficient kernel takes neither bf16 nor enable_gqa there, so bf16 attention, and any
# attention with grouped K/V heads (transformers passes enable_gqa), runs the math backend
# ("sdpa_math"): q, k and v upcast to fp32 (k, v repeated to every head), q scaled, the fp32
# scores and their masked copy, 2 x (b, heads, s, s) fp32 = 4 16-bit elements per head, alive
# at once beside an fp32 (s, s) causal mask (torch 2.13's math kernel, the same code on CPU,
# measured by the trace tier: tests/test_verify.py test_10_*). bf16 itself is emulated there.
PRE_SM80 = ("volta", "turing")


def sdpa_math_below_sm80(architecture: str, dtype: str, gqa: bool) -> bool:
    """Whether SDPA falls back to its math backend on this architecture for this dtype."""
    return architecture.strip().lower() in PRE_SM80 and (dtype == "bf16" or gqa)


def pre_sm80_notes(gpu, dtype: str, model: ModelSpec, training: bool) -> list[str]:
    """What a Volta or Turing card changes, as plan warnings (bf16 emulated; SDPA's math path)."""
    if gpu is None or gpu.architecture.strip().lower() not in PRE_SM80:
        return []
    out = []
    if dtype == "bf16":
        fp16 = "fp16 mixed precision (TrainingArguments fp16=True)" if training else "fp16 (--dtype fp16)"
        out.append(f"{gpu.name} ({gpu.architecture}, before sm80) has no bf16 tensor cores: torch "
                   f"emulates bf16 there, slowly; {fp16} is this card's native 16-bit format.")
    gqa = any(layer.mixer.num_kv_heads < layer.mixer.num_heads for layer in model.attention_layers)
    if model.attention_layers and (dtype == "bf16" or gqa):
        why = "bf16" if dtype == "bf16" else "grouped K/V heads"
        out.append(f"Before sm80 SDPA has no flash kernel and its memory-efficient kernel rejects {why}: "
                   "attention runs torch's math backend, which holds seq x seq fp32 scores"
                   + ("; this analytic training plan assumes the fused kernels and is low at long "
                      "contexts: --method trace runs the math path." if training else
                      " (planned)."))
    return out


def attention_impl(model: ModelSpec, requested: str = "sdpa", gpu=None, dtype: str = "bf16") -> str:
    """The attention transformers really runs: a family without an SDPA path in transformers
    (ModelSpec.traits.hf_attention) falls back to its eager code when SDPA is asked for; on a
    GPU before sm80 SDPA runs its math backend for bf16 or grouped K/V heads ("sdpa_math")."""
    own = model.traits.hf_attention
    impl = own if own and requested == "sdpa" else requested
    gqa = any(layer.mixer.num_kv_heads < layer.mixer.num_heads for layer in model.attention_layers)
    if impl == "sdpa" and gpu is not None and sdpa_math_below_sm80(gpu.architecture, dtype, gqa):
        return "sdpa_math"
    return impl


def _eager_elems(a: Attention, hidden: int, impl: str, resid: int = RESIDUAL) -> tuple[int, int]:
    """(elements per token, elements per token per context position) of an eager attention."""
    q = a.num_heads * a.head_dim
    repeat = a.num_heads * (a.head_dim + a.v_head_dim)
    if impl == "sdpa_math":    # inputs, then fp32: q, scaled q, k and v repeated; fp32 (s, s) mask
        kv = a.num_kv_heads * (a.head_dim + a.v_head_dim)
        return resid * hidden + q + kv + 2 * (2 * q + repeat), EAGER_SCORES[impl] * a.num_heads + 2
    return resid * hidden + q + repeat, EAGER_SCORES[impl] * a.num_heads + 1


def _attention_elems(a: Attention, hidden: int, resid: int = RESIDUAL) -> int:
    if a.kind == "mla":
        q = a.num_heads * a.head_dim
        # MLA decompresses the latent to per-head K (nope+rope) and V for the whole prompt.
        k = a.num_heads * a.head_dim
        v = a.num_heads * a.v_head_dim
        return resid * hidden + (a.kv_lora_rank + a.rope_dim) + q + k + v + q + k + a.num_heads * a.v_head_dim
    q = a.num_heads * a.head_dim
    k = a.num_kv_heads * a.head_dim
    v = a.num_kv_heads * a.v_head_dim
    masked = a.kind in ("sliding", "chunked")
    repeat = 2 * q if masked and a.num_kv_heads < a.num_heads else 0
    return resid * hidden + (q + k + v) + (q + k) + repeat + q


def _mlp_elems(m: Mlp, hidden: int, resid: int, layout: RuntimeLayout) -> int:
    transformers = layout == "transformers"
    gated = 4 if (transformers and m.fused_gate_up) else 3
    per_slot = (gated if m.gated else PYTHON_ACTS.get(m.act, (2, 0))[0]) * m.intermediate
    if m.kind == "dense":
        return resid * hidden + per_slot
    slots = max(m.top_k, 1)
    shared = (3 if m.gated else 2) * m.shared_intermediate
    if transformers:
        gate_point = (4 if m.gated else 2) * m.intermediate
        return resid * hidden + slots * max(hidden + gate_point, 6 * hidden) + shared + 2 * m.num_experts
    # router logits are fp32: 2 elements of a 16-bit dtype each
    return resid * hidden + slots * (hidden + per_slot) + shared + 2 * m.num_experts


def _recurrent_elems(r: Recurrent, hidden: int, resid: int, layout: RuntimeLayout) -> int:
    if layout != "transformers":
        return resid * hidden + r.in_proj + 2 * r.d_inner
    norm_point = r.in_proj + r.conv_channels + 7 * r.d_inner
    scan_point = r.in_proj + r.conv_channels + 3 * r.chunk_state_elems + 4 * r.num_heads
    return resid * hidden + max(norm_point, scan_point)


def residual_tensors(model: ModelSpec) -> int:
    return model.traits.residual_tensors


def layer_peak_elems(layer: LayerSpec, hidden: int, resid: int, *,
                     layout: RuntimeLayout) -> tuple[int, str]:
    """Widest point of one layer per token, in activation elements, and which part it is, as
    `layout` runs the layer ("transformers": its MoE experts, fused gate_up, Mamba with the
    mamba_ssm kernels; "vllm": vLLM's fused kernels)."""
    best, where = 0, ""
    m = layer.mixer
    if isinstance(m, Attention):
        best, where = _attention_elems(m, hidden, resid), "attention"
    elif isinstance(m, Recurrent):
        best, where = _recurrent_elems(m, hidden, resid, layout), "mamba"
    if layer.mlp is not None:
        e = _mlp_elems(layer.mlp, hidden, resid, layout)
        if e > best:
            best, where = e, "mlp"
    return best, where


def widest_layer(model: ModelSpec, *, layout: RuntimeLayout) -> tuple[int, str]:
    """(elements per token, where) at the widest point of the widest layer, as `layout` runs it."""
    best, where = 0, ""
    seen: dict[tuple, tuple[int, str]] = {}
    resid = VLLM_RESIDUAL if layout == "vllm" else residual_tensors(model)
    for layer in model.layers:
        key = (layer.mixer, layer.mlp)
        if key not in seen:
            seen[key] = layer_peak_elems(layer, model.hidden_size, resid, layout=layout)
        e, part = seen[key]
        if e > best:
            best, where = e, f"layer {layer.index} {part}"
    return best, where


def eager_attention(model: ModelSpec, impl: str) -> tuple[int, int, str] | None:
    """(elements per token, per token per context position, where) of the widest eager attention
    layer, or None when `impl` materializes no scores (SDPA, flash)."""
    if impl not in EAGER_SCORES:
        return None
    resid = residual_tensors(model)
    best = None
    for layer in model.attention_layers:
        lin, quad = _eager_elems(layer.mixer, model.hidden_size, impl, resid)
        if best is None or (quad, lin) > best[:2][::-1]:
            best = (lin, quad, f"layer {layer.index} " + ("attention, SDPA math backend" if impl == "sdpa_math"
                                                            else "eager attention"))
    return best


def forward_peak(model: ModelSpec, tokens: int, act_bytes: int, widest: tuple[int, str],
                 eager: tuple[int, int, str] | None = None, ctx: int = 0) -> Transient:
    """Peak transient of a no-grad forward over `tokens` tokens of `ctx`-token sequences,
    excluding logits. `widest` comes from widest_layer (computed once per model, in the runtime's
    layout); pass `eager` (from eager_attention) when the attention materializes its scores."""
    elems, where = widest
    best = Transient(elems * tokens * act_bytes, where)
    if eager is not None:
        lin, quad, at = eager
        scores = (lin + quad * ctx) * tokens * act_bytes
        if scores > best.bytes:
            best = Transient(scores, at)
    return best


def sliding_mask_bytes(model: ModelSpec, ctx: int) -> int:
    """A prefill as long as a sliding window gets one boolean (1, 1, ctx, ctx) mask from
    transformers (shared by the batch and the sliding layers; full layers let SDPA be causal),
    alive through the forward (trace tier: Phi-3 at 4,096 tokens, 16 MiB)."""
    windows = [a.window for a in (l.mixer for l in model.attention_layers)
               if a.kind in ("sliding", "chunked") and a.window]
    return ctx * ctx if windows and ctx >= min(windows) else 0


def last_logits_bytes(model: ModelSpec, batch: int, act_bytes: int) -> int:
    """generate() computes logits for the last position only (logits_to_keep=1), copies them to
    fp32 (`.float()`), and the sampler's softmax makes one more fp32 copy."""
    return batch * model.vocab_size * (act_bytes + 4 + 4)
