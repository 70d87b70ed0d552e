"""Encoder-only (embedding) models as vLLM serves them (issue #12 item 4): BERT, RoBERTa, XLM-R
(bge-m3, multilingual-e5), CamemBERT read generically from config.json (models/encoder.py),
parameters checked against transformers on the meta device; in serve mode a pooling model with no
KV cache and no sampler pass; every other mode refused with a sentence."""

import json

import pytest

from vramplan import api
from vramplan.errors import BadConfig, BadInput
from vramplan.models import parse
from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses

# BAAI/bge-m3 config.json as published (XLMRobertaModel)
BGE_M3 = {"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "hidden_size": 1024,
          "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "vocab_size": 250002,
          "max_position_embeddings": 8194, "type_vocab_size": 1, "torch_dtype": "float32", "hidden_act": "gelu",
          "layer_norm_eps": 1e-05, "pad_token_id": 1}
# google-bert/bert-base-uncased (BertForMaskedLM: no pooler, the MLM head, decoder tied)
BERT_BASE = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768,
             "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 30522,
             "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu"}
# intfloat/e5-base-v2 and BAAI/bge-base-en-v1.5 (BertModel: the pooler)
E5_BASE = dict(BERT_BASE, architectures=["BertModel"], torch_dtype="float32")
# FacebookAI/roberta-base (RobertaForMaskedLM)
ROBERTA_BASE = {"architectures": ["RobertaForMaskedLM"], "model_type": "roberta", "hidden_size": 768,
                "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 50265,
                "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1}


def bert_params(V, P, T, H, I, L, pooler, mlm):
    """By hand: embeddings (word, position, token type, LayerNorm with bias), per layer q/k/v/o with
    biases, two LayerNorms with biases, intermediate and output with biases; the pooler dense; the
    MLM head's dense, LayerNorm and vocabulary bias (its decoder is the word embeddings)."""
    emb = V * H + P * H + T * H + 2 * H
    layer = 4 * (H * H + H) + 2 * 2 * H + (H * I + I) + (I * H + H)
    return emb + L * layer + (H * H + H if pooler else 0) + (H * H + H + 2 * H + V if mlm else 0)


def test_bge_m3_by_hand():
    spec = parse(BGE_M3, model_id="BAAI/bge-m3")
    assert spec.params == bert_params(250002, 8194, 1, 1024, 4096, 24, True, False) == 567_754_752
    assert spec.traits.pooling and spec.confidence == "exact"
    assert all(layer.mixer is None for layer in spec.layers)         # no attention cache anywhere


def test_bert_and_roberta_heads_by_hand():
    assert parse(BERT_BASE).params == bert_params(30522, 512, 2, 768, 3072, 12, False, True)
    assert parse(E5_BASE).params == bert_params(30522, 512, 2, 768, 3072, 12, True, False) == 109_482_240
    assert parse(ROBERTA_BASE).params == bert_params(50265, 514, 1, 768, 3072, 12, False, True)


def _meta_params(config: dict) -> int:
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    tr.logging.set_verbosity_error()
    body = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    cfg = tr.AutoConfig.for_model(config["model_type"], **body)
    cls = getattr(tr, config["architectures"][0])
    with torch.device("meta"):
        model = cls(cfg)
    return sum(p.numel() for p in model.parameters())        # tied weights are one parameter


@pytest.mark.trace
@pytest.mark.parametrize("config", [BGE_M3, BERT_BASE, E5_BASE, ROBERTA_BASE,
                                    dict(BGE_M3, max_position_embeddings=514),     # multilingual-e5-large
                                    dict(ROBERTA_BASE, model_type="camembert", vocab_size=32005,
                                         architectures=["CamembertModel"])],
                         ids=["bge-m3", "bert-base", "e5-base", "roberta-base", "me5-large", "camembert"])
def test_params_equal_transformers_on_meta(config):
    assert parse(config).params == _meta_params(config)


# answerdotai/ModernBERT-base (ModernBertForMaskedLM; its config.json names no biases, the defaults)
MODERNBERT_BASE = {"architectures": ["ModernBertForMaskedLM"], "model_type": "modernbert", "hidden_size": 768,
                   "intermediate_size": 1152, "num_hidden_layers": 22, "num_attention_heads": 12,
                   "vocab_size": 50368, "max_position_embeddings": 8192, "norm_bias": False,
                   "attention_bias": False, "mlp_bias": False, "classifier_bias": False, "decoder_bias": True}


def test_modernbert_by_hand():
    # tok_embeddings V x H + its norm H; per layer Wqkv 3H x H, Wo H x H, mlp_norm H, Wi 2I x H,
    # Wo H x I, attn_norm H except in layer 0; final_norm H; MLM head dense H x H, norm H, decoder
    # bias V (decoder weight tied)
    H, I, L, V = 768, 1152, 22, 50368
    body = V * H + H + L * (3 * H * H + H * H + H + 2 * I * H + H * I) + (L - 1) * H + H
    assert parse(dict(MODERNBERT_BASE, architectures=["ModernBertModel"])).params == body == 149_014_272
    assert parse(MODERNBERT_BASE).params == body + H * H + H + V == 149_655_232


@pytest.mark.trace
@pytest.mark.parametrize("extra", [{}, {"architectures": ["ModernBertModel"]},
                                   {"norm_bias": True, "attention_bias": True, "mlp_bias": True,
                                    "classifier_bias": True}])
def test_modernbert_equals_transformers_on_meta(extra):
    config = dict(MODERNBERT_BASE, **extra)
    assert parse(config).params == _meta_params(config)


def test_tensor_names_follow_transformers():
    names = {t.name for t in parse(BERT_BASE).all_tensors()}
    assert {"bert.embeddings.word_embeddings", "bert.encoder.layer.11.output.LayerNorm.bias",
            "cls.predictions.transform.dense", "cls.predictions.bias"} <= names
    names = {t.name for t in parse(BGE_M3).all_tensors()}
    assert {"embeddings.token_type_embeddings", "encoder.layer.0.attention.self.query",
            "pooler.dense.bias"} <= names


def _dir(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_serve_plan_has_no_kv_cache_and_no_sampler(tmp_path):
    p = api.plan(_dir(tmp_path, BGE_M3), "l4", ctx=8192, batch=1)
    assert p.components["kv_cache"] == 0
    assert p.components["weights"] == 567_754_752 * 2                # fp32 checkpoint served in bf16
    # the profile forward of 8,192 tokens, no sampler: the MLP peak by hand, 8,192 x (2 x 4,096
    # intermediate + 3 x 1,024 hidden) x 2 B (memory/activations.py's dense MLP transient)
    assert p.components["activations"] == 8192 * (2 * 4096 + 3 * 1024) * 2
    assert "sampler" not in p.component_notes["activations"]
    assert p.serve.num_gpu_blocks == 0 and p.serve.starts and p.fits
    assert any("pooling model: no KV cache" in w for w in p.warnings)


def test_batch_is_limited_by_batched_tokens(tmp_path):
    # L4: 2,048 batched tokens by default, raised to max_model_len (no chunked prefill for pooling)
    p = api.plan(_dir(tmp_path, BGE_M3), "l4", ctx=512, batch=16)
    assert p.serve.max_num_batched_tokens == 2048
    assert p.max_batch == 4 and not p.fits                          # 4 x 512 = 2,048 tokens per step
    p = api.plan(_dir(tmp_path, BGE_M3), "l4", ctx=512, batch=16, max_num_batched_tokens=8192)
    assert p.max_batch == 16 and p.fits
    p = api.plan(_dir(tmp_path, BGE_M3), "l4", ctx=8192, batch=1)
    assert p.serve.max_num_batched_tokens == 8192


def test_other_modes_are_refused_with_a_sentence(tmp_path):
    path = _dir(tmp_path, BGE_M3)
    for mode in ("infer", "lora"):
        assert_cli_refuses(["fit", path, "--mode", mode], 2, "encoder-only (embedding) model")
    assert_cli_refuses(["fit", path, "--engine", "sglang"], 2, "SGLang is not modelled")
    assert_api_refuses(api.plan, path, "l4", mode="infer", exc=BadInput, needle="pooling model")


def test_other_heads_are_refused():
    with pytest.raises(BadConfig, match="XLMRobertaForSequenceClassification head"):
        parse(dict(BGE_M3, architectures=["XLMRobertaForSequenceClassification"]))


def test_the_lever_is_a_larger_step(tmp_path):
    """Too large a batch for one step: the first suggestion is vLLM's own flag, raised to batch x ctx
    (16 x 512 = 8,192 tokens), re-planned and fitting."""
    p = api.plan(_dir(tmp_path, BGE_M3), "l4", ctx=512, batch=16)
    first = p.suggestions[0]
    assert "--max-num-batched-tokens 8192" in first.change and first.fits
