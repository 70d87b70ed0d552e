"""SGLang's memory rules, as its own code applies them at start-up (SGLang 0.5.23; every line
cited in docs/sglang.md):

    mem_fraction_static = round((gpu_mem - reserved) / gpu_mem, 3)       (default; gpu_mem in MiB,
                          reserved from chunked_prefill_size, CUDA-graph batch sizes, tp x pp)
    pre      = free memory at SGLang's baseline (after the CUDA context and NCCL exist)
    rest     = (pre - weights) - pre x (1 - mem_fraction_static)      the KV pool's bytes
    max_total_num_tokens = rest // cell // page_size x page_size      (cell: KV bytes per token,
                                                                       all layers on one rank)

Everything else (activations of a chunked prefill, CUDA graphs, the request-to-token table)
lives in the `pre x (1 - mem_fraction_static)` SGLang leaves unclaimed; SGLang never checks it,
so when it is short the server runs out of memory capturing its graphs or on the first long
prefill. Pure: reads the ModelSpec, never a model type.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.memory import activations as act
from vramplan.memory.kv_cache import attention_layers, kv_elems_per_rank
from vramplan.memory.overhead import CUDA_CONTEXT_BYTES, NCCL_BYTES_PER_RANK
from vramplan.memory.parallel import pp_stages, stage_tensors, tp_divisor
from vramplan.memory.weights import WeightFormat, weight_bytes
from vramplan.spec import Attention, GpuTarget, ModelSpec, Tensor
from vramplan.units import GiB, MiB, ceil_div

VERSION = "0.5.23"
NCCL_PCIE_BYTES = int(0.25 * GiB)

# arg_groups/memory_hook.py:89-170: (gpu_mem below, MiB) -> chunked_prefill_size, decode CUDA-graph
# max batch at tp < 4, at tp >= 4. None: the largest cards (B200, MI300).
CAPACITY_DEFAULTS = (
    (20 * 1024, 2048, 8, 8),        # T4, 4080
    (35 * 1024, 4096, 48, 160),     # A10, 4090, 5090
    (60 * 1024, 4096, 32, 160),     # A100 40GB, L40
    (90 * 1024, 8192, 256, 512),    # H100, A100 80GB
    (160 * 1024, 8192, 256, 512),   # H20, H200
    (None, 16384, 512, 512),        # B200, MI300
)
NO_GPU_DEFAULTS = (4096, 160)       # memory_hook.py:171-180, gpu_mem unknown
DEFAULT_MAX_PREFILL_TOKENS = 16384  # fields/schedule.py max_prefill_tokens

# memory_hook.py:308-315: constant metadata, activation slack per token, per (tp x pp / 8), floor
RESERVED_BASE_MIB = 512
RESERVED_PER_TOKEN_MIB = 1.5
RESERVED_PARALLEL_MIB = 1024        # x tp x pp / 8
RESERVED_FLOOR_MIB = 10 * 1024      # on cards above 60 GiB
# memory_hook.py:357-399 (reserve_for_graph_mb): decode graphs 2 MiB per max batch; DP attention
# 3 (x1.5 more above 300); prefill graphs 8 MiB per captured token bucket, MLA 1.5 GiB flat
GRAPH_DECODE_MIB, GRAPH_DP_MIB, GRAPH_PREFILL_BUCKET_MIB, GRAPH_PREFILL_MLA_MIB = 2, 3, 8, 1536

# memory_hook.py:417-462 adjust_mem_fraction_for_vlm: the default fraction x 0.95 x clamp(1 - 0.1 x
# (ViT layers x hidden^2 / (24 x 1024^2) - 1), 0.8, 1.05), for multimodal models served with their tower
VLM_BASE, VLM_SENSITIVITY, VLM_CLAMP = 0.95, 0.1, (0.8, 1.05)
VLM_BASELINE = 24 * 1024 ** 2       # ViT-L/14: 24 layers of hidden size 1024
# kv_cache_configurator.py:202-219 mm_runtime_reservation_gb: SGLANG_VLM_CACHE_SIZE_MB (100, environ.py:1598)
# taken out of the pool's budget for multimodal models
VLM_CACHE_BYTES = 100 * MiB

# kv_cache_configurator.py resolve_max_num_reqs: int(tokens / context_len x 512), in [2048, 4096]
REQS_PER_CONTEXT, MIN_REQS, MAX_REQS = 512, 2048, 4096
REQ_TO_TOKEN_EXTRA = 4              # mem_cache: max_context_len = context_len + 4, int32 entries

# Not SGLang's rules: what vramplan estimates lives in SGLang's unclaimed slack.
# Decode CUDA graphs, from SGLang's own "Capture cuda graph end ... mem usage=" lines: 1.44 GB at
# max batch 512 (Qwen2.5-VL-7B, B200, sglang PR #11830) and 0.75 GB at 256 (gpt-oss-120b, RTX PRO
# 6000, sglang PR #19718): 3 MiB per batch size of the largest captured batch.
GRAPH_BYTES_PER_BS = 3 * MiB
# NCCL communicators and buffers, created before SGLang's baseline when tp x pp > 1: the figures
# vramplan uses for vLLM (engines/vllm/serving.py, nccl_bytes): 1.79 GiB per rank on NVLink
# machines (vllm PR #10511), 0.25 GiB over PCIe (vllm PR #20665). SGLang's own check: Qwen3-235B-FP8
# at TP4 on H100 (vllm issue #21348) logs 367,404 tokens; 1.79 GiB reproduces it within 0.1 %.
def distributed_bytes(gpu) -> int:
    return NCCL_PCIE_BYTES if gpu is not None and not gpu.nvlink else NCCL_BYTES_PER_RANK


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The engine settings SGLang resolves for this card, given flags first."""

    chunked_prefill_size: int
    cuda_graph_max_bs: int          # 0: decode graphs disabled
    page_size: int
    mem_fraction_static: float
    fraction_rule: str              # "" when given
    reserved_mib: float             # SGLang's own estimate of what stays outside (0 when given)


