"""The generic config reader (vramplan/models/generic.py, towers.py) and the trust label.

Oracle: transformers itself. Each config is built by transformers (`AutoConfig.for_model`, the
config class's defaults plus the sizes of a published checkpoint), the model is instantiated on
the meta device and its unique parameters counted (tied weights once, as `model.parameters()`
yields them); the KV bytes per token come from a real CPU prefill of the same architecture with
its sizes shrunk, read off the cache it returns. vramplan reads the same config dict with no
torch. Tests that need torch/transformers are marked `trace` (the fast subset skips them).
"""

from __future__ import annotations

import json

import pytest

from vramplan import api
from vramplan.errors import BadConfig, BadInput
from vramplan.models import parse
from vramplan.models.generic import LAYOUTS
from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses

# --- the oracle -------------------------------------------------------------------------------


def _transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def hf_config(model_type: str, **overrides):
    tr = _transformers()
    tr.logging.set_verbosity_error()
    return tr.AutoConfig.for_model(model_type, **overrides)


def meta_params(config) -> int:
    """Unique parameters of the model transformers builds from `config`, on the meta device."""
    import torch
    import transformers as tr
    with torch.device("meta"):
        for cls in (tr.AutoModelForCausalLM, tr.AutoModelForImageTextToText):
            try:
                model = cls.from_config(config)
                break
            except ValueError:       # not a causal LM: the multimodal class builds it
                continue
    return sum(p.numel() for p in model.parameters())


def prefill_kv_elems_per_token(config, tokens: int = 5) -> int:
    """K and V elements per token per sequence, over all layers, from the cache of a real CPU
    prefill of `tokens` tokens (fewer than any sliding window, so every layer holds them all)."""
    import torch
    import transformers as tr
    torch.manual_seed(0)
    model = tr.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        out = model(torch.zeros((1, tokens), dtype=torch.long), use_cache=True)
    total = 0
    for layer in out.past_key_values.layers:
        for t in (layer.keys, layer.values):
            assert t.shape[0] == 1 and t.shape[-2] == tokens
            total += t[0].numel() // tokens
    return total


def kv_elems_per_token(spec) -> int:
    return sum(l.mixer.kv_elems_per_token for l in spec.attention_layers)


# --- the layouts, each against transformers ---------------------------------------------------

# Sizes of published checkpoints (the issue's examples and the families' most used sizes), on top
# of each config class's defaults.
PUBLISHED = {
    # bigcode/starcoder2-15b: the issue's example (transformers builds 15.66 B; vramplan said 22.00 B)
    "starcoder2": dict(hidden_size=6144, intermediate_size=24576, num_hidden_layers=40, num_attention_heads=48,
                       num_key_value_heads=4, vocab_size=49152, max_position_embeddings=16384, sliding_window=4096,
                       use_bias=True),
    # microsoft/phi-2
    "phi": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=51200, partial_rotary_factor=0.4),
    # CohereForAI/c4ai-command-r-v01
    "cohere": dict(hidden_size=8192, intermediate_size=22528, num_hidden_layers=40, num_attention_heads=64,
                   num_key_value_heads=64, vocab_size=256000, use_qk_norm=False),
    # Command R+ style: q/k norms over [heads, head_dim]
    "cohere_qk": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=32000, use_qk_norm=True),
    # EleutherAI/pythia-6.9b
    "gpt_neox": dict(hidden_size=4096, intermediate_size=16384, num_hidden_layers=32, num_attention_heads=32,
                     vocab_size=50432),
    # Qwen/Qwen1.5-MoE-A2.7B
    "qwen2_moe": dict(hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
                      shared_expert_intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                      num_key_value_heads=16, num_experts=60, num_experts_per_tok=4, vocab_size=151936),
    # allenai/OLMoE-1B-7B-0924
    "olmoe": dict(hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
                  num_experts=64, num_experts_per_tok=8, vocab_size=50304),
    # zai-org/GLM-4.5-Air (explicit head_dim 128, first layer dense, one shared expert)
    "glm4_moe": dict(hidden_size=4096, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=46,
                     num_attention_heads=96, num_key_value_heads=8, head_dim=128, n_routed_experts=128,
                     n_shared_experts=1, num_experts_per_tok=8, first_k_dense_replace=1, vocab_size=151552,
                     attention_bias=True),
    # a qwen2_moe with dense layers by decoder_sparse_step and mlp_only_layers
    "qwen2_moe_sparse": dict(hidden_size=512, intermediate_size=1024, moe_intermediate_size=256,
                             shared_expert_intermediate_size=512, num_hidden_layers=6, num_attention_heads=8,
                             num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, vocab_size=1000,
                             decoder_sparse_step=2, mlp_only_layers=[3]),
    # Qwen3-30B-A3B as transformers 5 writes it: num_local_experts (refused before this reader)
    "qwen3_moe": dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
                      num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_local_experts=128,
                      num_experts_per_tok=8, vocab_size=151936),
}
_ALIAS = {"cohere_qk": "cohere", "qwen2_moe_sparse": "qwen2_moe"}
# (the text halves of multimodal checkpoints are verified through their checkpoints, below)
CASES = sorted(set(LAYOUTS) - {"qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text", "qwen3_vl_moe_text"}) + sorted(k for k in PUBLISHED if k not in LAYOUTS)


