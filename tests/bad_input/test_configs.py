"""Model configs no model could have are refused, never answered (issue #15; every rule and bound
is listed with its reason in docs/validation.md, "Model configs").

Each case starts from a real config of one family (configs/models/, tests/data/models/), breaks
one thing, writes the file to tmp_path and runs `vramplan fit FILE --gpu l40s` in-process: exit 2,
one plain sentence on stderr that names the key, nothing on stdout, no traceback, no hang
(tests/bad_input/contract.py). A subset goes through the Python API (BadConfig). The last
section checks that valid edge configs still parse and plan.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import vramplan.api
from vramplan.errors import BadConfig
from vramplan.models import parse
from vramplan.models.bounds import BOUNDS, PARAMS

from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses, deadline

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "llama": "configs/models/meta-llama--Llama-3.1-8B.json",
    "llama405": "configs/models/meta-llama--Llama-3.1-405B.json",
    "mistral": "configs/models/mistralai--Mistral-7B-v0.1.json",
    "mixtral": "configs/models/mistralai--Mixtral-8x7B-v0.1.json",
    "qwen2": "configs/models/Qwen--Qwen2.5-7B.json",
    "qwen3": "configs/models/Qwen--Qwen3-8B.json",
    "qwen3_moe": "tests/data/models/Qwen--Qwen3-235B-A22B-FP8.json",
    "phi3": "configs/models/microsoft--Phi-3-mini-4k-instruct.json",
    "gemma3": "configs/models/google--gemma-3-4b-it.json",
    "gpt2": "configs/models/openai-community--gpt2.json",
    "falcon": "configs/models/tiiuae--falcon-40b.json",
    "gpt_oss": "configs/models/openai--gpt-oss-20b.json",
    "deepseek_v3": "configs/models/deepseek-ai--DeepSeek-V3.json",
    "deepseek_v2": "tests/data/models/deepseek-ai--DeepSeek-V2-Lite.json",
    "nemotron_h": "configs/models/nvidia--Nemotron-H-56B-Base-8K.json",
}
# Gemma 2 9B (google/gemma-2-9b config.json; not bundled) and an unknown family read as a generic decoder.
GEMMA2 = {"model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
          "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
          "sliding_window": 4096, "torch_dtype": "float32"}
DELETE = object()
NAN, INF = float("nan"), float("inf")


def base(family: str) -> dict:
    if family == "gemma2":
        return dict(GEMMA2)
    if family == "generic":
        return dict(json.loads((ROOT / BASE["llama"]).read_text()), model_type="acme_lm")
    return json.loads((ROOT / BASE[family]).read_text())


def mutate(cfg: dict, changes: dict) -> dict:
    """Apply {"a.b": value} (DELETE removes the key) to a copy of `cfg`."""
    cfg = json.loads(json.dumps(cfg))
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return cfg


def write(tmp_path: Path, family: str, changes: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(mutate(base(family), changes)))    # NaN/Infinity as bare literals
    return str(path)


def fit(path: str) -> list[str]:
    return ["fit", path, "--gpu", "l40s"]


# --- 1. every size key: types, signs, NaN/Infinity, numbers no model has ----------------------

# (value id, value): what a hostile or mistaken file may hold where an integer size belongs.
ALL_BAD = [("zero", 0), ("negative", -8), ("fraction", 64.5), ("integral-float", 64.0), ("bool", True),
           ("string", "64"), ("list", [64]), ("object", {"n": 64}), ("nan", NAN), ("infinity", INF),
           ("-infinity", -INF), ("1e308", 1e308), ("2**63", 2**63)]
SOME_BAD = [("zero", 0), ("negative", -1), ("integral-float", 64.0), ("bool", True), ("nan", NAN),
            ("2**63", 2**63)]
# Keys that may be 0 ("none", "dense") take the others only.
NONZERO_OK = {"sliding_window", "n_shared_experts", "first_k_dense_replace", "n_routed_experts",
              "num_experts", "max_window_layers", "num_nextn_predict_layers"}

SIZE_KEYS = {
    "llama": ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
              "intermediate_size"],
    "qwen3": ["head_dim", "max_position_embeddings"],
    "mistral": ["sliding_window"],
    "mixtral": ["num_local_experts", "num_experts_per_tok"],
    "qwen3_moe": ["num_experts", "moe_intermediate_size", "decoder_sparse_step"],
    "gemma3": ["text_config.hidden_size", "text_config.num_hidden_layers", "vision_config.patch_size",
               "mm_tokens_per_image"],
    "gpt2": ["n_embd", "n_layer", "n_head", "n_positions"],
    "falcon": ["n_head_kv", "n_layer"],
    "gpt_oss": ["num_local_experts"],
    "deepseek_v3": ["kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
                    "moe_layer_freq", "n_group"],
    "nemotron_h": ["ssm_state_size", "mamba_num_heads", "mamba_head_dim", "n_groups", "conv_kernel",
                   "chunk_size"],
}


def size_cases():
    for family, keys in SIZE_KEYS.items():
        for key in keys:
            values = ALL_BAD if family == "llama" else SOME_BAD
            for vid, value in values:
                if vid == "zero" and key.rsplit(".", 1)[-1] in NONZERO_OK:
                    continue
                yield pytest.param(family, key, value, id=f"{family}-{key}-{vid}")


@pytest.mark.parametrize("family,key,value", list(size_cases()))
def test_bad_size_value_is_refused(tmp_path, family, key, value):
    msg = assert_cli_refuses(fit(write(tmp_path, family, {key: value})), needle=key)
    assert "Traceback" not in msg and len(msg) < 400


# The numbers of the issue and one past each bound: the message names the key, the value and the bound.
OVER = [
    ("llama", "num_hidden_layers", 10**5), ("llama", "num_hidden_layers", 10**9), ("llama", "num_hidden_layers", 1001),
    ("llama", "hidden_size", 2**20 + 128), ("llama", "intermediate_size", 2**22 + 1), ("llama", "vocab_size", 2**24 + 1),
    ("llama", "num_attention_heads", 2**14 + 2), ("qwen3", "head_dim", 2**14 + 2),
    ("llama", "max_position_embeddings", 2**30 + 1), ("mixtral", "num_local_experts", 2**14 + 1),
    ("nemotron_h", "ssm_state_size", 2**14 + 1), ("nemotron_h", "conv_kernel", 1025),
    ("gemma3", "vision_config.image_size", 2**16 + 1), ("deepseek_v3", "kv_lora_rank", 2**20 + 1),
    ("gpt2", "n_positions", 2**30 + 1), ("mistral", "sliding_window", 2**30 + 1),
]


@pytest.mark.parametrize("family,key,value", OVER, ids=[f"{f}-{k}-{v}" for f, k, v in OVER])
def test_size_over_its_bound_names_key_value_and_bound(tmp_path, family, key, value):
    msg = assert_cli_refuses(fit(write(tmp_path, family, {key: value})), needle=key)
    limit = BOUNDS[key.rsplit(".", 1)[-1]].limit
    assert f"{limit:,}" in msg and f"{value:,}" in msg, msg


def test_whole_model_over_the_parameter_bound(tmp_path):
    # every key within its bound, the product not: 1,000 layers x 4 x (2**19)**2 attention alone = 1.1e15
    path = write(tmp_path, "llama", {"num_hidden_layers": 1000, "hidden_size": 2**19, "num_attention_heads": 2**12,
                                     "num_key_value_heads": 2**12})
    msg = assert_cli_refuses(fit(path), needle="parameters")
    assert f"{PARAMS.limit:,}" in msg


# --- 2. keys that do not fit together -------------------------------------------------------

RULES = [
    # attention heads (transformers' repeat_kv; LlamaConfig / Gemma*Config.validate_architecture)
    ("kv-more-than-heads", "llama", {"num_key_value_heads": 64}, "num_key_value_heads"),
    ("kv-not-dividing", "llama", {"num_key_value_heads": 5}, "num_key_value_heads"),
    ("kv-not-dividing-qwen2", "qwen2", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("kv-more-gemma2", "gemma2", {"num_key_value_heads": 32}, "num_key_value_heads"),
    ("kv-more-gemma3-text", "gemma3", {"text_config.num_key_value_heads": 16}, "text_config.num_key_value_heads"),
    ("kv-more-gpt-oss", "gpt_oss", {"num_key_value_heads": 128}, "num_key_value_heads"),
    ("kv-more-nemotron", "nemotron_h", {"num_key_value_heads": 128}, "num_key_value_heads"),
    ("kv-more-falcon", "falcon", {"n_head_kv": 256}, "n_head_kv"),
    ("kv-not-dividing-falcon", "falcon", {"n_head_kv": 7}, "n_head_kv"),
    ("kv-not-dividing-generic", "generic", {"num_key_value_heads": 6}, "num_key_value_heads"),
    ("hidden-not-multiple-llama", "llama", {"hidden_size": 4100}, "hidden_size"),
    ("hidden-not-multiple-llama-head-dim", "llama", {"hidden_size": 4100, "head_dim": 128}, "LlamaConfig"),
    ("hidden-not-multiple-gemma2", "gemma2", {"hidden_size": 3580}, "Gemma2Config"),
    ("hidden-not-multiple-gemma3", "gemma3", {"text_config.hidden_size": 2561}, "text_config.hidden_size"),
    ("hidden-not-multiple-mistral", "mistral", {"hidden_size": 4100}, "head_dim"),
    ("hidden-not-multiple-generic", "generic", {"hidden_size": 4100}, "hidden_size"),
    ("heads-more-than-hidden", "qwen2", {"num_attention_heads": 7168, "num_key_value_heads": 4}, "hidden_size"),
    ("hidden-not-multiple-gpt2", "gpt2", {"n_head": 7}, "n_head"),
    ("hidden-not-multiple-falcon", "falcon", {"n_head": 100, "n_head_kv": 10}, "n_head"),
    ("hidden-not-multiple-deepseek-v2", "deepseek_v2", {"hidden_size": 2047}, "DeepseekV2Config"),
    ("vision-heads", "gemma3", {"vision_config.num_attention_heads": 7}, "vision_config.num_attention_heads"),
    ("vision-patch-over-image", "gemma3", {"vision_config.patch_size": 1000}, "patch_size"),
    ("gpt-oss-derived-head", "gpt_oss", {"head_dim": DELETE, "hidden_size": 2881}, "hidden_size"),
    # rotary embeddings (transformers' validate_rope)
    ("odd-head-dim", "qwen3", {"head_dim": 127}, "head_dim"),
    ("odd-derived-head", "qwen2", {"hidden_size": 28 * 65}, "odd"),
    ("odd-head-gpt-oss", "gpt_oss", {"head_dim": 65}, "head_dim"),
    ("odd-rope-deepseek", "deepseek_v3", {"qk_rope_head_dim": 63}, "qk_rope_head_dim"),
    ("odd-head-falcon", "falcon", {"hidden_size": 128 * 65}, "odd"),
    ("partial-rotary-over-1", "phi3", {"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ("partial-rotary-zero", "phi3", {"partial_rotary_factor": 0}, "partial_rotary_factor"),
    ("partial-rotary-nan", "llama", {"partial_rotary_factor": NAN}, "partial_rotary_factor"),
    ("partial-rotary-in-rope", "llama", {"rope_scaling.partial_rotary_factor": -0.5}, "rope_scaling.partial_rotary_factor"),
    ("partial-rotary-string", "qwen3", {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": "1"}},
     "partial_rotary_factor"),
    ("rope-scaling-not-object", "llama", {"rope_scaling": "llama3"}, "rope_scaling"),
    ("rope-parameters-list", "mistral", {"rope_parameters": [1, 2]}, "rope_parameters"),
    # experts (torch.topk over the router's scores; DeepSeek's grouped routing)
    ("mixtral-top-k", "mixtral", {"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ("qwen3-moe-top-k", "qwen3_moe", {"num_experts_per_tok": 129}, "num_experts_per_tok"),
    ("gpt-oss-top-k", "gpt_oss", {"num_experts_per_tok": 33}, "num_experts_per_tok"),
    ("gpt-oss-top-k-alias", "gpt_oss", {"num_experts_per_tok": DELETE, "experts_per_token": 40}, "experts_per_token"),
    ("deepseek-top-k", "deepseek_v3", {"num_experts_per_tok": 257}, "num_experts_per_tok"),
    ("deepseek-n-group-not-dividing", "deepseek_v3", {"n_group": 7}, "n_group"),
    ("deepseek-groups-of-one", "deepseek_v3", {"n_group": 256, "topk_group": 4}, "n_group"),
    ("deepseek-topk-group-over", "deepseek_v3", {"topk_group": 9}, "topk_group"),
    ("deepseek-top-k-over-kept-groups", "deepseek_v3", {"topk_group": 1, "num_experts_per_tok": 33}, "topk_group"),
    ("deepseek-v2-groups", "deepseek_v2", {"topk_method": "group_limited_greedy", "n_group": 5}, "n_group"),
    ("nemotron-top-k", "nemotron_h", {"hybrid_override_pattern": "M-E*", "n_routed_experts": 8,
                                      "moe_intermediate_size": 512, "num_experts_per_tok": 9},
     "num_experts_per_tok"),
    ("nemotron-groups", "nemotron_h", {"mamba_num_heads": 250}, "mamba_num_heads"),
    # lists
    ("mlp-only-not-list", "qwen3_moe", {"mlp_only_layers": "abc"}, "mlp_only_layers"),
    ("mlp-only-int", "qwen3_moe", {"mlp_only_layers": 3}, "mlp_only_layers"),
    ("mlp-only-object", "qwen3_moe", {"mlp_only_layers": {"0": 1}}, "mlp_only_layers"),
    ("mlp-only-out-of-range", "qwen3_moe", {"mlp_only_layers": [94]}, "mlp_only_layers"),
    ("mlp-only-negative", "qwen3_moe", {"mlp_only_layers": [-1]}, "mlp_only_layers"),
    ("mlp-only-floats", "qwen3_moe", {"mlp_only_layers": [1.5]}, "mlp_only_layers"),
    ("mlp-only-bools", "qwen3_moe", {"mlp_only_layers": [True]}, "mlp_only_layers"),
    ("layer-types-short", "gpt_oss", {"layer_types": ["full_attention"] * 3}, "layer_types"),
    ("layer-types-unknown", "llama", {"layer_types": ["nope"] * 32}, "layer_types"),
    ("layer-types-string", "llama", {"layer_types": "full_attention"}, "layer_types"),
    ("layer-types-numbers", "qwen3", {"layer_types": [1] * 36}, "layer_types"),
    ("nemotron-pattern-bad-char", "nemotron_h", {"hybrid_override_pattern": "MX"}, "hybrid_override_pattern"),
    ("nemotron-pattern-empty", "nemotron_h", {"hybrid_override_pattern": ""}, "hybrid_override_pattern"),
    ("nemotron-pattern-number", "nemotron_h", {"hybrid_override_pattern": 5}, "hybrid_override_pattern"),
    ("nemotron-pattern-too-long", "nemotron_h", {"hybrid_override_pattern": "M-" * 501}, "1,000"),
    ("nemotron-blocks-unhashable", "nemotron_h", {"hybrid_override_pattern": DELETE, "layers_block_type": [{}]},
     "layers_block_type"),
    ("nemotron-blocks-number", "nemotron_h", {"hybrid_override_pattern": DELETE, "layers_block_type": ["mamba", 5]},
     "layers_block_type"),
    ("nemotron-blocks-empty", "nemotron_h", {"hybrid_override_pattern": DELETE, "layers_block_type": []},
     "layers_block_type"),
    ("nemotron-blocks-too-many", "nemotron_h", {"hybrid_override_pattern": DELETE,
                                                "layers_block_type": ["mlp"] * 1001}, "layers_block_type"),
    # other single keys
    ("sliding-window-negative", "mistral", {"sliding_window": -4096}, "sliding_window"),
    ("sliding-window-gemma2", "gemma2", {"sliding_window": -1}, "sliding_window"),
    ("sliding-window-float", "phi3", {"sliding_window": 2047.5}, "sliding_window"),
    ("chunk-negative", "llama", {"attention_chunk_size": -8192}, "attention_chunk_size"),
    ("sliding-pattern-zero", "gemma2", {"sliding_window_pattern": 0}, "sliding_window_pattern"),
    ("use-sliding-string", "qwen2", {"use_sliding_window": "true"}, "use_sliding_window"),
    ("tie-string", "llama", {"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ("tie-two", "llama", {"tie_word_embeddings": 2}, "tie_word_embeddings"),
    ("dropout-over-1", "gpt2", {"resid_pdrop": 1.5}, "resid_pdrop"),
    ("dropout-nan", "gpt2", {"embd_pdrop": NAN}, "embd_pdrop"),
    ("dtype-unknown", "llama", {"torch_dtype": "int8"}, "torch_dtype"),
    ("dtype-number", "llama", {"torch_dtype": 16}, "torch_dtype"),
    ("dtype-object", "llama", {"torch_dtype": {"a": 1}}, "torch_dtype"),
    ("model-type-number", "llama", {"model_type": 5}, "model_type"),
    ("model-type-list", "llama", {"model_type": ["llama"]}, "model_type"),
    ("text-config-string", "gemma3", {"text_config": "x"}, "text_config"),
    ("vision-config-list", "gemma3", {"vision_config": []}, "vision_config"),
    ("generic-missing-keys", "generic", {"vocab_size": DELETE, "intermediate_size": DELETE}, "vocab_size"),
    ("missing-hidden", "llama", {"hidden_size": DELETE}, "hidden_size"),
    ("missing-mla-rank", "deepseek_v3", {"kv_lora_rank": DELETE}, "kv_lora_rank"),
    ("v-head-dim-zero", "deepseek_v2", {"v_head_dim": 0}, "v_head_dim"),
    ("q-lora-rank-zero", "deepseek_v3", {"q_lora_rank": 0}, "q_lora_rank"),
    ("mamba-chunk-alias", "nemotron_h", {"chunk_size": DELETE, "mamba_chunk_size": -1}, "mamba_chunk_size"),
]


@pytest.mark.parametrize("family,changes,needle", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_keys_that_do_not_fit_together_are_refused(tmp_path, family, changes, needle):
    assert_cli_refuses(fit(write(tmp_path, family, changes)), needle=needle)


# --- 3. quantization_config ------------------------------------------------------------------

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128}
CT = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
    "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}}}

QUANT = [
    ("gptq-1000-bits", {**GPTQ, "bits": 1000}, "bits"),
    ("gptq-5-bits", {**GPTQ, "bits": 5}, "bits"),
    ("gptq-0-bits", {**GPTQ, "bits": 0}, "bits"),
    ("gptq-bits-string", {**GPTQ, "bits": "4"}, "bits"),
    ("gptq-bits-float", {**GPTQ, "bits": 4.0}, "bits"),
    ("gptq-no-bits", {k: v for k, v in GPTQ.items() if k != "bits"}, "bits"),
    ("gptq-group-0", {**GPTQ, "group_size": 0}, "group_size"),
    ("gptq-group-negative", {**GPTQ, "group_size": -2}, "group_size"),
    ("gptq-group-not-dividing", {**GPTQ, "group_size": 100}, "group_size"),
    ("gptq-group-over-hidden", {**GPTQ, "group_size": 8192}, "group_size"),
    ("gptq-group-float", {**GPTQ, "group_size": 128.0}, "group_size"),
    ("gptq-group-huge", {**GPTQ, "group_size": 2**63}, "group_size"),
    ("gptq-desc-act-string", {**GPTQ, "desc_act": "yes"}, "desc_act"),
    ("awq-16-bits", {**AWQ, "bits": 16}, "bits"),
    ("awq-w-bit", {"quant_method": "awq", "w_bit": 7, "q_group_size": 128}, "w_bit"),
    ("awq-q-group-0", {"quant_method": "awq", "w_bit": 4, "q_group_size": 0}, "q_group_size"),
    ("unknown-method", {"quant_method": "quark"}, "quant_method"),
    ("method-number", {"quant_method": 5}, "quant_method"),
    ("no-method", {"bits": 4}, "quant_method"),
    ("not-an-object", "gptq", "quantization_config"),
    ("fp8-block-zero", {"quant_method": "fp8", "weight_block_size": [0, 128]}, "weight_block_size"),
    ("fp8-block-one", {"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size"),
    ("fp8-block-huge", {"quant_method": "fp8", "weight_block_size": [2**63, 128]}, "weight_block_size"),
    ("fp8-block-string", {"quant_method": "fp8", "weight_block_size": "128x128"}, "weight_block_size"),
    ("bnb-type", {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "int3"},
     "bnb_4bit_quant_type"),
    ("bnb-type-number", {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": 4},
     "bnb_4bit_quant_type"),
    ("bnb-neither", {"quant_method": "bitsandbytes"}, "load_in_4bit"),
    ("bnb-load-string", {"quant_method": "bitsandbytes", "load_in_4bit": "yes"}, "load_in_4bit"),
    ("bnb-double-quant-string", {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                 "bnb_4bit_use_double_quant": "no"}, "bnb_4bit_use_double_quant"),
    ("skip-not-list", {**GPTQ, "modules_to_not_convert": 5}, "modules_to_not_convert"),
    ("skip-numbers", {**GPTQ, "modules_to_not_convert": ["lm_head", 7]}, "modules_to_not_convert"),
    ("skip-too-long", {**GPTQ, "modules_to_not_convert": ["x" * 2000]}, "modules_to_not_convert"),
    ("ct-bits-string", mutate(CT, {"config_groups.group_0.weights.num_bits": "4"}), "num_bits"),
    ("ct-bits-5", mutate(CT, {"config_groups.group_0.weights.num_bits": 5}), "compressed-tensors"),
    ("ct-group-0", mutate(CT, {"config_groups.group_0.weights.group_size": 0}), "group_size"),
    ("ct-group-not-dividing", mutate(CT, {"config_groups.group_0.weights.group_size": 96}), "group_size"),
    ("ct-ignore-not-list", {**CT, "ignore": {"lm_head": True}}, "ignore"),
]


@pytest.mark.parametrize("q,needle", [r[1:] for r in QUANT], ids=[r[0] for r in QUANT])
def test_impossible_quantization_config_is_refused(tmp_path, q, needle):
    assert_cli_refuses(fit(write(tmp_path, "llama", {"quantization_config": q})), needle=needle)


# --- 4. JSON no config holds (sources/parse.py) -------------------------------------------------

def _raw(family: str, key: str, literal: str) -> str:
    """The family's config with `key` set to a JSON literal json.dumps cannot write."""
    text = json.dumps(mutate(base(family), {key: "@@"}))
    return text.replace('"@@"', literal)


