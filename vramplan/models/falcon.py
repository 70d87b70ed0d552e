"""Falcon (transformers models/falcon/modeling_falcon.py, configuration_falcon.py), including the
original custom-code configs: model_type "RefinedWebModel" (Falcon-7B/1B) and "RefinedWeb"
(Falcon-40B/180B), with the old keys n_layer, n_head, n_head_kv, n_embed. They are parsed as data;
no remote code runs. transformers' conversion: RefinedWeb means new_decoder_architecture=True,
RefinedWebModel means False.

Per layer (transformer.h.i):
    self_attention.query_key_value [qkv, H] (+bias if `bias`), where qkv is
        new_decoder_architecture: (heads + 2*kv_heads) * head_dim
        multi_query:               H + 2*head_dim        (one K/V head)
        otherwise:                 3*H
    self_attention.dense [H, H] (+bias)
    mlp.dense_h_to_4h [F, H], mlp.dense_4h_to_h [H, F] (+bias), F = ffn_hidden_size (default 4H)
    LayerNorms (weight + bias): parallel_attn=false -> input_layernorm + post_attention_layernorm;
        new architecture with num_ln_in_parallel_attn 2 (default) -> ln_attn + ln_mlp;
        otherwise one input_layernorm
transformer.word_embeddings [V, H], transformer.ln_f (weight + bias), lm_head tied by default.
head_dim = H // heads. ALiBi adds no parameters. KV heads: kv_heads (new arch), 1 (multi_query), heads.

vLLM (model_executor/models/falcon.py): query_key_value is one QKVParallelLinear, dense and
dense_4h_to_h RowParallelLinear. With rotary, q and k leave query_key_value as new tensors while v
stays a view of it (`fused_qkv_saved_whole`, trace tier on Falcon-40B). peft's default LoRA target
is query_key_value (for all three model types: peft sees the converted transformers config).
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.spec import Attention, LayerSpec, Mlp
from vramplan.models import rules
from vramplan.models._base import GENERIC_TRAITS, Cfg, Tensors, embedding_and_head, make_spec, register, torch_dtype
from vramplan.models.quant import parse_quantization


@register("falcon", "RefinedWeb", "RefinedWebModel")
def parse(cfg: Cfg):
    H = cfg.int("hidden_size", "n_embed")
    L = cfg.int("num_hidden_layers", "n_layer")
    heads = cfg.int("num_attention_heads", "n_head")
    vocab = cfg.int("vocab_size")
    # FalconAttention raises unless hidden_size is a multiple of the heads
    rules.hidden_per_head(cfg, H, heads, "transformers' FalconAttention", ("hidden_size", "n_embed"),
                          ("num_attention_heads", "n_head"))
    hd = H // heads
    if not cfg.bool("alibi"):
        rules.rotary_head(cfg, hd, None)
    if cfg.model_type == "RefinedWeb":
        new_arch = True
    elif cfg.model_type == "RefinedWebModel":
        new_arch = False
    else:
        new_arch = cfg.bool("new_decoder_architecture", default=False)
    multi_query = cfg.bool("multi_query", default=True)
    parallel = cfg.bool("parallel_attn", default=True)
    bias = cfg.bool("bias", default=False)
    F = cfg.int("ffn_hidden_size", default=4 * H)
    n_ln = cfg.int("num_ln_in_parallel_attn", default=2 if new_arch else 1)

    if new_arch:
        kv = cfg.int("num_kv_heads", "n_head_kv", default=heads)
        rules.kv_heads(cfg, heads, kv, ("num_attention_heads", "n_head"), ("num_kv_heads", "n_head_kv"))
        qkv = (heads + 2 * kv) * hd
    elif multi_query:
        kv, qkv = 1, H + 2 * hd
    else:
        kv, qkv = heads, 3 * H

    mixer = Attention(kind="full", num_heads=heads, num_kv_heads=kv, head_dim=hd, v_head_dim=hd)
    mlp = Mlp(kind="dense", intermediate=F, gated=False)
    layers = []
    for i in range(L):
        t = Tensors(f"transformer.h.{i}")
        t.linear("self_attention.query_key_value", qkv, H, bias, split="qkv")
        t.linear("self_attention.dense", H, H, bias, split="row")
        t.linear("mlp.dense_h_to_4h", F, H, bias)
        t.linear("mlp.dense_4h_to_h", H, F, bias, split="row")
        if not parallel:
            t.norm("input_layernorm", H, bias=True)
            t.norm("post_attention_layernorm", H, bias=True)
        elif new_arch and n_ln == 2:
            t.norm("ln_attn", H, bias=True)
            t.norm("ln_mlp", H, bias=True)
        else:
            t.norm("input_layernorm", H, bias=True)
        layers.append(LayerSpec(i, mixer, mlp, t.tuple()))

    # FalconConfig sets no tie_word_embeddings, so PretrainedConfig's default (true) applies and
    # FalconForCausalLM ties lm_head to word_embeddings.
    tied = cfg.bool("tie_word_embeddings", default=True)
    outside = embedding_and_head(vocab, H, "transformer.word_embeddings", "transformer.ln_f", tied,
                                 norm_bias=True)
    return make_spec(
        cfg, family="falcon", hidden=H, vocab=vocab, layers=layers, tensors=outside, tied=tied,
        dtype=torch_dtype(cfg), quant=parse_quantization(cfg),
        max_pos=cfg.int("max_position_embeddings", default=None if cfg.bool("alibi") else 2048),
        # transformers builds every projection as FalconLinear, an nn.Linear subclass (memory/weights.py
        # transformers_bnb: bitsandbytes in transformers 5 leaves them 16-bit)
        traits=replace(GENERIC_TRAITS, hf_linear_subclass="FalconLinear",
                       hf_linear_subclass_modules=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
                       attention_module="self_attention", fused_qkv_saved_whole=True,
                       lora_targets=("query_key_value",)),
    )