def gpu_mem_mib(target: GpuTarget) -> float:
    """What SGLang reads as the card's memory (utils/common.py get_nvgpu_memory_capacity:
    nvidia-smi memory.total, MiB); a --gpu-mem card by its size."""
    gpu = target.gpu
    if target.memory_bytes is None and gpu is not None and gpu.nvml_total_bytes:
        return gpu.nvml_total_bytes / MiB
    return target.per_gpu_bytes / MiB


def capacity_defaults(gpu_mem: float | None, tp: int) -> tuple[int, int]:
    """(chunked_prefill_size, decode cuda_graph max_bs) by the card's memory (memory_hook.py:89-180)."""
    if gpu_mem is None:
        return NO_GPU_DEFAULTS
    for below, chunk, small, large in CAPACITY_DEFAULTS:
        if below is None or gpu_mem < below:
            return chunk, small if tp < 4 else large
    raise AssertionError("unreachable")


def prefill_buckets(max_tokens: int) -> list[int]:
    """Token buckets of the prefill CUDA graphs (arg_groups/cuda_graph_hook.py:480-497)."""
    sizes = (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32))
             + list(range(576, 1025, 64)) + list(range(1280, 4097, 256)) + list(range(4608, max_tokens + 1, 512)))
    return [s for s in sizes if s <= max_tokens]


def default_fraction(gpu_mem: float, *, chunk: int, max_bs: int, tp: int, pp: int, attn_dp: int,
                     mla: bool, graphs: bool) -> tuple[float, float]:
    """SGLang's default mem_fraction_static and the MiB it reserves (memory_hook.py:281-343)."""
    tokens = max(chunk, 2048) if chunk > 0 else max(DEFAULT_MAX_PREFILL_TOKENS, 2048)
    reserved = RESERVED_BASE_MIB + tokens * RESERVED_PER_TOKEN_MIB + tp * pp / 8 * RESERVED_PARALLEL_MIB
    if graphs:
        reserved += max_bs * GRAPH_DECODE_MIB
        if attn_dp > 1:
            reserved += max_bs * attn_dp * GRAPH_DP_MIB
            if max_bs > 300:
                reserved += max_bs * attn_dp * GRAPH_DP_MIB / 2
        prefill_max = min(8192, chunk) if mla else chunk
        reserved += GRAPH_PREFILL_MLA_MIB if mla else len(prefill_buckets(prefill_max)) * GRAPH_PREFILL_BUCKET_MIB
    if gpu_mem > 60 * 1024:
        reserved = max(reserved, RESERVED_FLOOR_MIB)
    return round((gpu_mem - reserved) / gpu_mem, 3), reserved


def vlm_factor(vit_layers: int, vit_hidden: int) -> float:
    """What SGLang multiplies its default fraction by for a multimodal model (memory_hook.py:432-462)."""
    ratio = vit_layers * vit_hidden ** 2 / VLM_BASELINE
    low, high = VLM_CLAMP
    return VLM_BASE * max(low, min(high, 1.0 - VLM_SENSITIVITY * (ratio - 1.0)))


def uses_mla(model: ModelSpec) -> bool:
    return any(a.kind == "mla" for a in attention_layers(model))