RAW = [
    ("5000-digit-size", _raw("llama", "hidden_size", "1" + "0" * 5000), "5,001 digits"),
    ("5000-digit-unread", _raw("llama", "some_counter", "-" + "9" * 4301), "digits"),
    ("nested-100", _raw("llama", "extra", "[" * 100 + "]" * 100), "levels"),
    ("nested-100000", _raw("llama", "extra", "[" * 100_000 + "]" * 100_000), "levels"),
    ("surrogate-model-type", _raw("llama", "model_type", '"llama\\ud800"'), "surrogate"),
    ("surrogate-key", json.dumps(base("llama"))[:-1] + ', "\\udfff": 1}', "surrogate"),
    ("surrogate-nested", _raw("gemma3", "text_config", '{"hidden_size": 2560, "x": ["\\udc80"]}'), "text_config.x[0]"),
    ("nan-literal-layers", _raw("llama", "num_hidden_layers", "NaN"), "num_hidden_layers"),
    ("minus-infinity-vocab", _raw("llama", "vocab_size", "-Infinity"), "vocab_size"),
    ("1e999-hidden", _raw("llama", "hidden_size", "1e999"), "hidden_size"),
    ("not-json", '{"model_type": "llama",', "not valid JSON"),
    ("top-level-list", "[1, 2]", "not an object"),
]


