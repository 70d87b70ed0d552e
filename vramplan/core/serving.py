"""A vLLM-style serving engine (V1, 0.11-0.20 accounting): its memory budget, the profiling
peak, and the KV figures it logs at start-up.

vLLM takes a snapshot after creating the CUDA context (and, since 0.11, NCCL), requests
`total x gpu_memory_utilization`, loads the weights, profiles a dummy forward of
`max_num_batched_tokens` tokens plus a dummy sampler pass, and gives the rest to the KV cache:

    available = total * util - weights - torch_peak_increase - non_torch_increase
    num_blocks = available // (block_size * bytes per token of one layer) // layers per group
    "GPU KV cache size" = num_blocks * block_size tokens
    "Maximum concurrency for L tokens" = num_blocks / blocks one request of L tokens needs

The CUDA context, NCCL buffers and CUDA graphs live outside the budget, in the remaining
`total x (1 - util)`; the engine refuses to start when free memory is below `total x util`.
Sources: docs/sources/vllm-accounting.md (A.2-A.7), docs/methodology.md ("Serving").
"""

from __future__ import annotations

from dataclasses import replace

from ..spec import GpuSpec, GpuTarget, ModelSpec, ServeOptions, ServeReport, Workload
from ..units import GiB, ceil_div
from . import activations as act
from . import kv_cache as kv
from .dtypes import FLOAT_BYTES
from .limits import largest_fitting
from .overhead import CUDA_CONTEXT_BYTES, NCCL_BYTES_PER_RANK
from .parallel import tp_divisor
from .setup import Breakdown, Setup, resolve_kv_dtype
from .weights import resolve_format, weight_bytes

ENGINE = "vLLM V1 0.11-0.20 (era-2 memory profiling; CUDA graphs outside the budget)"

# vllm/engine/arg_utils.py _set_default_args, usage context OPENAI_API_SERVER (`vllm serve`):
# cards with >= 70 GiB whose name does not contain "a100" get 8192 tokens / 1024 sequences,
# every other card 2048 / 256 (vllm-accounting.md A.7).
LARGE_GPU_BYTES = 70 * GiB
DEFAULT_BATCHED_TOKENS = {True: 8192, False: 2048}
DEFAULT_MAX_SEQS = {True: 1024, False: 256}

# The dummy sampler pass over [min(max_num_seqs, max_num_batched_tokens), vocab] logits (fp32
# upcast, top-k/top-p sort values and int64 indices, softmax, logprobs) dominates the profiled
# peak. Bytes per logit, calibrated on vLLM's logged activation peaks on H100 with defaults
# (1024 sequences): Llama-3.1-8B 4.76 GiB -> 38.9, Qwen3-0.6B 5.56 GiB -> 38.4, gpt-oss-20b
# 7.38 GiB -> 38.5 (reference/gpus.md); checked on Qwen3-235B-FP8 TP4 (5.62 GiB logged, 5.58
# predicted; vllm-accounting.md B.5).
SAMPLER_BYTES_PER_LOGIT = 38.5

# Non-torch memory that grows after vLLM's start-up snapshot (lazily loaded kernels, allocator
# metadata): 0.35 GiB, the top of the 0.03-0.35 GiB range logged on single GPUs
# (reference/gpus.md). Since vLLM 0.11 (PR #25359) NCCL is created before the snapshot, so it is
# not part of this growth at any world size.
NON_TORCH_INCREASE = int(0.35 * GiB)

# Outside the budget. CUDA graphs: "Graph capturing finished ... took 0.72 GiB" (granite-4.0-
# micro on L40S, v0.11.0) and 0.65 GiB (gemma-3-4b, PR #21489): we take 0.72 GiB.
# NCCL buffers per rank when world size > 1: overhead.NCCL_BYTES_PER_RANK.
CUDA_GRAPHS_BYTES = int(0.72 * GiB)


