"""What Unsloth's fast path saves per decoder layer for the backward.

Why its own formula: Unsloth replaces peft's LoRA forward with three autograd functions that
save only their inputs and the two MLP projections' outputs, and recompute the rank-r
intermediates in the backward (unsloth commit 015bdef, unsloth/kernels/fast_lora.py):
LoRA_MLP saves (gateA, gateB, upA, upB, downA, downB, X, e, g) (:110), LoRA_QKV saves
(X, QA, QB, KA, KB, VA, VB) (:418-426), LoRA_W (o_proj) saves (A, B, X) (:612); its RMSNorm
saves (X, W, r) (kernels/rms_layernorm.py:205) and its RoPE only (cos, sin)
(kernels/rope_embedding.py:419). The attention kernel, the gradients, the weight copies and the
recomputation are the HF trainer's (engines/hf_trainer/saved_activations.py), reused here.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.engines.hf_trainer.lora import Adapted
from vramplan.engines.hf_trainer.numerics import Numerics
from vramplan.engines.hf_trainer.options import TrainOptions
from vramplan.engines.hf_trainer.saved_activations import LayerCost, attention_cost, layer_cost
from vramplan.memory import activations as act
from vramplan.spec import Attention, LayerSpec, ModelSpec

# FastLanguageModel.get_peft_model's default targets (unsloth/models/llama.py:3064-3072): the
# fast path (LoRA_QKV, LoRA_W, LoRA_MLP) runs when each group is adapted.
FAST_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RSTD = 4        # fast_rms_layernorm keeps r = rsqrt(mean(x^2) + eps) in fp32 per row


def fast_path(layer: LayerSpec, o: TrainOptions, adapted: dict[str, Adapted]) -> bool:
    """Unsloth's fused LoRA path applies: an attention layer with a gated dense MLP, all seven
    projections adapted, no LoRA dropout (its fast path requires lora_dropout = 0)."""
    m, mlp = layer.mixer, layer.mlp
    if not isinstance(m, Attention) or m.kind == "mla" or mlp is None or mlp.kind != "dense" or not mlp.gated:
        return False
    leaves = {name.rsplit(".", 1)[-1] for name in adapted}
    return o.lora_dropout == 0 and set(FAST_TARGETS) <= leaves


def unsloth_layer_cost(layer: LayerSpec, model: ModelSpec, o: TrainOptions, n: Numerics,
                       adapted: dict[str, Adapted], work_bytes) -> LayerCost:
    """The HF trainer's LayerCost with `saved` and `bwd` as Unsloth's fast path has them; other
    layers (MoE, Mamba, MLA, partial targets) keep the HF formula (Unsloth runs them through
    peft's modules)."""
    base = layer_cost(layer, model, o, n, adapted, work_bytes)
    if not fast_path(layer, o, adapted):
        return base
    h, m, I = model.hidden_size, layer.mixer, layer.mlp.intermediate
    impl = act.attention_impl(model, o.attn)
    core = attention_cost(m, impl, n)
    if o.attn != "flash_attention_2" and m.num_kv_heads < m.num_heads:
        # Unsloth's dispatch (unsloth/utils/attention_dispatch.py:231-242) runs flash-attn when it
        # is installed, else xFormers, which a `pip install unsloth` brings; in training xFormers
        # gets K and V expanded to every query head by a copying reshape (:174-182), and saves them
        rep = (m.num_heads - m.num_kv_heads) * (m.head_dim + m.v_head_dim) * n.attn
        core = replace(core, saved=core.saved + rep, bwd=core.bwd + rep)
    norms = 2 * (h * n.resid + RSTD)                # input and post-attention RMSNorm: X, r
    inputs = 2 * h * n.norm_out                     # LoRA_QKV's X and LoRA_MLP's X (o_proj's X is
                                                    # the attention output the kernel keeps)
    mlp = 2 * I * n.lin_out                         # e (gate) and g (up); h = silu(e) * g recomputed
    saved = norms + inputs + core.saved + mlp
    # backward: the attention kernel's gradients, or LoRA_MLP's DW = dY @ down^T (T x I) beside dY,
    # whose SwiGLU backward writes df, de into e, g in place (fast_lora.py:116-160)
    bwd = max(core.bwd, I * n.lin_out + h * n.lin_out) + 2 * h * n.resid
    return replace(base, saved=saved, saved_q=core.saved_q, bwd=bwd)
