"""The llama-like decoder every "pre-norm attention + (gated) MLP" family shares.

One builder, per-family options: Llama, Mistral, Mixtral, Qwen2, Qwen3, Qwen3-MoE, Phi-3, Gemma 2,
Gemma 3 (text) and the generic fallback differ only in biases, q/k norms, fused projections,
extra norms, the MoE block, which layers use a sliding window, and what their implementations do
(DecoderOptions.traits: fp32 norms, peft's LoRA defaults ...).

Per layer (transformers' <Family>DecoderLayer, names as `model.named_parameters()` prints them):
    self_attn.q_proj   [heads*hd, H]        k_proj, v_proj [kv*hd, H]      o_proj [H, heads*hd]
      (Phi-3: one self_attn.qkv_proj [(heads + 2*kv)*hd, H])
      q_norm, k_norm [hd]                   Qwen3 / Qwen3-MoE / Gemma 3
    mlp.gate_proj, up_proj [I, H]  down_proj [H, I]   (Phi-3: mlp.gate_up_proj [2I, H])
      MoE (Mixtral, Qwen3-MoE; transformers 5 stores experts fused):
        mlp.gate [E, H] (router)  mlp.experts.gate_up_proj E x [2I, H]  mlp.experts.down_proj E x [H, I]
    input_layernorm, post_attention_layernorm [H]
      (+ pre_feedforward_layernorm, post_feedforward_layernorm [H] for Gemma 2/3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vramplan.spec import LayerSpec, Mlp, ModelSpec, Traits
from vramplan.models._base import (FULL, GENERIC_TRAITS, SLIDING, Cfg, Tensors, attention, embedding_and_head,
                                   explicit_layer_types, make_spec, torch_dtype)
from vramplan.models import rules
from vramplan.models.quant import parse_quantization

LLAMA_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")

# Which layers slide, when the config does not list `layer_types` itself.
LayerRule = Callable[[Cfg, int], list[str]]


def all_full(cfg: Cfg, n: int) -> list[str]:
    return [FULL] * n


def all_sliding_if_window(cfg: Cfg, n: int) -> list[str]:
    """Mistral, Mixtral, Phi-3: every layer uses `sliding_window` when it is set."""
    return [SLIDING if cfg.raw("sliding_window") else FULL] * n


def qwen_window_layers(cfg: Cfg, n: int) -> list[str]:
    """Qwen2/Qwen3(-MoE): sliding only with use_sliding_window=true, and then only for layers
    at or above max_window_layers (Qwen2Config.__init__)."""
    if not cfg.bool("use_sliding_window", default=False) or not cfg.raw("sliding_window"):
        return [FULL] * n
    first = cfg.int("max_window_layers", default=n, positive=False)
    return [SLIDING if i >= first else FULL for i in range(n)]


def every_nth_full(pattern: int) -> LayerRule:
    """Gemma 2 (pattern 2) and Gemma 3 (pattern 6): layer i is full when (i+1) % pattern == 0."""
    def rule(cfg: Cfg, n: int) -> list[str]:
        p = cfg.int("sliding_window_pattern", "_sliding_window_pattern", default=pattern)
        return [FULL if (i + 1) % p == 0 else SLIDING for i in range(n)]
    return rule


@dataclass(frozen=True)
class DecoderOptions:
    family: str
    tie_default: bool = False            # the family config's tie_word_embeddings default
    attn_bias: str = "config"            # "config": attention_bias on q/k/v/o; "qkv": q/k/v only; "none"
    mlp_bias: str = "none"               # "config": mlp_bias on gate/up/down; "none"
    qk_norm: bool = False
    fused_qkv: bool = False              # Phi-3 qkv_proj
    fused_gate_up: bool = False          # Phi-3 gate_up_proj
    sandwich_norms: bool = False         # Gemma 2/3 pre/post feed-forward norms
    moe: str | None = None               # "mixtral" | "qwen3_moe"
    layer_rule: LayerRule = all_full
    window_flag: str | None = None       # a config flag that must be true for any window to apply
    prefix: str = "model"                # "model.language_model" inside Gemma 3 multimodal
    defaults: tuple = ()                 # (key, value) pairs of the family config's defaults that
                                         # Hub files rely on (e.g. Gemma's head_dim 256)
    traits: Traits = GENERIC_TRAITS      # what the family's implementations do (spec.Traits)
    hidden_per_head: str = ""            # the transformers code that requires hidden_size % heads == 0
                                         # even with an explicit head_dim ("": only when head_dim is
                                         # derived, models/rules.py)
    rope: bool = True                    # rotary embeddings: an odd, fully rotated head is refused


def build_decoder(cfg: Cfg, opts: DecoderOptions, *,
                  required: tuple[str, ...] = LLAMA_KEYS) -> tuple[list[LayerSpec], list, dict]:
    """Layers, outside tensors and summary numbers of a llama-like decoder read from `cfg`."""
    cfg = cfg.with_defaults(dict(opts.defaults))
    cfg.require_all(required)       # BadConfig naming every missing key and the model
    H = cfg.int("hidden_size")
    L = cfg.int("num_hidden_layers")
    heads, kv, hd = rules.attention_heads(cfg, H, hidden_per_head_source=opts.hidden_per_head, rope=opts.rope)
    I = cfg.int("intermediate_size", default=None)
    vocab = cfg.int("vocab_size")
    window = cfg.int("sliding_window", default=0, positive=False) or None
    if opts.window_flag and not cfg.bool(opts.window_flag, default=False):
        window = None       # Qwen2Config: sliding_window = sliding_window if use_sliding_window else None
    chunk = cfg.int("attention_chunk_size", default=0, positive=False) or None

    types = explicit_layer_types(cfg, L)
    if types is None:
        types = opts.layer_rule(cfg, L)

    qkv_bias = o_bias = False
    if opts.attn_bias == "config":
        qkv_bias = o_bias = cfg.bool("attention_bias", default=False)
    elif opts.attn_bias == "qkv":
        qkv_bias = True
    mlp_bias = cfg.bool("mlp_bias", default=False) if opts.mlp_bias == "config" else False

    moe = _moe_plan(cfg, opts, L, I)

    layers: list[LayerSpec] = []
    for i in range(L):
        t = Tensors(f"{opts.prefix}.layers.{i}")
        if opts.fused_qkv:
            t.linear("self_attn.qkv_proj", (heads + 2 * kv) * hd, H, qkv_bias, split="qkv")
        else:
            t.linear("self_attn.q_proj", heads * hd, H, qkv_bias)
            t.linear("self_attn.k_proj", kv * hd, H, qkv_bias)
            t.linear("self_attn.v_proj", kv * hd, H, qkv_bias)
        t.linear("self_attn.o_proj", H, heads * hd, o_bias)
        if opts.qk_norm:
            t.norm("self_attn.q_norm", hd, per_head="q")
            t.norm("self_attn.k_norm", hd, per_head="kv")

        experts, width, top_k = moe[i]
        if experts:
            t.linear("mlp.gate", experts, H, role="router")
            t.add("mlp.experts.gate_up_proj", (2 * width, H), "expert", count=experts)
            t.add("mlp.experts.down_proj", (H, width), "expert", count=experts)
            mlp = Mlp(kind="moe", intermediate=width, gated=True, num_experts=experts, top_k=top_k)
        else:
            if opts.fused_gate_up:
                t.linear("mlp.gate_up_proj", 2 * width, H, mlp_bias)
            else:
                t.linear("mlp.gate_proj", width, H, mlp_bias)
                t.linear("mlp.up_proj", width, H, mlp_bias)
            t.linear("mlp.down_proj", H, width, mlp_bias)
            mlp = Mlp(kind="dense", intermediate=width, gated=True, fused_gate_up=opts.fused_gate_up)

        t.norm("input_layernorm", H)
        t.norm("post_attention_layernorm", H)
        if opts.sandwich_norms:
            t.norm("pre_feedforward_layernorm", H)
            t.norm("post_feedforward_layernorm", H)
        mixer = attention(types[i], heads, kv, hd, window, chunk)
        layers.append(LayerSpec(i, mixer, mlp, t.tuple()))

    tied = cfg.bool("tie_word_embeddings", default=opts.tie_default)
    outside = embedding_and_head(vocab, H, f"{opts.prefix}.embed_tokens", f"{opts.prefix}.norm", tied)
    return layers, outside, {"hidden": H, "vocab": vocab, "tied": tied}


def _moe_plan(cfg: Cfg, opts: DecoderOptions, L: int, I: int | None) -> list[tuple[int, int, int]]:
    """Per layer (experts, MLP width, top_k); experts 0 = dense MLP of width `I`."""
    if opts.moe is None:
        if I is None:
            cfg.int("intermediate_size")
        return [(0, I, 0)] * L
    if opts.moe == "mixtral":
        E = cfg.int("num_local_experts")
        k = cfg.int("num_experts_per_tok")
        rules.top_k(cfg, k, E, ("num_experts_per_tok",), ("num_local_experts",))
        return [(E, cfg.int("intermediate_size"), k)] * L
    if opts.moe == "qwen3_moe":
        # Qwen3MoeDecoderLayer: MoE when the layer is not in mlp_only_layers and
        # num_experts > 0 and (i + 1) % decoder_sparse_step == 0; otherwise a dense MLP.
        # transformers 5's Qwen3MoeConfig writes num_local_experts (num_experts is its v4 name)
        E = cfg.int("num_experts", "num_local_experts", positive=False)
        k = cfg.int("num_experts_per_tok")
        w = cfg.int("moe_intermediate_size")
        step = cfg.int("decoder_sparse_step", default=1)
        only = set(cfg.int_list("mlp_only_layers", L))
        if E > 0:
            rules.top_k(cfg, k, E, ("num_experts_per_tok",), ("num_experts", "num_local_experts"))
        plan = []
        for i in range(L):
            if i not in only and E > 0 and (i + 1) % step == 0:
                plan.append((E, w, k))
            else:
                plan.append((0, cfg.int("intermediate_size"), 0))
        return plan
    raise ValueError(opts.moe)


def parse_decoder(cfg: Cfg, opts: DecoderOptions, *, required: tuple[str, ...] = LLAMA_KEYS) -> ModelSpec:
    """A whole text-only causal LM from a llama-like config."""
    cfg = cfg.with_defaults(dict(opts.defaults))
    layers, outside, info = build_decoder(cfg, opts, required=required)
    return make_spec(
        cfg, family=opts.family, hidden=info["hidden"], vocab=info["vocab"], layers=layers,
        tensors=outside, tied=info["tied"], dtype=torch_dtype(cfg), quant=parse_quantization(cfg),
        max_pos=cfg.int("max_position_embeddings", default=None),
        traits=opts.traits,
    )


__all__ = ["DecoderOptions", "build_decoder", "parse_decoder", "all_full", "all_sliding_if_window",
           "qwen_window_layers", "every_nth_full", "LLAMA_KEYS"]