def engine_limits(opts: ServeOptions, gpu: GpuSpec | None, per_gpu_bytes: int) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM would choose them for this card."""
    name = (gpu.nvml_name if gpu else "").lower()
    large = per_gpu_bytes >= LARGE_GPU_BYTES and "a100" not in name
    tokens = opts.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS[large]
    seqs = min(opts.max_num_seqs or DEFAULT_MAX_SEQS[large], tokens)
    return tokens, seqs


def profile_peak(model: ModelSpec, tokens: int, seqs: int, act_elem: int, tp: int,
                 widest: tuple[int, str] | None = None) -> act.Transient:
    """Torch peak increase of the profiling run, per GPU: the larger of the dummy forward
    (split `tp` ways) and the dummy sampler (full vocabulary on every rank)."""
    forward = act.forward_peak(model, tokens, act_elem, widest)
    fwd = ceil_div(forward.bytes, tp)
    sampler = int(SAMPLER_BYTES_PER_LOGIT * seqs * model.vocab_size)
    if fwd >= sampler:
        return act.Transient(fwd, f"profile forward, {tokens:,} tokens ({forward.where})")
    return act.Transient(sampler, f"profile sampler, {seqs:,} requests x {model.vocab_size:,} vocab")


def outside_budget(world_size: int, enforce_eager: bool, context_bytes: int) -> dict[str, int]:
    parts = {"cuda_context": context_bytes}
    if not enforce_eager:
        parts["cuda_graphs"] = CUDA_GRAPHS_BYTES
    if world_size > 1:
        parts["nccl"] = NCCL_BYTES_PER_RANK
    return parts


def prepare(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
    fmt = resolve_format(model, workload.dtype)
    if fmt.base == "fp32":
        # vLLM's dtype=auto serves fp32 checkpoints in 16 bits (ModelConfig._get_and_verify_dtype).
        plain = fmt.quant.method == "none"
        fmt = replace(fmt, base="bf16", label="bf16" if plain else fmt.label,
                      quant=replace(fmt.quant, bits=16) if plain else fmt.quant)
    kv_dtype = resolve_kv_dtype(workload.kv_dtype, fmt)
    o = workload.serve
    weights = weight_bytes(model, fmt, tp_divisor(model, o.tp) if o.tp > 1 else None).total
    per_gpu = target.per_gpu_bytes
    tokens, seqs = engine_limits(o, target.gpu, per_gpu)
    data = {"batched_tokens": tokens, "max_seqs": seqs,
            "outside": outside_budget(o.tp * o.pp, o.enforce_eager, CUDA_CONTEXT_BYTES)}
    return Setup(model, target, workload, fmt, kv_dtype, FLOAT_BYTES[kv_dtype],
                 FLOAT_BYTES[fmt.base], weights, {"non_torch": NON_TORCH_INCREASE},
                 int(per_gpu * o.gpu_memory_utilization), o.tp, act.widest_layer(model), data)


def components(s: Setup, batch: int, ctx: int) -> Breakdown:
    m, o, d = s.model, s.workload.serve, s.mode_data
    cache = kv.paged_cache_bytes(m, s.kv_elem, batch, ctx, o.block_size, s.tp, s.act_elem,
                                 in_flight=d["batched_tokens"])
    profile = profile_peak(m, d["batched_tokens"], d["max_seqs"], s.act_elem, s.tp, s.widest)
    parts = {"weights": s.weights, "kv_cache": cache, "activations": profile.bytes, **s.overhead}
    notes = {"weights": s.fmt.label,
             "kv_cache": f"{batch} x {ctx:,} tokens, paged in blocks of {o.block_size}, {s.kv_dtype}",
             "activations": profile.where,
             "non_torch": "non-torch growth after vLLM's start-up snapshot"}
    return Breakdown(parts, notes, "profile run", s.weights + cache + profile.bytes)


def startup(s: Setup, b: Breakdown, ctx: int) -> ServeReport:
    """What vLLM would log and decide at start-up, given the components of this workload."""
    o, d = s.workload.serve, s.mode_data
    non_kv = b.total - b.parts["kv_cache"]
    available = o.kv_cache_memory if o.kv_cache_memory is not None else s.capacity - non_kv
    headroom_ok = sum(d["outside"].values()) <= s.target.per_gpu_bytes - s.capacity
    if s.target.free_bytes is not None:       # vLLM: free memory at start must cover total x util
        headroom_ok = headroom_ok and s.target.free_bytes >= s.capacity
    return report(s.model, o, s.kv_elem, s.act_elem, s.tp, available, ctx,
                  d["batched_tokens"], d["max_seqs"], headroom_ok, d["outside"])


def report(model: ModelSpec, opts: ServeOptions, kv_elem: int, state_elem: int, tp: int,
           available: int, ctx: int, tokens: int, seqs: int, headroom_ok: bool,
           outside: dict[str, int]) -> ServeReport:
    """The start-up figures for `available` bytes of KV memory per GPU."""
    bs = opts.block_size
    per_token = kv.kv_bytes_per_token(model, kv_elem, tp)
    blocks = available // (per_token * bs) if per_token and available > 0 else 0
    full_layers_equiv = _layers_sharing_a_block(model, ctx, bs, tokens)
    concurrency = blocks / full_layers_equiv if full_layers_equiv else 0.0

    def one_request(c: int) -> int:
        return kv.paged_cache_bytes(model, kv_elem, 1, c, bs, tp, state_elem, in_flight=tokens)

    limit = max(ctx, model.max_position_embeddings or ctx)
    return ServeReport(
        kv_cache_bytes=max(available, 0), num_gpu_blocks=blocks, kv_cache_tokens=blocks * bs,
        max_concurrency=round(concurrency, 2), block_size=bs, max_num_batched_tokens=tokens,
        max_num_seqs=seqs, engine=ENGINE, starts=0 < one_request(ctx) <= available and headroom_ok,
        max_model_len_that_starts=largest_fitting(lambda c: one_request(c) <= available, limit),
        outside_budget=dict(outside), headroom_ok=headroom_ok,
    )


def _layers_sharing_a_block(model: ModelSpec, ctx: int, bs: int, in_flight: int) -> float:
    """Blocks one request of `ctx` tokens costs, in units of one all-layer block row: a full
    layer costs ceil(ctx/bs), a sliding layer only its window, averaged over the layers."""
    layers = kv.attention_layers(model)
    if not layers:
        return 0.0
    total = sum(kv.kv_elems_per_rank(a, 1) * ceil_div(kv.paged_tokens(a, ctx, bs, in_flight), bs)
                for a in layers)
    return total / sum(kv.kv_elems_per_rank(a, 1) for a in layers)
