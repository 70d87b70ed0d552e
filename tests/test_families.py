"""vramplan.models: config.json -> ModelSpec, checked against transformers to the parameter.

The reference numbers (shared/reference/expected.json) were computed with transformers 5.23 on the
meta device: unique parameters of AutoModelForCausalLM.from_config, KV bytes per token in bf16
over all attention layers, and the cache layer classes DynamicCache builds. They are copied
into EXPECTED below so the suite runs without the shared directory; when it is present the copy
is checked against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from vramplan.errors import BadConfig
from vramplan.models import parse
from vramplan.spec import Attention, Recurrent

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "models"
SHARED_EXPECTED = Path("/work/shared/reference/expected.json")

# name: (params, kv_bytes_per_token_bf16, cache_layer_kinds)
EXPECTED = {
    "Qwen--Qwen2.5-0.5B": (494_032_768, 12_288, {"DynamicLayer": 24}),
    "Qwen--Qwen2.5-1.5B": (1_543_714_304, 28_672, {"DynamicLayer": 28}),
    "Qwen--Qwen2.5-32B": (32_763_876_352, 262_144, {"DynamicLayer": 64}),
    "Qwen--Qwen2.5-3B": (3_085_938_688, 36_864, {"DynamicLayer": 36}),
    "Qwen--Qwen2.5-72B": (72_706_203_648, 327_680, {"DynamicLayer": 80}),
    "Qwen--Qwen2.5-7B": (7_615_616_512, 57_344, {"DynamicLayer": 28}),
    "Qwen--Qwen3-0.6B": (596_049_920, 114_688, {"DynamicLayer": 28}),
    "Qwen--Qwen3-1.7B": (1_720_574_976, 114_688, {"DynamicLayer": 28}),
    "Qwen--Qwen3-14B": (14_768_307_200, 163_840, {"DynamicLayer": 40}),
    "Qwen--Qwen3-32B": (32_762_123_264, 262_144, {"DynamicLayer": 64}),
    "Qwen--Qwen3-8B": (8_190_735_360, 147_456, {"DynamicLayer": 36}),
    "deepseek-ai--DeepSeek-V3": (671_026_404_352, 70_272, {"DynamicLayer": 61}),
    "google--gemma-3-27b-it": (27_432_406_640, 507_904, {"DynamicSlidingWindowLayer": 52, "DynamicLayer": 10}),
    "google--gemma-3-4b-it": (4_300_079_472, 139_264, {"DynamicSlidingWindowLayer": 29, "DynamicLayer": 5}),
    "meta-llama--Llama-2-13b-hf": (13_015_864_320, 819_200, {"DynamicLayer": 40}),
    "meta-llama--Llama-2-7b-hf": (6_738_415_616, 524_288, {"DynamicLayer": 32}),
    "meta-llama--Llama-3.1-405B": (405_853_388_800, 516_096, {"DynamicLayer": 126}),
    "meta-llama--Llama-3.1-70B": (70_553_706_496, 327_680, {"DynamicLayer": 80}),
    "meta-llama--Llama-3.1-8B": (8_030_261_248, 131_072, {"DynamicLayer": 32}),
    "meta-llama--Llama-3.2-1B-Instruct": (1_235_814_400, 32_768, {"DynamicLayer": 16}),
    "meta-llama--Llama-3.2-3B": (3_212_749_824, 114_688, {"DynamicLayer": 28}),
    "meta-llama--Llama-3.2-3B-Instruct": (3_212_749_824, 114_688, {"DynamicLayer": 28}),
    "meta-llama--Llama-3.3-70B-Instruct": (70_553_706_496, 327_680, {"DynamicLayer": 80}),
    "meta-llama--Meta-Llama-3-70B": (70_553_706_496, 327_680, {"DynamicLayer": 80}),
    "meta-llama--Meta-Llama-3-8B": (8_030_261_248, 131_072, {"DynamicLayer": 32}),
    "microsoft--Phi-3-mini-4k-instruct": (3_821_079_552, 393_216, {"DynamicSlidingWindowLayer": 32}),
    "mistralai--Mistral-7B-Instruct-v0.3": (7_248_023_552, 131_072, {"DynamicLayer": 32}),
    "mistralai--Mistral-7B-v0.1": (7_241_732_096, 131_072, {"DynamicSlidingWindowLayer": 32}),
    "mistralai--Mixtral-8x7B-v0.1": (46_702_792_704, 131_072, {"DynamicLayer": 32}),
    "nvidia--Nemotron-H-56B-Base-8K": (56_324_350_464, 40_960,
                                       {"LinearAttentionLayer": 54, "DummyLayer": 54, "DynamicLayer": 10}),
    "openai--gpt-oss-120b": (116_829_156_672, 73_728, {"DynamicSlidingWindowLayer": 18, "DynamicLayer": 18}),
    "openai--gpt-oss-20b": (20_914_757_184, 49_152, {"DynamicSlidingWindowLayer": 12, "DynamicLayer": 12}),
    "openai-community--gpt2": (124_439_808, 36_864, {"DynamicLayer": 12}),
    "openai-community--gpt2-large": (774_030_080, 184_320, {"DynamicLayer": 36}),
}

ROLES = {"linear", "expert", "embedding", "lm_head", "norm", "bias", "router", "conv", "other"}


def load(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def spec_of(name: str):
    return parse(load(name), model_id=name.replace("--", "/"), source="bundled")


def kv_bytes_bf16(spec) -> int:
    return sum(layer.mixer.kv_elems_per_token * 2 for layer in spec.attention_layers)


def cache_kinds(spec) -> dict[str, int]:
    """transformers' cache layer classes: sliding -> DynamicSlidingWindowLayer, full/MLA ->
    DynamicLayer, Mamba -> LinearAttentionLayer, a block without a token mixer -> DummyLayer."""
    c: Counter = Counter()
    for layer in spec.layers:
        m = layer.mixer
        if m is None:
            c["DummyLayer"] += 1
        elif isinstance(m, Recurrent):
            c["LinearAttentionLayer"] += 1
        elif m.kind in ("sliding", "chunked"):
            c["DynamicSlidingWindowLayer"] += 1
        else:
            c["DynamicLayer"] += 1
    return dict(c)


# --- the reference models, exactly ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_exact(name):
    assert spec_of(name).params == EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kv_bytes_per_token_exact(name):
    assert kv_bytes_bf16(spec_of(name)) == EXPECTED[name][1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cache_layer_kinds(name):
    assert cache_kinds(spec_of(name)) == EXPECTED[name][2]


@pytest.mark.skipif(not SHARED_EXPECTED.exists(), reason="shared reference directory not mounted")
def test_expected_table_matches_shared_reference():
    ref = json.loads(SHARED_EXPECTED.read_text())["models"]
    for name, (params, kv, kinds) in EXPECTED.items():
        assert ref[name]["params"] == params
        assert ref[name]["kv_bytes_per_token_bf16"] == kv
        assert ref[name]["cache_layer_kinds"] == kinds
    with_kinds = {n for n, v in ref.items() if "cache_layer_kinds" in v}
    assert with_kinds == set(EXPECTED)


def test_every_bundled_config_parses():
    # the speed budget (0.1 s for all of them) is benchmarks/bench_core.py's
    configs = {p.stem: json.loads(p.read_text()) for p in sorted(CONFIGS.glob("*.json"))}
    assert len(configs) >= 35
    refused = set()
    for name, cfg in configs.items():
        try:
            assert parse(cfg, model_id=name).params > 0
        except BadConfig:
            refused.add(cfg["model_type"])
    # bundled configs the analytic reader refuses with its reason (encoder-only, Gated DeltaNet,
    # DeepSeek's sparse-attention indexer, Gemma 4's per-layer embeddings): exactly these
    assert refused == {"gemma4", "qwen3_5", "qwen3_5_moe", "qwen3_next", "deepseek_v32", "xlm-roberta"}


def test_imports_nothing_heavy():
    code = ("import sys, vramplan.models; "
            "print(','.join(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", sorted(EXPECTED) + ["tiiuae--falcon-40b"])
def test_tensor_invariants(name):
    spec = spec_of(name)
    names = [t.name for t in spec.all_tensors()]
    assert len(names) == len(set(names)), "tensor names must be unique"
    assert all(t.role in ROLES for t in spec.all_tensors())
    assert all(not n.endswith(".weight") for n in names)
    # a module bias is "<module>.bias"; bare bias parameters keep their own names (gate_up_proj_bias)
    assert all(t.name.endswith("bias") for t in spec.all_tensors() if t.role == "bias")
    assert [layer.index for layer in spec.layers] == list(range(spec.num_layers))
    assert (not spec.tie_word_embeddings) == any(t.role == "lm_head" for t in spec.tensors)
    assert spec.source == "bundled" and spec.id == name.replace("--", "/")


# --- Falcon-40B (old RefinedWeb config, no transformers reference run) ------------------------

def test_falcon_40b_derivation():
    # tiiuae/falcon-40b: model_type "RefinedWeb" -> new_decoder_architecture=True (transformers'
    # conversion of the custom-code config), hidden 8192, n_head 128, n_head_kv 8, n_layer 60,
    # vocab 65024, bias false, parallel_attn true. head_dim = 8192 / 128 = 64.
    # FalconDecoderLayer (new architecture, num_ln_in_parallel_attn defaults to 2):
    #   self_attention.query_key_value  (128 + 2*8) * 64 = 9216 x 8192     =  75,497,472
    #   self_attention.dense            8192 x 8192                        =  67,108,864
    #   mlp.dense_h_to_4h               32768 x 8192                       = 268,435,456
    #   mlp.dense_4h_to_h               8192 x 32768                       = 268,435,456
    #   ln_attn, ln_mlp (LayerNorm weight + bias)   4 x 8192               =      32,768
    #                                                              layer   = 679,510,016
    #   60 layers                                                          = 40,770,600,960
    #   transformer.word_embeddings     65024 x 8192                       =    532,676,608
    #   transformer.ln_f                2 x 8192                           =         16,384
    #   unique parameters (lm_head tied to word_embeddings)                = 41,303,293,952
    # FalconConfig sets no tie_word_embeddings, so PretrainedConfig's default (true) holds and
    # FalconForCausalLM shares lm_head.weight with word_embeddings: model.parameters() counts it
    # once. The published 41.8B and expected.json's note (total_size of the bf16 .bin index / 2
    # = 41,835,970,560) count the lm_head a second time: transformers 4.27 wrote both keys and
    # its shard index did not de-duplicate shared storage. 41,303,293,952 + 532,676,608
    # = 41,835,970,560 exactly, so the structure above is the checkpoint's.
    spec = spec_of("tiiuae--falcon-40b")
    assert spec.family == "falcon" and spec.model_type == "RefinedWeb"
    assert spec.tie_word_embeddings
    assert spec.params == 41_303_293_952
    assert spec.params + 65024 * 8192 == 41_835_970_560
    layer = spec.layers[0]
    assert layer.params == 679_510_016
    assert {t.leaf for t in layer.tensors} >= {"query_key_value", "dense", "dense_h_to_4h",
                                                "dense_4h_to_h", "ln_attn", "ln_mlp"}
    assert not any(t.role == "bias" and "self_attention" in t.name for t in layer.tensors)
    # KV: 60 layers x 2 (K, V) x 8 KV heads x 64 x 2 bytes = 122,880 B/token in bf16
    assert kv_bytes_bf16(spec) == 122_880
    assert cache_kinds(spec) == {"DynamicLayer": 60}


def test_falcon_7b_refinedwebmodel():
    # tiiuae/falcon-7b's config (model_type "RefinedWebModel": multi-query, one input_layernorm).
    # transformers counts 6,921,720,704 parameters (the well-known peft print-out for it,
    # "all params: 6,926,439,296" with 4,718,592 LoRA parameters on query_key_value):
    #   per layer: qkv (4544 + 2*64) x 4544 + dense 4544^2 + MLP 2 x 4544 x 18176 + LN 2 x 4544
    #            = 21,229,568 + 20,647,936 + 165,183,488 + 9,088 = 207,070,080; x 32 layers
    #   + word_embeddings 65024 x 4544 + ln_f 9,088 (lm_head tied)
    cfg = {"alibi": False, "bias": False, "hidden_size": 4544, "model_type": "RefinedWebModel",
           "multi_query": True, "n_head": 71, "n_layer": 32, "parallel_attn": True,
           "torch_dtype": "bfloat16", "vocab_size": 65024}
    spec = parse(cfg)
    assert spec.params == 6_921_720_704
    assert spec.layers[0].mixer.num_kv_heads == 1
    assert kv_bytes_bf16(spec) == 32 * 2 * 64 * 2


def test_falcon_new_keys_match_old_keys():
    old = load("tiiuae--falcon-40b")
    new = {"model_type": "falcon", "new_decoder_architecture": True, "hidden_size": 8192,
           "num_attention_heads": 128, "num_kv_heads": 8, "num_hidden_layers": 60,
           "vocab_size": 65024, "bias": False, "parallel_attn": True, "torch_dtype": "bfloat16"}
    assert parse(new).params == parse(old).params
    # bias=True puts a bias on every linear; parallel_attn=False gives two norms in sequence
    b = parse(dict(new, bias=True, num_hidden_layers=1))
    assert sum(t.numel for t in b.all_tensors() if t.role == "bias" and ".h." in t.name) == \
        9216 + 8192 + 32768 + 8192 + 2 * 8192


# --- families without a bundled reference config, against published counts -------------------

def test_qwen3_moe_30b_a3b():
    # Qwen/Qwen3-30B-A3B: 30,532,122,624 parameters (model card: 30.5B total, 3.3B active)
    cfg = dict(model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
               num_key_value_heads=4, head_dim=128, vocab_size=151936, moe_intermediate_size=768,
               num_experts=128, num_experts_per_tok=8, intermediate_size=6144, tie_word_embeddings=False,
               decoder_sparse_step=1, mlp_only_layers=[], torch_dtype="bfloat16")
    spec = parse(cfg)
    assert spec.params == 30_532_122_624
    mlp = spec.layers[0].mlp
    assert (mlp.kind, mlp.num_experts, mlp.top_k, mlp.intermediate) == ("moe", 128, 8, 768)
    dense = parse(dict(cfg, mlp_only_layers=[0])).layers[0]
    assert dense.mlp.kind == "dense" and dense.mlp.intermediate == 6144


@pytest.mark.parametrize("hidden,inter,layers,heads,kv,params", [
    (2304, 9216, 26, 8, 4, 2_614_341_888),     # google/gemma-2-2b
    (3584, 14336, 42, 16, 8, 9_241_705_984),   # google/gemma-2-9b
])
def test_gemma2(hidden, inter, layers, heads, kv, params):
    cfg = dict(model_type="gemma2", hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv, head_dim=256, vocab_size=256000,
               sliding_window=4096, torch_dtype="float32")
    spec = parse(cfg)
    assert spec.params == params and spec.tie_word_embeddings
    assert [l.mixer.kind for l in spec.layers[:4]] == ["sliding", "full", "sliding", "full"]
    assert spec.layers[0].mixer.window == 4096


def test_deepseek_v2_lite_q_proj_without_lora():
    # deepseek-ai/DeepSeek-V2-Lite: q_lora_rank null -> a plain q_proj; 15,706,484,224 parameters
    cfg = dict(model_type="deepseek_v2", hidden_size=2048, num_hidden_layers=27, num_attention_heads=16,
               num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
               qk_rope_head_dim=64, v_head_dim=128, intermediate_size=10944, moe_intermediate_size=1408,
               n_routed_experts=64, n_shared_experts=2, first_k_dense_replace=1, num_experts_per_tok=6,
               moe_layer_freq=1, vocab_size=102400, torch_dtype="bfloat16")
    spec = parse(cfg)
    assert spec.params == 15_706_484_224
    leaves = {t.leaf for t in spec.layers[1].tensors}
    assert "q_proj" in leaves and "q_a_proj" not in leaves
    assert spec.layers[0].mlp.kind == "dense" and spec.layers[1].mlp.shared_intermediate == 2 * 1408
    assert kv_bytes_bf16(spec) == 27 * (512 + 64) * 2


# --- structure and names ----------------------------------------------------------------------

def test_llama_names_and_roles():
    spec = spec_of("meta-llama--Llama-3.1-8B")
    t = {x.name: x for x in spec.all_tensors()}
    assert t["model.layers.3.self_attn.q_proj"].shape == (4096, 4096)
    assert t["model.layers.3.self_attn.k_proj"].shape == (1024, 4096)
    assert t["model.layers.3.mlp.down_proj"].shape == (4096, 14336)
    assert t["model.embed_tokens"].role == "embedding" and t["lm_head"].role == "lm_head"
    assert t["model.norm"].role == "norm"
    assert spec.torch_dtype == "bf16" and spec.quantization is None and spec.warnings == ()


def test_tied_embeddings_follow_the_config():
    assert spec_of("meta-llama--Llama-3.2-1B-Instruct").tie_word_embeddings
    assert spec_of("Qwen--Qwen2.5-0.5B").tie_word_embeddings
    assert not spec_of("Qwen--Qwen2.5-7B").tie_word_embeddings
    assert spec_of("openai-community--gpt2").tie_word_embeddings
    assert spec_of("google--gemma-3-4b-it").tie_word_embeddings


def test_qwen2_biases_on_qkv_only():
    spec = spec_of("Qwen--Qwen2.5-7B")
    biases = {t.name for t in spec.layers[0].tensors if t.role == "bias"}
    assert biases == {f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv"}


def test_qwen3_qk_norm_and_explicit_head_dim():
    spec = spec_of("Qwen--Qwen3-0.6B")     # hidden 1024, 16 heads, head_dim 128 (not 64)
    a = spec.layers[0].mixer
    assert (a.num_heads, a.num_kv_heads, a.head_dim) == (16, 8, 128)
    shapes = {t.leaf: t.shape for t in spec.layers[0].tensors}
    assert shapes["q_norm"] == (128,) and shapes["q_proj"] == (2048, 1024)


def test_sliding_windows():
    assert {l.mixer.window for l in spec_of("mistralai--Mistral-7B-v0.1").layers} == {4096}
    assert {l.mixer.kind for l in spec_of("mistralai--Mistral-7B-Instruct-v0.3").layers} == {"full"}
    assert {l.mixer.window for l in spec_of("microsoft--Phi-3-mini-4k-instruct").layers} == {2047}
    g = spec_of("google--gemma-3-27b-it")
    assert [i for i, l in enumerate(g.layers) if l.mixer.kind == "full"] == [5, 11, 17, 23, 29, 35, 41, 47, 53, 59]
    assert {l.mixer.window for l in g.layers if l.mixer.kind == "sliding"} == {1024}
    o = spec_of("openai--gpt-oss-20b")
    assert [l.mixer.kind for l in o.layers[:2]] == ["sliding", "full"] and o.layers[0].mixer.window == 128


def test_qwen2_sliding_window_rules():
    base = load("Qwen--Qwen2.5-0.5B")
    # use_sliding_window false: even an explicit sliding layer type caches every token
    lt = ["sliding_attention"] * 24
    assert {l.mixer.kind for l in parse(dict(base, layer_types=lt)).layers} == {"full"}
    on = parse(dict(base, use_sliding_window=True, sliding_window=4096, max_window_layers=20))
    assert [l.mixer.kind for l in on.layers].count("sliding") == 4
    assert on.layers[20].mixer.window == 4096 and on.layers[19].mixer.kind == "full"


def test_phi3_fused_projections():
    t = {x.leaf: x.shape for x in spec_of("microsoft--Phi-3-mini-4k-instruct").layers[0].tensors}
    assert t["qkv_proj"] == (3 * 3072, 3072) and t["gate_up_proj"] == (2 * 8192, 3072)


def test_mixtral_experts():
    layer = spec_of("mistralai--Mixtral-8x7B-v0.1").layers[0]
    t = {x.leaf: x for x in layer.tensors}
    assert t["gate"].role == "router" and t["gate"].shape == (8, 4096)
    assert t["gate_up_proj"].role == "expert" and t["gate_up_proj"].count == 8
    assert t["gate_up_proj"].shape == (2 * 14336, 4096) and t["down_proj"].shape == (4096, 14336)
    assert (layer.mlp.kind, layer.mlp.num_experts, layer.mlp.top_k) == ("moe", 8, 2)


def test_deepseek_v3_structure():
    spec = spec_of("deepseek-ai--DeepSeek-V3")
    assert [l.mlp.kind for l in spec.layers[:4]] == ["dense", "dense", "dense", "moe"]
    a = spec.layers[0].mixer
    assert (a.kind, a.kv_lora_rank, a.rope_dim, a.head_dim, a.v_head_dim) == ("mla", 512, 64, 192, 128)
    moe = spec.layers[3]
    t = {x.name.split("layers.3.", 1)[1]: x for x in moe.tensors}
    assert t["mlp.gate"].shape == (256, 7168) and t["mlp.gate"].role == "router"
    assert t["mlp.experts.gate_up_proj"].count == 256
    assert t["mlp.shared_experts.up_proj"].shape == (2048, 7168)
    assert t["self_attn.kv_a_proj_with_mqa"].shape == (576, 7168)
    assert t["self_attn.kv_b_proj"].shape == (128 * 256, 512)
    assert spec.quantization.method == "fp8" and spec.quantization.block_size == (128, 128)
    assert spec.quantization.pre_quantized
    assert spec.mtp_layers == 1


def test_gpt_oss_layout_and_mxfp4():
    spec = spec_of("openai--gpt-oss-20b")
    t = {x.name.split("layers.0.", 1)[1]: x for x in spec.layers[0].tensors}
    assert t["mlp.experts.gate_up_proj"].shape == (32, 2880, 5760)
    assert t["mlp.experts.down_proj"].shape == (32, 2880, 2880)
    assert t["mlp.experts.gate_up_proj_bias"].shape == (32, 5760)
    assert t["self_attn.sinks"].shape == (64,)
    assert t["mlp.router.bias"].shape == (32,)
    q = spec.quantization
    assert q.method == "mxfp4" and q.pre_quantized
    assert q.skip == ("model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head")
    assert spec.torch_dtype == "fp32" and spec.torch_dtype_assumed is True


def test_gemma3_vision_tower_and_defaults():
    spec = spec_of("google--gemma-3-4b-it")
    assert spec.vocab_size == 262208 and spec.max_position_embeddings == 131072
    a = spec.layers[0].mixer
    assert (a.num_heads, a.num_kv_heads, a.head_dim) == (8, 4, 256)
    names = {t.name: t for t in spec.tensors}
    assert names["model.language_model.embed_tokens"].shape == (262208, 2560)
    assert names["model.vision_tower.vision_model.embeddings.position_embedding"].shape == (4096, 1152)
    assert names["model.vision_tower.vision_model.embeddings.patch_embedding"].shape == (1152, 3, 14, 14)
    assert names["model.multi_modal_projector.mm_input_projection_weight"].shape == (1152, 2560)
    assert "model.multi_modal_projector.mm_soft_emb_norm" in names
    assert not any(".head." in n for n in names)          # vision_use_head false
    assert spec.vision.params == 416_866_032 + 2_950_272
    assert spec.layers[0].tensors[0].name == "model.language_model.layers.0.self_attn.q_proj"


def test_gemma3_text_only():
    cfg = {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
           "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
           "sliding_window": 512, "vocab_size": 262144, "torch_dtype": "bfloat16"}
    spec = parse(cfg)          # google/gemma-3-1b-pt: 999,885,952 parameters
    assert spec.params == 999_885_952
    assert spec.tensors[0].name == "model.embed_tokens"
    assert cache_kinds(spec) == {"DynamicSlidingWindowLayer": 22, "DynamicLayer": 4}


def test_nemotron_h_blocks():
    spec = spec_of("nvidia--Nemotron-H-56B-Base-8K")
    assert spec.num_layers == 118
    # hybrid_override_pattern "M-M-M-M*-M-..." : block 0 Mamba, 1 MLP, 7 attention
    m, mlp, attn = spec.layers[0], spec.layers[1], spec.layers[7]
    assert isinstance(m.mixer, Recurrent) and m.mlp is None
    r = m.mixer
    assert r.conv_channels == 16384 + 2 * 8 * 256 and r.conv_kernel == 4
    assert r.conv_state_elems == 20480 * 3 and r.ssm_state_elems == 256 * 64 * 256
    t = {x.leaf: x for x in m.tensors}
    assert t["in_proj"].shape == (2 * 16384 + 2 * 8 * 256 + 256, 8192)
    assert t["conv1d"].shape == (20480, 1, 4) and t["conv1d"].role == "conv"
    assert t["A_log"].shape == t["D"].shape == t["dt_bias"].shape == (256,)
    assert m.tensors[0].name == "model.layers.0.norm"
    assert mlp.mixer is None and mlp.mlp.kind == "dense" and not mlp.mlp.gated
    assert isinstance(attn.mixer, Attention) and attn.mixer.head_dim == 128 and attn.mlp is None


def test_gpt2_conv1d_as_linear():
    spec = spec_of("openai-community--gpt2")
    t = {x.name: x for x in spec.all_tensors()}
    assert t["transformer.h.0.attn.c_attn"].shape == (2304, 768)
    assert t["transformer.h.0.attn.c_attn.bias"].role == "bias"
    assert t["transformer.wpe"].shape == (1024, 768)
    assert "lm_head" not in t and spec.max_position_embeddings == 1024


# --- errors, fallbacks, quantization ----------------------------------------------------------

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
            intermediate_size=128, torch_dtype="bfloat16")


def test_missing_key_names_key_and_model():
    cfg = dict(TINY, model_type="llama")
    del cfg["num_attention_heads"]
    with pytest.raises(BadConfig) as e:
        parse(cfg, model_id="acme/tiny")
    assert "num_attention_heads" in str(e.value) and "acme/tiny" in str(e.value)


def test_missing_nested_key_names_path():
    with pytest.raises(BadConfig, match="text_config.hidden_size"):
        parse({"model_type": "gemma3", "text_config": {"num_hidden_layers": 2, "intermediate_size": 8}})


def test_bad_value_is_badconfig():
    with pytest.raises(BadConfig, match="hidden_size"):
        parse(dict(TINY, model_type="llama", hidden_size="big"))
    with pytest.raises(BadConfig, match="torch_dtype"):
        parse(dict(TINY, model_type="llama", torch_dtype="int8"))


def test_unknown_model_type_falls_back_labelled_approximate():
    spec = parse(dict(TINY, model_type="acme_lm"))
    assert spec.family == "generic"
    assert spec.confidence == "approximate" and spec.warnings == ()
    assert any("gated MLP" in a for a in spec.assumptions)
    # embed 100x64, lm_head 100x64, final norm 64; per layer 4 x 64x64 + 3 x 128x64 + 2 x 64
    assert spec.params == 2 * 6400 + 64 + 2 * (4 * 4096 + 3 * 8192 + 128)


def test_unknown_model_type_without_keys_is_badconfig():
    with pytest.raises(BadConfig) as e:
        parse({"model_type": "acme_lm", "hidden_size": 64})
    msg = str(e.value)
    assert "acme_lm" in msg
    for k in ("num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
        assert k in msg


def test_explicit_head_dim_beats_hidden_over_heads():
    a = parse(dict(TINY, model_type="llama", head_dim=32)).layers[0].mixer
    assert a.head_dim == 32 and a.kv_elems_per_token == 4 * 64
    b = parse(dict(TINY, model_type="llama")).layers[0].mixer
    assert b.head_dim == 16


def test_missing_dtype_is_fp32_with_note():
    cfg = dict(TINY, model_type="llama")
    del cfg["torch_dtype"]
    spec = parse(cfg)
    # the assumption is recorded; planner.py warns only when a plan really uses fp32
    assert spec.torch_dtype == "fp32" and spec.torch_dtype_assumed is True
    assert parse(dict(cfg, dtype="float16")).torch_dtype == "fp16"     # transformers 5 key


def test_gptq_quantization():
    q = parse(dict(TINY, model_type="llama", quantization_config={
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True})).quantization
    assert (q.method, q.bits, q.group_size, q.desc_act, q.pre_quantized) == ("gptq", 4, 32, True, True)
    q = parse(dict(TINY, model_type="llama", quantization_config={
        "quant_method": "gptq", "bits": 8, "group_size": -1})).quantization
    assert q.group_size is None and q.bits == 8 and not q.desc_act


def test_bnb_4bit_quantization():
    q = parse(dict(TINY, model_type="llama", quantization_config={
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True, "llm_int8_skip_modules": ["lm_head", "mlp.gate"]})).quantization
    assert (q.method, q.bits, q.double_quant, q.skip) == ("nf4", 4, True, ("lm_head", "mlp.gate"))
    q = parse(dict(TINY, model_type="llama", quantization_config={
        "load_in_8bit": True, "llm_int8_skip_modules": None})).quantization       # old files: no quant_method
    assert (q.method, q.bits, q.skip) == ("int8", 8, ())


def test_awq_fp8_and_compressed_tensors():
    q = parse(dict(TINY, model_type="llama", quantization_config={
        "quant_method": "awq", "bits": 4, "group_size": 64, "modules_to_not_convert": ["gate"]})).quantization
    assert (q.method, q.group_size, q.skip) == ("awq", 64, ("gate",))
    q = parse(dict(TINY, model_type="llama", quantization_config={
        "quant_method": "fp8", "weight_block_size": [128, 128]})).quantization
    assert q.block_size == (128, 128) and q.bits == 8
    spec = parse(dict(TINY, model_type="llama", quantization_config={
        "quant_method": "compressed-tensors", "format": "float-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 8, "type": "float", "strategy": "channel"}}},
        "ignore": ["lm_head", "re:.*mlp.gate$"]}))
    assert spec.quantization.method == "fp8" and spec.quantization.skip == ("lm_head", "*mlp.gate")


def test_unknown_quant_method_is_badconfig():
    with pytest.raises(BadConfig, match="quant_method 'quark'"):
        parse(dict(TINY, model_type="llama", quantization_config={"quant_method": "quark"}))


def test_each_family_types_its_tensor_parallel_splits():
    """Tensor.split, set by the family modules, is what memory/parallel.py divides by (vLLM's layers)."""
    def splits(name):
        spec = spec_of(name)
        return {t.name.split(".0.", 1)[-1]: t.split for t in (*spec.layers[0].tensors, *spec.tensors)}

    s = splits("meta-llama--Llama-3.1-8B")
    assert (s["self_attn.q_proj"], s["self_attn.k_proj"], s["self_attn.v_proj"], s["self_attn.o_proj"]) == (
        "column", "kv_heads", "kv_heads", "row")
    assert (s["mlp.gate_proj"], s["mlp.down_proj"], s["input_layernorm"]) == ("column", "row", "replicated")
    assert s["model.embed_tokens"] == s["lm_head"] == "vocab"
    s = splits("tiiuae--falcon-40b")
    assert (s["self_attention.query_key_value"], s["self_attention.dense"], s["mlp.dense_4h_to_h"]) == (
        "qkv", "row", "row")
    s = splits("openai-community--gpt2")
    assert (s["attn.c_attn"], s["attn.c_proj"], s["mlp.c_proj"], s["transformer.wpe"]) == (
        "qkv", "row", "row", "replicated")
    s = splits("deepseek-ai--DeepSeek-V3")
    assert (s["self_attn.q_a_proj"], s["self_attn.kv_a_proj_with_mqa"], s["self_attn.kv_b_proj"]) == (
        "replicated", "replicated", "column")
    assert splits("openai--gpt-oss-20b")["self_attn.sinks"] == "heads"
    spec = spec_of("nvidia--Nemotron-H-56B-Base-8K")
    mamba = next(l for l in spec.layers if isinstance(l.mixer, Recurrent))
    by_head = {t.leaf for t in mamba.tensors if t.split == "heads"}
    assert by_head == {"conv1d", "bias", "dt_bias", "A_log", "D", "norm"}
    assert [t.leaf for t in mamba.tensors if t.split == "row"] == ["out_proj"]


def test_each_family_types_its_traits():
    """The per-architecture facts memory/ and engines/ read (spec.Traits), set by the family modules."""
    llama, gpt2, falcon = spec_of("meta-llama--Llama-3.1-8B"), spec_of("openai-community--gpt2"), spec_of(
        "tiiuae--falcon-40b")
    assert llama.traits.lora_targets == ("q_proj", "v_proj") and llama.traits.attention_module == "self_attn"
    assert gpt2.traits.residual_tensors == 6 and gpt2.traits.lora_targets == ("c_attn",)
    assert gpt2.traits.dropout_residual == gpt2.traits.dropout_embedding == 0.1
    assert falcon.traits.hf_linear_subclass == "FalconLinear" and falcon.traits.fused_qkv_saved_whole
    assert falcon.traits.lora_targets == ("query_key_value",)
    assert spec_of("openai--gpt-oss-20b").traits.hf_attention == "eager_sinks"
    assert spec_of("google--gemma-3-4b-it").traits.norm_fp32
    assert spec_of("google--gemma-3-4b-it").traits.towers == ("model.vision_tower", "model.multi_modal_projector")
    assert spec_of("google--gemma-3-4b-it").traits.lora_targets is None      # peft maps gemma3_text only
    assert dict(spec_of("mistralai--Mixtral-8x7B-v0.1").traits.lora_moe)["w1"] == "gate_up"
    assert spec_of("nvidia--Nemotron-H-56B-Base-8K").traits.mamba_ssm_cache_dtype == "float32"
    generic = parse({**json.loads((CONFIGS / "meta-llama--Llama-3.1-8B.json").read_text()), "model_type": "gpt_neox"})
    assert generic.family == "gpt_neox" and generic.traits.lora_targets == ("query_key_value",)