def _case_config(case: str):
    model_type = _ALIAS.get(case, case)
    return hf_config(model_type, **PUBLISHED.get(case, {}))


@pytest.mark.trace
@pytest.mark.parametrize("case", CASES)
def test_parameters_exact_vs_meta_device(case):
    config = _case_config(case)
    spec = parse(config.to_dict(), model_id=case)
    assert spec.params == meta_params(config)
    assert spec.confidence == "exact" and spec.assumptions == ()


@pytest.mark.trace
def test_the_issue_examples_published_counts():
    """StarCoder2-15B is 15.66 B (the issue: vramplan said 22.00 B); Phi-2 2.78 B; Command-R 34.98 B."""
    got = {case: parse(_case_config(case).to_dict()).params for case in ("starcoder2", "phi", "cohere")}
    assert round(got["starcoder2"] / 1e9, 2) == 15.66
    assert round(got["phi"] / 1e9, 2) == 2.78
    assert round(got["cohere"] / 1e9, 2) == 34.98


def _tiny(case: str):
    """The same architecture shrunk for a CPU prefill (GQA kept where the family has it)."""
    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                 vocab_size=128, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model_type = _ALIAS.get(case, case)
    extra = {k: v for k, v in PUBLISHED.get(case, {}).items()
             if k in ("use_qk_norm", "use_bias", "partial_rotary_factor", "attention_bias")}
    if model_type == "helium":          # HeliumAttention's o_proj is [H, H]: it runs only when heads x head_dim = H
        small["head_dim"] = 16
    if model_type == "llama4_text":
        small.update(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128, moe_layers=[1],
                     head_dim=16, attention_chunk_size=16,
                     layer_types=["chunked_attention", "chunked_attention", "full_attention"])
    if model_type not in ("gpt_neox", "persimmon"):       # their fused QKV has no GQA
        small["num_key_value_heads"] = 2
    # each MoE family with the keys its config class has
    moe = {"qwen2_moe": dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                             decoder_sparse_step=1, mlp_only_layers=[1]),
           "olmoe": dict(num_experts=4), "granitemoe": dict(num_local_experts=4), "phimoe": dict(num_local_experts=4),
           "glm4_moe": dict(n_routed_experts=4, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                            head_dim=16),
           "qwen3_moe": dict(num_local_experts=4, moe_intermediate_size=32, head_dim=16),
           "minimax_m2": dict(num_local_experts=4, head_dim=16),
           "granitemoeshared": dict(num_local_experts=4, shared_intermediate_size=48),
           "solar_open": dict(n_routed_experts=4, moe_intermediate_size=32, n_shared_experts=1, head_dim=16),
           **{mt: dict(n_routed_experts=4, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                       head_dim=16) for mt in ("sarvam_moe", "param2moe")}}
    if model_type in moe:
        small.update(num_experts_per_tok=2, **moe[model_type])
    if model_type in ("cohere2", "olmo3", "exaone4", "cwm", "vaultgemma"):
        small["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention"]
        small["sliding_window"] = 16
    return hf_config(model_type, **small, **extra)


@pytest.mark.trace
@pytest.mark.parametrize("case", CASES)
def test_kv_per_token_equals_a_real_prefill(case):
    config = _tiny(case)
    spec = parse(config.to_dict(), model_id=case)
    assert spec.params == meta_params(config)
    assert kv_elems_per_token(spec) == prefill_kv_elems_per_token(config)


@pytest.mark.trace
def test_sliding_layers_follow_layer_types():
    config = _tiny("cohere2")
    kinds = [l.mixer.kind for l in parse(config.to_dict()).layers]
    assert kinds == ["sliding", "sliding", "full"]
    assert [l.mixer.window for l in parse(config.to_dict()).layers] == [16, 16, None]


