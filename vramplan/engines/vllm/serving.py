"""A vLLM V1 serving engine (0.11-0.20 accounting): its memory budget, the profiling peak, the
KV cache layout, and what it logs or refuses at start-up, on one GPU or split over several.

Each worker (one GPU: a tensor-parallel rank of a pipeline stage) takes a snapshot after its
CUDA context and NCCL exist, requests `total x gpu_memory_utilization`, loads its share of the
weights, profiles a dummy forward of `max_num_batched_tokens` tokens (the last stage also a
dummy sampler pass) and gives the rest to the KV cache:

    available  = total * util - weights - torch_peak_increase - non_torch_increase
    num_blocks = min over workers of available // (page_size * layers per group there)
    "GPU KV cache size" = num_blocks // kv groups * block_size tokens
    "Maximum concurrency for L tokens" = num_blocks / blocks one request of L tokens needs

The CUDA context, NCCL buffers and CUDA graphs live outside the budget, in the remaining
`total x (1 - util)`. The engine refuses to start when max_model_len exceeds the config's derived
length (unless VLLM_ALLOW_LONG_MAX_MODEL_LEN), when free memory is below `total x util`, when
nothing is left for the cache, or when one request of max_model_len does not fit; an explicit
--kv-cache-memory the card cannot hold runs out of memory allocating it. `starts` is that
decision, and the engine's verdict (engine.py, `fits`) needs it (docs/validation.md).
The plan's components are those of the worker with the fewest KV blocks.
Sources: docs/sources/vllm-accounting.md (A.2-A.8), docs/methodology.md section 4,
docs/serving.md (a walk-through).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.errors import BadInput
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, ServeOptions, ServeReport, Workload
from vramplan.spec.model import ContextLimit
from vramplan.units import GiB, ceil_div
from vramplan.memory import activations as act
from vramplan.memory import kv_cache as kv
from vramplan.memory.dtypes import FLOAT_BYTES, config_dtype
from vramplan.memory.solve import largest_fitting
from vramplan.memory.overhead import CUDA_CONTEXT_BYTES, NCCL_BYTES_PER_RANK
from vramplan.memory.parallel import check_parallel, pp_stages, stage_tensors, tp_divisor
from vramplan.memory.setup import Breakdown, Setup, resolve_kv_dtype
from vramplan.memory.weights import WeightFormat, allocated_bytes, quantizes, resolve_format, weight_bytes

# Whose accounting is modelled (--vllm-version picks one; vllm-accounting.md A.2, A.4, A.8):
#   0.9-0.10   NCCL is set up after the start-up snapshot, so on NVLink machines its buffers count as
#              non-torch growth inside the budget (2.04 GiB logged at TP4 on H200, vllm PR #21429;
#              none visible on PCIe L4s, vllm PR #20665)
#   0.11-0.20  (default) NCCL before the snapshot (PR #25359); CUDA graphs outside the budget
#   0.21+      CUDA graph memory is estimated while profiling and subtracted (PR #30515, on by
#              default since v0.21.0)
ENGINES = {
    "0.9-0.10": "vLLM V1 0.9-0.10: era-2 profiling, NCCL inside the budget on NVLink, CUDA graphs outside",
    "0.11-0.20": "vLLM V1 0.11-0.20: era-2 profiling, NCCL and CUDA graphs outside the budget, "
                 "hybrid KV cache groups, 'GPU KV cache size' = num_blocks // groups x block_size",
    "0.21+": "vLLM V1 0.21+: era-2 profiling, CUDA graph memory estimated inside the budget",
}
ENGINE = ENGINES["0.11-0.20"]

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
CUDA_GRAPHS_BYTES = int(0.72 * GiB)

# NCCL buffers per rank when world size > 1. NVLink machines: overhead.NCCL_BYTES_PER_RANK
# (1.79 GiB at TP2 on H100, vllm PR #10511; 2.04 GiB of non-torch growth, NCCL included, at TP4
# on H200, PR #21429). PCIe cards keep NCCL's staging buffers mostly in host memory: 4x L4 at
# TP2 x PP2 under vLLM 0.9.2, when NCCL still counted inside the budget, grew non-torch memory by
# less than 0.25 GiB (12.13 GiB available logged vs 12.01 predicted with 0.35 GiB; PR #20665).
NCCL_PCIE_BYTES = int(0.25 * GiB)

# MLA backends force their block size: FlashMLA on Hopper (sm90) 64 tokens ("Forcing kv cache
# block size to 64 for FlashMLA backend"), CUTLASS MLA on data-center Blackwell (sm100) 128;
# Triton MLA elsewhere (Ampere, Ada, sm120 RTX PRO 6000) keeps 16.
MLA_BLOCK = {"sm90": 64, "sm100": 128}

# vLLM's Mxfp4MoEMethod pads each expert for its kernels (quantization/mxfp4.py create_weights):
# Marlin (Hopper and older, and sm120; the default without triton_kernels or FlashInfer's opt-in
# SM90 path) rounds the per-rank intermediate size up to 128 and the hidden size to 256;
# FlashInfer on sm100 both to 256. It always allocates bf16 biases [E, 2I] and [E, H].
MXFP4_PAD = {"sm100": (256, 256)}
MXFP4_PAD_DEFAULT = (128, 256)

CONSERVING_MEMORY = "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."


def engine_limits(opts: ServeOptions, gpu: GpuSpec | None, per_gpu_bytes: int) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM would choose them for this card."""
    name = (gpu.nvml_name if gpu else "").lower()
    large = per_gpu_bytes >= LARGE_GPU_BYTES and "a100" not in name
    tokens = opts.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS[large]
    seqs = min(opts.max_num_seqs or DEFAULT_MAX_SEQS[large], tokens)
    return tokens, seqs