def default_page_size(model: ModelSpec, sm: str) -> int:
    """1 on CUDA (overrides.py _page_size_default), except the backends SGLang picks on data-center
    Blackwell, which need 64: trtllm_mha for MHA models (model_override_base.py
    get_default_attn_backend; overrides.py, page size 64) and trtllm_mla for DeepSeek's MLA
    (model_overrides/deepseek_v2.py)."""
    return 64 if sm == "sm100" else 1


def cell_bytes(model: ModelSpec, layers: range, kv_elem: int, attn_tp: int) -> int:
    """KV bytes per token on one rank over `layers` (pool_configurator.py _compute_cell_size):
    MHA max(1, kv_heads // attn_tp) x (head_dim + v_head_dim); MLA (kv_lora_rank + rope dim) whole
    on every rank; recurrent layers hold no tokens."""
    total = 0
    for layer in model.layers[layers.start:layers.stop]:
        if isinstance(layer.mixer, Attention):
            total += kv_elems_per_rank(layer.mixer, attn_tp)
    return total * kv_elem


def _attention_group(t: Tensor) -> bool:
    """Split attn_tp ways under --enable-dp-attention: a layer's attention (Hugging Face paths put
    it under self_attn / attn) and the token embedding (models/qwen2_moe.py VocabParallelEmbedding
    use_attn_tp_group=is_dp_attention_enabled(); models/deepseek_v2.py enable_tp=not
    is_dp_attention_enabled()). The lm_head stays split tp ways (enable_dp_lm_head is off)."""
    return t.role == "embedding" or ".self_attn." in t.name or ".attn." in t.name or ".attention." in t.name


def rank_weights(model: ModelSpec, fmt: WeightFormat, tp: int, attn_tp: int) -> int:
    """Weight bytes on one rank. SGLang's layers shard as vLLM's do (its model code follows
    vLLM's); under --enable-dp-attention the attention and the embedding are split
    attn_tp = tp / dp ways only (parallel.py attn_tp_size) while the MLP stays split tp ways."""
    if tp == 1:
        return weight_bytes(model, fmt, None, layout="vllm").total
    mlp, attn = tp_divisor(model, tp), tp_divisor(model, attn_tp)
    return weight_bytes(model, fmt, lambda t: attn(t) if _attention_group(t) else mlp(t), layout="vllm").total


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One pipeline stage as each of its ranks sees it."""

    layers: range
    weights: int
    cell: int                       # KV bytes per token (0: no attention layer here)
    rest: int                       # bytes the pool is sized from (<= 0: SGLang refuses)
    tokens: int                     # max_total_num_tokens this stage could hold


def stages(model: ModelSpec, fmt: WeightFormat, *, tp: int, pp: int, attn_tp: int, kv_elem: int,
           pre: int, fraction: float, page: int, reserve: int = 0) -> list[Stage]:
    out = []
    for k, layers in enumerate(pp_stages(model.num_layers, pp)):
        part = model if pp == 1 else replace(model, layers=model.layers[layers.start:layers.stop],
                                             tensors=stage_tensors(model, k, pp))
        weights = rank_weights(part, fmt, tp, attn_tp)
        cell = cell_bytes(model, layers, kv_elem, attn_tp)
        # kv_cache_configurator.py _profile_available_bytes: free after loading minus the slack
        rest = int((pre - weights) - pre * (1 - fraction)) - reserve
        tokens = max(rest, 0) // cell // page * page if cell else 0
        out.append(Stage(layers=layers, weights=weights, cell=cell, rest=rest, tokens=tokens))
    return out


def max_running_requests(tokens: int, context_len: int, given: int | None, dp: int) -> int:
    """Requests per DP worker (kv_cache_configurator.py resolve_max_num_reqs)."""
    if given is not None:
        return max(0, min(max(1, given // dp), tokens // 2))
    estimated = max(min(int(tokens / context_len * REQS_PER_CONTEXT), MAX_REQS), MIN_REQS)
    return min(estimated, tokens // 2)


def req_to_token_bytes(reqs: int, context_len: int) -> int:
    """ReqToTokenPool: (size + 1) x (context_len + 4) int32 (mem_cache/memory_pool.py)."""
    return (reqs + 1) * (context_len + REQ_TO_TOKEN_EXTRA) * 4


def prefill_activations(model: ModelSpec, tokens: int, act_elem: int, tp: int) -> act.Transient:
    """The forward over one chunk of `tokens` (vramplan's inference transient, split tp ways)."""
    widest = act.widest_layer(model, layout="vllm")
    peak = act.forward_peak(model, tokens, act_elem, widest)
    return act.Transient(ceil_div(peak.bytes, tp), f"chunked prefill, {tokens:,} tokens ({peak.where})")