# --- multimodal: towers in the weights, never in the KV cache ----------------------------------

# Qwen/Qwen2.5-VL-7B-Instruct config.json as published (transformers 4 layout: the text keys at
# the top level, the vision tower's own names such as in_chans, which transformers ignores).
QWEN25_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 28,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}


@pytest.mark.trace
@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava", "llava_next",
                                        "llava_onevision",
                                        "paligemma", "mistral3"])
def test_vision_towers_exact(model_type):
    config = hf_config(model_type)
    spec = parse(config.to_dict(), model_id=model_type)
    assert spec.params == meta_params(config)
    assert spec.confidence == "exact"
    assert spec.vision is not None and spec.vision.params > 0
    towers = [t for t in spec.all_tensors() if t.name.startswith(spec.traits.towers)]
    assert sum(t.numel for t in towers) == spec.vision.params


@pytest.mark.trace
def test_qwen25_vl_7b_published_config():
    """The issue's example: the 7B's vision tower counted (vramplan ignored it: -8 %)."""
    tr = _transformers()
    config = tr.AutoConfig.for_model(**QWEN25_VL_7B)
    spec = parse(QWEN25_VL_7B, model_id="Qwen/Qwen2.5-VL-7B-Instruct")
    assert spec.params == meta_params(config)
    assert spec.confidence == "exact"
    # KV: only the 28 text layers, 4 KV heads x 128 x (K + V)
    assert kv_elems_per_token(spec) == 28 * 4 * 128 * 2


def test_qwen25_vl_kv_is_text_only_and_tower_is_counted():
    spec = parse(QWEN25_VL_7B)
    assert spec.num_layers == 28 and kv_elems_per_token(spec) == 28 * 4 * 128 * 2
    E, I, m = 1280, 3420, 2          # the merger folds m x m patches: E * m^2 = 4E
    # per block: 2 RMSNorms, qkv + proj with biases, gated MLP with biases
    block = 2 * E + (3 * E * E + 3 * E) + (E * E + E) + 2 * (I * E + I) + (E * I + E)
    merger = E + (m * m * E * m * m * E + m * m * E) + (3584 * m * m * E + 3584)
    assert spec.vision.params == E * 3 * 2 * 14 * 14 + 32 * block + merger


def test_unknown_tower_is_approximate_and_named():
    cfg = dict(QWEN25_VL_7B, model_type="acme_vl", text_config={**{k: QWEN25_VL_7B[k] for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "vocab_size")}, "model_type": "qwen2"}, vision_config={"model_type": "acme_vit", "hidden_size": 1024,
                                                               "num_hidden_layers": 24, "intermediate_size": 4096})
    spec = parse(cfg)
    assert spec.confidence == "approximate"
    assert any("acme_vit" in a and "plain ViT" in a for a in spec.assumptions)


# --- refusals ----------------------------------------------------------------------------------

# BAAI/bge-m3 config.json (an XLM-RoBERTa encoder): the issue's example, given a KV cache before.
BGE_M3 = {"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "hidden_size": 1024,
          "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "vocab_size": 250002,
          "max_position_embeddings": 8194, "type_vocab_size": 1, "torch_dtype": "float32"}


@pytest.mark.parametrize("config, needle", [
    (BGE_M3, "encoder-only"),
    ({"model_type": "new_encoder", "architectures": ["NewForMaskedLM"], "hidden_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "intermediate_size": 128}, "encoder-only"),
    ({"model_type": "t5", "d_model": 512, "num_layers": 6}, "encoder-decoder"),
    ({"model_type": "acme_s2s", "is_encoder_decoder": True}, "encoder-decoder"),
    ({"model_type": "jamba", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
      "intermediate_size": 128, "mamba_d_state": 16}, "mamba_d_state"),
    ({"model_type": "qwen3_next", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "vocab_size": 100, "intermediate_size": 128, "linear_num_value_heads": 8}, "linear_num_value_heads"),
    ({"model_type": "acme_mla", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "vocab_size": 100, "intermediate_size": 128, "kv_lora_rank": 16}, "latent attention"),
    ({"model_type": "acme_lm", "hidden_size": 64}, "num_hidden_layers"),
])
def test_what_the_reader_cannot_size_is_refused(config, needle):
    with pytest.raises(BadConfig) as e:
        parse(config, model_id="x")
    assert needle in str(e.value)


def test_bge_m3_is_exit_2_saying_why(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BGE_M3))
    assert_cli_refuses(["fit", str(tmp_path)], 2, "encoder-only")


def test_missing_layer_keys_are_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "acme_lm", "hidden_size": 64,
                                                      "vocab_size": 100}))
    msg = assert_cli_refuses(["fit", str(tmp_path)], 2, "num_hidden_layers")
    assert "num_attention_heads" in msg and "intermediate_size" in msg


