"""gpt-oss (transformers models/gpt_oss/modeling_gpt_oss.py, configuration_gpt_oss.py).

Per layer:
    self_attn.{q,k,v}_proj [heads*hd | kv*hd, H] + bias, o_proj [H, heads*hd] + bias (attention_bias,
    true in the released configs), self_attn.sinks [heads] (learned attention-sink logits)
    mlp.router [E, H] + bias [E]
    mlp.experts.gate_up_proj [E, H, 2I] + gate_up_proj_bias [E, 2I]     (fused, stored transposed)
    mlp.experts.down_proj    [E, I, H]  + down_proj_bias    [E, H]
    input_layernorm, post_attention_layernorm [H]
layer_types alternates sliding (window sliding_window, 128) and full attention.
The checkpoint keeps the experts in MXFP4 (quantization_config.quant_method "mxfp4"); its
modules_to_not_convert (attention, router, embeddings, lm_head) stay in bf16.
transformers has no SDPA path for it (`_supports_sdpa = False`: SDPA has no attention sinks), so
transformers runs eager attention with the sink logit concatenated to the scores and a softmax in
the input dtype (`hf_attention` "eager_sinks"; vLLM has its own kernel, which splits the sinks by
head). peft has no default LoRA targets for it.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.spec import LayerSpec, Mlp
from vramplan.models import rules
from vramplan.models._base import (FULL, GENERIC_TRAITS, SLIDING, Cfg, Tensors, attention, embedding_and_head,
                                   explicit_layer_types, make_spec, register, torch_dtype)
from vramplan.models.quant import parse_quantization

KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
        "num_local_experts")


@register("gpt_oss")
def parse(cfg: Cfg):
    cfg.require_all(KEYS)
    H = cfg.int("hidden_size")
    L = cfg.int("num_hidden_layers")
    heads, kv, hd = rules.attention_heads(cfg, H)
    vocab = cfg.int("vocab_size")
    I = cfg.int("intermediate_size")
    E = cfg.int("num_local_experts")
    top_k = cfg.int("num_experts_per_tok", "experts_per_token")
    rules.top_k(cfg, top_k, E, ("num_experts_per_tok", "experts_per_token"), ("num_local_experts",))
    window = cfg.int("sliding_window", default=0, positive=False) or None
    bias = cfg.bool("attention_bias", default=True)

    types = explicit_layer_types(cfg, L)
    if types is None:       # GptOssConfig default: sliding, full, sliding, full, ...
        types = [SLIDING if (i + 1) % 2 else FULL for i in range(L)]

    mlp = Mlp(kind="moe", intermediate=I, gated=True, num_experts=E, top_k=top_k, act="gpt_oss_glu")
    layers = []
    for i in range(L):
        t = Tensors(f"model.layers.{i}")
        t.linear("self_attn.q_proj", heads * hd, H, bias)
        t.linear("self_attn.k_proj", kv * hd, H, bias)
        t.linear("self_attn.v_proj", kv * hd, H, bias)
        t.linear("self_attn.o_proj", H, heads * hd, bias)
        t.param("self_attn.sinks", (heads,), "other", split="heads")
        t.linear("mlp.router", E, H, bias=True, role="router")
        t.param("mlp.experts.gate_up_proj", (E, H, 2 * I), "expert")
        t.param("mlp.experts.gate_up_proj_bias", (E, 2 * I), "bias")
        t.param("mlp.experts.down_proj", (E, I, H), "expert")
        t.param("mlp.experts.down_proj_bias", (E, H), "bias")
        t.norm("input_layernorm", H)
        t.norm("post_attention_layernorm", H)
        layers.append(LayerSpec(i, attention(types[i], heads, kv, hd, window), mlp, t.tuple()))

    tied = cfg.bool("tie_word_embeddings", default=False)
    outside = embedding_and_head(vocab, H, "model.embed_tokens", "model.norm", tied)
    return make_spec(
        cfg, family="gpt_oss", hidden=H, vocab=vocab, layers=layers, tensors=outside, tied=tied,
        dtype=torch_dtype(cfg), quant=parse_quantization(cfg),
        max_pos=cfg.int("max_position_embeddings", default=None),
        traits=replace(GENERIC_TRAITS, hf_attention="eager_sinks"),
    )
