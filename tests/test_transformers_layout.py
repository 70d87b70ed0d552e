"""What transformers' own implementations allocate, as the analytic tier models it (infer and
training): each figure below is derived by hand and was measured by the trace tier on the same
model (docs/trace.md, "Agreement with the analytic tier", gaps 3-10)."""

from dataclasses import replace

import pytest

from vramplan import api
from vramplan.memory import activations as act
from vramplan.memory import kv_cache as kv
from vramplan.engines.hf_trainer.saved_activations import dropout_masks
from vramplan.engines.hf_trainer.options import normalize_train_options
from vramplan.engines.hf_trainer.step_setup import step_setup
from vramplan.memory.weights import resolve_format, transformers_bnb, weight_bytes


@pytest.fixture(scope="module")
def models():
    ids = ("openai-community/gpt2", "openai/gpt-oss-20b", "microsoft/Phi-3-mini-4k-instruct",
           "nvidia/Nemotron-H-56B-Base-8K", "deepseek-ai/DeepSeek-V3", "mistralai/Mixtral-8x7B-v0.1",
           "tiiuae/falcon-40b", "meta-llama/Llama-3.1-8B")
    return {i.split("/")[1]: api.load_model(i) for i in ids}


def test_gpt2_python_gelu_and_absolute_positions(models):
    m = models["gpt2"]
    # widest point, the MLP: token and position embeddings, layer input, attention output,
    # residual, ln_2 output (6 x 768) + c_fc output, 0.5*x and two tanh-chain tensors (4 x 3,072).
    # The trace at 1 x 512 tokens in fp32: 16,896 x 512 x 4 B = 34,603,008 B (+ 8,192 B of ids).
    assert act.widest_layer(m, layout="transformers") == (6 * 768 + 4 * 3072, "layer 0 mlp")
    # training: resid_pdrop 0.1 on the attention and MLP outputs, embd_pdrop on the embeddings,
    # one bool per element each
    assert dropout_masks(m) == (2 * 768, 768)


def test_gpt_oss_eager_attention_with_sinks(models):
    m = models["gpt-oss-20b"]
    assert act.attention_impl(m, "sdpa") == "eager_sinks"
    assert act.attention_impl(m, "flash_attention_2") == "flash_attention_2"
    # per token: residual 4 x 2,880, q 64 x 64, K and V repeated to 64 heads 2 x 64 x 64;
    # per token and context position: [scores, sink] logits, their shifted copy and the masked
    # scores (3 x 64 heads) + the (b, 1, s, s) mask. At 1 x 1,024 tokens: (23,808 + 193 x 1,024)
    # x 1,024 x 2 B = 453,509,120 B against 450,248,704 traced (+0.7 %).
    assert act.eager_attention(m, "eager_sinks") == (4 * 2880 + 64 * 64 + 2 * 64 * 64, 3 * 64 + 1,
                                                     "layer 0 eager attention")
    # its experts' clamped GLU saves 3 I more per token slot than a SwiGLU would: top-4 slots x
    # 3 x 2,880 x 2 B = 69,120 B per token and layer (trace: gate_up output, clamped gate,
    # sigmoid, glu and up + 1 saved, gpt-oss-20b LoRA)
    swiglu = replace(m, layers=tuple(replace(l, mlp=replace(l.mlp, act="")) for l in m.layers))
    o = normalize_train_options(lora_targets="q_proj,v_proj")
    glu = step_setup(m, "lora", o, "bf16").layers[0].saved
    assert glu - step_setup(swiglu, "lora", o, "bf16").layers[0].saved == 4 * 3 * 2880 * 2


def test_phi3_fused_gate_up(models):
    # the 2 x 8,192 gate_up output stays alive beside silu(gate) and the product: 4 I, not 3
    m = models["Phi-3-mini-4k-instruct"]
    assert act.widest_layer(m, layout="transformers")[0] == 4 * 3072 + 4 * 8192
    # vLLM's fused SiluAndMul, and its 3 residual-stream tensors (activations.VLLM_RESIDUAL)
    assert act.widest_layer(m, layout="vllm")[0] == 3 * 3072 + 3 * 8192
    # a prefill as long as the 2,047-token window builds one bool (1, 1, s, s) mask
    assert act.sliding_mask_bytes(m, 2046) == 0 and act.sliding_mask_bytes(m, 4096) == 4096 * 4096


def test_grouped_mm_experts(models):
    # Mixtral (h 4,096, I 14,336, top-2): the gating point, gathered input + gate_up (2I) +
    # silu + product per slot, beats the output point (6 h): 4 h + 2 x (4,096 + 4 x 14,336)
    # + fp32 router logits 2 x 8 = 139,280 elements per token (trace: 2,284,618,752 B at 2 x 4,096).
    assert act.widest_layer(models["Mixtral-8x7B-v0.1"], layout="transformers")[0] == 4 * 4096 + 2 * (4096 + 4 * 14336) + 16
    # DeepSeek-V3 (h 7,168, I 2,048, top-8): the output point, where fp32 routing weights
    # promote the weighted and unsorted outputs: 6 h per slot, + shared experts 3 x 2,048, +
    # router logits 2 x 256
    assert act.widest_layer(models["DeepSeek-V3"], layout="transformers")[0] == 4 * 7168 + 8 * 6 * 7168 + 3 * 2048 + 512


def test_deepseek_router_is_fp32_in_transformers(models):
    m = models["DeepSeek-V3"]
    fmt = resolve_format(m, "bf16")
    # 58 MoE layers x [256, 7,168] router weights, 2 B more each in transformers than in vLLM
    assert weight_bytes(m, fmt, layout="transformers").total - weight_bytes(m, fmt, layout="vllm").total == 58 * 256 * 7168 * 2


def test_mamba_state_in_transformers_cache(models):
    # Nemotron-H-56B, 54 Mamba layers: conv state 20,480 channels x all 4 kernel columns in bf16,
    # SSM state 256 heads x 64 x 256 in fp32 (vLLM: 3 columns, SSM as configured)
    assert kv.transformers_state_bytes(models["Nemotron-H-56B-Base-8K"], 2) == 54 * (20480 * 4 * 2 + 4194304 * 4)


def test_bitsandbytes_in_transformers_5(models):
    falcon = models["falcon-40b"]
    fmt = resolve_format(falcon, "nf4")
    five, warnings = transformers_bnb(falcon, fmt, 5)
    # every decoder linear is a FalconLinear, which replace_with_bnb_linear (exact nn.Linear only)
    # skips: the layers stay in bf16, exactly the bf16 weights
    assert weight_bytes(falcon, five, layout="vllm").total == weight_bytes(
        falcon, resolve_format(falcon, "bf16"), layout="vllm").total
    assert "FalconLinear" in warnings[0] and transformers_bnb(falcon, fmt, 4) == (fmt, ())
    # a dense llama is untouched by the rule
    llama = models["Llama-3.1-8B"]
    assert transformers_bnb(llama, resolve_format(llama, "nf4"), 5)[1] == ()


def test_transformers_flag():
    w = api.make_workload("qlora", 1, 512, transformers="4")
    assert w.transformers == 4
    assert api.make_workload("serve", 1, 512).transformers == 5
    with pytest.raises(api.BadInput, match="4 or 5"):
        api.make_workload("infer", 1, 512, transformers=3)