# --- the trust label ---------------------------------------------------------------------------

# A model type vramplan has no layout for, with a llama-like config: read, labelled approximate.
ACME = {"model_type": "acme_lm", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
        "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000, "torch_dtype": "bfloat16",
        "max_position_embeddings": 8192}


@pytest.fixture
def acme_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(ACME))
    return str(tmp_path)


def test_unknown_model_type_is_approximate_with_its_assumptions():
    spec = parse(ACME)
    assert spec.confidence == "approximate" and len(spec.assumptions) >= 4
    # llama's tensors: embed + head 2 x 32000 x 1024, final norm; per layer q,o 1024^2, k,v 256x1024,
    # gate/up/down 2816x1024, two norms
    layer = 2 * 1024 * 1024 + 2 * 256 * 1024 + 3 * 2816 * 1024 + 2 * 1024
    assert spec.params == 2 * 32000 * 1024 + 1024 + 8 * layer


def test_approximate_plan_warns_at_the_top_of_the_table(acme_dir):
    from typer.testing import CliRunner
    from vramplan.cli import app
    r = CliRunner().invoke(app, ["fit", acme_dir, "--gpu", "l40s"])
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[0]
    assert first.startswith("APPROXIMATE:") and "acme_lm" in first
    assert r.stdout.index("gated MLP") < r.stdout.index("component")


def test_approximate_plan_json_labels(acme_dir):
    p = api.plan(acme_dir, "l40s")
    from vramplan.render import plan_json
    j = plan_json(p)
    assert j["confidence"] == "approximate" and j["model"]["confidence"] == "approximate"
    assert j["component_confidence"]["weights"] == "approximate"
    assert j["component_confidence"]["kv_cache"] == "approximate"
    assert j["component_confidence"]["non_torch"] == "modelled"
    assert j["assumptions"] == list(parse(ACME).assumptions)


def test_exact_plan_labels():
    p = api.plan("meta-llama/Llama-3.1-8B", "l40s")
    assert p.confidence == "exact"
    assert p.component_confidence == {"weights": "exact", "kv_cache": "exact", "activations": "modelled",
                                      "non_torch": "modelled", "cuda_graphs": "modelled"}


def test_weights_from_a_checkpoint_are_exact_whatever_the_reader():
    """The simple input the checkpoint reader sets: weights exact, the KV cache keeps the layers' label."""
    from dataclasses import replace
    from vramplan.spec.plan import component_labels
    assert component_labels(["weights", "kv_cache", "activations", "cuda_context"], weights="exact",
                            layers="approximate") == {"weights": "exact", "kv_cache": "approximate",
                                                      "activations": "approximate", "cuda_context": "modelled"}
    spec = replace(parse(ACME), weights_confidence="exact")
    p = api.plan(spec, "l40s")
    assert p.component_confidence["weights"] == "exact" and p.confidence == "approximate"


def test_strict_refuses_an_approximate_plan(acme_dir):
    assert_cli_refuses(["fit", acme_dir, "--strict"], 2, "--strict refuses this plan")
    assert_api_refuses(api.plan, acme_dir, "l40s", strict=True, exc=BadInput, needle="strict refuses")
    assert api.plan("meta-llama/Llama-3.1-8B", "l40s", strict=True).confidence == "exact"


def test_strict_must_be_a_boolean():
    assert_api_refuses(api.plan, "meta-llama/Llama-3.1-8B", "l40s", strict="yes", exc=BadInput, needle="strict")


def test_bundled_families_are_exact():
    from vramplan.reports import bundled_models
    for row in bundled_models():
        if row.params is not None:          # rows the analytic reader refuses have no figures
            assert api.load_model(row.id).confidence == "exact", row.id


def test_kv_table_of_an_approximate_model_opens_with_the_warning(acme_dir):
    from typer.testing import CliRunner
    from vramplan.cli import app
    r = CliRunner().invoke(app, ["kv", acme_dir])
    assert r.exit_code == 0 and r.stdout.startswith("APPROXIMATE:")
    r = CliRunner().invoke(app, ["kv", "meta-llama/Llama-3.1-8B"])
    assert r.exit_code == 0 and "APPROXIMATE" not in r.stdout
