"""Expert and data parallelism as vLLM lays MoE models out, and multi-node layouts
(memory/parallel.py; docs/serving.md "Expert and data parallelism").

Facts from vLLM's code: FusedMoEParallelConfig.make (vllm/model_executor/layers/fused_moe/
config.py): without EP the experts are tensor-sliced over tp x dp ranks (flatten_tp_across_dp),
with EP the ep = tp x dp ranks hold whole experts (tp_size 1); determine_expert_map (fused_moe/
layer.py) gives rank r E // ep experts plus one while r < E % ep. Every expected byte count below
is derived by hand from the checkpoint's shapes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.bad_input.contract import assert_cli_refuses
from vramplan import api
from vramplan.engines.vllm import serving
from vramplan.memory.parallel import MoeSplit, moe_split, serve_layout, tp_divisor
from vramplan.memory.weights import resolve_format, weight_bytes
from vramplan.request import make_workload
from vramplan.targets import resolve_target

# DeepSeek-V3 (bundled config): 256 routed experts of moe_intermediate 2048 on hidden 7168 in 58
# MoE layers (61 layers, first_k_dense_replace 3), FP8 with 128x128 fp32 block scales. One expert:
#   gate_up [4096, 7168] fp8 = 29,360,128 B + scales 32 x 56 x 4 = 7,168 B
#   down    [7168, 2048] fp8 = 14,680,064 B + scales 56 x 16 x 4 = 3,584 B
# (all multiples of the allocator's 512-B block) = 44,050,944 B.
DSV3_EXPERT = 29_360_128 + 7_168 + 14_680_064 + 3_584
DSV3_MOE_LAYERS = 61 - 3

# Kimi-K2-Instruct's published dimensions (moonshotai/Kimi-K2-Instruct config.json) on the
# DeepSeek-V3 architecture it uses: 384 experts, first_k_dense_replace 1, 64 heads, vocab 163,840.
# (Its config names model_type kimi_k2, which vramplan does not read yet; the dims are the same
# family's.) Not bundled here.
KIMI_K2 = {
    "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 384,
    "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "num_hidden_layers": 61, "num_attention_heads": 64, "num_key_value_heads": 64, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "vocab_size": 163840, "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 50000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "scoring_func": "sigmoid",
    "routed_scaling_factor": 2.827, "norm_topk_prob": True,
    "rope_scaling": {"type": "yarn", "factor": 32.0, "beta_fast": 1, "beta_slow": 1, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128]},
}

# Qwen3-235B-A22B (Qwen/Qwen3-235B-A22B config.json): 94 layers, all MoE, 128 experts of
# moe_intermediate 1536 on hidden 4096, bf16. One expert: gate_up 2 x 1536 x 4096 x 2 B =
# 25,165,824 + down 4096 x 1536 x 2 B = 12,582,912 -> 37,748,736 B.
QWEN3_235B = {
    "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 4096,
    "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_experts": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 94, "num_attention_heads": 64,
    "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "attention_bias": False,
}
QWEN_EXPERT = 25_165_824 + 12_582_912


def expert_bytes(model, tp: int, dp: int = 1, ep: bool = False) -> int:
    """Per-rank bytes of the expert stacks, as serving.prepare lays them out."""
    spec = api.load_model(model)
    divisor = tp_divisor(spec, tp, moe_split(tp, dp, ep))
    return weight_bytes(spec, resolve_format(spec, "auto"), divisor, layout="vllm").by_role["expert"]


def test_expert_map_counts_follow_vllm():
    # determine_expert_map, linear placement: 10 experts over 4 ranks -> 3, 3, 2, 2; rank 0 is fullest
    assert MoeSplit(ep=4).local_experts(10) == 3
    assert MoeSplit(ep=16).local_experts(256) == 16
    assert MoeSplit(ep=16).local_experts(384) == 24
    assert MoeSplit(ep=12).local_experts(128) == 11           # 128 = 10 x 12 + 8: ranks 0-7 hold 11
    assert moe_split(8, 2, True) == MoeSplit(tp=1, ep=16)      # EP over tp x dp
    assert moe_split(8, 2, False) == MoeSplit(tp=16, ep=1)     # experts sliced over tp x dp
    assert moe_split(1, 1, True) == MoeSplit(tp=1, ep=1)       # one rank: nothing to shard


@pytest.mark.parametrize("tp, dp, experts, local, log", [
    # vLLM logs "[EP Rank r/N] Expert parallelism is enabled. ... Local/global number of experts: L/E"
    (2, 2, 64, 16, "vllm PR #28037: Worker_DP1_TP1_EP3 [EP Rank 3/4] 16/64"),
    (4, 1, 128, 32, "QwenLM/Qwen3-VL issue #1520: Worker_TP1_EP1 [EP Rank 1/4] 32/128"),
    (2, 1, 256, 128, "vllm PR #37505: Worker_TP0_EP0 [EP Rank 0/2] 128/256"),
    (8, 2, 256, 16, "vllm-ascend issue #5461: Worker_DP0_TP5_EP5 [EP Rank 5/16] 16/256"),
])
def test_local_experts_match_vllm_logs(tp, dp, experts, local, log):
    split = moe_split(tp, dp, True)
    assert split.ep == tp * dp and split.local_experts(experts) == local, log


def test_deepseek_v3_experts_per_rank():
    # TP 8: each expert sliced 8 ways -> 256 / 8 experts' worth per layer
    assert expert_bytes("deepseek-ai/DeepSeek-V3", 8) == 256 * DSV3_EXPERT // 8 * DSV3_MOE_LAYERS
    # EP over TP 8: 32 whole experts per rank, the same bytes (81,758,552,064)
    assert expert_bytes("deepseek-ai/DeepSeek-V3", 8, ep=True) == 32 * DSV3_EXPERT * DSV3_MOE_LAYERS == 81_758_552_064
    # 16 ranks (TP 8 x DP 2) with EP: 16 experts each = 40,879,276,032 B
    assert expert_bytes("deepseek-ai/DeepSeek-V3", 8, 2, ep=True) == 16 * DSV3_EXPERT * DSV3_MOE_LAYERS == 40_879_276_032
    # DP 8 with EP, tp 1: 32 experts per rank, as TP 8
    assert expert_bytes("deepseek-ai/DeepSeek-V3", 1, 8, ep=True) == 81_758_552_064


def test_kimi_k2_and_qwen3_235b_experts_per_rank():
    # Kimi-K2: 60 MoE layers; EP 16 -> 24 experts per rank = 24 x 44,050,944 x 60
    assert expert_bytes(KIMI_K2, 8, 2, ep=True) == 24 * DSV3_EXPERT * 60 == 63_433_359_360
    # EP 8 on one node: 48 experts per rank
    assert expert_bytes(KIMI_K2, 8, ep=True) == 48 * DSV3_EXPERT * 60
    # Qwen3-235B-A22B, TP 8: 128 experts sliced 8 ways x 94 layers = 56,774,098,944 B
    assert expert_bytes(QWEN3_235B, 8) == 128 * QWEN_EXPERT // 8 * 94 == 56_774_098_944
    # EP 16 (TP 8 x DP 2): 8 whole experts per rank = 28,387,049,472 B
    assert expert_bytes(QWEN3_235B, 8, 2, ep=True) == 8 * QWEN_EXPERT * 94 == 28_387_049_472


def _mxfp4_expert(i: int, h: int = 3072) -> int:
    """One gpt-oss expert as vLLM's Marlin MXFP4 layout allocates it on Hopper: intermediate padded
    to 128, hidden 2880 to 256 (3072); FP4 pairs + one E8M0 scale per 32 values; bf16 biases."""
    w = 2 * i * h + h * i
    return w // 2 + w // 32 + 2 * (2 * i + h)


def test_gpt_oss_120b_expert_parallel_changes_the_mxfp4_padding():
    # TP 8: intermediate 2880 / 8 = 360 -> padded 384, 128 experts per rank; EP 8: 2880 -> 2944, 16
    # experts per rank. 36 layers. Everything else on the rank is the same in both layouts. Marlin
    # is Hopper's MXFP4 backend up to vLLM 0.11.0 (later releases pick OAI Triton: serving.py).
    tp = api.plan("openai/gpt-oss-120b", "h100:8", ctx="8k", tp=8, vllm_version="0.11.0")
    ep = api.plan("openai/gpt-oss-120b", "h100:8", ctx="8k", tp=8, enable_expert_parallel=True,
                  vllm_version="0.11.0")
    assert _mxfp4_expert(384) == 1_887_744 and _mxfp4_expert(2944) == 14_431_744
    want = 36 * (16 * _mxfp4_expert(2944) - 128 * _mxfp4_expert(384))
    assert ep.components["weights"] - tp.components["weights"] == want == -386_039_808


def test_data_parallel_engines_hold_their_share_of_the_batch():
    # TP 8 x DP 2 on 16 H200: each DP engine holds 8 of 16 sequences; MLA's latent is the same on
    # every TP rank, so its cache equals one TP-8 engine holding 8.
    dp = api.plan("deepseek-ai/DeepSeek-V3", "h200:16", ctx="32k", batch=16, tp=8, dp=2,
                  enable_expert_parallel=True)
    one = api.plan("deepseek-ai/DeepSeek-V3", "h200:8", ctx="32k", batch=8, tp=8)
    assert dp.components["kv_cache"] == one.components["kv_cache"]
    # experts halve (16 per rank instead of 32), the rest of the rank is the same
    assert one.components["weights"] - dp.components["weights"] == 16 * DSV3_EXPERT * DSV3_MOE_LAYERS
    assert any("2 engines" in w for w in dp.warnings)
    # an odd batch rounds up on the fullest engine: 17 over 2 -> 9
    odd = api.plan("deepseek-ai/DeepSeek-V3", "h200:16", ctx="32k", batch=17, tp=8, dp=2,
                   enable_expert_parallel=True)
    nine = api.plan("deepseek-ai/DeepSeek-V3", "h200:8", ctx="32k", batch=9, tp=8)
    assert odd.components["kv_cache"] == nine.components["kv_cache"]


def test_dp_without_ep_slices_experts_over_all_ranks():
    # DP 2 x TP 4 without EP: experts sliced 8 ways (flatten_tp_across_dp), attention 4 ways
    sliced = api.plan("deepseek-ai/DeepSeek-V3", "h200:8", ctx="8k", tp=4, dp=2)
    ep = api.plan("deepseek-ai/DeepSeek-V3", "h200:8", ctx="8k", tp=4, dp=2, enable_expert_parallel=True)
    assert sliced.components["weights"] == ep.components["weights"]     # 256/8 experts either way


def test_multi_node_layout_is_tp_inside_a_node():
    assert serve_layout(16, None, None, None)[:3] == (8, 2, 1)
    assert serve_layout(16, None, None, 2)[:3] == (8, 1, 2)
    assert serve_layout(8, None, None, None) == (8, 1, 1, "")
    assert serve_layout(4, None, 2, None) == (2, 2, 1, "")
    p = api.plan("deepseek-ai/DeepSeek-V3", "h100:16", ctx="8k")
    assert (p.workload.serve.tp, p.workload.serve.pp) == (8, 2)
    assert any("2 nodes x 8" in w for w in p.warnings)
    asked = api.plan("deepseek-ai/DeepSeek-V3", "h100:16", ctx="8k", tp=16)
    assert asked.workload.serve.tp == 16 and any("spans 2 nodes" in w for w in asked.warnings)


@pytest.mark.parametrize("model, gpu, flags", [
    ("deepseek-ai/DeepSeek-V3", "h200:8", dict(tp=8, enable_expert_parallel=True)),
    ("deepseek-ai/DeepSeek-V3", "h200:16", dict(tp=8, dp=2, enable_expert_parallel=True)),
    ("deepseek-ai/DeepSeek-V3", "h100:16", dict(tp=8, dp=2, enable_expert_parallel=True)),
    (KIMI_K2, "h200:16", dict(tp=8, dp=2, enable_expert_parallel=True)),
    (QWEN3_235B, "h200:8", dict(tp=8, enable_expert_parallel=True)),     # bf16: 8 x H100 is short
    (QWEN3_235B, "h100:16", dict(tp=8, dp=2, enable_expert_parallel=True)),
    ("openai/gpt-oss-120b", "h100:8", dict(tp=1, dp=8, enable_expert_parallel=True)),
])
def test_moe_at_scale_plans(model, gpu, flags):
    p = api.plan(model, gpu, ctx="32k", batch=16, **flags)
    assert p.fits, (p.total_bytes, p.capacity_bytes, p.serve.refusal)
    assert p.serve.kv_cache_tokens > 32_768


def test_qwen3_235b_bf16_needs_two_h100_nodes():
    # 94 layers x 128 experts x 37,748,736 B / 8 = 56.8 GB of experts per rank at 8 ranks: short
    assert not api.plan(QWEN3_235B, "h100:8", ctx="32k", batch=16, tp=8, enable_expert_parallel=True).fits


def test_deepseek_on_8_h100_does_not_fit_with_or_without_ep():
    # 671 B params in FP8 need ~85 GiB per rank at TP 8 on an 80 GB card: vLLM cannot start
    for ep in (False, True):
        p = api.plan("deepseek-ai/DeepSeek-V3", "h100:8", ctx="8k", tp=8, enable_expert_parallel=ep)
        assert not p.fits


def test_refusals():
    # 7 ranks: DeepSeek's 2048-wide experts do not split 7 ways without EP
    assert_cli_refuses(["fit", "deepseek-ai/DeepSeek-V3", "--gpu", "h200:8", "--tp", "1", "-dp", "7"], 2,
                       "do not split 7 ways")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--gpu", "h100:2", "--tp", "2", "-dp", "2"], 2,
                       "needs 4 GPUs")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--mode", "infer", "-dp", "2"], 2, "serve")


def test_ep_on_a_dense_model_says_it_does_nothing():
    p = api.plan("meta-llama/Llama-3.1-8B", "h100:2", enable_expert_parallel=True)
    assert any("no MoE layers" in w for w in p.warnings)


def test_workload_defaults_unchanged():
    # tp defaults to the GPU count over pp x dp on one node
    assert make_workload(gpu_count=8, dp=2).serve.tp == 4
    assert make_workload(gpu_count=4).serve.tp == 4