def engine_era(version: str) -> str:
    """The accounting era of a vLLM version string ("0.10.1", "0.21"); "" is the default."""
    if not version:
        return "0.11-0.20"
    try:
        major, minor = (int(x) for x in version.strip().lstrip("v").split(".")[:2])
    except ValueError:
        raise BadInput(f"{{vllm_version}} {version!r} is not a version like 0.10 or 0.21.") from None
    if (major, minor) < (0, 9):
        raise BadInput(f"{{vllm_version}} {version}: vLLM before 0.9 (V0 and early V1) sized its cache "
                       f"differently and is not modelled; use 0.9 or later.")
    return "0.9-0.10" if (major, minor) < (0, 11) else "0.11-0.20" if (major, minor) <= (0, 20) else "0.21+"


def nccl_bytes(gpu: GpuSpec | None) -> int:
    return NCCL_PCIE_BYTES if gpu is not None and not gpu.nvlink else NCCL_BYTES_PER_RANK


def outside_budget(world_size: int, graphs: bool, nccl: int, context_bytes: int) -> dict[str, int]:
    parts = {"cuda_context": context_bytes}
    if graphs:
        parts["cuda_graphs"] = CUDA_GRAPHS_BYTES
    if world_size > 1 and nccl:
        parts["nccl"] = nccl
    return parts


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One pipeline stage, as each of its tensor-parallel ranks sees it."""

    index: int
    layers: range
    weights: int
    activation: act.Transient     # torch peak increase of the profiling run
    block_bytes: int              # what one KV block id costs on this GPU (0: holds no cache)
    available: int                # "Available KV cache memory"

    @property
    def num_blocks(self) -> int | None:
        if not self.block_bytes:
            return None
        return max(self.available, 0) // self.block_bytes


@dataclass(frozen=True, kw_only=True)
class VllmState:
    """What `prepare` decides once and the profile, the cache and the start-up report read:
    the engine's limits and budget, and the layout of every worker."""

    batched_tokens: int           # max_num_batched_tokens: the profiled forward, tokens in flight
    max_seqs: int                 # max_num_seqs: the profiled sampler's requests
    requested: int                # total x gpu_memory_utilization, per GPU
    era: str                      # accounting era of --vllm-version (a key of ENGINES)
    outside: dict[str, int]       # memory outside the budget: context, CUDA graphs, NCCL
    layout: kv.KvLayout
    stages: tuple[Stage, ...]
    worst: Stage                  # the worker with the fewest KV blocks: the plan's components
    notes: tuple[str, ...]        # what vLLM logs about the cache layout
    context: ContextLimit | None  # the longest max_model_len vLLM accepts (None: any)
    free_refusal: str             # init_device: free memory below total x util ("" when enough)
    oom_refusal: str              # --kv-cache-memory larger than what the card has left ("" when it fits)
    kv_room: int                  # what the card has left for --kv-cache-memory (kv_memory_room)
    headroom_ok: bool             # what vLLM keeps outside its budget fits the rest of the card


