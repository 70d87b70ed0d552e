"""Hand-derived figures on a tiny llama: every number below is worked out in a comment."""

import pytest

from tests.tiny import TINY_LLAMA, TINY_LLAMA_PARAMS, TINY_MISTRAL_SWA
from vramplan import models as families
from vramplan.memory import kv_cache as kv
from vramplan.memory.solve import largest_fitting
from vramplan.memory.weights import quantized_bytes, resolve_format, weight_bytes
from vramplan.spec import Quantization, Tensor


@pytest.fixture(scope="module")
def tiny():
    return families.parse(TINY_LLAMA, model_id="tiny-llama")


def test_tiny_params(tiny):
    assert tiny.params == TINY_LLAMA_PARAMS


def test_bf16_weights_are_two_bytes_per_param_in_512_byte_blocks(tiny):
    # 2 B per param, except that each tensor is its own allocation, rounded up to 512 B: the five
    # RMSNorm weights (64 values, 128 B) take 512 each, 5 x 384 = 1,920 B more.
    assert weight_bytes(tiny, resolve_format(tiny, "bf16"), layout="vllm").total == 2 * TINY_LLAMA_PARAMS + 1_920


def test_nf4_double_quant_bytes(tiny):
    # One matrix of N values is five allocations, each rounded up to 512 B: N/2 packed codes,
    # N/64 uint8 absmax, 4 * ceil((N/64)/256) fp32 nested absmax, the fp32 code table [16] and the
    # fp32 offset []:
    #   q, o   (4096): 2048 + 512 + 512 + 512 + 512 = 4096
    #   k, v   (2048): 1024 + 512 + 512 + 512 + 512 = 3072
    #   g/u/d  (8192): 4096 + 512 + 512 + 512 + 512 = 6144
    #   per layer 2*4096 + 2*3072 + 3*6144 = 32,768; two layers 65,536
    # Kept in bf16: embed + lm_head 2 x 32,768 B, five norms of 128 B in 512-B blocks: 68,096 B
    # Shared once: the nested absmax's 256-entry fp32 dynamic map, 1,024 B
    assert weight_bytes(tiny, resolve_format(tiny, "nf4"), layout="vllm").total == 65_536 + 68_096 + 1_024


def test_gptq_tensor_layout():
    # [64 out, 64 in], 4 bits, group 128 (one group since in < 128):
    #   qweight ceil(64*4/32)=8 int32 rows x 64 cols x 4 B = 2048
    #   qzeros  1 group x ceil(64*4/32)=8 int32 x 4 B      = 32
    #   scales  1 group x 64 x fp16                        = 128
    #   g_idx   64 x int32                                 = 256
    t = Tensor(name="model.layers.0.self_attn.q_proj", shape=(64, 64), role="linear", split="column")
    q = Quantization(method="gptq", bits=4, group_size=128)
    assert quantized_bytes(t, q) == 2048 + 32 + 128 + 256
    assert quantized_bytes(t, Quantization(method="awq", bits=4, group_size=128)) == 2048 + 32 + 128


def test_fp8_and_mxfp4_layouts():
    t = Tensor(name="x", shape=(300, 260), role="linear", split="column")
    # block 128x128: ceil(300/128)=3 x ceil(260/128)=3 = 9 fp32 scales
    assert quantized_bytes(t, Quantization(method="fp8", block_size=(128, 128))) == 78_000 + 36
    assert quantized_bytes(t, Quantization(method="fp8")) == 78_000 + 4
    # MXFP4: 78,000/2 packed + ceil(78,000/32)=2,438 scales
    assert quantized_bytes(t, Quantization(method="mxfp4")) == 39_000 + 2_438
    # LLM.int8: one byte each + fp32 row scale per output row
    assert quantized_bytes(t, Quantization(method="int8")) == 78_000 + 4 * 300


def test_kv_per_token(tiny):
    # 2 layers x (K+V) 2 x 2 kv heads x 16 head_dim x 2 B = 256
    assert kv.kv_bytes_per_token(tiny, 2) == 256
    assert kv.kv_bytes_per_token(tiny, 1) == 128


def test_paged_vs_contiguous(tiny):
    # 100 tokens in blocks of 16 -> 7 blocks = 112 token slots; 128 elems/token over both layers
    assert kv.paged_cache_bytes(tiny, 2, batch=3, ctx=100, block_size=16) == 3 * 112 * 128 * 2
    assert kv.contiguous_cache_bytes(tiny, 2, batch=3, ctx=100) == 3 * 100 * 128 * 2


def test_sliding_window_caps_the_cache():
    m = families.parse(TINY_MISTRAL_SWA, model_id="tiny-mistral")
    # window 32: transformers keeps 32 tokens, + a 512-B block per sliding layer for the window
    # size it keeps on the device (2 layers); vLLM the blocks covering the last 32 tokens:
    # ceil(min(32 - 1 + 0 in flight, 100) / 16) + 1 = 3 blocks = 48 slots (< 112 for 100 tokens)
    assert kv.contiguous_cache_bytes(m, 2, batch=1, ctx=100) == 32 * 128 * 2 + 2 * 512
    assert kv.paged_cache_bytes(m, 2, batch=1, ctx=100, block_size=16) == 48 * 128 * 2
    # with 40 tokens in flight per step: ceil(min(31 + 40, 100) / 16) + 1 = 5 + 1 = 6 blocks
    assert kv.paged_cache_bytes(m, 2, batch=1, ctx=100, block_size=16, in_flight=40) == 96 * 128 * 2
    # vLLM keeps its "+1 block" even below the window: ceil(min(31, 20) / 16) + 1 = 3 blocks
    assert kv.paged_cache_bytes(m, 2, batch=1, ctx=20, block_size=16) == 48 * 128 * 2


def test_largest_fitting_is_exact():
    assert largest_fitting(lambda n: n * 7 <= 1000, 10**6) == 142
    assert largest_fitting(lambda n: False, 100) == 0
    assert largest_fitting(lambda n: True, 100) == 100
