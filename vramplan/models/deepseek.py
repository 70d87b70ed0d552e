"""DeepSeek-V2 / V3 (transformers models/deepseek_v2/modeling_deepseek_v2.py,
models/deepseek_v3/modeling_deepseek_v3.py and their configuration files).

Multi-head latent attention (MLA), per layer:
    self_attn.q_a_proj [q_lora_rank, H] (+bias if attention_bias), q_a_layernorm [q_lora_rank],
    self_attn.q_b_proj [heads*(nope+rope), q_lora_rank]          -- or, when q_lora_rank is null
    self_attn.q_proj   [heads*(nope+rope), H]                       (V2-Lite), a single q_proj
    self_attn.kv_a_proj_with_mqa [kv_lora_rank + rope, H] (+bias), kv_a_layernorm [kv_lora_rank]
    self_attn.kv_b_proj [heads*(nope + v_head_dim), kv_lora_rank]
    self_attn.o_proj [H, heads*v_head_dim] (+bias)
    KV cache: the latent (kv_lora_rank) and the shared rope key (qk_rope_head_dim), stored once.
MLP: layer i is MoE when n_routed_experts is set, i >= first_k_dense_replace and
i % moe_layer_freq == 0, else a dense SwiGLU of intermediate_size. MoE (transformers 5 fuses the
routed experts): mlp.gate [E, H] (router), mlp.experts.gate_up_proj E x [2I, H],
mlp.experts.down_proj E x [H, I] with I = moe_intermediate_size, and one shared SwiGLU
mlp.shared_experts.* of width moe_intermediate_size * n_shared_experts.
V3's router also holds e_score_correction_bias [E], but transformers registers it as a buffer,
not a parameter, so it is not counted (the reference count agrees). The multi-token-prediction
layers (num_nextn_predict_layers) are not built by transformers and are not counted either.
vLLM (model_executor/models/deepseek_v2.py) keeps the small down-projections q_a_proj and
kv_a_proj_with_mqa as ReplicatedLinear. peft has no default LoRA targets for it; its MoE target
renaming for transformers 5 is qwen2_moe's.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.spec import Attention, LayerSpec, Mlp
from vramplan.models import rules
from vramplan.models._base import (GENERIC_TRAITS, PEFT_MOE_QWEN2, Cfg, Tensors, embedding_and_head, make_spec,
                                   register, torch_dtype)
from vramplan.models.quant import parse_quantization

KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
        "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def _routing_groups(cfg: Cfg, v3: bool, experts: int, top_k: int) -> None:
    """V3's router (DeepseekV3TopkRouter) always routes by groups, n_group 8 and topk_group 4 by
    default (DeepseekV3Config), scoring a group by its two best experts; V2's does only with
    topk_method "group_limited_greedy" (a group's best expert), with no default groups."""
    if v3:
        rules.expert_groups(cfg, experts, top_k, cfg.int("n_group", default=8), cfg.int("topk_group", default=4), 2)
    elif cfg.str("topk_method", default="greedy") == "group_limited_greedy":
        rules.expert_groups(cfg, experts, top_k, cfg.int("n_group"), cfg.int("topk_group"), 1)


# Kimi-K2 (moonshotai) ships DeepSeek-V3's architecture under its own model_type: its config.json
# names architectures ["DeepseekV3ForCausalLM"] and maps AutoConfig/AutoModel to DeepseekV3 classes,
# and vLLM serves it with DeepseekV3ForCausalLM; read it as V3 (same keys, same tensors).
V3_TYPES = ("deepseek_v3", "kimi_k2")


@register("deepseek_v2", *V3_TYPES)
def parse(cfg: Cfg):
    cfg.require_all(KEYS)
    v3 = cfg.model_type in V3_TYPES
    H = cfg.int("hidden_size")
    L = cfg.int("num_hidden_layers")
    heads = cfg.int("num_attention_heads")
    vocab = cfg.int("vocab_size")
    I = cfg.int("intermediate_size")
    q_rank = cfg.int("q_lora_rank", default=None)
    kv_rank = cfg.int("kv_lora_rank")
    nope = cfg.int("qk_nope_head_dim")
    rope = cfg.int("qk_rope_head_dim")
    vd = cfg.int("v_head_dim")
    bias = cfg.bool("attention_bias", default=False)
    qk = nope + rope
    if not v3:      # DeepseekV2Config.validate_architecture; V3's config has no such rule
        rules.hidden_per_head(cfg, H, heads, "transformers' DeepseekV2Config.validate_architecture")
    # transformers rotates qk_rope_head_dim dimensions of each head (its config's head_dim)
    rules.rotary_head(cfg, rope, "qk_rope_head_dim")

    E = cfg.int("n_routed_experts", default=0, positive=False)
    if E:
        moe_I = cfg.int("moe_intermediate_size")
        top_k = cfg.int("num_experts_per_tok")
        shared = cfg.int("n_shared_experts", default=0, positive=False)
        first_dense = cfg.int("first_k_dense_replace", default=0, positive=False)
        freq = cfg.int("moe_layer_freq", default=1)
        rules.top_k(cfg, top_k, E, ("num_experts_per_tok",), ("n_routed_experts",))
        _routing_groups(cfg, v3, E, top_k)

    mla = Attention(kind="mla", num_heads=heads, num_kv_heads=heads, head_dim=qk, v_head_dim=vd,
                    kv_lora_rank=kv_rank, rope_dim=rope)
    layers = []
    for i in range(L):
        t = Tensors(f"model.layers.{i}")
        if q_rank is None:
            t.linear("self_attn.q_proj", heads * qk, H)
        else:
            t.linear("self_attn.q_a_proj", q_rank, H, bias, split="replicated")
            t.norm("self_attn.q_a_layernorm", q_rank)
            t.linear("self_attn.q_b_proj", heads * qk, q_rank)
        t.linear("self_attn.kv_a_proj_with_mqa", kv_rank + rope, H, bias, split="replicated")
        t.norm("self_attn.kv_a_layernorm", kv_rank)
        t.linear("self_attn.kv_b_proj", heads * (nope + vd), kv_rank)
        t.linear("self_attn.o_proj", H, heads * vd, bias)

        if E and i >= first_dense and i % freq == 0:
            # transformers creates the router weight as fp32 (DeepseekV2/V3TopkRouter)
            t.linear("mlp.gate", E, H, role="router", dtype="fp32")
            t.add("mlp.experts.gate_up_proj", (2 * moe_I, H), "expert", count=E)
            t.add("mlp.experts.down_proj", (H, moe_I), "expert", count=E)
            s = moe_I * shared
            if s:
                t.linear("mlp.shared_experts.gate_proj", s, H)
                t.linear("mlp.shared_experts.up_proj", s, H)
                t.linear("mlp.shared_experts.down_proj", H, s)
            mlp = Mlp(kind="moe", intermediate=moe_I, gated=True, num_experts=E, top_k=top_k,
                      shared_intermediate=s)
        else:
            t.linear("mlp.gate_proj", I, H)
            t.linear("mlp.up_proj", I, H)
            t.linear("mlp.down_proj", H, I)
            mlp = Mlp(kind="dense", intermediate=I, gated=True)
        t.norm("input_layernorm", H)
        t.norm("post_attention_layernorm", H)
        layers.append(LayerSpec(i, mla, mlp, t.tuple()))

    tied = cfg.bool("tie_word_embeddings", default=False)
    outside = embedding_and_head(vocab, H, "model.embed_tokens", "model.norm", tied)
    mtp = cfg.int("num_nextn_predict_layers", default=0, positive=False)
    return make_spec(
        cfg, family="deepseek_v3" if v3 else "deepseek_v2", hidden=H, vocab=vocab, layers=layers,
        tensors=outside, tied=tied, dtype=torch_dtype(cfg), quant=parse_quantization(cfg),
        max_pos=cfg.int("max_position_embeddings", default=None),
        traits=replace(GENERIC_TRAITS, lora_moe=PEFT_MOE_QWEN2),
        mtp_layers=mtp,
    )