def _sm(gpu: GpuSpec | None) -> str:
    """The kernel family that decides vLLM's backends: sm90 (Hopper), sm100 (data-center
    Blackwell: B200, B300), or "" for the rest (the RTX PRO 6000 is Blackwell but sm120)."""
    arch = (gpu.architecture if gpu else "").lower()
    return "sm90" if arch == "hopper" else "sm100" if arch == "blackwell" and gpu.nvlink else ""


def _serving_format(model: ModelSpec, dtype: str) -> WeightFormat:
    fmt = resolve_format(model, dtype)
    if fmt.base == "fp32":
        # vLLM's dtype=auto serves fp32 checkpoints in 16 bits (ModelConfig._get_and_verify_dtype).
        plain = fmt.quant.method == "none"
        fmt = replace(fmt, base="bf16", label="bf16" if plain else fmt.label,
                      quant=replace(fmt.quant, bits=16) if plain else fmt.quant)
    return fmt


def mxfp4_padding(model: ModelSpec, fmt: WeightFormat, divisor, tp: int, gpu: GpuSpec | None) -> int:
    """Bytes vLLM's MXFP4 MoE layout adds to the experts of `model`'s layers on one rank, over
    what the checkpoint holds (MXFP4_PAD). gpt-oss-120b on an H100: 65.90 GiB against the
    logged "Model loading took 65.9651 GiB" (vllm issue #23278)."""
    q = fmt.quant
    if q.method != "mxfp4":
        return 0
    align_i, align_h = MXFP4_PAD.get(_sm(gpu), MXFP4_PAD_DEFAULT)
    h = ceil_div(model.hidden_size, align_h) * align_h
    extra = 0
    for layer in model.layers:
        m = layer.mlp
        stacks = tuple(t.name for t in layer.tensors if t.role == "expert")    # and their biases:
        experts = [t for t in layer.tensors if t.role == "expert" or (t.role == "bias" and t.name.startswith(stacks))]
        if m is None or m.kind != "moe" or not m.gated or not any(quantizes(t, q) for t in experts):
            continue
        held = 0
        for t in experts:
            b = allocated_bytes(t, q, FLOAT_BYTES[fmt.base], layout="vllm", stored=fmt.as_stored)
            held += ceil_div(b, divisor(t)) if divisor else b
        i = ceil_div(m.intermediate // tp, align_i) * align_i
        w13, w2 = 2 * i * h, h * i                    # [E, 2I, H] and [E, H, I] values
        values = (w13 + w2) // 2 + (w13 + w2) // 32   # FP4 pairs + one E8M0 scale per 32
        biases = 2 * (2 * i + h)                      # bf16 w13_bias, w2_bias
        extra += m.num_experts * (values + biases) - held
    return extra


def _ssm_elem(model: ModelSpec, act_elem: int) -> int:
    """SSM state dtype: the config's mamba_ssm_cache_dtype (NemotronH: float32 when absent, vLLM
    NemotronHForCausalLMConfig since PR #39032), else the model dtype."""
    name = config_dtype(model.traits.mamba_ssm_cache_dtype)
    return FLOAT_BYTES[name] if name else act_elem


def prepare(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
    o = workload.serve
    check_parallel(model, o.tp, o.pp)
    fmt = _serving_format(model, workload.dtype)
    kv_dtype = resolve_kv_dtype(workload.kv_dtype, fmt)
    act_elem, kv_elem = FLOAT_BYTES[fmt.base], FLOAT_BYTES[kv_dtype]
    per_gpu = target.per_gpu_bytes
    tokens, seqs = engine_limits(o, target.gpu, per_gpu)
    specs, notes = kv.page_specs(model, kv_elem, o.tp, o.block_size, MLA_BLOCK.get(_sm(target.gpu)),
                                 act_elem, _ssm_elem(model, act_elem))
    layout = kv.kv_layout(specs)
    requested = int(per_gpu * o.gpu_memory_utilization)
    divisor = tp_divisor(model, o.tp) if o.tp > 1 else None
    widest = act.widest_layer(model, layout="vllm")
    era, world = engine_era(o.vllm_version), o.tp * o.pp
    nccl_inside = era == "0.9-0.10" and world > 1 and bool(target.gpu and target.gpu.nvlink)
    graphs_inside = era == "0.21+" and not o.enforce_eager
    overhead = {"non_torch": NON_TORCH_INCREASE + (nccl_bytes(target.gpu) if nccl_inside else 0)}
    if graphs_inside:
        overhead["cuda_graphs"] = CUDA_GRAPHS_BYTES
    fixed = sum(overhead.values())

    forward = act.forward_peak(model, tokens, act_elem, widest)
    fwd = (ceil_div(forward.bytes, o.tp), f"profile forward, {tokens:,} tokens ({forward.where})")
    sampler = (int(SAMPLER_BYTES_PER_LOGIT * seqs * model.vocab_size),
               f"profile sampler, {seqs:,} requests x {model.vocab_size:,} vocab")
    stages = []
    for k, layers in enumerate(pp_stages(model.num_layers, o.pp)):
        first, last = k == 0, k == o.pp - 1
        part = model if o.pp == 1 else replace(model, layers=model.layers[layers.start:layers.stop],
                                               tensors=stage_tensors(model, k, o.pp))
        weights = weight_bytes(part, fmt, divisor, layout="vllm").total + mxfp4_padding(part, fmt, divisor, o.tp, target.gpu)
        peak, where = max(fwd, sampler) if last else fwd
        if not first:   # hidden states + residual received from the previous stage
            peak += 2 * tokens * model.hidden_size * act_elem
            where += " + PP intermediate tensors"
        available = (o.kv_cache_memory if o.kv_cache_memory is not None
                     else requested - weights - peak - fixed)
        block_bytes = layout.block_bytes(None if o.pp == 1 else set(layers))
        stages.append(Stage(index=k, layers=layers, weights=weights, activation=act.Transient(peak, where),
                            block_bytes=block_bytes, available=available))
    worst = min(stages, key=lambda s: (s.num_blocks is None, s.num_blocks or 0, s.available))
    outside = outside_budget(world, not (o.enforce_eager or graphs_inside),
                             0 if nccl_inside else nccl_bytes(target.gpu), CUDA_CONTEXT_BYTES)
    capacity, oom, headroom_ok = requested, "", sum(outside.values()) <= per_gpu - requested
    if o.kv_cache_memory is not None:   # the engine's footprint is then fixed by the flag, never above the card
        capacity = min(worst.weights + worst.activation.bytes + fixed + o.kv_cache_memory, per_gpu)
        oom = _kv_memory_refusal(per_gpu, outside, kv_memory_room(per_gpu, outside, fixed, stages),
                                 o.kv_cache_memory)
        headroom_ok = not oom           # the rest of the card, beside the fixed footprint, is what is outside
    free = _free_memory_refusal(target, outside, era, o.gpu_memory_utilization, requested)
    state = VllmState(batched_tokens=tokens, max_seqs=seqs, requested=requested, era=era,
                      outside=outside, layout=layout, stages=tuple(stages), worst=worst,
                      notes=tuple(notes) + layout.notes,
                      context=None if o.allow_long_max_model_len else context_limit(model),
                      free_refusal=free, oom_refusal=oom, headroom_ok=headroom_ok and not free,
                      kv_room=kv_memory_room(per_gpu, outside, fixed, stages))
    return Setup(model=model, target=target, workload=workload, fmt=fmt, kv_dtype=kv_dtype,
                 kv_elem=kv_elem, act_elem=act_elem, weights=worst.weights, overhead=overhead,
                 capacity=capacity, tp=o.tp, widest=widest, state=state)


def components(s: Setup[VllmState], batch: int, ctx: int) -> Breakdown:
    o, worst, layout = s.workload.serve, s.state.worst, s.state.layout
    cache = batch * worst.block_bytes * layout.blocks_per_request(ctx, s.state.batched_tokens)
    parts = {"weights": s.weights, "kv_cache": cache, "activations": worst.activation.bytes, **s.overhead}
    where = ""
    if o.tp * o.pp > 1:
        where = f"; per GPU, rank {worst.index * o.tp} of {o.tp * o.pp} (fewest KV blocks)"
    notes = {"weights": s.fmt.label + where,
             "kv_cache": f"{batch} x {ctx:,} tokens, paged in blocks of {layout.min_block_size(ctx) or o.block_size}, "
                         f"{s.kv_dtype}",
             "activations": worst.activation.where,
             "non_torch": "non-torch growth after vLLM's start-up snapshot"
                          + (" (NCCL included)" if s.overhead["non_torch"] > NON_TORCH_INCREASE else "")}
    if "cuda_graphs" in parts:
        notes["cuda_graphs"] = "vLLM's CUDA graph estimate, inside the budget since 0.21"
    return Breakdown(parts, notes, "profile run", s.weights + cache + worst.activation.bytes)


def _gib(b: int) -> float:
    return round(b / GiB, 2)     # vLLM's format_gib


def _free_memory_refusal(target: GpuTarget, outside: dict[str, int], era: str, util: float,
                         requested: int) -> str:
    """vLLM's init_device check: free memory at its snapshot (taken after the CUDA context and,
    since 0.11, NCCL exist) must cover total x util."""
    free = target.free_bytes
    if free is None:
        return ""
    nccl = outside.get("nccl", 0) if era != "0.9-0.10" else 0
    at_snapshot = free - outside["cuda_context"] - nccl
    if at_snapshot >= requested:
        return ""
    return (f"Free memory on device cuda:0 ({_gib(at_snapshot)}/{_gib(target.per_gpu_bytes)} GiB) on "
            f"startup is less than desired GPU memory utilization ({util}, "
            f"{_gib(requested)} GiB). Decrease GPU memory utilization or reduce GPU memory used by "
            f"other processes.")


def kv_memory_room(per_gpu: int, outside: dict[str, int], fixed: int, stages) -> int:
    """Bytes the card has left for --kv-cache-memory: its total less what every worker holds
    beside the cache (weights, profile peak, non-torch growth) and what vLLM keeps outside its
    budget (CUDA context, graphs, NCCL)."""
    held = max(st.weights + st.activation.bytes for st in stages) + fixed
    return per_gpu - sum(outside.values()) - held


def _kv_memory_refusal(per_gpu: int, outside: dict[str, int], room: int, kv_bytes: int) -> str:
    """--kv-cache-memory skips vLLM's profile: the cache is allocated as asked, so a size the card
    cannot hold beside everything else runs out of memory at start-up. Says how much would fit."""
    if kv_bytes <= room:
        return ""
    others = sum(outside.values())
    left = (f"at most {room * 100 // GiB / 100:.2f} GiB is left for the KV cache" if room > 0 else
            f"nothing is left for a KV cache (short by {-room / GiB:.2f} GiB before any)")
    return (f"CUDA out of memory allocating the KV cache: kv_cache_memory asks {kv_bytes / GiB:.2f} GiB, but "
            f"of this GPU's {per_gpu / GiB:.2f} GiB the weights, the profile peak and vLLM's own growth "
            f"take {(per_gpu - others - room) / GiB:.2f} GiB and the CUDA context, graphs and NCCL "
            f"{others / GiB:.2f} GiB, so {left}.")


def _context_refusal(limit: ContextLimit | None, ctx: int) -> str:
    """vLLM's config check of max_model_len against the config's derived length (vllm/config/
    model.py, _get_and_verify_max_len, v0.11.0 lines 1876-1911), before any GPU work."""
    if limit is None or ctx <= limit.tokens:
        return ""
    return (f"User-specified max_model_len ({ctx}) is greater than the derived max_model_len "
            f"({limit.key}={limit.shown} or model_max_length={limit.model_max_length} in model's "
            f"config.json). To allow overriding this maximum, set the env var "
            f"VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme "
            f"caution. If the model uses relative position encoding (RoPE), positions exceeding "
            f"derived_max_model_len lead to nan. If the model uses absolute position encoding, "
            f"positions exceeding derived_max_model_len will cause a CUDA array out-of-bounds error.")


def context_limit(model: ModelSpec) -> ContextLimit | None:
    """The model's derived max_model_len (loading.py), None when vLLM accepts any; a hand-built
    ModelSpec has none derived, and its max_position_embeddings stands for it."""
    limit = model.context_limit
    if limit is None and model.max_position_embeddings:
        mpe = model.max_position_embeddings
        limit = ContextLimit(tokens=mpe, key="max_position_embeddings", shown=str(mpe))
    return limit if limit is not None and limit.tokens is not None else None


def _kv_refusal(stages, layout: kv.KvLayout, ctx: int, in_flight: int) -> str:
    """vLLM's _check_enough_kv_cache_memory, worker by worker; the first failure is raised."""
    for st in stages:
        needed = st.block_bytes * layout.blocks_per_request(ctx, in_flight)
        if st.available <= 0:
            return ("No available memory for the cache blocks. Try increasing "
                    f"`gpu_memory_utilization` when initializing the engine. {CONSERVING_MEMORY}")
        if needed > st.available:
            longest = largest_fitting(lambda n: _fits(st, layout, n, in_flight), ctx)
            estimate = (f"Based on the available memory, the estimated maximum model length is "
                        f"{longest}. " if longest > 0 else "")
            return (f"To serve at least one request with the models's max seq len ({ctx}), "
                    f"({_gib(needed)} GiB KV cache is needed, which is larger than the available KV "
                    f"cache memory ({_gib(st.available)} GiB). {estimate}Try increasing "
                    f"`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
                    f"engine. {CONSERVING_MEMORY}")
    return ""


def _fits(stage: Stage, layout: kv.KvLayout, length: int, in_flight: int) -> bool:
    """One request of `length` tokens fits this worker's KV memory (padding layers included)."""
    return stage.block_bytes * layout.blocks_per_request(length, in_flight) <= stage.available


def starts(s: Setup[VllmState], ctx: int) -> bool:
    """Whether vLLM starts with max_model_len = `ctx`: no start-up refusal and the memory outside
    its budget fits. Cheap (no search): the engine's verdict asks it for every batch and context
    the limits try."""
    d = s.state
    if d.free_refusal or d.oom_refusal or not d.headroom_ok or (d.context is not None and ctx > d.context.tokens):
        return False
    return all(_fits(st, d.layout, ctx, d.batched_tokens) for st in d.stages if st.block_bytes)


def startup(s: Setup[VllmState], b: Breakdown, ctx: int) -> ServeReport:
    """What vLLM would log and decide at start-up with max_model_len = `ctx`; the first refusal in
    vLLM's order: the config check, free memory at init, the KV cache check, its allocation."""
    o, d = s.workload.serve, s.state
    layout, stages, worst = d.layout, d.stages, d.worst
    in_flight = d.batched_tokens
    per_request = layout.blocks_per_request(ctx, in_flight)
    holding = [st for st in stages if st.block_bytes]
    refusal = (_context_refusal(d.context, ctx) or d.free_refusal
               or _kv_refusal(holding, layout, ctx, in_flight) or d.oom_refusal)

    blocks = worst.num_blocks if holding else 0
    groups = len(layout.groups)
    if d.free_refusal or d.oom_refusal or not d.headroom_ok:
        longest = 0                     # nothing starts, whatever the length
    else:
        limit = d.context.tokens if d.context is not None else max(ctx, s.model.max_position_embeddings or ctx)
        longest = (largest_fitting(lambda n: all(_fits(st, layout, n, in_flight) for st in holding), limit)
                   if holding else limit)
    ranks = tuple({"rank": st.index * o.tp, "layers": [st.layers.start, st.layers.stop],
                   "weights": st.weights, "activations": st.activation.bytes,
                   "available": st.available, "num_blocks": st.num_blocks} for st in stages)
    return ServeReport(
        kv_cache_bytes=max(worst.available, 0), num_gpu_blocks=blocks,
        kv_cache_tokens=blocks // groups * layout.min_block_size(ctx) if groups else 0,
        max_concurrency=round(blocks / per_request, 2) if per_request else 0.0,
        block_size=min((sp.block_size for sp, _ in layout.groups if sp.block_size), default=o.block_size),
        max_num_batched_tokens=in_flight,
        max_num_seqs=d.max_seqs, engine=ENGINES[d.era], starts=starts(s, ctx),
        max_model_len_that_starts=longest, outside_budget=dict(d.outside), headroom_ok=d.headroom_ok,
        refusal=refusal, available_bytes=worst.available, rank=worst.index * o.tp, kv_groups=groups,
        kv_notes=d.notes, ranks=ranks if o.pp > 1 else (),
    )


def utilization_that_starts(target: GpuTarget, report: ServeReport | None, o: ServeOptions) -> float | None:
    """The largest --gpu-memory-utilization (in hundredths) that leaves room for what vLLM keeps
    outside its budget and that free memory covers, when the one given does not; None when the
    given one does, or when no share would (the lever a vLLM user pulls: RTX cards at 0.9)."""
    if report is None or report.headroom_ok or o.kv_cache_memory is not None:
        return None
    per_gpu, outside = target.per_gpu_bytes, sum(report.outside_budget.values())
    room = per_gpu - outside
    if target.free_bytes is not None:
        nccl = report.outside_budget.get("nccl", 0) if engine_era(o.vllm_version) != "0.9-0.10" else 0
        room = min(room, target.free_bytes - report.outside_budget["cuda_context"] - nccl)
    hundredths = room * 100 // per_gpu
    while hundredths > 0 and int(per_gpu * (hundredths / 100)) > room:
        hundredths -= 1
    util = hundredths / 100
    return util if 0 < util < o.gpu_memory_utilization else None