@pytest.mark.parametrize("text,needle", [r[1:] for r in RAW], ids=[r[0] for r in RAW])
def test_json_no_config_holds_is_refused(tmp_path, text, needle):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert_cli_refuses(fit(str(path)), needle=needle)


# --- 5. the same through the Python API ----------------------------------------------------

API = [
    ("llama", {"num_key_value_heads": 64}, "num_key_value_heads"),
    ("llama", {"num_hidden_layers": 10**5}, "1,000"),
    ("llama", {"vocab_size": 0}, "vocab_size"),
    ("llama", {"hidden_size": 1e308}, "hidden_size"),
    ("llama", {"head_dim": 0}, "head_dim"),
    ("mixtral", {"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ("qwen3_moe", {"num_experts_per_tok": 200}, "num_experts_per_tok"),
    ("qwen3_moe", {"mlp_only_layers": "abc"}, "mlp_only_layers"),
    ("deepseek_v3", {"n_group": 7}, "n_group"),
    ("gpt_oss", {"num_experts_per_tok": 33}, "num_experts_per_tok"),
    ("llama", {"quantization_config": GPTQ | {"bits": 1000}}, "bits"),
    ("nemotron_h", {"n_groups": 3}, "mamba_num_heads"),
    ("gemma3", {"text_config.num_attention_heads": 3}, "num_key_value_heads"),
    ("falcon", {"n_head_kv": 256}, "n_head_kv"),
    ("gpt2", {"n_embd": 770}, "n_embd"),
]


@pytest.mark.parametrize("family,changes,needle", API, ids=[f"{f}-{n}" for f, _, n in API])
def test_api_raises_badconfig(tmp_path, family, changes, needle):
    assert_api_refuses(vramplan.api.plan, write(tmp_path, family, changes), "l40s", exc=BadConfig, needle=needle)


@pytest.mark.parametrize("family,changes,needle", API[:6], ids=[f"{f}-{n}" for f, _, n in API[:6]])
def test_models_parse_raises_badconfig_for_python_dicts(family, changes, needle):
    # a caller's dict can hold what JSON cannot: a 5,000-digit int, a lone surrogate
    assert_api_refuses(parse, mutate(base(family), changes), exc=BadConfig, needle=needle)


def test_python_dict_values_json_cannot_hold():
    cfg = base("llama")
    e = assert_api_refuses(parse, dict(cfg, hidden_size=10**5000), exc=BadConfig, needle="hidden_size")
    assert "about 5,001 digits" in str(e)         # str() of the int itself would raise ValueError
    e = assert_api_refuses(parse, dict(cfg, model_type="llama\ud800", hidden_size=-1), exc=BadConfig)
    str(e).encode("utf-8")                         # printable: the surrogate is escaped


# --- 6. the trace tier: transformers' own refusals are one sentence -----------------------------

def test_trace_build_refusal_is_one_badconfig_sentence():
    pytest.importorskip("transformers")
    from vramplan.trace import build

    raw = json.loads((ROOT / "tests/data/tiny_llama.json").read_text())
    # keys the analytic reader does not size with, which transformers' strict config checks
    for key, value, needle in [("initializer_range", 5.0, "initializer_range"),
                               ("rms_norm_eps", "small", "rms_norm_eps")]:
        with pytest.raises(BadConfig) as e:
            build.build(dict(raw, **{key: value}), "acme/tiny", "bf16")
        msg = str(e.value)
        assert needle in msg and "transformers cannot build acme/tiny" in msg and "\n" not in msg
        assert "analytic" not in msg


def test_trace_refuses_impossible_models_before_building(tmp_path):
    # the analytic reader refuses first: no advice to use the tier that answered
    path = write(tmp_path, "llama", {"num_key_value_heads": 5})
    e = assert_api_refuses(vramplan.api.plan, path, "l40s", method="trace", exc=BadConfig,
                           needle="num_key_value_heads")
    assert "analytic" not in str(e)


# --- 7. valid edge configs still parse and plan --------------------------------------------------

def test_explicit_head_dim_may_differ_from_hidden_over_heads():
    # Mistral and Qwen: any explicit head_dim (transformers checks nothing more), 4100 / 32 not whole
    spec = parse(mutate(base("mistral"), {"hidden_size": 4100, "head_dim": 128}))
    assert spec.layers[0].mixer.head_dim == 128
    assert {t.name: t.shape for t in spec.layers[0].tensors}["model.layers.0.self_attn.q_proj"] == (32 * 128, 4100)
    # Llama: head_dim 64 is not 4096 / 32 = 128, allowed while hidden_size divides by the heads
    assert parse(mutate(base("llama"), {"head_dim": 64})).layers[0].mixer.head_dim == 64
    # Qwen3-0.6B ships head_dim 128 with hidden 1024 / 16 heads = 64
    spec = parse(json.loads((ROOT / "configs/models/Qwen--Qwen3-0.6B.json").read_text()))
    assert spec.layers[0].mixer.head_dim == 128


@pytest.mark.parametrize("name", ["meta-llama--Llama-3.1-405B", "deepseek-ai--DeepSeek-V3",
                                  "nvidia--Nemotron-H-56B-Base-8K", "openai--gpt-oss-120b",
                                  "google--gemma-3-27b-it", "mistralai--Mixtral-8x7B-v0.1"])
def test_largest_bundled_models_plan(name):
    with deadline():
        p = vramplan.api.plan(str(ROOT / "configs/models" / f"{name}.json"), "h100:8", tp=8)
    assert p.total_bytes > 0


def test_values_at_their_bounds_are_accepted():
    with deadline():                             # ~0.1 s: the bound keeps the loops short
        spec = parse(mutate(base("llama"), {"num_hidden_layers": 1000, "max_position_embeddings": 2**30,
                                            "vocab_size": 2**24}))
    assert spec.num_layers == 1000 and spec.vocab_size == 2**24
    assert parse(mutate(base("deepseek_v3"), {"n_routed_experts": 2**14, "n_group": 8})).params > 0


def test_lenient_values_real_configs_use():
    # sliding_window 0 or null means no window (Qwen configs with use_sliding_window false)
    spec = parse(mutate(base("mistral"), {"sliding_window": 0}))
    assert {layer.mixer.kind for layer in spec.layers} == {"full"}
    # bare Infinity / NaN in keys that do not size anything (Nemotron-H's time_step_limit)
    raw = (ROOT / BASE["nemotron_h"]).read_text()
    assert "Infinity" in raw
    assert parse(json.loads(raw)).num_layers == 118
    assert parse(mutate(base("llama"), {"initializer_range": NAN})).params == 8_030_261_248
    # V3 without n_group / topk_group takes DeepseekV3Config's 8 and 4 (256 experts: 8 groups of 32)
    parse(mutate(base("deepseek_v3"), {"n_group": DELETE, "topk_group": DELETE}))
    # 0 experts in Qwen3-MoE: every layer dense
    spec = parse(mutate(base("qwen3_moe"), {"num_experts": 0}))
    assert {layer.mlp.kind for layer in spec.layers} == {"dense"}


def test_gptq_without_group_size_takes_transformers_default():
    q = parse(mutate(base("llama"), {"quantization_config": {"quant_method": "gptq", "bits": 4}})).quantization
    assert (q.group_size, q.bits) == (128, 4)        # GPTQConfig(group_size=128)
    q = parse(mutate(base("llama"), {"quantization_config": {**GPTQ, "group_size": -1}})).quantization
    assert q.group_size is None                      # -1: one group per row


def test_skip_pattern_of_many_stars_does_not_hang(tmp_path):
    # '*' * 30 + 'Z' backtracked over every split of each module name (8 stars: 1.6 s a name)
    q = {**GPTQ, "modules_to_not_convert": ["*" * 30 + "Z", "lm_head"]}
    spec = parse(mutate(base("llama"), {"quantization_config": q}))
    assert spec.quantization.skip == ("*Z", "lm_head")
    with deadline():                             # a hang fails here; answers in milliseconds
        vramplan.api.plan(write(tmp_path, "llama", {"quantization_config": q}), "l40s")


def test_at_least_130_cases():
    n = (len(list(size_cases())) + len(OVER) + len(RULES) + len(QUANT) + len(RAW) + len(API) + 6)
    assert n >= 130, n


def test_every_bound_is_written_in_the_docs_with_its_reason():
    """docs/validation.md lists every key that has a bound, and each bound's reason (the text the
    refusal prints)."""
    doc = (ROOT / "docs/validation.md").read_text()
    section = doc[doc.index("## Model configs"):]
    missing = [key for key in BOUNDS if key.lstrip("_") not in section]
    assert not missing, missing
    for bound in {*BOUNDS.values(), PARAMS}:
        assert bound.reason.split(",")[0].split("(")[0].strip() in section, bound.reason
