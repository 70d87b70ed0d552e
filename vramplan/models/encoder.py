"""BERT-style encoders (BERT, RoBERTa, XLM-R and its bge-m3, CamemBERT, ModernBERT; e5 and many gte/bge
checkpoints are these model types): embedding models that vLLM serves as pooling models, with no
KV cache (docs/models.md, "Encoders"; docs/serving.md section 10).

Tensors as transformers 5 builds them (bert/modeling_bert.py BertModel; roberta and xlm_roberta
are the same modules, their position table padded by padding_idx + 1 rows inside
max_position_embeddings):
    embeddings.word_embeddings [V, H], position_embeddings [P, H], token_type_embeddings [T, H]
    (T = type_vocab_size, default 2; XLM-R and bge-m3 1), embeddings.LayerNorm [H] + bias
    encoder.layer.i: attention.self.query/key/value [H, H] + bias, attention.output.dense [H, H]
        + bias, attention.output.LayerNorm [H] + bias, intermediate.dense [I, H] + bias,
        output.dense [H, I] + bias, output.LayerNorm [H] + bias
    pooler.dense [H, H] + bias where the architecture is the bare *Model (AutoModel's
    add_pooling_layer=True); *ForMaskedLM builds no pooler but its MLM head (dense [H, H] + bias,
    LayerNorm + bias, the decoder tied to the word embeddings, its bias [V]).
Checked against transformers on the meta device (tests/test_pooling.py).

The layers carry no mixer: an encoder-only attention keeps no cache. vLLM's KV cache spec skips
it (vllm/v1/worker/gpu_model_runner.py get_kv_cache_spec: AttentionType.ENCODER_ONLY layers get no
KVCacheSpec), so a pooling model allocates no KV blocks and its profile runs a dummy pooler
instead of the sampler (profile_run: `_dummy_pooler_run` when `is_pooling_model`).
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.errors import BadConfig
from vramplan.spec import LayerSpec, Mlp
from vramplan.models._base import GENERIC_TRAITS, Cfg, Tensors, make_spec, register, torch_dtype
from vramplan.models.quant import parse_quantization

BERT_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
REQUIRED = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
POOLING_TRAITS = replace(GENERIC_TRAITS, pooling=True, attention_module="attention", lora_targets=("query", "value"))


def _architectures(cfg: Cfg) -> list[str]:
    a = cfg.root.d.get("architectures")
    return [x for x in a if isinstance(x, str)] if isinstance(a, list) else []


@register(*BERT_TYPES)
def parse(cfg: Cfg):
    cfg.require_all(REQUIRED)
    H, L, I, V = (cfg.int("hidden_size"), cfg.int("num_hidden_layers"), cfg.int("intermediate_size"),
                  cfg.int("vocab_size"))
    P = cfg.int("max_position_embeddings", default=512)
    T = cfg.int("type_vocab_size", default=2, positive=False)
    arch = _architectures(cfg)
    heads = [a for a in arch if not a.endswith(("Model", "ForMaskedLM"))]
    if heads:
        raise BadConfig(f"{cfg.who} is an encoder-only model with a {heads[0]} head, which vramplan does not "
                        f"model; it plans the bare encoder (*Model, as embedding checkpoints such as bge and "
                        f"e5 name it) and *ForMaskedLM.")
    masked_lm = any(a.endswith("ForMaskedLM") for a in arch)
    pooler = not arch or any(a.endswith("Model") for a in arch)

    # the bare *Model names its modules from the root; a task head wraps it as `bert` or `roberta`
    base = "" if pooler else ("bert" if cfg.model_type == "bert" else "roberta")
    emb = Tensors(f"{base}.embeddings" if base else "embeddings")
    emb.add("word_embeddings", (V, H), "embedding", split="vocab")
    emb.add("position_embeddings", (P, H), "embedding", split="replicated")
    if T:
        emb.add("token_type_embeddings", (T, H), "embedding", split="replicated")
    emb.norm("LayerNorm", H, bias=True)
    layers = []
    for i in range(L):
        t = Tensors(f"{base}.encoder.layer.{i}" if base else f"encoder.layer.{i}")
        for n in ("query", "key", "value"):
            t.linear(f"attention.self.{n}", H, H, bias=True, split="column")
        t.linear("attention.output.dense", H, H, bias=True, split="row")
        t.norm("attention.output.LayerNorm", H, bias=True)
        t.linear("intermediate.dense", I, H, bias=True, split="column")
        t.linear("output.dense", H, I, bias=True, split="row")
        t.norm("output.LayerNorm", H, bias=True)
        layers.append(LayerSpec(i, None, Mlp(kind="dense", intermediate=I, gated=False), t.tuple()))
    tail = Tensors()
    if pooler:
        tail.linear("pooler.dense", H, H, bias=True, split="replicated")
    if masked_lm:       # the MLM head; its decoder weight is the word embeddings (tied)
        head, dense, norm = (("cls.predictions", "transform.dense", "transform.LayerNorm")
                             if cfg.model_type == "bert" else ("lm_head", "dense", "layer_norm"))
        tail.linear(f"{head}.{dense}", H, H, bias=True, split="replicated")
        tail.norm(f"{head}.{norm}", H, bias=True)
        tail.param(f"{head}.bias", (V,), "bias", split="vocab")
    spec = make_spec(cfg, family="encoder", hidden=H, vocab=V, layers=layers, tensors=emb.items + tail.items,
                     tied=True, dtype=torch_dtype(cfg), quant=parse_quantization(cfg), max_pos=P,
                     traits=POOLING_TRAITS)
    return spec


@register("modernbert")
def parse_modernbert(cfg: Cfg):
    """ModernBERT (modernbert/modeling_modernbert.py, transformers 5): tok_embeddings [V, H] and a
    norm; per layer an attn_norm except in layer 0 (an Identity there), Wqkv [3H, H], Wo [H, H],
    mlp_norm, a GeGLU Wi [2I, H] and Wo [H, I]; final_norm. Norms are LayerNorms with a bias only
    when norm_bias, the projections have biases when attention_bias / mlp_bias (all false by
    default); rotary positions, no position table. *ForMaskedLM adds head.dense [H, H] (+bias when
    classifier_bias), head.norm and the decoder's bias [V] (decoder_bias, default true; its weight
    is tied to tok_embeddings)."""
    cfg.require_all(REQUIRED)
    H, L, I, V = (cfg.int("hidden_size"), cfg.int("num_hidden_layers"), cfg.int("intermediate_size"),
                  cfg.int("vocab_size"))
    nb, ab, mb = cfg.bool("norm_bias"), cfg.bool("attention_bias"), cfg.bool("mlp_bias")
    arch = _architectures(cfg)
    heads = [a for a in arch if not a.endswith(("Model", "ForMaskedLM"))]
    if heads:
        raise BadConfig(f"{cfg.who} is an encoder-only model with a {heads[0]} head, which vramplan does not "
                        f"model; it plans the bare encoder (*Model) and *ForMaskedLM.")
    masked_lm = any(a.endswith("ForMaskedLM") for a in arch)
    base = "model." if masked_lm else ""
    emb = Tensors(f"{base}embeddings")
    emb.add("tok_embeddings", (V, H), "embedding", split="vocab")
    emb.norm("norm", H, bias=nb)
    layers = []
    for i in range(L):
        t = Tensors(f"{base}layers.{i}")
        if i:
            t.norm("attn_norm", H, bias=nb)
        t.linear("attn.Wqkv", 3 * H, H, bias=ab, split="column")
        t.linear("attn.Wo", H, H, bias=ab, split="row")
        t.norm("mlp_norm", H, bias=nb)
        t.linear("mlp.Wi", 2 * I, H, bias=mb, split="column")
        t.linear("mlp.Wo", H, I, bias=mb, split="row")
        layers.append(LayerSpec(i, None, Mlp(kind="dense", intermediate=I, gated=True, fused_gate_up=True),
                                t.tuple()))
    tail = Tensors()
    tail.norm(f"{base}final_norm", H, bias=nb)
    if masked_lm:
        tail.linear("head.dense", H, H, bias=cfg.bool("classifier_bias"), split="replicated")
        tail.norm("head.norm", H, bias=nb)
        if cfg.bool("decoder_bias", default=True):
            tail.param("decoder.bias", (V,), "bias", split="vocab")
    return make_spec(cfg, family="encoder", hidden=H, vocab=V, layers=layers, tensors=emb.items + tail.items,
                     tied=True, dtype=torch_dtype(cfg), quant=parse_quantization(cfg),
                     max_pos=cfg.int("max_position_embeddings", default=8192), traits=POOLING_TRAITS)
